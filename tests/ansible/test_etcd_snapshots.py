"""etcd snapshots and restore, end to end on systemd hosts, through the portal's jobs run in this process by the
engine as a worker runs them.

A cluster of two servers and one agent is installed with the stand-in RKE2, whose etcd is the real one. Then:

- an on-demand snapshot is taken on both servers and listed into ``EtcdSnapshot`` rows;
- the agent's Node object is deleted (its service stopped first, so that nothing registers it again), and the
  cluster is restored from the snapshot: every node stopped, ``--cluster-reset --cluster-reset-restore-path`` on the
  initial master, the other server's etcd data removed and the server joined again, the agent started. The Node
  object is back with the uid it had before the deletion (so it came from the snapshot, not from a new
  registration), etcd has two members again, every node is Ready and a health check passes;
- scheduled snapshots are requested by the beat task and pruned to the cluster's retention; a snapshot is deleted by
  name;
- an upgrade and the removal of a server each take their own snapshot first.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from clusters.choices import EtcdSnapshotKind, JobKind, JobStatus, NodeStatus
from clusters.engine.service import job_execute
from clusters.models import Cluster, EtcdSnapshot, Job
from clusters.services import snapshots
from clusters.services.clusters import cluster_create, nodes_mark_for_removal
from clusters.services.credentials import credential_create
from clusters.services.jobs import job_request
from tests.standin_rke2.release_server import ReleaseServer
from tests.testhosts.harness import Host, HostNetwork

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

V1 = "v1.31.4+rke2r1"
V2 = "v1.32.1+rke2r1"
FLAVOUR = "systemd"
S1, S2, A1 = "es1", "es2", "ea1"
START_TIMEOUT = 120
STANDIN_KNOBS = {
    "server_start_delay": 0.2,
    "agent_start_delay": 0.2,
    "heartbeat_interval": 1,
    "node_monitor_grace": 12,
    "join_retry_interval": 1,
}
DATA_DIR = "/var/lib/rancher/rke2"
KUBECTL = f"{DATA_DIR}/bin/kubectl"
SNAPSHOT_DIR = f"{DATA_DIR}/server/db/snapshots"
ETCD_TLS = f"{DATA_DIR}/server/tls/etcd"


@dataclass
class Site:
    network: HostNetwork
    hosts: dict[str, Host]
    server: ReleaseServer
    work_dir: Path


@pytest.fixture(scope="module")
def site(host_network_of: Any) -> Iterator[Site]:
    network = host_network_of(FLAVOUR)
    work_dir = Path(tempfile.mkdtemp(prefix="es-", dir=network.run_dir))
    hosts = {host.name: host for host in network.add_hosts(names=[S1, S2, A1])}
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
    jobs_dir = Path(tempfile.mkdtemp(prefix="j-", dir=site.work_dir))
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
    assert job.status == JobStatus.SUCCESSFUL, f"{job.kind} #{job.pk}: {job.explanation}"
    return job


def request_and_run(cluster: Cluster, kind: str, params: dict[str, Any] | None = None) -> Job:
    cluster.refresh_from_db()
    return run(job_request(cluster=cluster, kind=kind, params=params or {}))


def kubectl(host: Host, *args: str, check: bool = True) -> Any:
    completed = host.run([KUBECTL, "--kubeconfig", "/etc/rancher/rke2/rke2.yaml", *args], timeout=60)
    if check:
        assert completed.returncode == 0, completed.stderr
    return completed


def node_states(host: Host) -> dict[str, str]:
    states = {}
    for item in json.loads(kubectl(host, "get", "nodes", "-o", "json").stdout)["items"]:
        ready = next((c["status"] for c in item["status"]["conditions"] if c["type"] == "Ready"), "Unknown")
        states[item["metadata"]["name"]] = f"{ready} {item['status']['nodeInfo']['kubeletVersion']}"
    return states


def etcd_members(host: Host) -> list[str]:
    completed = host.run(
        [
            "etcdctl",
            "--endpoints=https://127.0.0.1:2379",
            f"--cacert={ETCD_TLS}/server-ca.crt",
            f"--cert={ETCD_TLS}/server-client.crt",
            f"--key={ETCD_TLS}/server-client.key",
            "member",
            "list",
        ],
        env={"ETCDCTL_API": "3"},
        timeout=30,
    )
    assert completed.returncode == 0, completed.stderr
    return [line for line in completed.stdout.splitlines() if line.strip()]


def snapshot_files(host: Host) -> list[str]:
    return sorted(host.run(["ls", "-1", SNAPSHOT_DIR], check=True).stdout.split())


def rows(cluster: Cluster, **filters: Any) -> list[EtcdSnapshot]:
    return list(EtcdSnapshot.objects.filter(cluster=cluster, **filters).order_by("node_name", "name"))


@pytest.mark.timeout(2400)  # nine jobs; a quarter of an hour or more when the machine is busy
def test_snapshot_restore_schedule_prune_and_snapshots_before_upgrade_and_removal(portal: Site) -> None:
    hosts = portal.hosts
    credential = credential_create(
        name="snapshots-root",
        username="root",
        private_key=portal.network.private_key_text,
        known_hosts=portal.network.known_hosts_text,
    )
    cluster = cluster_create(
        name="snapcluster",
        rke2_version=V1,
        ssh_credential=credential,
        nodes=[
            {"hostname": S1, "internal_ip": hosts[S1].ip, "role": "server"},
            {"hostname": S2, "internal_ip": hosts[S2].ip, "role": "server"},
            {"hostname": A1, "internal_ip": hosts[A1].ip, "role": "agent"},
        ],
    )
    request_and_run(cluster, JobKind.INSTALL)
    assert node_states(hosts[S1]) == {S1: f"True {V1}", S2: f"True {V1}", A1: f"True {V1}"}

    # On-demand snapshot: one file on each server, listed into the database.
    snap_job = request_and_run(cluster, JobKind.ETCD_SNAPSHOT)
    listed = rows(cluster)
    assert [(row.node_name, row.kind, row.job_id) for row in listed] == [
        (S1, EtcdSnapshotKind.ON_DEMAND, snap_job.pk),
        (S2, EtcdSnapshotKind.ON_DEMAND, snap_job.pk),
    ]
    for row in listed:
        assert row.name.startswith(f"on-demand-{row.node_name}-") and row.size > 0 and row.created is not None
        assert row.path == f"{SNAPSHOT_DIR}/{row.name}"
        assert snapshot_files(hosts[row.node_name]) == [row.name]
    on_master = next(row for row in listed if row.node_name == S1)

    # After the snapshot, the agent's Node object is deleted (the agent stopped, so it cannot register again).
    uid = kubectl(hosts[S1], "get", "node", A1, "-o", "jsonpath={.metadata.uid}").stdout.strip()
    assert uid
    hosts[A1].systemctl("stop", "rke2-agent", check=True)
    kubectl(hosts[S1], "delete", "node", A1)
    gone = kubectl(hosts[S1], "get", "node", A1, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr

    # Restore: the typed confirmation is required, then the job resets etcd from the snapshot.
    cluster.refresh_from_db()
    with pytest.raises(ValidationError) as refused:
        snapshots.etcd_restore_request(cluster=cluster, snapshot=on_master, confirm="snapclusters")
    assert "confirm" in refused.value.message_dict
    restore = run(snapshots.etcd_restore_request(cluster=cluster, snapshot=on_master, confirm="snapcluster"))
    assert restore.stages == ["etcd_restore"]
    assert kubectl(hosts[S1], "get", "node", A1, "-o", "jsonpath={.metadata.uid}").stdout.strip() == uid
    assert node_states(hosts[S1]) == {S1: f"True {V1}", S2: f"True {V1}", A1: f"True {V1}"}
    assert len(etcd_members(hosts[S1])) == 2
    # The other server's etcd data was replaced, its snapshots kept.
    assert snapshot_files(hosts[S2]) == [next(row.name for row in listed if row.node_name == S2)]
    request_and_run(cluster, JobKind.HEALTH)
    cluster.refresh_from_db()
    assert {node.status for node in cluster.cluster_nodes.all()} == {NodeStatus.ACTIVE}

    # Scheduled snapshots: requested by the beat task when due, pruned to the retention after each one.
    cluster.refresh_from_db()
    snapshots.snapshot_schedule_set(cluster=cluster, interval_minutes=60, retention=1)
    now = timezone.now()
    for offset in (0, 61):
        due = snapshots.snapshots_schedule_due(now + timedelta(minutes=offset))
        assert len(due) == 1, offset
        run(Job.objects.get(pk=due[0]))
    scheduled = rows(cluster, kind=EtcdSnapshotKind.SCHEDULED)
    assert [row.node_name for row in scheduled] == [S1, S2]
    for row in scheduled:
        assert [name for name in snapshot_files(hosts[row.node_name]) if name.startswith("scheduled-")] == [row.name]
    assert snapshots.snapshots_schedule_due(now + timedelta(minutes=90)) == []

    # Deleting one snapshot by name.
    doomed = next(row for row in listed if row.node_name == S2)
    cluster.refresh_from_db()
    run(snapshots.snapshots_prune_request(cluster=cluster, snapshot_ids=[doomed.pk]))
    assert doomed.name not in snapshot_files(hosts[S2])
    assert not EtcdSnapshot.objects.filter(pk=doomed.pk).exists()
    assert EtcdSnapshot.objects.filter(pk=on_master.pk).exists()

    # An upgrade snapshots first; so does the removal of a server.
    upgrade = request_and_run(cluster, JobKind.UPGRADE, {"target_version": V2})
    assert upgrade.stages == ["etcd_snapshot", "upgrade"]
    assert [row.node_name for row in rows(cluster, kind=EtcdSnapshotKind.PRE_UPGRADE)] == [S1, S2]
    assert node_states(hosts[S1]) == {S1: f"True {V2}", S2: f"True {V2}", A1: f"True {V2}"}
    cluster.refresh_from_db()
    nodes_mark_for_removal(cluster=cluster, hostnames=[S2])
    removal = request_and_run(cluster, JobKind.SCALE_REMOVE)
    assert removal.stages == ["etcd_snapshot", "scale_remove"]
    # Taken on the servers that stay (the one leaving is draining already).
    assert [row.node_name for row in rows(cluster, kind=EtcdSnapshotKind.PRE_REMOVAL)] == [S1]
    assert any(name.startswith(f"pre-removal-{S1}-") for name in snapshot_files(hosts[S1]))
    assert set(node_states(hosts[S1])) == {S1, A1}
