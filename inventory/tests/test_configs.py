from __future__ import annotations

import jinja2
import pytest
import yaml

from clusters.choices import NodeStatus
from clusters.fields import MASK, reveal
from clusters.models import Cluster, Node
from inventory.configs import jinja_environment, render_node_config, template_context, templates_dir
from inventory.renderers import ClusterSnapshot, InventoryRenderer

from .ansible_run import render_configs_with_ansible

pytestmark = pytest.mark.django_db

SERVER_ONLY = {
    "cni",
    "cluster-cidr",
    "service-cidr",
    "cluster-dns",
    "cluster-domain",
    "tls-san",
    "write-kubeconfig-mode",
    "disable",
}


def config(cluster: Cluster, hostname: str, *, reveal_secrets: bool = True) -> dict:
    return yaml.safe_load(
        render_node_config(Node.objects.get(cluster=cluster, hostname=hostname), reveal_secrets=reveal_secrets)
    )


@pytest.fixture
def rich_cluster(make_cluster) -> Cluster:
    return make_cluster(
        cluster_vars={"disable": ["rke2-ingress-nginx"], "kubelet-arg": ["max-pods=200"], "selinux": True},
        tls_san=["api.example.com"],
        nodes=[
            {
                "hostname": "m1",
                "internal_ip": "10.0.0.1",
                "external_ip": "203.0.113.1",
                "role": "initial_master",
                "labels": ["zone=a", "tier=cp"],
                "taints": ["CriticalAddonsOnly=true:NoExecute"],
            },
            {"hostname": "m2", "internal_ip": "10.0.0.2", "role": "master"},
            {
                "hostname": "m3",
                "internal_ip": "10.0.0.3",
                "role": "master",
                "node_vars": {"kubelet-arg": ["max-pods=50"]},
            },
            {
                "hostname": "w1",
                "internal_ip": "10.0.1.1",
                "external_ip": "203.0.113.9",
                "role": "worker",
                "labels": ["gpu=true"],
                "taints": ["gpu=true:NoSchedule"],
                "node_vars": {"snapshotter": "native"},
            },
            {"hostname": "w2", "internal_ip": "10.0.1.2", "role": "worker"},
        ],
    )


def test_initial_master_bootstraps_without_server(rich_cluster):
    token = reveal(rich_cluster.token)
    assert config(rich_cluster, "m1") == {
        "token": token,
        "node-name": "m1",
        "node-ip": "10.0.0.1",
        "node-external-ip": "203.0.113.1",
        "node-label": ["zone=a", "tier=cp"],
        "node-taint": ["CriticalAddonsOnly=true:NoExecute"],
        "tls-san": ["10.0.0.1", "m1", "203.0.113.1", "m2", "10.0.0.2", "m3", "10.0.0.3", "api.example.com"],
        "cni": "canal",
        "cluster-cidr": "10.42.0.0/16",
        "service-cidr": "10.43.0.0/16",
        "cluster-dns": "10.43.0.10",
        "cluster-domain": "cluster.local",
        "write-kubeconfig-mode": "0600",
        "disable": ["rke2-ingress-nginx"],
        "kubelet-arg": ["max-pods=200"],
        "selinux": True,
    }


def test_joining_master_registers_and_matches_the_critical_values(rich_cluster):
    initial, joining = config(rich_cluster, "m1"), config(rich_cluster, "m3")
    assert joining["server"] == "https://10.0.0.1:9345"
    assert joining["kubelet-arg"] == ["max-pods=50"]
    for key in ("token", "tls-san", "cni", "cluster-cidr", "service-cidr", "cluster-dns", "cluster-domain", "disable"):
        assert joining[key] == initial[key], key
    assert "node-label" not in joining and "node-taint" not in joining and "node-external-ip" not in joining


def test_worker_gets_only_agent_keys(rich_cluster):
    assert config(rich_cluster, "w1") == {
        "server": "https://10.0.0.1:9345",
        "token": reveal(rich_cluster.token),
        "node-name": "w1",
        "node-ip": "10.0.1.1",
        "node-external-ip": "203.0.113.9",
        "node-label": ["gpu=true"],
        "node-taint": ["gpu=true:NoSchedule"],
        "kubelet-arg": ["max-pods=200"],
        "selinux": True,
        "snapshotter": "native",
    }
    assert not SERVER_ONLY & set(config(rich_cluster, "w2"))


def test_token_is_masked_unless_revealed(rich_cluster):
    token = reveal(rich_cluster.token)
    for hostname in ("m1", "m2", "w1"):
        masked = render_node_config(Node.objects.get(cluster=rich_cluster, hostname=hostname))
        assert token not in masked
        assert yaml.safe_load(masked)["token"] == MASK


def test_ipv6_registration_address_is_bracketed_in_server(make_cluster):
    cluster = make_cluster(
        cluster_cidr="fd01::/48",
        service_cidr="fd02::/112",
        cluster_dns="fd02::a",
        nodes=[
            {"hostname": "m1", "internal_ip": "fd00::1", "role": "initial_master"},
            {"hostname": "w1", "internal_ip": "fd00::11", "role": "worker"},
        ],
    )
    assert config(cluster, "w1")["server"] == "https://[fd00::1]:9345"
    assert config(cluster, "m1")["tls-san"] == ["fd00::1", "m1"]


@pytest.mark.parametrize(
    "value", ["v1.30", "on", "no", "0640", "1.30", "yes", "off", "null", "~", "1e3", "0x1F", "", "2024-01-01"]
)
def test_yaml_lookalike_strings_stay_strings(make_cluster, value):
    cluster = make_cluster(
        cluster_vars={"service-node-port-range": value, "kubelet-arg": [value]},
        nodes=[
            {"hostname": "m1", "internal_ip": "10.0.0.1", "role": "initial_master", "node_vars": {"profile": value}},
            {"hostname": "w1", "internal_ip": "10.0.1.1", "role": "worker", "node_vars": {"profile": value}},
        ],
    )
    for hostname in ("m1", "w1"):
        written = config(cluster, hostname)
        assert written["kubelet-arg"] == [value] and written["profile"] == value
    assert config(cluster, "m1")["service-node-port-range"] == value


def test_template_environment_is_strict_and_does_not_escape(rich_cluster):
    environment = jinja_environment()
    assert environment.undefined is jinja2.StrictUndefined
    assert environment.keep_trailing_newline and not environment.autoescape
    snapshot = ClusterSnapshot.load(rich_cluster)
    template = environment.get_template("config_worker.yaml.j2")
    for missing in ("rke2_node_labels", "rke2_token", "rke2_server_url"):
        context = template_context(snapshot.nodes[-1], snapshot)
        del context[missing]
        with pytest.raises((jinja2.UndefinedError, yaml.YAMLError)):
            template.render(context)
    Cluster.objects.filter(pk=rich_cluster.pk).update(cluster_vars={"kubelet-arg": ["a&b<c>\"d'"]})
    rich_cluster.refresh_from_db()
    assert config(rich_cluster, "w2")["kubelet-arg"] == ["a&b<c>\"d'"]


def test_templates_serialize_one_mapping_once():
    for path in sorted(templates_dir().glob("config_*.yaml.j2")):
        body = jinja_environment().parse(path.read_text()).body
        # One `set` of the mapping, then a single output: the mapping through to_nice_yaml. No literal text.
        assert [type(node).__name__ for node in body] == ["Assign", "Output"], path.name
        items = [
            item
            for item in body[1].nodes
            if not (isinstance(item, jinja2.nodes.TemplateData) and not item.data.strip())
        ]
        assert len(items) == 1 and isinstance(items[0], jinja2.nodes.Filter) and items[0].name == "to_nice_yaml", (
            path.name
        )


@pytest.mark.slow
def test_preview_equals_what_ansible_writes_for_every_role(rich_cluster, tmp_path):
    Node.objects.filter(cluster=rich_cluster).update(status=NodeStatus.ACTIVE)
    rendered = InventoryRenderer.render_for_stage(rich_cluster, "all")
    written = render_configs_with_ansible(rendered, tmp_path)
    assert set(written) == {"m1", "m2", "m3", "w1", "w2"}
    snapshot = ClusterSnapshot.load(rich_cluster)
    for node in snapshot.nodes:
        assert render_node_config(node, reveal_secrets=True, snapshot=snapshot).encode() == written[node.hostname], (
            node.hostname
        )


@pytest.mark.slow
def test_preview_equals_what_ansible_writes_for_tricky_values(make_cluster, tmp_path):
    lookalikes = ["v1.30", "on", "no", "0640", "1.30", "null", "", "2024-01-01"]
    cluster = make_cluster(
        registration_address="fd00::100",
        cluster_cidr="10.42.0.0/16,fd01::/48",
        service_cidr="10.43.0.0/16,fd02::/112",
        tls_san=["ünï.example.com".encode("idna").decode(), "2001:db8::1"],
        cluster_vars={
            "write-kubeconfig-mode": "0400",
            "kubelet-arg": ["a: b", "a #b", "{{ lookup('env', 'HOME') }}", "{% if true %}x{% endif %}", "- item", "*x"],
            "etcd-snapshot-name": "!!python/object/apply:os.system ['id']",
            "node-name-suffix": "key=value other=1",
            "long-value": "word " * 40,
            "resolv-conf": "ünïcødé ✓ \"quoted\" 'single' \\backslash\\ \ttab",
        },
        nodes=[
            {
                "hostname": "m1",
                "internal_ip": "fd00::1",
                "role": "initial_master",
                "node_vars": {"profile": "on", "debug": True},
            },
            {
                "hostname": "m2",
                "internal_ip": "fd00::2",
                "external_ip": "2001:db8::2",
                "role": "master",
                "node_vars": {"kubelet-arg": lookalikes, "lb-server-port": 6444},
            },
            {
                "hostname": "w1",
                "internal_ip": "fd00::11",
                "role": "worker",
                "labels": ["v=1.30", "on=no"],
                "node_vars": {"kube-proxy-arg": lookalikes, "data-dir": "/var/lib/rancher/rke2 # not a comment"},
            },
        ],
    )
    rendered = InventoryRenderer.render_for_stage(cluster, "all")
    written = render_configs_with_ansible(rendered, tmp_path)
    snapshot = ClusterSnapshot.load(cluster)
    for node in snapshot.nodes:
        assert render_node_config(node, reveal_secrets=True, snapshot=snapshot).encode() == written[node.hostname], (
            node.hostname
        )
    worker = yaml.safe_load(written["w1"])
    assert worker["kube-proxy-arg"] == lookalikes and worker["node-label"] == ["v=1.30", "on=no"]
    assert worker["data-dir"] == "/var/lib/rancher/rke2 # not a comment"
    assert worker["server"] == "https://[fd00::100]:9345"
    master = yaml.safe_load(written["m2"])
    assert master["kubelet-arg"] == lookalikes and master["write-kubeconfig-mode"] == "0400"
    assert master["etcd-snapshot-name"] == "!!python/object/apply:os.system ['id']"
    assert yaml.safe_load(written["m1"])["kubelet-arg"][2] == "{{ lookup('env', 'HOME') }}"
    assert yaml.safe_load(written["m1"])["profile"] == "on"
