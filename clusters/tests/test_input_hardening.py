"""Input the portal refuses with a reason naming the field, through the API, the admin and the legacy import:
IPv6 zones in addresses, non-finite numbers and cluster-weakening keys in the extra RKE2 config; database refusals
reported as the constraint they name; legacy tokens too short to be masked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models.signals import pre_save
from django.urls import reverse
from rest_framework.test import APIClient

from clusters.choices import JobKind, JobStatus, NodeRole, NodeStatus
from clusters.engine.redaction import MASK, MIN_SECRET_LENGTH, Redactor
from clusters.fields import reveal
from clusters.integrity import integrity_error_messages, integrity_refusal
from clusters.models import Cluster, Job, Node, SSHCredential
from clusters.services.clusters import cluster_create, cluster_update
from clusters.services.legacy_import import legacy_clusters_import
from clusters.tests.factories import DEFAULT_VERSION, make_cluster, make_credential
from clusters.tests.test_admin import cluster_post_data
from clusters.validators import validate_rke2_config

pytestmark = pytest.mark.django_db

NODES = [
    {"hostname": "m1", "internal_ip": "10.0.0.1", "role": "initial_master"},
    {"hostname": "w1", "internal_ip": "10.0.0.2", "role": "worker"},
]

# Extra config that would make someone cluster-admin or weaken the cluster, and a word of the reason given.
WEAKENING = [
    ({"kube-apiserver-arg": ["anonymous-auth=true"]}, "anonymous"),
    ({"kube-apiserver-arg": ["--anonymous-auth"]}, "anonymous"),
    ({"kube-apiserver-arg": ["authorization-mode=Node,RBAC,AlwaysAllow"]}, "cluster-admin"),
    ({"kube-apiserver-arg+": ["authorization_mode=alwaysallow"]}, "cluster-admin"),
    ({"kube-apiserver-arg": ["insecure-port=8080"]}, "insecure port"),
    ({"kube-apiserver-arg": ["insecure-bind-address=0.0.0.0"]}, "insecure port"),
    ({"kube-apiserver-arg": ["disable-admission-plugins=NodeRestriction"]}, "NodeRestriction"),
    ({"kube-apiserver-arg": ["disable-admission-plugins=PodSecurity,CertificateSubjectRestriction"]}, "PodSecurity"),
    ({"kube-apiserver-arg": ["enable-admission-plugins=AlwaysAdmit"]}, "AlwaysAdmit"),
    ({"kube-apiserver-arg": ["token-auth-file=/etc/tokens.csv"]}, "system:masters"),
    ({"kube-apiserver-arg": ["oidc-issuer-url=https://idp.example.com"]}, "system:masters"),
    ({"kube-apiserver-arg": ["authorization-webhook-config-file=/tmp/x"]}, "RBAC"),
    ({"cluster-reset": True}, "recovery operation"),
    ({"cluster-reset": False}, "recovery operation"),
    ({"cluster-reset-restore-path": "/var/lib/rancher/rke2/server/db/snapshots/x"}, "operation of its own"),
    ({"write-kubeconfig-mode": "0644"}, "0600"),
    ({"write-kubeconfig-mode": 644}, "0600"),
    ({"write-kubeconfig-mode": "0660"}, "0600"),
    ({"write-kubeconfig-mode": "rw-r--r--"}, "octal"),
    ({"write-kubeconfig": "/tmp/admin.yaml"}, "cluster-admin"),
    ({"write-kubeconfig-group": "wheel"}, "cluster-admin"),
    ({"kubelet-arg": ["anonymous-auth=true"]}, "anonymous"),
    ({"kubelet-arg": "authorization-mode=AlwaysAllow"}, "cluster-admin"),
    ({"kubelet-arg": ["read-only-port=10255"]}, "without authentication"),
    ({"kube-controller-manager-arg": ["authorization-always-allow-paths=/metrics"]}, "without authorization"),
    ({"etcd-arg": ["client-cert-auth=false"]}, "certificate"),
    ({"etcd-arg": ["listen-client-http-urls=http://0.0.0.0:2382"]}, "in clear"),
    ({"secrets-encryption": False}, "in clear"),
]
SAFE = {
    "write-kubeconfig-mode": "0600",
    "kube-apiserver-arg": ["anonymous-auth=false", "authorization-mode=Node,RBAC", "audit-log-maxage=30"],
    "kubelet-arg+": ["read-only-port=0", "max-pods=200"],
    "etcd-arg": ["client-cert-auth=true", "quota-backend-bytes=8589934592"],
    "secrets-encryption": True,
    "disable": ["rke2-ingress-nginx"],
}


@pytest.fixture
def api() -> APIClient:
    user = get_user_model().objects.create_user(username="op", password="pw-op")
    user.groups.add(Group.objects.get(name="operators"))
    client = APIClient()
    client.force_login(user)
    return client


def post_cluster(api: APIClient, **fields: Any) -> Any:
    body = {"name": "alpha", "rke2_version": DEFAULT_VERSION, "nodes": NODES, **fields}
    return api.post("/api/clusters/", body, format="json")


def errors_of(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 400, response.content[:500]
    return response.json()["errors"]


# --- extra RKE2 config that weakens the cluster ------------------------------------------------------------------


@pytest.mark.parametrize(("config", "reason"), WEAKENING, ids=[json.dumps(config) for config, _ in WEAKENING])
def test_weakening_config_is_refused_with_a_reason(api: APIClient, config: dict[str, Any], reason: str) -> None:
    errors = errors_of(post_cluster(api, cluster_vars=config))
    assert list(errors) == ["cluster_vars"]
    assert reason in errors["cluster_vars"][0]
    assert repr(next(iter(config))) in errors["cluster_vars"][0]
    # The same keys are refused per node.
    nodes = [{**NODES[0], "node_vars": config}, NODES[1]]
    errors = errors_of(post_cluster(api, nodes=nodes))
    assert reason in errors["nodes[0].node_vars"][0]
    assert not Cluster.objects.exists()


def test_safe_config_is_accepted(api: APIClient) -> None:
    response = post_cluster(api, cluster_vars=SAFE)
    assert response.status_code == 201, response.content[:500]
    assert Cluster.objects.get(name="alpha").cluster_vars == SAFE


def test_stored_config_cannot_be_changed_into_a_weakening_one(api: APIClient) -> None:
    cluster = make_cluster("beta")
    response = api.patch(
        f"/api/clusters/{cluster.pk}/",
        {"cluster_vars": {"kube-apiserver-arg": ["anonymous-auth=true", "authorization-mode=AlwaysAllow"]}},
        format="json",
    )
    assert "anonymous" in errors_of(response)["cluster_vars"][0]
    cluster.refresh_from_db()
    assert cluster.cluster_vars == {}


def test_admin_refuses_weakening_config_next_to_the_field(admin_client: Any) -> None:
    data = cluster_post_data(
        nodes=[
            {
                "hostname": "m1",
                "internal_ip": "10.0.0.1",
                "role": "initial_master",
                "node_vars": json.dumps({"kubelet-arg": ["anonymous-auth=true"]}),
            }
        ],
        cluster_vars=json.dumps({"cluster-reset": True, "kube-apiserver-arg": ["authorization-mode=AlwaysAllow"]}),
    )
    response = admin_client.post(reverse("admin:clusters_cluster_add"), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "recovery operation" in errors["cluster_vars"][0]
    formset = next(f for f in response.context["inline_admin_formsets"] if f.formset.prefix == "cluster_nodes").formset
    assert "anonymous" in formset.forms[0].errors["node_vars"][0]
    assert not Cluster.objects.exists()


# --- IPv6 zones --------------------------------------------------------------------------------------------------

ZONED = ["fe80::1%eth0", "fe80::1%25eth0", "fe80::1%1", "fd00::10%", "10.0.0.1%eth0"]


@pytest.mark.parametrize("address", ZONED)
def test_api_refuses_an_ipv6_zone_in_the_registration_address(api: APIClient, address: str) -> None:
    errors = errors_of(post_cluster(api, registration_address=address))
    assert list(errors) == ["registration_address"]
    assert "zone" in errors["registration_address"][0]


@pytest.mark.parametrize("address", ZONED)
def test_api_refuses_an_ipv6_zone_in_tls_sans(api: APIClient, address: str) -> None:
    errors = errors_of(post_cluster(api, tls_san=["api.example.com", address]))
    assert list(errors) == ["tls_san"]
    assert "zone" in errors["tls_san"][0] and address in errors["tls_san"][0]


def test_plain_ipv6_addresses_are_still_accepted(api: APIClient) -> None:
    response = post_cluster(api, registration_address="fd00::10", tls_san=["fe80::1", "2001:db8::1"])
    assert response.status_code == 201, response.content[:500]


def test_admin_refuses_an_ipv6_zone(admin_client: Any) -> None:
    data = cluster_post_data(registration_address="fe80::1%eth0", tls_san="api.example.com, fe80::2%eth1")
    response = admin_client.post(reverse("admin:clusters_cluster_add"), data)
    errors = response.context["adminform"].form.errors
    assert "zone" in errors["registration_address"][0]
    assert any("zone" in message and "fe80::2%eth1" in message for message in errors["tls_san"])
    assert not Cluster.objects.exists()


def test_a_stored_cluster_cannot_be_given_a_zone(admin_client: Any) -> None:
    cluster = make_cluster("gamma")
    with pytest.raises(ValidationError) as info:
        cluster_update(cluster=cluster, data={"tls_san": ["fe80::1%eth0"]})
    assert "zone" in str(info.value)
    cluster.refresh_from_db()
    assert cluster.tls_san == []


# --- non-finite numbers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_api_names_the_field_holding_a_non_finite_number(api: APIClient, constant: str) -> None:
    body = '{"name": "alpha", "rke2_version": "VERSION", "cluster_vars": {"max-pods": NUMBER}}'
    body = body.replace("VERSION", DEFAULT_VERSION).replace("NUMBER", constant)
    response = api.generic("POST", "/api/clusters/", body, content_type="application/json")
    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == "parse_error"
    assert "cluster_vars.max-pods" in payload["message"] and "finite" in payload["message"]
    assert "already exists" not in payload["message"]
    body = (
        (
            '{"name": "alpha", "rke2_version": "VERSION", "nodes": [{"hostname": "m1", "internal_ip": "10.0.0.1", '
            '"node_vars": {"kubelet-arg": ["a", NUMBER]}}]}'
        )
        .replace("VERSION", DEFAULT_VERSION)
        .replace("NUMBER", constant)
    )
    response = api.generic("POST", "/api/clusters/", body, content_type="application/json")
    assert "nodes[0].node_vars.kubelet-arg[1]" in response.json()["message"]
    assert not Cluster.objects.exists()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_admin_refuses_a_non_finite_number_next_to_the_field(admin_client: Any, constant: str) -> None:
    data = cluster_post_data(name="delta", cluster_vars='{"max-pods": NUMBER}'.replace("NUMBER", constant))
    response = admin_client.post(reverse("admin:clusters_cluster_add"), data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "finite" in errors["cluster_vars"][0] and "max-pods" in errors["cluster_vars"][0]
    assert "name" not in errors
    assert "already exists" not in response.content.decode()
    assert not Cluster.objects.exists()


def test_services_refuse_a_non_finite_number() -> None:
    with pytest.raises(ValidationError) as info:
        cluster_create(name="eps", rke2_version=DEFAULT_VERSION, cluster_vars={"max-pods": float("nan")}, nodes=NODES)
    assert list(info.value.message_dict) == ["cluster_vars"]
    assert "finite" in info.value.message_dict["cluster_vars"][0]


# --- database refusals named by their constraint ------------------------------------------------------------------


def _take_on_save(model: type, saving: str, **conflicting: Any) -> Any:
    """A concurrent request, as seen by the database: just before ``hostname`` is saved, a row that takes one of its
    unique values is written."""

    def receiver(sender: Any, instance: Any, **kwargs: Any) -> None:
        if getattr(instance, "hostname", None) == saving and not kwargs.get("raw"):
            Node.objects.bulk_create([Node(cluster_id=instance.cluster_id, status=NodeStatus.PENDING, **conflicting)])

    pre_save.connect(receiver, sender=model, weak=False, dispatch_uid="take-on-save")
    return receiver


@pytest.fixture
def concurrent_writes() -> Any:
    yield _take_on_save
    pre_save.disconnect(sender=Node, dispatch_uid="take-on-save")


def test_a_race_on_a_node_address_is_reported_on_that_node_and_field(concurrent_writes: Any) -> None:
    concurrent_writes(Node, "w1", hostname="intruder", internal_ip="10.0.0.2", role=NodeRole.WORKER)

    with pytest.raises(ValidationError) as info:
        cluster_create(name="zeta", rke2_version=DEFAULT_VERSION, nodes=NODES)

    assert info.value.message_dict == {
        "nodes[1].internal_ip": ["A node with this internal IP already exists in this cluster."]
    }
    assert not Cluster.objects.filter(name="zeta").exists()


def test_a_race_on_a_node_name_is_reported_on_that_node_and_field(concurrent_writes: Any) -> None:
    concurrent_writes(Node, "w1", hostname="w1", internal_ip="10.9.9.9", role=NodeRole.WORKER)

    with pytest.raises(ValidationError) as info:
        cluster_create(name="eta", rke2_version=DEFAULT_VERSION, nodes=NODES)

    assert info.value.message_dict == {
        "nodes[1].hostname": ["A node with this host name already exists in this cluster."]
    }


def _refusal(model: type, build: Any) -> Any:
    with pytest.raises(IntegrityError) as info, transaction.atomic():
        build()
    return integrity_refusal(info.value, model)


def test_each_constraint_is_named_with_its_own_field_and_message() -> None:
    cluster = make_cluster("theta", servers=1, workers=1)
    credential = make_credential("ops-theta")

    name = _refusal(Cluster, lambda: Cluster.objects.bulk_create([Cluster(name="theta", rke2_version=DEFAULT_VERSION)]))
    assert (name.field, name.message) == ("name", "Cluster with this Name already exists.")

    address = _refusal(
        Node, lambda: Node.objects.create(cluster=cluster, hostname="other", internal_ip="10.0.0.11", role="worker")
    )
    assert address.constraint == "clusters_node_unique_internal_ip"
    assert (address.field, address.message) == (
        "internal_ip",
        "A node with this internal IP already exists in this cluster.",
    )

    initial = _refusal(
        Node,
        lambda: Node.objects.create(
            cluster=cluster, hostname="m9", internal_ip="10.0.9.9", role=NodeRole.INITIAL_MASTER
        ),
    )
    assert initial.constraint == "clusters_node_one_initial_master"
    assert (initial.field, initial.message) == ("", "A cluster has at most one initial master.")

    external = _refusal(
        Node,
        lambda: Node.objects.create(cluster=cluster, hostname="x1", internal_ip="10.0.9.8", use_external_ip=True),
    )
    assert external.message == "Using the external IP requires an external IP."

    port = _refusal(SSHCredential, lambda: SSHCredential.objects.filter(pk=credential.pk).update(port=70000))
    assert port.message == "The SSH port must be between 1 and 65535."

    Job.objects.create(cluster=cluster, kind=JobKind.HEALTH, status=JobStatus.RUNNING)
    job = _refusal(Job, lambda: Job.objects.create(cluster=cluster, kind=JobKind.HEALTH, status=JobStatus.PENDING))
    assert job.message == "The cluster already has an active job."

    with pytest.raises(IntegrityError) as info, transaction.atomic():
        Node.objects.create(cluster=cluster, hostname="theta-s1", internal_ip="10.9.0.1")
    messages = integrity_error_messages(info.value, Node, prefix="nodes[3]")
    assert messages == {"nodes[3].hostname": ["A node with this host name already exists in this cluster."]}


def test_invalid_json_reaching_sqlite_is_named_by_its_column() -> None:
    cluster = make_cluster("iota")
    if connection.vendor != "sqlite":
        # PostgreSQL refuses it as invalid input (a DataError), before any constraint.
        with pytest.raises(DataError), transaction.atomic():
            Cluster.objects.filter(pk=cluster.pk).update(cluster_vars={"max-pods": float("nan")})
        return
    refusal = _refusal(
        Cluster, lambda: Cluster.objects.filter(pk=cluster.pk).update(cluster_vars={"max-pods": float("nan")})
    )
    assert refusal.field == "cluster_vars" and "valid JSON" in refusal.message


def test_an_unknown_constraint_is_reported_by_its_name_not_guessed() -> None:
    refusal = integrity_refusal(IntegrityError('new row violates check constraint "some_other_rule"'), Cluster)
    assert refusal.field == "" and "some_other_rule" in refusal.message and "already exists" not in refusal.message


# --- legacy tokens too short to mask -----------------------------------------------------------------------------


def _export(tmp_path: Path, **fields: Any) -> str:
    row = {
        "name": "legacy",
        "version": "v1.28.5+rke2r1",
        "nodes": [{"hostname": "cp1", "ip": "10.0.0.1", "role": "server"}],
        **fields,
    }
    path = tmp_path / "export.json"
    path.write_text(json.dumps([row]))
    return str(path)


@pytest.mark.parametrize("token", ["x", "abc12", "12345"])
def test_import_refuses_a_token_too_short_to_be_masked(tmp_path: Path, token: str) -> None:
    report = legacy_clusters_import(source=_export(tmp_path, token=token))
    (outcome,) = report.outcomes
    assert outcome.action == "invalid"
    assert any("token:" in error and "rke2 token rotate" in error for error in outcome.errors)
    assert not Cluster.objects.exists()


def test_a_token_of_the_minimum_length_is_imported_and_masked(tmp_path: Path) -> None:
    token = "k3Yz9q"[:MIN_SECRET_LENGTH]
    report = legacy_clusters_import(source=_export(tmp_path, token=token))
    assert report.outcomes[0].action == "imported", report.outcomes[0].errors
    stored = reveal(Cluster.objects.get(name="legacy").token)
    assert stored == token
    assert Redactor([stored]).text(f"joining with {token} failed") == f"joining with {MASK} failed"


def test_import_refuses_non_finite_and_weakening_config(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text(
        '[{"name": "nanvars", "version": "v1.28.5+rke2r1", "token": "%s", "cluster_vars": {"max-pods": NaN}, '
        '"nodes": [{"hostname": "cp1", "ip": "10.0.0.1", "role": "server"}]},'
        ' {"name": "openapi", "version": "v1.28.5+rke2r1", "token": "%s", '
        '"cluster_vars": {"kube-apiserver-arg": ["anonymous-auth=true"]}, '
        '"nodes": [{"hostname": "cp1", "ip": "10.0.0.1", "role": "server"}]}]'.replace("%s", "t" * 40)
    )
    report = legacy_clusters_import(source=str(path))
    errors = {outcome.name: outcome.errors for outcome in report.outcomes}
    assert any("cluster_vars" in error and "finite" in error for error in errors["nanvars"])
    assert any("cluster_vars" in error and "anonymous" in error for error in errors["openapi"])
    assert not Cluster.objects.exists()


def test_the_denylist_validator_is_the_models() -> None:
    # One validator for the cluster's and the nodes' extra config, wherever it is set.
    assert validate_rke2_config in Cluster._meta.get_field("cluster_vars").validators
    assert validate_rke2_config in Node._meta.get_field("node_vars").validators
