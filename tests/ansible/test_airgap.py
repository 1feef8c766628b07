"""Air-gap installs by version on systemd hosts: jobs requested through the service and run in this process by the
engine (``job_execute``), as a worker runs them, from RKE2_AIRGAP_ARTIFACT_DIR holding one folder per version.

- install of v1 then upgrade to v2, two version folders side by side (calico): each node gets only the tarball and
  checksum file of its version and architecture in the installer's staging folder (the stand-in installer records
  what it was given), and the core and calico image archives of that version straight in <data-dir>/agent/images;
  the installer never copies an image archive through its temporary folder under /tmp;
- a checksum mismatch fails the job before any node is changed, naming the file;
- a folder without the files of the nodes' architecture fails the job in the controller-side check at the start
  of the playbook, before any node is changed, naming the version, the folder and the missing files;
- a version folder removed after the request fails the job before any playbook runs.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clusters.choices import JobKind, JobStatus
from clusters.engine.service import job_execute
from clusters.models import Cluster, Job, JobEvent
from clusters.services.clusters import cluster_create
from clusters.services.credentials import credential_create
from clusters.services.jobs import job_request
from tests.standin_rke2.build import build_airgap_dir, build_bundle
from tests.testhosts.harness import Host, HostNetwork

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

V1 = "v1.31.4+rke2r1"
V2 = "v1.32.1+rke2r1"
FLAVOUR = "systemd"
START_TIMEOUT = 30
STANDIN_KNOBS = {
    "server_start_delay": 0.2,
    "agent_start_delay": 0.2,
    "heartbeat_interval": 1,
    "node_monitor_grace": 12,
    "join_retry_interval": 1,
}
IMAGES = "/var/lib/rancher/rke2/agent/images"
INSTALL_LOG = "/var/log/rke2-standin-install.log"
CALICO_ARCHIVES = ["rke2-images-calico.linux-amd64.tar.zst", "rke2-images.linux-amd64.tar.zst"]


@dataclass
class Site:
    network: HostNetwork
    hosts: dict[str, Host]
    work_dir: Path
    airgap_dir: Path

    def add_hosts(self, names: Sequence[str]) -> None:
        self.hosts.update({host.name: host for host in self.network.add_hosts(names=list(names))})

    def cluster(self, name: str, nodes: Sequence[str], cni: str = "calico", version: str = V1) -> Cluster:
        credential = credential_create(
            name=f"{name}-root",
            username="root",
            private_key=self.network.private_key_text,
            known_hosts=self.network.known_hosts_text,
        )
        return cluster_create(
            name=name,
            rke2_version=version,
            cni=cni,
            ssh_credential=credential,
            nodes=[
                {"hostname": host, "internal_ip": self.hosts[host].ip, "role": "server" if index == 0 else "agent"}
                for index, host in enumerate(nodes)
            ],
        )

    def run(self, name: str, argv: list[str]) -> str:
        completed = self.hosts[name].run(argv)
        return completed.stdout if completed.returncode == 0 else ""

    def images(self, name: str) -> list[str]:
        return sorted(self.run(name, ["ls", "-1", IMAGES]).split())

    def image_sums(self, name: str) -> dict[str, str]:
        lines = self.run(name, ["sh", "-c", f"cd {IMAGES} && sha256sum *"]).splitlines()
        return {line.split()[1]: line.split()[0] for line in lines}

    def install_log(self, name: str) -> str:
        return self.run(name, ["cat", INSTALL_LOG])

    def untouched(self, name: str) -> bool:
        """Nothing of RKE2 reached the node: no images folder, no binary, no installer run, no staging folder."""
        leftovers = self.run(
            name,
            [
                "sh",
                "-c",
                f"ls -d {IMAGES} /usr/local/bin/rke2 {INSTALL_LOG} /var/lib/rancher/rke2-install.* 2>/dev/null",
            ],
        )
        return leftovers.strip() == ""


@pytest.fixture(scope="module")
def site(host_network_of: Any) -> Iterator[Site]:
    network = host_network_of(FLAVOUR)
    work_dir = Path(tempfile.mkdtemp(prefix="airgap-", dir=network.run_dir))
    airgap_dir = build_airgap_dir(work_dir / "airgap", [V1, V2], **STANDIN_KNOBS)
    try:
        yield Site(network=network, hosts={}, work_dir=work_dir, airgap_dir=airgap_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture
def portal(site: Site, settings: Any) -> Iterator[Site]:
    jobs_dir = Path(tempfile.mkdtemp(prefix="jobs-", dir=site.work_dir))
    settings.RKE2_INSTALL_METHOD = "airgap"
    settings.RKE2_AIRGAP_ARTIFACT_DIR = str(site.airgap_dir)
    settings.RKE2_START_TIMEOUT_SECONDS = START_TIMEOUT
    settings.JOBS_WORK_DIR = jobs_dir
    settings.JOB_CANCEL_POLL_SECONDS = 0.5
    settings.JOB_PEXPECT_TIMEOUT_SECONDS = 0.5
    settings.JOB_EVENT_FLUSH_SECONDS = 0.2
    try:
        yield site
    finally:
        shutil.rmtree(jobs_dir, ignore_errors=True)
        site.network.destroy_hosts([host for host in site.hosts.values() if host in site.network.hosts])
        site.hosts = {}


def run_job(cluster: Cluster, kind: str, params: dict[str, Any] | None = None) -> Job:
    job = job_request(cluster=Cluster.objects.get(pk=cluster.pk), kind=kind, params=params or {})
    job_execute(job_id=job.pk)
    job.refresh_from_db()
    return job


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def staged_artifacts(log: str) -> list[list[str]]:
    """What the installer found in its artifact folder, one list per run."""
    return [sorted(line.split(": ", 1)[1].split()) for line in log.splitlines() if " artifact path " in line]


def other_airgap_dir(site: Site, name: str) -> Path:
    """A fresh RKE2_AIRGAP_ARTIFACT_DIR with V1 only, for a test to break."""
    return build_airgap_dir(site.work_dir / name, [V1], **STANDIN_KNOBS)


# ------------------------------------------------------------------------------------------------------------


def test_install_and_upgrade_across_two_version_folders_copy_only_the_right_files(portal: Site) -> None:
    nodes = ("ag1", "ag2")
    portal.add_hosts(nodes)
    cluster = portal.cluster("airgap", nodes)

    installed = run_job(cluster, JobKind.INSTALL)

    assert installed.status == JobStatus.SUCCESSFUL, installed.explanation
    v1 = portal.airgap_dir / V1
    for name in nodes:
        # Only the core archive (which holds Canal's images, not Calico's) and Calico's own, of V1.
        assert portal.images(name) == CALICO_ARCHIVES, name
        assert portal.image_sums(name) == {archive: sha256(v1 / archive) for archive in CALICO_ARCHIVES}
        log = portal.install_log(name)
        # The installer got the tarball and checksum file of amd64 only, and copied no image archive itself.
        assert staged_artifacts(log) == [["install.sh", "rke2.linux-amd64.tar.gz", "sha256sum-amd64.txt"]], log
        assert "image archive" not in log, log
        # The staging folder is gone.
        assert portal.run(name, ["sh", "-c", "ls -d /var/lib/rancher/rke2-install.* 2>/dev/null"]) == ""

    upgraded = run_job(cluster, JobKind.UPGRADE, {"target_version": V2})

    assert upgraded.status == JobStatus.SUCCESSFUL, upgraded.explanation
    cluster.refresh_from_db()
    assert cluster.rke2_version == V2
    assert {node.installed_version for node in cluster.cluster_nodes.all()} == {V2}
    v2 = portal.airgap_dir / V2
    for name in nodes:
        assert portal.run(name, ["/usr/local/bin/rke2", "--version"]).split()[2] == V2
        assert portal.image_sums(name) == {archive: sha256(v2 / archive) for archive in CALICO_ARCHIVES}, name
        log = portal.install_log(name)
        assert staged_artifacts(log) == [["install.sh", "rke2.linux-amd64.tar.gz", "sha256sum-amd64.txt"]] * 2, log
        assert "image archive" not in log, log


def test_a_checksum_mismatch_fails_before_any_node_is_changed_naming_the_file(portal: Site, settings: Any) -> None:
    nodes = ("ck1", "ck2")
    portal.add_hosts(nodes)
    root = other_airgap_dir(portal, "airgap-bad-sum")
    corrupt = root / V1 / "rke2-images-calico.linux-amd64.tar.zst"
    corrupt.write_bytes(corrupt.read_bytes() + b"tampered")
    settings.RKE2_AIRGAP_ARTIFACT_DIR = str(root)
    cluster = portal.cluster("badsum", nodes)

    failed = run_job(cluster, JobKind.INSTALL)

    assert failed.status == JobStatus.FAILED
    assert failed.stage == "reachability", failed.explanation
    assert "rke2-images-calico.linux-amd64.tar.zst: FAILED" in failed.explanation, failed.explanation
    assert "sha256sum-amd64.txt" in failed.explanation, failed.explanation
    for name in nodes:
        assert portal.untouched(name), name


def test_missing_files_of_the_node_architecture_fail_at_the_start_of_the_playbook(portal: Site, settings: Any) -> None:
    nodes = ("ar1",)
    portal.add_hosts(nodes)
    root = portal.work_dir / "airgap-arm64"
    build_bundle(root / V1, V1, arches=["arm64"], **STANDIN_KNOBS)
    settings.RKE2_AIRGAP_ARTIFACT_DIR = str(root)
    cluster = portal.cluster("arm", nodes)

    # The request is accepted (the folder holds a complete arm64 release; the nodes' architecture is unknown yet).
    failed = run_job(cluster, JobKind.INSTALL)

    assert failed.status == JobStatus.FAILED
    assert failed.stage == "reachability", failed.explanation
    explanation = failed.explanation
    assert f"The air-gap artifacts of RKE2 {V1} in {root / V1}" in explanation, explanation
    assert "rke2.linux-amd64.tar.gz" in explanation and "sha256sum-amd64.txt" in explanation, explanation
    assert not JobEvent.objects.filter(job=failed, task__startswith="Stage the image archives").exists()
    assert portal.untouched("ar1")


def test_a_version_folder_removed_after_the_request_fails_before_any_playbook(portal: Site, settings: Any) -> None:
    nodes = ("rm1",)
    portal.add_hosts(nodes)
    root = other_airgap_dir(portal, "airgap-removed")
    settings.RKE2_AIRGAP_ARTIFACT_DIR = str(root)
    cluster = portal.cluster("removed", nodes)
    job = job_request(cluster=Cluster.objects.get(pk=cluster.pk), kind=JobKind.INSTALL, params={})
    shutil.rmtree(root / V1)

    job_execute(job_id=job.pk)
    job.refresh_from_db()

    assert job.status == JobStatus.FAILED
    assert "could not start" in job.explanation, job.explanation
    assert f"No air-gap artifacts for RKE2 {V1}: the folder {root / V1} does not exist" in job.explanation
    assert not JobEvent.objects.filter(job=job, event="runner_on_ok").exists()
    assert portal.untouched("rm1")
