"""What a preflight found, in words for the job's explanation.

``preflight.yml`` reports with ``set_stats`` (stored in ``job.result["facts"]``):

- ``rke2_preflight_unreachable``: ``{host: [{to, address, port, protocol, error}]}``, every probe from ``host`` to a
  peer that failed (an empty list for a host that reached all its peers);
- ``rke2_preflight_hosts``: ``{host: {rke2_version, install_method (rpm|tar|none), rke2_running, cluster_data,
  clock_skew_seconds, machine_id, listen_errors, probes, not_probed}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["preflight_text", "unreachable_pairs"]


def unreachable_pairs(facts: Mapping[str, Any]) -> list[str]:
    """``"w2 → m1 9345/tcp: connection timed out"`` for every failed probe, by source host then in probe order."""
    found = facts.get("rke2_preflight_unreachable")
    if not isinstance(found, Mapping):
        return []
    lines = []
    for host in sorted(found):
        for item in found[host] or []:
            if isinstance(item, Mapping):
                lines.append(
                    f"{host} → {item.get('to')} {item.get('port')}/{item.get('protocol')}: {item.get('error')}"
                )
    return lines


def _existing_rke2(hosts: Mapping[str, Any]) -> list[str]:
    lines = []
    for host in sorted(hosts):
        info = hosts[host] if isinstance(hosts[host], Mapping) else {}
        method = info.get("install_method") or "none"
        running = [f"rke2-{kind} running" for kind in info.get("rke2_running") or []]
        if method == "none" and not running:
            continue
        version = info.get("rke2_version") or "version unknown"
        details = [method if method != "none" else "not installed", *running]
        if info.get("cluster_data"):
            details.append("holds cluster data")
        lines.append(f"{host} {version} ({', '.join(details)})")
    return lines


def _not_probed(hosts: Mapping[str, Any]) -> list[str]:
    held: dict[str, set[str]] = {}
    for info in hosts.values():
        items = info.get("not_probed") if isinstance(info, Mapping) else None
        for item in items or []:
            if isinstance(item, Mapping):
                held.setdefault(f"{item.get('port')}/{item.get('protocol')}", set()).add(str(item.get("to")))
    return [f"{port} on {', '.join(sorted(peers))}" for port, peers in sorted(held.items())]


def preflight_text(facts: Mapping[str, Any]) -> str:
    """Sentences to append to a job's explanation (each starting with a space), or ``""`` without preflight facts:
    the unreachable pairs and ports, the RKE2 found on the nodes, and the UDP probes that could not be made."""
    parts = []
    if pairs := unreachable_pairs(facts):
        parts.append(f" Unreachable ({len(pairs)}): {'; '.join(pairs)}.")
    hosts = facts.get("rke2_preflight_hosts")
    if isinstance(hosts, Mapping):
        if existing := _existing_rke2(hosts):
            parts.append(f" RKE2 found: {'; '.join(existing)}.")
        if held := _not_probed(hosts):
            parts.append(
                " Not probed (the port is held by another program, such as RKE2's own overlay, so it cannot echo): "
                f"{'; '.join(held)}."
            )
    return "".join(parts)
