"""Day-2 operations end to end on systemd hosts running the stand-in RKE2: health that stays current, labels and taints
on a live node, certificate rotation.

A cluster of two servers and one agent is installed by the portal (install script from a release mirror on the test
network's gateway), then the jobs run in this process through the engine, as a worker runs them:

- the scheduled health sync reads every node's readiness, kubelet version and last heartbeat through one server
  (one host in the job, no fact gathering), turns the cluster ``degraded`` when an agent stops and ``active`` again
  when it is back, each change audited;
- labels and taints changed on the running agent are in Kubernetes at once (those the portal set before and no
  longer wants are removed; a label set by hand stays) and in the node's config.yaml, and RKE2 was not restarted;
- certificate rotation runs ``rke2 certificate rotate`` on the servers one at a time and restarts the agent: every
  server has new certificates (new serials, later notBefore) under the same CAs, the cluster is healthy afterwards
  and the stored kubeconfig holds the new admin certificate.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from clusters.choices import ClusterStatus, JobKind, JobStatus, NodeStatus
from clusters.engine.service import job_execute
from clusters.fields import reveal
from clusters.models import AuditLog, Cluster, Job, JobEvent, JobHostSummary, Node
from clusters.services.clusters import cluster_create
from clusters.services.credentials import credential_create
from clusters.services.health import health_sync_run
from clusters.services.jobs import job_request
from clusters.services.node_labels import node_labels_update
from tests.standin_rke2.release_server import ReleaseServer
from tests.testhosts.harness import Host, HostNetwork

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

V1 = "v1.31.4+rke2r1"
FLAVOUR = "systemd"
SERVERS, AGENT = ("dm1", "dm2"), "dw1"
START_TIMEOUT = 120
NODE_MONITOR_GRACE = 8
STANDIN_KNOBS = {
    "server_start_delay": 0.2,
    "agent_start_delay": 0.2,
    "heartbeat_interval": 1,
    "node_monitor_grace": NODE_MONITOR_GRACE,
    "join_retry_interval": 1,
}
KUBECTL = "/var/lib/rancher/rke2/bin/kubectl"
TLS = "/var/lib/rancher/rke2/server/tls"
# Certificates `rke2 certificate rotate` renews (the CAs stay).
ROTATED = ("client-admin.crt", "serving-kube-apiserver.crt", "etcd/server-client.crt", "etcd/peer-server-client.crt")


@dataclass
class Site:
    network: HostNetwork
    hosts: dict[str, Host]
    server: ReleaseServer
    work_dir: Path


@pytest.fixture(scope="module")
def site(host_network_of: Any) -> Iterator[Site]:
    network = host_network_of(FLAVOUR)
    work_dir = Path(tempfile.mkdtemp(prefix="day2-", dir=network.run_dir))
    hosts = {host.name: host for host in network.add_hosts(names=[*SERVERS, AGENT])}
    server = ReleaseServer(work_dir / "www", network.gateway_ip).start()
    try:
        server.publish(V1, **STANDIN_KNOBS)
        yield Site(network=network, hosts=hosts, server=server, work_dir=work_dir)
    finally:
        server.stop()
        network.destroy_hosts([host for host in hosts.values() if host in network.hosts])
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture
def portal(site: Site, settings: Any) -> Iterator[Site]:
    jobs_dir = Path(tempfile.mkdtemp(prefix="jobs-", dir=site.work_dir))
    settings.RKE2_INSTALL_METHOD = "script"
    settings.RKE2_INSTALL_SCRIPT_URL = site.server.script_url
    settings.RKE2_INSTALL_ARTIFACT_URL = site.server.artifact_url
    settings.RKE2_INSTALL_SCRIPT_SHA256 = ""
    settings.RKE2_START_TIMEOUT_SECONDS = START_TIMEOUT
    settings.JOBS_WORK_DIR = jobs_dir
    settings.JOB_CANCEL_POLL_SECONDS = 0.5
    settings.JOB_PEXPECT_TIMEOUT_SECONDS = 0.5
    settings.JOB_EVENT_FLUSH_SECONDS = 0.2
    try:
        yield site
    finally:
        shutil.rmtree(jobs_dir, ignore_errors=True)


def run(job: Job) -> Job:
    job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCESSFUL, f"{job.kind}: {job.explanation}"
    return job


def kubectl_json(host: Host, *args: str) -> Any:
    completed = host.run([KUBECTL, "--kubeconfig", "/etc/rancher/rke2/rke2.yaml", *args, "-o", "json"], timeout=60)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def ready_states(host: Host) -> dict[str, str]:
    states = {}
    for item in kubectl_json(host, "get", "nodes")["items"]:
        ready = next((c["status"] for c in item["status"]["conditions"] if c["type"] == "Ready"), "Unknown")
        states[item["metadata"]["name"]] = ready
    return states


def wait_for(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(1)


def unit_start(host: Host, unit: str) -> tuple[str, str]:
    """The unit's main PID and when it last became active: both change when it is restarted."""
    shown = host.systemctl("show", "-p", "MainPID", "-p", "ActiveEnterTimestampMonotonic", unit, check=True).stdout
    values = dict(line.split("=", 1) for line in shown.split())
    return values["MainPID"], values["ActiveEnterTimestampMonotonic"]


def certificate(host: Host, relative: str) -> dict[str, str]:
    completed = host.run(
        ["openssl", "x509", "-noout", "-serial", "-startdate", "-issuer", "-in", f"{TLS}/{relative}"], check=True
    )
    fields = dict(line.split("=", 1) for line in completed.stdout.strip().splitlines())
    return {"serial": fields["serial"], "not_before": fields["notBefore"], "issuer": fields["issuer"]}


def kubeconfig_client_certificate(text: str) -> str:
    user = yaml.safe_load(text)["users"][0]["user"]
    return base64.b64decode(user["client-certificate-data"]).decode()


def sync(cluster: Cluster) -> Job:
    requested = health_sync_run().requested
    job = Job.objects.get(pk__in=requested, cluster=cluster)
    return run(job)


def test_health_sync_live_labels_and_certificate_rotation(portal: Site) -> None:
    hosts = portal.hosts
    credential = credential_create(
        name="day2-root",
        username="root",
        private_key=portal.network.private_key_text,
        known_hosts=portal.network.known_hosts_text,
    )
    cluster = cluster_create(
        name="day2",
        rke2_version=V1,
        ssh_credential=credential,
        nodes=[{"hostname": name, "internal_ip": hosts[name].ip, "role": "server"} for name in SERVERS]
        + [
            {
                "hostname": AGENT,
                "internal_ip": hosts[AGENT].ip,
                "role": "agent",
                "labels": ["tier=app", "old=yes"],
                "taints": ["dedicated=batch:NoSchedule"],
            }
        ],
    )
    run(job_request(cluster=cluster, kind=JobKind.INSTALL))
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.ACTIVE

    # --- health sync: one server read, every node recorded -------------------------------------------------
    job = sync(cluster)
    assert list(JobHostSummary.objects.filter(job=job).values_list("host_name", flat=True)) == [SERVERS[0]]
    assert not JobEvent.objects.filter(job=job, task__icontains="gathering facts").exists()
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.ACTIVE and cluster.health_summary == f"All 3 nodes Ready on {V1}."
    for node in Node.objects.filter(cluster=cluster):
        assert node.k8s_ready is True and node.kubelet_version == V1 and node.last_seen_at is not None, node
    assert not AuditLog.objects.filter(action="job.request.health_sync").exists()

    # The agent stops: the next sync degrades the cluster; back, the next one restores it. Both audited.
    hosts[AGENT].systemctl("stop", "rke2-agent", check=True)
    wait_for("the agent is NotReady", lambda: ready_states(hosts[SERVERS[0]])[AGENT] != "True", NODE_MONITOR_GRACE * 4)
    sync(cluster)
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.DEGRADED and cluster.health_summary == f"Not Ready: {AGENT}."
    assert Node.objects.get(cluster=cluster, hostname=AGENT).k8s_ready is False
    hosts[AGENT].systemctl("start", "rke2-agent", check=True, timeout=START_TIMEOUT)
    wait_for("the agent is Ready", lambda: ready_states(hosts[SERVERS[0]])[AGENT] == "True")
    sync(cluster)
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.ACTIVE
    assert [entry.action for entry in AuditLog.objects.filter(action__startswith="cluster.health.").order_by("pk")] == [
        "cluster.health.degraded",
        "cluster.health.recovered",
    ]

    # --- labels and taints on the live agent, without a restart ---------------------------------------------
    kubectl_json(hosts[SERVERS[0]], "label", "node", AGENT, "manual=kept")
    before = unit_start(hosts[AGENT], "rke2-agent")
    node = Node.objects.get(cluster=cluster, hostname=AGENT)
    node, job = node_labels_update(node=node, labels=["tier=web", "zone=a"], taints=["gpu=true:NoSchedule"])
    assert job is not None
    run(job)
    live = kubectl_json(hosts[SERVERS[0]], "get", "node", AGENT)
    labels = live["metadata"]["labels"]
    assert labels["tier"] == "web" and labels["zone"] == "a" and labels["manual"] == "kept"
    assert "old" not in labels
    assert [(t["key"], t.get("value"), t["effect"]) for t in live["spec"].get("taints", [])] == [
        ("gpu", "true", "NoSchedule")
    ]
    config = yaml.safe_load(hosts[AGENT].run(["cat", "/etc/rancher/rke2/config.yaml"], check=True).stdout)
    assert config["node-label"] == ["tier=web", "zone=a"] and config["node-taint"] == ["gpu=true:NoSchedule"]
    assert config["token"] == reveal(cluster.token) and config["server"].endswith(":9345")
    assert unit_start(hosts[AGENT], "rke2-agent") == before, "RKE2 was restarted"
    assert reveal(cluster.token) not in "\n".join(JobEvent.objects.filter(job=job).values_list("stdout", flat=True))

    # --- certificate rotation ---------------------------------------------------------------------------------
    cluster.refresh_from_db()
    old_kubeconfig = reveal(cluster.kubeconfig)
    old = {name: {rel: certificate(hosts[name], rel) for rel in ROTATED} for name in SERVERS}
    agent_before = unit_start(hosts[AGENT], "rke2-agent")
    time.sleep(1.1)  # notBefore has a one-second resolution
    job = run(job_request(cluster=cluster, kind=JobKind.CERT_ROTATE))
    for name in SERVERS:
        for rel in ROTATED:
            new = certificate(hosts[name], rel)
            assert new["serial"] != old[name][rel]["serial"], (name, rel)
            assert new["issuer"] == old[name][rel]["issuer"], (name, rel)  # same CA
            assert time.mktime(time.strptime(new["not_before"], "%b %d %H:%M:%S %Y %Z")) > time.mktime(
                time.strptime(old[name][rel]["not_before"], "%b %d %H:%M:%S %Y %Z")
            ), (name, rel)
        backups = hosts[name].run(["sh", "-c", "ls -d /var/lib/rancher/rke2/server/tls-*"], check=True).stdout.split()
        assert len(backups) == 1, (name, backups)
    # Servers one at a time: the second stopped only after the first was Ready again.
    events = list(JobEvent.objects.filter(job=job, event="runner_on_ok").order_by("counter"))
    first_ready = max(e.counter for e in events if e.host_name == SERVERS[0] and "Ready" in e.task)
    second_stop = min(e.counter for e in events if e.host_name == SERVERS[1] and e.task == "Stop the RKE2 server")
    assert first_ready < second_stop
    assert unit_start(hosts[AGENT], "rke2-agent") != agent_before, "the agent was not restarted"
    # The stored kubeconfig changed and holds the API host's new admin certificate; it works.
    cluster.refresh_from_db()
    new_kubeconfig = reveal(cluster.kubeconfig)
    assert new_kubeconfig != old_kubeconfig
    api_admin = hosts[SERVERS[0]].run(["cat", f"{TLS}/client-admin.crt"], check=True).stdout
    assert kubeconfig_client_certificate(new_kubeconfig).strip() == api_admin.strip()
    assert ready_states(hosts[SERVERS[1]]) == {SERVERS[0]: "True", SERVERS[1]: "True", AGENT: "True"}
    run(job_request(cluster=cluster, kind=JobKind.HEALTH))
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.ACTIVE
    assert set(Node.objects.filter(cluster=cluster).values_list("status", flat=True)) == {NodeStatus.ACTIVE}
    text = "\n".join(JobEvent.objects.filter(job=job).values_list("stdout", flat=True))
    assert "client-key-data" not in text and reveal(cluster.token) not in text
