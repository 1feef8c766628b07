"""Encryption of secrets at rest (cluster tokens, SSH keys, passphrases, kubeconfigs).

Values are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under ``settings.FIELD_ENCRYPTION_KEYS``, a list of
keys, newest first, combined with MultiFernet: the first key encrypts, every key decrypts. To rotate, prepend a
new key, run ``manage.py rotate_encryption_keys``, then drop the old key.

The keys are independent of ``SECRET_KEY``: rotating one never makes the other's data unreadable.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "DecryptionError",
    "decrypt",
    "encrypt",
    "generate_key",
    "is_current",
    "rotate",
]

_INVALID_KEY = (
    "FIELD_ENCRYPTION_KEYS holds an invalid key (key {position}): each must be 32 url-safe base64-encoded bytes."
)


class DecryptionError(Exception):
    """Stored ciphertext could not be decrypted with any configured key."""


def _configured_keys() -> tuple[str, ...]:
    raw: Iterable[str | bytes] = settings.FIELD_ENCRYPTION_KEYS or ()
    if isinstance(raw, (str, bytes)):
        raw = [raw]
    keys = []
    for key in raw:
        text = key.decode("ascii") if isinstance(key, bytes) else str(key)
        if text.strip():
            keys.append(text.strip())
    return tuple(keys)


@functools.lru_cache(maxsize=4)
def _fernets_for(keys: tuple[str, ...]) -> tuple[MultiFernet, Fernet]:
    if not keys:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS is empty: set at least one Fernet key (see .env.example) to store secrets."
        )
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key.encode("ascii")))
        except (ValueError, TypeError, UnicodeEncodeError) as exc:
            raise ImproperlyConfigured(_INVALID_KEY.format(position=position)) from exc
    return MultiFernet(fernets), fernets[0]


def _fernet() -> MultiFernet:
    return _fernets_for(_configured_keys())[0]


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def _token_bytes(ciphertext: str) -> bytes:
    try:
        return ciphertext.encode("ascii")
    except UnicodeEncodeError as exc:
        raise DecryptionError("stored secret is not Fernet ciphertext") from exc


def decrypt(ciphertext: str) -> str:
    try:
        return _fernet().decrypt(_token_bytes(ciphertext)).decode("utf-8")
    except (InvalidToken, UnicodeDecodeError) as exc:
        raise DecryptionError("stored secret cannot be decrypted with the configured FIELD_ENCRYPTION_KEYS") from exc


def is_current(ciphertext: str) -> bool:
    """Whether ``ciphertext`` is encrypted under the primary (first) key."""
    primary = _fernets_for(_configured_keys())[1]
    try:
        primary.decrypt(_token_bytes(ciphertext))
    except (InvalidToken, DecryptionError):
        return False
    return True


def rotate(ciphertext: str) -> str:
    """Re-encrypt ``ciphertext`` under the primary key."""
    try:
        return _fernet().rotate(_token_bytes(ciphertext)).decode("ascii")
    except InvalidToken as exc:
        raise DecryptionError("stored secret cannot be decrypted with the configured FIELD_ENCRYPTION_KEYS") from exc


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


@checks.register()
def check_encryption_keys(app_configs: object = None, **kwargs: object) -> list[checks.CheckMessage]:
    """Fail fast (``manage.py check``, ``migrate``, ``runserver``) when the keys are missing or malformed."""
    keys = _configured_keys()
    if not keys:
        return [
            checks.Error(
                "FIELD_ENCRYPTION_KEYS is empty: secrets (cluster tokens, SSH keys, kubeconfigs) cannot be stored.",
                hint="Generate a key with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())' and set FIELD_ENCRYPTION_KEYS (see .env.example).",
                id="clusters.E001",
            )
        ]
    errors = []
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key.encode("ascii"))
        except (ValueError, TypeError, UnicodeEncodeError):
            errors.append(checks.Error(_INVALID_KEY.format(position=position), id="clusters.E002"))
    return errors
