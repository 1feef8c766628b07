"""Ansible inventories for each install stage and operation of a cluster.

An inventory is a mapping (``{"all": {"vars": ..., "hosts": ..., "children": ...}}``); host names are
``Node.hostname``. Every host is defined once under ``all.hosts`` with its host vars (see
:mod:`inventory.variables`); the groups under ``all.children`` list host names only:

- ``rke2_servers`` / ``rke2_agents``: the hosts of this inventory by RKE2 type;
- ``initial_master``, ``joining_masters``, ``workers``: the hosts the stage acts on;
- ``api_host``: one server for ``delegate_to`` kubectl calls, never a master this inventory joins or removes,
  active ones first (each method says which); empty only in the ``initial_master`` stage before any server runs.
  Its name is also ``rke2_api_host`` ("" when there is none);
- ``prepare``: nodes the stage may install RKE2 on ahead of their own stage, without configuring or starting it
  (``render_for_stage`` of ``initial_master``: the masters and workers of the cluster not active yet), or whose
  hosts are prepared before the reachability check (``render_for_reachability``: the live nodes not active yet);
- ``remove``: scale-in targets (``render_for_scale_remove`` only).

All groups are always present (possibly empty), so ``groups['workers']`` etc. are always defined. Besides the
stage's hosts and the API host, every live server is present (in ``rke2_servers`` only, no stage group), so
playbooks can probe the other servers and count them (bootstrap guard, quorum checks). Removed and draining nodes
never appear, except draining ones in ``remove``. Playbooks act on the stage groups, never on ``all``.

Secrets stay out: every render returns a :class:`RenderedInventory` whose ``inventory`` is public and whose
``secret_vars`` holds ``rke2_token``. The job engine writes ``serialize_inventory(result.inventory)`` to
``inventory/hosts.json`` and ``serialize_extravars({...job vars, **result.secret_vars})`` to ``env/extravars``
(0600); see :mod:`inventory.serialization` for why both are JSON.

Each render runs two queries (the nodes, the SSH credential without key material), whatever the cluster size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from clusters.choices import SERVER_ROLES, InstallationStage, NodeRole, NodeStatus
from clusters.exceptions import InvalidState
from clusters.models import Cluster, Node

from .configs import CONFIG_TEMPLATES, config_template_name, render_node_config, template_context
from .serialization import display_yaml, serialize_extravars, serialize_inventory
from .variables import ClusterSnapshot, VariableRenderer, ordered_subset, pick_api_host, split_secrets

__all__ = [
    "CONFIG_TEMPLATES",
    "GROUPS",
    "STAGES",
    "STAGE_GROUP_OF_ROLE",
    "ClusterSnapshot",
    "InventoryRenderer",
    "RenderedInventory",
    "VariableRenderer",
    "config_template_name",
    "display_yaml",
    "render_node_config",
    "serialize_extravars",
    "serialize_inventory",
    "template_context",
]

STAGES = (
    InstallationStage.INITIAL_MASTER.value,
    InstallationStage.JOINING_MASTERS.value,
    InstallationStage.WORKERS.value,
    InstallationStage.ALL.value,
)
STAGE_GROUP_OF_ROLE = {
    NodeRole.INITIAL_MASTER.value: "initial_master",
    NodeRole.MASTER.value: "joining_masters",
    NodeRole.WORKER.value: "workers",
}
_ROLES_OF_STAGE = {
    "initial_master": (NodeRole.INITIAL_MASTER.value,),
    "joining_masters": (NodeRole.MASTER.value,),
    "workers": (NodeRole.WORKER.value,),
    "all": (NodeRole.INITIAL_MASTER.value, NodeRole.MASTER.value, NodeRole.WORKER.value),
}
GROUPS = (
    "rke2_servers",
    "rke2_agents",
    "initial_master",
    "joining_masters",
    "workers",
    "prepare",
    "api_host",
    "remove",
)


class RenderedInventory(NamedTuple):
    """An inventory and the secret variables that go with it (unpacks as ``inventory, secret_vars``)."""

    inventory: dict[str, Any]
    """Public inventory mapping. Safe to preview; write it with :meth:`inventory_text`."""
    secret_vars: dict[str, Any]
    """``{"rke2_token": Secret}``; never in the inventory. Write it with :meth:`extravars_text`."""

    def inventory_text(self) -> str:
        """File content for ``inventory/hosts.json``."""
        return serialize_inventory(self.inventory)

    def extravars_text(self, job_vars: Mapping[str, Any] | None = None) -> str:
        """File content for ``env/extravars`` (0600): the job's own variables plus the secrets (secrets win)."""
        return serialize_extravars({**(job_vars or {}), **self.secret_vars})

    def preview_text(self) -> str:
        """Readable YAML of the public inventory, for previews only."""
        return display_yaml(self.inventory)

    def hosts(self, group: str) -> list[str]:
        """Host names of a group (``"all"`` for every host), in inventory order."""
        if group == "all":
            return list(self.inventory["all"]["hosts"])
        return list(self.inventory["all"]["children"][group]["hosts"])

    @property
    def api_host(self) -> str:
        return self.inventory["all"]["vars"]["rke2_api_host"]


def _build(
    snapshot: ClusterSnapshot,
    *,
    stage_groups: Mapping[str, Sequence[Node]],
    api_host: Node | None,
    remove: Sequence[Node] = (),
    prepare: Sequence[Node] = (),
) -> RenderedInventory:
    cluster_vars = snapshot.cluster_vars()
    cluster_vars["rke2_api_host"] = api_host.hostname if api_host else ""
    public_vars, secret_vars = split_secrets(cluster_vars)

    acting = {node.pk for members in stage_groups.values() for node in members}
    acting.update(node.pk for node in remove)
    acting.update(node.pk for node in prepare)
    if api_host is not None:
        acting.add(api_host.pk)
    live_servers = {node.pk for node in snapshot.live_servers}
    present = [node for node in snapshot.nodes if node.pk in acting or node.pk in live_servers]

    hosts = {node.hostname: snapshot.node_vars(node) for node in present}
    groups: dict[str, dict[str, Any]] = {name: {"hosts": {}} for name in GROUPS}
    for node in present:
        groups["rke2_servers" if node.role in SERVER_ROLES else "rke2_agents"]["hosts"][node.hostname] = {}
    for name, members in stage_groups.items():
        for node in members:
            groups[name]["hosts"][node.hostname] = {}
    if api_host is not None:
        groups["api_host"]["hosts"][api_host.hostname] = {}
    for node in remove:
        groups["remove"]["hosts"][node.hostname] = {}
    for node in prepare:
        groups["prepare"]["hosts"][node.hostname] = {}
    inventory = {"all": {"vars": public_vars, "hosts": hosts, "children": groups}}
    return RenderedInventory(inventory=inventory, secret_vars=secret_vars)


def _stage_groups(nodes: Iterable[Node]) -> dict[str, list[Node]]:
    groups: dict[str, list[Node]] = {"initial_master": [], "joining_masters": [], "workers": []}
    for node in nodes:
        groups[STAGE_GROUP_OF_ROLE[node.role]].append(node)
    return groups


class InventoryRenderer:
    """Builds the inventory of a stage or operation (see the module docstring for the layout).

    All methods are static: ``InventoryRenderer.render_for_stage(cluster, "workers")``. Each returns a
    :class:`RenderedInventory` and runs two queries, or none when given a ``snapshot`` (a
    :class:`~inventory.variables.ClusterSnapshot` of the same cluster) to render several inventories from one read.
    Invalid arguments (unknown stage, a node that does not belong) raise ``ValueError``; a cluster state that does
    not allow the inventory raises :class:`~clusters.exceptions.InvalidState`.
    """

    @staticmethod
    def render_for_stage(
        cluster: Cluster,
        stage: str,
        nodes: Iterable[Node | int] | None = None,
        *,
        snapshot: ClusterSnapshot | None = None,
    ) -> RenderedInventory:
        """Inventory of an install stage: ``initial_master``, ``joining_masters``, ``workers`` or ``all``.

        The stage group holds the live nodes of the stage's role(s) (``all``: every live node, each in the group
        of its role), narrowed to ``nodes`` (instances or primary keys) when given. API host: for
        ``initial_master`` an active server if there is one (none before the first bootstrap); for
        ``joining_masters`` the best live server outside the group (normally the initial master); for ``workers``
        and ``all`` the best live server — "best" preferring active servers, then the initial master. The
        ``initial_master`` stage of the whole cluster (no ``nodes``) also names, in ``prepare``, the live masters
        and workers that are not active yet.
        """
        stage = str(stage)
        if stage not in _ROLES_OF_STAGE:
            raise ValueError(f"Unknown stage {stage!r}; expected one of {', '.join(STAGES)}.")
        snapshot = _snapshot(cluster, snapshot)
        eligible = [node for node in snapshot.live_nodes if node.role in _ROLES_OF_STAGE[stage]]
        targets = (
            eligible
            if nodes is None
            else ordered_subset(snapshot.nodes, nodes, allowed=eligible, what=f"stage {stage}")
        )
        prepare: list[Node] = []
        if stage == "initial_master":
            api_host = pick_api_host(snapshot.live_servers, require_active=True)
            if nodes is None:
                prepare = [
                    node
                    for node in snapshot.live_nodes
                    if node.role != NodeRole.INITIAL_MASTER and node.status != NodeStatus.ACTIVE
                ]
        elif stage == "joining_masters":
            target_pks = {node.pk for node in targets}
            api_host = pick_api_host([node for node in snapshot.live_servers if node.pk not in target_pks])
        else:
            api_host = pick_api_host(snapshot.live_servers)
        return _build(snapshot, stage_groups=_stage_groups(targets), api_host=api_host, prepare=prepare)

    @staticmethod
    def render_for_scale_add(
        cluster: Cluster, new_nodes: Iterable[Node | int], *, snapshot: ClusterSnapshot | None = None
    ) -> RenderedInventory:
        """Inventory to add nodes: new masters in ``joining_masters``, new workers in ``workers`` (nothing else in
        a stage group) and, as API host, an active existing server that is not among the new nodes.

        Raises ``ValueError`` for an unknown or non-live node or a new initial master, and ``InvalidState`` when
        no existing server is active."""
        snapshot = _snapshot(cluster, snapshot)
        targets = ordered_subset(snapshot.nodes, new_nodes, allowed=snapshot.live_nodes, what="a scale-out")
        if not targets:
            raise ValueError("A scale-out needs at least one new node.")
        for node in targets:
            if node.role == NodeRole.INITIAL_MASTER:
                raise ValueError(
                    f"Node {node.hostname} is an initial master; a scale-out only joins masters and workers."
                )
        target_pks = {node.pk for node in targets}
        api_host = pick_api_host(
            [node for node in snapshot.live_servers if node.pk not in target_pks], require_active=True
        )
        if api_host is None:
            raise InvalidState("The cluster has no active server to join new nodes to.")
        return _build(snapshot, stage_groups=_stage_groups(targets), api_host=api_host)

    @staticmethod
    def render_for_scale_remove(
        cluster: Cluster, nodes: Iterable[Node | int], *, snapshot: ClusterSnapshot | None = None
    ) -> RenderedInventory:
        """Inventory to remove nodes: the targets (normally ``draining``) in ``remove``, an active server that is
        not a target as API host, and the remaining live servers in ``rke2_servers`` for quorum checks. Targets
        are in ``rke2_servers``/``rke2_agents`` by type too; no stage group is filled.

        Raises ``ValueError`` for a removed or unknown node, and ``InvalidState`` when no other server is active."""
        snapshot = _snapshot(cluster, snapshot)
        targets = ordered_subset(snapshot.nodes, nodes, allowed=snapshot.nodes, what="a scale-in")
        if not targets:
            raise ValueError("A scale-in needs at least one node to remove.")
        target_pks = {node.pk for node in targets}
        api_host = pick_api_host(
            [node for node in snapshot.live_servers if node.pk not in target_pks], require_active=True
        )
        if api_host is None:
            raise InvalidState("The cluster has no other active server to remove nodes through.")
        return _build(snapshot, stage_groups={}, api_host=api_host, remove=targets)

    @staticmethod
    def render_for_operation(
        cluster: Cluster, nodes: Iterable[Node | int] | None = None, *, snapshot: ClusterSnapshot | None = None
    ) -> RenderedInventory:
        """Inventory for whole-cluster operations (preflight, upgrade, uninstall, health, kubeconfig): every live
        node (or ``nodes``) in the stage group of its role and in its type group, and the best live server as API
        host (none only when the cluster has no live server). Same layout as stage ``all``."""
        return InventoryRenderer.render_for_stage(cluster, "all", nodes, snapshot=snapshot)

    @staticmethod
    def render_for_reachability(cluster: Cluster, *, snapshot: ClusterSnapshot | None = None) -> RenderedInventory:
        """Inventory of the reachability check before an install or a scale-out: every live node in the stage group
        of its role (existing nodes too: new nodes must reach them, and they the new ones), the live nodes that are
        not active yet in ``prepare`` (their hosts are prepared first), and the best live server as API host."""
        snapshot = _snapshot(cluster, snapshot)
        prepare = [node for node in snapshot.live_nodes if node.status != NodeStatus.ACTIVE]
        return _build(
            snapshot,
            stage_groups=_stage_groups(snapshot.live_nodes),
            api_host=pick_api_host(snapshot.live_servers),
            prepare=prepare,
        )

    @staticmethod
    def render_all_stages(cluster: Cluster, *, snapshot: ClusterSnapshot | None = None) -> dict[str, RenderedInventory]:
        """The inventory of every install stage, from one read of the cluster."""
        snapshot = _snapshot(cluster, snapshot)
        return {stage: InventoryRenderer.render_for_stage(cluster, stage, snapshot=snapshot) for stage in STAGES}


def _snapshot(cluster: Cluster, snapshot: ClusterSnapshot | None) -> ClusterSnapshot:
    if snapshot is None:
        return ClusterSnapshot.load(cluster)
    if snapshot.cluster.pk != cluster.pk:
        raise ValueError("The snapshot belongs to another cluster.")
    return snapshot
