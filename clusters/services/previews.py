"""Previews of what a job would hand to Ansible: each stage's inventory and each node's RKE2 config, secrets masked.

Read-only; used by the admin and the API. Rendering goes through :mod:`inventory.renderers`, so a preview shows the
same inventory layout and byte-for-byte the same ``config.yaml`` the playbooks write (with the token masked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import ValidationError

from inventory.registries import render_registries
from inventory.renderers import STAGES, ClusterSnapshot, InventoryRenderer, render_node_config

from ..models import Cluster

__all__ = ["ClusterPreview", "cluster_previews", "node_config_preview"]

_STAGE_GROUPS = ("initial_master", "joining_masters", "workers")


@dataclass(frozen=True)
class ClusterPreview:
    """Inventories by stage (readable YAML, no secrets) and configs by host name (token masked).

    ``stage_hosts`` lists, for each stage, the hosts it acts on (its stage group), in order. ``registries`` is the
    ``/etc/rancher/rke2/registries.yaml`` every node gets (credentials masked; empty: no registry, no file)."""

    inventories: dict[str, str] = field(default_factory=dict)
    configs: dict[str, str] = field(default_factory=dict)
    stage_hosts: dict[str, list[str]] = field(default_factory=dict)
    registries: str = ""


def cluster_previews(cluster: Cluster, stage: str | None = None) -> ClusterPreview:
    """Preview every install stage (or only ``stage``): its inventory, and the config of every node it acts on.

    Three queries whatever the cluster size. An unknown stage raises ``ValidationError`` keyed ``stage``."""
    if stage is not None and stage not in STAGES:
        raise ValidationError({"stage": [f"Unknown stage {stage!r}; expected one of {', '.join(STAGES)}."]})
    snapshot = ClusterSnapshot.load(cluster)
    preview = ClusterPreview(registries=render_registries(snapshot))
    acting: set[str] = set()
    for name in STAGES if stage is None else (stage,):
        rendered = InventoryRenderer.render_for_stage(cluster, name, snapshot=snapshot)
        preview.inventories[name] = rendered.preview_text()
        hosts = [host for group in _STAGE_GROUPS for host in rendered.hosts(group)]
        preview.stage_hosts[name] = hosts
        acting.update(hosts)
    for node in snapshot.live_nodes:
        if node.hostname in acting:
            preview.configs[node.hostname] = render_node_config(node, snapshot=snapshot)
    return preview


def node_config_preview(cluster: Cluster, hostname: str) -> str:
    """The ``config.yaml`` of one live node, token masked. An unknown host name raises ``ValidationError`` keyed
    ``hostname``."""
    snapshot = ClusterSnapshot.load(cluster)
    node = next((node for node in snapshot.live_nodes if node.hostname == hostname), None)
    if node is None:
        raise ValidationError({"hostname": [f"No live node named {hostname!r} in this cluster."]})
    return render_node_config(node, snapshot=snapshot)
