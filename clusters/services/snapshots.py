"""etcd snapshots and restore from a snapshot.

Snapshots are taken with ``rke2 etcd-snapshot save --name <prefix>`` on **every** active server at once: each server
snapshots its own etcd member into its own snapshot folder, as RKE2's own schedule does. A copy on every server means
that any snapshot job leaves a copy on the initial master, from which a restore starts, and that losing one server
loses no snapshot. The file is named ``<prefix>-<node name>-<unix time>``; the prefix tells its kind:

- ``on-demand`` (or a name the operator chose): the ``etcd_snapshot`` job;
- ``scheduled``: the job the beat task :func:`snapshots_schedule_due` requests every
  ``Cluster.etcd_snapshot_interval_minutes``, followed by a prune to ``Cluster.etcd_snapshot_retention`` per server;
- ``pre-upgrade`` / ``pre-removal``: the first stage of an upgrade, and of a scale-in that removes a server, unless
  the request says ``snapshot: false``.

Every snapshot job ends by listing each server's snapshots (``rke2 etcd-snapshot list``); the list replaces that
server's :class:`~clusters.models.EtcdSnapshot` rows. Old snapshots go with ``etcd_snapshot_prune``: by a retention
count per name prefix (``rke2 etcd-snapshot prune --snapshot-retention N --name <prefix>``), or by name
(``rke2 etcd-snapshot delete``).

A restore (``etcd_restore``, typed confirmation: the cluster's name) stops every agent and server (``rke2-killall.sh``
on servers, so etcd stops too), runs ``rke2 server --cluster-reset --cluster-reset-restore-path=<file>`` on the
initial master, removes the other servers' etcd data (``<data-dir>/server/db/etcd``; their snapshot folders are
kept), starts the initial master, lets the other servers join again one at a time, then starts the agents.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ..choices import (
    ACTIVE_JOB_STATUSES,
    SERVER_ROLES,
    ClusterStatus,
    EtcdSnapshotKind,
    JobKind,
    NodeRole,
    NodeStatus,
)
from ..exceptions import ApplicationError, InvalidState
from ..models import Cluster, EtcdSnapshot, Job, Node
from .audit import audit_record

__all__ = [
    "PLAYBOOKS",
    "SNAPSHOT_STAGES",
    "etcd_restore_request",
    "plan_snapshot_job",
    "pre_snapshot_stages",
    "snapshot_request",
    "snapshot_schedule_set",
    "snapshots_list_request",
    "snapshots_prune_request",
    "snapshots_record",
    "snapshots_schedule_due",
    "stage_inventory_nodes",
    "stage_vars",
]

logger = logging.getLogger(__name__)

SNAPSHOT_STAGE = "etcd_snapshot"
LIST_STAGE = "etcd_snapshot_list"
PRUNE_STAGE = "etcd_snapshot_prune"
RESTORE_STAGE = "etcd_restore"
PLAYBOOKS: Mapping[str, str] = {
    SNAPSHOT_STAGE: "etcd_snapshot.yml",
    LIST_STAGE: "etcd_snapshot.yml",
    PRUNE_STAGE: "etcd_snapshot.yml",
    RESTORE_STAGE: "etcd_restore.yml",
}
# Stages that only read or write snapshot files: a server where one fails is not failed itself.
SNAPSHOT_STAGES = frozenset({SNAPSHOT_STAGE, LIST_STAGE, PRUNE_STAGE})
SNAPSHOT_KINDS = frozenset(
    {JobKind.ETCD_SNAPSHOT, JobKind.ETCD_SNAPSHOT_LIST, JobKind.ETCD_SNAPSHOT_PRUNE, JobKind.ETCD_RESTORE}
)
# Name prefixes the portal gives its snapshots; RKE2's own schedule names its snapshots etcd-snapshot-<node>-<time>.
RESERVED_PREFIXES = {
    EtcdSnapshotKind.SCHEDULED: EtcdSnapshotKind.SCHEDULED,
    EtcdSnapshotKind.PRE_UPGRADE: EtcdSnapshotKind.PRE_UPGRADE,
    EtcdSnapshotKind.PRE_REMOVAL: EtcdSnapshotKind.PRE_REMOVAL,
    "etcd-snapshot": EtcdSnapshotKind.SCHEDULED,
}
DEFAULT_NAME = "on-demand"
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
MAX_RETENTION = 1000
MAX_INTERVAL_MINUTES = 60 * 24 * 31


# Planning (called by clusters.services.jobs.plan_stages).


def _active_servers(nodes: Iterable[Node]) -> list[Node]:
    return [node for node in nodes if node.role in SERVER_ROLES and node.status == NodeStatus.ACTIVE]


def _validate_name(value: Any, field: str = "name") -> str:
    if value in (None, ""):
        return DEFAULT_NAME
    text = str(value)
    if not isinstance(value, str) or not _NAME_RE.match(text):
        raise ValidationError(
            {field: ["Use 1 to 40 lowercase letters, digits and hyphens, starting and ending with a letter or digit."]}
        )
    for prefix in RESERVED_PREFIXES:
        if text == prefix or text.startswith(prefix + "-"):
            raise ValidationError({field: [f"Names starting with {prefix!r} are reserved for the portal and RKE2."]})
    return text


def _validate_retention(value: Any, field: str = "retention") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RETENTION:
        raise ValidationError({field: [f"Enter how many snapshots to keep per server, from 1 to {MAX_RETENTION}."]})
    return value


def _validate_prefix(value: Any) -> str:
    if value in (None, ""):
        return DEFAULT_NAME
    if value in RESERVED_PREFIXES:
        return str(value)
    return _validate_name(value)


def plan_snapshot_job(cluster: Cluster, kind: str, params: dict[str, Any], nodes: list[Node]) -> list[str] | None:
    """The stages of a snapshot or restore job (``None`` for other kinds), after checking the request. ``params``
    is normalised in place (defaults filled in, the snapshot to restore described by name, server and path)."""
    if kind not in SNAPSHOT_KINDS:
        return None
    if cluster.ssh_credential_id is None:
        raise InvalidState("The cluster has no SSH credential: set one before running jobs on its hosts.")
    if not cluster.is_bootstrapped:
        raise InvalidState(
            f"The cluster is not installed yet: {JobKind(kind).label.lower()} needs an installed cluster."
        )
    servers = _active_servers(nodes)
    if not servers:
        raise InvalidState("The cluster has no active server: etcd snapshots are taken and listed on the servers.")
    if kind == JobKind.ETCD_SNAPSHOT_LIST:
        return [LIST_STAGE]
    if kind == JobKind.ETCD_SNAPSHOT:
        if params.get("scheduled"):
            params["name"] = str(EtcdSnapshotKind.SCHEDULED)
            retention = params.get("retention") or 0
            if retention:
                params["retention"] = _validate_retention(retention)
            else:
                params.pop("retention", None)
        else:
            params["name"] = _validate_name(params.get("name"))
            params.pop("retention", None)
        return [SNAPSHOT_STAGE]
    if kind == JobKind.ETCD_SNAPSHOT_PRUNE:
        ids = params.get("snapshot_ids")
        if ids is not None:
            if (
                not isinstance(ids, list)
                or not ids
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
            ):
                raise ValidationError({"snapshot_ids": ["Give a non-empty list of snapshot ids."]})
            found = {row.pk: row for row in EtcdSnapshot.objects.filter(cluster=cluster, pk__in=ids)}
            missing = sorted(set(ids) - set(found))
            if missing:
                raise ValidationError(
                    {"snapshot_ids": [f"No snapshot of this cluster with id {', '.join(map(str, missing))}."]}
                )
            delete: dict[str, list[str]] = {}
            for row in found.values():
                delete.setdefault(row.node_name, []).append(row.name)
            params["delete"] = {host: sorted(names) for host, names in sorted(delete.items())}
            params.pop("retention", None)
            params.pop("name", None)
            return [PRUNE_STAGE]
        if "retention" not in params:
            raise ValidationError({"retention": ["Give how many snapshots to keep per server, or snapshot_ids."]})
        params["retention"] = _validate_retention(params["retention"])
        params["name"] = _validate_prefix(params.get("name"))
        return [PRUNE_STAGE]
    # Restore.
    if params.get("confirm") != cluster.name:
        raise ValidationError({"confirm": [f"Type the cluster's name ({cluster.name}) to confirm the restore."]})
    snapshot_id = params.get("snapshot_id")
    if isinstance(snapshot_id, bool) or not isinstance(snapshot_id, int):
        raise ValidationError({"snapshot_id": ["Give the id of the snapshot to restore."]})
    snapshot = EtcdSnapshot.objects.filter(cluster=cluster, pk=snapshot_id).first()
    if snapshot is None:
        raise ValidationError({"snapshot_id": [f"No snapshot of this cluster with id {snapshot_id}."]})
    initial = next((node for node in servers if node.role == NodeRole.INITIAL_MASTER), None)
    if initial is None:
        raise InvalidState("The cluster's initial master is not active: a restore starts from the initial master.")
    if snapshot.node_name != initial.hostname:
        raise ValidationError(
            {
                "snapshot_id": [
                    (
                        f"{snapshot.name} is on {snapshot.node_name}; a restore runs on the initial master "
                        f"({initial.hostname}): choose that server's copy of the snapshot."
                    )
                ]
            }
        )
    params.update(
        snapshot_id=snapshot.pk, snapshot_name=snapshot.name, snapshot_path=snapshot.path, restore_host=initial.hostname
    )
    return [RESTORE_STAGE]


def pre_snapshot_stages(cluster: Cluster, kind: str, params: dict[str, Any], nodes: list[Node]) -> list[str]:
    """``[etcd_snapshot]`` ahead of an upgrade, or of a scale-in that removes a server, unless the request says
    ``snapshot: false``; ``[]`` otherwise."""
    wanted = params.get("snapshot", True)
    if not isinstance(wanted, bool):
        raise ValidationError({"snapshot": ["Must be true or false."]})
    if not wanted:
        return []
    if kind == JobKind.SCALE_REMOVE and not any(
        node.status == NodeStatus.DRAINING and node.role in SERVER_ROLES for node in nodes
    ):
        return []
    if params.get("ungraceful") and kind == JobKind.SCALE_REMOVE and not _active_servers(nodes):
        return []
    if not _active_servers(nodes):
        return []
    return [SNAPSHOT_STAGE]


# Running (called by the stage orchestrator).


def stage_inventory_nodes(cluster: Cluster, stage: str) -> list[int] | None:
    """The nodes a snapshot stage acts on: the active servers (``None``: not a snapshot stage; a restore acts on
    every live node)."""
    if stage not in SNAPSHOT_STAGES:
        return None
    return list(
        Node.objects.filter(cluster=cluster, role__in=SERVER_ROLES, status=NodeStatus.ACTIVE)
        .order_by("created_at", "pk")
        .values_list("pk", flat=True)
    )


def stage_vars(job: Job, stage: str) -> dict[str, Any]:
    """The playbook variables of a snapshot or restore stage."""
    params = job.params or {}
    if stage == SNAPSHOT_STAGE:
        name = {
            JobKind.UPGRADE: str(EtcdSnapshotKind.PRE_UPGRADE),
            JobKind.SCALE_REMOVE: str(EtcdSnapshotKind.PRE_REMOVAL),
        }.get(job.kind, str(params.get("name") or DEFAULT_NAME))
        variables: dict[str, Any] = {"rke2_snapshot_action": "save", "rke2_snapshot_name": name}
        if job.kind == JobKind.ETCD_SNAPSHOT and params.get("retention"):
            variables["rke2_snapshot_retention"] = int(params["retention"])
        return variables
    if stage == LIST_STAGE:
        return {"rke2_snapshot_action": "list"}
    if stage == PRUNE_STAGE:
        if params.get("delete"):
            return {"rke2_snapshot_action": "delete", "rke2_snapshot_delete": dict(params["delete"])}
        return {
            "rke2_snapshot_action": "prune",
            "rke2_snapshot_name": str(params.get("name") or DEFAULT_NAME),
            "rke2_snapshot_retention": int(params["retention"]),
        }
    if stage == RESTORE_STAGE:
        return {"rke2_restore_host": str(params["restore_host"]), "rke2_restore_path": str(params["snapshot_path"])}
    return {}


def kind_of(name: str, saved_prefix: str = "", saved_kind: str = "") -> str:
    """The kind of a snapshot, from its name's prefix (or the job that saved it)."""
    if saved_prefix and name.startswith(saved_prefix + "-") and saved_kind:
        return saved_kind
    for prefix, kind in RESERVED_PREFIXES.items():
        if name.startswith(prefix + "-"):
            return str(kind)
    return str(EtcdSnapshotKind.ON_DEMAND)


def _saved_kind(job: Job) -> tuple[str, str]:
    if job.kind == JobKind.UPGRADE:
        return str(EtcdSnapshotKind.PRE_UPGRADE), str(EtcdSnapshotKind.PRE_UPGRADE)
    if job.kind == JobKind.SCALE_REMOVE:
        return str(EtcdSnapshotKind.PRE_REMOVAL), str(EtcdSnapshotKind.PRE_REMOVAL)
    if job.kind == JobKind.ETCD_SNAPSHOT:
        name = str((job.params or {}).get("name") or DEFAULT_NAME)
        return name, str(
            EtcdSnapshotKind.SCHEDULED if name == EtcdSnapshotKind.SCHEDULED else EtcdSnapshotKind.ON_DEMAND
        )
    return "", ""


def _created(value: Any) -> datetime | None:
    text = str(value or "").strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _size(value: Any) -> int:
    try:
        return max(int(str(value).strip()), 0)
    except (TypeError, ValueError):
        return 0


def snapshots_record(cluster: Cluster, job: Job, reported: Any) -> int:
    """Store what ``rke2 etcd-snapshot list`` showed on each server that reported (``{host: [{name, location,
    size, created}]}``): the list replaces that server's rows. Rows of servers removed from the cluster go too.
    Returns how many rows the reported servers now have."""
    if not isinstance(reported, Mapping):
        return 0
    prefix, saved_kind = _saved_kind(job)
    nodes = {node.hostname: node for node in Node.objects.filter(cluster=cluster).exclude(status=NodeStatus.REMOVED)}
    total = 0
    with transaction.atomic():
        for host, entries in reported.items():
            host = str(host)
            if not isinstance(entries, list):
                continue
            rows: dict[str, dict[str, Any]] = {}
            for entry in entries:
                if not isinstance(entry, Mapping) or not entry.get("name"):
                    continue
                name = str(entry["name"])[:255]
                location = str(entry.get("location") or "")
                path = location[len("file://") :] if location.startswith("file://") else location
                rows[name] = {
                    "path": path[:1024],
                    "size": _size(entry.get("size")),
                    "created": _created(entry.get("created")),
                }
            EtcdSnapshot.objects.filter(cluster=cluster, node_name=host).exclude(name__in=list(rows)).delete()
            existing = set(
                EtcdSnapshot.objects.filter(cluster=cluster, node_name=host, name__in=list(rows)).values_list(
                    "name", flat=True
                )
            )
            for name, values in rows.items():
                if name in existing:
                    EtcdSnapshot.objects.filter(cluster=cluster, node_name=host, name=name).update(
                        **values, node=nodes.get(host), listed_at=timezone.now()
                    )
                else:
                    EtcdSnapshot.objects.create(
                        cluster=cluster,
                        node=nodes.get(host),
                        node_name=host,
                        name=name,
                        kind=kind_of(name, prefix, saved_kind),
                        job=job,
                        **values,
                    )
            total += len(rows)
        EtcdSnapshot.objects.filter(cluster=cluster).exclude(node_name__in=list(nodes)).delete()
    return total


# Requests (admin, API, beat).


def _request(cluster: Cluster, kind: str, params: dict[str, Any], actor: Any) -> Job:
    from .jobs import job_request

    return job_request(cluster=cluster, kind=kind, params=params, actor=actor)


def snapshot_request(*, cluster: Cluster, name: str = "", actor: Any = None) -> Job:
    """Take an etcd snapshot on every active server now (``name``: the file name's prefix, ``on-demand`` by
    default)."""
    return _request(cluster, JobKind.ETCD_SNAPSHOT, {"name": name or DEFAULT_NAME}, actor)


def snapshots_list_request(*, cluster: Cluster, actor: Any = None) -> Job:
    """List the snapshots on every active server again (files may have been added or removed by hand or by RKE2)."""
    return _request(cluster, JobKind.ETCD_SNAPSHOT_LIST, {}, actor)


def snapshots_prune_request(
    *,
    cluster: Cluster,
    retention: int | None = None,
    name: str = "",
    snapshot_ids: list[int] | None = None,
    actor: Any = None,
) -> Job:
    """Delete snapshots: the given ones (``snapshot_ids``), or all but the ``retention`` newest per server among
    those whose name starts with ``name`` (``on-demand`` by default, as ``rke2 etcd-snapshot prune``)."""
    if snapshot_ids is not None:
        params: dict[str, Any] = {"snapshot_ids": list(snapshot_ids)}
    else:
        params = {"retention": retention, "name": name or DEFAULT_NAME}
    return _request(cluster, JobKind.ETCD_SNAPSHOT_PRUNE, params, actor)


def etcd_restore_request(*, cluster: Cluster, snapshot: EtcdSnapshot | int, confirm: str, actor: Any = None) -> Job:
    """Restore the cluster's etcd from ``snapshot`` (a copy on the initial master). ``confirm`` must be the
    cluster's name."""
    snapshot_id = snapshot.pk if isinstance(snapshot, EtcdSnapshot) else snapshot
    return _request(cluster, JobKind.ETCD_RESTORE, {"snapshot_id": snapshot_id, "confirm": confirm}, actor)


def snapshot_schedule_set(*, cluster: Cluster, interval_minutes: Any, retention: Any, actor: Any = None) -> Cluster:
    """Set the cluster's snapshot schedule: a snapshot on every server each ``interval_minutes`` (0: none), keeping
    ``retention`` scheduled snapshots per server (0: all)."""
    errors: dict[str, list[str]] = {}
    if (
        isinstance(interval_minutes, bool)
        or not isinstance(interval_minutes, int)
        or not (0 <= interval_minutes <= MAX_INTERVAL_MINUTES)
    ):
        errors["etcd_snapshot_interval_minutes"] = [
            f"Enter the minutes between two scheduled snapshots, from 0 (none) to {MAX_INTERVAL_MINUTES}."
        ]
    if isinstance(retention, bool) or not isinstance(retention, int) or not 0 <= retention <= MAX_RETENTION:
        errors["etcd_snapshot_retention"] = [
            f"Enter how many scheduled snapshots to keep, from 0 (all) to {MAX_RETENTION}."
        ]
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        Cluster.objects.filter(pk=cluster.pk).update(
            etcd_snapshot_interval_minutes=interval_minutes,
            etcd_snapshot_retention=retention,
            updated_at=timezone.now(),
        )
        audit_record(
            action="cluster.etcd_snapshot_schedule",
            actor=actor,
            cluster=cluster,
            detail={"interval_minutes": interval_minutes, "retention": retention},
        )
    cluster.refresh_from_db()
    return cluster


def snapshots_schedule_due(now: datetime | None = None) -> list[int]:
    """Request the scheduled snapshot jobs that are due (beat, every minute): clusters with an interval, installed,
    not uninstalled, whose last scheduled request is at least one interval old. A cluster with an active job is
    skipped (and tried again at the next run). Returns the new jobs' ids."""
    from ..exceptions import JobConflict

    now = now or timezone.now()
    created: list[int] = []
    clusters = (
        Cluster.objects.filter(etcd_snapshot_interval_minutes__gt=0, bootstrapped_at__isnull=False)
        .exclude(status__in=(ClusterStatus.UNINSTALLED, ClusterStatus.UNINSTALLING))
        .exclude(adoption_required=True)
        .exclude(jobs__status__in=ACTIVE_JOB_STATUSES)
        .order_by("pk")
        .distinct()
    )
    for cluster in clusters:
        last = cluster.etcd_snapshot_last_scheduled_at
        if last is not None and last > now - timedelta(minutes=cluster.etcd_snapshot_interval_minutes):
            continue
        # Claim the slot first (a conditional update), so that two beat runs never request the same snapshot.
        claim = Cluster.objects.filter(pk=cluster.pk)
        claim = claim.filter(
            Q(etcd_snapshot_last_scheduled_at=last) if last else Q(etcd_snapshot_last_scheduled_at=None)
        )
        if not claim.update(etcd_snapshot_last_scheduled_at=now):
            continue
        params: dict[str, Any] = {"scheduled": True}
        if cluster.etcd_snapshot_retention:
            params["retention"] = cluster.etcd_snapshot_retention
        try:
            job = _request(cluster, JobKind.ETCD_SNAPSHOT, params, None)
        except JobConflict:
            # A job started in between: give the slot back, the next run tries again.
            Cluster.objects.filter(pk=cluster.pk).update(etcd_snapshot_last_scheduled_at=last)
            continue
        except (ApplicationError, ValidationError) as exc:
            logger.warning("cluster %s: scheduled etcd snapshot not requested: %s", cluster.pk, exc)
            continue
        created.append(job.pk)
    return created
