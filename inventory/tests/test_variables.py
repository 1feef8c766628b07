from __future__ import annotations

import pytest

from clusters.choices import NodeStatus
from clusters.fields import MASK, Secret, reveal
from clusters.models import Node
from inventory.variables import (
    DEFAULT_SERVER_CONFIG,
    ClusterSnapshot,
    VariableRenderer,
    firewall_ports,
    is_server_only_key,
    server_url,
    split_secrets,
)

pytestmark = pytest.mark.django_db


def node(cluster, hostname: str) -> Node:
    return cluster.cluster_nodes.get(hostname=hostname)


def test_cluster_vars_have_the_contract_names(make_cluster):
    cluster = make_cluster()
    variables = VariableRenderer.render_cluster_vars(cluster)
    assert set(variables) == {
        "rke2_cluster_name",
        "rke2_version",
        "rke2_registration_address",
        "rke2_server_url",
        "rke2_api_host",
        "rke2_cni",
        "rke2_cluster_cidr",
        "rke2_service_cidr",
        "rke2_cluster_dns",
        "rke2_cluster_domain",
        "rke2_tls_san",
        "rke2_registries",
        "rke2_reachability_ports",
        "rke2_prepare_firewall",
        "rke2_prepare_network_manager",
        "rke2_prepare_kernel",
        "rke2_token",
    }
    assert variables["rke2_cluster_name"] == cluster.name
    assert variables["rke2_version"] == "v1.31.4+rke2r1"
    assert variables["rke2_cni"] == "canal"
    assert (variables["rke2_cluster_cidr"], variables["rke2_service_cidr"]) == ("10.42.0.0/16", "10.43.0.0/16")
    assert (variables["rke2_cluster_dns"], variables["rke2_cluster_domain"]) == ("10.43.0.10", "cluster.local")


def test_token_is_marked_secret_and_split_off(make_cluster):
    cluster = make_cluster()
    variables = VariableRenderer.render_cluster_vars(cluster)
    token = variables["rke2_token"]
    assert isinstance(token, Secret)
    assert reveal(token) == reveal(cluster.token) and len(reveal(token)) == 48
    assert str(token) == MASK and reveal(token) not in repr(variables)
    public, secret = split_secrets(variables)
    assert "rke2_token" not in public and set(secret) == {"rke2_token", "rke2_registries"}
    assert VariableRenderer.render_secret_vars(cluster) == {"rke2_token": reveal(cluster.token), "rke2_registries": {}}


def test_registration_address_defaults_to_the_initial_masters_internal_ip(make_cluster):
    cluster = make_cluster(
        nodes=[
            {
                "hostname": "m1",
                "internal_ip": "10.0.0.1",
                "external_ip": "203.0.113.1",
                "use_external_ip": True,
                "role": "initial_master",
            },
            {"hostname": "w1", "internal_ip": "10.0.1.1", "role": "worker"},
        ]
    )
    variables = VariableRenderer.render_cluster_vars(cluster)
    assert variables["rke2_registration_address"] == "10.0.0.1"
    assert variables["rke2_server_url"] == "https://10.0.0.1:9345"


def test_registration_address_falls_back_to_another_server_when_the_initial_master_leaves(make_cluster):
    cluster = make_cluster()
    cluster.cluster_nodes.filter(hostname="m1").update(status=NodeStatus.DRAINING)
    cluster.cluster_nodes.filter(hostname="m3").update(status=NodeStatus.ACTIVE)
    variables = VariableRenderer.render_cluster_vars(cluster)
    assert variables["rke2_registration_address"] == "10.0.0.3"
    assert "m1" not in variables["rke2_tls_san"] and "10.0.0.1" not in variables["rke2_tls_san"]


def test_explicit_registration_address_and_ipv6_brackets(make_cluster):
    cluster = make_cluster(registration_address="rke2.example.com")
    assert VariableRenderer.render_cluster_vars(cluster)["rke2_server_url"] == "https://rke2.example.com:9345"
    cluster = make_cluster(
        nodes=[{"hostname": "m1", "internal_ip": "fd00::1", "role": "initial_master"}],
        cluster_cidr="fd01::/48",
        service_cidr="fd02::/112",
        cluster_dns="fd02::a",
    )
    variables = VariableRenderer.render_cluster_vars(cluster)
    assert variables["rke2_registration_address"] == "fd00::1"
    assert variables["rke2_server_url"] == "https://[fd00::1]:9345"
    assert server_url("192.0.2.7") == "https://192.0.2.7:9345"
    assert server_url("") == ""


def test_tls_san_lists_address_masters_and_extras_once_in_a_stable_order(make_cluster):
    cluster = make_cluster(
        registration_address="10.0.0.100",
        tls_san=["api.example.com", "m2", "10.0.0.100", "198.51.100.9"],
        nodes=[
            {"hostname": "m1", "internal_ip": "10.0.0.1", "external_ip": "203.0.113.1", "role": "initial_master"},
            {"hostname": "m2", "internal_ip": "10.0.0.2", "role": "master"},
            {"hostname": "w1", "internal_ip": "10.0.1.1", "external_ip": "203.0.113.9", "role": "worker"},
        ],
    )
    expected = ["10.0.0.100", "m1", "10.0.0.1", "203.0.113.1", "m2", "10.0.0.2", "api.example.com", "198.51.100.9"]
    assert VariableRenderer.render_cluster_vars(cluster)["rke2_tls_san"] == expected
    assert VariableRenderer.render_cluster_vars(cluster)["rke2_tls_san"] == expected


def test_node_vars(make_cluster):
    cluster = make_cluster(
        nodes=[
            {
                "hostname": "m1",
                "internal_ip": "10.0.0.1",
                "external_ip": "203.0.113.1",
                "use_external_ip": True,
                "role": "initial_master",
                "labels": ["zone=a"],
                "taints": ["dedicated=cp:NoSchedule"],
            },
            {"hostname": "w1", "internal_ip": "10.0.1.1", "role": "worker"},
        ]
    )
    master = VariableRenderer.render_node_vars(node(cluster, "m1"))
    assert master == {
        "ansible_host": "203.0.113.1",
        "ansible_port": 2222,
        "ansible_user": "deploy",
        "ansible_become": True,
        "rke2_role": "initial_master",
        "rke2_type": "server",
        "rke2_node_name": "m1",
        "rke2_node_ip": "10.0.0.1",
        "rke2_node_external_ip": "203.0.113.1",
        "rke2_node_labels": ["zone=a"],
        "rke2_node_taints": ["dedicated=cp:NoSchedule"],
        "rke2_extra_config": dict(DEFAULT_SERVER_CONFIG),
        "rke2_firewall_ports": firewall_ports("server", "canal"),
    }
    worker = VariableRenderer.render_node_vars(node(cluster, "w1"))
    assert worker["ansible_host"] == "10.0.1.1"
    assert (worker["rke2_role"], worker["rke2_type"]) == ("worker", "agent")
    assert "rke2_node_external_ip" not in worker
    assert worker["rke2_extra_config"] == {}


def test_node_vars_without_credential_have_no_connection_user(make_cluster):
    cluster = make_cluster(ssh_credential=None)
    variables = VariableRenderer.render_node_vars(node(cluster, "w1"))
    assert "ansible_user" not in variables and "ansible_port" not in variables
    assert variables["ansible_host"] == "10.0.1.1"


def test_extra_config_precedence_defaults_then_cluster_then_node(make_cluster):
    cluster = make_cluster(
        cluster_vars={"write-kubeconfig-mode": "0400", "kubelet-arg": ["max-pods=200"], "debug": True},
        nodes=[
            {
                "hostname": "m1",
                "internal_ip": "10.0.0.1",
                "role": "initial_master",
                "node_vars": {"kubelet-arg": ["max-pods=50"]},
            },
            {
                "hostname": "w1",
                "internal_ip": "10.0.1.1",
                "role": "worker",
                "node_vars": {"debug": False, "snapshotter": "native"},
            },
        ],
    )
    assert VariableRenderer.render_node_vars(node(cluster, "m1"))["rke2_extra_config"] == {
        "write-kubeconfig-mode": "0400",
        "kubelet-arg": ["max-pods=50"],
        "debug": True,
    }
    # Agents get no server-only keys (write-kubeconfig-mode) even from the cluster's extra config.
    assert VariableRenderer.render_node_vars(node(cluster, "w1"))["rke2_extra_config"] == {
        "kubelet-arg": ["max-pods=200"],
        "debug": False,
        "snapshotter": "native",
    }


def test_managed_keys_never_come_from_extra_config(make_cluster):
    # Validation refuses these keys; rows written around it (older data, bulk updates) must not leak them either.
    cluster = make_cluster()
    cluster.__class__.objects.filter(pk=cluster.pk).update(
        cluster_vars={
            "tls-san": ["x.example.com"],
            "cni": "cilium",
            "node-label+": ["a=b"],
            "server": "https://evil:9345",
            "selinux": True,
        }
    )
    cluster.refresh_from_db()
    extra = VariableRenderer.render_node_vars(node(cluster, "m2"))["rke2_extra_config"]
    assert extra == {"write-kubeconfig-mode": "0600", "selinux": True}


@pytest.mark.parametrize(
    ("key", "server_only"),
    [
        ("cni", True),
        ("cluster-cidr", True),
        ("tls-san+", True),
        ("disable", True),
        ("etcd-snapshot-retention", True),
        ("kube-apiserver-arg", True),
        ("write-kubeconfig-mode", True),
        ("system-default-registry", True),
        ("kubelet-arg", False),
        ("kube-proxy-arg", False),
        ("node-ip", False),
        ("selinux", False),
        ("profile", False),
        ("snapshotter", False),
        ("data-dir", False),
        ("private-registry", False),
    ],
)
def test_server_only_keys(key, server_only):
    assert is_server_only_key(key) is server_only


def test_snapshot_reads_twice_and_renders_without_queries(make_cluster, django_assert_num_queries):
    cluster = make_cluster()
    with django_assert_num_queries(3):  # nodes, credential, registries
        snapshot = ClusterSnapshot.load(cluster)
    with django_assert_num_queries(0):
        VariableRenderer.render_cluster_vars(cluster, snapshot=snapshot)
        for item in snapshot.nodes:
            VariableRenderer.render_node_vars(item, snapshot=snapshot)
            assert item.cluster is cluster
