"""``data-dir`` and ``write-kubeconfig`` move every path the jobs use, on systemd test hosts.

A cluster whose RKE2 keeps its data in another folder (``data-dir``) and whose server writes its admin kubeconfig
elsewhere (``write-kubeconfig``, kept from an adoption: operators cannot set it) is installed,
scaled out, its kubeconfig fetched, and uninstalled, each as a job run by the engine as a worker runs it. Nothing is
left in RKE2's default places, the kubeconfig works with a real kubectl, and uninstall removes the data folder and
the admin kubeconfig (a secret) from where they were moved to.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clusters.choices import JobKind, JobStatus
from clusters.engine.service import job_execute
from clusters.fields import reveal
from clusters.models import Cluster, Job, Node
from clusters.services.clusters import cluster_create
from clusters.services.credentials import credential_create
from clusters.services.jobs import job_request
from clusters.services.scaling import cluster_scale_out
from tests.standin_rke2.build import build_bundle
from tests.testhosts.harness import Host, HostNetwork

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

VERSION = "v1.31.4+rke2r1"
START_TIMEOUT = 120
STANDIN_KNOBS = {"server_start_delay": 0.2, "agent_start_delay": 0.2, "heartbeat_interval": 1, "node_monitor_grace": 12}
DATA_DIR = "/srv/rke2-moved"
KUBECONFIG = "/root/rke2-admin.yaml"
DEFAULT_DATA_DIR = "/var/lib/rancher/rke2"
DEFAULT_KUBECONFIG = "/etc/rancher/rke2/rke2.yaml"


@pytest.fixture(scope="module")
def hosts(systemd_host_network: HostNetwork) -> Iterator[dict[str, Host]]:
    network = systemd_host_network
    made = {host.name: host for host in network.add_hosts(names=["p1", "p2", "p3"])}
    try:
        yield made
    finally:
        network.destroy_hosts([host for host in made.values() if host in network.hosts])


def run(job: Job) -> Job:
    job_execute(job_id=job.pk)
    job.refresh_from_db()
    return job


def request(cluster: Cluster, kind: str, **params: Any) -> Job:
    return run(job_request(cluster=Cluster.objects.get(pk=cluster.pk), kind=kind, params=params))


def test_install_scale_out_kubeconfig_and_uninstall_follow_data_dir_and_write_kubeconfig(
    systemd_host_network: HostNetwork, hosts: dict[str, Host], settings: Any
) -> None:
    network = systemd_host_network
    work_dir = Path(tempfile.mkdtemp(prefix="paths-", dir=network.run_dir))
    settings.RKE2_INSTALL_METHOD = "airgap"
    # One folder per version, as RKE2_AIRGAP_ARTIFACT_DIR wants.
    build_bundle(work_dir / "airgap" / VERSION, VERSION, **STANDIN_KNOBS)
    settings.RKE2_AIRGAP_ARTIFACT_DIR = str(work_dir / "airgap")
    settings.RKE2_START_TIMEOUT_SECONDS = START_TIMEOUT
    settings.JOBS_WORK_DIR = work_dir / "jobs"
    settings.JOB_CANCEL_POLL_SECONDS = 0.5
    settings.JOB_EVENT_FLUSH_SECONDS = 0.2
    try:
        credential = credential_create(
            name="paths-root",
            username="root",
            become=False,
            private_key=network.private_key_text,
            known_hosts=network.known_hosts_text,
        )
        server, worker, added = hosts["p1"], hosts["p2"], hosts["p3"]
        cluster = cluster_create(
            name="paths",
            rke2_version=VERSION,
            ssh_credential=credential,
            nodes=[
                {"hostname": "p1", "internal_ip": server.ip, "role": "server"},
                {"hostname": "p2", "internal_ip": worker.ip, "role": "worker"},
            ],
        )
        Cluster.objects.filter(pk=cluster.pk).update(cluster_vars={"data-dir": DATA_DIR})
        # Operators cannot move the admin kubeconfig; a server of an adopted cluster keeps the path it had (an adopt
        # job records it as a kept key), and every job then reads the kubeconfig there.
        Node.objects.filter(cluster=cluster, hostname="p1").update(
            kept_config=json.dumps({"write-kubeconfig": KUBECONFIG})
        )

        install = request(cluster, JobKind.INSTALL)

        assert install.status == JobStatus.SUCCESSFUL, install.explanation
        assert server.path(f"{DATA_DIR}/server/db/etcd").is_dir()
        assert server.run(["stat", "-c", "%a", KUBECONFIG]).stdout.strip() == "600"
        assert not server.path(DEFAULT_KUBECONFIG).exists()
        for host in (server, worker):
            assert host.path(f"{DATA_DIR}/agent").is_dir(), host.name
            assert not host.path(DEFAULT_DATA_DIR).exists(), host.name
        config = yaml.safe_load(server.path("/etc/rancher/rke2/config.yaml").read_text())
        assert config["data-dir"] == DATA_DIR and config["write-kubeconfig"] == KUBECONFIG
        assert "write-kubeconfig" not in yaml.safe_load(worker.path("/etc/rancher/rke2/config.yaml").read_text())

        # Scale out: the new worker's join is checked with the server's kubectl and kubeconfig where they moved.
        _, scale = cluster_scale_out(
            cluster=Cluster.objects.get(pk=cluster.pk),
            nodes=[{"hostname": "p3", "internal_ip": added.ip, "role": "worker"}],
        )
        scale = run(scale)
        assert scale.status == JobStatus.SUCCESSFUL, scale.explanation
        assert added.path(f"{DATA_DIR}/agent").is_dir()
        assert not added.path(DEFAULT_DATA_DIR).exists()

        # The kubeconfig, fetched again from where RKE2 wrote it, works from here.
        fetched = request(cluster, JobKind.FETCH_KUBECONFIG)
        assert fetched.status == JobStatus.SUCCESSFUL, fetched.explanation
        cluster.refresh_from_db()
        local = work_dir / "kubeconfig"
        local.write_text(reveal(cluster.kubeconfig))
        local.chmod(0o600)
        listed = subprocess.run(
            ["kubectl", "--kubeconfig", str(local), "get", "nodes", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr
        assert sorted(listed.stdout.split()) == ["node/p1", "node/p2", "node/p3"]

        uninstall = request(cluster, JobKind.UNINSTALL, confirm=cluster.name)

        assert uninstall.status == JobStatus.SUCCESSFUL, uninstall.explanation
        for host in (server, worker, added):
            assert not host.path(DATA_DIR).exists(), host.name
            assert not host.path("/usr/local/bin/rke2").exists(), host.name
            # Nothing of RKE2 runs any more: killall found etcd under the moved data folder.
            processes = host.run(["ps", "-eo", "args"]).stdout
            assert "etcd" not in processes and "bin/rke2" not in processes, (host.name, processes)
        assert not server.path(KUBECONFIG).exists()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
