"""Jobs whose worker died: found, failed with an explanation, their playbook stopped and their leftovers removed.

A running job's worker bumps ``Job.heartbeat_at`` every ``JOB_HEARTBEAT_SECONDS``. A job is *lost* when

- its heartbeat is older than ``JOB_LOST_AFTER_SECONDS`` (its worker, wherever it ran, stopped working), or
- it ran on this host and its worker process no longer exists (a worker restarting after a crash knows at once).

A lost job becomes ``failed`` (explanation: "Worker lost: ..."), which releases its cluster (one active job per
cluster is enforced on the status); the nodes it was installing become ``failed``; an install's cluster is marked
failed, so it can be resumed from the stage that was running. When the job ran on this host, its orphaned
ansible-playbook process group (``Job.ansible_pid``) is killed.

The beat schedule runs :func:`jobs_reap_lost` every minute; :func:`worker_started` runs when a worker starts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime, timedelta
from pathlib import Path

import psutil
from django.conf import settings
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from ..choices import ACTIVE_JOB_STATUSES, JobStatus
from ..models import Job, JobEvent
from . import state
from .runner import kill_process_group, private_dir_owner, remove_private_dir

__all__ = ["job_events_purge", "job_mark_lost", "jobs_reap_lost", "private_dirs_cleanup", "worker_started"]

logger = logging.getLogger(__name__)

# A process started this long after the job counts as a different process that reuses the pid.
_PID_REUSE_SLACK = timedelta(seconds=2)


def _this_host() -> str:
    return socket.gethostname()[:255]


def _process_alive_since(pid: int | None, since: datetime | None) -> bool:
    """Whether process ``pid`` exists (not a zombie) and was started before ``since`` (+ slack): the same process
    that was recorded then, not a later one that reuses its pid."""
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        if since is not None:
            started = datetime.fromtimestamp(process.create_time(), tz=since.tzinfo)
            if started > since + _PID_REUSE_SLACK:
                return False
        return True
    except psutil.Error:
        return False


def _explain(job: Job, *, process_gone: bool) -> str:
    when = job.heartbeat_at.strftime("%Y-%m-%d %H:%M:%S %Z") if job.heartbeat_at else "the job started"
    where = f"{job.worker_hostname or 'unknown host'} pid {job.worker_pid or '?'}"
    if process_gone:
        return f"Worker lost: the worker process ({where}) is gone; no heartbeat since {when}. Resume or retry the job."
    return f"Worker lost: no heartbeat since {when} (worker {where}). Resume or retry the job."


def jobs_reap_lost(*, now: datetime | None = None) -> list[int]:
    """Fail every lost running job (see the module docstring). Returns their ids."""
    now = now or timezone.now()
    host = _this_host()
    cutoff = now - timedelta(seconds=settings.JOB_LOST_AFTER_SECONDS)
    candidates = list(
        Job.objects.filter(status=JobStatus.RUNNING)
        .filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True) | Q(worker_hostname=host))
        .only(
            "id",
            "cluster_id",
            "kind",
            "params",
            "status",
            "stage",
            "heartbeat_at",
            "started_at",
            "worker_hostname",
            "worker_pid",
            "ansible_pid",
        )
    )
    reaped = []
    for job in candidates:
        on_this_host = job.worker_hostname == host
        stale = job.heartbeat_at is None or job.heartbeat_at < cutoff
        gone = on_this_host and not _process_alive_since(job.worker_pid, job.started_at)
        if not (stale or gone):
            continue
        if job_mark_lost(job=job, explanation=_explain(job, process_gone=gone)):
            reaped.append(job.pk)
    return reaped


def job_mark_lost(*, job: Job, explanation: str) -> bool:
    """Fail a running job whose worker is gone, settle its cluster and nodes, stop its orphaned playbook when it
    ran on this host. Conditional on the heartbeat not having moved since ``job`` was read (a worker that is
    alive after all keeps its job). Returns whether the job was failed."""
    now = timezone.now()
    with transaction.atomic():
        updated = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, heartbeat_at=job.heartbeat_at).update(
            status=JobStatus.FAILED, finished_at=now, explanation=explanation
        )
        if not updated:
            return False
        state.nodes_abort(job.cluster_id, job, explanation)
        state.cluster_settle_after_job(job, JobStatus.FAILED)
        last = JobEvent.objects.filter(job_id=job.pk).aggregate(last=Max("counter"))["last"] or 0
        JobEvent.objects.create(
            job_id=job.pk,
            counter=last + 1,
            stage=job.stage,
            event="portal_message",
            stdout=explanation,
            end_line=1,
            created=now,
        )
        # Events still queued in the dead worker are gone: the log is complete as stored.
        Job.objects.filter(pk=job.pk).update(emitted_events=JobEvent.objects.filter(job_id=job.pk).count())
    logger.warning("job %s: %s", job.pk, explanation)
    if job.worker_hostname == _this_host() and job.ansible_pid:
        _kill_orphan(job)
    return True


def _kill_orphan(job: Job) -> None:
    """Kill the job's ansible-playbook process group if it still runs. The process is recognised by its command
    line, which names the job's private directory (not a later process reusing the pid)."""
    pid = job.ansible_pid
    if not pid:
        return
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return
    if f"{os.sep}job{job.pk}." in cmdline and kill_process_group(pid):
        logger.warning("job %s: killed the orphaned playbook process group %s", job.pk, pid)


def private_dirs_cleanup(*, work_dir: Path | None = None) -> list[Path]:
    """Remove private directories left by dead worker processes of this host (and stop what still uses them).
    Returns the removed paths."""
    base = Path(work_dir or settings.JOBS_WORK_DIR)
    if not base.is_dir():
        return []
    removed = []
    for path in base.iterdir():
        owner = private_dir_owner(path)
        if owner is None or not path.is_dir():
            continue
        _job_id, pid = owner
        if pid == os.getpid() or _pid_alive(pid):
            continue
        needle = str(path)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(needle in part for part in (proc.info.get("cmdline") or [])):
                    proc.kill()
            except psutil.Error:
                continue
        remove_private_dir(path)
        removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def worker_started() -> None:
    """When a worker starts: fail the jobs its predecessors on this host left running, remove their leftovers."""
    try:
        reaped = jobs_reap_lost()
        if reaped:
            logger.warning("failed jobs %s: their worker on this host is gone", reaped)
        private_dirs_cleanup()
    except Exception:  # noqa: BLE001 - a worker must start even when the database is not reachable yet
        logger.exception("could not reap the jobs of a previous worker")


def job_events_purge(*, older_than_days: int | None = None, batch_size: int = 10000) -> int:
    """Delete the events of jobs that finished more than ``older_than_days`` days ago (default:
    ``JOB_EVENT_RETENTION_DAYS``), in batches. The jobs and their per-host summaries stay; ``emitted_events``
    becomes 0 and ``result["events_purged"]`` true. Returns the number of events deleted."""
    days = settings.JOB_EVENT_RETENTION_DAYS if older_than_days is None else older_than_days
    cutoff = timezone.now() - timedelta(days=days)
    job_ids = list(
        Job.objects.filter(finished_at__lt=cutoff, emitted_events__gt=0)
        .exclude(status__in=ACTIVE_JOB_STATUSES)
        .values_list("pk", flat=True)
    )
    deleted = 0
    for job_id in job_ids:
        while True:
            ids = list(JobEvent.objects.filter(job_id=job_id).values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            deleted += JobEvent.objects.filter(pk__in=ids).delete()[0]
            time.sleep(0)
        job = Job.objects.only("id", "result").get(pk=job_id)
        Job.objects.filter(pk=job_id).update(emitted_events=0, result={**(job.result or {}), "events_purged": True})
    return deleted
