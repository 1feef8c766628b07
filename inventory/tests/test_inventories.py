from __future__ import annotations

import json

import pytest

from clusters.choices import NodeStatus
from clusters.exceptions import InvalidState
from clusters.fields import Secret, reveal
from clusters.models import Cluster, Node
from clusters.services.clusters import nodes_add
from inventory.renderers import (
    GROUPS,
    STAGES,
    ClusterSnapshot,
    InventoryRenderer,
    RenderedInventory,
    serialize_inventory,
)

pytestmark = pytest.mark.django_db


def groups(result: RenderedInventory) -> dict[str, list[str]]:
    return {name: result.hosts(name) for name in GROUPS}


def set_status(cluster: Cluster, **statuses: str) -> None:
    for hostname, status in statuses.items():
        Node.objects.filter(cluster=cluster, hostname=hostname).update(status=status)


def all_active(cluster: Cluster) -> None:
    Node.objects.filter(cluster=cluster).update(status=NodeStatus.ACTIVE)


def test_initial_master_stage(make_cluster):
    cluster = make_cluster()
    result = InventoryRenderer.render_for_stage(cluster, "initial_master")
    assert groups(result) == {
        "rke2_servers": ["m1", "m2", "m3"],
        "rke2_agents": ["w1", "w2"],
        "initial_master": ["m1"],
        "joining_masters": [],
        "workers": [],
        "prepare": ["m2", "m3", "w1", "w2"],
        "api_host": [],
        "remove": [],
    }
    assert result.api_host == ""
    assert result.hosts("all") == ["m1", "m2", "m3", "w1", "w2"]


def test_initial_master_stage_prepares_only_the_nodes_not_active_yet(make_cluster):
    cluster = make_cluster()
    set_status(cluster, m2=NodeStatus.ACTIVE, w1=NodeStatus.ACTIVE, w2=NodeStatus.FAILED)
    result = InventoryRenderer.render_for_stage(cluster, "initial_master")
    assert result.hosts("prepare") == ["m3", "w2"]
    assert result.hosts("rke2_agents") == ["w2"]
    set_status(cluster, w2=NodeStatus.DRAINING)
    assert InventoryRenderer.render_for_stage(cluster, "initial_master").hosts("prepare") == ["m3"]


def test_only_the_initial_master_stage_of_the_whole_cluster_prepares_nodes(make_cluster):
    cluster = make_cluster()
    m1 = Node.objects.get(cluster=cluster, hostname="m1")
    assert InventoryRenderer.render_for_stage(cluster, "initial_master", [m1]).hosts("prepare") == []
    for stage in ("joining_masters", "workers", "all"):
        assert InventoryRenderer.render_for_stage(cluster, stage).hosts("prepare") == []


def test_initial_master_stage_names_an_already_running_server(make_cluster):
    cluster = make_cluster()
    set_status(cluster, m1=NodeStatus.FAILED, m3=NodeStatus.ACTIVE)
    result = InventoryRenderer.render_for_stage(cluster, "initial_master")
    assert result.hosts("api_host") == ["m3"] and result.api_host == "m3"
    assert result.hosts("initial_master") == ["m1"]
    set_status(cluster, m1=NodeStatus.ACTIVE)
    assert InventoryRenderer.render_for_stage(cluster, "initial_master").api_host == "m1"


def test_joining_masters_stage(make_cluster):
    cluster = make_cluster()
    set_status(cluster, m1=NodeStatus.ACTIVE)
    result = InventoryRenderer.render_for_stage(cluster, "joining_masters")
    assert groups(result) == {
        "rke2_servers": ["m1", "m2", "m3"],
        "rke2_agents": [],
        "initial_master": [],
        "joining_masters": ["m2", "m3"],
        "workers": [],
        "prepare": [],
        "api_host": ["m1"],
        "remove": [],
    }
    assert result.inventory["all"]["vars"]["rke2_api_host"] == "m1"


def test_joining_masters_stage_uses_the_initial_master_while_it_is_still_marked_installing(make_cluster):
    cluster = make_cluster()
    set_status(cluster, m1=NodeStatus.INSTALLING)
    assert InventoryRenderer.render_for_stage(cluster, "joining_masters").api_host == "m1"


def test_workers_stage(make_cluster):
    cluster = make_cluster()
    all_active(cluster)
    set_status(cluster, w1=NodeStatus.PENDING, w2=NodeStatus.FAILED)
    result = InventoryRenderer.render_for_stage(cluster, "workers")
    assert groups(result) == {
        "rke2_servers": ["m1", "m2", "m3"],
        "rke2_agents": ["w1", "w2"],
        "initial_master": [],
        "joining_masters": [],
        "workers": ["w1", "w2"],
        "prepare": [],
        "api_host": ["m1"],
        "remove": [],
    }


def test_api_host_prefers_an_active_server_over_the_initial_master(make_cluster):
    cluster = make_cluster()
    all_active(cluster)
    set_status(cluster, m1=NodeStatus.FAILED)
    assert InventoryRenderer.render_for_stage(cluster, "workers").api_host == "m2"
    set_status(cluster, m1=NodeStatus.DRAINING, m2=NodeStatus.INSTALLING)
    assert InventoryRenderer.render_for_stage(cluster, "workers").api_host == "m3"


def test_all_stage_leaves_out_draining_and_removed_nodes(make_cluster):
    cluster = make_cluster(
        nodes=[
            {"hostname": "m1", "internal_ip": "10.0.0.1", "role": "initial_master"},
            {"hostname": "m2", "internal_ip": "10.0.0.2", "role": "master"},
            {"hostname": "m3", "internal_ip": "10.0.0.3", "role": "master"},
            {"hostname": "w1", "internal_ip": "10.0.1.1", "role": "worker"},
            {"hostname": "w2", "internal_ip": "10.0.1.2", "role": "worker"},
            {"hostname": "w3", "internal_ip": "10.0.1.3", "role": "worker"},
        ]
    )
    all_active(cluster)
    set_status(cluster, m3=NodeStatus.DRAINING, w2=NodeStatus.REMOVED, w3=NodeStatus.DRAINING)
    result = InventoryRenderer.render_for_stage(cluster, "all")
    assert groups(result) == {
        "rke2_servers": ["m1", "m2"],
        "rke2_agents": ["w1"],
        "initial_master": ["m1"],
        "joining_masters": ["m2"],
        "workers": ["w1"],
        "prepare": [],
        "api_host": ["m1"],
        "remove": [],
    }
    assert result.hosts("all") == ["m1", "m2", "w1"]
    assert "10.0.0.3" not in result.inventory["all"]["vars"]["rke2_tls_san"]


def test_nodes_narrow_the_stage_group(make_cluster):
    cluster = make_cluster()
    all_active(cluster)
    w2 = Node.objects.get(cluster=cluster, hostname="w2")
    result = InventoryRenderer.render_for_stage(cluster, "workers", nodes=[w2])
    assert result.hosts("workers") == ["w2"] and result.hosts("rke2_agents") == ["w2"]
    by_pk = InventoryRenderer.render_for_stage(
        cluster, "all", nodes=[w2.pk, Node.objects.get(cluster=cluster, hostname="m3").pk]
    )
    assert by_pk.hosts("workers") == ["w2"] and by_pk.hosts("joining_masters") == ["m3"]
    assert by_pk.hosts("initial_master") == []


def test_nodes_outside_the_stage_are_refused(make_cluster):
    cluster = make_cluster()
    master = Node.objects.get(cluster=cluster, hostname="m2")
    with pytest.raises(ValueError, match="m2"):
        InventoryRenderer.render_for_stage(cluster, "workers", nodes=[master])
    set_status(cluster, w1=NodeStatus.DRAINING)
    with pytest.raises(ValueError, match="w1"):
        InventoryRenderer.render_for_stage(cluster, "workers", nodes=[Node.objects.get(cluster=cluster, hostname="w1")])
    other = make_cluster()
    with pytest.raises(ValueError):
        InventoryRenderer.render_for_stage(cluster, "workers", nodes=[Node.objects.get(cluster=other, hostname="w1")])


def test_unknown_stage_is_refused(make_cluster):
    with pytest.raises(ValueError, match="Unknown stage"):
        InventoryRenderer.render_for_stage(make_cluster(), "complete")


def test_scale_add_puts_only_new_nodes_in_stage_groups(make_cluster):
    cluster = make_cluster()
    all_active(cluster)
    added = nodes_add(
        cluster=cluster,
        nodes=[
            {"hostname": "m4", "internal_ip": "10.0.0.4", "role": "server"},
            {"hostname": "w3", "internal_ip": "10.0.1.3", "role": "worker"},
        ],
    )
    result = InventoryRenderer.render_for_scale_add(cluster, added)
    assert groups(result) == {
        "rke2_servers": ["m1", "m2", "m3", "m4"],
        "rke2_agents": ["w3"],
        "initial_master": [],
        "joining_masters": ["m4"],
        "workers": ["w3"],
        "prepare": [],
        "api_host": ["m1"],
        "remove": [],
    }


def test_scale_add_api_host_is_not_hard_wired_to_the_initial_master(make_cluster):
    cluster = make_cluster()
    all_active(cluster)
    set_status(cluster, m1=NodeStatus.DRAINING)
    added = nodes_add(cluster=cluster, nodes=[{"hostname": "w3", "internal_ip": "10.0.1.3"}])
    assert InventoryRenderer.render_for_scale_add(cluster, added).api_host == "m2"
    set_status(cluster, m1=NodeStatus.FAILED, m2=NodeStatus.FAILED)
    assert InventoryRenderer.render_for_scale_add(cluster, added).api_host == "m3"


def test_scale_add_needs_an_active_existing_server(make_cluster):
    cluster = make_cluster()
    added = nodes_add(cluster=cluster, nodes=[{"hostname": "w3", "internal_ip": "10.0.1.3"}])
    with pytest.raises(InvalidState, match="no active server"):
        InventoryRenderer.render_for_scale_add(cluster, added)
    with pytest.raises(ValueError, match="initial master"):
        InventoryRenderer.render_for_scale_add(cluster, [Node.objects.get(cluster=cluster, hostname="m1")])


def test_reachability_has_every_live_node_and_prepares_those_not_active(make_cluster):
    cluster = make_cluster()
    result = InventoryRenderer.render_for_reachability(cluster)
    assert groups(result) == {
        "rke2_servers": ["m1", "m2", "m3"],
        "rke2_agents": ["w1", "w2"],
        "initial_master": ["m1"],
        "joining_masters": ["m2", "m3"],
        "workers": ["w1", "w2"],
        "prepare": ["m1", "m2", "m3", "w1", "w2"],
        "api_host": ["m1"],
        "remove": [],
    }
    # A scale-out: the existing nodes are checked too (the new ones must reach them), only the new ones prepared.
    all_active(cluster)
    added = nodes_add(cluster=cluster, nodes=[{"hostname": "w3", "internal_ip": "10.0.1.3", "role": "worker"}])
    set_status(cluster, w1=NodeStatus.DRAINING)
    result = InventoryRenderer.render_for_reachability(cluster)
    assert result.hosts("workers") == ["w2", "w3"] and result.hosts("prepare") == [added[0].hostname]
    assert result.hosts("all") == ["m1", "m2", "m3", "w2", "w3"] and result.api_host == "m1"
    assert "rke2_token" not in json.dumps(result.inventory)


def test_scale_remove(make_cluster):
    cluster = make_cluster()
    all_active(cluster)
    set_status(cluster, m1=NodeStatus.DRAINING, w2=NodeStatus.DRAINING)
    targets = list(Node.objects.filter(cluster=cluster, status=NodeStatus.DRAINING))
    result = InventoryRenderer.render_for_scale_remove(cluster, targets)
    assert groups(result) == {
        "rke2_servers": ["m1", "m2", "m3"],
        "rke2_agents": ["w2"],
        "initial_master": [],
        "joining_masters": [],
        "workers": [],
        "prepare": [],
        "api_host": ["m2"],
        "remove": ["m1", "w2"],
    }
    assert result.api_host == "m2"


def test_scale_remove_needs_another_active_server(make_cluster):
    cluster = make_cluster()
    set_status(cluster, m1=NodeStatus.DRAINING, m2=NodeStatus.FAILED, m3=NodeStatus.PENDING)
    with pytest.raises(InvalidState):
        InventoryRenderer.render_for_scale_remove(cluster, [Node.objects.get(cluster=cluster, hostname="m1")])
    set_status(cluster, w1=NodeStatus.REMOVED)
    with pytest.raises(ValueError, match="w1"):
        InventoryRenderer.render_for_scale_remove(cluster, [Node.objects.get(cluster=cluster, hostname="w1")])


def test_operation_inventory_has_every_live_node(make_cluster):
    cluster = make_cluster()
    all_active(cluster)
    set_status(cluster, w2=NodeStatus.DRAINING)
    result = InventoryRenderer.render_for_operation(cluster)
    assert result.hosts("all") == ["m1", "m2", "m3", "w1"]
    assert result.hosts("workers") == ["w1"] and result.api_host == "m1"
    assert result.inventory == InventoryRenderer.render_for_stage(cluster, "all").inventory


def test_secrets_never_reach_the_inventory(make_cluster):
    cluster = make_cluster()
    result = InventoryRenderer.render_for_stage(cluster, "all")
    token = reveal(cluster.token)
    inventory, secret_vars = result
    assert set(secret_vars) == {"rke2_token", "rke2_registries"} and isinstance(secret_vars["rke2_token"], Secret)
    assert (
        token not in json.dumps(inventory)
        and token not in result.inventory_text()
        and token not in result.preview_text()
    )
    assert json.loads(result.extravars_text({"rke2_start_timeout": 300})) == {
        "rke2_start_timeout": 300,
        "rke2_token": {"__ansible_unsafe": token},
        "rke2_registries": {},
    }
    inventory["all"]["vars"]["leaked"] = secret_vars["rke2_token"]
    with pytest.raises(ValueError, match="secret"):
        serialize_inventory(inventory)


def test_inventory_is_read_by_ansible_as_rendered(make_cluster, tmp_path):
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    cluster = make_cluster(
        nodes=[
            {
                "hostname": "m1",
                "internal_ip": "10.0.0.1",
                "external_ip": "203.0.113.1",
                "role": "initial_master",
                "labels": ["zone=a"],
                "node_vars": {"kubelet-arg": ["max-pods=50"], "debug": True},
            },
            {"hostname": "w1", "internal_ip": "10.0.1.1", "role": "worker", "taints": ["gpu=yes:NoSchedule"]},
        ],
        cluster_vars={"write-kubeconfig-mode": "0400"},
    )
    all_active(cluster)
    result = InventoryRenderer.render_for_stage(cluster, "all")
    path = tmp_path / "hosts.json"
    path.write_text(result.inventory_text(), encoding="utf-8")
    loader = DataLoader()
    manager = InventoryManager(loader=loader, sources=[str(path)])
    for group in GROUPS:
        assert sorted(host.name for host in manager.groups[group].get_hosts()) == sorted(result.hosts(group))
    variables = VariableManager(loader=loader, inventory=manager).get_vars(host=manager.get_host("m1"))
    expected = {**result.inventory["all"]["vars"], **result.inventory["all"]["hosts"]["m1"]}
    assert {key: variables[key] for key in expected} == expected
    assert variables["ansible_port"] == 2222 and variables["ansible_become"] is True
    assert variables["rke2_extra_config"]["write-kubeconfig-mode"] == "0400"


def test_every_stage_of_a_thousand_nodes_takes_constant_queries(make_cluster, django_assert_num_queries):
    cluster = make_cluster(nodes=[{"hostname": "m1", "internal_ip": "10.0.0.1", "role": "initial_master"}])
    Node.objects.bulk_create(
        Node(
            cluster=cluster,
            hostname=f"n{index}",
            internal_ip=f"10.1.{index // 250}.{index % 250 + 1}",
            role="master" if index < 2 else "worker",
            labels=["tier=app"],
            node_vars={"kubelet-arg": ["max-pods=90"]},
        )
        for index in range(999)
    )
    all_active(cluster)
    for stage in STAGES:
        with django_assert_num_queries(3):  # nodes, credential, registries
            result = InventoryRenderer.render_for_stage(cluster, stage)
            result.inventory_text()
    assert len(result.hosts("all")) == 1000
    with django_assert_num_queries(3):  # nodes, credential, registries
        rendered = InventoryRenderer.render_all_stages(cluster)
    assert rendered["workers"].hosts("workers") == [f"n{index}" for index in range(2, 999)]
    with django_assert_num_queries(3):  # nodes, credential, registries
        snapshot = ClusterSnapshot.load(cluster)
        InventoryRenderer.render_for_operation(cluster, snapshot=snapshot)
        InventoryRenderer.render_for_scale_remove(cluster, snapshot.nodes[-1:], snapshot=snapshot)
        InventoryRenderer.render_for_scale_add(cluster, snapshot.nodes[-2:-1], snapshot=snapshot)
