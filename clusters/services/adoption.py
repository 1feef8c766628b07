"""Adopting a cluster installed outside the portal (imported from the previous system).

An imported cluster runs with whatever its nodes were configured with: its own token, keys in ``config.yaml`` the
portal does not manage, maybe another ``data-dir``. Rendering the portal's ``config.yaml`` over that would drop
those keys and, with a generated token, stop its servers (RKE2 refuses another token over existing bootstrap
data). Until an **adopt** job has read what runs, jobs that rewrite the configuration or restart RKE2 are refused
(``Cluster.adoption_required``, set by the import).

The adopt job (``ansible/adopt.yml``) reads on every node ``/etc/rancher/rke2/config.yaml`` and
``config.yaml.d/*.yaml``, the installed version and method (tarball or RPM) and, on the servers, the token under
the data directory; it writes one JSON file per node into a private folder of the job on the controller (the
kubeconfig pattern: never through job events). :func:`adoption_finish` reads and removes that folder, then
:func:`adoption_record` stores:

- the servers' token (encrypted; all servers must agree);
- per node, the files read (``Node.running_config``, encrypted) and the keys of its ``config.yaml`` the portal
  does not manage (``Node.kept_config``, encrypted), which every later render keeps (see
  :func:`inventory.variables.extra_config`);
- the values that have fields of their own, taken from what runs: CNI, CIDRs, cluster DNS and domain (from a
  server), extra TLS SANs, node labels and taints, the installed versions;
- a report (``Cluster.adoption_report``) and clears ``adoption_required``.

:func:`adoption_differences` compares, key by key, what runs on each node with what the portal would write
(``config.yaml`` rendered now, with the node's drop-in files laid over it as RKE2 does); secrets are masked.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .. import validators
from ..choices import LIVE_NODE_STATUSES, SERVER_ROLES, Cni, NodeStatus
from ..fields import MASK, reveal
from ..models import Cluster, Job, Node
from .audit import audit_record

__all__ = [
    "ADOPT_STAGE",
    "AdoptionError",
    "NodeDifferences",
    "adoption_differences",
    "adoption_finish",
    "adoption_node_ids",
    "adoption_record",
    "adoption_workdir",
    "kept_config_of",
    "merge_config",
    "token_password",
]

ADOPT_STAGE = "adopt"
CONFIG_FILE = "config.yaml"
DROPIN_PREFIX = "config.yaml.d/"

# Keys the portal writes from its own fields (the config templates set them); never kept from a node's file.
# Same list as inventory.variables.MANAGED_CONFIG_KEYS (imported lazily there to avoid an import cycle).
_CRITICAL_FIELD_KEYS = {
    "cni": "cni",
    "cluster-cidr": "cluster_cidr",
    "service-cidr": "service_cidr",
    "cluster-dns": "cluster_dns",
    "cluster-domain": "cluster_domain",
}
_LIST_KEYS = frozenset({"tls-san", "node-label", "node-taint", "disable", "cni"})
_TOKEN_KEYS = frozenset({"token", "agent-token"})
_SECRET_KEY_RE = re.compile(r"(secret|token|password|passwd|access-key|private-key)")
_NOT_SECRET = frozenset({"secrets-encryption", "secrets-encryption-provider"})


# The nodes an adopt job reads: those that run RKE2. Pending nodes were never installed and failed ones are
# installed again by the next scale-out (with the portal's configuration), so neither holds anything to keep.
ADOPTED_STATUSES = (NodeStatus.ACTIVE,)


def adoption_node_ids(cluster: Cluster) -> list[int]:
    """The nodes the adopt job reads, in inventory order."""
    return list(cluster.cluster_nodes.filter(status__in=ADOPTED_STATUSES).order_by("pk").values_list("pk", flat=True))


class AdoptionError(Exception):
    """What the adopt job found cannot be recorded (servers disagree on the token, a node reported nothing...)."""


# Config files --------------------------------------------------------------------------------------------------


def merge_config(files: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration RKE2 runs with: ``config.yaml``, then the drop-ins in name order; a later file replaces a
    key, and ``key+`` appends to the key's list."""
    merged: dict[str, Any] = {}
    names = sorted(name for name in files if name != CONFIG_FILE)
    for name in ([CONFIG_FILE] if CONFIG_FILE in files else []) + names:
        document = files[name]
        if not isinstance(document, Mapping):
            continue
        for key, value in document.items():
            key = str(key)
            if key.endswith("+"):
                base = key[:-1]
                merged[base] = _as_list(merged.get(base)) + _as_list(value)
            else:
                merged[key] = value
    return merged


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return list(value)
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return [value]


def _managed_keys() -> frozenset[str]:
    from inventory.variables import MANAGED_CONFIG_KEYS

    return MANAGED_CONFIG_KEYS


def token_password(token: str) -> str:
    """The secret part of an RKE2 token: ``K10<ca hash>::<user>:<password>`` or a bare password. RKE2 encrypts its
    bootstrap data with it; two tokens with the same password are the same for a server."""
    token = (token or "").strip()
    if token.startswith("K10") and "::" in token:
        credentials = token.split("::", 1)[1]
        return credentials.split(":", 1)[1] if ":" in credentials else credentials
    return token


def _is_secret_key(key: str) -> bool:
    base = key.rstrip("+")
    return base in _TOKEN_KEYS or (bool(_SECRET_KEY_RE.search(base)) and base not in _NOT_SECRET)


def kept_config_of(node: Node) -> dict[str, Any]:
    """The node's kept keys (from its last adoption), or ``{}``."""
    text = reveal(node.kept_config)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _running_files(node: Node) -> dict[str, Any] | None:
    text = reveal(node.running_config)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# The job's private folder --------------------------------------------------------------------------------------


def adoption_workdir(job_id: int) -> Path:
    """A private folder (0700) on the controller where the adopt playbook writes its findings."""
    base = Path(settings.JOBS_WORK_DIR)
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"adopt{job_id}.", dir=base))
    path.chmod(0o700)
    return path


def _read_findings(directory: Path) -> dict[str, dict[str, Any]]:
    findings: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AdoptionError(f"the findings of {path.stem} cannot be read ({type(exc).__name__}).") from None
        if isinstance(data, dict):
            findings[path.stem] = data
    return findings


def _decode(text: Any, what: str) -> str:
    try:
        return base64.b64decode(str(text or ""), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AdoptionError(f"{what} is not readable text.") from None


def adoption_finish(cluster: Cluster, job: Job, directory: Path, outcome: Any, redactor: Any) -> Any:
    """After the adopt playbook ran: read and remove its findings folder and, when the run succeeded, record them.
    A problem turns a successful outcome into a failed one with the reason."""
    try:
        if not outcome.succeeded:
            return outcome
        try:
            findings = _read_findings(directory)
            tokens = [_decode(item.get("token"), f"the token of {host}").strip() for host, item in findings.items()]
            redactor.add([token for token in tokens if token])
            report = adoption_record(cluster.pk, job, findings)
        except AdoptionError as exc:
            outcome.status = "failed"
            outcome.explanation = f"Not adopted: {redactor.text(str(exc))}"
            return outcome
        outcome.explanation = _summary(report)
        return outcome
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _summary(report: Mapping[str, Any]) -> str:
    changes = report.get("changes") or []
    return "Adopted: " + " ".join(changes) if changes else "Adopted."


# Recording -------------------------------------------------------------------------------------------------------


@dataclass
class _NodeFinding:
    node: Node
    files: dict[str, Any]
    version: str
    method: str
    data_dir: str
    rpm_packages: list[str]
    token: str
    kept: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> dict[str, Any]:
        return merge_config(self.files)


def _parse_node(node: Node, data: Mapping[str, Any]) -> _NodeFinding:
    files: dict[str, Any] = {}
    raw_files = data.get("files") or {}
    if not isinstance(raw_files, Mapping):
        raise AdoptionError(f"{node.hostname}: the configuration files were not reported.")
    for name, content in raw_files.items():
        name = str(name)
        if name != CONFIG_FILE and not name.startswith(DROPIN_PREFIX):
            continue
        text = _decode(content, f"{node.hostname}: /etc/rancher/rke2/{name}")
        try:
            document = yaml.safe_load(text) if text.strip() else {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise AdoptionError(f"{node.hostname}: /etc/rancher/rke2/{name} is not valid YAML{where}.") from None
        if document is None:
            document = {}
        if not isinstance(document, dict):
            raise AdoptionError(f"{node.hostname}: /etc/rancher/rke2/{name} is not a mapping of RKE2 keys.")
        files[name] = {str(key): value for key, value in document.items()}
    token = _decode(data.get("token"), f"the token of {node.hostname}").strip() if data.get("token") else ""
    return _NodeFinding(
        node=node,
        files=files,
        version=str(data.get("version") or ""),
        method=str(data.get("method") or ""),
        data_dir=str(data.get("data_dir") or ""),
        rpm_packages=[str(item) for item in data.get("rpm_packages") or []],
        token=token,
    )


def _kept_keys(finding: _NodeFinding) -> dict[str, Any]:
    """Keys of the node's ``config.yaml`` the portal does not manage: kept on every render. Drop-in files are left
    alone by the portal, so their keys need no keeping."""
    from inventory.variables import extra_config

    managed = _managed_keys()
    document = finding.files.get(CONFIG_FILE) or {}
    # What the portal writes anyway (its defaults, the cluster's and the node's extra config) is not kept: it stays
    # the portal's, so that a key later removed from the extra config is removed from the node too.
    node = finding.node
    node.kept_config = ""
    rendered = extra_config(node, node.cluster)
    kept = {
        key: value
        for key, value in document.items()
        if key.rstrip("+") not in managed
        and not (key in rendered and _normalized(key, rendered[key]) == _normalized(key, value))
    }
    secrets = sorted(key for key in kept if _is_secret_key(key))
    if secrets:
        # Kept keys go into inventories and previews, which are not secret: credentials stay on the node instead.
        raise AdoptionError(
            f"{finding.node.hostname}: /etc/rancher/rke2/config.yaml holds credentials ({', '.join(secrets)}) that "
            "the portal would have to write into its inventories and previews. Move them into a file of "
            "/etc/rancher/rke2/config.yaml.d/ (the portal never rewrites those; RKE2 reads them after config.yaml), "
            "then run the adopt job again."
        )
    return kept


def _string_list(value: Any) -> list[str]:
    return [str(item) for item in _as_list(value)]


def adoption_record(cluster_id: int, job: Job | None, findings: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Store what the adopt playbook found (see the module docstring) and return the report. Raises
    :class:`AdoptionError` when it cannot be recorded; nothing is stored then."""
    with transaction.atomic():
        cluster = Cluster.objects.select_for_update().get(pk=cluster_id)
        nodes = list(cluster.cluster_nodes.filter(status__in=ADOPTED_STATUSES).order_by("pk"))
        missing = [node.hostname for node in nodes if node.hostname not in findings]
        if missing:
            raise AdoptionError(f"no findings for {', '.join(missing)}.")
        parsed = [_parse_node(node, findings[node.hostname]) for node in nodes]
        servers = [item for item in parsed if item.node.role in SERVER_ROLES]
        tokens = {item.node.hostname: item.token for item in servers if item.token}
        if not tokens:
            raise AdoptionError("no server reported the cluster token (<data-dir>/server/token).")
        if len({token_password(token) for token in tokens.values()}) > 1:
            raise AdoptionError(
                "the servers keep different cluster tokens ("
                + ", ".join(sorted(tokens))
                + "): they do not belong to one cluster, or a token rotation did not finish."
            )
        token = next(iter(tokens.values()))
        changes: list[str] = []
        if token_password(token) != token_password(reveal(cluster.token)):
            changes.append("The cluster token was replaced by the one the servers use.")
        else:
            changes.append("The cluster token matches the one the servers use.")
        updates: dict[str, Any] = {"token": token}
        # The critical values as the servers run them (the initial master's, else the first server's).
        reference = merge_config(
            next((item for item in servers if item.node.role == "initial_master"), servers[0]).files
        )
        for key, field_name in _CRITICAL_FIELD_KEYS.items():
            if key not in reference:
                continue
            value = reference[key]
            if key == "cni":
                names = _string_list(value)
                if len(names) != 1 or names[0] not in Cni.values:
                    raise AdoptionError(
                        f"the servers run cni {', '.join(names) or '(empty)'}: the portal manages one of "
                        f"{', '.join(Cni.values)}."
                    )
                value = names[0]
            else:
                value = str(value)
                try:
                    if field_name in ("cluster_cidr", "service_cidr"):
                        validators.validate_cidr(value)
                        value = validators.normalize_cidrs(value)
                    elif field_name == "cluster_dns":
                        validators.validate_ip_address(value)
                    else:
                        validators.validate_hostname(value)
                except (ValidationError, ValueError):
                    raise AdoptionError(f"the servers run {key} {value!r}, which the portal cannot store.") from None
            if str(getattr(cluster, field_name)) != value:
                changes.append(f"{key} is {value} on the servers (was {getattr(cluster, field_name)}).")
                updates[field_name] = value
        # Extra TLS SANs the servers have and the portal would not add by itself.
        from inventory.variables import ClusterSnapshot

        automatic = set(ClusterSnapshot.load(cluster).tls_san()) - set(cluster.tls_san or [])
        extra_sans = list(cluster.tls_san or [])
        for item in servers:
            for name in _string_list(item.running.get("tls-san")):
                if name not in automatic and name not in extra_sans:
                    try:
                        validators.validate_address(name)
                    except ValidationError:
                        changes.append(f"tls-san {name!r} of {item.node.hostname} is not an address; not kept.")
                        continue
                    extra_sans.append(name)
        if extra_sans != list(cluster.tls_san or []):
            changes.append(f"Extra TLS SANs taken from the servers: {', '.join(extra_sans)}.")
            updates["tls_san"] = extra_sans
        versions = {item.version for item in servers if item.version}
        if len(versions) == 1 and (version := versions.pop()) != cluster.rke2_version:
            changes.append(f"The servers run {version} (recorded: {cluster.rke2_version}).")
            updates["rke2_version"] = version
        rpm_nodes = [item.node.hostname for item in parsed if item.method == "rpm"]
        if rpm_nodes:
            changes.append(
                f"RKE2 is installed from RPM packages on {', '.join(rpm_nodes)}: the portal installs from the "
                "release tarball, which RKE2's installer refuses over RPMs; upgrade those nodes with the package "
                "manager."
            )
        node_reports: dict[str, Any] = {}
        for item in parsed:
            node = item.node
            running = item.running
            item.kept = _kept_keys(item)
            node_fields: dict[str, Any] = {
                "running_config": json.dumps(item.files, sort_keys=True, default=str),
                "kept_config": json.dumps(item.kept, sort_keys=True, default=str),
                "installed_version": item.version,
            }
            for key, field_name, validator in (
                ("node-label", "labels", validators.validate_node_label),
                ("node-taint", "taints", validators.validate_node_taint),
            ):
                if key not in running:
                    continue
                values, refused = [], []
                for value in _string_list(running[key]):
                    try:
                        validator(value)
                    except ValidationError:
                        refused.append(value)
                    else:
                        values.append(value)
                if refused:
                    changes.append(f"{node.hostname}: {key} {', '.join(refused)} cannot be managed by the portal.")
                if values != list(getattr(node, field_name) or []):
                    node_fields[field_name] = values
            for key, expected in (("node-name", node.hostname), ("node-ip", node.internal_ip)):
                if key in running and str(running[key]) != str(expected):
                    changes.append(f"{node.hostname}: runs with {key} {running[key]} (the portal has {expected}).")
            # Encrypted at rest like any secret field (the field encrypts on every write, updates included).
            Node.objects.filter(pk=node.pk).update(**node_fields, updated_at=timezone.now())
            node_reports[node.hostname] = {
                "type": item.node.rke2_type,
                "version": item.version,
                "method": item.method,
                "rpm_packages": item.rpm_packages,
                "data_dir": item.data_dir,
                "files": sorted(item.files),
                "kept_keys": sorted(item.kept),
            }
        report = {
            "job": job.pk if job is not None else None,
            "adopted_at": timezone.now().isoformat(),
            "changes": changes,
            "nodes": node_reports,
        }
        for name, value in updates.items():
            setattr(cluster, name, value)
        cluster.adoption_required = False
        cluster.adoption_report = report
        cluster.save(update_fields=[*updates, "adoption_required", "adoption_report", "updated_at"])
        audit_record(
            action="cluster.adopt",
            actor=None,
            cluster=cluster,
            detail={"job_id": report["job"], "changes": changes},
        )
    return report


# Differences -----------------------------------------------------------------------------------------------------


@dataclass
class NodeDifferences:
    """How what runs on one node differs from what the portal would write. ``read``: an adopt job read the node."""

    hostname: str
    read: bool
    differences: list[dict[str, Any]] = field(default_factory=list)


def _normalized(key: str, value: Any) -> Any:
    base = key.rstrip("+")
    if isinstance(value, list) or (base in _LIST_KEYS and isinstance(value, str)):
        items = [str(item) for item in _as_list(value)]
        return sorted(items) if base == "tls-san" else items
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _shown(key: str, value: Any) -> Any:
    if value is None:
        return None
    return MASK if _is_secret_key(key) else value


def _compare(running: Mapping[str, Any], portal: Mapping[str, Any]) -> list[dict[str, Any]]:
    differences = []
    for key in sorted(set(running) | set(portal)):
        in_running, in_portal = key in running, key in portal
        if in_running and in_portal:
            if key in _TOKEN_KEYS:
                same = token_password(str(running[key])) == token_password(str(portal[key]))
            else:
                same = _normalized(key, running[key]) == _normalized(key, portal[key])
            if same:
                continue
            change = "changed"
        else:
            change = "added" if in_portal else "removed"
        differences.append(
            {
                "key": key,
                "change": change,
                "running": _shown(key, running.get(key)),
                "portal": _shown(key, portal.get(key)),
            }
        )
    return differences


def adoption_differences(cluster: Cluster) -> list[NodeDifferences]:
    """For every live node, what would change in the configuration RKE2 runs with if the portal wrote its
    ``config.yaml`` now: keys the portal would change (``changed``), add (``added``) or drop (``removed``). The
    node's drop-in files stay as they are and are laid over the portal's file, as RKE2 does. Secret values are
    masked. Nodes no adopt job has read are listed with ``read=False``."""
    from inventory.configs import render_node_config
    from inventory.variables import ClusterSnapshot

    snapshot = ClusterSnapshot.load(cluster)
    running_by_pk = dict(
        Node.objects.filter(cluster_id=cluster.pk, status__in=LIVE_NODE_STATUSES).values_list("pk", "running_config")
    )
    result: list[NodeDifferences] = []
    for node in snapshot.live_nodes:
        node.running_config = running_by_pk.get(node.pk) or ""
        files = _running_files(node)
        if files is None:
            result.append(NodeDifferences(hostname=node.hostname, read=False))
            continue
        rendered = yaml.safe_load(render_node_config(node, reveal_secrets=True, snapshot=snapshot)) or {}
        dropins = {name: document for name, document in files.items() if name != CONFIG_FILE}
        portal = merge_config({CONFIG_FILE: rendered, **dropins})
        result.append(
            NodeDifferences(hostname=node.hostname, read=True, differences=_compare(merge_config(files), portal))
        )
    return result


def differences_text(items: Iterable[NodeDifferences]) -> str:
    """The differences as plain text, one line per key (for the admin)."""
    lines: list[str] = []
    for item in items:
        if not item.read:
            lines.append(f"{item.hostname}: not read yet (run the adopt job).")
            continue
        if not item.differences:
            lines.append(f"{item.hostname}: no difference.")
            continue
        lines.append(f"{item.hostname}:")
        for difference in item.differences:
            running = json.dumps(difference["running"], default=str)
            portal = json.dumps(difference["portal"], default=str)
            if difference["change"] == "added":
                lines.append(f"  + {difference['key']}: {portal} (the portal would add it)")
            elif difference["change"] == "removed":
                lines.append(f"  - {difference['key']}: {running} (the portal would drop it)")
            else:
                lines.append(f"  ~ {difference['key']}: {running} -> {portal}")
    return "\n".join(lines)
