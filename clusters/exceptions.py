"""Business errors raised by services. Interfaces (API, admin, commands) render them; each carries a code."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A request the domain refuses. ``code`` is stable for clients; ``message`` is for people."""

    code = "error"
    http_status = 400

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class InvalidState(ApplicationError):
    """The cluster or job is not in a state that allows the action."""

    code = "invalid_state"
    http_status = 409


class JobConflict(ApplicationError):
    """Another job is active on the cluster."""

    code = "job_conflict"
    http_status = 409

    def __init__(self, job: Any) -> None:
        if job is None:
            message = "The cluster already has an active job."
            extra: dict[str, Any] = {}
        else:
            message = f"The cluster already has an active job: {job.get_kind_display()} #{job.pk} ({job.status})."
            extra = {"job_id": job.pk, "job_kind": job.kind, "job_status": job.status}
        super().__init__(message, extra=extra)
        self.job = job


class QueueUnavailable(ApplicationError):
    """The task queue (broker) cannot be reached: the request is not queued."""

    code = "queue_unavailable"
    http_status = 503
