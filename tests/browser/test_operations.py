"""Cluster operations in a real browser: the list, the cluster page with its active job and warnings, and the
confirmation pages of removal, upgrade and uninstall (no worker: the jobs stay pending)."""

from __future__ import annotations

from typing import Any

import pytest

from clusters.choices import JobKind, JobStatus, NodeStatus
from clusters.models import Job
from clusters.tests.factories import make_cluster, make_credential, mark_installed

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture
def clusters() -> dict[str, Any]:
    credential = make_credential("ops")
    prod = mark_installed(
        make_cluster(
            "prod",
            servers=3,
            workers=3,
            subnet="10.30.0",
            ssh_credential=credential,
            registration_address="api.prod.example.com",
        )
    )
    staging = mark_installed(make_cluster("staging", servers=2, workers=1, subnet="10.31.0", ssh_credential=credential))
    lab = make_cluster("lab", servers=1, workers=1, subnet="10.32.0", ssh_credential=credential)
    Job.objects.create(
        cluster=staging, kind=JobKind.UPGRADE, status=JobStatus.RUNNING, stages=["upgrade"], stage="upgrade"
    )
    Job.objects.create(
        cluster=prod,
        kind=JobKind.HEALTH,
        status=JobStatus.FAILED,
        stages=["health"],
        explanation="prod-w3 is not Ready.",
    )
    prod.cluster_nodes.filter(hostname="prod-w3").update(status=NodeStatus.FAILED)
    return {"prod": prod, "staging": staging, "lab": lab}


def test_cluster_list_and_operation_pages(
    logged_in: Any, live_server: Any, clusters: dict[str, Any], screenshot: Any
) -> None:
    page = logged_in
    page.goto(f"{live_server.url}/admin/clusters/cluster/")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 3
    prod_row = page.locator("#result_list tbody tr", has_text="prod")
    assert "Health check #" in prod_row.inner_text() and "1 failed" in prod_row.inner_text()
    screenshot("list")

    # The cluster page: the active job, the even number of servers as a warning, the operations.
    staging = clusters["staging"]
    page.goto(f"{live_server.url}/admin/clusters/cluster/{staging.pk}/change/")
    assert page.locator(".rke2-active-job", has_text="Upgrade #").is_visible()
    assert page.locator("ul.messagelist li.warning", has_text="2 servers").is_visible()
    screenshot("cluster-page")

    # Removing a server: the confirmation names it and explains the quorum.
    prod = clusters["prod"]
    page.goto(f"{live_server.url}/admin/clusters/cluster/{prod.pk}/remove-nodes/")
    page.check('input[value="prod-s3"]')
    page.check('input[value="prod-w1"]')
    page.click("input[type=submit]")
    assert page.locator(".rke2-target-list li").all_inner_texts()[0].startswith("prod-s3")
    assert page.locator(".rke2-quorum-warning", has_text="from 3 to 2 servers").is_visible()
    screenshot("remove-confirmation")
    page.click("#remove-nodes-form input[type=submit]")
    page.wait_for_url("**/admin/clusters/job/*/change/")
    job = Job.objects.get(cluster=prod, kind=JobKind.SCALE_REMOVE)
    assert job.status == JobStatus.PENDING
    assert set(prod.cluster_nodes.filter(status=NodeStatus.DRAINING).values_list("hostname", flat=True)) == {
        "prod-s3",
        "prod-w1",
    }
    # A second operation meanwhile is refused with a link to the active job.
    page.goto(f"{live_server.url}/admin/clusters/cluster/{prod.pk}/upgrade/")
    page.fill("#id_target_version", "v1.32.1+rke2r1")
    page.click("#upgrade-form input[type=submit]")
    page.locator("ul.messagelist li.error", has_text="already has an active job").wait_for()
    page.click("ul.messagelist li.error a")
    page.wait_for_url(f"**/admin/clusters/job/{job.pk}/change/")
    page.click("#job-cancel")
    page.locator("ul.messagelist li.success", has_text="canceled before it started").wait_for()

    # Uninstall needs the cluster's name typed.
    lab = clusters["lab"]
    page.goto(f"{live_server.url}/admin/clusters/cluster/{lab.pk}/uninstall/")
    page.fill("#id_confirm", "prod")
    page.click("#uninstall-form input[type=submit]")
    error = page.locator(".field-confirm .errorlist")
    error.wait_for()
    assert "(lab)" in error.inner_text()
    screenshot("uninstall-error")
    assert not Job.objects.filter(cluster=lab).exists()

    page.goto(f"{live_server.url}/admin/clusters/cluster/{lab.pk}/previews/")
    assert page.locator("#stage-initial_master pre").inner_text().strip() != ""
    screenshot("previews")
    assert page.javascript_errors == []


def test_ssh_credential_form_never_shows_the_key(logged_in: Any, live_server: Any, screenshot: Any) -> None:
    from clusters.tests.factories import ssh_private_key

    page = logged_in
    key = ssh_private_key()
    page.goto(f"{live_server.url}/admin/clusters/sshcredential/add/")
    assert page.get_attribute("#id_passphrase", "type") == "password"
    page.fill("#id_name", "deploy-key")
    page.fill("#id_username", "deploy")
    page.fill("#id_private_key", key)
    page.fill("#id_passphrase", "not-needed")
    page.click("input[name=_continue]")
    page.locator(".field-passphrase .errorlist").wait_for()
    assert page.input_value("#id_private_key") == "" and page.input_value("#id_passphrase") == ""
    page.fill("#id_private_key", key)
    page.click("input[name=_continue]")
    page.locator("ul.messagelist li.success").wait_for()
    assert "SHA256:" in page.locator(".field-public_key_fingerprint").inner_text()
    assert page.input_value("#id_private_key") == ""
    assert "PRIVATE KEY" not in page.content()
    screenshot("credential")
