"""Importing the clusters of the previous RKE2 automation system (FastAPI + SQLAlchemy).

The source is a JSON export or that system's database (SQLite or PostgreSQL), read with a plain DB-API connection
in read-only mode. Its ``clusters`` table keeps each cluster's nodes in a JSON column ``nodes`` (``hostname``,
``ip`` or ``internal_ip``, optional ``external_ip``, ``role`` = ``server`` | ``agent``). A database that already
went through that system's own "nodes table" migration (nodes in a ``nodes`` table with ``cluster_id``) is read
too.

Imported clusters are running clusters: the first server node becomes the initial master, the other servers
masters, the agents workers; nodes are active (the statuses of a nodes table are kept), the installation stage is
complete, the cluster active, bootstrapped and marked as needing adoption (see :mod:`clusters.services.adoption`).
See :data:`MAPPING_HELP` for how the other columns are mapped.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ..choices import ClusterStatus, InstallationStage, NodeRole, NodeStatus
from ..engine.redaction import MIN_SECRET_LENGTH
from ..exceptions import ApplicationError
from ..integrity import integrity_refusal
from ..models import Cluster, Node, generate_cluster_token
from ..validators import RKE2_VERSION_RE
from .audit import audit_record
from .clusters import normalize_node_roles

__all__ = [
    "MAPPING_HELP",
    "ClusterOutcome",
    "ImportReport",
    "LegacySourceError",
    "legacy_clusters_import",
    "legacy_clusters_read",
    "redact_source",
]

MAPPING_HELP = """\
How the old system's columns map (the first of the listed names that is present wins):

name -> name
    Lower-cased; must be a DNS label. Clusters are matched by name: one that already exists here is left
    untouched, so importing the same source twice changes nothing.
rke2_version | version -> rke2_version
    "v" is prepended when missing; must look like v1.31.4+rke2r1.
token | cluster_token | rke2_token | node_token -> token (stored encrypted)
    Kept as it is: it is the running cluster's join token. A token shorter than 6 characters is refused (the
    cluster is skipped): rotate the cluster's token first (rke2 token rotate). When the source has none, a
    placeholder is generated and the output says so; the adopt job replaces it with the token the servers use.
registration_address | server_url | api_address | vip -> registration_address
    A URL (https://vip:9345) or host:port is reduced to the host. Empty: the initial master's address.
description, cni, cluster_cidr, service_cidr, cluster_dns, cluster_domain -> the same fields
    When absent, RKE2's defaults (canal, 10.42.0.0/16, 10.43.0.0/16, 10.43.0.10, cluster.local): what a cluster
    installed without them runs with.
tls_san (list or comma-separated), cluster_vars (mapping of extra RKE2 config keys) -> the same fields
    Keys of cluster_vars that have fields here go to those fields: cni, cluster-cidr, service-cidr, cluster-dns,
    cluster-domain, tls-san (added to tls_san) and token (when the token column is empty). A value that differs
    from the column of the same meaning is an error.
kubeconfig -> kubeconfig (stored encrypted)
created_at -> bootstrapped_at (the import time when absent)
nodes (JSON list; or a nodes table with cluster_id, for a database that already moved nodes there)
    hostname (lower-cased, as the kubelet does), ip | internal_ip, external_ip, use_external_ip, node_vars.
    Keys of node_vars that have fields here go to those fields: node-label -> labels, node-taint -> taints,
    node-name -> hostname, node-ip -> internal_ip, node-external-ip -> external_ip (a conflict is an error).
    role server|agent: the first server becomes the initial master, the other servers masters, agents
    workers; initial_master|master|worker roles of a nodes table are kept.
    status: nodes of a JSON column are all active (as the old system's own migration made them); the statuses of
    a nodes table are kept: active, failed, pending, draining (installing becomes failed); removed nodes are not
    imported. Active and failed nodes have the cluster's version recorded as installed.

Every imported cluster is active, its installation complete, the cluster bootstrapped, and marked as needing
adoption: until an adopt job has read each node's configuration, version and the servers' real token, jobs that
rewrite the configuration or restart RKE2 (install, scale, upgrade) are refused. Other columns (status,
installation_stage, ...) are not imported, nor are SSH credentials: assign one to each cluster before running
jobs. Each cluster is imported in its own transaction; a cluster with any invalid value is skipped whole and
reported with the offending node. The command exits with status 1 when a cluster was skipped as invalid.
"""

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_NAME_KEYS = ("name",)
_VERSION_KEYS = ("rke2_version", "version")
_TOKEN_KEYS = ("token", "cluster_token", "rke2_token", "node_token")
_ADDRESS_KEYS = ("registration_address", "server_url", "api_address", "vip")
_PLAIN_KEYS = ("description", "cni", "cluster_cidr", "service_cidr", "cluster_dns", "cluster_domain")
_LEGACY_ROLES = {"server", "agent", NodeRole.INITIAL_MASTER, NodeRole.MASTER, NodeRole.WORKER}
MIN_TOKEN_LENGTH = 32
# Marks a cluster row whose nodes come from a nodes table (with their own statuses), not from the JSON column.
_NODES_TABLE = "__nodes_table__"
# Old extra-config keys that have fields of their own here: cluster keys -> cluster field, node keys -> node field.
_CLUSTER_KEY_FIELDS = {
    "cni": "cni",
    "cluster-cidr": "cluster_cidr",
    "service-cidr": "service_cidr",
    "cluster-dns": "cluster_dns",
    "cluster-domain": "cluster_domain",
    "tls-san": "tls_san",
    "token": "token",
}
_NODE_KEY_FIELDS = {
    "node-label": "labels",
    "node-taint": "taints",
    "node-name": "hostname",
    "node-ip": "internal_ip",
    "node-external-ip": "external_ip",
}
# Statuses of the old nodes table (SQLAlchemy stores enum names) -> node status here; removed nodes are left out.
_SOURCE_NODE_STATUSES = {
    "active": NodeStatus.ACTIVE,
    "running": NodeStatus.ACTIVE,
    "ready": NodeStatus.ACTIVE,
    "failed": NodeStatus.FAILED,
    "error": NodeStatus.FAILED,
    "installing": NodeStatus.FAILED,
    "pending": NodeStatus.PENDING,
    "draining": NodeStatus.DRAINING,
}


class LegacySourceError(ApplicationError):
    """The import source cannot be read."""

    code = "legacy_source_error"


@dataclass
class ClusterOutcome:
    """What the import did (or would do) with one cluster of the source."""

    name: str
    action: Literal["imported", "exists", "invalid"]
    nodes: int = 0
    initial_master: str = ""
    token_generated: bool = False
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    source: str
    dry_run: bool
    outcomes: list[ClusterOutcome] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.action == action)

    @property
    def nodes_imported(self) -> int:
        return sum(outcome.nodes for outcome in self.outcomes if outcome.action == "imported")

    @property
    def nodes_skipped(self) -> int:
        return sum(outcome.nodes for outcome in self.outcomes if outcome.action != "imported")


# Reading the source ----------------------------------------------------------------------------------------------


def redact_source(source: str) -> str:
    """The source with any password in a database URL masked, for output and the audit trail."""
    if "://" not in source:
        return source
    parts = urlsplit(source)
    if parts.password is None:
        return source
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:***@{netloc[1]}"))


def _check_identifier(name: str, what: str) -> str:
    if not _IDENTIFIER_RE.match(name):
        raise LegacySourceError(f"{what} {name!r} is not a plain SQL identifier.")
    return name


def legacy_clusters_read(source: str, *, table: str = "clusters", nodes_table: str = "nodes") -> list[dict[str, Any]]:
    """The clusters of the source as dicts of the old columns; ``nodes`` is the list of node dicts (or the raw
    JSON text, decoded later) in source order."""
    _check_identifier(table, "Table")
    _check_identifier(nodes_table, "Table")
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    if not scheme:
        return _read_json_file(Path(source))
    if scheme == "sqlite":
        return _read_sqlite(source, table, nodes_table)
    if scheme in ("postgres", "postgresql", "pgsql"):
        return _read_postgres(source, table, nodes_table)
    raise LegacySourceError(
        f"Unsupported source {scheme}://...: give a JSON file, a sqlite:///path URL or a postgres:// URL."
    )


def _read_json_file(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LegacySourceError(f"{path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LegacySourceError(f"{path}: cannot be read ({exc}).") from None
    except json.JSONDecodeError as exc:
        raise LegacySourceError(f"{path}: not valid JSON ({exc}).") from None
    if isinstance(data, dict) and "clusters" in data:
        data = data["clusters"]
    if not isinstance(data, list):
        raise LegacySourceError(f"{path}: expected a list of clusters, or an object with a 'clusters' list.")
    return [item if isinstance(item, dict) else {"__invalid__": item} for item in data]


def _sqlite_path(source: str) -> str:
    # SQLAlchemy's convention, which the old system used: sqlite:///relative/path, sqlite:////absolute/path.
    rest = source.split("://", 1)[1]
    if not rest.startswith("/"):
        raise LegacySourceError("A SQLite URL looks like sqlite:///relative/path.db or sqlite:////absolute/path.db.")
    path = unquote(rest[1:].split("?", 1)[0])
    if not path:
        raise LegacySourceError("The SQLite URL names no file.")
    return path


def _read_sqlite(source: str, table: str, nodes_table: str) -> list[dict[str, Any]]:
    path = _sqlite_path(source)
    if not Path(path).is_file():
        raise LegacySourceError(f"{path}: no such SQLite database.")
    try:
        # Read-only: the old system's database is never modified.
        connection = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise LegacySourceError(f"{path}: cannot be opened ({exc}).") from None
    try:
        connection.row_factory = sqlite3.Row
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if table not in tables:
            raise LegacySourceError(f"{path} has no table {table!r}.")
        clusters = [dict(row) for row in connection.execute(f'SELECT * FROM "{table}"')]  # noqa: S608 - a known table
        clusters.sort(key=lambda row: (row.get("id") is None, row.get("id") or 0))
        if clusters and "nodes" not in clusters[0] and nodes_table in tables:
            rows = [dict(row) for row in connection.execute(f'SELECT * FROM "{nodes_table}"')]  # noqa: S608
            _attach_nodes_table(clusters, rows)
        return clusters
    except sqlite3.Error as exc:
        raise LegacySourceError(f"{path}: cannot be read ({exc}).") from None
    finally:
        connection.close()


def _read_postgres(source: str, table: str, nodes_table: str) -> list[dict[str, Any]]:
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row

    url = source.replace("pgsql://", "postgresql://", 1) if source.startswith("pgsql://") else source
    try:
        connection = psycopg.connect(url, row_factory=dict_row, connect_timeout=10)
    except psycopg.Error as exc:
        raise LegacySourceError(f"{redact_source(source)}: cannot connect ({str(exc).strip()}).") from None
    try:
        connection.read_only = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s) IS NOT NULL AS present", [table])
            if not cursor.fetchone()["present"]:  # type: ignore[index]
                raise LegacySourceError(f"{redact_source(source)} has no table {table!r}.")
            cursor.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
            clusters = [dict(row) for row in cursor.fetchall()]
            clusters.sort(key=lambda row: (row.get("id") is None, row.get("id") or 0))
            if clusters and "nodes" not in clusters[0]:
                cursor.execute("SELECT to_regclass(%s) IS NOT NULL AS present", [nodes_table])
                if cursor.fetchone()["present"]:  # type: ignore[index]
                    cursor.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(nodes_table)))
                    _attach_nodes_table(clusters, [dict(row) for row in cursor.fetchall()])
        connection.rollback()
        return clusters
    except psycopg.Error as exc:
        raise LegacySourceError(f"{redact_source(source)}: cannot be read ({str(exc).strip()}).") from None
    finally:
        connection.close()


def _attach_nodes_table(clusters: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Nodes kept in a separate table (after the old system's own migration): grouped per cluster, in id order;
    removed nodes are left out."""
    rows.sort(key=lambda row: (row.get("id") is None, row.get("id") or 0))
    by_cluster: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        if str(row.get("status") or "").lower() == NodeStatus.REMOVED:
            continue
        by_cluster.setdefault(row.get("cluster_id"), []).append(row)
    for cluster in clusters:
        cluster["nodes"] = by_cluster.get(cluster.get("id"), [])
        cluster[_NODES_TABLE] = True


# Mapping ---------------------------------------------------------------------------------------------------------


def _first(row: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        value = row.get(key)
        if value not in (None, ""):
            return value
    return None


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ("" if value is None else str(value).strip())


def _json_value(value: Any) -> Any:
    """JSON columns come back as text from SQLite and as Python values from PostgreSQL and JSON files."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8")
    if isinstance(value, str):
        return json.loads(value) if value.strip() else None
    return value


def _registration_address(value: Any) -> str:
    """A bare host from an address that may be a URL (https://host:9345) or host:port."""
    text = _text(value)
    if "://" in text:
        return (urlsplit(text).hostname or "").lower() if _hostname_parses(text) else text
    if text.count(":") == 1 or text.startswith("["):  # host:port, [v6]:port
        candidate = f"//{text}"
        return (urlsplit(candidate).hostname or "").lower() if _hostname_parses(candidate) else text
    return text


def _hostname_parses(url: str) -> bool:
    try:
        urlsplit(url).port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    return True


def _bootstrapped_at(value: Any) -> datetime:
    moment = None
    if isinstance(value, datetime):
        moment = value
    elif value:
        try:
            moment = parse_datetime(_text(value))
        except ValueError:
            moment = None
    if moment is None:
        return timezone.now()
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, UTC)
    return moment


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "t")
    return bool(value)


def _version(value: Any) -> str:
    text = _text(value)
    if text and not text.startswith("v") and RKE2_VERSION_RE.match(f"v{text}"):
        return f"v{text}"
    return text


def _messages(exc: ValidationError, describe: Any) -> list[str]:
    if hasattr(exc, "error_dict"):
        return [f"{describe(key)}: {message}" for key, messages in exc.message_dict.items() for message in messages]
    return [f"{describe('__all__')}: {message}" for message in exc.messages]


def _build_cluster(row: Mapping[str, Any], name: str, outcome: ClusterOutcome) -> tuple[Cluster | None, list[Node]]:
    """The cluster and its nodes, validated; errors are added to ``outcome``."""
    fields: dict[str, Any] = {
        "name": name,
        "rke2_version": _version(_first(row, _VERSION_KEYS)),
        "registration_address": _registration_address(_first(row, _ADDRESS_KEYS)),
        "status": ClusterStatus.ACTIVE,
        "installation_stage": InstallationStage.COMPLETE,
        "bootstrapped_at": _bootstrapped_at(row.get("created_at")),
    }
    for key in _PLAIN_KEYS:
        value = row.get(key)
        if value not in (None, ""):
            fields[key] = _text(value).lower() if key == "cni" else _text(value)
    if not fields["rke2_version"]:
        outcome.errors.append("no RKE2 version in the source (column rke2_version or version).")
    try:
        tls_san = row.get("tls_san")
        if isinstance(tls_san, str):
            text = tls_san.strip()
            tls_san = (
                json.loads(text) if text.startswith("[") else [item.strip() for item in text.split(",") if item.strip()]
            )
        fields["tls_san"] = tls_san if isinstance(tls_san, list) else ([] if tls_san is None else tls_san)
        cluster_vars = _json_value(row.get("cluster_vars"))
        fields["cluster_vars"] = cluster_vars if cluster_vars is not None else {}
        raw_nodes = _json_value(row.get("nodes"))
    except (ValueError, TypeError) as exc:
        outcome.errors.append(f"a JSON column cannot be decoded ({exc}).")
        return None, []
    vars_token = _map_cluster_vars(fields, outcome)

    token = _text(_first(row, _TOKEN_KEYS))
    if token and vars_token and token != vars_token:
        outcome.errors.append(
            "cluster_vars (token): differs from the token column; which one the cluster uses is unclear."
        )
    token = token or vars_token
    if token:
        if any(char.isspace() for char in token):
            outcome.errors.append("token: contains whitespace; it cannot be an RKE2 token.")
        elif len(token) < MIN_SECRET_LENGTH:
            # A token this short could not be masked in job output (it would mask ordinary words), and it is
            # guessed in no time: whoever guesses it can join a node to the cluster.
            outcome.errors.append(
                f"token: has only {len(token)} characters; at least {MIN_SECRET_LENGTH} are needed (a token this "
                "short is guessed at once, and the portal could not keep it out of job output). Give the cluster "
                "a new token first: on a server run 'rke2 token rotate --new-token=<at least 32 random "
                "characters>' (see RKE2's token rotation), put the new token in the source, and import again."
            )
        elif len(token) < MIN_TOKEN_LENGTH:
            outcome.notes.append(
                f"the token has only {len(token)} characters; it is kept because the running cluster uses it."
            )
    else:
        token = generate_cluster_token()
        outcome.token_generated = True
        outcome.notes.append(
            "no token in the source: a new one is generated as a placeholder. Run the adopt job: it reads the "
            "token the servers use (<data-dir>/server/token) and stores it; until then jobs that would write it to "
            "the nodes are refused."
        )
    fields["token"] = token
    kubeconfig = _text(row.get("kubeconfig"))
    if kubeconfig:
        fields["kubeconfig"] = kubeconfig

    fields["adoption_required"] = True
    cluster = Cluster(**fields)
    # The name was checked (and matched) by the caller; a missing version is reported above.
    exclude = ["name"] if fields["rke2_version"] else ["name", "rke2_version"]
    try:
        cluster.full_clean(exclude=exclude)
    except ValidationError as exc:
        outcome.errors.extend(_messages(exc, lambda key: "cluster" if key == "__all__" else key))

    nodes = _build_nodes(
        cluster, raw_nodes, outcome, rke2_version=fields["rke2_version"], keep_statuses=bool(row.get(_NODES_TABLE))
    )
    return cluster, nodes


def _as_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [_text(item) for item in value if _text(item)]
    return [item.strip() for item in _text(value).split(",") if item.strip()]


def _map_cluster_vars(fields: dict[str, Any], outcome: ClusterOutcome) -> str:
    """Move old ``cluster_vars`` keys that have fields of their own here onto those fields (a column of the source
    wins when both are set and agree; a conflict is an error naming both). Returns a token found there."""
    cluster_vars = fields.get("cluster_vars")
    if not isinstance(cluster_vars, dict):
        return ""
    cluster_vars = dict(cluster_vars)
    token = ""
    for key, field_name in _CLUSTER_KEY_FIELDS.items():
        if key not in cluster_vars:
            continue
        value = cluster_vars.pop(key)
        if field_name == "token":
            token = _text(value)
            continue
        if field_name == "tls_san":
            merged = list(fields.get("tls_san") or []) if isinstance(fields.get("tls_san"), list) else []
            merged.extend(item for item in _as_list(value) if item not in merged)
            fields["tls_san"] = merged
            continue
        text = _text(value[0] if isinstance(value, list) and len(value) == 1 else value)
        if field_name == "cni":
            text = text.lower()
        current = fields.get(field_name)
        if current not in (None, "") and _text(current) != text:
            outcome.errors.append(f"cluster_vars ({key}): {text!r} differs from the {field_name} column ({current!r}).")
            continue
        fields[field_name] = text
    fields["cluster_vars"] = cluster_vars
    return token


def _build_nodes(
    cluster: Cluster, raw_nodes: Any, outcome: ClusterOutcome, *, rke2_version: str, keep_statuses: bool = False
) -> list[Node]:
    if not isinstance(raw_nodes, list) or not raw_nodes:
        outcome.errors.append("no nodes in the source.")
        return []
    errors: list[str] = []
    specs: list[dict[str, Any]] = []
    for position, raw in enumerate(raw_nodes, start=1):
        if not isinstance(raw, dict):
            errors.append(f"node #{position}: not a mapping of node fields.")
            continue
        hostname = _text(raw.get("hostname")).lower()
        label = f"node {hostname!r}" if hostname else f"node #{position}"
        role = _text(raw.get("role")).lower()
        if role not in _LEGACY_ROLES:
            errors.append(f"{label} (role): {raw.get('role')!r} is not 'server' or 'agent'.")
            continue
        spec = {
            "hostname": hostname,
            "internal_ip": _text(_first(raw, ("internal_ip", "ip"))),
            "external_ip": _text(raw.get("external_ip")) or None,
            "use_external_ip": _flag(raw.get("use_external_ip")),
            "role": role,
        }
        try:
            node_vars = _json_value(raw.get("node_vars"))
        except (ValueError, TypeError) as exc:
            errors.append(f"{label} (node_vars): cannot be decoded ({exc}).")
            continue
        if isinstance(node_vars, dict):
            node_vars = _map_node_vars(spec, dict(node_vars), label, errors)
        if node_vars:
            spec["node_vars"] = node_vars
        status = NodeStatus.ACTIVE
        if keep_statuses:
            source_status = _text(raw.get("status")).lower()
            if source_status:
                if source_status not in _SOURCE_NODE_STATUSES:
                    errors.append(f"{label} (status): {raw.get('status')!r} is not a node status this import knows.")
                    continue
                status = _SOURCE_NODE_STATUSES[source_status]
                if source_status == "installing":
                    outcome.notes.append(f"{label} was still installing in the source; it is imported as failed.")
        spec["status"] = status
        specs.append(spec)
    if errors:
        outcome.errors.extend(errors)
        return []
    specs = normalize_node_roles(specs)
    if not any(spec["role"] == NodeRole.INITIAL_MASTER for spec in specs):
        outcome.errors.append("no server node: a cluster needs at least one.")
        return []
    if sum(1 for spec in specs if spec["role"] == NodeRole.INITIAL_MASTER) > 1:
        outcome.errors.append("more than one node is marked initial_master.")
        return []
    nodes: list[Node] = []
    seen: dict[tuple[str, str], str] = {}
    for spec in specs:
        installed = "" if spec["status"] == NodeStatus.PENDING else rke2_version
        node = Node(cluster=cluster, installed_version=installed, **spec)
        label = f"node {spec['hostname']!r}" if spec["hostname"] else "node without hostname"
        try:
            node.full_clean(exclude=["cluster"], validate_constraints=False)
        except ValidationError as exc:
            errors.extend(_messages(exc, lambda key, label=label: label if key == "__all__" else f"{label} ({key})"))
            continue
        for key in ("hostname", "internal_ip"):
            value = str(getattr(node, key))
            if (key, value) in seen:
                errors.append(f"{label} ({key}): {value} is also used by node {seen[(key, value)]!r}.")
            seen[(key, value)] = node.hostname
        nodes.append(node)
        if node.role == NodeRole.INITIAL_MASTER:
            outcome.initial_master = node.hostname
    outcome.errors.extend(errors)
    return [] if errors else nodes


def _map_node_vars(spec: dict[str, Any], node_vars: dict[str, Any], label: str, errors: list[str]) -> dict[str, Any]:
    """Move old ``node_vars`` keys that have fields of their own here (labels, taints, node name and addresses)
    onto those fields; a conflict with a column of the source is an error naming both."""
    for key, field_name in _NODE_KEY_FIELDS.items():
        if key not in node_vars:
            continue
        value = node_vars.pop(key)
        if field_name in ("labels", "taints"):
            spec[field_name] = [*spec.get(field_name, []), *_as_list(value)]
            continue
        text = _text(value).lower() if field_name == "hostname" else _text(value)
        current = spec.get(field_name)
        if current not in (None, "") and _text(current) != text:
            errors.append(f"{label} (node_vars {key}): {text!r} differs from the {field_name} column ({current!r}).")
            continue
        spec[field_name] = text
    return node_vars


# Importing -------------------------------------------------------------------------------------------------------


class _DryRunRollback(Exception):
    pass


def legacy_clusters_import(
    *, source: str, dry_run: bool = False, actor: Any = None, table: str = "clusters", nodes_table: str = "nodes"
) -> ImportReport:
    """Import the clusters of the old system from ``source`` (a JSON file path, ``sqlite:///…`` or
    ``postgres://…``). Existing clusters (matched by name) are left untouched; each new cluster is created with
    its nodes in its own transaction, or skipped whole when any value is invalid. With ``dry_run`` every cluster
    is validated and written inside a transaction that is rolled back, so the report is what a real run would do.

    Raises :class:`LegacySourceError` when the source cannot be read.
    """
    rows = legacy_clusters_read(source, table=table, nodes_table=nodes_table)
    report = ImportReport(source=redact_source(source), dry_run=dry_run)
    seen_names: set[str] = set()
    for position, row in enumerate(rows, start=1):
        name = _text(_first(row, _NAME_KEYS)).lower()
        outcome = ClusterOutcome(name=name or f"#{position}", action="invalid")
        report.outcomes.append(outcome)
        raw_nodes = row.get("nodes")
        try:
            decoded = _json_value(raw_nodes)
            outcome.nodes = len(decoded) if isinstance(decoded, list) else 0
        except (ValueError, TypeError):
            outcome.nodes = 0
        if "__invalid__" in row:
            outcome.errors.append("not a mapping of cluster fields.")
            continue
        if not name:
            outcome.errors.append("no name.")
            continue
        try:
            Cluster._meta.get_field("name").run_validators(name)
        except ValidationError as exc:
            outcome.errors.extend(f"name: {message}" for message in exc.messages)
            continue
        if name in seen_names:
            outcome.errors.append("the source has another cluster with this name.")
            continue
        seen_names.add(name)
        if Cluster.objects.filter(name=name).exists():
            outcome.action = "exists"
            continue
        cluster, nodes = _build_cluster(row, name, outcome)
        if outcome.errors or cluster is None:
            continue
        try:
            _save(cluster, nodes, actor=actor, source=report.source, outcome=outcome, dry_run=dry_run)
        except _DryRunRollback:
            pass
        except IntegrityError as exc:
            refusal = integrity_refusal(exc, Cluster, Node)
            where = f"{refusal.field}: " if refusal.field else ""
            outcome.errors.append(f"the database refused it: {where}{refusal.message}")
            continue
        outcome.action = "imported"
    return report


def _save(
    cluster: Cluster, nodes: Sequence[Node], *, actor: Any, source: str, outcome: ClusterOutcome, dry_run: bool
) -> None:
    with transaction.atomic():
        cluster.save()
        for node in nodes:
            node.cluster = cluster
            node.save()
        audit_record(
            action="cluster.import",
            actor=actor,
            cluster=cluster,
            detail={"source": source, "nodes": len(nodes), "token_generated": outcome.token_generated},
        )
        if dry_run:
            raise _DryRunRollback
