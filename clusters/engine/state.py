"""What the job engine records about clusters and nodes as a job's stages run and end.

Every change is a conditional UPDATE on the rows concerned (never a ``save()`` of a stale instance), so a
change made meanwhile by the portal (a node marked for removal, say) is not overwritten.

Node statuses: a node an install stage acts on goes ``pending``/``failed`` → ``installing`` → ``active``, or
``failed`` with ``last_error`` (the failing task's message, or why the stage stopped). Draining nodes go to
``removed`` when a scale-in succeeds. After an uninstall every node that was live is ``pending`` again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any

from django.utils import timezone

from ..choices import LIVE_NODE_STATUSES, ClusterStatus, InstallationStage, JobKind, JobStatus, NodeStatus
from ..models import Cluster, Job, Node, generate_cluster_token

__all__ = [
    "cluster_settle_after_job",
    "cluster_settle_status",
    "cluster_update",
    "nodes_abort",
    "nodes_apply_readiness",
    "nodes_fail",
    "nodes_note_errors",
    "nodes_record_versions",
    "nodes_start_install",
    "nodes_succeed",
    "nodes_touch",
    "cluster_uninstalled",
]

_MAX_ERROR = 4000


def cluster_update(cluster_id: int, **fields: Any) -> int:
    """Update the cluster's row (``updated_at`` too). Returns the number of rows changed (0 or 1)."""
    fields.setdefault("updated_at", timezone.now())
    return Cluster.objects.filter(pk=cluster_id).update(**fields)


def nodes_touch(node_ids: Collection[int], job: Job) -> None:
    """Record that ``job`` acted on these nodes."""
    if node_ids:
        Node.objects.filter(pk__in=node_ids).update(last_job=job, updated_at=timezone.now())


def nodes_start_install(node_ids: Collection[int], job: Job, *, now: datetime | None = None) -> None:
    """Nodes about to be installed: pending or failed ones become ``installing``; active ones (a resumed stage
    runs again on them) stay active."""
    now = now or timezone.now()
    Node.objects.filter(
        pk__in=node_ids, status__in=(NodeStatus.PENDING, NodeStatus.FAILED, NodeStatus.INSTALLING)
    ).update(
        status=NodeStatus.INSTALLING,
        install_started_at=now,
        install_finished_at=None,
        last_error="",
        last_job=job,
        updated_at=now,
    )
    nodes_touch(node_ids, job)


def nodes_succeed(node_ids: Collection[int], job: Job) -> None:
    """Nodes on which a stage completed: installing (or failed) ones become ``active``."""
    now = timezone.now()
    Node.objects.filter(pk__in=node_ids, status__in=(NodeStatus.INSTALLING, NodeStatus.FAILED)).update(
        status=NodeStatus.ACTIVE, install_finished_at=now, last_error="", last_job=job, updated_at=now
    )
    Node.objects.filter(pk__in=node_ids, status=NodeStatus.ACTIVE).exclude(last_error="").update(last_error="")


def nodes_fail(errors: Mapping[int, str], job: Job, *, statuses: Iterable[str] | None = None) -> None:
    """Mark nodes ``failed`` with their error (one UPDATE per distinct message). Only nodes whose status is in
    ``statuses`` change (default: the live statuses; draining and removed nodes keep theirs, with the error)."""
    allowed = tuple(statuses) if statuses is not None else LIVE_NODE_STATUSES
    now = timezone.now()
    by_message: dict[str, list[int]] = {}
    for node_id, message in errors.items():
        by_message.setdefault(message[:_MAX_ERROR], []).append(node_id)
    for message, ids in by_message.items():
        Node.objects.filter(pk__in=ids, status__in=allowed).update(
            status=NodeStatus.FAILED, last_error=message, last_job=job, updated_at=now
        )
        Node.objects.filter(pk__in=ids).exclude(status__in=allowed).update(
            last_error=message, last_job=job, updated_at=now
        )


def nodes_note_errors(errors: Mapping[int, str], job: Job) -> None:
    """Record errors on nodes without changing their status (preflight findings)."""
    now = timezone.now()
    for node_id, message in errors.items():
        Node.objects.filter(pk=node_id).update(last_error=message[:_MAX_ERROR], last_job=job, updated_at=now)


def nodes_abort(cluster_id: int, job: Job, reason: str) -> int:
    """A job stopped (canceled, timed out, worker lost): the nodes it was installing become ``failed`` with
    ``reason``. Returns how many."""
    return Node.objects.filter(cluster_id=cluster_id, status=NodeStatus.INSTALLING).update(
        status=NodeStatus.FAILED, last_error=reason[:_MAX_ERROR], last_job=job, updated_at=timezone.now()
    )


def nodes_record_versions(cluster_id: int, versions: Mapping[str, Any]) -> None:
    """``installed_version`` of each node named in ``versions`` ({hostname: version}, from set_stats)."""
    by_version: dict[str, list[str]] = {}
    for hostname, version in versions.items():
        if isinstance(version, str):
            by_version.setdefault(version[:64], []).append(str(hostname))
    for version, hostnames in by_version.items():
        Node.objects.filter(cluster_id=cluster_id, hostname__in=hostnames).exclude(status=NodeStatus.REMOVED).update(
            installed_version=version, updated_at=timezone.now()
        )


def nodes_apply_readiness(cluster_id: int, ready: Mapping[str, Any], job: Job) -> None:
    """Installed nodes (active or failed) become ``active`` when Kubernetes reports them Ready, ``failed``
    otherwise (from set_stats ``rke2_node_ready``: {hostname: bool}); their recorded Ready state follows."""
    now = timezone.now()
    installed = (NodeStatus.ACTIVE, NodeStatus.FAILED)
    ready_names = [str(name) for name, value in ready.items() if value is True]
    not_ready = [str(name) for name, value in ready.items() if value is not True]
    base = Node.objects.filter(cluster_id=cluster_id, status__in=installed)
    if ready_names:
        base.filter(hostname__in=ready_names).update(
            status=NodeStatus.ACTIVE, k8s_ready=True, last_error="", last_job=job, updated_at=now
        )
    if not_ready:
        base.filter(hostname__in=not_ready).update(
            status=NodeStatus.FAILED,
            k8s_ready=False,
            last_error="The node is not Ready in Kubernetes.",
            last_job=job,
            updated_at=now,
        )


def cluster_settle_status(cluster_id: int) -> str:
    """Set the status of an installed cluster from its nodes: ``degraded`` when a live node failed, else
    ``active``. Returns the status."""
    failed = Node.objects.filter(cluster_id=cluster_id, status=NodeStatus.FAILED).exists()
    status = ClusterStatus.DEGRADED if failed else ClusterStatus.ACTIVE
    cluster_update(cluster_id, status=status)
    return status


def cluster_uninstalled(cluster_id: int, job: Job) -> None:
    """After an uninstall: the live nodes are ``pending`` again (nothing of RKE2 left on them), the cluster is
    ``uninstalled`` and no longer bootstrapped, its kubeconfig is dropped and its join token replaced, so that a
    new install starts a new cluster with a new secret."""
    now = timezone.now()
    Node.objects.filter(cluster_id=cluster_id, status__in=LIVE_NODE_STATUSES).update(
        status=NodeStatus.PENDING,
        installed_version="",
        install_started_at=None,
        install_finished_at=None,
        last_error="",
        last_job=job,
        updated_at=now,
    )
    cluster_update(
        cluster_id,
        status=ClusterStatus.UNINSTALLED,
        installation_stage=InstallationStage.NOT_STARTED,
        bootstrapped_at=None,
        kubeconfig="",
        token=generate_cluster_token(),
    )


def cluster_settle_after_job(job: Job, status: str) -> None:
    """The cluster's status (and installation stage) once ``job`` ended with ``status``."""
    kind = job.kind
    cluster_id = job.cluster_id
    if kind == JobKind.INSTALL:
        if status == JobStatus.SUCCESSFUL:
            cluster_update(cluster_id, installation_stage=InstallationStage.COMPLETE)
            cluster_settle_status(cluster_id)
        else:
            cluster_update(cluster_id, installation_stage=InstallationStage.FAILED, status=ClusterStatus.FAILED)
    elif kind == JobKind.UNINSTALL:
        if status == JobStatus.SUCCESSFUL:
            cluster_uninstalled(cluster_id, job)
        else:
            cluster_update(cluster_id, status=ClusterStatus.FAILED)
    elif kind == JobKind.UPGRADE:
        if status == JobStatus.SUCCESSFUL:
            cluster_update(cluster_id, rke2_version=str((job.params or {}).get("target_version")))
        cluster_settle_status(cluster_id)
    elif kind in (JobKind.SCALE_ADD, JobKind.SCALE_REMOVE):
        cluster_settle_status(cluster_id)
    elif kind in (JobKind.HEALTH, JobKind.HEALTH_SYNC):
        from ..services.health import health_settle_after_job

        health_settle_after_job(job, status)
    elif kind == JobKind.CERT_ROTATE:
        cluster_settle_status(cluster_id)
