"""The kubeconfig download (permission, audit trail) and the inventory and config previews (token masked)."""

from __future__ import annotations

import pytest
import yaml

from clusters.choices import NodeStatus
from clusters.fields import reveal
from clusters.models import AuditLog, Cluster, Node

from .conftest import KUBECONFIG, assert_no_secret

pytestmark = pytest.mark.django_db


def test_download_kubeconfig(client_for, downloader, installed_cluster):
    response = client_for(downloader).get(f"/api/clusters/{installed_cluster.pk}/kubeconfig/")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/yaml; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="alpha-kubeconfig.yaml"'
    assert response["Cache-Control"] == "no-store"
    assert response.content.decode() == KUBECONFIG
    entry = AuditLog.objects.get(action="cluster.kubeconfig.download")
    assert (entry.actor, entry.cluster) == (downloader, installed_cluster)
    assert entry.created_at is not None


def test_download_ignores_the_accept_header(client_for, downloader, installed_cluster):
    response = client_for(downloader).get(
        f"/api/clusters/{installed_cluster.pk}/kubeconfig/", HTTP_ACCEPT="application/yaml"
    )

    assert response.status_code == 200


def test_download_needs_the_permission(api, installed_cluster):
    response = api.get(f"/api/clusters/{installed_cluster.pk}/kubeconfig/")  # operators may not

    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert_no_secret(response.content, [KUBECONFIG.strip()])
    assert not AuditLog.objects.filter(action="cluster.kubeconfig.download").exists()


def test_download_before_a_kubeconfig_exists(client_for, downloader, cluster):
    response = client_for(downloader).get(f"/api/clusters/{cluster.pk}/kubeconfig/")

    assert response.status_code == 409
    assert response.json()["code"] == "kubeconfig_unavailable"
    assert not AuditLog.objects.filter(action="cluster.kubeconfig.download").exists()


def test_download_of_unknown_cluster(client_for, downloader):
    assert client_for(downloader).get("/api/clusters/313131/kubeconfig/").status_code == 404


def test_inventory_preview(api, cluster, secrets_of):
    response = api.get(f"/api/clusters/{cluster.pk}/inventory/")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert set(body["inventories"]) == {"initial_master", "joining_masters", "workers", "all"}
    assert body["stage_hosts"]["initial_master"] == ["node1"]
    assert set(body["configs"]) == {"node1", "node2", "node3"}
    inventory = yaml.safe_load(body["inventories"]["all"])
    assert set(inventory["all"]["hosts"]) == {"node1", "node2", "node3"}
    assert "rke2_token" not in body["inventories"]["all"]
    assert_no_secret(response.content, secrets_of(cluster, cluster.ssh_credential))


def test_inventory_preview_of_one_stage(api, cluster):
    body = api.get(f"/api/clusters/{cluster.pk}/inventory/", {"stage": "workers"}).json()

    assert list(body["inventories"]) == ["workers"]
    assert body["stage_hosts"] == {"workers": ["node2", "node3"]}


def test_inventory_preview_rejects_unknown_stage(api, cluster):
    response = api.get(f"/api/clusters/{cluster.pk}/inventory/", {"stage": "everything"})

    assert response.status_code == 400
    assert "stage" in response.json()["errors"]


def test_config_preview_masks_the_token(api, cluster, secrets_of):
    response = api.get(f"/api/clusters/{cluster.pk}/config/node1/")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["hostname"] == "node1"
    config = yaml.safe_load(body["config"])
    assert config["node-name"] == "node1"
    assert reveal(Cluster.objects.get(pk=cluster.pk).token) not in body["config"]
    assert_no_secret(response.content, secrets_of(cluster, cluster.ssh_credential))


def test_config_preview_of_unknown_or_removed_node(api, cluster):
    Node.objects.filter(cluster=cluster, hostname="node3").update(status=NodeStatus.REMOVED)

    assert api.get(f"/api/clusters/{cluster.pk}/config/ghost/").status_code == 404
    assert api.get(f"/api/clusters/{cluster.pk}/config/node3/").status_code == 404
    response = api.get(f"/api/clusters/{cluster.pk}/config/Not_A_Host/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
