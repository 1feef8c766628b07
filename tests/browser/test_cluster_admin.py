"""The cluster pages in a real browser: log in, create a cluster with its nodes, see validation errors inline."""

from __future__ import annotations

from typing import Any

import pytest

from clusters.choices import NodeRole, NodeStatus
from clusters.models import AuditLog, Cluster

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_create_cluster_with_nodes_and_fix_an_inline_error(logged_in: Any, live_server: Any, screenshot: Any) -> None:
    page = logged_in
    page.goto(f"{live_server.url}/admin/clusters/cluster/add/")
    page.fill("#id_name", "web")
    page.fill("#id_rke2_version", "v1.31.4+rke2r1")
    page.fill("#id_cluster_nodes-0-hostname", "web-s1")
    page.fill("#id_cluster_nodes-0-internal_ip", "10.20.0.11")
    assert page.input_value("#id_cluster_nodes-0-role") == NodeRole.INITIAL_MASTER

    page.click("#cluster_nodes-group .add-row a")
    page.fill("#id_cluster_nodes-1-hostname", "web-w1")
    page.fill("#id_cluster_nodes-1-internal_ip", "10.20.0.300")
    page.select_option("#id_cluster_nodes-1-role", NodeRole.WORKER)
    page.fill("#id_cluster_nodes-1-labels", "tier=web, zone=a")
    page.click("input[name=_continue]")

    # Nothing is saved; the error sits next to the field of the row it is about.
    error = page.locator("#cluster_nodes-1 td.field-internal_ip .errorlist")
    error.wait_for()
    assert "IPv4 or IPv6" in error.inner_text()
    assert page.locator("#cluster_nodes-0 .errorlist").count() == 0
    assert page.input_value("#id_cluster_nodes-1-labels") == "tier=web, zone=a"
    assert not Cluster.objects.filter(name="web").exists()
    screenshot("inline-error")

    page.fill("#id_cluster_nodes-1-internal_ip", "10.20.0.21")
    page.click("input[name=_continue]")
    page.locator("ul.messagelist li.success").wait_for()

    cluster = Cluster.objects.get(name="web")
    nodes = {node.hostname: node for node in cluster.cluster_nodes.all()}
    assert set(nodes) == {"web-s1", "web-w1"}
    assert nodes["web-s1"].role == NodeRole.INITIAL_MASTER
    assert nodes["web-w1"].labels == ["tier=web", "zone=a"]
    assert all(node.status == NodeStatus.PENDING for node in nodes.values())
    assert AuditLog.objects.filter(action="cluster.create", cluster=cluster).exists()
    assert page.locator("#cluster_nodes-group tbody tr.form-row.has_original").count() == 2
    screenshot("created")


def test_duplicate_host_name_among_rows_is_shown_on_the_row(logged_in: Any, live_server: Any) -> None:
    page = logged_in
    page.goto(f"{live_server.url}/admin/clusters/cluster/add/")
    page.fill("#id_name", "dup")
    page.fill("#id_rke2_version", "v1.31.4+rke2r1")
    page.fill("#id_cluster_nodes-0-hostname", "dup-1")
    page.fill("#id_cluster_nodes-0-internal_ip", "10.21.0.11")
    page.click("#cluster_nodes-group .add-row a")
    page.fill("#id_cluster_nodes-1-hostname", "dup-1")
    page.fill("#id_cluster_nodes-1-internal_ip", "10.21.0.12")
    page.click("input[name=_save]")
    error = page.locator("#cluster_nodes-1 td.field-hostname .errorlist")
    error.wait_for()
    assert "dup-1" in error.inner_text()
    assert not Cluster.objects.filter(name="dup").exists()
