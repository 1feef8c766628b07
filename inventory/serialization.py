"""Writing inventories and extra variables for ``ansible-playbook`` so that Ansible never templates their values.

Every value in an inventory or extravars file comes from the database, much of it typed by operators (labels,
taints, extra RKE2 config). Ansible renders trusted strings that contain ``{{ }}`` or ``{% %}``, so such a value
could run lookups on the controller. Both files are therefore written as JSON in which every string is wrapped as
``{"__ansible_unsafe": "..."}``. ansible-core reads inventory files and ``-e @file`` extravars through the same
loader, which tries JSON first; its JSON decoder turns these wrappers into strings that are *not* trusted as
templates, so they reach modules and templates literally.

The YAML ``!unsafe`` tag is not used on purpose: ansible-core 2.19 re-resolves the implicit type of an ``!unsafe``
scalar, even a quoted one, so ``!unsafe 'on'`` loads as ``True`` and ``!unsafe '0640'`` as the integer 416. The
JSON form keeps every type exactly.

Mapping keys cannot be wrapped; they must be host names, group names, variable names or RKE2 config keys, and a
key outside :data:`SAFE_KEY_RE` is refused with ``ValueError``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import yaml

from clusters.fields import Secret, reveal

__all__ = [
    "SAFE_KEY_RE",
    "display_yaml",
    "load_ansible_data",
    "serialize_extravars",
    "serialize_inventory",
]

UNSAFE_KEY = "__ansible_unsafe"
# Host names, group names, variable names and RKE2 flag names; starts with a letter or digit, so a key can never
# be one of Ansible's ``__ansible_*`` markers, and holds no template syntax.
SAFE_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class _WriteError(ValueError):
    """A value that cannot be written; ``path`` is filled in on the way up, so the happy path tracks nothing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.path: list[str] = []

    def __str__(self) -> str:
        return f"{''.join(self.path).lstrip('.')}: {self.message}"


def _wrap(value: Any, reveal_secrets: bool) -> Any:
    kind = type(value)
    if kind is str:
        return {UNSAFE_KEY: value}
    if kind is dict or isinstance(value, Mapping):
        wrapped = {}
        for key, item in value.items():
            if type(key) is not str or not SAFE_KEY_RE.match(key):
                if not isinstance(key, str) or not SAFE_KEY_RE.match(key):
                    raise _WriteError(f"{key!r} is not a valid name (letters, digits, '_', '.', '+', '-').")
                key = str.__str__(key)
            try:
                wrapped[key] = _wrap(item, reveal_secrets)
            except _WriteError as exc:
                exc.path.insert(0, f".{key}")
                raise
        return wrapped
    if kind is list or kind is tuple:
        result = []
        for index, item in enumerate(value):
            try:
                result.append(_wrap(item, reveal_secrets))
            except _WriteError as exc:
                exc.path.insert(0, f"[{index}]")
                raise
        return result
    if kind is bool or kind is int or value is None:
        return value
    if isinstance(value, Secret):
        if not reveal_secrets:
            raise _WriteError("secret values do not belong in an inventory; pass them as extravars.")
        return {UNSAFE_KEY: reveal(value)}
    if isinstance(value, str):
        return {UNSAFE_KEY: str.__str__(value)}
    if isinstance(value, bool | int):
        return bool(value) if isinstance(value, bool) else int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _WriteError(f"{value!r} cannot be written.")
        return float(value)
    if isinstance(value, list | tuple):
        return _wrap(list(value), reveal_secrets)
    raise _WriteError(f"values of type {type(value).__name__} cannot be written.")


def _dump(data: Mapping[str, Any], *, root: str, reveal_secrets: bool) -> str:
    try:
        wrapped = _wrap(data, reveal_secrets)
    except _WriteError as exc:
        exc.path.insert(0, root)
        raise
    # Compact separators keep json on its C encoder (an indent would not).
    return json.dumps(wrapped, separators=(",", ":"), allow_nan=False) + "\n"


def serialize_inventory(inventory: Mapping[str, Any]) -> str:
    """The text of an inventory file (write it as ``inventory/hosts.json`` in the job's private data dir).

    Raises ``ValueError`` if a secret (:class:`~clusters.fields.Secret`) slipped into the mapping."""
    return _dump(inventory, root="inventory", reveal_secrets=False)


def serialize_extravars(variables: Mapping[str, Any]) -> str:
    """The text of an extravars file (``env/extravars``, mode 0600), secrets revealed. Ansible loads it with
    ``-e @file``; every string stays untemplated, like in the inventory."""
    return _dump(variables, root="extravars", reveal_secrets=True)


def display_yaml(data: Mapping[str, Any]) -> str:
    """Readable YAML of public data for previews (admin, API). Not for Ansible: it carries no untrusted markers.
    Secrets show masked."""
    return yaml.safe_dump(_mask(data), sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


def _mask(value: Any) -> Any:
    if isinstance(value, Secret):
        return str(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, Mapping):
        return {str.__str__(key) if isinstance(key, str) else key: _mask(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(item) for item in value]
    return value


def load_ansible_data(text: str) -> Any:
    """Load inventory or extravars text the way ansible-playbook does (a trusted file, through ansible-core's
    DataLoader). For checks and tests; the result keeps Ansible's trust tags."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import trust_as_template

    return DataLoader().load(trust_as_template(text))
