"""The whole RKE2 lifecycle over real SSH: the portal's playbooks against systemd test hosts running the stand-in RKE2.

The hosts run systemd as PID 1, as the machines the portal manages do: the stand-in's units have the real ones'
semantics (``Type=notify``, ``Restart=always``, ``KillMode=process``) and log to the journal.

One cluster is shared by the tests of this module, which run in order and build on each other: preflight,
staged install (as a sudo user), an idempotent second run, scale-out, the quorum guard, scale-in of a worker and of
a master, the upgrade guards and a rolling upgrade, a join with a wrong token, health and kubeconfig, ungraceful
removal of a lost host, a rebuilt initial master that must join instead of bootstrapping, uninstall. A join with a
wrong token also shows that a unit that did not start is stopped and disabled instead of restarting forever. The last
test checks that no secret reached any event or artifact of all those runs.

Inventories come from ``inventory.renderers`` over real ``Cluster``/``Node`` rows; playbooks run through
``ansible_runner.run`` as the job engine runs them (see :mod:`tests.ansible.playbooks`). The database is emptied
after every test (transactional tests), so the rows of the shared cluster are saved after each test and restored
before the next one.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from clusters.choices import NodeStatus
from clusters.fields import reveal
from clusters.models import Cluster, Node, SSHCredential
from clusters.services.clusters import cluster_create, nodes_add, nodes_mark_for_removal
from clusters.services.credentials import credential_create
from inventory.renderers import InventoryRenderer, RenderedInventory, render_node_config
from tests.standin_rke2.build import build_bundle
from tests.testhosts.harness import Host, HostNetwork

from .playbooks import PlaybookResult, PlaybookRunner

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

V1 = "v1.31.4+rke2r1"
V2 = "v1.32.1+rke2r1"
MASTERS = ("m1", "m2", "m3")
WORKERS = ("w1", "w2")
EXTRA_WORKER = "w3"
START_TIMEOUT = 120
WRONG_TOKEN_TIMEOUT = 15
# Fast stand-in: short start delays, quick heartbeats, and a node-monitor grace that still tolerates a busy machine.
STANDIN_KNOBS = {
    "server_start_delay": 0.2,
    "agent_start_delay": 0.2,
    "heartbeat_interval": 1,
    "node_monitor_grace": 12,
    "join_retry_interval": 1,
}
STANDIN_KUBECTL = "/var/lib/rancher/rke2/bin/kubectl"
CONFIG_PATH = "/etc/rancher/rke2/config.yaml"
# Columns saved between tests (the database is emptied after each one).
CREDENTIAL_COLUMNS = ("name", "username", "port", "become", "private_key", "public_key_fingerprint", "known_hosts")
CLUSTER_COLUMNS = ("name", "rke2_version", "registration_address", "tls_san", "token", "status", "installation_stage")
NODE_COLUMNS = ("hostname", "internal_ip", "role", "status", "labels", "taints", "installed_version")


@dataclass
class Lifecycle:
    """The shared state of the module: hosts, database rows, bundles and every playbook run."""

    network: HostNetwork
    hosts: dict[str, Host]
    runner: PlaybookRunner
    bundles: dict[str, Path]
    name: str
    secrets: list[str] = field(default_factory=list)
    broken: str = ""
    saved: dict[str, Any] = field(default_factory=dict)

    # -- database -------------------------------------------------------------------------------------------

    def create_rows(self) -> None:
        """The cluster as an operator creates it: two credentials (sudo user, root), three masters, two workers."""
        for user in ("deploy", "root"):
            credential_create(
                name=f"{self.name}-{user}",
                username=user,
                become=user != "root",
                private_key=self.network.private_key_text,
                known_hosts=self.network.known_hosts_text,
            )
        nodes = [{"hostname": name, "internal_ip": self.hosts[name].ip, "role": "server"} for name in MASTERS]
        nodes += [
            {"hostname": name, "internal_ip": self.hosts[name].ip, "role": "worker", "labels": ["tier=app"]}
            for name in WORKERS
        ]
        cluster = cluster_create(
            name=self.name,
            rke2_version=V1,
            ssh_credential=SSHCredential.objects.get(name=f"{self.name}-deploy"),
            nodes=nodes,
            tls_san=["rke2.example.test"],
        )
        self.secrets.append(reveal(cluster.token))

    def save_rows(self) -> None:
        cluster = self.cluster()
        self.saved = {
            "credentials": [
                {field: getattr(credential, field) for field in CREDENTIAL_COLUMNS}
                for credential in SSHCredential.objects.filter(name__startswith=f"{self.name}-").order_by("pk")
            ],
            "cluster": {field: getattr(cluster, field) for field in CLUSTER_COLUMNS},
            "credential": cluster.ssh_credential.name,
            "nodes": [
                {field: getattr(node, field) for field in NODE_COLUMNS} for node in cluster.cluster_nodes.order_by("pk")
            ],
        }

    def restore_rows(self) -> None:
        if not self.saved:
            self.create_rows()
            return
        for values in self.saved["credentials"]:
            SSHCredential.objects.create(**values)
        cluster = Cluster.objects.create(
            **self.saved["cluster"], ssh_credential=SSHCredential.objects.get(name=self.saved["credential"])
        )
        Node.objects.bulk_create(Node(cluster=cluster, **values) for values in self.saved["nodes"])

    def cluster(self) -> Cluster:
        return Cluster.objects.get(name=self.name)

    def nodes(self, *names: str) -> list[Node]:
        nodes = {node.hostname: node for node in self.cluster().cluster_nodes.exclude(status=NodeStatus.REMOVED)}
        return [nodes[name] for name in names] if names else list(nodes.values())

    def set_status(self, names: tuple[str, ...] | list[str], status: str, **fields: Any) -> None:
        Node.objects.filter(cluster=self.cluster(), hostname__in=names).exclude(status=NodeStatus.REMOVED).update(
            status=status, **fields
        )

    def use_credential(self, user: str) -> None:
        Cluster.objects.filter(name=self.name).update(
            ssh_credential=SSHCredential.objects.get(name=f"{self.name}-{user}")
        )

    def render(self, method: str, *args: Any) -> RenderedInventory:
        return getattr(InventoryRenderer, method)(self.cluster(), *args)

    def preview(self, name: str) -> str:
        return render_node_config(self.nodes(name)[0], reveal_secrets=True)

    # -- playbooks ------------------------------------------------------------------------------------------

    def job_vars(self, version: str = V1, **overrides: Any) -> dict[str, Any]:
        variables: dict[str, Any] = {
            "rke2_install_method": "airgap",
            "rke2_airgap_artifact_dir": str(self.bundles[version]),
            "rke2_start_timeout": START_TIMEOUT,
            "rke2_workers_batch": 2,
            "rke2_drain_timeout": 60,
            "rke2_unsafe_show_logs": False,
        }
        variables.update(overrides)
        return variables

    def run(
        self, playbook: str, rendered: RenderedInventory, job_vars: dict[str, Any] | None = None, **kwargs: Any
    ) -> PlaybookResult:
        return self.runner.run(playbook, rendered, job_vars if job_vars is not None else self.job_vars(), **kwargs)

    def run_ok(
        self, playbook: str, rendered: RenderedInventory, job_vars: dict[str, Any] | None = None
    ) -> PlaybookResult:
        result = self.run(playbook, rendered, job_vars)
        assert result.status == "successful", result.describe()
        return result

    def install_stages(self) -> list[PlaybookResult]:
        results = []
        for stage in ("initial_master", "joining_masters", "workers", "all"):
            results.append(self.run_ok(f"{stage}.yml", self.render("render_for_stage", stage)))
        return results

    # -- looking at the hosts -------------------------------------------------------------------------------

    def kubectl(self, *args: str, via: str = "m1", attempts: int = 1) -> str:
        """Run kubectl on a server of the cluster; ``attempts`` > 1 retries a failed call (as an operator would)."""
        for attempt in range(attempts):
            completed = self.hosts[via].run(
                [STANDIN_KUBECTL, "--kubeconfig", "/etc/rancher/rke2/rke2.yaml", *args], timeout=60
            )
            if completed.returncode == 0 or attempt == attempts - 1:
                break
            time.sleep(3)
        assert completed.returncode == 0, completed.stderr
        return completed.stdout

    def node_states(self, via: str = "m1") -> dict[str, str]:
        """``{node name: "<Ready status> <kubelet version>"}`` as the cluster reports them."""
        items = json.loads(self.kubectl("get", "nodes", "-o", "json", via=via))["items"]
        states = {}
        for item in items:
            ready = next((c["status"] for c in item["status"]["conditions"] if c["type"] == "Ready"), "Unknown")
            states[item["metadata"]["name"]] = f"{ready} {item['status']['nodeInfo']['kubeletVersion']}"
        return states

    def service_pid(self, name: str) -> str:
        """The main PID of the node's RKE2 unit ("0" when it does not run)."""
        unit = "rke2-server" if name in MASTERS else "rke2-agent"
        return self.hosts[name].systemctl("show", "--property=MainPID", "--value", unit).stdout.strip()

    def wait_for(self, predicate: Any, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting until {what}")
            time.sleep(1)


@pytest.fixture(scope="module")
def lifecycle(systemd_host_network: HostNetwork) -> Iterator[Lifecycle]:
    host_network = systemd_host_network
    work_dir = Path(tempfile.mkdtemp(prefix="lifecycle-", dir=host_network.run_dir))
    hosts = {host.name: host for host in host_network.add_hosts(names=[*MASTERS, *WORKERS, EXTRA_WORKER])}
    bundles = {version: build_bundle(work_dir / f"bundle-{version}", version, **STANDIN_KNOBS) for version in (V1, V2)}
    runner = PlaybookRunner(
        work_dir=work_dir,
        ssh_key=host_network.private_key_text,
        envvars=host_network.ansible_env(control_path_dir=work_dir),
    )
    state = Lifecycle(
        network=host_network, hosts=hosts, runner=runner, bundles=bundles, name=f"lifecycle-{host_network.index}"
    )
    try:
        yield state
    finally:
        runner.cleanup()
        for host in hosts.values():
            if host in host_network.hosts:
                host_network.destroy_host(host)
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture
def cluster(lifecycle: Lifecycle, transactional_db: None) -> Iterator[Lifecycle]:
    """The shared cluster with its database rows, for tests that need the previous ones to have left it working."""
    if lifecycle.broken:
        pytest.fail(f"the shared cluster is unusable since {lifecycle.broken} failed", pytrace=False)
    lifecycle.restore_rows()
    yield lifecycle
    lifecycle.save_rows()


@pytest.fixture
def critical(cluster: Lifecycle, request: pytest.FixtureRequest) -> Iterator[Lifecycle]:
    """Like ``cluster``, for tests whose failure leaves the cluster unusable for the following ones."""
    failed_before = request.session.testsfailed
    yield cluster
    if request.session.testsfailed > failed_before:
        cluster.broken = request.node.name


# ------------------------------------------------------------------------------------------------------------


def test_preflight_passes_on_fresh_hosts(critical: Lifecycle) -> None:
    result = critical.run_ok("preflight.yml", critical.render("render_for_operation"))

    assert result.changed_count() == 0
    assert result.event_hosts() == {*MASTERS, *WORKERS}


def test_install_in_stages_as_sudo_user(critical: Lifecycle) -> None:
    kubeconfig_dest = critical.runner.work_dir / "kubeconfig"
    results = [
        critical.run_ok(f"{stage}.yml", critical.render("render_for_stage", stage))
        for stage in ("initial_master", "joining_masters", "workers")
    ]
    results.append(
        critical.run_ok(
            "all.yml",
            critical.render("render_for_stage", "all"),
            critical.job_vars(rke2_kubeconfig_dest=str(kubeconfig_dest)),
        )
    )

    initial, joining, workers, post = results
    # While m1 starts, RKE2 is installed (not configured, not started) on the nodes of the later stages...
    assert initial.changed_hosts() == {"m1", "m2", "m3", *WORKERS}
    installer = "Run the RKE2 installer with the airgap artifacts"
    assert sorted(event["event_data"]["host"] for event in initial.task_events(installer, "runner_on_ok")) == sorted(
        ["m1", "m2", "m3", *WORKERS]
    )
    assert [
        event["event_data"]["host"]
        for event in initial.task_events("Start or restart the RKE2 service", "runner_on_ok")
    ] == ["m1"]
    # The nodes were installed while m1 started: between the start and the wait for it.
    fired = initial.task_events("Start or restart the RKE2 service", "runner_on_ok")[0]["counter"]
    waited = initial.task_events("Wait until the RKE2 service has started", "runner_on_start")[0]["counter"]
    assert all(
        fired < event["counter"] < waited
        for event in initial.task_events(installer, "runner_on_ok")
        if event["event_data"]["host"] != "m1"
    )
    # ...so that their own stages only configure and start it.
    assert joining.changed_hosts() == {"m2", "m3"}
    assert workers.changed_hosts() == set(WORKERS)
    assert joining.task_events(installer, "runner_on_ok") == workers.task_events(installer, "runner_on_ok") == []
    # A node installed ahead of its join never ran RKE2: it is started, not restarted.
    decisions = workers.task_events("Decide whether RKE2 must be started or restarted", "runner_on_ok")
    assert [event["event_data"]["res"]["ansible_facts"]["rke2_common_restart"] for event in decisions] == [False] * len(
        WORKERS
    )
    # Masters join one at a time: m3 starts only after m2 is Ready.
    starts = joining.task_events("Start or restart the RKE2 service", "runner_on_start")
    readies = joining.task_events(f"Wait until the node is Ready and runs {V1}", "runner_on_ok")
    assert [event["event_data"]["host"] for event in starts] == ["m2", "m3"]
    assert readies[0]["event_data"]["host"] == "m2" and readies[0]["counter"] < starts[1]["counter"]

    everyone = [*MASTERS, *WORKERS]
    assert post.artifact_data["rke2_installed_versions"] == dict.fromkeys(everyone, V1)
    assert post.artifact_data["rke2_node_ready"] == dict.fromkeys(everyone, True)
    assert critical.node_states() == dict.fromkeys(everyone, f"True {V1}")

    for name in everyone:
        config = critical.hosts[name].path(CONFIG_PATH)
        assert config.read_text() == critical.preview(name), name
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "server" not in yaml.safe_load(critical.hosts["m1"].path(CONFIG_PATH).read_text())

    # The kubeconfig points at the registration address and works from the controller with a real kubectl.
    assert stat.S_IMODE(kubeconfig_dest.stat().st_mode) == 0o600
    kubeconfig = yaml.safe_load(kubeconfig_dest.read_text())
    assert [item["cluster"]["server"] for item in kubeconfig["clusters"]] == [f"https://{critical.hosts['m1'].ip}:6443"]
    listed = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig_dest), "get", "nodes", "-o", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == sorted(f"node/{name}" for name in everyone)

    critical.set_status(everyone, NodeStatus.ACTIVE, installed_version=V1)


def test_second_run_changes_nothing(critical: Lifecycle) -> None:
    pids = {name: critical.service_pid(name) for name in [*MASTERS, *WORKERS]}

    results = critical.install_stages()

    assert {result.playbook: result.changed_count() for result in results} == {
        "initial_master.yml": 0,
        "joining_masters.yml": 0,
        "workers.yml": 0,
        "all.yml": 0,
    }
    assert {name: critical.service_pid(name) for name in pids} == pids


def test_scale_out_touches_only_the_new_worker(critical: Lifecycle) -> None:
    critical.use_credential("root")
    existing = [*MASTERS, *WORKERS]
    pids = {name: critical.service_pid(name) for name in existing}
    mtimes = {name: critical.hosts[name].path(CONFIG_PATH).stat().st_mtime_ns for name in existing}
    new = nodes_add(
        cluster=critical.cluster(),
        nodes=[{"hostname": EXTRA_WORKER, "internal_ip": critical.hosts[EXTRA_WORKER].ip, "role": "worker"}],
    )

    result = critical.run_ok("scale_add.yml", critical.render("render_for_scale_add", new))

    assert result.event_hosts() == {EXTRA_WORKER}
    assert result.changed_hosts() == {EXTRA_WORKER}
    assert result.artifact_data["rke2_installed_versions"] == {EXTRA_WORKER: V1}
    assert {name: critical.service_pid(name) for name in existing} == pids
    assert {name: critical.hosts[name].path(CONFIG_PATH).stat().st_mtime_ns for name in existing} == mtimes
    assert critical.hosts[EXTRA_WORKER].path(CONFIG_PATH).read_text() == critical.preview(EXTRA_WORKER)
    assert critical.node_states()[EXTRA_WORKER] == f"True {V1}"
    critical.set_status([EXTRA_WORKER], NodeStatus.ACTIVE, installed_version=V1)


def test_scale_in_of_a_worker(critical: Lifecycle) -> None:
    targets = nodes_mark_for_removal(cluster=critical.cluster(), hostnames=[EXTRA_WORKER])

    result = critical.run_ok("scale_remove.yml", critical.render("render_for_scale_remove", targets))

    assert result.artifact_data["rke2_removed_nodes"] == [EXTRA_WORKER]
    tasks = [
        event["event_data"]["task"]
        for event in result.events
        if event.get("event") == "runner_on_ok" and event["event_data"]["host"] == EXTRA_WORKER
    ]
    order = [
        "Cordon the node",
        "Drain the node",
        "Stop the RKE2 service",
        "Stop every RKE2 process and container",
        "Uninstall RKE2",
        "Delete the node",
    ]
    assert [task for task in tasks if task in order] == order
    assert EXTRA_WORKER not in critical.node_states()
    host = critical.hosts[EXTRA_WORKER]
    assert not host.path("/usr/local/bin/rke2").exists()
    assert not host.path(CONFIG_PATH).exists()
    critical.set_status([EXTRA_WORKER], NodeStatus.REMOVED)


def test_master_removal_refused_when_it_would_break_quorum(critical: Lifecycle) -> None:
    # m3 goes down: with m2 gone as well, only m1 of the three etcd members would be left Ready.
    stopped = critical.hosts["m3"].systemctl("stop", "rke2-server", timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    critical.wait_for(lambda: critical.node_states()["m3"].startswith("Unknown"), "m3 is not Ready")
    targets = nodes_mark_for_removal(cluster=critical.cluster(), hostnames=["m2"])
    try:
        result = critical.run("scale_remove.yml", critical.render("render_for_scale_remove", targets))

        assert result.status == "failed"
        assert result.changed_count() == 0
        message = " ".join(result.failures())
        assert "Refusing to remove m2" in message and "quorum" in message, message
        assert "m2" in critical.node_states()
        assert critical.hosts["m2"].path("/usr/local/bin/rke2").exists()
    finally:
        critical.set_status(["m2"], NodeStatus.ACTIVE)
        started = critical.hosts["m3"].systemctl("start", "rke2-server", timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        critical.wait_for(lambda: critical.node_states()["m3"] == f"True {V1}", "m3 is Ready again")


def test_scale_in_of_a_master(critical: Lifecycle) -> None:
    targets = nodes_mark_for_removal(cluster=critical.cluster(), hostnames=["m3"])

    result = critical.run_ok("scale_remove.yml", critical.render("render_for_scale_remove", targets))

    assert result.artifact_data["rke2_removed_nodes"] == ["m3"]
    tasks = [
        event["event_data"]["task"]
        for event in result.events
        if event.get("event") == "runner_on_ok" and event["event_data"]["host"] == "m3"
    ]
    # The node is deleted (its etcd member removed) while rke2-server still runs, then RKE2 is uninstalled.
    assert tasks.index("Delete the server's node while it still runs (RKE2 removes its etcd member)") < tasks.index(
        "Uninstall RKE2"
    )
    states = critical.node_states()
    assert "m3" not in states
    assert sorted(
        critical.kubectl("get", "nodes", "-l", "node-role.kubernetes.io/etcd=true", "-o", "name").split()
    ) == [
        "node/m1",
        "node/m2",
    ]
    assert not critical.hosts["m3"].path("/var/lib/rancher/rke2/server").exists()
    critical.set_status(["m3"], NodeStatus.REMOVED)


def test_upgrade_refuses_downgrades_and_skipped_minors(critical: Lifecycle) -> None:
    rendered = critical.render("render_for_operation")
    for target, reason in (("v1.30.9+rke2r1", "would be a downgrade"), ("v1.33.0+rke2r1", "skips a minor version")):
        result = critical.run("upgrade.yml", rendered, critical.job_vars(rke2_version=target))

        assert result.status == "failed"
        assert result.changed_count() == 0
        assert reason in " ".join(result.failures())


def test_rolling_upgrade(critical: Lifecycle) -> None:
    result = critical.run_ok(
        "upgrade.yml", critical.render("render_for_operation"), critical.job_vars(V2, rke2_version=V2)
    )

    nodes = ["m1", "m2", *WORKERS]
    assert result.artifact_data["rke2_installed_versions"] == dict.fromkeys(nodes, V2)
    assert critical.node_states() == dict.fromkeys(nodes, f"True {V2}")
    # Masters one at a time (each Ready on the new version before the next one starts), then the workers.
    starts = {
        event["event_data"]["host"]: event["counter"]
        for event in result.task_events("Start or restart the RKE2 service", "runner_on_start")
    }
    readies = {
        event["event_data"]["host"]: event["counter"]
        for event in result.task_events(f"Wait until the node is Ready and runs {V2}", "runner_on_ok")
    }
    assert starts["m1"] < readies["m1"] < starts["m2"] < readies["m2"] < min(starts[name] for name in WORKERS)
    assert all(
        event["event_data"]["res"].get("changed")
        for event in result.task_events("Wait until the RKE2 service has started", "runner_on_ok")
    )
    critical.set_status(nodes, NodeStatus.ACTIVE, installed_version=V2)
    Cluster.objects.filter(name=critical.name).update(rke2_version=V2)


def test_join_with_a_wrong_token_fails_clearly_within_the_bounded_wait(cluster: Lifecycle) -> None:
    wrong_token = "not-the-cluster-token-0123456789"
    cluster.secrets.append(wrong_token)
    new = nodes_add(
        cluster=cluster.cluster(),
        nodes=[{"hostname": EXTRA_WORKER, "internal_ip": cluster.hosts[EXTRA_WORKER].ip, "role": "worker"}],
    )

    result = cluster.run(
        "scale_add.yml",
        cluster.render("render_for_scale_add", new),
        cluster.job_vars(V2, rke2_start_timeout=WRONG_TOKEN_TIMEOUT),
        secret_overrides={"rke2_token": wrong_token},
    )

    assert result.status == "failed"
    message = result.failures()[-1]
    assert f"rke2-agent on {EXTRA_WORKER} did not start: timed out after " in message, message
    elapsed = int(re.search(r"timed out after (\d+) s", message).group(1))
    assert WRONG_TOKEN_TIMEOUT <= elapsed < WRONG_TOKEN_TIMEOUT + 15, message
    assert "401 Unauthorized" in message
    start = result.task_events("Wait until the RKE2 service has started", "runner_on_failed")
    assert start and start[0]["event_data"]["duration"] < WRONG_TOKEN_TIMEOUT + 60
    assert EXTRA_WORKER not in cluster.node_states()
    # The unit would retry the join forever: it is stopped and disabled, and the message says so.
    assert "stopped and disabled" in message
    host = cluster.hosts[EXTRA_WORKER]
    assert host.systemctl("is-active", "rke2-agent").stdout.strip() in ("inactive", "failed")
    assert host.systemctl("is-enabled", "rke2-agent").stdout.strip() == "disabled"


def test_health_and_kubeconfig(cluster: Lifecycle) -> None:
    rendered = cluster.render("render_for_operation", cluster.nodes("m1", "m2", *WORKERS))

    health = cluster.run_ok("health.yml", rendered)
    assert health.artifact_data["rke2_node_ready"] == {"m1": True, "m2": True, "w1": True, "w2": True}

    dest = cluster.runner.work_dir / "kubeconfig-fetched"
    fetched = cluster.run_ok("kubeconfig.yml", rendered, cluster.job_vars(V2, rke2_kubeconfig_dest=str(dest)))
    assert fetched.changed_count() == 1
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert (
        yaml.safe_load(dest.read_text())["clusters"][0]["cluster"]["server"] == f"https://{cluster.hosts['m1'].ip}:6443"
    )


def test_ungraceful_removal_of_a_lost_worker(cluster: Lifecycle) -> None:
    cluster.network.destroy_host(cluster.hosts["w2"])
    targets = nodes_mark_for_removal(cluster=cluster.cluster(), hostnames=["w2"])

    result = cluster.run_ok(
        "scale_remove.yml",
        cluster.render("render_for_scale_remove", targets),
        cluster.job_vars(V2, rke2_ungraceful=True),
    )

    # Nothing tried to reach the lost host (that would be an unreachable result): only the API host worked.
    assert result.stats["dark"] == {}
    assert result.artifact_data["rke2_removed_nodes"] == ["w2"]
    assert "w2" not in cluster.node_states()
    cluster.set_status(["w2"], NodeStatus.REMOVED)


def test_rebuilt_initial_master_joins_the_running_cluster(cluster: Lifecycle) -> None:
    # The initial master's host is rebuilt (node deleted, RKE2 gone) while m2 keeps the cluster running.
    cluster.kubectl("delete", "node", "m1", "--ignore-not-found", via="m2", attempts=3)
    assert cluster.hosts["m1"].run(["/usr/local/bin/rke2-uninstall.sh"], timeout=120).returncode == 0

    result = cluster.run_ok(
        "initial_master.yml", cluster.render("render_for_stage", "initial_master"), cluster.job_vars(V2)
    )

    decision = result.task_events("Report how the initial master starts", "runner_on_ok")[0]["event_data"]["res"]["msg"]
    assert decision == "Servers m2 already run: m1 joins them"
    # The registration address is m1 itself, so it registered through the running server instead.
    config = yaml.safe_load(cluster.hosts["m1"].path(CONFIG_PATH).read_text())
    assert config["server"] == f"https://{cluster.hosts['m2'].ip}:9345"
    assert cluster.node_states(via="m2") == dict.fromkeys(("m1", "m2", "w1"), f"True {V2}")
    etcd_members = cluster.kubectl("get", "nodes", "-l", "node-role.kubernetes.io/etcd=true", "-o", "name", via="m2")
    assert sorted(etcd_members.split()) == ["node/m1", "node/m2"]


def test_uninstall_removes_rke2_everywhere(cluster: Lifecycle) -> None:
    rendered = cluster.render("render_for_operation")

    result = cluster.run_ok("uninstall.yml", rendered, cluster.job_vars(V2))

    names = ["m1", "m2", "w1", EXTRA_WORKER]
    assert set(rendered.hosts("all")) == set(names)
    first_master = min(
        event["counter"]
        for event in result.task_events("Uninstall RKE2", "runner_on_ok")
        if event["event_data"]["host"] in MASTERS
    )
    last_worker = max(
        event["counter"]
        for event in result.task_events("Uninstall RKE2", "runner_on_ok")
        if event["event_data"]["host"] not in MASTERS
    )
    assert last_worker < first_master
    for name in names:
        host = cluster.hosts[name]
        assert not host.path("/usr/local/bin/rke2").exists(), name
        assert not host.path(CONFIG_PATH).exists(), name
        assert not host.path("/var/lib/rancher/rke2").exists(), name


def test_no_secret_in_events_or_artifacts(lifecycle: Lifecycle) -> None:
    assert len(lifecycle.runner.results) >= 10
    key_lines = [line for line in lifecycle.network.private_key_text.splitlines() if line and "PRIVATE KEY" not in line]
    secrets = [*lifecycle.secrets, *key_lines]
    assert all(len(secret) >= 20 for secret in lifecycle.secrets)

    for result in lifecycle.runner.results:
        dumped = json.dumps(result.events)
        for secret in secrets:
            assert secret not in dumped, f"a secret appears in the events of {result.playbook}"
    for path in lifecycle.runner.artifact_files():
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a secret appears in {path}"
