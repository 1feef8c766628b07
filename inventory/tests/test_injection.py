"""Operator text never changes the structure of what is written nor gets templated by Ansible.

Each hostile value, in each place an operator can type it, either fails validation with an error naming the field,
or is rendered as an inert string: exactly itself in config.yaml, and untrusted (never templated) in Ansible.
"""

from __future__ import annotations

import json

import pytest
import yaml
from django.core.exceptions import ValidationError

from clusters.choices import NodeStatus
from clusters.models import Cluster, Node
from clusters.services.clusters import cluster_create
from inventory.configs import render_node_config
from inventory.renderers import ClusterSnapshot, InventoryRenderer
from inventory.serialization import load_ansible_data

from .ansible_run import render_configs_with_ansible

pytestmark = pytest.mark.django_db

PAYLOADS = {
    "colon": "a: b",
    "comment": "a #b",
    "newline": "a\nb: c",
    "expression": "{{ lookup('pipe', 'id') }}",
    "statement": "{% for x in [1] %}x{% endfor %}",
    "python-tag": "!!python/object/apply:os.system ['id']",
    "ini": "key=value other=1",
}

BASE_NODES = [
    {"hostname": "m1", "internal_ip": "10.0.0.1", "role": "initial_master"},
    {"hostname": "w1", "internal_ip": "10.0.1.1", "role": "worker"},
]


def create(*, nodes=None, **fields) -> Cluster:
    fields.setdefault("name", "c1")
    fields.setdefault("rke2_version", "v1.31.4+rke2r1")
    return Cluster.objects.get(pk=cluster_create(nodes=nodes or BASE_NODES, **fields).pk)


def with_node_field(field: str, value) -> list[dict]:
    return [{**BASE_NODES[0], field: value}, BASE_NODES[1]]


def assert_refused(error: pytest.ExceptionInfo, key: str) -> None:
    assert key in error.value.message_dict, error.value.message_dict
    assert all(message.strip() for message in error.value.message_dict[key])


def assert_inert(cluster: Cluster, config_key: str, payload: str, hostnames=("m1", "w1")) -> None:
    """The payload reaches each node's config.yaml as exactly itself, and Ansible loads it untrusted."""
    from ansible._internal._datatag._tags import TrustedAsTemplate
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    snapshot = ClusterSnapshot.load(cluster)
    for node in snapshot.nodes:
        if node.hostname in hostnames:
            written = yaml.safe_load(render_node_config(node, reveal_secrets=True, snapshot=snapshot))
            assert written[config_key] == payload
    loaded = load_ansible_data(InventoryRenderer.render_for_stage(cluster, "all", snapshot=snapshot).inventory_text())
    templar = Templar(loader=DataLoader())
    for hostname in hostnames:
        value = loaded["all"]["hosts"][hostname]["rke2_extra_config"][config_key]
        assert value == payload and not TrustedAsTemplate.is_tagged_on(value)
        assert templar.template(value) == payload


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_hostname(payload):
    with pytest.raises(ValidationError) as error:
        create(nodes=with_node_field("hostname", payload))
    assert_refused(error, "nodes[0].hostname")


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_label(payload):
    with pytest.raises(ValidationError) as error:
        create(nodes=with_node_field("labels", ["zone=a", payload]))
    assert_refused(error, "nodes[0].labels")


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_taint(payload):
    with pytest.raises(ValidationError) as error:
        create(nodes=with_node_field("taints", [payload]))
    assert_refused(error, "nodes[0].taints")


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_node_vars_value(payload):
    if "\n" in payload:
        with pytest.raises(ValidationError) as error:
            create(nodes=with_node_field("node_vars", {"kubelet-arg": payload}))
        assert_refused(error, "nodes[0].node_vars")
        return
    cluster = create(nodes=with_node_field("node_vars", {"kubelet-arg": payload}))
    assert_inert(cluster, "kubelet-arg", payload, hostnames=("m1",))


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_node_vars_key(payload):
    with pytest.raises(ValidationError) as error:
        create(nodes=with_node_field("node_vars", {payload: "x"}))
    assert_refused(error, "nodes[0].node_vars")


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_cluster_vars_value(payload):
    if "\n" in payload:
        with pytest.raises(ValidationError) as error:
            create(cluster_vars={"kubelet-arg": [payload]})
        assert_refused(error, "cluster_vars")
        return
    cluster = create(cluster_vars={"kubelet-arg": payload})
    assert_inert(cluster, "kubelet-arg", payload)


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_cluster_vars_key(payload):
    with pytest.raises(ValidationError) as error:
        create(cluster_vars={payload: "x"})
    assert_refused(error, "cluster_vars")


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
@pytest.mark.parametrize("field", ["name", "registration_address", "tls_san", "cluster_domain"])
def test_cluster_fields(field, payload):
    with pytest.raises(ValidationError) as error:
        create(**{field: [payload] if field == "tls_san" else payload})
    assert_refused(error, field)


@pytest.mark.parametrize("field", ["hostname", "node_vars"])
def test_unvalidated_names_are_refused_when_writing_the_inventory(field):
    # Rows written around validation (bulk updates, older data) cannot smuggle template syntax into a key.
    cluster = create()
    value = {"{{ lookup('pipe', 'id') }}": "x"} if field == "node_vars" else "{{ lookup('pipe', 'id') }}"
    Node.objects.filter(cluster=cluster, hostname="w1").update(**{field: value})
    with pytest.raises(ValueError, match="not a valid name"):
        InventoryRenderer.render_for_stage(cluster, "all").inventory_text()


def attack(marker_dir, name: str) -> str:
    """Template text that would create ``marker_dir/name`` on the controller if Ansible rendered it."""
    return "{{ lookup('pipe', 'touch " + f"{marker_dir}/{name}" + "') }}"


def hostile_cluster(marker_dir) -> Cluster:
    """A cluster whose operator text tries to run a controller command through Ansible's templating."""
    statement = "{% set x = lookup('pipe', 'touch " + f"{marker_dir}/statement" + "') %}"
    cluster = create(
        cluster_vars={"kubelet-arg": [attack(marker_dir, "cluster-vars")], "resolv-conf": statement},
        nodes=[
            {**BASE_NODES[0], "node_vars": {"kube-proxy-arg": attack(marker_dir, "node-vars")}},
            BASE_NODES[1],
        ],
    )
    # Labels and taints cannot hold such text through validation; write it around validation to prove the
    # inventory neutralizes it anyway.
    Node.objects.filter(cluster=cluster, hostname="w1").update(
        labels=[attack(marker_dir, "label")],
        taints=[attack(marker_dir, "taint") + ":NoSchedule"],
        status=NodeStatus.ACTIVE,
    )
    Node.objects.filter(cluster=cluster, hostname="m1").update(status=NodeStatus.ACTIVE)
    return cluster


@pytest.mark.slow
def test_lookups_in_operator_text_never_run_in_ansible(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    cluster = hostile_cluster(markers)
    rendered = InventoryRenderer.render_for_stage(cluster, "all")
    written = render_configs_with_ansible(rendered, tmp_path / "run")
    assert list(markers.iterdir()) == []
    master, worker = yaml.safe_load(written["m1"]), yaml.safe_load(written["w1"])
    assert master["kubelet-arg"] == [attack(markers, "cluster-vars")]
    assert master["kube-proxy-arg"] == attack(markers, "node-vars")
    assert master["resolv-conf"].startswith("{% set x = lookup(")
    assert worker["node-label"] == [attack(markers, "label")]
    assert worker["node-taint"] == [attack(markers, "taint") + ":NoSchedule"]
    snapshot = ClusterSnapshot.load(cluster)
    for node in snapshot.nodes:
        assert render_node_config(node, reveal_secrets=True, snapshot=snapshot).encode() == written[node.hostname]


@pytest.mark.slow
def test_the_same_inventory_as_plain_json_would_run_them(tmp_path):
    # The control for the test above: without the untrusted marking Ansible does template these values.
    markers = tmp_path / "markers"
    markers.mkdir()
    rendered = InventoryRenderer.render_for_stage(hostile_cluster(markers), "all")
    render_configs_with_ansible(rendered, tmp_path / "run", inventory_text=json.dumps(rendered.inventory))
    assert {path.name for path in markers.iterdir()} == {"cluster-vars", "statement", "node-vars", "label", "taint"}
