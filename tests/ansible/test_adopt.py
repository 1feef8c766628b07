"""Adopting a cluster installed outside the portal, end to end on systemd hosts.

A cluster is installed by hand, the way operators installed clusters before the portal: RKE2's install script
(the stand-in's, from a release mirror on the test network's gateway) and a hand-written ``config.yaml`` with its
own token, a data directory of its own (``data-dir``) and keys the portal does not manage. It is then imported from
a JSON export that has no token (the portal generates a placeholder), adopted, scaled out with a new server and
upgraded through the portal's jobs, run in this process by the engine as a worker runs them.

What must hold: before the adopt job, jobs that would write ``config.yaml`` are refused; the adopt job changes
nothing on the nodes and stores the servers' real token (encrypted, never in job events); the new server joins and
every node is upgraded, so no server ever starts with another token (RKE2, and the stand-in, refuse that with
"bootstrap data already found and encrypted with different token"); and the keys the portal does not manage are
still in each node's ``config.yaml`` after the portal rewrote it.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.db import connection

from clusters.choices import JobKind, JobStatus, NodeStatus
from clusters.engine.service import job_execute
from clusters.exceptions import InvalidState
from clusters.fields import reveal
from clusters.models import Cluster, Job, JobEvent
from clusters.services.adoption import adoption_differences, kept_config_of, token_password
from clusters.services.clusters import cluster_update, nodes_add
from clusters.services.credentials import credential_create
from clusters.services.jobs import job_request
from tests.standin_rke2.release_server import ReleaseServer
from tests.testhosts.harness import Host, HostNetwork

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

V1 = "v1.31.4+rke2r1"
V2 = "v1.32.1+rke2r1"
FLAVOUR = "systemd"
SERVER, AGENT, NEW_SERVER = "lm1", "lw1", "lm2"
START_TIMEOUT = 120
STANDIN_KNOBS = {
    "server_start_delay": 0.2,
    "agent_start_delay": 0.2,
    "heartbeat_interval": 1,
    "node_monitor_grace": 12,
    "join_retry_interval": 1,
}
# The hand-installed cluster's own token (a bare password, as operators often chose), and its own data directory.
OWN_TOKEN = "handmade-" + hashlib.sha256(b"adopt-test").hexdigest()[:32]
DATA_DIR = "/srv/rke2"
EXTRA_KEYS = {"kubelet-arg": ["max-pods=150"], "data-dir": DATA_DIR}
WRONG_TOKEN = "bootstrap data already found and encrypted with different token"


@dataclass
class Site:
    network: HostNetwork
    hosts: dict[str, Host]
    server: ReleaseServer
    work_dir: Path


@pytest.fixture(scope="module")
def site(host_network_of: Any) -> Iterator[Site]:
    network = host_network_of(FLAVOUR)
    work_dir = Path(tempfile.mkdtemp(prefix="adopt-", dir=network.run_dir))
    hosts = {host.name: host for host in network.add_hosts(names=[SERVER, AGENT, NEW_SERVER])}
    server = ReleaseServer(work_dir / "www", network.gateway_ip).start()
    try:
        for version in (V1, V2):
            server.publish(version, **STANDIN_KNOBS)
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


def install_by_hand(site: Site, name: str, rke2_type: str, config: dict[str, Any]) -> None:
    """What an operator did before the portal: write config.yaml, run the install script, start the service."""
    host = site.hosts[name]
    text = yaml.safe_dump(config, sort_keys=False)
    host.run(["mkdir", "-p", "/etc/rancher/rke2"], check=True)
    host.run(["sh", "-c", "umask 077; cat > /etc/rancher/rke2/config.yaml"], input=text, check=True)
    script = (
        f"curl -sfL {site.server.script_url} | INSTALL_RKE2_VERSION={V1} INSTALL_RKE2_TYPE={rke2_type} "
        f"INSTALL_RKE2_ARTIFACT_URL={site.server.artifact_url} INSTALL_RKE2_AGENT_IMAGES_DIR={DATA_DIR}/agent/images sh -"
    )
    installed = host.run(["sh", "-c", script], timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    started = host.systemctl("enable", "--now", f"rke2-{rke2_type}", timeout=START_TIMEOUT + 60)
    assert started.returncode == 0, started.stderr + host.journal(f"rke2-{rke2_type}.service")[-3000:]


def main_pid(host: Host, unit: str) -> str:
    return host.systemctl("show", "-p", "MainPID", "--value", unit, check=True).stdout.strip()


def node_states(host: Host) -> dict[str, str]:
    completed = host.run(
        [f"{DATA_DIR}/bin/kubectl", "--kubeconfig", "/etc/rancher/rke2/rke2.yaml", "get", "nodes", "-o", "json"],
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    states = {}
    for item in json.loads(completed.stdout)["items"]:
        ready = next((c["status"] for c in item["status"]["conditions"] if c["type"] == "Ready"), "Unknown")
        states[item["metadata"]["name"]] = f"{ready} {item['status']['nodeInfo']['kubeletVersion']}"
    return states


def running_config(host: Host) -> dict[str, Any]:
    return yaml.safe_load(host.run(["cat", "/etc/rancher/rke2/config.yaml"], check=True).stdout)


def run_job(cluster: Cluster, kind: str, params: dict[str, Any] | None = None) -> Job:
    job = job_request(cluster=cluster, kind=kind, params=params or {})
    job_execute(job_id=job.pk)
    job.refresh_from_db()
    return job


def events_text(cluster: Cluster) -> str:
    rows = JobEvent.objects.filter(job__cluster=cluster).values_list("stdout", "event_data")
    return "\n".join(f"{stdout}\n{json.dumps(data)}" for stdout, data in rows)


def test_a_cluster_installed_outside_the_portal_is_imported_adopted_scaled_out_and_upgraded(portal: Site) -> None:
    hosts = portal.hosts
    server_ip, agent_ip = hosts[SERVER].ip, hosts[AGENT].ip
    install_by_hand(
        portal,
        SERVER,
        "server",
        {"token": OWN_TOKEN, "node-name": SERVER, "node-ip": server_ip, "write-kubeconfig-mode": "0640", **EXTRA_KEYS},
    )
    install_by_hand(
        portal,
        AGENT,
        "agent",
        {
            "server": f"https://{server_ip}:9345",
            "token": OWN_TOKEN,
            "node-name": AGENT,
            "node-ip": agent_ip,
            **EXTRA_KEYS,
        },
    )
    assert node_states(hosts[SERVER]) == {SERVER: f"True {V1}", AGENT: f"True {V1}"}
    server_token = hosts[SERVER].run(["cat", f"{DATA_DIR}/server/token"], check=True).stdout.strip()
    assert token_password(server_token) == OWN_TOKEN

    # Imported from an export of the old system that has no token: a placeholder is generated.
    export = portal.work_dir / "export.json"
    export.write_text(
        json.dumps(
            [
                {
                    "name": "handmade",
                    "version": V1,
                    "nodes": [
                        {"hostname": SERVER, "ip": server_ip, "role": "server"},
                        {"hostname": AGENT, "ip": agent_ip, "role": "agent"},
                    ],
                }
            ]
        )
    )
    out = io.StringIO()
    call_command("import_legacy_clusters", str(export), stdout=out, no_color=True)
    assert "no token in the source" in out.getvalue()
    cluster = Cluster.objects.get(name="handmade")
    assert cluster.adoption_required
    assert token_password(reveal(cluster.token)) != OWN_TOKEN
    credential = credential_create(
        name="handmade-root",
        username="root",
        private_key=portal.network.private_key_text,
        known_hosts=portal.network.known_hosts_text,
    )
    cluster = cluster_update(cluster=cluster, data={"ssh_credential": credential})

    # Nothing may rewrite config.yaml before the adoption.
    for kind, params in ((JobKind.UPGRADE, {"target_version": V2}), (JobKind.INSTALL, {})):
        with pytest.raises(InvalidState, match="Run the adopt job first"):
            job_request(cluster=cluster, kind=kind, params=params)

    pids = {SERVER: main_pid(hosts[SERVER], "rke2-server"), AGENT: main_pid(hosts[AGENT], "rke2-agent")}
    adopt = run_job(cluster, JobKind.ADOPT)
    assert adopt.status == JobStatus.SUCCESSFUL, adopt.explanation

    # The adoption changed nothing on the nodes, and read the token from the data directory config.yaml names.
    assert pids == {SERVER: main_pid(hosts[SERVER], "rke2-server"), AGENT: main_pid(hosts[AGENT], "rke2-agent")}
    cluster.refresh_from_db()
    assert not cluster.adoption_required
    assert reveal(cluster.token) == server_token
    report = cluster.adoption_report
    assert report["nodes"][SERVER]["data_dir"] == DATA_DIR and report["nodes"][SERVER]["method"] == "tar"
    assert report["nodes"][SERVER]["version"] == V1 and report["nodes"][AGENT]["type"] == "agent"
    assert "The cluster token was replaced by the one the servers use." in report["changes"]
    nodes = {node.hostname: node for node in cluster.cluster_nodes.all()}
    assert kept_config_of(nodes[SERVER]) == {**EXTRA_KEYS, "write-kubeconfig-mode": "0640"}
    assert kept_config_of(nodes[AGENT]) == EXTRA_KEYS
    # The token is in no job event, and stored encrypted.
    text = events_text(cluster)
    assert OWN_TOKEN not in text and server_token not in text
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT token, running_config FROM clusters_cluster c JOIN clusters_node n ON n.cluster_id = c.id"
        )
        for stored_token, stored_config in cursor.fetchall():
            assert OWN_TOKEN not in stored_token and OWN_TOKEN not in stored_config and "max-pods" not in stored_config
    # What the portal would write differs from what runs only in keys the portal adds; none would be dropped.
    differences = {item.hostname: item for item in adoption_differences(cluster)}
    assert all(item.read for item in differences.values())
    for item in differences.values():
        assert {d["key"] for d in item.differences if d["change"] == "removed"} == set(), item
        assert "token" not in {d["key"] for d in item.differences}, item

    # Scale out with a new server: it joins with the adopted token.
    nodes_add(cluster=cluster, nodes=[{"hostname": NEW_SERVER, "internal_ip": hosts[NEW_SERVER].ip, "role": "server"}])
    scale = run_job(cluster, JobKind.SCALE_ADD)
    assert scale.status == JobStatus.SUCCESSFUL, scale.explanation
    assert node_states(hosts[SERVER]) == {SERVER: f"True {V1}", AGENT: f"True {V1}", NEW_SERVER: f"True {V1}"}

    # Upgrade: every node gets the portal's config.yaml and is restarted.
    upgrade = run_job(cluster, JobKind.UPGRADE, {"target_version": V2})
    assert upgrade.status == JobStatus.SUCCESSFUL, upgrade.explanation
    assert node_states(hosts[SERVER]) == {SERVER: f"True {V2}", AGENT: f"True {V2}", NEW_SERVER: f"True {V2}"}
    assert {node.hostname: node.status for node in cluster.cluster_nodes.all()} == {
        SERVER: NodeStatus.ACTIVE,
        AGENT: NodeStatus.ACTIVE,
        NEW_SERVER: NodeStatus.ACTIVE,
    }
    assert pids[SERVER] != main_pid(hosts[SERVER], "rke2-server")  # restarted with the portal's config

    # The keys the portal does not manage survived the rewrite; the token is the cluster's own.
    for name in (SERVER, AGENT):
        config = running_config(hosts[name])
        assert config["kubelet-arg"] == ["max-pods=150"] and config["data-dir"] == DATA_DIR, (name, config)
        assert token_password(config["token"]) == OWN_TOKEN
    assert running_config(hosts[SERVER])["write-kubeconfig-mode"] == "0640"
    # No server ever started with another token.
    for name in (SERVER, NEW_SERVER):
        assert WRONG_TOKEN not in hosts[name].journal("rke2-server.service"), name
    assert OWN_TOKEN not in events_text(cluster) and server_token not in events_text(cluster)
