"""Masking a job's secret values in text and event data before they are stored.

The playbooks keep secrets out of their output with ``no_log``; this is the second line of defence. The
secrets of a job (cluster token, SSH private key, key passphrase) are known exactly, so every stored string is
searched for them literally, in the forms they can take in Ansible output: as given, JSON-escaped, line by line
for multi-line keys, and base64-encoded (``slurp`` output).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["MASK", "Redactor", "strip_nul"]

MASK = "********"
# Shorter values would mask ordinary words; secrets the portal generates or accepts are far longer.
MIN_SECRET_LENGTH = 6
# Lines of a PEM/OpenSSH key body worth masking on their own (a key split over several output lines).
MIN_KEY_LINE_LENGTH = 16
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/=]+")


def strip_nul(text: str) -> str:
    """Text without NUL characters (PostgreSQL rejects them in text and JSON columns)."""
    return text.replace("\x00", "") if "\x00" in text else text


def _base64_forms(value: str) -> set[str]:
    """Substrings that appear in the base64 encoding of any text containing ``value``, whatever its offset."""
    raw = value.encode()
    forms = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\x00" * shift + raw).decode()
        # Keep only whole 3-byte groups of the value: the others depend on the neighbouring bytes.
        start = 4 if shift else 0
        end = len(encoded) - 4
        core = encoded[start:end]
        if len(core) >= MIN_KEY_LINE_LENGTH:
            forms.add(core)
    return forms


class Redactor:
    """Replaces the given secret values with :data:`MASK` in strings and JSON-like data; also strips NULs.

    Secrets shorter than :data:`MIN_SECRET_LENGTH` are not masked (they would mask ordinary words): the portal
    never accepts such a cluster token (see the legacy import). :meth:`add` takes secrets learnt while a job runs
    (a kubeconfig fetched by a stage); the redactor may be used from several threads meanwhile.
    """

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self._secrets: list[str] = []
        # (forms, pattern), replaced as one value so that a thread never sees the forms of one and the pattern of
        # the other.
        self._state: tuple[tuple[str, ...], re.Pattern[str] | None] = ((), None)
        self.add(secrets)

    def add(self, secrets: Iterable[str | None]) -> None:
        """Mask these secrets too, from now on."""
        self._secrets.extend(str(secret or "") for secret in secrets)
        forms: set[str] = set()
        for value in self._secrets:
            stripped = value.strip()
            if len(stripped) < MIN_SECRET_LENGTH:
                continue
            forms.update({value, stripped, json.dumps(stripped)[1:-1]})
            lines = [line.strip() for line in stripped.splitlines()]
            if len(lines) > 1:
                forms.update(
                    line for line in lines if len(line) >= MIN_KEY_LINE_LENGTH and _BASE64_LINE.fullmatch(line)
                )
            else:
                forms.update(_base64_forms(stripped))
        forms.discard("")
        # Longest first, so that a whole key is masked as one piece rather than line by line.
        ordered = tuple(sorted(forms, key=len, reverse=True))
        pattern = re.compile("|".join(re.escape(form) for form in ordered)) if ordered else None
        self._state = (ordered, pattern)

    @property
    def _forms(self) -> tuple[str, ...]:
        return self._state[0]

    @property
    def _pattern(self) -> re.Pattern[str] | None:
        return self._state[1]

    def __bool__(self) -> bool:
        return self._state[1] is not None

    def _found_in(self, text: str, forms: tuple[str, ...] | None = None) -> bool:
        return any(form in text for form in (self._forms if forms is None else forms))

    def text(self, value: str) -> str:
        """``value`` with every secret masked and NULs removed."""
        value = strip_nul(value)
        forms, pattern = self._state
        if pattern is not None and self._found_in(value, forms):
            value = pattern.sub(MASK, value)
        return value

    def data(self, value: Any) -> Any:
        """A copy of JSON-like ``value`` (dicts, lists, scalars) with every string passed through :meth:`text`.

        Returns ``value`` itself when it contains neither a secret nor a NUL (the common case: one ``json.dumps``).
        """
        try:
            dumped = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            return self._walk(value)
        forms, pattern = self._state
        if "\\u0000" in dumped or (pattern is not None and self._found_in(dumped, forms)):
            return self._walk(value)
        return value

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(key)): self._walk(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._walk(item) for item in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self.text(str(value))
