"""The Celery path with a real worker process and Redis (local fake playbooks, no SSH): a requested job is run
by the worker, and a worker killed mid-run leaves a job its successor fails at start-up."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from clusters.choices import ACTIVE_JOB_STATUSES, JobKind, JobStatus, NodeStatus
from clusters.models import Job, JobEvent, Node
from tests.worker import WorkerProcess

from .conftest import FakeProject, install_cluster_with, request

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def worker_settings(fake_project: FakeProject, jobs_dir: Path) -> dict[str, str]:
    return {
        "ANSIBLE_DIR": str(fake_project.path),
        "JOBS_WORK_DIR": str(jobs_dir),
        "JOB_HEARTBEAT_SECONDS": "1",
        "JOB_CANCEL_POLL_SECONDS": "0.2",
        "JOB_PEXPECT_TIMEOUT_SECONDS": "0.2",
        "SSH_HOST_KEY_TRUST_ON_FIRST_USE": "false",
    }


def wait_finished(job: Job, timeout: float = 120) -> Job:
    deadline = time.monotonic() + timeout
    while Job.objects.filter(pk=job.pk, status__in=ACTIVE_JOB_STATUSES).exists():
        assert time.monotonic() < deadline, f"job {job.pk} did not finish"
        time.sleep(0.2)
    job.refresh_from_db()
    return job


def test_a_requested_job_is_run_by_the_worker(
    worker_factory: Callable[..., WorkerProcess], fake_project: FakeProject, jobs_dir: Path
) -> None:
    worker = worker_factory(worker_settings(fake_project, jobs_dir))
    cluster = install_cluster_with(masters=1, workers=1)

    job = wait_finished(request(cluster, JobKind.INSTALL))

    assert job.status == JobStatus.SUCCESSFUL, job.explanation
    assert job.worker_pid in worker.pool_pids()
    assert set(Node.objects.filter(cluster=cluster).values_list("status", flat=True)) == {NodeStatus.ACTIVE}
    assert JobEvent.objects.filter(job=job).count() == job.emitted_events > 0
    # The worker process lets go of its run marker right after it has written the job's end.
    deadline = time.monotonic() + 10
    while list(jobs_dir.iterdir()):
        assert time.monotonic() < deadline, list(jobs_dir.iterdir())
        time.sleep(0.1)


def test_a_job_of_a_killed_worker_is_failed_when_a_worker_starts(
    worker_factory: Callable[..., WorkerProcess], fake_project: FakeProject, jobs_dir: Path
) -> None:
    worker = worker_factory(worker_settings(fake_project, jobs_dir))
    cluster = install_cluster_with(masters=1, workers=1)
    fake_project.set(sleep={"initial_master": 120})
    job = request(cluster, JobKind.INSTALL)
    deadline = time.monotonic() + 60
    while not (
        Job.objects.filter(pk=job.pk, stage="initial_master", ansible_pid__isnull=False).exists()
        and any(p.info["cmdline"] == ["sleep", "120"] for p in psutil.process_iter(["cmdline"]))
    ):
        assert time.monotonic() < deadline, "the playbook of stage initial_master did not start"
        time.sleep(0.1)
    playbook = Job.objects.get(pk=job.pk).ansible_pid

    worker.kill()  # the playbook may run on without its worker (its own session), or die with its terminal
    worker.start()

    job = wait_finished(job, timeout=30)
    assert job.status == JobStatus.FAILED and job.explanation.startswith("Worker lost:")
    deadline = time.monotonic() + 10
    while psutil.pid_exists(playbook) and psutil.Process(playbook).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the orphaned playbook was not killed"
        time.sleep(0.1)
    assert list(jobs_dir.iterdir()) == []
    assert Node.objects.get(cluster=cluster, role="initial_master").status == NodeStatus.FAILED

    fake_project.set(sleep={})
    resumed = wait_finished(request(cluster, JobKind.INSTALL, {"resume": True}))
    assert resumed.status == JobStatus.SUCCESSFUL, resumed.explanation
