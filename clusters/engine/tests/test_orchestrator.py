"""Jobs run in-process by the engine against the local fake playbooks: stages, recorded state, cancel, timeouts."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from clusters.choices import ClusterStatus, InstallationStage, JobKind, JobStatus, NodeStatus
from clusters.engine.redaction import MASK
from clusters.engine.service import job_execute
from clusters.fields import reveal
from clusters.models import Cluster, Job, JobEvent, JobHostSummary, Node
from clusters.selectors import job_stdout_chunks
from clusters.services.jobs import job_cancel
from clusters.tests.factories import mark_installed

from .conftest import KUBECONFIG, FakeProject, install_cluster_with, request

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def statuses(cluster: Cluster) -> dict[str, str]:
    return dict(Node.objects.filter(cluster=cluster).values_list("hostname", "status"))


def assert_counters_contiguous(job: Job) -> list[int]:
    counters = list(JobEvent.objects.filter(job=job).order_by("counter").values_list("counter", flat=True))
    assert counters == list(range(1, len(counters) + 1))
    return counters


def run_in_thread(job_id: int) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        from django.db import connection

        try:
            box["status"] = job_execute(job_id=job_id)
        finally:
            connection.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s")


def test_install_runs_every_stage_and_records_the_cluster(fake_project: FakeProject, jobs_dir: Path) -> None:
    cluster = install_cluster_with(masters=3, workers=2)
    job = request(cluster, JobKind.INSTALL)

    assert job_execute(job_id=job.pk) == JobStatus.SUCCESSFUL, "".join(job_stdout_chunks(job=job))[-3000:]

    job.refresh_from_db()
    cluster.refresh_from_db()
    assert job.status == JobStatus.SUCCESSFUL, job.explanation
    assert job.stages_completed == 5 and job.stage == "all"
    assert [stage["stage"] for stage in job.result["stages"]] == [
        "reachability",
        "initial_master",
        "joining_masters",
        "workers",
        "all",
    ]
    assert job.finished_at and job.started_at and job.worker_pid
    assert cluster.installation_stage == InstallationStage.COMPLETE
    assert cluster.status == ClusterStatus.ACTIVE
    assert cluster.bootstrapped_at is not None
    assert reveal(cluster.kubeconfig) == KUBECONFIG
    nodes = list(Node.objects.filter(cluster=cluster))
    assert {node.status for node in nodes} == {NodeStatus.ACTIVE}
    assert {node.installed_version for node in nodes} == {cluster.rke2_version}
    assert all(node.install_started_at and node.install_finished_at and node.last_job_id == job.pk for node in nodes)
    # Every event stored, numbered in one sequence across the stages, each tagged with its stage.
    counters = assert_counters_contiguous(job)
    assert job.emitted_events == len(counters)
    stages = set(JobEvent.objects.filter(job=job).values_list("stage", flat=True))
    assert stages == {"reachability", "initial_master", "joining_masters", "workers", "all"}
    assert JobEvent.objects.filter(job=job, event="playbook_on_stats").count() == 5
    summaries = {row.host_name: row for row in JobHostSummary.objects.filter(job=job)}
    assert set(summaries) == {node.hostname for node in nodes}
    assert all(row.ok > 0 and not row.failed for row in summaries.values())
    output = "".join(job_stdout_chunks(job=job))
    assert (
        output.index("STAGE [reachability]")
        < output.index("STAGE [initial_master]")
        < output.index("STAGE [joining_masters]")
        < output.index("STAGE [workers]")
    )
    assert "PLAY RECAP" in output
    assert list(jobs_dir.iterdir()) == []


def test_a_worker_without_the_virtualenv_on_its_path_finds_ansible_playbook(
    fake_project: FakeProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when the worker is started as .venv/bin/celery by a service manager, with a system PATH.
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    cluster = install_cluster_with(masters=1, workers=1)
    job = request(cluster, JobKind.INSTALL)

    assert job_execute(job_id=job.pk) == JobStatus.SUCCESSFUL, Job.objects.get(pk=job.pk).explanation


def test_a_failed_stage_stops_the_job_and_resume_starts_there(fake_project: FakeProject, jobs_dir: Path) -> None:
    cluster = install_cluster_with(masters=1, workers=2)
    fake_project.set(fail={"workers": ["alpha-w2"]})
    job = request(cluster, JobKind.INSTALL)

    assert job_execute(job_id=job.pk) == JobStatus.FAILED

    job.refresh_from_db()
    cluster.refresh_from_db()
    assert job.stage == "workers" and job.stages_completed == 3
    assert "alpha-w2" in job.explanation and "failed on alpha-w2 as told" in job.explanation
    assert cluster.installation_stage == InstallationStage.FAILED and cluster.status == ClusterStatus.FAILED
    assert cluster.bootstrapped_at is not None
    assert statuses(cluster) == {"alpha-s1": "active", "alpha-w1": "active", "alpha-w2": "failed"}
    failed = Node.objects.get(hostname="alpha-w2")
    assert "Fail when told to" in failed.last_error and "as told" in failed.last_error
    assert not JobEvent.objects.filter(job=job, stage="all").exists()

    fake_project.set(fail={})
    resumed = request(cluster, JobKind.INSTALL, {"resume": True})
    assert resumed.stages == ["reachability", "workers", "all"] and resumed.resume_of_id == job.pk
    assert job_execute(job_id=resumed.pk) == JobStatus.SUCCESSFUL
    cluster.refresh_from_db()
    assert cluster.installation_stage == InstallationStage.COMPLETE and cluster.status == ClusterStatus.ACTIVE
    assert set(statuses(cluster).values()) == {"active"}
    assert Node.objects.get(hostname="alpha-w2").last_error == ""
    assert list(jobs_dir.iterdir()) == []


def test_cancel_stops_the_playbook_within_seconds(fake_project: FakeProject, jobs_dir: Path) -> None:
    cluster = install_cluster_with(masters=1, workers=1)
    fake_project.set(sleep={"initial_master": 120})
    job = request(cluster, JobKind.INSTALL)
    thread, box = run_in_thread(job.pk)
    wait_for(lambda: Job.objects.filter(pk=job.pk, stage="initial_master").exists())
    wait_for(lambda: any(p.info["cmdline"] == ["sleep", "120"] for p in psutil.process_iter(["cmdline"])))
    pid = Job.objects.filter(pk=job.pk).values_list("ansible_pid", flat=True).first()

    canceled_at = time.monotonic()
    job_cancel(job=Job.objects.get(pk=job.pk))
    thread.join(15)

    assert not thread.is_alive()
    assert time.monotonic() - canceled_at < 6
    assert box["status"] == JobStatus.CANCELED
    job.refresh_from_db()
    cluster.refresh_from_db()
    assert job.status == JobStatus.CANCELED and "Canceled" in job.explanation and "initial_master" in job.explanation
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert Node.objects.get(hostname="alpha-s1").status == NodeStatus.FAILED
    assert Node.objects.get(hostname="alpha-s1").last_error == "Canceled."
    assert Node.objects.get(hostname="alpha-w1").status == NodeStatus.PENDING
    assert cluster.installation_stage == InstallationStage.FAILED
    assert list(jobs_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({"timeout_seconds": 3}, "may run for 3 s at most"), ({"idle_timeout_seconds": 3}, "no output for 3 s")],
)
def test_timeouts_fail_the_job_with_an_explanation(
    fake_project: FakeProject, jobs_dir: Path, fields: dict[str, int], expected: str
) -> None:
    cluster = install_cluster_with(masters=1, workers=0)
    fake_project.set(sleep={"initial_master": 60})
    job = request(cluster, JobKind.INSTALL)
    Job.objects.filter(pk=job.pk).update(**fields)
    started = time.monotonic()

    assert job_execute(job_id=job.pk) == JobStatus.FAILED

    assert time.monotonic() - started < 30
    job.refresh_from_db()
    assert "Timed out" in job.explanation and expected in job.explanation
    assert Node.objects.get(hostname="alpha-s1").status == NodeStatus.FAILED
    assert list(jobs_dir.iterdir()) == []


def test_events_are_stored_while_the_stage_runs(fake_project: FakeProject) -> None:
    cluster = install_cluster_with(masters=1, workers=0)
    fake_project.set(sleep={"initial_master": 4})
    job = request(cluster, JobKind.INSTALL)
    thread, _box = run_in_thread(job.pk)

    wait_for(lambda: JobEvent.objects.filter(job=job, task="Show what the host is given").exists(), timeout=20)

    assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING
    first = JobEvent.objects.filter(job=job, task="Show what the host is given").first()
    assert first is not None and first.created is not None and (first.ingested_at - first.created).total_seconds() < 2
    thread.join(60)
    assert Job.objects.get(pk=job.pk).status == JobStatus.SUCCESSFUL


def test_upgrade_records_the_new_version(fake_project: FakeProject) -> None:
    cluster = mark_installed(install_cluster_with(masters=1, workers=1))
    job = request(cluster, JobKind.UPGRADE, {"target_version": "v1.32.1+rke2r1"})

    assert job_execute(job_id=job.pk) == JobStatus.SUCCESSFUL

    cluster.refresh_from_db()
    assert cluster.rke2_version == "v1.32.1+rke2r1" and cluster.status == ClusterStatus.ACTIVE
    assert set(Node.objects.filter(cluster=cluster).values_list("installed_version", flat=True)) == {"v1.32.1+rke2r1"}


def test_scale_add_installs_only_the_new_nodes(fake_project: FakeProject) -> None:
    from clusters.services.scaling import cluster_scale_out

    cluster = mark_installed(install_cluster_with(masters=1, workers=1))
    _nodes, job = cluster_scale_out(
        cluster=cluster,
        nodes=[
            {"hostname": "alpha-m2", "internal_ip": "10.0.0.12", "role": "server"},
            {"hostname": "alpha-w2", "internal_ip": "10.0.0.102", "role": "agent"},
        ],
    )
    assert job.stages == ["reachability", "joining_masters", "workers"]

    assert job_execute(job_id=job.pk) == JobStatus.SUCCESSFUL

    cluster.refresh_from_db()
    assert set(statuses(cluster).values()) == {"active"} and cluster.status == ClusterStatus.ACTIVE
    job.refresh_from_db()
    # The reachability check involves every node (the new ones must reach the existing ones); the joins only the new.
    events = JobEvent.objects.filter(job=job).exclude(host_name="")
    checked = set(events.filter(stage="reachability").values_list("host_name", flat=True))
    assert checked == {"alpha-s1", "alpha-w1", "alpha-m2", "alpha-w2"}
    acted_on = set(events.exclude(stage="reachability").values_list("host_name", flat=True))
    assert acted_on == {"alpha-m2", "alpha-w2"} | acted_on.intersection({"alpha-s1"})
    assert "alpha-w1" not in acted_on


def test_scale_remove_removes_the_drained_nodes(fake_project: FakeProject) -> None:
    from clusters.services.scaling import cluster_scale_in

    cluster = mark_installed(install_cluster_with(masters=1, workers=2))
    _nodes, job = cluster_scale_in(cluster=cluster, hostnames=["alpha-w2"])

    assert job_execute(job_id=job.pk) == JobStatus.SUCCESSFUL

    assert statuses(cluster) == {"alpha-s1": "active", "alpha-w1": "active", "alpha-w2": "removed"}


def test_uninstall_resets_the_cluster_and_rotates_its_token(fake_project: FakeProject) -> None:
    cluster = mark_installed(install_cluster_with(masters=1, workers=1))
    Cluster.objects.filter(pk=cluster.pk).update(kubeconfig=KUBECONFIG)
    token = reveal(cluster.token)
    job = request(cluster, JobKind.UNINSTALL, {"confirm": cluster.name})

    assert job_execute(job_id=job.pk) == JobStatus.SUCCESSFUL

    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.UNINSTALLED and cluster.bootstrapped_at is None
    assert cluster.installation_stage == InstallationStage.NOT_STARTED
    assert reveal(cluster.kubeconfig) == "" and reveal(cluster.token) != token
    assert set(statuses(cluster).values()) == {"pending"}
    assert set(Node.objects.filter(cluster=cluster).values_list("installed_version", flat=True)) == {""}


def test_health_marks_nodes_that_are_not_ready(fake_project: FakeProject) -> None:
    cluster = mark_installed(install_cluster_with(masters=1, workers=2))
    fake_project.set(ready={"alpha-w1": False})
    job = request(cluster, JobKind.HEALTH)

    assert job_execute(job_id=job.pk) == JobStatus.SUCCESSFUL

    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.DEGRADED
    assert statuses(cluster) == {"alpha-s1": "active", "alpha-w1": "failed", "alpha-w2": "active"}
    assert "not Ready" in Node.objects.get(hostname="alpha-w1").last_error

    fake_project.set(ready={})
    assert job_execute(job_id=request(cluster, JobKind.HEALTH).pk) == JobStatus.SUCCESSFUL
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.ACTIVE and set(statuses(cluster).values()) == {"active"}


def test_fetch_kubeconfig_stores_it_encrypted(fake_project: FakeProject) -> None:
    cluster = mark_installed(install_cluster_with(masters=1, workers=0))
    job = request(cluster, JobKind.FETCH_KUBECONFIG)

    assert job_execute(job_id=job.pk) == JobStatus.SUCCESSFUL

    cluster.refresh_from_db()
    assert reveal(cluster.kubeconfig) == KUBECONFIG
    stored = Cluster.objects.filter(pk=cluster.pk).values_list("kubeconfig", flat=True)
    assert "client-key-data" not in str(list(stored.values("kubeconfig")))
    assert not JobEvent.objects.filter(job=job, stdout__contains="U0VDUkVUQ0xJRU5US0VZ").exists()


def test_preflight_records_findings_without_changing_statuses(fake_project: FakeProject) -> None:
    cluster = install_cluster_with(masters=1, workers=1)
    fake_project.set(fail={"preflight": ["alpha-w1"]})
    job = request(cluster, JobKind.PREFLIGHT)

    assert job_execute(job_id=job.pk) == JobStatus.FAILED

    assert set(statuses(cluster).values()) == {"pending"}
    assert "as told" in Node.objects.get(hostname="alpha-w1").last_error
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.NEW


def test_secret_values_are_masked_in_stored_events(fake_project: FakeProject) -> None:
    cluster = install_cluster_with(masters=1, workers=0)
    fake_project.set(echo_token=True)
    job = request(cluster, JobKind.INSTALL)

    job_execute(job_id=job.pk)

    token = reveal(cluster.token)
    shown = JobEvent.objects.filter(job=job, task="Show what the host is given", event="runner_on_ok")
    assert shown.exists()
    for event in JobEvent.objects.filter(job=job):
        assert token not in event.stdout and token not in str(event.event_data)
    given = shown.filter(stage__in=["initial_master", "all"])
    assert given.exists() and all(f"token {MASK}" in event.stdout for event in given)


def test_stages_that_render_no_configuration_get_no_secret_variables(fake_project: FakeProject) -> None:
    cluster = install_cluster_with(masters=1, workers=1)
    mark_installed(cluster)
    fake_project.set(echo_token=True)

    for kind in (JobKind.PREFLIGHT, JobKind.UPGRADE):
        job = request(cluster, kind, {"target_version": "v1.32.1+rke2r1"} if kind == JobKind.UPGRADE else None)
        assert job_execute(job_id=job.pk) == JobStatus.SUCCESSFUL, job.pk
        shown = JobEvent.objects.filter(job=job, task="Show what the host is given", event="runner_on_ok")
        assert shown.exists()
        for event in shown:
            expected = f"token {MASK}" if event.stage == "upgrade" else "token not given"
            assert expected in event.stdout, (event.stage, event.stdout)
    assert JobEvent.objects.filter(job=job, stage="upgrade", task="Show what the host is given").exists()


def test_stages_after_a_passed_reachability_check_do_not_prepare_its_hosts_again(fake_project: FakeProject) -> None:
    cluster = install_cluster_with(masters=1, workers=1)
    job = request(cluster, JobKind.INSTALL)

    assert job_execute(job_id=job.pk) == JobStatus.SUCCESSFUL

    shown = JobEvent.objects.filter(job=job, task="Show what the host is given", event="runner_on_ok")
    said = {(event.stage, event.host_name): event.stdout.split("prepared before: ")[1].split('"')[0] for event in shown}
    assert said[("reachability", "alpha-s1")] == "none"
    assert said[("initial_master", "alpha-s1")] == "alpha-s1,alpha-w1"
    assert said[("workers", "alpha-w1")] == "alpha-s1,alpha-w1"


def test_without_the_reachability_check_every_stage_prepares_its_hosts(fake_project: FakeProject) -> None:
    cluster = install_cluster_with(masters=1, workers=1)
    job = request(cluster, JobKind.INSTALL, {"check_reachability": False})

    assert job_execute(job_id=job.pk) == JobStatus.SUCCESSFUL

    shown = JobEvent.objects.filter(job=job, task="Show what the host is given", event="runner_on_ok")
    assert shown.exists() and not shown.filter(stage="reachability").exists()
    assert all("prepared before: none" in event.stdout for event in shown)


def test_a_job_failed_by_a_reaper_stops_its_playbook_and_keeps_the_reapers_verdict(
    fake_project: FakeProject, jobs_dir: Path
) -> None:
    cluster = install_cluster_with(masters=1, workers=0)
    fake_project.set(sleep={"initial_master": 120})
    job = request(cluster, JobKind.INSTALL)
    thread, box = run_in_thread(job.pk)
    pid = wait_for(lambda: Job.objects.filter(pk=job.pk).values_list("ansible_pid", flat=True).first())

    Job.objects.filter(pk=job.pk).update(status=JobStatus.FAILED, explanation="Worker lost: test")
    thread.join(15)

    assert not thread.is_alive()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.explanation == "Worker lost: test"
    assert list(jobs_dir.iterdir()) == []
