"""Pod networking through the portal's install jobs on systemd hosts, against the stand-in RKE2's CNI semantics.

A node is Ready once its CNI runs; the CNI's pod needs the CNI's airgap image archive and the overlay port open
between every pair of nodes (UDP 8472 for VXLAN with canal, UDP 4789 with calico); CoreDNS follows. Ports are
blocked with nftables inside one host's own network namespace. Jobs are requested through the service and run in
this process by the engine (``job_execute``), airgap method, as a worker runs them.

- canal with UDP 8472 blocked on one worker: the install fails in its post-install check, naming the node and the
  port; once the port is open, resuming the install completes it, every canal pod and CoreDNS Ready.
- calico: its own image archive is copied to the nodes (the core archive only with canal); a blocked UDP 8472 does
  not matter, a blocked UDP 4789 fails the install naming node and port.
- ``cni: none``: the install completes (servers registered, etcd healthy, kubeconfig stored) and says that the
  nodes wait for a CNI, without waiting for them to become Ready.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clusters.choices import JobKind, JobStatus, NodeStatus
from clusters.engine.service import job_execute
from clusters.fields import reveal
from clusters.models import Cluster, Job, JobEvent
from clusters.services.clusters import cluster_create
from clusters.services.credentials import credential_create
from clusters.services.jobs import job_request
from tests.standin_rke2.build import build_bundle
from tests.testhosts.harness import Host, HostNetwork

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

V1 = "v1.31.4+rke2r1"
FLAVOUR = "systemd"
CANAL = ("cn1", "cn2", "cn3")
CALICO = ("ck1", "ck2")
NO_CNI = ("cz1", "cz2")
# Bounds every wait of a job, the post-install check of pod networking included: a broken network fails in this time.
START_TIMEOUT = 30
STANDIN_KNOBS = {
    "server_start_delay": 0.2,
    "agent_start_delay": 0.2,
    "heartbeat_interval": 1,
    "node_monitor_grace": 12,
    "join_retry_interval": 1,
}
KUBECTL = "/var/lib/rancher/rke2/bin/kubectl"
IMAGES = "/var/lib/rancher/rke2/agent/images"
POD_CHECK = "Wait until the CNI and CoreDNS pods are Ready"


@dataclass
class Site:
    network: HostNetwork
    hosts: dict[str, Host]
    work_dir: Path
    airgap_dir: Path

    def add_hosts(self, names: Sequence[str]) -> None:
        self.hosts.update({host.name: host for host in self.network.add_hosts(names=list(names))})

    def cluster(self, name: str, nodes: Sequence[str], cni: str) -> Cluster:
        credential = credential_create(
            name=f"{name}-root",
            username="root",
            private_key=self.network.private_key_text,
            known_hosts=self.network.known_hosts_text,
        )
        return cluster_create(
            name=name,
            rke2_version=V1,
            cni=cni,
            ssh_credential=credential,
            nodes=[
                {"hostname": host, "internal_ip": self.hosts[host].ip, "role": "server" if index == 0 else "agent"}
                for index, host in enumerate(nodes)
            ],
        )

    def kubectl_json(self, via: str, *args: str) -> dict[str, Any]:
        completed = self.hosts[via].run(
            [KUBECTL, "--kubeconfig", "/etc/rancher/rke2/rke2.yaml", *args, "-o", "json"], timeout=60
        )
        assert completed.returncode == 0, completed.stderr
        return json.loads(completed.stdout)

    def node_ready(self, via: str) -> dict[str, str]:
        return {
            item["metadata"]["name"]: next(c["status"] for c in item["status"]["conditions"] if c["type"] == "Ready")
            for item in self.kubectl_json(via, "get", "nodes")["items"]
        }

    def pods_ready(self, via: str, selector: str) -> dict[str, str]:
        """{node: Ready status} of the pods matching ``selector``."""
        return {
            item["spec"].get("nodeName", ""): next(
                (c["status"] for c in item["status"].get("conditions", []) if c["type"] == "Ready"), "Unknown"
            )
            for item in self.kubectl_json(via, "get", "pods", "--all-namespaces", "--selector", selector)["items"]
        }

    def images(self, name: str) -> list[str]:
        listed = self.hosts[name].run(["ls", "-1", IMAGES])
        return sorted(listed.stdout.split())


@pytest.fixture(scope="module")
def site(host_network_of: Any) -> Iterator[Site]:
    network = host_network_of(FLAVOUR)
    work_dir = Path(tempfile.mkdtemp(prefix="cni-", dir=network.run_dir))
    airgap_dir = work_dir / "airgap"
    build_bundle(airgap_dir / V1, V1, **STANDIN_KNOBS)
    try:
        yield Site(network=network, hosts={}, work_dir=work_dir, airgap_dir=airgap_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture
def portal(site: Site, settings: Any) -> Iterator[Site]:
    """The portal configured for airgap installs from the stand-in bundle, with short waits. The hosts a test adds
    (``add_hosts``) are destroyed after it, so that only a few run at a time."""
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
        for host in site.hosts.values():
            if host in site.network.hosts:
                site.network.destroy_host(host)
        site.hosts = {}


def run_job(cluster: Cluster, kind: str, params: dict[str, Any] | None = None) -> Job:
    job = job_request(cluster=Cluster.objects.get(pk=cluster.pk), kind=kind, params=params or {})
    job_execute(job_id=job.pk)
    job.refresh_from_db()
    return job


def ok_hosts(job: Job, task: str) -> list[str]:
    return sorted(JobEvent.objects.filter(job=job, task=task, event="runner_on_ok").values_list("host_name", flat=True))


# ------------------------------------------------------------------------------------------------------------


def test_canal_install_fails_on_a_blocked_vxlan_port_naming_node_and_port(portal: Site) -> None:
    master, _, blocked = CANAL
    portal.add_hosts(CANAL)
    portal.hosts[blocked].block_port("udp", 8472, direction="in")
    cluster = portal.cluster("canal", CANAL, "canal")

    # The reachability check finds the blocked overlay port before anything is installed...
    checked = run_job(cluster, JobKind.INSTALL)

    assert checked.status == JobStatus.FAILED and checked.stage == "reachability", checked.explanation
    sources = [name for name in CANAL if name != blocked]
    for source in sources:
        assert f"{source} → {blocked} 8472/udp: no echo" in checked.explanation, checked.explanation
    assert {node.status for node in cluster.cluster_nodes.all()} == {NodeStatus.PENDING}

    # ... and without it, the install's own pod network check names the node and the port.
    failed = run_job(cluster, JobKind.INSTALL, {"check_reachability": False})

    assert failed.status == JobStatus.FAILED, failed.explanation
    assert failed.stage == "all"
    explanation = failed.explanation
    assert "Pod networking does not work" in explanation, explanation
    assert f"cannot reach {blocked} ({portal.hosts[blocked].ip}) on UDP 8472" in explanation, explanation
    assert f"on node {blocked}:" in explanation and "canal needs UDP 8472 (VXLAN) open between all nodes" in explanation
    assert "timed out" not in explanation.lower()
    # The nodes are Ready (their CNI runs); it is the overlay between them that is cut.
    assert portal.node_ready(master) == dict.fromkeys(CANAL, "True")

    portal.hosts[blocked].unblock_port("udp", 8472, direction="in")
    resumed = run_job(cluster, JobKind.INSTALL, {"resume": True})

    assert resumed.status == JobStatus.SUCCESSFUL, resumed.explanation
    assert resumed.stages == ["reachability", "all"]
    assert ok_hosts(resumed, POD_CHECK) == [master]
    assert portal.pods_ready(master, "k8s-app=canal") == dict.fromkeys(CANAL, "True")
    assert set(portal.pods_ready(master, "k8s-app=kube-dns").values()) == {"True"}
    assert "CNI" not in resumed.explanation
    cluster.refresh_from_db()
    assert reveal(cluster.kubeconfig)
    assert {node.hostname: node.status for node in cluster.cluster_nodes.all()} == dict.fromkeys(
        CANAL, NodeStatus.ACTIVE
    )
    # Airgap with canal: the core archive (which holds Canal's images) only.
    for name in CANAL:
        assert portal.images(name) == ["rke2-images.linux-amd64.tar.zst"], name


def test_calico_gets_its_image_archive_and_needs_udp_4789(portal: Site) -> None:
    master, agent = CALICO
    portal.add_hosts(CALICO)
    portal.hosts[agent].block_port("udp", 8472, direction="in")  # VXLAN port of the other CNIs: no matter
    portal.hosts[agent].block_port("udp", 4789, direction="in")
    cluster = portal.cluster("calico", CALICO, "calico")

    failed = run_job(cluster, JobKind.INSTALL, {"check_reachability": False})

    assert failed.status == JobStatus.FAILED, failed.explanation
    assert failed.stage == "all"
    assert f"cannot reach {agent} ({portal.hosts[agent].ip}) on UDP 4789" in failed.explanation, failed.explanation
    assert "calico needs UDP 4789 (VXLAN) open between all nodes" in failed.explanation
    assert "8472" not in failed.explanation
    for name in CALICO:
        assert portal.images(name) == ["rke2-images-calico.linux-amd64.tar.zst", "rke2-images.linux-amd64.tar.zst"]

    portal.hosts[agent].unblock_port("udp", 4789, direction="in")
    resumed = run_job(cluster, JobKind.INSTALL, {"resume": True})

    assert resumed.status == JobStatus.SUCCESSFUL, resumed.explanation
    assert portal.pods_ready(master, "k8s-app=calico-node") == dict.fromkeys(CALICO, "True")
    assert portal.hosts[agent].blocked_ports().get("in_udp") == [8472]


def test_without_cni_the_install_completes_and_says_nodes_wait_for_one(portal: Site) -> None:
    master, agent = NO_CNI
    portal.add_hosts(NO_CNI)
    cluster = portal.cluster("no-cni", NO_CNI, "none")

    job = run_job(cluster, JobKind.INSTALL)

    # Every wait is bounded by START_TIMEOUT: had the install waited for the nodes to become Ready, it would have
    # failed.
    assert job.status == JobStatus.SUCCESSFUL, job.explanation
    assert job.explanation.startswith("Completed: reachability, initial_master, joining_masters, workers, all.")
    assert f"The cluster has no CNI (cni: none): its nodes ({master}, {agent}) are registered" in job.explanation
    assert "wait for a CNI" in job.explanation
    assert job.result["facts"]["rke2_waiting_for_cni"] == [master, agent]
    assert ok_hosts(job, "Check that etcd is healthy") == [master]
    assert ok_hosts(job, POD_CHECK) == []
    cluster.refresh_from_db()
    assert reveal(cluster.kubeconfig)
    assert {node.hostname: node.status for node in cluster.cluster_nodes.all()} == dict.fromkeys(
        NO_CNI, NodeStatus.ACTIVE
    )
    assert {node.installed_version for node in cluster.cluster_nodes.all()} == {V1}
    # Kubernetes agrees: registered, kubelets posting status, NotReady for want of a CNI.
    assert portal.node_ready(master) == dict.fromkeys(NO_CNI, "False")
    for name in NO_CNI:
        assert portal.images(name) == ["rke2-images.linux-amd64.tar.zst"], name
