"""Cluster health: what the nodes report to Kubernetes, kept current by a scheduled sync.

A health check (job kind ``health``, requested by an operator) and a health sync (kind ``health_sync``, requested
by beat every ``HEALTH_SYNC_INTERVAL_SECONDS``) run the same light playbook: one ``kubectl get nodes -o json`` on
one server, nothing on the other nodes. Each node's Ready condition, kubelet version and last heartbeat are stored
on the node (:func:`health_record`); the cluster becomes ``degraded`` when a node is not Ready or its kubelet runs
another version than the cluster's, and ``active`` again once every node is Ready on the cluster's version
(:func:`health_settle_after_job`, conditional UPDATEs). Every change of the cluster's health is audited.

Syncs are jobs like the others (events, host summaries, the one-active-job lock), with these differences, so that
they stay cheap and out of the operator's way:

- a cluster with an active job, or not installed, is skipped (it is synced at the next round);
- a sync that is still pending gives way to any job an operator requests (it is canceled, see
  :func:`health_sync_yield`); a running one is bounded by ``HEALTH_SYNC_TIMEOUT_SECONDS``;
- the request is not audited and no webhook is notified (what changes is: ``cluster.health.degraded`` and
  ``cluster.health.recovered``);
- the admin's job list hides them unless asked (filter *Scheduled health syncs*), the API's job list too unless
  ``kind=health_sync`` is asked for; finished syncs older than ``HEALTH_SYNC_KEEP_HOURS`` are deleted, except the
  last one of each cluster.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ..choices import (
    ACTIVE_JOB_STATUSES,
    FINISHED_JOB_STATUSES,
    SERVER_ROLES,
    ClusterStatus,
    JobKind,
    JobStatus,
    NodeStatus,
)
from ..models import Cluster, Job, Node
from .audit import audit_record

__all__ = [
    "health_record",
    "health_settle_after_job",
    "health_sync_run",
    "health_sync_request",
    "health_sync_yield",
    "health_sync_purge",
    "SyncRound",
]

logger = logging.getLogger(__name__)

# Nodes whose health a check reads: installed ones (pending nodes were never installed, draining ones are leaving).
INSTALLED_STATUSES = (NodeStatus.ACTIVE, NodeStatus.FAILED)
# Cluster statuses a health check may change: a sync only moves between active and degraded; an operator's check
# also settles a cluster that a failed job left ``failed``.
SYNC_STATUSES = (ClusterStatus.ACTIVE, ClusterStatus.DEGRADED)
CHECK_STATUSES = (ClusterStatus.ACTIVE, ClusterStatus.DEGRADED, ClusterStatus.FAILED)
_SUMMARY_MAX = 1000


def health_record(cluster_id: int, health: Mapping[str, Any], *, now: dt.datetime | None = None) -> None:
    """Store what Kubernetes reported (``rke2_node_health``: {node name: {ready, kubelet_version,
    last_heartbeat}}) on the cluster's installed nodes. A node Kubernetes does not list is not Ready."""
    now = now or timezone.now()
    nodes = Node.objects.filter(cluster_id=cluster_id, status__in=INSTALLED_STATUSES).only("pk", "hostname")
    for node in nodes:
        entry = health.get(node.hostname)
        if not isinstance(entry, Mapping):
            Node.objects.filter(pk=node.pk).update(k8s_ready=False, updated_at=now)
            continue
        values: dict[str, Any] = {
            "k8s_ready": entry.get("ready") == "True",
            "kubelet_version": str(entry.get("kubelet_version") or "")[:64],
            "updated_at": now,
        }
        seen = parse_datetime(str(entry.get("last_heartbeat") or ""))
        if seen is not None:
            values["last_seen_at"] = seen
        Node.objects.filter(pk=node.pk).update(**values)


def health_problems(cluster: Cluster) -> list[str]:
    """What keeps the cluster from being healthy, from what its nodes last reported: nodes not Ready, and nodes
    whose kubelet runs another version than the cluster's (version drift)."""
    problems: list[str] = []
    nodes = list(cluster.cluster_nodes.filter(status__in=INSTALLED_STATUSES).order_by("pk"))
    not_ready = [node.hostname for node in nodes if node.k8s_ready is not True]
    if not_ready:
        problems.append(f"Not Ready: {', '.join(not_ready)}.")
    drift = [
        f"{node.hostname} runs {node.kubelet_version}"
        for node in nodes
        if node.kubelet_version and node.kubelet_version != cluster.rke2_version
    ]
    if drift:
        problems.append(f"Version drift from {cluster.rke2_version}: {', '.join(drift)}.")
    return problems


def health_settle_after_job(job: Job, status: str) -> str:
    """The cluster's status once a health check or sync ended with ``status``; returns the new status ("" when the
    cluster's status was not one a health check changes). A check whose Kubernetes API did not answer degrades the
    cluster whatever its nodes reported before."""
    cluster = Cluster.objects.get(pk=job.cluster_id)
    now = timezone.now()
    if status == JobStatus.SUCCESSFUL:
        problems = health_problems(cluster)
        summary = " ".join(problems) if problems else _healthy_summary(cluster)
    else:
        problems = ["The Kubernetes API did not answer."]
        summary = problems[0]
        if status == JobStatus.CANCELED:
            problems, summary = [], ""
    if not summary:
        return ""
    wanted = ClusterStatus.DEGRADED if problems else ClusterStatus.ACTIVE
    allowed = SYNC_STATUSES if job.kind == JobKind.HEALTH_SYNC else CHECK_STATUSES
    Cluster.objects.filter(pk=cluster.pk).update(health_checked_at=now, health_summary=summary[:_SUMMARY_MAX])
    changed = (
        Cluster.objects.filter(pk=cluster.pk, status__in=allowed)
        .exclude(status=wanted)
        .update(status=wanted, updated_at=now)
    )
    if changed:
        action = "cluster.health.degraded" if problems else "cluster.health.recovered"
        audit_record(
            action=action,
            cluster=cluster,
            detail={"job_id": job.pk, "from": cluster.status, "to": str(wanted), "problems": problems},
        )
        return str(wanted)
    return str(wanted) if cluster.status == wanted else ""


def _healthy_summary(cluster: Cluster) -> str:
    count = cluster.cluster_nodes.filter(status__in=INSTALLED_STATUSES).count()
    return f"All {count} nodes Ready on {cluster.rke2_version}."


# --- the scheduled sync ----------------------------------------------------------------------------------------------


@dataclass
class SyncRound:
    """What one round of the scheduled sync did."""

    requested: list[int] = field(default_factory=list)  # job ids
    skipped: dict[str, str] = field(default_factory=dict)  # cluster name -> why
    purged: int = 0


def health_sync_candidates() -> list[Cluster]:
    """Installed clusters a sync may read now: active or degraded, with an SSH credential, and no active job."""
    busy = Job.objects.filter(status__in=ACTIVE_JOB_STATUSES).values("cluster_id")
    return list(
        Cluster.objects.filter(status__in=SYNC_STATUSES, bootstrapped_at__isnull=False, ssh_credential__isnull=False)
        .exclude(pk__in=busy)
        .order_by("pk")
    )


def health_sync_request(cluster: Cluster) -> Job | None:
    """Create a pending health sync of ``cluster`` and hand it to a worker after commit; None when the cluster got
    an active job meanwhile (the database allows one per cluster) or has no live server to ask."""
    if not cluster.cluster_nodes.filter(status=NodeStatus.ACTIVE, role__in=SERVER_ROLES).exists():
        return None
    try:
        with transaction.atomic():
            job = Job.objects.create(
                cluster=cluster,
                kind=JobKind.HEALTH_SYNC,
                params={},
                stages=["health_sync"],
                celery_task_id=str(uuid.uuid4()),
                timeout_seconds=max(int(settings.HEALTH_SYNC_TIMEOUT_SECONDS), 1),
            )
    except IntegrityError:
        return None
    from .jobs import job_dispatch

    transaction.on_commit(partial(job_dispatch, job), robust=True)
    return job


def health_sync_yield(job: Job) -> bool:
    """A pending health sync gives way to a job an operator requests: it is canceled before it starts. Returns
    whether it was (a sync that started already keeps the cluster until it ends, within its short timeout)."""
    if job.kind != JobKind.HEALTH_SYNC:
        return False
    now = timezone.now()
    return bool(
        Job.objects.filter(pk=job.pk, kind=JobKind.HEALTH_SYNC, status=JobStatus.PENDING).update(
            status=JobStatus.CANCELED,
            cancel_requested=True,
            cancel_requested_at=now,
            finished_at=now,
            explanation="Gave way to a job requested meanwhile; the next sync reads the cluster again.",
        )
    )


def health_sync_purge(*, now: dt.datetime | None = None) -> int:
    """Delete finished syncs older than ``HEALTH_SYNC_KEEP_HOURS``, except the last one of each cluster."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(hours=float(settings.HEALTH_SYNC_KEEP_HOURS))
    syncs = Job.objects.filter(kind=JobKind.HEALTH_SYNC, status__in=FINISHED_JOB_STATUSES)
    latest = syncs.values("cluster_id").annotate(last=Max("pk")).values_list("last", flat=True)
    deleted, _ = syncs.filter(created_at__lt=cutoff).exclude(pk__in=list(latest)).delete()
    return deleted


def health_sync_run() -> SyncRound:
    """One round of the scheduled sync (from beat): a sync for every installed cluster that is free, then the
    purge of old syncs."""
    result = SyncRound()
    busy = set(Job.objects.filter(status__in=ACTIVE_JOB_STATUSES).values_list("cluster__name", flat=True))
    for name in sorted(busy):
        result.skipped[name] = "a job is active"
    for cluster in health_sync_candidates():
        job = health_sync_request(cluster)
        if job is None:
            result.skipped[cluster.name] = "no active server, or a job was requested meanwhile"
        else:
            result.requested.append(job.pk)
    result.purged = health_sync_purge()
    if result.requested or result.purged:
        logger.info(
            "health sync: %d requested, %d skipped, %d old syncs deleted",
            len(result.requested),
            len(result.skipped),
            result.purged,
        )
    return result
