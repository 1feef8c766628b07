"""Stored SSH host keys through the API: listed with their fingerprints, cleared by operators (audited)."""

from __future__ import annotations

import pytest

from clusters.models import AuditLog, HostKey
from clusters.services.hostkeys import fingerprint

pytestmark = pytest.mark.django_db

KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIHN0YW5kLWluIGhvc3Qga2V5IGZvciB0ZXN0cyEhISE="


@pytest.fixture
def host_key(cluster):
    return HostKey.objects.create(
        address="10.0.0.1", port=22, hostname="node1", cluster=cluster, public_keys=f"ssh-ed25519 {KEY}\n"
    )


def test_list_shows_fingerprints_and_filters_by_cluster(api, host_key, make_cluster):
    other = make_cluster("other")
    HostKey.objects.create(address="10.0.0.9", port=2222, cluster=other, public_keys=f"ssh-ed25519 {KEY}\n")

    response = api.get("/api/host-keys/", {"cluster": host_key.cluster_id})

    assert response.status_code == 200
    [item] = response.json()["results"]
    assert item["address"] == "10.0.0.1" and item["port"] == 22 and item["cluster_name"] == "alpha"
    assert item["keys"] == [{"type": "ssh-ed25519", "fingerprint": fingerprint(KEY), "public_key": KEY}]
    assert item["keys"][0]["fingerprint"].startswith("SHA256:")


def test_an_operator_clears_a_host_key(api, operator, host_key):
    response = api.delete(f"/api/host-keys/{host_key.pk}/")

    assert response.status_code == 204
    assert not HostKey.objects.exists()
    entry = AuditLog.objects.get(action="host_key.cleared")
    assert entry.actor == operator and entry.cluster_id == host_key.cluster_id
    assert entry.detail["fingerprints"] == [f"ssh-ed25519 {fingerprint(KEY)}"]


def test_a_viewer_cannot_clear_one(client_for, viewer, host_key):
    response = client_for(viewer).delete(f"/api/host-keys/{host_key.pk}/")

    assert response.status_code == 403
    assert HostKey.objects.filter(pk=host_key.pk).exists()


def test_unknown_host_key_is_404(api):
    assert api.delete("/api/host-keys/999/").status_code == 404
