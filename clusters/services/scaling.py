"""Scaling a cluster out and in: node changes and the job that applies them, in one transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import transaction

from ..choices import ACTIVE_JOB_STATUSES, JobKind, NodeStatus
from ..exceptions import JobConflict
from ..models import Cluster, Job, Node
from .clusters import nodes_add, nodes_mark_for_removal
from .jobs import job_request

__all__ = ["cluster_scale_in", "cluster_scale_out"]


@transaction.atomic
def cluster_scale_out(
    *, cluster: Cluster, nodes: Sequence[Mapping[str, Any]], params: Mapping[str, Any] | None = None, actor: Any = None
) -> tuple[list[Node], Job]:
    """Add pending nodes and request the scale-out job that installs them; nothing is kept when either step is
    refused (invalid nodes, another active job, a cluster that is not installed)."""
    _refuse_while_active(cluster)
    added = nodes_add(cluster=cluster, nodes=nodes, actor=actor)
    job = job_request(cluster=cluster, kind=JobKind.SCALE_ADD, params=dict(params or {}), actor=actor)
    return added, job


@transaction.atomic
def cluster_scale_in(
    *, cluster: Cluster, hostnames: Sequence[str], params: Mapping[str, Any] | None = None, actor: Any = None
) -> tuple[list[Node], Job | None]:
    """Mark nodes for removal and request the scale-in job that drains and uninstalls them.

    Nodes that were never installed are removed at once; when no installed node is left to take off its host,
    no job is requested and the returned job is None. Nothing is kept when the job is refused, and nothing is
    changed while another job is active (it may be acting on those nodes).
    """
    _refuse_while_active(cluster)
    marked = nodes_mark_for_removal(cluster=cluster, hostnames=hostnames, actor=actor)
    if not cluster.cluster_nodes.filter(status=NodeStatus.DRAINING).exists():
        return marked, None
    job = job_request(cluster=cluster, kind=JobKind.SCALE_REMOVE, params=dict(params or {}), actor=actor)
    return marked, job


def _refuse_while_active(cluster: Cluster) -> None:
    active = cluster.jobs.filter(status__in=ACTIVE_JOB_STATUSES).first()
    if active is not None:
        raise JobConflict(active)
