"""Failed starts, kernel checks and a custom data directory, with the portal's playbooks on systemd hosts.

Real systemd units (``Type=notify``, ``Restart=always``) and the journal make the difference here: a failed start
is reported with the journal lines of that start only and the time it really took, and the unit is stopped and
disabled instead of restarting forever. A second failure on the same host, for another reason (a server restarted
with another token over its bootstrap data), shows only the second reason, as the job's explanation does.
``/proc/sys`` of the hosts is read-only except ``net.*``: the kubelet's kernel parameters are warnings without a
CIS profile and errors with it. A cluster with ``data-dir`` is installed, its kubeconfig fetched, and uninstalled.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from clusters.choices import JobKind, JobStatus
from clusters.engine.runner import _failure_summary, _RunState
from clusters.engine.service import job_execute
from clusters.fields import reveal
from clusters.models import Cluster, Job, SSHCredential
from clusters.services.clusters import cluster_create
from clusters.services.credentials import credential_create
from clusters.services.jobs import job_request
from inventory.renderers import InventoryRenderer, RenderedInventory
from tests.standin_rke2.build import build_bundle
from tests.testhosts.harness import Host, HostNetwork

from .playbooks import PlaybookResult, PlaybookRunner

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

VERSION = "v1.31.4+rke2r1"
START_TIMEOUT = 120
STANDIN_KNOBS = {"server_start_delay": 0.2, "agent_start_delay": 0.2, "heartbeat_interval": 1, "node_monitor_grace": 12}
DATA_DIR = "/srv/rke2-data"
KUBELET_SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")


@dataclass
class Bench:
    network: HostNetwork
    hosts: dict[str, Host]
    runner: PlaybookRunner
    bundle: Path
    work_dir: Path

    def cluster(self, name: str, servers: list[str], workers: list[str] = (), **config: Any) -> Cluster:
        credential = SSHCredential.objects.filter(name=f"{name}-root").first() or credential_create(
            name=f"{name}-root",
            username="root",
            become=False,
            private_key=self.network.private_key_text,
            known_hosts=self.network.known_hosts_text,
        )
        nodes = [{"hostname": host, "internal_ip": self.hosts[host].ip, "role": "server"} for host in servers]
        nodes += [{"hostname": host, "internal_ip": self.hosts[host].ip, "role": "worker"} for host in workers]
        cluster = cluster_create(name=name, rke2_version=VERSION, ssh_credential=credential, nodes=nodes)
        if config:
            Cluster.objects.filter(pk=cluster.pk).update(cluster_vars=config)
            cluster.refresh_from_db()
        return cluster

    def run(self, playbook: str, rendered: RenderedInventory, **job_vars: Any) -> PlaybookResult:
        variables = {
            "rke2_install_method": "airgap",
            "rke2_airgap_artifact_dir": str(self.bundle),
            "rke2_start_timeout": START_TIMEOUT,
            **job_vars,
        }
        token = job_vars.pop("token", None)
        variables.pop("token", None)
        return self.runner.run(playbook, rendered, variables, secret_overrides={"rke2_token": token} if token else None)


def run_job(cluster: Cluster, kind: str, **params: Any) -> Job:
    """A job requested through the service and run in this process by the engine, as a worker runs it."""
    job = job_request(cluster=Cluster.objects.get(pk=cluster.pk), kind=kind, params=params)
    job_execute(job_id=job.pk)
    job.refresh_from_db()
    return job


def job_explanation(result: PlaybookResult, stage: str) -> str:
    """The explanation the job engine writes for a stage that failed, from the events of the run."""

    class Discard:
        def put(self, item: object) -> None:
            pass

    state = _RunState(offset=0, stage=stage)
    handle = state.event_handler(Discard())  # type: ignore[arg-type]
    for event in result.events:
        handle(event)
    return f"Stage {stage} failed: " + _failure_summary(result.playbook, result.rc, state.host_errors)


def collected(result: PlaybookResult) -> list[str]:
    """What the rescue collected from the node (clock line and log lines), for failure messages."""
    events = result.task_events("Collect the log lines of this start", "runner_on_ok")
    return events[-1]["event_data"]["res"].get("stdout_lines", []) if events else []


def unit_state(host: Host, unit: str) -> tuple[str, str, str]:
    """(is-active, is-enabled, NRestarts) of a unit."""
    active = host.systemctl("is-active", unit).stdout.strip()
    enabled = host.systemctl("is-enabled", unit).stdout.strip()
    restarts = host.systemctl("show", "--property=NRestarts", "--value", unit).stdout.strip()
    return active, enabled, restarts


@pytest.fixture(scope="module")
def bench(systemd_host_network: HostNetwork) -> Iterator[Bench]:
    network = systemd_host_network
    work_dir = Path(tempfile.mkdtemp(prefix="start-failures-", dir=network.run_dir))
    hosts = {host.name: host for host in network.add_hosts(names=["f1", "d1", "d2"])}
    # One folder per version, as RKE2_AIRGAP_ARTIFACT_DIR wants: the portal uses the parent, playbooks the folder.
    bundle = build_bundle(work_dir / "airgap" / VERSION, VERSION, **STANDIN_KNOBS)
    runner = PlaybookRunner(
        work_dir=work_dir, ssh_key=network.private_key_text, envvars=network.ansible_env(control_path_dir=work_dir)
    )
    try:
        yield Bench(network=network, hosts=hosts, runner=runner, bundle=bundle, work_dir=work_dir)
    finally:
        runner.cleanup()
        for host in hosts.values():
            if host in network.hosts:
                network.destroy_host(host)
        shutil.rmtree(work_dir, ignore_errors=True)


def test_failed_starts_show_this_start_only_and_leave_the_unit_stopped(bench: Bench) -> None:
    host = bench.hosts["f1"]
    cluster = bench.cluster("failing", ["f1"], profile="no-such-profile")

    # 1. RKE2 exits at once: an invalid profile.
    first = bench.run("initial_master.yml", InventoryRenderer.render_for_stage(cluster, "initial_master"))

    assert first.status == "failed"
    message = first.failures()[-1]
    assert "rke2-server on f1 failed to start after " in message, (message, collected(first))
    seconds = re.search(r"failed to start after (under 1|\d+) s", message).group(1)
    assert seconds == "under 1" or int(seconds) < 15, message
    assert "Reason: invalid value provided for --profile flag" in message, message
    assert "within" not in message and "timed out" not in message
    # The job's explanation is that message, not the first failed step of the rescued wait.
    explanation = job_explanation(first, "initial_master")
    assert "failed to start after" in explanation and "invalid value provided for --profile flag" in explanation
    # Stopped and disabled, not restarting every 5 s (Restart=always); its journal is kept.
    assert "stopped and disabled" in message
    active, enabled, restarts = unit_state(host, "rke2-server")
    assert (active, enabled) in {("inactive", "disabled"), ("failed", "disabled")}
    time.sleep(7)
    assert unit_state(host, "rke2-server") == (active, enabled, restarts)
    assert "invalid value provided for --profile flag" in host.journal("rke2-server.service")

    # 2. Fixed: the next run starts it cleanly.
    Cluster.objects.filter(pk=cluster.pk).update(cluster_vars={})
    cluster.refresh_from_db()
    second = bench.run("initial_master.yml", InventoryRenderer.render_for_stage(cluster, "initial_master"))
    assert second.status == "successful", second.describe()
    assert unit_state(host, "rke2-server")[:2] == ("active", "enabled")

    # 3. Restarted with another token over its bootstrap data: fails for that reason, and only that one is shown.
    third = bench.run(
        "initial_master.yml",
        InventoryRenderer.render_for_stage(cluster, "initial_master"),
        token="another-token-for-the-same-bootstrap-data",
    )

    assert third.status == "failed"
    message = third.failures()[-1]
    assert "rke2-server on f1 failed to start after " in message, (message, collected(third))
    assert "bootstrap data already found and encrypted with different token" in message, message
    assert "profile" not in message, message
    explanation = job_explanation(third, "initial_master")
    assert "bootstrap data already found and encrypted with different token" in explanation, explanation
    assert "profile" not in explanation
    assert unit_state(host, "rke2-server")[1] == "disabled"
    assert reveal(cluster.token) not in message


def test_kernel_parameters_a_container_cannot_set(bench: Bench) -> None:
    """Read-only /proc/sys: warnings without a CIS profile (the install goes on), errors with it (nothing starts)."""
    host = bench.hosts["f1"]
    cluster = bench.cluster("cis", ["f1"], profile="cis")
    uninstall = bench.run("uninstall.yml", InventoryRenderer.render_for_operation(cluster))
    assert uninstall.status == "successful", uninstall.describe()

    result = bench.run("initial_master.yml", InventoryRenderer.render_for_stage(cluster, "initial_master"))

    assert result.status == "failed"
    message = result.failures()[-1]
    for name in KUBELET_SYSCTLS:
        assert f"Kernel parameter {name} is " in message, message
    assert "RKE2 with profile cis refuses to start without it" in message
    assert result.task_events("Start or restart the RKE2 service") == []
    assert host.systemctl("is-active", "rke2-server").stdout.strip() != "active"
    # The profile's etcd user was created, as RKE2's documentation asks.
    assert host.run(["id", "-u", "etcd"]).returncode == 0


def test_install_kubeconfig_and_uninstall_with_a_data_dir(bench: Bench, settings: Any) -> None:
    """Jobs run by the engine, as a worker runs them: install, fetch the kubeconfig, uninstall."""
    settings.RKE2_INSTALL_METHOD = "airgap"
    settings.RKE2_AIRGAP_ARTIFACT_DIR = str(bench.bundle.parent)
    settings.RKE2_START_TIMEOUT_SECONDS = START_TIMEOUT
    settings.JOBS_WORK_DIR = Path(tempfile.mkdtemp(prefix="jd-"))
    settings.JOB_CANCEL_POLL_SECONDS = 0.5
    settings.JOB_EVENT_FLUSH_SECONDS = 0.2
    server, worker = bench.hosts["d1"], bench.hosts["d2"]
    cluster = bench.cluster("datadir", ["d1"], ["d2"], **{"data-dir": DATA_DIR})

    install = run_job(cluster, JobKind.INSTALL)

    assert install.status == JobStatus.SUCCESSFUL, install.explanation
    assert server.path(f"{DATA_DIR}/server/db/etcd").is_dir()
    assert server.path(f"{DATA_DIR}/agent/images").is_dir()
    assert worker.path(f"{DATA_DIR}/agent").is_dir()
    for host in (server, worker):
        assert not host.path("/var/lib/rancher/rke2").exists(), host.name
        assert yaml.safe_load(host.path("/etc/rancher/rke2/config.yaml").read_text())["data-dir"] == DATA_DIR
    # The kubelet's kernel parameters cannot be set in these hosts: the install went on, with a warning per host
    # recorded in the job and named in its explanation.
    warnings = install.result["facts"]["rke2_warnings"]
    assert set(warnings) == {"d1", "d2"}
    for name in KUBELET_SYSCTLS:
        assert any(f"Kernel parameter {name} is " in text for text in warnings["d1"]), warnings
    assert "Warnings: d1: Kernel parameter" in install.explanation, install.explanation

    # The kubeconfig stored by the install, and one fetched again, work from here with a real kubectl.
    fetched = run_job(cluster, JobKind.FETCH_KUBECONFIG)
    assert fetched.status == JobStatus.SUCCESSFUL, fetched.explanation
    cluster.refresh_from_db()
    kubeconfig = bench.work_dir / "datadir-kubeconfig"
    kubeconfig.write_text(reveal(cluster.kubeconfig))
    assert yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"] == f"https://{server.ip}:6443"
    listed = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "get", "nodes", "-o", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == ["node/d1", "node/d2"]

    uninstall = run_job(cluster, JobKind.UNINSTALL, confirm=cluster.name)

    assert uninstall.status == JobStatus.SUCCESSFUL, uninstall.explanation
    for host in (server, worker):
        assert not host.path(DATA_DIR).exists(), host.name
        assert not host.path("/usr/local/bin/rke2").exists(), host.name
    shutil.rmtree(settings.JOBS_WORK_DIR, ignore_errors=True)
