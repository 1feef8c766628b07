"""The audit trail."""

from __future__ import annotations

from typing import Any

from ..models import AuditLog, Cluster


def audit_record(
    *,
    action: str,
    actor: Any = None,
    cluster: Cluster | None = None,
    object_repr: str = "",
    detail: dict[str, Any] | None = None,
) -> AuditLog:
    """Append one entry to the audit log."""
    if actor is not None and not getattr(actor, "is_authenticated", False):
        actor = None
    return AuditLog.objects.create(
        action=action,
        actor=actor,
        cluster=cluster,
        object_repr=object_repr[:255] or (cluster.name if cluster else ""),
        detail=detail or {},
    )
