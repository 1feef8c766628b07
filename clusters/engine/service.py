"""Running a job: claim it, then let the :class:`~clusters.engine.orchestrator.StageOrchestrator` run its stages."""

from __future__ import annotations

import logging
import os
import socket

from django.utils import timezone

from ..choices import JobStatus
from ..models import Job
from .orchestrator import StageOrchestrator

__all__ = ["job_claim", "job_execute"]

logger = logging.getLogger(__name__)


def job_claim(*, job_id: int) -> bool:
    """Take a pending, not canceled job for this worker process (``running``, heartbeat now). Returns False when
    the job is not pending any more: another worker took it, it was canceled, or the task was delivered twice."""
    now = timezone.now()
    return bool(
        Job.objects.filter(pk=job_id, status=JobStatus.PENDING, cancel_requested=False).update(
            status=JobStatus.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker_hostname=socket.gethostname()[:255],
            worker_pid=os.getpid(),
            ansible_pid=None,
        )
    )


def job_execute(*, job_id: int) -> str | None:
    """Claim the job and run its stages to the end. Returns the job's final status, or None when it was not
    claimed (nothing is done then)."""
    if not job_claim(job_id=job_id):
        logger.info("job %s is not pending any more; not running it", job_id)
        return None
    job = Job.objects.select_related("cluster", "cluster__ssh_credential").get(pk=job_id)
    logger.info("job %s (%s) on cluster %s: running stages %s", job.pk, job.kind, job.cluster_id, job.stages)
    return StageOrchestrator(job).run()
