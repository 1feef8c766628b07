"""Labels and taints of nodes that already run.

RKE2 applies ``node-label`` and ``node-taint`` from config.yaml only when a node registers. When an operator changes
them on an active node, the portal stores the new lists and requests a ``node_labels`` job. The job
(``ansible/node_labels.yml``) applies the change with kubectl from one server (labels and taints the portal set
before and that are no longer wanted are removed; others set by hand are left alone) and writes the lists into the
node's config.yaml without restarting RKE2, so that a later re-registration keeps them.

The job's parameters name the node and the lists the portal had set before the change (``previous_labels``,
``previous_taints``): what to remove is what was set before and is no longer wanted. The wanted lists are the
node's own, read when the job runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .. import validators
from ..choices import JobKind, NodeStatus
from ..exceptions import InvalidState
from ..models import Cluster, Job, Node
from .audit import audit_record

__all__ = ["node_labels_update", "node_labels_changed", "node_labels_plan", "node_labels_job_vars"]


def _string_list(value: Any, field: str, validator: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        raise ValidationError({field: ["Enter a list."]})
    items: list[str] = []
    errors: list[str] = []
    for item in value:
        if not isinstance(item, str):
            errors.append(f"{item!r} is not a string.")
            continue
        try:
            validator(item)
        except ValidationError as exc:
            errors.extend(exc.messages)
            continue
        if item not in items:
            items.append(item)
    if errors:
        raise ValidationError({field: errors})
    return items


def node_labels_plan(cluster: Cluster, params: Mapping[str, Any]) -> Node:
    """Check a ``node_labels`` job's parameters: an active node of the cluster, and the lists set before. Returns
    the node."""
    hostname = params.get("hostname")
    if not isinstance(hostname, str) or not hostname:
        raise ValidationError({"hostname": ["Name the node whose labels and taints to apply."]})
    node = cluster.cluster_nodes.filter(hostname=hostname).exclude(status=NodeStatus.REMOVED).first()
    if node is None:
        raise ValidationError({"hostname": [f"The cluster has no node {hostname!r}."]})
    if node.status != NodeStatus.ACTIVE:
        raise InvalidState(
            f"Node {hostname} is {node.get_status_display().lower()}, not active: its labels and taints are applied "
            "when it is installed."
        )
    _string_list(params.get("previous_labels", []), "previous_labels", validators.validate_node_label)
    _string_list(params.get("previous_taints", []), "previous_taints", validators.validate_node_taint)
    return node


def node_labels_job_vars(params: Mapping[str, Any]) -> dict[str, Any]:
    """Extra variables of ``node_labels.yml``: the node, and what the portal had set before."""
    return {
        "rke2_labels_node": str(params.get("hostname") or ""),
        "rke2_labels_previous": [str(item) for item in params.get("previous_labels") or []],
        "rke2_taints_previous": [str(item) for item in params.get("previous_taints") or []],
    }


def _applies_live(node: Node) -> bool:
    return node.status == NodeStatus.ACTIVE and node.cluster.is_bootstrapped


def node_labels_changed(
    *, node: Node, previous_labels: Sequence[str], previous_taints: Sequence[str], actor: Any = None
) -> Job | None:
    """The node's labels or taints were just changed (and saved): on an active node, request the job that applies
    them. Returns the job, or None when the node is not running yet (its next install applies them) or nothing
    changed. Raises :class:`~clusters.exceptions.JobConflict` when the cluster has an active job: call it inside
    the transaction that saved the change, so that the change is refused with the job."""
    from .jobs import job_request

    if list(previous_labels) == list(node.labels) and list(previous_taints) == list(node.taints):
        return None
    if not _applies_live(node):
        return None
    return job_request(
        cluster=node.cluster,
        kind=JobKind.NODE_LABELS,
        params={
            "hostname": node.hostname,
            "previous_labels": list(previous_labels),
            "previous_taints": list(previous_taints),
        },
        actor=actor,
    )


def node_labels_update(
    *, node: Node, labels: Any = None, taints: Any = None, actor: Any = None
) -> tuple[Node, Job | None]:
    """Set a node's labels and/or taints (None: unchanged). On an active node the change is applied by a job at
    once (returned); when the cluster has an active job, nothing is changed (``JobConflict``)."""
    with transaction.atomic():
        locked = Node.objects.select_for_update().select_related("cluster").get(pk=node.pk)
        if locked.status == NodeStatus.REMOVED:
            raise InvalidState(f"Node {locked.hostname} has been removed.")
        previous_labels, previous_taints = list(locked.labels), list(locked.taints)
        if labels is not None:
            locked.labels = _string_list(labels, "labels", validators.validate_node_label)
        if taints is not None:
            locked.taints = _string_list(taints, "taints", validators.validate_node_taint)
        if locked.labels == previous_labels and locked.taints == previous_taints:
            return locked, None
        Node.objects.filter(pk=locked.pk).update(labels=locked.labels, taints=locked.taints, updated_at=timezone.now())
        audit_record(
            action="node.labels.update",
            actor=actor,
            cluster=locked.cluster,
            object_repr=locked.hostname,
            detail={
                "hostname": locked.hostname,
                "labels": {"before": previous_labels, "after": locked.labels},
                "taints": {"before": previous_taints, "after": locked.taints},
            },
        )
        job = node_labels_changed(
            node=locked, previous_labels=previous_labels, previous_taints=previous_taints, actor=actor
        )
    return locked, job
