"""Private registries of a cluster: creating, changing and deleting them (credentials write-only).

A change takes effect on the nodes with the next job that configures them (install, scale-out, upgrade): the
playbooks write ``/etc/rancher/rke2/registries.yaml`` and restart RKE2 when it changed, as for ``config.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from ..fields import reveal
from ..integrity import integrity_error_messages
from ..models import Registry
from .audit import audit_record

__all__ = ["REGISTRY_FIELDS", "SECRET_FIELDS", "registry_create", "registry_delete", "registry_update"]

REGISTRY_FIELDS = (
    "name",
    "endpoints",
    "rewrite",
    "username",
    "password",
    "auth",
    "identity_token",
    "ca_file",
    "cert_file",
    "key_file",
    "insecure_skip_verify",
)
SECRET_FIELDS = ("password", "auth", "identity_token")


def _check_fields(data: Mapping[str, Any]) -> None:
    unknown = set(data) - set(REGISTRY_FIELDS)
    if unknown:
        raise ValidationError({field: ["Unknown field."] for field in sorted(unknown)})


def _save(registry: Registry) -> None:
    registry.full_clean()
    try:
        with transaction.atomic():
            registry.save()
    except IntegrityError as exc:  # a concurrent request added the same registry first
        raise ValidationError(integrity_error_messages(exc, Registry)) from exc


@transaction.atomic
def registry_create(*, cluster: Any, actor: Any = None, **fields: Any) -> Registry:
    """Add a registry to ``cluster`` after validating it; audited without its credentials."""
    _check_fields(fields)
    registry = Registry(cluster=cluster, **fields)
    _save(registry)
    audit_record(
        action="registry.create",
        actor=actor,
        cluster=cluster,
        object_repr=registry.name,
        detail={"registry_id": registry.pk, "endpoints": list(registry.endpoints or [])},
    )
    return registry


@transaction.atomic
def registry_update(*, registry: Registry, data: Mapping[str, Any], actor: Any = None) -> Registry:
    """Change a registry. A credential that is omitted or empty is kept; giving a new kind of credential (or
    ``clear_credentials``) drops the others. Audited with the names of the changed fields only."""
    values = dict(data)
    clear = bool(values.pop("clear_credentials", False))
    _check_fields(values)
    given = {field for field in SECRET_FIELDS if reveal(values.get(field))}
    for field in SECRET_FIELDS:
        if field in values and not reveal(values[field]):
            values.pop(field)  # empty: keep the stored one
    if clear or given:
        for field in SECRET_FIELDS:
            if field not in given:
                values[field] = ""
        if clear and "username" not in values and not given:
            values["username"] = ""
    changed = sorted(
        field for field, value in values.items() if field in SECRET_FIELDS or getattr(registry, field) != value
    )
    for field, value in values.items():
        setattr(registry, field, value)
    _save(registry)
    if changed:
        audit_record(
            action="registry.update",
            actor=actor,
            cluster=registry.cluster,
            object_repr=registry.name,
            detail={"registry_id": registry.pk, "fields": changed},
        )
    return registry


@transaction.atomic
def registry_delete(*, registry: Registry, actor: Any = None) -> None:
    audit_record(
        action="registry.delete",
        actor=actor,
        cluster=registry.cluster,
        object_repr=registry.name,
        detail={"registry_id": registry.pk},
    )
    registry.delete()
