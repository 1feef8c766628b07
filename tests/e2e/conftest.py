"""End-to-end fixtures: clusters on SSH test hosts, the stand-in RKE2 air-gap bundle, a real worker process.

A job goes the way it goes in production: ``job_request`` commits, the task message goes through the test Redis,
a ``celery worker`` process claims the job and runs the portal's own playbooks (``ansible/``) over SSH against the
test hosts, which install the stand-in RKE2 from the air-gap bundle.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from clusters.choices import ACTIVE_JOB_STATUSES
from clusters.models import Cluster, Job
from clusters.services.clusters import cluster_create
from clusters.services.credentials import credential_create
from tests.standin_rke2.build import build_bundle
from tests.testhosts.harness import Host, HostNetwork
from tests.worker import WorkerProcess, job_worker, worker_factory  # noqa: F401  (fixtures)

VERSION = "v1.31.4+rke2r1"
# Stand-in timings: quick, but slow enough that a stage is still running when a test interrupts it.
KNOBS = {"server_start_delay": 2.0, "agent_start_delay": 1.0, "heartbeat_interval": 1.0, "join_retry_interval": 1.0}


@pytest.fixture(scope="session")
def airgap_dir() -> Iterator[Path]:
    """Air-gap artifacts of the stand-in RKE2, one sub-folder per version (as RKE2_AIRGAP_ARTIFACT_DIR wants)."""
    path = Path(tempfile.mkdtemp(prefix="rke2-airgap-"))
    try:
        build_bundle(path / VERSION, VERSION, **KNOBS)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """The worker's JOBS_WORK_DIR (short: SSH control sockets live below it)."""
    path = Path(tempfile.mkdtemp(prefix="e2e-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def worker_env(airgap_dir: Path, work_dir: Path) -> dict[str, str]:
    return {
        "RKE2_INSTALL_METHOD": "airgap",
        "RKE2_AIRGAP_ARTIFACT_DIR": str(airgap_dir),
        "RKE2_START_TIMEOUT_SECONDS": "120",
        "JOBS_WORK_DIR": str(work_dir),
        "JOB_HEARTBEAT_SECONDS": "1",
        "JOB_CANCEL_POLL_SECONDS": "0.5",
        "JOB_PEXPECT_TIMEOUT_SECONDS": "0.5",
        "JOB_TIMEOUT_SECONDS": "900",
    }


@pytest.fixture
def start_worker(
    worker_factory: Callable[..., WorkerProcess],  # noqa: F811 - the fixture imported above
    worker_env: dict[str, str],
) -> Callable[..., WorkerProcess]:
    def start(**overrides: str) -> WorkerProcess:
        return worker_factory({**worker_env, **overrides})

    return start


@pytest.fixture
def make_test_cluster(host_network: HostNetwork, transactional_db: None) -> Callable[..., Cluster]:
    def make(hosts: Sequence[Host], *, masters: int = 1, name: str = "e2e") -> Cluster:
        credential = credential_create(
            name=f"{name}-root",
            username="root",
            private_key=host_network.private_key_text,
            known_hosts=host_network.known_hosts_text,
        )
        nodes = [
            {"hostname": host.name, "internal_ip": host.ip, "role": "server" if index < masters else "agent"}
            for index, host in enumerate(hosts)
        ]
        return cluster_create(name=name, rke2_version=VERSION, ssh_credential=credential, nodes=nodes)

    return make


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_finished(job: Job, *, timeout: float = 600) -> Job:
    wait_for(
        lambda: Job.objects.filter(pk=job.pk).exclude(status__in=ACTIVE_JOB_STATUSES).exists(),
        timeout=timeout,
        interval=0.5,
        what=f"job {job.pk} to finish",
    )
    job.refresh_from_db()
    return job
