"""Cluster endpoints: list, create with nodes, show, change, delete, and the node list."""

from __future__ import annotations

import pytest

from clusters.choices import JobKind, JobStatus, NodeRole, NodeStatus
from clusters.models import AuditLog, Cluster, Node

from .conftest import make_job

pytestmark = pytest.mark.django_db

VERSION = "v1.31.4+rke2r1"


def test_list_is_paginated_with_counts(api, make_cluster):
    make_cluster("alpha", nodes=3)
    beta = make_cluster("beta", nodes=2, servers=2)
    Node.objects.filter(cluster=beta, hostname="node2").update(status=NodeStatus.FAILED)
    make_job(beta, status=JobStatus.RUNNING)

    response = api.get("/api/clusters/", {"page_size": 1})

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert body["next"].endswith("page=2&page_size=1")
    assert [c["name"] for c in body["results"]] == ["alpha"]
    second = api.get("/api/clusters/", {"page": 2, "page_size": 1}).json()["results"][0]
    assert second["name"] == "beta"
    assert (second["node_count"], second["server_count"], second["agent_count"]) == (2, 2, 0)
    assert second["failed_node_count"] == 1
    assert second["active_job"] == beta.jobs.get().pk
    assert second["has_kubeconfig"] is False
    assert "token" not in second and "kubeconfig" not in second


def test_list_filters(api, make_cluster):
    make_cluster("alpha")
    make_cluster("beta")
    Cluster.objects.filter(name="beta").update(status="active")

    assert [c["name"] for c in api.get("/api/clusters/", {"status": "active"}).json()["results"]] == ["beta"]
    assert [c["name"] for c in api.get("/api/clusters/", {"name": "alpha"}).json()["results"]] == ["alpha"]
    response = api.get("/api/clusters/", {"status": "sleeping"})
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["status"]


def test_create_with_nodes(api, credential):
    payload = {
        "name": "gamma",
        "rke2_version": VERSION,
        "ssh_credential": credential.pk,
        "registration_address": "k8s.example.com",
        "tls_san": ["api.example.com"],
        "cluster_vars": {"write-kubeconfig-mode": "0600", "kube-apiserver-arg+": ["v=2"]},
        "nodes": [
            {"hostname": "m1", "internal_ip": "10.1.0.1", "role": "server"},
            {"hostname": "m2", "internal_ip": "10.1.0.2", "role": "server"},
            {"hostname": "m3", "internal_ip": "10.1.0.3", "role": "server"},
            {
                "hostname": "w1",
                "internal_ip": "10.1.0.4",
                "external_ip": "192.0.2.4",
                "use_external_ip": True,
                "labels": ["tier=web"],
                "taints": ["dedicated=web:NoSchedule"],
            },
        ],
    }

    response = api.post("/api/clusters/", payload, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert response["Location"] == body["url"] == f"http://testserver/api/clusters/{body['id']}/"
    assert [(n["hostname"], n["role"], n["status"]) for n in body["nodes"]] == [
        ("m1", NodeRole.INITIAL_MASTER, "pending"),
        ("m2", NodeRole.MASTER, "pending"),
        ("m3", NodeRole.MASTER, "pending"),
        ("w1", NodeRole.WORKER, "pending"),
    ]
    assert body["nodes"][3]["ansible_ip"] == "192.0.2.4"
    assert body["nodes"][3]["labels"] == ["tier=web"]
    assert body["ssh_credential"] == credential.pk
    assert body["status"] == "new"
    assert body["warnings"] == []
    cluster = Cluster.objects.get(pk=body["id"])
    assert cluster.cluster_vars["kube-apiserver-arg+"] == ["v=2"]
    assert AuditLog.objects.filter(action="cluster.create", cluster=cluster).exists()


def test_create_reports_node_errors_by_path(api):
    payload = {
        "name": "delta",
        "rke2_version": VERSION,
        "nodes": [
            {"hostname": "ok1", "internal_ip": "10.2.0.1"},
            {"hostname": "Bad_Name", "internal_ip": "10.2.0.300"},
            {"hostname": "ok1", "internal_ip": "10.2.0.3"},
        ],
    }

    response = api.post("/api/clusters/", payload, format="json")

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "validation_error"
    assert {"nodes[1].hostname", "nodes[1].internal_ip"} <= set(body["errors"])
    assert all(isinstance(messages, list) and messages for messages in body["errors"].values())
    assert body["message"].startswith("Invalid input:")
    assert not Cluster.objects.filter(name="delta").exists()


def test_create_type_errors_use_the_same_paths(api):
    payload = {"name": "delta", "rke2_version": VERSION, "nodes": [{"hostname": "a", "internal_ip": ["x"]}, "junk"]}

    response = api.post("/api/clusters/", payload, format="json")

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert "nodes[0].internal_ip" in errors
    assert "nodes[1]" in errors


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "Not A Label"}, "name"),
        ({"rke2_version": "1.31"}, "rke2_version"),
        ({"cluster_cidr": "10.43.0.0/16"}, "service_cidr"),  # overlaps the service CIDR
        ({"cni": "weave"}, "cni"),
        ({"tls_san": ["not a name"]}, "tls_san"),
        ({"cluster_vars": {"token": "x"}}, "cluster_vars"),
        ({"cluster_vars": ["a"]}, "cluster_vars"),
        ({"ssh_credential": 999999}, "ssh_credential"),
        ({"ssh_credential": "abc"}, "ssh_credential"),
    ],
)
def test_create_validates_cluster_fields(api, changes, field):
    payload = {"name": "epsilon", "rke2_version": VERSION, **changes}

    response = api.post("/api/clusters/", payload, format="json")

    assert response.status_code == 400, response.json()
    assert field in response.json()["errors"]


def test_create_requires_name_and_version(api):
    response = api.post("/api/clusters/", {}, format="json")

    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"name", "rke2_version"}


def test_create_duplicate_name(api, cluster):
    response = api.post("/api/clusters/", {"name": cluster.name, "rke2_version": VERSION}, format="json")

    assert response.status_code == 400
    assert "name" in response.json()["errors"]


def test_retrieve_shows_nodes_and_warnings(api, make_cluster):
    cluster = make_cluster("zeta", nodes=3, servers=2)

    response = api.get(f"/api/clusters/{cluster.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert [n["hostname"] for n in body["nodes"]] == ["node1", "node2", "node3"]
    assert any("even number" in warning for warning in body["warnings"])
    assert any("registration address" in warning for warning in body["warnings"])


def test_retrieve_unknown_is_404(api):
    response = api.get("/api/clusters/424242/")

    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "message": "Not found.", "errors": {}, "extra": {}}


def test_patch_updates_and_audits(api, cluster):
    changes = {"description": "edge site", "tls_san": ["10.9.9.9"]}

    response = api.patch(f"/api/clusters/{cluster.pk}/", changes, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["description"] == "edge site"
    cluster.refresh_from_db()
    assert cluster.tls_san == ["10.9.9.9"]
    entry = AuditLog.objects.get(action="cluster.update", cluster=cluster)
    assert entry.detail["fields"] == ["description", "tls_san"]


def test_put_needs_every_required_field(api, cluster):
    response = api.put(f"/api/clusters/{cluster.pk}/", {"description": "x"}, format="json")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"name", "rke2_version"}

    response = api.put(
        f"/api/clusters/{cluster.pk}/", {"name": "renamed", "rke2_version": VERSION, "description": "x"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["name"] == "renamed"


def test_installed_cluster_keeps_version_and_critical_values(api, installed_cluster):
    url = f"/api/clusters/{installed_cluster.pk}/"

    response = api.patch(url, {"rke2_version": "v1.32.1+rke2r1"}, format="json")
    assert response.status_code == 400
    assert "rke2_version" in response.json()["errors"]

    response = api.patch(url, {"cluster_cidr": "10.50.0.0/16"}, format="json")
    assert response.status_code == 400
    assert "cluster_cidr" in response.json()["errors"]


def test_delete(api, cluster):
    response = api.delete(f"/api/clusters/{cluster.pk}/")

    assert response.status_code == 204
    assert not Cluster.objects.filter(pk=cluster.pk).exists()
    assert AuditLog.objects.filter(action="cluster.delete", object_repr=cluster.name).exists()


def test_delete_refused_while_a_job_is_active(api, cluster):
    job = make_job(cluster, kind=JobKind.PREFLIGHT, status=JobStatus.RUNNING)

    response = api.delete(f"/api/clusters/{cluster.pk}/")

    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "invalid_state"
    assert f"#{job.pk}" in body["message"]
    assert Cluster.objects.filter(pk=cluster.pk).exists()


def test_nodes_list(api, cluster):
    Node.objects.filter(cluster=cluster, hostname="node3").update(status=NodeStatus.REMOVED)

    response = api.get(f"/api/clusters/{cluster.pk}/nodes/")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert [n["hostname"] for n in body["results"]] == ["node1", "node2", "node3"]
    removed = api.get(f"/api/clusters/{cluster.pk}/nodes/", {"status": "removed"}).json()["results"]
    assert [n["hostname"] for n in removed] == ["node3"]
    workers = api.get(f"/api/clusters/{cluster.pk}/nodes/", {"role": "worker"}).json()["results"]
    assert [n["hostname"] for n in workers] == ["node2", "node3"]


def test_nodes_of_unknown_cluster(api):
    response = api.get("/api/clusters/987654/nodes/")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
