"""Parsing of SSH private keys supplied by operators."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa

__all__ = ["KeyError_", "known_hosts_problems", "load_private_key", "normalize_private_key"]

MIN_RSA_BITS = 2048

_OPENSSH_LABEL = rb"OPENSSH PRIVATE KEY"
_OPENSSH_BODY_RE = re.compile(
    rb"-{5}BEGIN " + _OPENSSH_LABEL + rb"-{5}(?P<body>.*?)-{5}END " + _OPENSSH_LABEL + rb"-{5}", re.DOTALL
)
_OPENSSH_MAGIC = b"openssh-key-v1\x00"
_PUBLIC_KEY_PREFIXES = ("ssh-", "ecdsa-", "sk-", "---- BEGIN SSH2 PUBLIC KEY", "-----BEGIN PUBLIC KEY")


class KeyError_(Exception):
    """The key text or its passphrase is unusable; ``field`` names the form field to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _openssh_cipher(data: bytes) -> str | None:
    """The cipher name in an OpenSSH private key container ("none" when unencrypted), None when unreadable."""
    match = _OPENSSH_BODY_RE.search(data)
    if not match:
        return None
    try:
        blob = base64.b64decode(b"".join(match["body"].split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not blob.startswith(_OPENSSH_MAGIC) or len(blob) < len(_OPENSSH_MAGIC) + 4:
        return None
    (length,) = struct.unpack(">I", blob[len(_OPENSSH_MAGIC) : len(_OPENSSH_MAGIC) + 4])
    name = blob[len(_OPENSSH_MAGIC) + 4 : len(_OPENSSH_MAGIC) + 4 + length]
    if len(name) != length or length > 64:
        return None
    try:
        return name.decode("ascii")
    except UnicodeDecodeError:
        return None


def _is_encrypted(data: bytes, is_openssh: bool) -> bool | None:
    if is_openssh:
        cipher = _openssh_cipher(data)
        return None if cipher is None else cipher != "none"
    return b"ENCRYPTED" in data


def normalize_private_key(text: str) -> str:
    """Key text as OpenSSH tools expect it: LF line ends and a final newline (ssh-add refuses a key file that
    lacks one, a common result of pasting a key into a form)."""
    stripped = (text or "").replace("\r\n", "\n").replace("\r", "\n").strip()
    return stripped + "\n" if stripped else ""


def load_private_key(text: str, passphrase: str = "") -> str:
    """Parse an OpenSSH or PEM private key and return its public key's SHA256 fingerprint (as ``ssh-keygen -l``).

    Raises :class:`KeyError_` when the text is not a usable private key or the passphrase does not open it. The
    error message never contains the key material.
    """
    stripped = normalize_private_key(text).strip()
    if not stripped:
        raise KeyError_("private_key", "A private key is required.")
    if stripped.startswith(_PUBLIC_KEY_PREFIXES):
        raise KeyError_("private_key", "This is a public key: paste the private key (the file without .pub).")
    if "PuTTY-User-Key-File" in stripped:
        raise KeyError_(
            "private_key", "PuTTY keys are not supported: export the key in OpenSSH format (PuTTYgen: Conversions)."
        )
    data = stripped.encode("utf-8") + b"\n"
    password = passphrase.encode("utf-8") if passphrase else None
    is_openssh = b"BEGIN OPENSSH PRIVATE KEY" in data
    if not is_openssh and b"PRIVATE KEY-----" not in data:
        raise KeyError_("private_key", "This is not a private key in OpenSSH or PEM format.")
    encrypted = _is_encrypted(data, is_openssh)
    if is_openssh and encrypted is None:
        raise KeyError_("private_key", "This OpenSSH private key is damaged (it cannot be decoded).")
    if encrypted and password is None:
        raise KeyError_("passphrase", "This private key is encrypted: enter its passphrase.")
    if encrypted is False and password is not None:
        raise KeyError_("passphrase", "This private key is not encrypted: leave the passphrase empty.")
    loader = serialization.load_ssh_private_key if is_openssh else serialization.load_pem_private_key
    try:
        key = loader(data, password=password)
    except TypeError as exc:
        # cryptography raises TypeError when a password is missing for an encrypted key or given for a plain one.
        if password is None:
            raise KeyError_("passphrase", "This private key is encrypted: enter its passphrase.") from exc
        raise KeyError_("passphrase", "This private key is not encrypted: leave the passphrase empty.") from exc
    except UnsupportedAlgorithm as exc:
        if is_openssh and encrypted:
            # cryptography needs the bcrypt package for the key derivation of passphrase-protected OpenSSH keys.
            raise KeyError_(
                "passphrase",
                "Passphrase-protected OpenSSH keys cannot be opened on this server (the bcrypt package is missing).",
            ) from exc
        raise KeyError_("private_key", "This key type is not supported: use an ed25519 or RSA key.") from exc
    except ValueError as exc:
        if encrypted:
            raise KeyError_("passphrase", "The passphrase does not open this private key.") from exc
        raise KeyError_("private_key", "This private key is damaged or in an unknown format.") from exc
    except Exception as exc:  # unsupported key types and other parser errors
        raise KeyError_("private_key", "This private key cannot be used (unsupported or damaged key).") from exc
    if isinstance(key, dsa.DSAPrivateKey):
        raise KeyError_("private_key", "DSA keys are no longer accepted by OpenSSH: use an ed25519 or RSA key.")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise KeyError_(
            "private_key", f"This RSA key has {key.key_size} bits: use at least {MIN_RSA_BITS} bits, or ed25519."
        )
    try:
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    except (ValueError, TypeError) as exc:
        raise KeyError_("private_key", "This key type cannot be used for SSH.") from exc
    blob = base64.b64decode(public.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def unlocked_private_key(text: str, passphrase: str) -> str:
    """The key opened with its passphrase, in OpenSSH format without encryption, for a run's ``ssh-agent``.

    The agent holds the key unlocked anyway; opening it here spares ``ssh-add`` its passphrase prompt, whose
    answering through a terminal depends on the length of the key file's path. Raises :class:`KeyError_` as
    :func:`load_private_key` does.
    """
    load_private_key(text, passphrase)
    data = normalize_private_key(text).encode("utf-8")
    loader = (
        serialization.load_ssh_private_key
        if b"BEGIN OPENSSH PRIVATE KEY" in data
        else serialization.load_pem_private_key
    )
    key = loader(data, password=passphrase.encode("utf-8"))
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode("ascii")


_KNOWN_HOSTS_MARKERS = ("@cert-authority", "@revoked")


def known_hosts_problems(text: str) -> list[str]:
    """What is wrong with ``known_hosts`` text, line by line (empty when it is usable): each entry is
    ``[marker] hosts key-type base64-key [comment]``."""
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0] in _KNOWN_HOSTS_MARKERS:
            fields = fields[1:]
        if len(fields) < 3:
            problems.append(f"Line {number}: expected 'host[,host...] key-type key', as ssh-keyscan prints it.")
            continue
        try:
            blob = base64.b64decode(fields[2], validate=True)
        except (binascii.Error, ValueError):
            blob = b""
        (length,) = struct.unpack(">I", blob[:4]) if len(blob) >= 4 else (0,)
        if blob[4 : 4 + length].decode("ascii", "replace") != fields[1]:
            problems.append(f"Line {number}: the {fields[1]!r} key is not valid base64 key data of that type.")
    return problems
