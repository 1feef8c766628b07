"""Jobs from request to end through a real worker process, the portal's playbooks, SSH test hosts and the stand-in
RKE2: a staged install with events stored while it runs, one job per cluster under concurrent requests, cancel,
and a worker killed mid-run (failed with an explanation after its restart, then resumed to success)."""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from django.db import connection

from clusters.choices import ClusterStatus, InstallationStage, JobKind, JobStatus, NodeStatus
from clusters.exceptions import JobConflict
from clusters.fields import reveal
from clusters.models import Cluster, Job, JobEvent, Node
from clusters.selectors import job_stdout_chunks
from clusters.services.jobs import job_cancel, job_request
from tests.testhosts.fixtures import MakeHosts
from tests.worker import WorkerProcess

from .conftest import VERSION, wait_finished, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


def secrets_of(cluster: Cluster) -> list[str]:
    cluster.refresh_from_db()
    credential = cluster.ssh_credential
    values = [reveal(cluster.token), reveal(credential.private_key), reveal(cluster.kubeconfig)]
    found = []
    for value in values:
        value = value.strip()
        if value:
            found.append(value)
            found += [line.strip() for line in value.splitlines() if len(line.strip()) >= 16 and "-----" not in line]
    return found


def processes_under(path: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if str(path) in " ".join(p.info["cmdline"] or [])]


def assert_nothing_left(work_dir: Path) -> None:
    assert list(work_dir.iterdir()) == []
    assert processes_under(work_dir) == []


def test_install_from_request_to_complete(
    make_hosts: MakeHosts,
    make_test_cluster: Callable[..., Cluster],
    start_worker: Callable[..., WorkerProcess],
    work_dir: Path,
) -> None:
    hosts = make_hosts(3)
    cluster = make_test_cluster(hosts, masters=1)
    worker = start_worker()

    # Two requests at the same moment: one job, the other is refused.
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def request() -> None:
        try:
            barrier.wait()
            outcomes.append(job_request(cluster=Cluster.objects.get(pk=cluster.pk), kind=JobKind.INSTALL))
        except JobConflict as exc:
            outcomes.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    jobs = [outcome for outcome in outcomes if isinstance(outcome, Job)]
    assert len(jobs) == 1 and sum(isinstance(outcome, JobConflict) for outcome in outcomes) == 1
    job = jobs[0]

    # Events are in the database while the job runs, not only at the end.
    wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).exists(), timeout=30, what="the claim")
    seen_running = wait_for(
        lambda: (
            Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).exists()
            and JobEvent.objects.filter(job=job, event="runner_on_ok").count() >= 3
        ),
        timeout=120,
        what="events of the running job",
    )
    assert seen_running

    job = wait_finished(job)
    assert job.status == JobStatus.SUCCESSFUL, job.explanation
    assert Job.objects.filter(cluster=cluster).count() == 1
    cluster.refresh_from_db()
    assert cluster.installation_stage == InstallationStage.COMPLETE and cluster.status == ClusterStatus.ACTIVE
    assert cluster.bootstrapped_at is not None
    nodes = list(Node.objects.filter(cluster=cluster))
    assert {(node.status, node.installed_version) for node in nodes} == {(NodeStatus.ACTIVE, VERSION)}
    assert {row.stage for row in JobEvent.objects.filter(job=job).only("stage")} == {
        "reachability",
        "initial_master",
        "joining_masters",
        "workers",
        "all",
    }
    counters = list(JobEvent.objects.filter(job=job).values_list("counter", flat=True))
    assert counters == list(range(1, len(counters) + 1)) and job.emitted_events == len(counters)
    assert "PLAY RECAP" in "".join(job_stdout_chunks(job=job))

    # The kubeconfig is stored (encrypted) and works against the cluster.
    kubeconfig = reveal(cluster.kubeconfig)
    assert f"https://{hosts[0].ip}:6443" in kubeconfig
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        handle.write(kubeconfig)
        handle.flush()
        result = subprocess.run(
            ["kubectl", "--kubeconfig", handle.name, "get", "nodes", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(f"node/{host.name}" for host in hosts)

    # No secret in the events or the worker's log; nothing left on disk or running.
    secrets = secrets_of(cluster)
    for stdout, data in JobEvent.objects.filter(job=job).values_list("stdout", "event_data"):
        assert not any(secret in stdout or secret in str(data) for secret in secrets)
    log = worker.log_text()
    assert "clusters.run_job" in log and not any(secret in log for secret in secrets)
    assert_nothing_left(work_dir)


def test_cancel_stops_a_running_install(
    make_hosts: MakeHosts,
    make_test_cluster: Callable[..., Cluster],
    start_worker: Callable[..., WorkerProcess],
    work_dir: Path,
) -> None:
    hosts = make_hosts(2)
    cluster = make_test_cluster(hosts, masters=1, name="cancel")
    start_worker()
    job = job_request(cluster=cluster, kind=JobKind.INSTALL)

    wait_for(
        lambda: JobEvent.objects.filter(job=job, stage="workers", event="runner_on_start").exists(),
        timeout=300,
        what="the workers stage to start",
    )
    pid = Job.objects.get(pk=job.pk).ansible_pid
    assert pid and psutil.pid_exists(pid)
    canceled_at = time.monotonic()
    job_cancel(job=job)
    job = wait_finished(job, timeout=30)

    assert time.monotonic() - canceled_at < 10
    assert job.status == JobStatus.CANCELED and "during stage workers" in job.explanation
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    worker = Node.objects.get(cluster=cluster, hostname=hosts[1].name)
    assert worker.status == NodeStatus.FAILED and worker.last_error == "Canceled."
    assert Node.objects.get(cluster=cluster, hostname=hosts[0].name).status == NodeStatus.ACTIVE
    cluster.refresh_from_db()
    assert cluster.installation_stage == InstallationStage.FAILED
    assert_nothing_left(work_dir)


def test_a_worker_killed_mid_run_leaves_a_failed_job_that_can_be_resumed(
    make_hosts: MakeHosts,
    make_test_cluster: Callable[..., Cluster],
    start_worker: Callable[..., WorkerProcess],
    work_dir: Path,
) -> None:
    hosts = make_hosts(2)
    cluster = make_test_cluster(hosts, masters=1, name="crash")
    worker = start_worker()
    job = job_request(cluster=cluster, kind=JobKind.INSTALL)

    wait_for(
        lambda: JobEvent.objects.filter(job=job, stage="workers", event="runner_on_start").exists(),
        timeout=300,
        what="the workers stage to start",
    )
    pid = Job.objects.get(pk=job.pk).ansible_pid
    assert pid and psutil.pid_exists(pid)
    worker.kill()

    # The job still looks running; its playbook may run on (its own session) or die with its terminal.
    assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING
    assert list(work_dir.iterdir())

    worker.start()  # the restarted worker fails the job at once, kills the orphan and removes its files
    job = wait_finished(job, timeout=30)
    assert job.status == JobStatus.FAILED
    assert job.explanation.startswith("Worker lost:") and "is gone" in job.explanation
    wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
        timeout=10,
        what="the orphaned playbook to die",
    )
    assert_nothing_left(work_dir)
    cluster.refresh_from_db()
    assert cluster.installation_stage == InstallationStage.FAILED
    assert Node.objects.get(cluster=cluster, hostname=hosts[1].name).status == NodeStatus.FAILED

    # The cluster is free again, and the install resumes from the stage that was cut off.
    resumed = job_request(cluster=cluster, kind=JobKind.INSTALL, params={"resume": True})
    assert resumed.stages == ["reachability", "workers", "all"]
    resumed = wait_finished(resumed)
    assert resumed.status == JobStatus.SUCCESSFUL, resumed.explanation
    cluster.refresh_from_db()
    assert cluster.installation_stage == InstallationStage.COMPLETE
    assert set(Node.objects.filter(cluster=cluster).values_list("status", flat=True)) == {NodeStatus.ACTIVE}
    assert_nothing_left(work_dir)
