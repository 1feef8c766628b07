"""The per-cluster switches of host preparation in the API: shown, on by default, changeable, and handed to the
playbooks as variables (visible in the inventory preview)."""

from __future__ import annotations

import pytest

from clusters.models import AuditLog, Cluster

pytestmark = pytest.mark.django_db

VERSION = "v1.31.4+rke2r1"
SWITCHES = ("prepare_firewall", "prepare_network_manager", "prepare_kernel")


def test_switches_default_on_can_be_switched_off_and_reach_the_preview(api, credential):
    created = api.post(
        "/api/clusters/",
        {
            "name": "prep",
            "rke2_version": VERSION,
            "ssh_credential": credential.pk,
            "prepare_firewall": False,
            "nodes": [{"hostname": "m1", "internal_ip": "10.1.0.1", "role": "server"}],
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert {name: body[name] for name in SWITCHES} == {
        "prepare_firewall": False,
        "prepare_network_manager": True,
        "prepare_kernel": True,
    }
    cluster = Cluster.objects.get(name="prep")

    changed = api.patch(f"/api/clusters/{cluster.pk}/", {"prepare_kernel": False}, format="json")

    assert changed.status_code == 200, changed.json()
    assert changed.json()["prepare_kernel"] is False and changed.json()["prepare_network_manager"] is True
    cluster.refresh_from_db()
    assert (cluster.prepare_firewall, cluster.prepare_network_manager, cluster.prepare_kernel) == (False, True, False)
    assert AuditLog.objects.filter(action="cluster.update", cluster=cluster).latest("pk").detail == {
        "fields": ["prepare_kernel"]
    }
    preview = api.get(f"/api/clusters/{cluster.pk}/inventory/").json()
    inventory = preview["inventories"]["initial_master"]
    assert "rke2_prepare_firewall: false" in inventory
    assert "rke2_prepare_kernel: false" in inventory
    assert "rke2_prepare_network_manager: true" in inventory
    assert "spec: 9345/tcp" in inventory and "spec: 30000-32767/tcp" in inventory


def test_a_switch_that_is_not_a_boolean_is_refused_naming_the_field(api, make_cluster):
    cluster = make_cluster("prep2")

    response = api.patch(f"/api/clusters/{cluster.pk}/", {"prepare_firewall": "perhaps"}, format="json")

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["prepare_firewall"]
