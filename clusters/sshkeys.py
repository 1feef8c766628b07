"""Parsing of SSH private keys supplied by operators."""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import serialization

__all__ = ["KeyError_", "load_private_key"]


class KeyError_(Exception):  # noqa: N801 - not the builtin KeyError
    """The key text or its passphrase is unusable; ``field`` names the form field to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def load_private_key(text: str, passphrase: str = "") -> str:
    """Parse an OpenSSH or PEM private key and return its public key's SHA256 fingerprint (as ``ssh-keygen -l``).

    Raises :class:`KeyError_` when the text is not a private key or the passphrase does not open it. The error
    message never contains the key material.
    """
    data = text.strip().encode("utf-8") + b"\n"
    password = passphrase.encode("utf-8") if passphrase else None
    is_openssh = b"OPENSSH PRIVATE KEY" in data
    loader = serialization.load_ssh_private_key if is_openssh else serialization.load_pem_private_key
    try:
        key = loader(data, password=password)
    except TypeError as exc:
        # cryptography raises TypeError when a password is missing for an encrypted key or given for a plain one.
        if password is None:
            raise KeyError_("passphrase", "This private key is encrypted: enter its passphrase.") from exc
        raise KeyError_("passphrase", "This private key is not encrypted: leave the passphrase empty.") from exc
    except ValueError as exc:
        if password is not None and (is_openssh or b"ENCRYPTED" in data):
            raise KeyError_("passphrase", "The passphrase does not open this private key.") from exc
        raise KeyError_(
            "private_key", "This is not a private key in OpenSSH or PEM format (or it is damaged)."
        ) from exc
    except Exception as exc:  # unsupported key types and other parser errors
        raise KeyError_("private_key", "This private key cannot be used (unsupported or damaged key).") from exc
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(public.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"
