"""Relaunching a finished job: the same kind and parameters, requested again through :func:`job_request`.

A failed (or canceled) install that ran is relaunched as a resume from the stage that failed. An uninstall needs
its typed confirmation again (the confirmation is never stored). The new job goes through the same checks,
permissions and audit entry as any job request, and the one-active-job rule applies.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from ..choices import JobKind
from ..exceptions import InvalidState
from ..models import Job
from .audit import audit_record
from .jobs import install_resume_stage, job_request

__all__ = ["RELAUNCH_PERMISSIONS", "job_relaunch", "relaunch_params", "relaunch_permissions"]

# Permissions to relaunch a job of a kind: those its own request needs (the API's cluster actions).
RELAUNCH_PERMISSIONS: dict[str, tuple[str, ...]] = {
    JobKind.SCALE_ADD: ("clusters.add_node", "clusters.add_job"),
    JobKind.SCALE_REMOVE: ("clusters.change_node", "clusters.add_job"),
    JobKind.ETCD_RESTORE: ("clusters.add_job", "clusters.restore_etcdsnapshot"),
}
_DEFAULT_PERMISSIONS = ("clusters.add_job",)


def relaunch_permissions(kind: str) -> tuple[str, ...]:
    return RELAUNCH_PERMISSIONS.get(kind, _DEFAULT_PERMISSIONS)


def relaunch_params(job: Job, *, confirm: str = "") -> dict[str, Any]:
    """The parameters of the relaunch of ``job``."""
    params = dict(job.params or {})
    if job.kind == JobKind.INSTALL:
        params["resume"] = job.started_at is not None and install_resume_stage(job) is not None
    if job.kind in (JobKind.UNINSTALL, JobKind.ETCD_RESTORE):
        if not confirm:
            what = "uninstall" if job.kind == JobKind.UNINSTALL else "restore"
            raise ValidationError({"confirm": [f"Type the cluster's name ({job.cluster.name}) to confirm the {what}."]})
        params["confirm"] = confirm
    return params


def job_relaunch(*, job: Job, actor: Any = None, confirm: str = "") -> Job:
    """Request ``job`` again. Raises :class:`InvalidState` while it is still active, and whatever
    :func:`job_request` raises when the cluster's state no longer allows it (another job active, nothing left to
    do, ...). Records ``job.relaunch`` in the audit log next to the request's own entry."""
    if job.is_active:
        raise InvalidState(f"Job #{job.pk} has not finished yet ({job.status}): wait for it, or cancel it.")
    params = relaunch_params(job, confirm=confirm)
    new = job_request(cluster=job.cluster, kind=job.kind, params=params, actor=actor)
    audit_record(
        action="job.relaunch",
        actor=actor,
        cluster=job.cluster,
        detail={"job_id": new.pk, "relaunch_of": job.pk, "resume": bool(params.get("resume"))},
    )
    return new
