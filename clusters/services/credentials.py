"""Creating, changing and deleting SSH credentials."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError

from ..exceptions import InvalidState
from ..integrity import integrity_error_messages
from ..models import SSHCredential
from .audit import audit_record

__all__ = ["CREDENTIAL_FIELDS", "SECRET_FIELDS", "credential_create", "credential_delete", "credential_update"]

CREDENTIAL_FIELDS = ("name", "username", "port", "become", "private_key", "passphrase", "known_hosts")
SECRET_FIELDS = ("private_key", "passphrase")


def _check_fields(data: Mapping[str, Any]) -> None:
    unknown = set(data) - set(CREDENTIAL_FIELDS)
    if unknown:
        raise ValidationError({field: ["Unknown field."] for field in sorted(unknown)})


def _save(credential: SSHCredential) -> None:
    credential.full_clean()
    try:
        with transaction.atomic():
            credential.save()
    except IntegrityError as exc:  # a concurrent request took the name first
        raise ValidationError(integrity_error_messages(exc, SSHCredential)) from exc


@transaction.atomic
def credential_create(*, actor: Any = None, **fields: Any) -> SSHCredential:
    """Create an SSH credential after checking that the key parses (and the passphrase opens it); the public key's
    fingerprint is stored. The audit entry names the credential, never its secrets."""
    _check_fields(fields)
    credential = SSHCredential(**fields)
    _save(credential)
    audit_record(
        action="credential.create", actor=actor, object_repr=credential.name, detail={"credential_id": credential.pk}
    )
    return credential


@transaction.atomic
def credential_update(*, credential: SSHCredential, data: Mapping[str, Any], actor: Any = None) -> SSHCredential:
    """Change an SSH credential. A new private key replaces the passphrase too (empty unless one is given with it);
    secrets that are not given are kept."""
    _check_fields(data)
    values = dict(data)
    if "private_key" in values:
        values.setdefault("passphrase", "")
    changed = sorted(
        field for field, value in values.items() if field in SECRET_FIELDS or getattr(credential, field) != value
    )
    for field, value in values.items():
        setattr(credential, field, value)
    _save(credential)
    if changed:
        audit_record(
            action="credential.update",
            actor=actor,
            object_repr=credential.name,
            detail={"credential_id": credential.pk, "fields": changed},
        )
    return credential


@transaction.atomic
def credential_delete(*, credential: SSHCredential, actor: Any = None) -> None:
    """Delete an SSH credential; refused while a cluster uses it."""
    users = list(credential.clusters.order_by("name").values_list("name", flat=True)[:6])
    if users:
        names = ", ".join(users[:5]) + (", ..." if len(users) > 5 else "")
        raise InvalidState(f"The credential is used by the cluster(s) {names}: assign them another one first.")
    audit_record(
        action="credential.delete", actor=actor, object_repr=credential.name, detail={"credential_id": credential.pk}
    )
    try:
        credential.delete()
    except ProtectedError as exc:  # a cluster started using it meanwhile
        raise InvalidState("The credential is used by a cluster: assign it another one first.") from exc
