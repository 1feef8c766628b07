"""The heartbeat of a running job, sent from a thread of its own.

While a worker process runs a job, :class:`Heartbeat` bumps ``Job.heartbeat_at`` (and ``emitted_events``) every
``JOB_HEARTBEAT_SECONDS`` from a daemon thread with its own database connection. Nothing the job does on its
main thread (a playbook blocked on a slow event queue, the event writer's final flush, a long stage transition)
delays it, so a stale heartbeat means that the process is gone, frozen, or cannot reach the database.

A beat that fails (the database restarts, say) is logged and retried at the next interval on a fresh connection.
The update is conditional on the job still running in this process: once the job has ended, or a reaper gave it
up, beats change nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.db import close_old_connections, connection
from django.utils import timezone

from ..choices import JobStatus
from ..models import Job

__all__ = ["Heartbeat"]

logger = logging.getLogger(__name__)


class Heartbeat:
    """Bumps a running job's heartbeat every ``interval`` seconds from a background thread."""

    def __init__(
        self, job_id: int, *, interval: float, worker_process: str, emitted: Callable[[], int] | None = None
    ) -> None:
        self.job_id = job_id
        self.interval = max(0.05, float(interval))
        self.worker_process = worker_process
        self.emitted = emitted
        self.beats = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"job-{job_id}-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def beat(self) -> bool:
        """One heartbeat. Returns whether the job is still running in this process."""
        fields: dict[str, object] = {"heartbeat_at": timezone.now()}
        if self.emitted is not None:
            try:
                fields["emitted_events"] = int(self.emitted())
            except Exception:  # noqa: BLE001 - the count is a nicety; the beat is what matters
                pass
        updated = Job.objects.filter(
            pk=self.job_id, status=JobStatus.RUNNING, worker_process=self.worker_process
        ).update(**fields)
        self.beats += 1
        return bool(updated)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.beat()
                except Exception:
                    self.failures += 1
                    logger.warning("job %s: heartbeat failed", self.job_id, exc_info=self.failures == 1)
                    close_old_connections()
                    drop_broken_connection()
        finally:
            connection.close()


def drop_broken_connection() -> None:
    try:
        if connection.connection is not None and not connection.is_usable():
            connection.close()
    except Exception:  # noqa: BLE001
        connection.close()
