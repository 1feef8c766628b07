"""SSH host keys of the cluster hosts: accepted on first contact, enforced on every later job.

Before each playbook run the job engine calls :func:`host_keys_check` with the hosts of the run's inventory. It
asks every host for its public host keys with ``ssh-keyscan`` (each key type the host offers; the key exchange
makes the host prove that it holds the private key of each key it presents), then, per address and port:

- no stored keys: the keys presented are stored (:class:`~clusters.models.HostKey`, trust on first use) and the
  acceptance is written to the audit log and to the job's log;
- stored keys: the host must present the stored key of every key type it still offers, and at least one stored
  type. Otherwise its key has changed: the run fails, naming the host and the SHA256 fingerprints of the stored
  and the presented keys, before Ansible starts, so nothing (no join token, no command) is sent to it;
- with ``SSH_HOST_KEY_TRUST_ON_FIRST_USE`` off, nothing is learned and hosts without stored keys are not even
  asked: only keys pinned in the credential, or stored earlier, let SSH connect;
- the SSH credential lists ``known_hosts`` lines: those are the keys the operator pinned, and they replace the
  stored ones (no key is learned); a host they do not cover is left to SSH, which refuses it.

Ansible then connects with ``StrictHostKeyChecking=yes`` against a ``known_hosts`` file written from these keys
(:func:`known_hosts_text`) into the run's private folder (removed with it), so SSH itself also refuses a host whose
key changed between the scan and the connection.

Why a scan before the run rather than ``StrictHostKeyChecking=accept-new`` and reading the file back afterwards: the
keys are in the database before anything connects (a worker that dies mid-run loses nothing), every key type is
recorded (accept-new learns only the one negotiated, and would accept a new key of another type offered by an
impostor), hashed or concurrently appended ``known_hosts`` lines never need parsing back, and a changed key is
reported with both fingerprints instead of as an unreachable host with SSH's warning text.

Operators see the stored keys and clear one (:func:`host_key_clear`, audited) when a host was legitimately
rebuilt; the next job accepts the new key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from ..models import HostKey, Job
from .audit import audit_record

__all__ = [
    "HostKeyChange",
    "HostKeyReport",
    "HostTarget",
    "PublicKey",
    "fingerprint",
    "host_key_clear",
    "host_keys_check",
    "known_hosts_text",
    "scan_host_keys",
    "targets_of",
]

KEY_TYPES = "rsa,ecdsa,ed25519"


@dataclass(frozen=True)
class HostTarget:
    """A host a run connects to: its inventory name, address and SSH port."""

    name: str
    address: str
    port: int = 22

    @property
    def pattern(self) -> str:
        """How ``known_hosts`` names this host."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.name} ({self.address}, port {self.port})"


@dataclass(frozen=True)
class PublicKey:
    key_type: str
    data: str  # base64, as in known_hosts

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.data)

    def __str__(self) -> str:
        return f"{self.key_type} {self.fingerprint}"


@dataclass(frozen=True)
class HostKeyChange:
    target: HostTarget
    trusted: tuple[PublicKey, ...]
    presented: tuple[PublicKey, ...]

    @property
    def message(self) -> str:
        common = {key.key_type for key in self.trusted} & {key.key_type for key in self.presented}
        trusted = [key for key in self.trusted if not common or key.key_type in common]
        presented = [key for key in self.presented if not common or key.key_type in common]
        return (
            f"The SSH host key of {self.target} has changed: the portal trusts "
            f"{', '.join(map(str, trusted))}; the host presented {', '.join(map(str, presented))}. "
            "Nothing was sent to the host. If it was rebuilt, clear its stored host key (SSH host keys in the admin, "
            "or DELETE /api/host-keys/<id>/) and run the job again; otherwise someone may be impersonating it."
        )


@dataclass
class HostKeyReport:
    """What a check found: keys accepted on first contact, changed keys, hosts that did not answer."""

    accepted: list[tuple[HostTarget, tuple[PublicKey, ...]]] = field(default_factory=list)
    changed: list[HostKeyChange] = field(default_factory=list)
    unanswered: list[HostTarget] = field(default_factory=list)


def fingerprint(data: str) -> str:
    """The SHA256 fingerprint of a base64 public key blob, as ``ssh-keygen -l`` prints it."""
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return "SHA256:(malformed key)"
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def targets_of(inventory: Mapping[str, Any], default_port: int = 22) -> list[HostTarget]:
    """The hosts of an inventory mapping (``all.hosts``), by address and port, in inventory order."""
    hosts = (inventory.get("all") or {}).get("hosts") or {}
    targets: list[HostTarget] = []
    for name, variables in hosts.items():
        variables = variables or {}
        if variables.get("ansible_connection") == "local":
            continue
        target = HostTarget(
            name=str(name),
            address=str(variables.get("ansible_host") or name),
            port=int(variables.get("ansible_port") or default_port),
        )
        if target not in targets:
            targets.append(target)
    return targets


def scan_host_keys(
    targets: Sequence[HostTarget], *, timeout: int | None = None
) -> dict[tuple[str, int], list[PublicKey]]:
    """The public host keys each target presents now, by (address, port); hosts that do not answer are absent."""
    timeout = max(1, int(timeout if timeout is not None else settings.SSH_KEYSCAN_TIMEOUT_SECONDS))
    by_port: dict[int, list[str]] = {}
    for target in targets:
        addresses = by_port.setdefault(target.port, [])
        if target.address not in addresses:
            addresses.append(target.address)
    found: dict[tuple[str, int], list[PublicKey]] = {}
    for port, addresses in by_port.items():
        argv = ["ssh-keyscan", "-T", str(timeout), "-p", str(port), "-t", KEY_TYPES, "--", *addresses]
        try:
            completed = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout * 4 + 10,
                env={"PATH": os.environ.get("PATH", os.defpath), "LANG": "C"},
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in completed.stdout.splitlines():
            parts = line.split()
            if len(parts) < 3 or line.startswith("#"):
                continue
            host = parts[0]
            if host.startswith("[") and "]:" in host:
                host = host[1 : host.index("]:")]
            key = PublicKey(parts[1], parts[2])
            keys = found.setdefault((host, port), [])
            if key not in keys:
                keys.append(key)
    return found


def pinned_keys(known_hosts: str, target: HostTarget) -> list[PublicKey]:
    """The keys that ``known_hosts`` text lists for ``target`` (plain, wildcard and hashed host names; marked lines
    such as ``@cert-authority`` are left to SSH)."""
    keys: list[PublicKey] = []
    for raw in known_hosts.splitlines():
        parts = raw.split()
        if len(parts) < 3 or parts[0].startswith(("#", "@")):
            continue
        if _host_field_matches(parts[0], target.pattern):
            key = PublicKey(parts[1], parts[2])
            if key not in keys:
                keys.append(key)
    return keys


def _host_field_matches(host_field: str, name: str) -> bool:
    if host_field.startswith("|1|"):
        try:
            _, _, salt, digest = host_field.split("|", 3)
            expected = base64.b64decode(digest)
            actual = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
        except (ValueError, binascii.Error):
            return False
        return hmac.compare_digest(expected, actual)
    matched = False
    for pattern in host_field.lower().split(","):
        negated = pattern.startswith("!")
        if _wildcard(pattern.lstrip("!")).fullmatch(name.lower()):
            if negated:
                return False
            matched = True
    return matched


def _wildcard(pattern: str) -> re.Pattern[str]:
    """An ssh_config host pattern (``*`` and ``?`` are the only wildcards) as a regular expression."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


def _stored_keys(row: HostKey) -> tuple[PublicKey, ...]:
    return tuple(PublicKey(key_type, data) for key_type, data in row.keys)


def _has_changed(trusted: Iterable[PublicKey], presented: Iterable[PublicKey]) -> bool:
    trusted_by_type: dict[str, set[str]] = {}
    for key in trusted:
        trusted_by_type.setdefault(key.key_type, set()).add(key.data)
    common = False
    for key in presented:
        if key.key_type in trusted_by_type:
            common = True
            if key.data not in trusted_by_type[key.key_type]:
                return True
    return not common


def host_keys_check(targets: Sequence[HostTarget], *, job_id: int | None = None, pinned: str = "") -> HostKeyReport:
    """Scan ``targets`` and compare what they present with the trusted keys (see the module's description).

    Keys of hosts met for the first time are stored and audited. Never raises for a host that does not answer: it
    is listed in ``unanswered`` and SSH, strict, refuses it when the playbook connects.
    """
    report = HostKeyReport()
    if not targets:
        return report
    pinned = pinned if pinned.strip() else ""
    stored = {
        (row.address, row.port): row
        for row in HostKey.objects.filter(address__in={target.address for target in targets})
    }
    if not settings.SSH_HOST_KEY_TRUST_ON_FIRST_USE and not pinned:
        # Nothing is learned: only hosts with stored keys are asked (to report a changed key with its
        # fingerprints); the others are left to strict SSH, which refuses them.
        targets = [target for target in targets if (target.address, target.port) in stored]
        if not targets:
            return report
    presented_by_host = scan_host_keys(targets)
    cluster_id = Job.objects.filter(pk=job_id).values_list("cluster_id", flat=True).first() if job_id else None
    for target in targets:
        presented = tuple(presented_by_host.get((target.address, target.port), ()))
        if not presented:
            report.unanswered.append(target)
            continue
        if pinned:
            trusted = tuple(pinned_keys(pinned, target))
            if trusted and _has_changed(trusted, presented):
                report.changed.append(HostKeyChange(target, trusted, presented))
            continue
        row = stored.get((target.address, target.port))
        if row is None:
            row, created = _accept(target, presented, job_id=job_id, cluster_id=cluster_id)
            if created:
                report.accepted.append((target, presented))
                continue
        trusted = _stored_keys(row)
        if _has_changed(trusted, presented):
            report.changed.append(HostKeyChange(target, trusted, presented))
    return report


def _accept(
    target: HostTarget, presented: Sequence[PublicKey], *, job_id: int | None, cluster_id: int | None
) -> tuple[HostKey, bool]:
    lines = "".join(f"{key.key_type} {key.data}\n" for key in presented)
    try:
        with transaction.atomic():
            row = HostKey.objects.create(
                address=target.address,
                port=target.port,
                public_keys=lines,
                hostname=target.name[:253],
                cluster_id=cluster_id,
                accepted_by_job_id=job_id,
            )
            audit_record(
                action="host_key.accepted",
                cluster=row.cluster,
                object_repr=str(row),
                detail={
                    "address": target.address,
                    "port": target.port,
                    "hostname": target.name,
                    "job": job_id,
                    "fingerprints": [str(key) for key in presented],
                },
            )
    except IntegrityError:
        # Another job met the host at the same moment and stored what it saw: check against that.
        return HostKey.objects.get(address=target.address, port=target.port), False
    return row, True


def known_hosts_text(targets: Sequence[HostTarget], *, pinned: str = "") -> str:
    """The ``known_hosts`` file of a run: the credential's pinned lines, or the stored keys of its hosts."""
    if pinned.strip():
        return pinned if pinned.endswith("\n") else pinned + "\n"
    wanted = {(target.address, target.port) for target in targets}
    lines = []
    for row in HostKey.objects.filter(address__in={address for address, _ in wanted}).order_by("address", "port"):
        if (row.address, row.port) not in wanted:
            continue
        pattern = HostTarget(name=row.hostname, address=row.address, port=row.port).pattern
        lines += [f"{pattern} {key_type} {data}\n" for key_type, data in row.keys]
    return "".join(lines)


def host_key_clear(*, host_key: HostKey, actor: Any = None) -> None:
    """Forget a host's stored keys (audited): the next job that reaches it accepts the key it then presents."""
    with transaction.atomic():
        audit_record(
            action="host_key.cleared",
            actor=actor,
            cluster=host_key.cluster,
            object_repr=str(host_key),
            detail={
                "address": host_key.address,
                "port": host_key.port,
                "hostname": host_key.hostname,
                "fingerprints": [str(key) for key in _stored_keys(host_key)],
            },
        )
        host_key.delete()
