"""Jobs whose worker died, and jobs whose message was lost: found, failed with an explanation, their playbook
stopped and their leftovers removed.

A running job's worker process bumps ``Job.heartbeat_at`` every ``JOB_HEARTBEAT_SECONDS`` from a thread of its
own, and keeps the job's run marker open while it works on it (see :mod:`clusters.engine.process`). A job is
*lost* when

- it ran on this host (same kernel boot and pid namespace) and its worker process is gone: no process with its
  pid *and* start time exists (a later process reusing the pid does not count); a worker restarting after a crash
  knows at once;
- it ran on this host, its process lives but no longer works on the job (it does not hold the run marker) and
  the heartbeat is older than ``JOB_LOST_AFTER_SECONDS``;
- it ran on another host and its heartbeat is older than ``JOB_LOST_AFTER_SECONDS``.

A job whose worker process is alive on this host and holds the run marker is never reaped, however old its
heartbeat: the process is still working on it, and it ends the job itself.

A lost job becomes ``failed`` (explanation: "Worker lost: ..."), which releases its cluster (one active job per
cluster is enforced on the status); the nodes it was installing become ``failed``; an install's cluster is marked
failed, so it can be resumed from the stage that was running. When the job ran on this host, its orphaned
ansible-playbook process group (``Job.ansible_pid``) is killed.

A *pending* job whose task message was lost (see :func:`jobs_fail_undelivered`) is failed too, conservatively:
only when the broker can be inspected and neither its queue nor the messages held by workers carry the job's
task, twice in a row, ``JOB_DISPATCH_GRACE_SECONDS`` after the request.

The beat schedule runs :func:`jobs_reap_lost` and :func:`jobs_fail_undelivered` every minute;
:func:`worker_started` runs when a worker starts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

import psutil
import redis
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from ..choices import ACTIVE_JOB_STATUSES, JobStatus
from ..models import Job, JobEvent
from . import state
from .process import host_id, hostname, process_holds_marker, process_start_token, same_host, same_process
from .runner import kill_process_group, remove_private_dir

__all__ = [
    "job_events_purge",
    "job_mark_lost",
    "jobs_fail_undelivered",
    "jobs_reap_lost",
    "private_dirs_cleanup",
    "run_markers_cleanup",
    "worker_started",
]

logger = logging.getLogger(__name__)

# A process started this long after the job counts as a different process that reuses the pid (jobs claimed
# before worker processes were recorded with their start time).
_PID_REUSE_SLACK = timedelta(seconds=2)
# Private directories: job<id>.<pid>.<process start>.<random> (older ones: job<id>.<pid>.<random>).
_PRIVATE_DIR_RE = re.compile(r"^job(?P<job>\d+)\.(?P<pid>\d+)\.(?:(?P<start>[0-9a-z]+)\.)?[^.]+$")


def _this_host() -> str:
    return hostname()


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


def _explain(job: Job, *, process_gone: bool, idle: bool = False) -> str:
    when = job.heartbeat_at.strftime("%Y-%m-%d %H:%M:%S %Z") if job.heartbeat_at else "the job started"
    where = f"{job.worker_hostname or 'unknown host'} pid {job.worker_pid or '?'}"
    if process_gone:
        return f"Worker lost: the worker process ({where}) is gone; no heartbeat since {when}. Resume or retry the job."
    if idle:
        return (
            f"Worker lost: the worker process ({where}) no longer works on the job; no heartbeat since {when}. "
            "Resume or retry the job."
        )
    return f"Worker lost: no heartbeat since {when} (worker {where}). Resume or retry the job."


def _verdict(job: Job, *, stale: bool, host: str) -> tuple[bool, str]:
    """(lost, explanation) for a running job."""
    identity = job.worker_process or ""
    if identity and same_host(identity):
        if not same_process(identity):
            return True, _explain(job, process_gone=True)
        holds = process_holds_marker(int(job.worker_pid or 0), job.pk)
        if holds is None or holds:
            # The process is alive and working on the job: never reaped, whatever the heartbeat says.
            return False, ""
        return stale, _explain(job, process_gone=False, idle=True)
    if not identity and job.worker_hostname == host:
        # Claimed before worker processes were recorded with their start time.
        gone = not _process_alive_since(job.worker_pid, job.started_at)
        return stale or gone, _explain(job, process_gone=gone)
    return stale, _explain(job, process_gone=False)


def jobs_reap_lost(*, now: datetime | None = None) -> list[int]:
    """Fail every lost running job (see the module docstring). Returns their ids."""
    now = now or timezone.now()
    host = _this_host()
    cutoff = now - timedelta(seconds=settings.JOB_LOST_AFTER_SECONDS)
    candidates = list(
        Job.objects.filter(status=JobStatus.RUNNING)
        .filter(
            Q(heartbeat_at__lt=cutoff)
            | Q(heartbeat_at__isnull=True)
            | Q(worker_hostname=host)
            | Q(worker_process__startswith=f"{host_id()}/")
        )
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
            "worker_process",
            "ansible_pid",
        )
    )
    reaped = []
    for job in candidates:
        stale = job.heartbeat_at is None or job.heartbeat_at < cutoff
        lost, explanation = _verdict(job, stale=stale, host=host)
        if lost and job_mark_lost(job=job, explanation=explanation):
            reaped.append(job.pk)
    return reaped


def job_mark_lost(*, job: Job, explanation: str, kill: bool = True) -> bool:
    """Fail a running job whose worker is gone, settle its cluster and nodes, stop its orphaned playbook when it
    ran on this host (unless ``kill`` is false). Conditional on the heartbeat not having moved since ``job`` was
    read (a worker that is alive after all keeps its job). Returns whether the job was failed."""
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
    if (
        kill
        and job.ansible_pid
        and (same_host(job.worker_process or "") or (not job.worker_process and job.worker_hostname == _this_host()))
    ):
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


# Pending jobs whose message was lost.


class BrokerNotInspectable(Exception):
    """The broker's queues cannot be listed (a transport other than Redis, or the broker is down)."""


def _queued_task_ids(queues: Iterable[str]) -> set[str]:
    """Ids of the tasks waiting in ``queues`` or delivered to a worker and not yet acknowledged (prefetched, or
    being handed to a pool process), read from the Redis broker."""
    from rke2portal.celery import app

    try:
        with app.connection_for_read() as conn:
            if conn.transport.driver_type != "redis":
                raise BrokerNotInspectable(f"the {conn.transport.driver_type} broker cannot be inspected")
            conn.ensure_connection(max_retries=1)
            channel = conn.default_channel
            # A plain client on the channel's connections: the prefixing client kombu uses knows only the commands
            # kombu itself sends, so keys are prefixed here.
            client = redis.Redis(connection_pool=channel.client.connection_pool)
            prefix = getattr(channel, "global_keyprefix", "") or ""
            raw: list[bytes] = []
            for queue in queues:
                for priority in channel.priority_steps:
                    raw.extend(client.lrange(prefix + channel._q_for_pri(queue, priority), 0, -1))
            held = [json.loads(value)[0] for value in client.hvals(prefix + channel.unacked_key)]
    except BrokerNotInspectable:
        raise
    except Exception as exc:
        raise BrokerNotInspectable(str(exc)) from exc
    ids = set()
    for message in [*(json.loads(value) for value in raw), *held]:
        task_id = (message.get("headers") or {}).get("id") if isinstance(message, dict) else None
        if task_id:
            ids.add(str(task_id))
    return ids


def jobs_fail_undelivered(*, now: datetime | None = None, recheck_seconds: float = 2.0) -> list[int]:
    """Fail the pending jobs that no worker will ever take, because their task message was lost (the request's
    process died before handing it to the broker, the broker restarted without keeping its queue, a worker died
    after taking it but before claiming the job). Returns their ids.

    Conservative: a job is failed only when it was requested more than ``JOB_DISPATCH_GRACE_SECONDS`` ago, the
    broker can be inspected (Redis), and its task is neither in the queue nor held unacknowledged by any worker,
    in two looks ``recheck_seconds`` apart (a message moves between the two in milliseconds), and the job is still
    pending after that. Anything else leaves the job alone.
    """
    from ..services.jobs import JOB_QUEUE

    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.JOB_DISPATCH_GRACE_SECONDS)
    pending = list(
        Job.objects.filter(status=JobStatus.PENDING, created_at__lt=cutoff).only(
            "id", "cluster_id", "celery_task_id", "created_at", "dispatched_at"
        )
    )
    if not pending:
        return []
    try:
        missing = [job for job in pending if job.celery_task_id not in _queued_task_ids([JOB_QUEUE])]
        if missing:
            time.sleep(recheck_seconds)
            queued = _queued_task_ids([JOB_QUEUE])
            missing = [job for job in missing if job.celery_task_id not in queued]
    except BrokerNotInspectable as exc:
        logger.info("pending jobs %s: cannot tell whether their messages are queued (%s)", [j.pk for j in pending], exc)
        return []
    failed = []
    for job in missing:
        requested = job.created_at.strftime("%Y-%m-%d %H:%M:%S %Z")
        if job.dispatched_at is None:
            explanation = (
                f"Never started: the job was requested at {requested} but its message never reached the task "
                "queue (the requesting process stopped before sending it). Request the job again."
            )
        else:
            explanation = (
                f"Never started: the job's message was handed to the task queue at "
                f"{job.dispatched_at.strftime('%Y-%m-%d %H:%M:%S %Z')}, but it is no longer queued and no worker "
                "holds it (the broker lost its queue, or a worker stopped before starting the job). "
                "Request the job again."
            )
        updated = Job.objects.filter(pk=job.pk, status=JobStatus.PENDING).update(
            status=JobStatus.FAILED, finished_at=timezone.now(), explanation=explanation
        )
        if updated:
            failed.append(job.pk)
            logger.warning("job %s: %s", job.pk, explanation)
    return failed


def _private_dir_owner(path: Path) -> tuple[int, int, str | None] | None:
    """(job id, worker pid, worker start token or None) of a private directory; None for a name the engine does
    not make."""
    match = _PRIVATE_DIR_RE.match(path.name)
    return (int(match["job"]), int(match["pid"]), match["start"]) if match else None


def _dir_owner_alive(path: Path, pid: int, start: str | None) -> bool:
    """Whether the process that made a private directory still lives: the pid with the start time in the name
    (or, for names without one, a process with the pid that is older than the directory)."""
    if start is not None:
        return process_start_token(pid) == start
    try:
        created = path.stat().st_ctime
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return process.create_time() <= created + 1.0
    except (OSError, psutil.Error):
        return False


def private_dirs_cleanup(*, work_dir: Path | None = None) -> list[Path]:
    """Remove private directories left by dead worker processes of this host (and stop what still uses them).
    A directory whose pid now belongs to a later process is removed too. Returns the removed paths."""
    base = Path(work_dir or settings.JOBS_WORK_DIR)
    if not base.is_dir():
        return []
    removed = []
    for path in base.iterdir():
        owner = _private_dir_owner(path)
        if owner is None or not path.is_dir():
            continue
        _job_id, pid, start = owner
        if _dir_owner_alive(path, pid, start):
            continue
        needle = str(path)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.pid != os.getpid() and any(needle in part for part in (proc.info.get("cmdline") or [])):
                    proc.kill()
            except psutil.Error:
                continue
        remove_private_dir(path)
        removed.append(path)
    return removed


def run_markers_cleanup(*, work_dir: Path | None = None) -> list[Path]:
    """Remove the run markers of jobs that no longer run (left by a worker process that was killed). Returns the
    removed paths."""
    base = Path(work_dir or settings.JOBS_WORK_DIR)
    if not base.is_dir():
        return []
    markers = {}
    for path in base.glob("job*.running"):
        match = re.fullmatch(r"job(\d+)\.running", path.name)
        if match and path.is_file():
            markers[int(match[1])] = path
    if not markers:
        return []
    still_running = set(Job.objects.filter(pk__in=list(markers), status=JobStatus.RUNNING).values_list("pk", flat=True))
    removed = []
    for job_id, path in markers.items():
        if job_id not in still_running:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def worker_started() -> None:
    """When a worker starts: fail the jobs its predecessors on this host left running, remove their leftovers."""
    try:
        reaped = jobs_reap_lost()
        if reaped:
            logger.warning("failed jobs %s: their worker on this host is gone", reaped)
        private_dirs_cleanup()
        run_markers_cleanup()
    except Exception:
        logger.exception("could not reap the jobs of a previous worker")


def job_events_purge(
    *, older_than_days: int | None = None, batch_size: int = 5000, pause_seconds: float | None = None
) -> int:
    """Delete the events of jobs that finished more than ``older_than_days`` days ago (default:
    ``JOB_EVENT_RETENTION_DAYS``), in batches. The jobs and their per-host summaries stay; ``emitted_events``
    becomes 0 and ``result["events_purged"]`` true. Returns the number of events deleted.

    Every batch is one DELETE of about ``batch_size`` events in a transaction of its own, found through the
    (job, counter) index: the events of as many small jobs as fit, or a range of counters of a large job. A pause
    of ``pause_seconds`` follows each batch, so a live log never waits for more than one batch (on SQLite a batch
    holds the only write lock; the pause lets waiting writers in). By default the pause is 10 ms, and 100 ms on
    SQLite: a writer waiting for the lock sleeps up to 100 ms between attempts, and a shorter pause can miss it
    again and again."""
    if pause_seconds is None:
        pause_seconds = 0.1 if connection.vendor == "sqlite" else 0.01
    days = settings.JOB_EVENT_RETENTION_DAYS if older_than_days is None else older_than_days
    cutoff = timezone.now() - timedelta(days=days)
    jobs = list(
        Job.objects.filter(finished_at__lt=cutoff, emitted_events__gt=0)
        .exclude(status__in=ACTIVE_JOB_STATUSES)
        .order_by("pk")
        .values_list("pk", "emitted_events")
    )
    deleted = 0
    group: list[int] = []
    planned = 0

    def purge_group() -> None:
        nonlocal deleted, group, planned
        if group:
            deleted += JobEvent.objects.filter(job_id__in=group).delete()[0]
            _mark_events_purged(group)
            time.sleep(pause_seconds)
        group, planned = [], 0

    for job_id, emitted in jobs:
        if emitted > batch_size:
            deleted += _purge_job_by_counter(job_id, batch_size=batch_size, pause_seconds=pause_seconds)
            _mark_events_purged([job_id])
            continue
        if planned + emitted > batch_size:
            purge_group()
        group.append(job_id)
        planned += emitted
    purge_group()
    return deleted


def _purge_job_by_counter(job_id: int, *, batch_size: int, pause_seconds: float) -> int:
    """Delete one job's events ``batch_size`` counters at a time (counters are dense; gaps are skipped)."""
    deleted = 0
    low = 0
    while True:
        count = JobEvent.objects.filter(job_id=job_id, counter__gt=low, counter__lte=low + batch_size).delete()[0]
        deleted += count
        low += batch_size
        if count:
            time.sleep(pause_seconds)
            continue
        following = (
            JobEvent.objects.filter(job_id=job_id, counter__gt=low).order_by("counter").values_list("counter").first()
        )
        if following is None:
            return deleted
        low = following[0] - 1


def _mark_events_purged(job_ids: list[int]) -> None:
    jobs = list(Job.objects.filter(pk__in=job_ids).only("id", "result"))
    for job in jobs:
        job.emitted_events = 0
        job.result = {**(job.result if isinstance(job.result, dict) else {}), "events_purged": True}
    Job.objects.bulk_update(jobs, ["emitted_events", "result"], batch_size=200)
