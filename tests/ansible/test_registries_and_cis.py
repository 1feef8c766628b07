"""Private registries and the CIS profile with the portal's playbooks on systemd test hosts.

Registries: ``/etc/rancher/rke2/registries.yaml`` lands with mode 0600, owner root and the rendered content, a change
restarts RKE2, the job events never contain the password, and uninstall removes the file. CIS: with ``profile: cis``
the server gets the ``etcd`` user and group and the CIS kernel parameters before RKE2 starts, and the stand-in
(which refuses an unprepared host as RKE2 does) starts. The hosts' ``/proc/sys`` is read-only, so the test binds
writable files over the four parameters (with the wrong values): the playbook has to set them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clusters.models import Cluster, SSHCredential
from clusters.services.clusters import cluster_create
from clusters.services.credentials import credential_create
from clusters.services.registries import registry_create, registry_update
from inventory.renderers import InventoryRenderer
from tests.standin_rke2.build import build_bundle
from tests.testhosts.harness import Host, HostNetwork

from .playbooks import PlaybookResult, PlaybookRunner
from .test_start_failures import job_explanation

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

VERSION = "v1.31.4+rke2r1"
START_TIMEOUT = 120
STANDIN_KNOBS = {"server_start_delay": 0.2, "agent_start_delay": 0.2, "heartbeat_interval": 1, "node_monitor_grace": 12}
PASSWORD = "registry-pass-7c1e9a0d44"
NEW_PASSWORD = "registry-pass-2b8f6e13aa"
CIS_WRONG = {"kernel/panic": 0, "kernel/panic_on_oops": 0, "vm/overcommit_memory": 0, "vm/panic_on_oom": 1}
CIS_RIGHT = {"kernel/panic": 10, "kernel/panic_on_oops": 1, "vm/overcommit_memory": 1, "vm/panic_on_oom": 0}
CIS_SYSCTL_FILE = "/etc/sysctl.d/60-rke2-cis.conf"


class Bench:
    def __init__(self, network: HostNetwork, hosts: dict[str, Host], runner: PlaybookRunner, bundle: Path) -> None:
        self.network, self.hosts, self.runner, self.bundle = network, hosts, runner, bundle

    def cluster(self, name: str, servers: list[str], **config: Any) -> Cluster:
        credential = SSHCredential.objects.filter(name=f"{name}-root").first() or credential_create(
            name=f"{name}-root",
            username="root",
            become=False,
            private_key=self.network.private_key_text,
            known_hosts=self.network.known_hosts_text,
        )
        nodes = [{"hostname": host, "internal_ip": self.hosts[host].ip, "role": "server"} for host in servers]
        cluster = cluster_create(name=name, rke2_version=VERSION, ssh_credential=credential, nodes=nodes)
        if config:
            Cluster.objects.filter(pk=cluster.pk).update(cluster_vars=config)
            cluster.refresh_from_db()
        return cluster

    def run(self, playbook: str, cluster: Cluster, stage: str | None = None, **job_vars: Any) -> PlaybookResult:
        rendered = (
            InventoryRenderer.render_for_stage(cluster, stage)
            if stage
            else InventoryRenderer.render_for_operation(cluster)
        )
        variables = {
            "rke2_install_method": "airgap",
            "rke2_airgap_artifact_dir": str(self.bundle),
            "rke2_start_timeout": START_TIMEOUT,
            **job_vars,
        }
        return self.runner.run(playbook, rendered, variables)


@pytest.fixture(scope="module")
def bench(systemd_host_network: HostNetwork) -> Iterator[Bench]:
    network = systemd_host_network
    work_dir = Path(tempfile.mkdtemp(prefix="registries-cis-", dir=network.run_dir))
    hosts = {host.name: host for host in network.add_hosts(names=["r1", "c1"])}
    bundle = build_bundle(work_dir / "bundle", VERSION, **STANDIN_KNOBS)
    runner = PlaybookRunner(
        work_dir=work_dir, ssh_key=network.private_key_text, envvars=network.ansible_env(control_path_dir=work_dir)
    )
    try:
        yield Bench(network, hosts, runner, bundle)
    finally:
        runner.cleanup()
        for host in hosts.values():
            if host in network.hosts:
                network.destroy_host(host)
        shutil.rmtree(work_dir, ignore_errors=True)


def _events_text(result: PlaybookResult) -> str:
    return json.dumps(result.events)


def _artifacts_text(runner: PlaybookRunner) -> str:
    return "\n".join(path.read_text(errors="replace") for path in runner.artifact_files())


def test_registries_yaml_lands_private_restarts_on_change_and_goes_with_uninstall(bench: Bench) -> None:
    host = bench.hosts["r1"]
    cluster = bench.cluster("registries", ["r1"])
    registry = registry_create(
        cluster=cluster,
        name="registry.example.com:5000",
        endpoints=["https://mirror.example.com:5000"],
        rewrite={"^rancher/(.*)": "mirrors/rancher/$1"},
        username="puller",
        password=PASSWORD,
        ca_file="/etc/ssl/registry-ca.pem",
    )
    registry_create(cluster=cluster, name="*", endpoints=["http://10.99.0.1:5000"])

    first = bench.run("initial_master.yml", cluster, "initial_master")

    assert first.status == "successful", first.describe()
    path = "/etc/rancher/rke2/registries.yaml"
    stat = host.run(["stat", "-c", "%a %U %G", path]).stdout.split()
    assert stat == ["600", "root", "root"]
    written = yaml.safe_load(host.path(path).read_text())
    assert written == {
        "mirrors": {
            "*": {"endpoint": ["http://10.99.0.1:5000"]},
            "registry.example.com:5000": {
                "endpoint": ["https://mirror.example.com:5000"],
                "rewrite": {"^rancher/(.*)": "mirrors/rancher/$1"},
            },
        },
        "configs": {
            "registry.example.com:5000": {
                "auth": {"username": "puller", "password": PASSWORD},
                "tls": {"ca_file": "/etc/ssl/registry-ca.pem"},
            }
        },
    }
    assert host.path(path).read_text().startswith("# Managed by the RKE2 portal")
    boot_pid = host.systemctl("show", "--property=MainPID", "--value", "rke2-server").stdout.strip()

    # A new password: the file changes and RKE2 restarts, as for a config change.
    registry_update(registry=registry, data={"password": NEW_PASSWORD})
    second = bench.run("initial_master.yml", cluster, "initial_master")
    assert second.status == "successful", second.describe()
    assert yaml.safe_load(host.path(path).read_text())["configs"]["registry.example.com:5000"]["auth"]["password"] == (
        NEW_PASSWORD
    )
    assert second.task_events("Start or restart the RKE2 service", "runner_on_ok"), second.describe()
    assert host.systemctl("show", "--property=MainPID", "--value", "rke2-server").stdout.strip() != boot_pid

    # Unchanged: no restart.
    third = bench.run("initial_master.yml", cluster, "initial_master")
    assert third.status == "successful", third.describe()
    assert not third.task_events("Start or restart the RKE2 service", "runner_on_ok")

    # The password never reached the events or the artifacts ansible-runner kept.
    for result in (first, second, third):
        text = _events_text(result)
        assert PASSWORD not in text and NEW_PASSWORD not in text
    artifacts = _artifacts_text(bench.runner)
    assert PASSWORD not in artifacts and NEW_PASSWORD not in artifacts

    uninstall = bench.run("uninstall.yml", cluster)
    assert uninstall.status == "successful", uninstall.describe()
    assert not host.path(path).exists()


def _bind_sysctls(host: Host, values: dict[str, int]) -> None:
    """Writable files over the CIS kernel parameters, holding ``values`` (the host's /proc/sys is read-only)."""
    for name, value in values.items():
        file = "/run/cis-sysctl/" + name.replace("/", "_")
        script = f"mkdir -p /run/cis-sysctl && echo {value} > {file} && mount --bind {file} /proc/sys/{name}"
        host.run(["sh", "-c", script], check=True)


def _unbind_sysctls(host: Host) -> None:
    for name in CIS_WRONG:
        host.run(["sh", "-c", f"while umount /proc/sys/{name} 2>/dev/null; do :; done; true"])


def test_cis_profile_prepares_the_host_and_starts(bench: Bench) -> None:
    host = bench.hosts["c1"]
    cluster = bench.cluster("cis", ["c1"], profile="cis")
    assert host.run(["id", "-u", "etcd"]).returncode != 0
    try:
        # Without the preparation (kernel preparation switched off for the cluster) RKE2 refuses to start: the
        # kernel parameters are right here, but the etcd user is missing, and the stand-in says so as RKE2 does.
        _bind_sysctls(host, CIS_RIGHT)
        refused = bench.run("initial_master.yml", cluster, "initial_master", rke2_prepare_kernel=False)
        assert refused.status == "failed"
        explanation = job_explanation(refused, "initial_master")
        assert "missing required: user: unknown user etcd" in explanation, explanation
        assert "rke2-server on c1 failed to start after" in explanation, explanation
        assert host.run(["id", "-u", "etcd"]).returncode != 0
        assert not host.path(CIS_SYSCTL_FILE).exists()

        # With it, on a host whose kernel parameters are all wrong: prepared, and RKE2 starts.
        _unbind_sysctls(host)
        _bind_sysctls(host, CIS_WRONG)
        result = bench.run("initial_master.yml", cluster, "initial_master")

        assert result.status == "successful", result.describe()
        assert host.run(["id", "-u", "etcd"]).returncode == 0
        assert host.run(["getent", "group", "etcd"]).returncode == 0
        # RKE2's own file, copied.
        assert (
            host.path(CIS_SYSCTL_FILE).read_text()
            == host.path("/usr/local/share/rke2/rke2-cis-sysctl.conf").read_text()
        )
        values = {name: host.run(["cat", f"/proc/sys/{name}"]).stdout.strip() for name in CIS_WRONG}
        assert values == {name: str(value) for name, value in CIS_RIGHT.items()}
        assert host.systemctl("is-active", "rke2-server").stdout.strip() == "active"
        assert host.run(["stat", "-c", "%a", "/etc/rancher/rke2/config.yaml"]).stdout.strip() == "600"
        assert "not running in CIS mode" not in host.journal("rke2-server.service")
    finally:
        bench.run("uninstall.yml", cluster)
        _unbind_sysctls(host)
