"""End to end in a real browser: an operator registers the SSH key, defines a cluster on SSH test hosts, runs the
preflight job from the cluster page and watches its log grow until the progress bar is full.

Everything is real: the admin served by the live server, a Celery worker process consuming the job from Redis,
ansible-playbook over SSH to hosts in network namespaces, events stored by the worker and polled by the page.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from clusters.choices import JobKind, JobStatus
from clusters.models import Cluster, Job, JobHostSummary

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

VERSION = "v1.31.4+rke2r1"
JOB_TIMEOUT_SECONDS = 240
LINES = "document.querySelectorAll('#job-log .rke2-log-line').length"
BAR_FULL = (
    "document.getElementById('job-progress-bar').getBoundingClientRect().width"
    " >= document.getElementById('job-progress').getBoundingClientRect().width - 1"
)


def test_preflight_job_on_test_hosts(
    logged_in: Any, live_server: Any, host_network: Any, make_hosts: Any, job_worker: Any, screenshot: Any
) -> None:
    hosts = make_hosts(names=["pf-s1", "pf-w1", "pf-w2"])
    page = logged_in

    # The SSH key the hosts accept, and their host keys.
    page.goto(f"{live_server.url}/admin/clusters/sshcredential/add/")
    page.fill("#id_name", "test-hosts")
    page.fill("#id_username", "root")
    page.fill("#id_private_key", host_network.private_key_text)
    page.fill("#id_known_hosts", host_network.known_hosts_text)
    page.click("input[name=_save]")
    page.locator("ul.messagelist li.success").wait_for()

    # The cluster on those hosts.
    page.goto(f"{live_server.url}/admin/clusters/cluster/add/")
    page.fill("#id_name", "preflight")
    page.fill("#id_rke2_version", VERSION)
    page.select_option("#id_ssh_credential", label="test-hosts (root)")
    for index, host in enumerate(hosts):
        if index:
            page.click("#cluster_nodes-group .add-row a")
        page.fill(f"#id_cluster_nodes-{index}-hostname", host.name)
        page.fill(f"#id_cluster_nodes-{index}-internal_ip", host.ip)
        page.select_option(f"#id_cluster_nodes-{index}-role", "initial_master" if index == 0 else "worker")
    page.click("input[name=_continue]")
    page.locator("ul.messagelist li.success").wait_for()
    cluster = Cluster.objects.get(name="preflight")
    assert cluster.cluster_nodes.count() == 3

    # Preflight from the cluster page leads to the job page, which follows the job as the worker runs it.
    page.click('button[data-operation="preflight"]')
    page.wait_for_url("**/admin/clusters/job/*/change/")
    job = Job.objects.get(cluster=cluster)
    assert job.kind == JobKind.PREFLIGHT

    samples: list[int] = []
    shot = False
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while page.get_attribute("#job-live", "data-finished") != "true":
        assert time.monotonic() < deadline, f"the job did not finish in time:\n{job_worker.log_text()[-3000:]}"
        if page.get_attribute("#job-status", "data-status") == "running":
            samples.append(page.evaluate(LINES))
            if not shot and samples[-1] > 5:
                screenshot("running")
                shot = True
        page.wait_for_timeout(250)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCESSFUL, f"{job.explanation}\n{job_worker.log_text()[-3000:]}"
    final = page.evaluate(LINES)
    growing = sorted({count for count in samples if 0 < count < final})
    assert len(growing) >= 2, f"the log did not grow while the job ran: samples {samples}, final {final}"

    progress = page.locator("#job-progress")
    assert progress.get_attribute("aria-valuenow") == progress.get_attribute("aria-valuemax") == "1"
    page.wait_for_function(BAR_FULL)  # the bar's width is animated
    assert page.locator("#job-status").inner_text() == "Successful"
    assert page.locator('#job-host-counts [data-count="failed"]').inner_text() == "0"
    assert page.locator('#job-host-counts [data-count="unreachable"]').inner_text() == "0"
    ok_hosts = int(page.locator('#job-host-counts [data-count="ok"]').inner_text())
    changed_hosts = int(page.locator('#job-host-counts [data-count="changed"]').inner_text())
    assert ok_hosts + changed_hosts == 3
    assert sorted(page.locator("#job-hosts tbody tr").evaluate_all("rows => rows.map(r => r.dataset.host)")) == [
        "pf-s1",
        "pf-w1",
        "pf-w2",
    ]
    assert set(JobHostSummary.objects.filter(job=job).values_list("host_name", flat=True)) == {
        "pf-s1",
        "pf-w1",
        "pf-w2",
    }
    assert page.locator("#job-log", has_text="PLAY RECAP").count() == 1
    assert page.locator("#job-log span[class^=ansi-fg]").count() > 0
    assert page.javascript_errors == []
    screenshot("finished")
