"""Preflight on systemd hosts finds what breaks a join, before RKE2 runs: reachability between every pair of nodes
on the ports they must reach (from the portal's port table), a duplicate machine-id, and RKE2 already on a node.

Preflight jobs are requested through the service and run in this process by the engine (``job_execute``), as a
worker runs them. Ports are blocked with nftables inside one host's own network namespace (``block_port``): the
job fails naming exactly the pairs and the port that cannot be reached, in its explanation and in its structured
result (``result["facts"]["rke2_preflight_unreachable"]``); once unblocked, it passes. Ports a running RKE2 holds
(a stand-in process with RKE2's command line) count as listening. The clock skew thresholds are checked by running
the playbook with lower ones (the hosts' clocks cannot be set).

Cluster: two servers (m1 initial master, m2) and two agents (w1, w2), CNI canal (overlay 8472/udp).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clusters.choices import JobKind, JobStatus
from clusters.engine.service import job_execute
from clusters.models import Cluster, Job
from clusters.services.clusters import cluster_create
from clusters.services.credentials import credential_create
from clusters.services.jobs import job_request
from inventory.renderers import InventoryRenderer
from tests.testhosts.harness import Host, HostNetwork

from .playbooks import PlaybookRunner

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

FLAVOUR = "systemd"
M1, M2, W1, W2 = "pm1", "pm2", "pw1", "pw2"
ROLES = [(M1, "initial_master"), (M2, "master"), (W1, "worker"), (W2, "worker")]
SERVER_PORTS = [(9345, "tcp"), (6443, "tcp"), (2379, "tcp"), (2380, "tcp")]
NODE_PORTS = [(10250, "tcp"), (8472, "udp")]
# A process that stands in for a running RKE2 server: its command line is what preflight looks for, and it holds
# the supervisor port and the VXLAN port as RKE2 would.
FAKE_RKE2_SERVER = """
import socket, time
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); tcp.bind(("0.0.0.0", 9345))
tcp.listen(16)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", 8472))
time.sleep(600)
"""
FAKE_RKE2_BINARY = "#!/bin/sh\necho 'rke2 version v1.31.4+rke2r1 (0000000)'\n"


@dataclass
class Site:
    network: HostNetwork
    hosts: dict[str, Host]

    def cluster(self, name: str, nodes: Sequence[tuple[str, str]] = ROLES, *, user: str = "root") -> Cluster:
        credential = credential_create(
            name=f"{name}-{user}",
            username=user,
            become=user != "root",
            private_key=self.network.private_key_text,
            known_hosts=self.network.known_hosts_text,
        )
        return cluster_create(
            name=name,
            rke2_version="v1.31.4+rke2r1",
            cni="canal",
            ssh_credential=credential,
            nodes=[{"hostname": host, "internal_ip": self.hosts[host].ip, "role": role} for host, role in nodes],
        )


@pytest.fixture(scope="module")
def site(host_network_of: Any) -> Iterator[Site]:
    network = host_network_of(FLAVOUR)
    hosts = {host.name: host for host in network.add_hosts(names=[M1, M2, W1, W2])}
    try:
        yield Site(network=network, hosts=hosts)
    finally:
        network.destroy_hosts([host for host in hosts.values() if host in network.hosts])


@pytest.fixture
def portal(site: Site, settings: Any) -> Iterator[Site]:
    jobs_dir = Path(tempfile.mkdtemp(prefix="jobs-", dir=site.network.run_dir))
    settings.JOBS_WORK_DIR = jobs_dir
    settings.JOB_CANCEL_POLL_SECONDS = 0.5
    settings.JOB_PEXPECT_TIMEOUT_SECONDS = 0.5
    settings.JOB_EVENT_FLUSH_SECONDS = 0.2
    try:
        yield site
    finally:
        for host in site.hosts.values():
            host.unblock()
        shutil.rmtree(jobs_dir, ignore_errors=True)


def run_preflight(cluster: Cluster) -> Job:
    job = job_request(cluster=cluster, kind=JobKind.PREFLIGHT, params={})
    job_execute(job_id=job.pk)
    job.refresh_from_db()
    return job


def unreachable(job: Job) -> set[tuple[str, str, int, str]]:
    found = job.result["facts"]["rke2_preflight_unreachable"]
    return {(source, item["to"], item["port"], item["protocol"]) for source, items in found.items() for item in items}


def node_errors(cluster: Cluster) -> dict[str, str]:
    return {node.hostname: node.last_error for node in cluster.cluster_nodes.all() if node.last_error}


def test_preflight_passes_when_every_pair_reaches_each_other(portal: Site) -> None:
    cluster = portal.cluster("open")

    job = run_preflight(cluster)

    assert job.status == JobStatus.SUCCESSFUL, job.explanation
    facts = job.result["facts"]
    assert facts["rke2_preflight_unreachable"] == {M1: [], M2: [], W1: [], W2: []}
    hosts = facts["rke2_preflight_hosts"]
    # Probes made: a server reaches the other server on every server port and the node ports, and each agent on the
    # node ports; an agent reaches each server on supervisor, API and node ports, and the other agent on node ports.
    assert hosts[M1]["probes"] == len(SERVER_PORTS) + len(NODE_PORTS) + 2 * len(NODE_PORTS)
    assert hosts[W1]["probes"] == 2 * (2 + len(NODE_PORTS)) + len(NODE_PORTS)
    for name in (M1, M2, W1, W2):
        assert hosts[name]["install_method"] == "none"
        assert hosts[name]["rke2_version"] == ""
        assert abs(hosts[name]["clock_skew_seconds"]) < 30
        assert hosts[name]["not_probed"] == []
    assert "Unreachable" not in job.explanation and "Warnings" not in job.explanation
    # The listeners are gone: nothing listens on the checked ports any more.
    for host in portal.hosts.values():
        assert 9345 not in _listening(host), host.name
        assert host.run(["test", "-e", "/run/rke2-preflight-listeners.pid"]).returncode != 0


def test_listeners_started_through_sudo_serve_after_the_login_ends(portal: Site) -> None:
    cluster = portal.cluster("sudo", [(M1, "initial_master"), (W1, "worker")], user="deploy")

    job = run_preflight(cluster)

    assert job.status == JobStatus.SUCCESSFUL, job.explanation
    assert unreachable(job) == set()
    assert job.result["facts"]["rke2_preflight_hosts"][W1]["probes"] == 2 + len(NODE_PORTS)


def test_a_blocked_supervisor_port_names_exactly_the_pairs_that_cannot_reach_it(portal: Site) -> None:
    cluster = portal.cluster("blocked-tcp")
    portal.hosts[M2].block_port("tcp", 9345, direction="in")

    job = run_preflight(cluster)

    assert job.status == JobStatus.FAILED
    expected = {(source, M2, 9345, "tcp") for source in (M1, W1, W2)}
    assert unreachable(job) == expected, job.result["facts"]["rke2_preflight_unreachable"]
    for source in (M1, W1, W2):
        assert f"{source} → {M2} 9345/tcp: connection timed out" in job.explanation, job.explanation
    assert f"Unreachable ({len(expected)}): " in job.explanation
    assert set(node_errors(cluster)) == {M1, W1, W2}
    assert f"{W1} → {M2} 9345/tcp: connection timed out" in node_errors(cluster)[W1]

    portal.hosts[M2].unblock_port("tcp", 9345, direction="in")
    again = run_preflight(Cluster.objects.get(pk=cluster.pk))

    assert again.status == JobStatus.SUCCESSFUL, again.explanation
    assert unreachable(again) == set()


def test_a_blocked_overlay_port_names_exactly_the_pairs_that_cannot_reach_it(portal: Site) -> None:
    cluster = portal.cluster("blocked-udp")
    portal.hosts[W2].block_port("udp", 8472, direction="in")

    job = run_preflight(cluster)

    assert job.status == JobStatus.FAILED
    assert unreachable(job) == {(source, W2, 8472, "udp") for source in (M1, M2, W1)}
    for source in (M1, M2, W1):
        assert f"{source} → {W2} 8472/udp: no echo within 3 s" in job.explanation, job.explanation
    assert "9345" not in job.explanation and "10250" not in job.explanation


def test_an_install_checks_reachability_first_and_installs_nothing_when_a_pair_fails(
    portal: Site, settings: Any
) -> None:
    # Nothing is downloaded: the job ends in its reachability stage, before any install stage.
    settings.RKE2_INSTALL_METHOD = "script"
    cluster = portal.cluster("install-blocked")
    portal.hosts[M1].block_port("tcp", 6443, direction="in")

    job = job_request(cluster=cluster, kind=JobKind.INSTALL, params={})
    assert job.stages == ["reachability", "initial_master", "joining_masters", "workers", "all"]
    job_execute(job_id=job.pk)
    job.refresh_from_db()

    assert job.status == JobStatus.FAILED and job.stage == "reachability", job.explanation
    assert job.stages_completed == 0
    assert unreachable(job) == {(source, M1, 6443, "tcp") for source in (M2, W1, W2)}
    for source in (M2, W1, W2):
        assert f"{source} → {M1} 6443/tcp: connection timed out" in job.explanation, job.explanation
    # The hosts were prepared (a host refused there fails before the check), nothing was installed or started.
    assert {node.status for node in cluster.cluster_nodes.all()} == {"pending"}
    assert set(node_errors(cluster)) == {M2, W1, W2}
    for host in portal.hosts.values():
        assert host.run(["test", "-e", "/usr/local/bin/rke2"]).returncode != 0, host.name
        assert host.run(["test", "-e", "/etc/rancher/rke2/config.yaml"]).returncode != 0, host.name
        assert 9345 not in _listening(host), host.name
    assert not job.events.filter(stage="initial_master").exists()


def test_a_duplicate_machine_id_and_an_existing_rke2_are_reported(portal: Site) -> None:
    cluster = portal.cluster("cloned")
    m1, w2, w1 = portal.hosts[M1], portal.hosts[W2], portal.hosts[W1]
    original = w2.run(["cat", "/etc/machine-id"]).stdout
    copied = m1.run(["cat", "/etc/machine-id"]).stdout
    assert copied.strip() and copied != original
    written = w2.run(["sh", "-c", "cat > /etc/machine-id"], input=copied)
    assert written.returncode == 0, written.stderr
    binary = w1.run(["sh", "-c", "cat > /usr/local/bin/rke2 && chmod 0755 /usr/local/bin/rke2"], input=FAKE_RKE2_BINARY)
    assert binary.returncode == 0, binary.stderr
    try:
        job = run_preflight(cluster)
    finally:
        w2.run(["sh", "-c", "cat > /etc/machine-id"], input=original)
        w1.run(["rm", "-f", "/usr/local/bin/rke2"])

    assert job.status == JobStatus.FAILED
    errors = node_errors(cluster)
    assert set(errors) == {M1, W2}, errors
    assert f"{M1} shares its machine-id {copied.strip()} with {W2}" in errors[M1]
    assert f"{W2} shares its machine-id {copied.strip()} with {M1}" in errors[W2]
    assert unreachable(job) == set()
    hosts = job.result["facts"]["rke2_preflight_hosts"]
    assert hosts[W1]["install_method"] == "tar" and hosts[W1]["rke2_version"] == "v1.31.4+rke2r1"
    assert f"RKE2 found: {W1} v1.31.4+rke2r1 (tar)." in job.explanation, job.explanation


def test_ports_held_by_a_running_rke2_count_as_listening(portal: Site) -> None:
    """A scale-out: the existing server runs RKE2, which holds its ports; the new nodes reach it there."""
    cluster = portal.cluster("running", [(M1, "initial_master"), (W1, "worker")])
    m1 = portal.hosts[M1]
    started = m1.run(
        ["systemd-run", "--unit=standin-rke2-server", "--", "bash", "-c",
         f'exec -a "/usr/local/bin/rke2 server" python3 -c {_quote(FAKE_RKE2_SERVER)}'],
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        _wait_listening(m1, 9345)
        job = run_preflight(cluster)
        blocked = None
        m1.block_port("tcp", 9345, direction="in")
        blocked = run_preflight(Cluster.objects.get(pk=cluster.pk))
    finally:
        m1.unblock()
        m1.run(["systemctl", "stop", "standin-rke2-server"])

    assert job.status == JobStatus.SUCCESSFUL, job.explanation
    hosts = job.result["facts"]["rke2_preflight_hosts"]
    assert hosts[M1]["rke2_running"] == ["server"]
    assert hosts[W1]["not_probed"] == [
        {
            "to": M1,
            "address": m1.ip,
            "port": 8472,
            "protocol": "udp",
            "reason": "the port is held by another program on the peer (RKE2's own overlay, say)",
        }
    ]
    assert f"8472/udp on {M1}" in job.explanation
    # The port RKE2 holds is probed like a listener's: blocked, it is reported.
    assert blocked is not None and blocked.status == JobStatus.FAILED
    assert unreachable(blocked) == {(W1, M1, 9345, "tcp")}, blocked.explanation


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _listening(host: Host) -> set[int]:
    """The TCP ports something listens on in the host (state 0A in /proc/net/tcp*)."""
    tables = host.run(["sh", "-c", "cat /proc/net/tcp /proc/net/tcp6"]).stdout.splitlines()[1:]
    fields = [line.split() for line in tables]
    return {int(item[1].rsplit(":", 1)[1], 16) for item in fields if len(item) > 3 and item[3] == "0A"}


def _wait_listening(host: Host, port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if port in _listening(host):
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} on {host.name}")


def test_clock_skew_above_the_thresholds_warns_then_fails(portal: Site) -> None:
    """The thresholds are the role's defaults (30 s, 5 min); set to zero, any skew is above them."""
    cluster = portal.cluster("clock", [(M1, "initial_master"), (W1, "worker")])
    runner = PlaybookRunner(
        work_dir=Path(tempfile.mkdtemp(prefix="clock-", dir=portal.network.run_dir)),
        ssh_key=portal.network.private_key_text,
        envvars=portal.network.ansible_env(),
    )
    rendered = InventoryRenderer.render_for_operation(cluster)
    try:
        warned = runner.run("preflight.yml", rendered, {"rke2_preflight_skew_warn_seconds": 0})
        failed = runner.run(
            "preflight.yml",
            rendered,
            {"rke2_preflight_skew_warn_seconds": 0, "rke2_preflight_skew_error_seconds": 0},
        )
    finally:
        runner.cleanup()

    assert warned.status == "successful", warned.describe()
    warnings = warned.artifact_data["rke2_warnings"]
    assert set(warnings) == {M1, W1}
    for name in (M1, W1):
        assert "the controller's (more than 0 s): synchronise time (NTP) on every node." in warnings[name][0]
        assert abs(warned.artifact_data["rke2_preflight_hosts"][name]["clock_skew_seconds"]) < 30

    assert failed.status == "failed"
    failures = failed.failures()
    assert len(failures) == 2, failures
    for name in (M1, W1):
        assert any(line.startswith(f"{name}: Check the clock skew: The clock of {name} is ") for line in failures)
    assert all("(more than 0 s): certificates would not be valid between the nodes" in line for line in failures)


def _reachability_script() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "ansible/roles/rke2_preflight/files/reachability.py"
    spec = importlib.util.spec_from_file_location("reachability_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_probe_that_timed_out_is_made_once_more_and_a_refusal_is_not(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import socket
    from types import SimpleNamespace

    script = _reachability_script()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    attempts: list[int] = []
    real_probe = script._probe_tcp

    def busy_once(address: str, probed_port: int, timeout: float) -> str | None:
        attempts.append(probed_port)
        if attempts.count(probed_port) == 1 and probed_port == port:
            return "connection timed out"  # the first probe did not get the CPU in time
        return real_probe(address, probed_port, timeout)

    monkeypatch.setattr(script, "_probe_tcp", busy_once)
    args = SimpleNamespace(
        self="a",
        type="agent",
        timeout=1.0,
        peer=["a@127.0.0.1@agent@", "b@127.0.0.1@agent@"],
        check=[f"{port}/tcp/all/all", f"{closed_port}/tcp/all/all"],
    )
    try:
        assert script.probe(args) == 0
    finally:
        listener.close()

    result = json.loads(capsys.readouterr().out)
    assert result["probes"] == 2
    assert result["failures"] == [
        {"to": "b", "address": "127.0.0.1", "port": closed_port, "protocol": "tcp", "error": "connection refused"}
    ]
    assert sorted(attempts) == sorted([port, port, closed_port])
