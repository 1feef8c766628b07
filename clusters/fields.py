"""Model fields whose values are encrypted at rest."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.query_utils import DeferredAttribute

from . import crypto

MASK = "********"


class Secret(str):
    """A decrypted secret. Behaves as ``str`` for code that needs the value; never shows it in str/repr/format
    output, so it cannot leak through logging, error pages or ``{}`` formatting by accident. Use ``reveal()``
    to get the plain value explicitly."""

    __slots__ = ()

    def reveal(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return MASK if self.reveal() else ""

    def __repr__(self) -> str:
        return f"<Secret {MASK}>" if self.reveal() else "<Secret (empty)>"

    def __format__(self, format_spec: str) -> str:
        return format(str(self), format_spec)


def reveal(value: Any) -> str:
    """Plain text of a secret field value (or of a plain string)."""
    if value is None:
        return ""
    if isinstance(value, Secret):
        return value.reveal()
    return str(value)


class SecretAttribute(DeferredAttribute):
    """Model attribute of an encrypted field: whatever is assigned is held as a :class:`Secret`, so a value set
    in code (a generated token, a fetched kubeconfig) is masked exactly like one loaded from the database."""

    def __set__(self, instance: models.Model, value: Any) -> None:
        if isinstance(value, (bytes, bytearray)):
            value = value.decode("utf-8")
        if value is not None and not isinstance(value, Secret):
            value = Secret(value if isinstance(value, str) else str(value))
        instance.__dict__[self.field.attname] = value


class EncryptedTextField(models.TextField):
    """A text column stored as Fernet ciphertext; Python sees a :class:`Secret`. Empty stays empty.

    The ciphertext is randomized, so the column cannot be searched or compared in SQL; filter on other fields.
    """

    description = "Text encrypted at rest"
    descriptor_class = SecretAttribute

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Secret | None:
        if value is None:
            return None
        if value == "":
            return Secret("")
        return Secret(crypto.decrypt(value))

    def to_python(self, value: Any) -> Secret | None:
        if value is None or isinstance(value, Secret):
            return value
        if isinstance(value, (bytes, bytearray)):
            return Secret(value.decode("utf-8"))
        return Secret(str(value))

    def get_prep_value(self, value: Any) -> str | None:
        if value is None:
            return None
        plain = reveal(value)
        if plain == "":
            return ""
        return crypto.encrypt(plain)

    def value_to_string(self, obj: models.Model) -> str:
        # Serialization (dumpdata, admin history) never sees the plaintext.
        return MASK if reveal(self.value_from_object(obj)) else ""
