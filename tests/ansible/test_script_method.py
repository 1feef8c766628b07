"""The default install method, ``script``, end to end on systemd hosts: jobs of the portal's engine run the real
playbooks, which download the install script on each node and let it download the release from a mirror.

A small HTTP server on the test network's gateway (:mod:`tests.standin_rke2.release_server`) stands in for
get.rke2.io and RKE2's GitHub releases: it serves the stand-in's install.sh and the stand-in releases in GitHub's
layout. The portal is configured the way a site with an internal mirror configures it: ``RKE2_INSTALL_METHOD=script``,
``RKE2_INSTALL_SCRIPT_URL`` (the script), ``RKE2_INSTALL_ARTIFACT_URL`` (the release mirror, passed to the script as
``INSTALL_RKE2_ARTIFACT_URL``) and ``RKE2_INSTALL_SCRIPT_SHA256`` (the script pinned). Jobs are requested through
the service and run in this process by the engine (``job_execute``), as a worker runs them.

The tests: install, scale-out and upgrade; a release whose tarball does not match its checksum, an install script
that cannot be reached, a script that does not match its pinned sha256 and a release mirror that cannot be reached
(each a failed job whose explanation says what went wrong, on which node, at which address); RKE2 installed from
RPM packages (an ``rpm`` that answers for ``rke2-common``, as RKE2's installer asks it), which preflight reports and
the installer refuses; and the stand-in installer's download with wget when curl is missing.
"""

from __future__ import annotations

import hashlib
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
from clusters.models import Cluster, Job, JobEvent
from clusters.services.clusters import cluster_create, nodes_add
from clusters.services.credentials import credential_create
from clusters.services.jobs import job_request
from tests.standin_rke2.release_server import RELEASES_PATH, ReleaseServer, closed_port_url
from tests.testhosts.harness import Host, HostNetwork

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

V1 = "v1.31.4+rke2r1"
V2 = "v1.32.1+rke2r1"
FLAVOUR = "systemd"
MASTER, WORKER, EXTRA_WORKER, SPARE = "sm1", "sw1", "sw2", "sx1"
START_TIMEOUT = 120
STANDIN_KNOBS = {
    "server_start_delay": 0.2,
    "agent_start_delay": 0.2,
    "heartbeat_interval": 1,
    "node_monitor_grace": 12,
    "join_retry_interval": 1,
}
KUBECTL = "/var/lib/rancher/rke2/bin/kubectl"
TAMPERED_MIRROR = "tampered/releases"
# What `rpm -q` answers on a host where RKE2 was installed from its RPM packages (test fixture: an executable on the
# host's PATH; RKE2's installer asks `rpm -q rke2-common`).
FAKE_RPM = """#!/bin/sh
# rpm as it answers queries on a host with RKE2's RPM packages installed (test fixture).
installed="rke2-common-1.31.4~rke2r1-0.el9.x86_64 rke2-server-1.31.4~rke2r1-0.el9.x86_64 rke2-selinux-0.18-1.el9.noarch"
case "$1" in -q|--query) shift ;; *) echo "rpm: only queries are answered on this host" >&2; exit 1 ;; esac
quiet=false
missing=0
for name in "$@"; do
    case "$name" in --quiet) quiet=true; continue ;; -*) continue ;; esac
    found=""
    for package in $installed; do
        case "$package" in "$name"-[0-9]*) found=$package ;; esac
    done
    if [ -n "$found" ]; then
        $quiet || echo "$found"
    else
        $quiet || echo "package $name is not installed"
        missing=$((missing + 1))
    fi
done
exit $missing
"""


@dataclass
class Site:
    """The module's hosts, release server and job settings."""

    network: HostNetwork
    hosts: dict[str, Host]
    server: ReleaseServer
    work_dir: Path

    def release_paths(self, version: str, mirror: str = RELEASES_PATH) -> list[str]:
        """What the install script downloads for ``version``, in order, as the server records it."""
        return [f"/{mirror}/{version}/sha256sum-amd64.txt", f"/{mirror}/{version}/rke2.linux-amd64.tar.gz"]

    def downloads(self, name: str) -> list[str]:
        return self.server.downloads().get(self.hosts[name].ip, [])

    def cluster(self, name: str, nodes: Sequence[tuple[str, str]]) -> Cluster:
        credential = credential_create(
            name=f"{name}-root",
            username="root",
            private_key=self.network.private_key_text,
            known_hosts=self.network.known_hosts_text,
        )
        return cluster_create(
            name=name,
            rke2_version=V1,
            ssh_credential=credential,
            nodes=[{"hostname": host, "internal_ip": self.hosts[host].ip, "role": role} for host, role in nodes],
        )

    def node_states(self, via: str = MASTER) -> dict[str, str]:
        completed = self.hosts[via].run(
            [KUBECTL, "--kubeconfig", "/etc/rancher/rke2/rke2.yaml", "get", "nodes", "-o", "json"], timeout=60
        )
        assert completed.returncode == 0, completed.stderr
        states = {}
        for item in json.loads(completed.stdout)["items"]:
            ready = next((c["status"] for c in item["status"]["conditions"] if c["type"] == "Ready"), "Unknown")
            states[item["metadata"]["name"]] = f"{ready} {item['status']['nodeInfo']['kubeletVersion']}"
        return states


@pytest.fixture(scope="module")
def site(host_network_of: Any) -> Iterator[Site]:
    network = host_network_of(FLAVOUR)
    work_dir = Path(tempfile.mkdtemp(prefix="script-", dir=network.run_dir))
    hosts = {host.name: host for host in network.add_hosts(names=[MASTER, WORKER, EXTRA_WORKER, SPARE])}
    server = ReleaseServer(work_dir / "www", network.gateway_ip).start()
    try:
        for version in (V1, V2):
            server.publish(version, **STANDIN_KNOBS)
        server.publish_tampered(V1, TAMPERED_MIRROR)
        yield Site(network=network, hosts=hosts, server=server, work_dir=work_dir)
    finally:
        server.stop()
        for host in hosts.values():
            if host in network.hosts:
                network.destroy_host(host)
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture
def portal(site: Site, settings: Any) -> Iterator[Site]:
    """The portal configured for the script method against the site's mirror, the install script pinned."""
    jobs_dir = Path(tempfile.mkdtemp(prefix="jobs-", dir=site.work_dir))
    settings.RKE2_INSTALL_METHOD = "script"
    settings.RKE2_INSTALL_SCRIPT_URL = site.server.script_url
    settings.RKE2_INSTALL_ARTIFACT_URL = site.server.artifact_url
    settings.RKE2_INSTALL_SCRIPT_SHA256 = hashlib.sha256((site.server.root / "install.sh").read_bytes()).hexdigest()
    settings.RKE2_START_TIMEOUT_SECONDS = START_TIMEOUT
    settings.JOBS_WORK_DIR = jobs_dir
    settings.JOB_CANCEL_POLL_SECONDS = 0.5
    settings.JOB_PEXPECT_TIMEOUT_SECONDS = 0.5
    settings.JOB_EVENT_FLUSH_SECONDS = 0.2
    site.server.clear_requests()
    try:
        yield site
    finally:
        shutil.rmtree(jobs_dir, ignore_errors=True)


def run_job(cluster: Cluster, kind: str, params: dict[str, Any] | None = None) -> Job:
    job = job_request(cluster=cluster, kind=kind, params=params or {})
    job_execute(job_id=job.pk)
    job.refresh_from_db()
    return job


def ok_hosts(job: Job, task: str) -> list[str]:
    return sorted(JobEvent.objects.filter(job=job, task=task, event="runner_on_ok").values_list("host_name", flat=True))


def rke2_installed(host: Host) -> bool:
    return host.run(["test", "-e", "/usr/local/bin/rke2"]).returncode == 0


# ------------------------------------------------------------------------------------------------------------


@pytest.mark.timeout(1500)  # four jobs; several minutes when the machine is busy
def test_install_scale_out_and_upgrade_with_the_install_script(portal: Site) -> None:
    cluster = portal.cluster("script", [(MASTER, "server"), (WORKER, "agent")])

    preflight = run_job(cluster, JobKind.PREFLIGHT)
    assert preflight.status == JobStatus.SUCCESSFUL, preflight.explanation

    install = run_job(cluster, JobKind.INSTALL)

    assert install.status == JobStatus.SUCCESSFUL, install.explanation
    assert ok_hosts(install, "Run the RKE2 install script") == [MASTER, WORKER]
    # Each node downloaded the (pinned) script, then the release from the mirror, once.
    for name in (MASTER, WORKER):
        assert portal.downloads(name) == ["/install.sh", *portal.release_paths(V1)], name
    assert portal.node_states() == {MASTER: f"True {V1}", WORKER: f"True {V1}"}
    assert {node.hostname: node.status for node in cluster.cluster_nodes.all()} == {
        MASTER: NodeStatus.ACTIVE,
        WORKER: NodeStatus.ACTIVE,
    }

    portal.server.clear_requests()
    nodes_add(
        cluster=Cluster.objects.get(pk=cluster.pk),
        nodes=[{"hostname": EXTRA_WORKER, "internal_ip": portal.hosts[EXTRA_WORKER].ip, "role": "agent"}],
    )
    scale = run_job(Cluster.objects.get(pk=cluster.pk), JobKind.SCALE_ADD)

    assert scale.status == JobStatus.SUCCESSFUL, scale.explanation
    assert portal.server.downloads() == {portal.hosts[EXTRA_WORKER].ip: ["/install.sh", *portal.release_paths(V1)]}
    assert portal.node_states()[EXTRA_WORKER] == f"True {V1}"

    portal.server.clear_requests()
    upgrade = run_job(Cluster.objects.get(pk=cluster.pk), JobKind.UPGRADE, {"target_version": V2})

    assert upgrade.status == JobStatus.SUCCESSFUL, upgrade.explanation
    assert ok_hosts(upgrade, "Run the RKE2 install script") == sorted([MASTER, WORKER, EXTRA_WORKER])
    for name in (MASTER, WORKER, EXTRA_WORKER):
        assert portal.downloads(name) == ["/install.sh", *portal.release_paths(V2)], name
    assert portal.node_states() == dict.fromkeys((MASTER, WORKER, EXTRA_WORKER), f"True {V2}")
    assert Cluster.objects.get(pk=cluster.pk).rke2_version == V2


@pytest.mark.parametrize(
    "case",
    ["tampered release", "unreachable script", "script checksum", "unreachable mirror"],
)
def test_a_download_that_goes_wrong_fails_the_job_with_the_reason(portal: Site, settings: Any, case: str) -> None:
    host = portal.hosts[SPARE]
    gateway = portal.network.gateway_ip
    if case == "tampered release":
        settings.RKE2_INSTALL_ARTIFACT_URL = portal.server.mirror_url(TAMPERED_MIRROR)
        expected = [
            f"RKE2 {V1} could not be installed on {SPARE}: the install script from {portal.server.script_url}",
            'exited with code 1 at step "verifying tarball": download sha256 does not match',
        ]
    elif case == "unreachable script":
        settings.RKE2_INSTALL_SCRIPT_URL = closed_port_url(gateway)
        expected = [
            f"The RKE2 install script could not be downloaded on {SPARE} from {settings.RKE2_INSTALL_SCRIPT_URL}",
            "(3 attempts of up to 30 s): Request failed",
            "Connection refused",
            "The node must reach this address (rke2_install_script_url, the portal's RKE2_INSTALL_SCRIPT_URL)",
        ]
    elif case == "script checksum":
        settings.RKE2_INSTALL_SCRIPT_SHA256 = "0" * 64
        expected = [
            f"The RKE2 install script could not be downloaded on {SPARE} from {portal.server.script_url}",
            "did not match",
            "The script must match the sha256 in rke2_install_script_sha256 (the portal's RKE2_INSTALL_SCRIPT_SHA256)",
        ]
    else:
        settings.RKE2_INSTALL_ARTIFACT_URL = closed_port_url(gateway, "/releases")
        checksums = f"{settings.RKE2_INSTALL_ARTIFACT_URL}/{V1.replace('+', '%2B')}/sha256sum-amd64.txt"
        expected = [
            f"RKE2 {V1} could not be installed on {SPARE}",
            f'exited with code 7 at step "downloading checksums at {checksums}": curl: (7) Failed to connect',
        ]
    cluster = portal.cluster("broken", [(SPARE, "server")])

    job = run_job(cluster, JobKind.INSTALL)

    assert job.status == JobStatus.FAILED
    assert job.stage == "initial_master"
    for text in expected:
        assert text in job.explanation, job.explanation
    assert not rke2_installed(host)
    assert cluster.cluster_nodes.get().status == NodeStatus.FAILED


def test_rke2_installed_from_rpm_packages_is_reported_by_preflight_and_refused_by_the_installer(portal: Site) -> None:
    host = portal.hosts[SPARE]
    written = host.run(["sh", "-c", "cat > /usr/local/bin/rpm && chmod 0755 /usr/local/bin/rpm"], input=FAKE_RPM)
    assert written.returncode == 0, written.stderr
    try:
        cluster = portal.cluster("rpm", [(SPARE, "server")])

        preflight = run_job(cluster, JobKind.PREFLIGHT)

        assert preflight.status == JobStatus.FAILED
        assert (
            f"RKE2 is installed from RPM packages on {SPARE} "
            "(rke2-common-1.31.4~rke2r1-0.el9.x86_64, rke2-server-1.31.4~rke2r1-0.el9.x86_64)"
        ) in preflight.explanation, preflight.explanation
        assert "remove them first" in preflight.explanation

        install = run_job(Cluster.objects.get(pk=cluster.pk), JobKind.INSTALL)

        assert install.status == JobStatus.FAILED
        assert (
            "Cannot perform tar install on host with existing RKE2 RPMs - please run rke2-uninstall.sh first"
            in install.explanation
        ), install.explanation
        assert not rke2_installed(host)
    finally:
        host.run(["rm", "-f", "/usr/local/bin/rpm"])


def test_the_standin_installer_downloads_with_wget_when_curl_is_missing(
    make_hosts: Any, host_network: HostNetwork
) -> None:
    # Namespace hosts share this machine's /usr, which has wget (the systemd hosts' root has curl only).
    (host,) = make_hosts(names=["swget"])
    root = Path(tempfile.mkdtemp(prefix="wget-", dir=host_network.run_dir))
    try:
        with ReleaseServer(root, host_network.gateway_ip) as server:
            server.publish(V1)
            # A PATH with every command of the host but curl (and one without curl and wget).
            path_without_curl = (
                'mkdir -p /tmp/bin && for f in /usr/bin/* /usr/sbin/*; do ln -sf "$f" /tmp/bin/; done'
                " && cp -a /tmp/bin /tmp/bin-none && rm -f /tmp/bin/curl /tmp/bin-none/curl /tmp/bin-none/wget"
            )
            host.run(["sh", "-c", path_without_curl], check=True)
            host.run(["sh", "-c", "cat > /tmp/install.sh"], input=(server.root / "install.sh").read_text(), check=True)
            env = {
                "INSTALL_RKE2_VERSION": V1,
                "INSTALL_RKE2_TYPE": "agent",
                "INSTALL_RKE2_ARTIFACT_URL": server.artifact_url,
            }

            neither = host.run(["env", "PATH=/tmp/bin-none", "sh", "/tmp/install.sh"], env=env)
            assert neither.returncode == 1
            assert "can not find curl or wget for downloading files" in neither.stderr

            installed = host.run(["env", "PATH=/tmp/bin", "sh", "/tmp/install.sh"], env=env, timeout=120)
            assert installed.returncode == 0, installed.stderr
            assert (
                f"downloading tarball at {server.artifact_url}/{V1.replace('+', '%2B')}/rke2.linux-amd64.tar.gz"
                in installed.stdout
            )
            assert host.run(["/usr/local/bin/rke2", "--version"]).stdout.startswith(f"rke2 version {V1} ")
            assert server.downloads() == {
                host.ip: [
                    f"/{RELEASES_PATH}/{V1}/sha256sum-amd64.txt",
                    f"/{RELEASES_PATH}/{V1}/rke2.linux-amd64.tar.gz",
                ]
            }
            assert {request.user_agent.split("/")[0] for request in server.requests} == {"Wget"}
    finally:
        shutil.rmtree(root, ignore_errors=True)
