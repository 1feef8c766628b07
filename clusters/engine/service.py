"""Running a job: claim it, then let the :class:`~clusters.engine.orchestrator.StageOrchestrator` run its stages.

While it runs the job, the worker process keeps the job's run marker open and sends its heartbeat from a thread
of its own (:mod:`clusters.engine.process`, :mod:`clusters.engine.heartbeat`); a reaper on the same host
therefore never takes a job from a process that is still working on it. Whatever happens, the job does not stay
``running`` after :func:`job_execute` returns: when the orchestrator could not record the end (the database was
unreachable at that moment), the end is recorded here, retrying for a while.
"""

from __future__ import annotations

import logging
import os
import time

from django.conf import settings
from django.db import connection
from django.utils import timezone

from ..choices import JobStatus
from ..models import Job
from .heartbeat import Heartbeat
from .orchestrator import StageOrchestrator
from .process import RunMarker, hostname, process_identity

__all__ = ["job_claim", "job_execute"]

logger = logging.getLogger(__name__)

# How long the worker keeps trying to record the end of a job that it could not record at once.
_END_RETRY_SECONDS = 120.0


def job_claim(*, job_id: int) -> bool:
    """Take a pending, not canceled job for this worker process (``running``, heartbeat now). Returns False when
    the job is not pending any more: another worker took it, it was canceled, or the task was delivered twice."""
    now = timezone.now()
    return bool(
        Job.objects.filter(pk=job_id, status=JobStatus.PENDING, cancel_requested=False).update(
            status=JobStatus.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker_hostname=hostname(),
            worker_pid=os.getpid(),
            worker_process=process_identity(),
            ansible_pid=None,
        )
    )


def job_execute(*, job_id: int) -> str | None:
    """Claim the job and run its stages to the end. Returns the job's final status, or None when it was not
    claimed (nothing is done then)."""
    if not job_claim(job_id=job_id):
        logger.info("job %s is not pending any more; not running it", job_id)
        return None
    me = process_identity()
    explanation = "The worker could not record the end of the job."
    status: str | None = None
    with RunMarker(settings.JOBS_WORK_DIR, job_id):
        heartbeat = Heartbeat(job_id, interval=settings.JOB_HEARTBEAT_SECONDS, worker_process=me)
        heartbeat.start()
        try:
            job = Job.objects.select_related("cluster", "cluster__ssh_credential").get(pk=job_id)
            logger.info("job %s (%s) on cluster %s: running stages %s", job.pk, job.kind, job.cluster_id, job.stages)
            orchestrator = StageOrchestrator(job)
            heartbeat.emitted = lambda: orchestrator.writer.emitted
            status = orchestrator.run()
        except Exception as exc:
            logger.exception("job %s: the worker could not run it to the end", job_id)
            explanation = f"The worker stopped the job on an unexpected error ({type(exc).__name__})."
            raise
        finally:
            heartbeat.stop()
            _end_if_still_running(job_id, me, explanation)
    return status


def _end_if_still_running(job_id: int, me: str, explanation: str) -> None:
    """Fail the job if this process claimed it and it is still running (its end was not recorded), retrying while
    the database is unreachable."""
    from .reaper import job_mark_lost

    deadline = time.monotonic() + _END_RETRY_SECONDS
    delay = 0.5
    while True:
        try:
            job = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING, worker_process=me).first()
            if job is None:
                return
            if job_mark_lost(job=job, explanation=f"{explanation} Resume or retry the job.", kill=False):
                return
        except Exception:
            logger.warning("job %s: could not record its end yet", job_id, exc_info=True)
            try:
                connection.close()
            except Exception:  # noqa: BLE001
                pass
        if time.monotonic() >= deadline:
            logger.error("job %s: gave up recording its end; the reaper will", job_id)
            return
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
