"""Host preparation (role ``rke2_host_prep``) on systemd hosts, through the portal's install and uninstall jobs.

- firewalld running on every node (as on RHEL-family machines), NetworkManager running on the agent, and
  nm-cloud-setup units present and enabled there: the install opens, in a firewalld service of its own per node
  type, exactly the ports of the portal's port table for the node's type and the CNI, nothing else; the cluster
  comes up (its post-install check needs the overlay port between every pair); a server port stays closed on the
  agent (tested with a listener and a connection from the server); NetworkManager gets the CNI interfaces as
  unmanaged and nm-cloud-setup is disabled. Uninstall removes the services, their definitions and the
  NetworkManager file.
- Switched off for the cluster, the firewall is left as it is.
- SELinux cannot run in these hosts (their kernel has none). What is proven: the real install playbook reads the
  kernel's enforce flag (at a path given as a variable, a file holding ``1``), and refuses, before anything is
  installed, a tarball install without the rke2-selinux policy, with the reason. Not proven: getenforce and
  ``rpm -q rke2-selinux`` on a real SELinux host, and RKE2 running under the policy.

The test hosts keep NetworkManager off their own link with a configuration file of their own
(``zz-testhost.conf``: ``unmanaged-devices+=interface-name:eth0``, read after the portal's file and added to it).
"""

from __future__ import annotations

import configparser
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clusters.choices import JobKind, JobStatus
from clusters.engine.service import job_execute
from clusters.models import Cluster, Job
from clusters.services import artifacts
from clusters.services.clusters import cluster_create
from clusters.services.credentials import credential_create
from clusters.services.jobs import job_request
from inventory import ports as rke2_ports
from inventory.renderers import InventoryRenderer
from inventory.variables import VariableRenderer
from tests.standin_rke2.build import build_bundle
from tests.testhosts.harness import Host, HostNetwork

from .playbooks import PlaybookRunner

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

V1 = "v1.31.4+rke2r1"
FLAVOUR = "systemd"
START_TIMEOUT = 30
STANDIN_KNOBS = {
    "server_start_delay": 0.2,
    "agent_start_delay": 0.2,
    "heartbeat_interval": 1,
    "node_monitor_grace": 12,
    "join_retry_interval": 1,
}
NM_CONF = "/etc/NetworkManager/conf.d/rke2-canal.conf"
NM_TESTHOST_CONF = "[keyfile]\nunmanaged-devices+=interface-name:eth0\n[main]\nno-auto-default=*\n"
FAKE_UNIT = "[Unit]\nDescription=stand-in for {name}\n[{section}]\n{body}\n[Install]\nWantedBy={wanted}\n"
FAKE_CLOUD_SETUP = {
    "nm-cloud-setup.service": FAKE_UNIT.format(
        name="nm-cloud-setup", section="Service", body="Type=oneshot\nExecStart=/bin/true", wanted="multi-user.target"
    ),
    "nm-cloud-setup.timer": FAKE_UNIT.format(
        name="nm-cloud-setup", section="Timer", body="OnBootSec=1h", wanted="timers.target"
    ),
}


@dataclass
class Site:
    network: HostNetwork
    hosts: dict[str, Host]
    work_dir: Path
    airgap_dir: Path

    def add_hosts(self, names: Sequence[str]) -> None:
        self.hosts.update({host.name: host for host in self.network.add_hosts(names=list(names))})

    def cluster(self, name: str, nodes: Sequence[str], **fields: Any) -> Cluster:
        credential = credential_create(
            name=f"{name}-root",
            username="root",
            private_key=self.network.private_key_text,
            known_hosts=self.network.known_hosts_text,
        )
        return cluster_create(
            name=name,
            rke2_version=V1,
            cni="canal",
            ssh_credential=credential,
            nodes=[
                {"hostname": host, "internal_ip": self.hosts[host].ip, "role": "server" if index == 0 else "agent"}
                for index, host in enumerate(nodes)
            ],
            **fields,
        )

    def sh(self, host: str, script: str) -> str:
        done = self.hosts[host].run(["sh", "-c", script], timeout=60)
        assert done.returncode == 0, f"{host}: {script}: {done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def site(host_network_of: Any) -> Iterator[Site]:
    network = host_network_of(FLAVOUR)
    work_dir = Path(tempfile.mkdtemp(prefix="hp-", dir=network.run_dir))
    airgap_dir = work_dir / "airgap"
    build_bundle(airgap_dir / V1, V1, **STANDIN_KNOBS)
    try:
        yield Site(network=network, hosts={}, work_dir=work_dir, airgap_dir=airgap_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture
def portal(site: Site, settings: Any) -> Iterator[Site]:
    jobs_dir = Path(tempfile.mkdtemp(prefix="j-", dir=site.work_dir))
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
        site.network.destroy_hosts([host for host in site.hosts.values() if host in site.network.hosts])
        site.hosts = {}


def run_job(cluster: Cluster, kind: str, params: dict[str, Any] | None = None) -> Job:
    job = job_request(cluster=Cluster.objects.get(pk=cluster.pk), kind=kind, params=params or {})
    job_execute(job_id=job.pk)
    job.refresh_from_db()
    return job


def expected_specs(rke2_type: str, cni: str) -> set[str]:
    """``6443/tcp``-style specs of the port table, as firewall-cmd lists them."""
    return {port.spec for port in rke2_ports.listening_ports(rke2_type, cni)}


def firewalld_view(site: Site, host: str) -> dict[str, Any]:
    """What firewalld reports at runtime and in its permanent configuration for the default zone and RKE2."""
    services = site.sh(host, "firewall-cmd --list-services").split()
    permanent = site.sh(host, "firewall-cmd --permanent --list-services").split()
    ports = site.sh(host, "firewall-cmd --list-ports").split()
    definitions = {}
    for name in ("rke2-server", "rke2-agent"):
        done = site.hosts[host].run(["firewall-cmd", f"--service={name}", "--get-ports", "--permanent"], timeout=30)
        definitions[name] = set(done.stdout.split()) if done.returncode == 0 else None
    return {"services": services, "permanent": permanent, "ports": ports, "definitions": definitions}


def connects(source: Host, target: Host, port: int) -> bool:
    probe = (
        "import socket,sys\ns=socket.socket();s.settimeout(3)\n"
        f"sys.exit(0 if s.connect_ex(({target.ip!r}, {port})) == 0 else 1)\n"
    )
    return source.run(["python3", "-c", probe], timeout=30).returncode == 0


def test_firewalld_opens_exactly_the_rke2_ports_and_network_manager_leaves_the_cni_alone(portal: Site) -> None:
    server, agent = "hp1", "hp2"
    portal.add_hosts([server, agent])
    for name in (server, agent):
        portal.sh(name, "systemctl enable --now firewalld.service && firewall-cmd --state")
        assert firewalld_view(portal, name)["services"] == ["dhcpv6-client", "ssh"]
    # NetworkManager on the agent, kept off the host's own link; nm-cloud-setup units, enabled, as on a cloud image.
    portal.sh(agent, f"printf '{NM_TESTHOST_CONF}' > /etc/NetworkManager/conf.d/zz-testhost.conf")
    for unit, text in FAKE_CLOUD_SETUP.items():
        portal.sh(agent, f"printf '%s' '{text}' > /etc/systemd/system/{unit}")
    portal.sh(agent, "systemctl daemon-reload && systemctl enable --now NetworkManager.service nm-cloud-setup.timer")
    portal.sh(agent, "systemctl enable nm-cloud-setup.service && systemctl is-active NetworkManager.service")
    cluster = portal.cluster("hostprep", [server, agent])

    job = run_job(cluster, JobKind.INSTALL)

    assert job.status == JobStatus.SUCCESSFUL, job.explanation
    print(f"install took {job.finished_at - job.started_at}")
    for name, rke2_type in ((server, "server"), (agent, "agent")):
        view = firewalld_view(portal, name)
        own = f"rke2-{rke2_type}"
        assert view["services"] == sorted(["dhcpv6-client", "ssh", own]), (name, view)
        assert view["permanent"] == view["services"], (name, view)
        assert view["ports"] == [], (name, view)
        assert view["definitions"][own] == expected_specs(rke2_type, "canal"), (name, view)
        other = "rke2-agent" if rke2_type == "server" else "rke2-server"
        assert view["definitions"][other] is None, (name, view)
    assert expected_specs("agent", "canal") == {"10250/tcp", "30000-32767/tcp", "8472/udp", "9099/tcp"}
    # A server port is not open on the agent: a listener there is refused to the server, while a listener on a
    # NodePort of the agent answers it.
    for port in (2379, 30080):
        portal.sh(agent, f"systemd-run --unit=probe-{port} python3 -m http.server --bind 0.0.0.0 {port}")
        portal.sh(agent, f"for i in $(seq 50); do ss -ltn | grep -q ':{port} ' && exit 0; sleep 0.1; done; exit 1")
    assert connects(portal.hosts[agent], portal.hosts[agent], 2379)
    assert not connects(portal.hosts[server], portal.hosts[agent], 2379)
    assert connects(portal.hosts[server], portal.hosts[agent], 30080)
    assert connects(portal.hosts[agent], portal.hosts[server], 6443)
    portal.sh(agent, "systemctl stop probe-2379 probe-30080")

    # NetworkManager: the file lists the CNI interfaces, the running daemon has read it, the host's link is still
    # its own (the install ran over it), nm-cloud-setup is disabled and stopped; no file on the server is needed
    # either, NetworkManager being installed there too (not running).
    parser = configparser.ConfigParser()
    parser.read_string(portal.sh(agent, f"cat {NM_CONF}"))
    assert parser["keyfile"]["unmanaged-devices"].split(";") == [
        "interface-name:cali*",
        "interface-name:flannel*",
        "interface-name:cilium*",
        "interface-name:tunl*",
        "interface-name:vxlan.calico",
    ]
    assert portal.sh(agent, "systemctl is-active NetworkManager.service").strip() == "active"
    merged = portal.sh(agent, "NetworkManager --print-config")
    unmanaged = re.search(r"^unmanaged-devices=(.*)$", merged, re.MULTILINE)
    assert unmanaged is not None, merged
    assert "interface-name:cali*" in unmanaged.group(1) and "interface-name:eth0" in unmanaged.group(1)
    portal.sh(agent, "ip link add vxlan.calico type vxlan id 4096 dstport 4789 dev eth0 && ip link set vxlan.calico up")
    state = portal.sh(agent, "sleep 1; nmcli -g GENERAL.STATE device show vxlan.calico").strip()
    assert "unmanaged" in state, state
    for unit in FAKE_CLOUD_SETUP:
        enabled = portal.hosts[agent].run(["systemctl", "is-enabled", unit], timeout=30).stdout.strip()
        active = portal.hosts[agent].run(["systemctl", "is-active", unit], timeout=30).stdout.strip()
        assert (enabled, active) == ("disabled", "inactive"), unit
    assert portal.sh(server, f"cat {NM_CONF}").startswith("# Written by the RKE2 portal")

    removed = run_job(cluster, JobKind.UNINSTALL, {"confirm": cluster.name})

    assert removed.status == JobStatus.SUCCESSFUL, removed.explanation
    for name in (server, agent):
        view = firewalld_view(portal, name)
        assert view["services"] == ["dhcpv6-client", "ssh"], (name, view)
        assert view["permanent"] == ["dhcpv6-client", "ssh"], (name, view)
        assert view["definitions"] == {"rke2-server": None, "rke2-agent": None}, (name, view)
        assert portal.hosts[name].run(["test", "-e", NM_CONF]).returncode == 1, name
    assert portal.sh(agent, "systemctl is-active NetworkManager.service").strip() == "active"
    assert "interface-name:cali" not in portal.sh(agent, "NetworkManager --print-config")


def test_firewall_switched_off_is_left_as_it_is(portal: Site) -> None:
    (server,) = names = ["hq1"]
    portal.add_hosts(names)
    portal.sh(server, "systemctl enable --now firewalld.service")
    cluster = portal.cluster("hostprep-off", names, prepare_firewall=False, prepare_network_manager=False)
    assert VariableRenderer.render_cluster_vars(cluster)["rke2_prepare_firewall"] is False

    job = run_job(cluster, JobKind.INSTALL)

    # One server alone: the firewall does not stand between nodes, and nothing of RKE2 is added to it.
    assert job.status == JobStatus.SUCCESSFUL, job.explanation
    assert firewalld_view(portal, server)["services"] == ["dhcpv6-client", "ssh"]
    assert firewalld_view(portal, server)["definitions"] == {"rke2-server": None, "rke2-agent": None}
    assert portal.hosts[server].run(["test", "-e", NM_CONF]).returncode == 1


def test_selinux_enforcing_without_the_policy_refuses_the_install_before_anything_is_installed(portal: Site) -> None:
    (server,) = names = ["hs1"]
    portal.add_hosts(names)
    portal.sh(server, "echo 1 > /etc/fake-selinux-enforce")
    cluster = portal.cluster("hostprep-selinux", names)
    runner = PlaybookRunner(
        work_dir=Path(tempfile.mkdtemp(prefix="selinux-", dir=portal.work_dir)),
        ssh_key=portal.network.private_key_text,
        envvars=portal.network.ansible_env(),
    )
    rendered = InventoryRenderer.render_for_stage(cluster, "initial_master")
    folder = artifacts.check_airgap_artifacts(V1, "canal")
    job_vars = {  # as the job engine passes them, and the enforce flag at a path the test can write
        "rke2_install_method": "airgap",
        "rke2_airgap_artifact_dir": str(folder),
        "rke2_airgap_install_script": str(artifacts.install_script(folder)),
        "rke2_host_prep_selinux_enforce_file": "/etc/fake-selinux-enforce",
    }
    try:
        refused = runner.run("initial_master.yml", rendered, job_vars)
        portal.sh(server, "echo 0 > /etc/fake-selinux-enforce")
        permissive = runner.run("initial_master.yml", rendered, {**job_vars, "rke2_start_timeout": START_TIMEOUT})
    finally:
        runner.cleanup()

    assert refused.rc != 0
    refusals = refused.task_events(REFUSE, "runner_on_failed")
    assert [event["event_data"]["host"] for event in refusals] == [server], refused.describe()
    message = refusals[0]["event_data"]["res"]["msg"]
    assert f"SELinux is enforcing on {server} and RKE2's SELinux policy (the rke2-selinux RPM) is not" in message
    assert "install method airgap" in message and "Nothing was installed." in message
    assert not refused.task_events("Install RKE2 " + V1), "an install task ran"
    # Permissive: the same playbook goes on and installs.
    assert permissive.task_events(REFUSE, "runner_on_ok")
    assert not [line for line in permissive.failures() if "SELinux" in line], permissive.failures()
    assert permissive.task_events("Install RKE2 " + V1, "runner_on_ok")


REFUSE = "Refuse a tarball install where SELinux enforces without the rke2-selinux policy"
NFTABLES_CONF = """#!/usr/sbin/nft -f
flush ruleset
table inet filter {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iif "lo" accept
    tcp dport 22 accept
  }
}
"""


def port_numbers(items: Any) -> set[int]:
    """Every port of ``6443`` and ``2379-2381`` items (nft lists adjacent ports as one range)."""
    numbers: set[int] = set()
    for item in items:
        first, _, last = item.partition("-")
        numbers.update(range(int(first), int(last or first) + 1))
    return numbers


def nft_rke2_rules(site: Site, host: str) -> list[str]:
    listing = site.sh(host, "nft list chain inet filter input")
    return [line.strip() for line in listing.splitlines() if 'comment "rke2-portal"' in line]


def test_nftables_ruleset_gets_the_rke2_ports_again_after_a_reload_and_loses_them_on_uninstall(portal: Site) -> None:
    server, outsider = "hn1", "hn2"
    names = [server]
    portal.add_hosts([server, outsider])
    portal.sh(server, f"cat > /etc/nftables.conf <<'EOF'\n{NFTABLES_CONF}EOF\nsystemctl enable --now nftables.service")
    cluster = portal.cluster("hostprep-nft", names)

    job = run_job(cluster, JobKind.INSTALL)

    assert job.status == JobStatus.SUCCESSFUL, job.explanation
    tcp = port_numbers(spec.split("/")[0] for spec in expected_specs("server", "canal") if spec.endswith("/tcp"))
    udp = port_numbers(spec.split("/")[0] for spec in expected_specs("server", "canal") if spec.endswith("/udp"))
    rules = nft_rke2_rules(portal, server)
    assert len(rules) == 2, rules
    opened = {}
    for rule in rules:
        protocol = "udp" if "udp" in rule.split("dport")[0] else "tcp"
        opened[protocol] = port_numbers(re.search(r"dport (.*) accept", rule).group(1).strip("{} ").split(", "))
    assert opened == {"tcp": tcp, "udp": udp}, rules
    # From another host: RKE2's supervisor answers; a port outside the table stays closed.
    portal.sh(server, "systemd-run --unit=probe-2390 python3 -m http.server --bind 0.0.0.0 2390")
    portal.sh(server, "for i in $(seq 50); do ss -ltn | grep -q ':2390 ' && exit 0; sleep 0.1; done; exit 1")
    assert connects(portal.hosts[outsider], portal.hosts[server], 9345)
    assert not connects(portal.hosts[outsider], portal.hosts[server], 2390)

    portal.sh(server, "systemctl reload nftables.service")
    assert len(nft_rke2_rules(portal, server)) == 2

    removed = run_job(cluster, JobKind.UNINSTALL, {"confirm": cluster.name})

    assert removed.status == JobStatus.SUCCESSFUL, removed.explanation
    assert nft_rke2_rules(portal, server) == []
    for path in ("/etc/systemd/system/nftables.service.d/rke2-portal.conf", "/usr/local/libexec/rke2-portal-nftables"):
        assert portal.hosts[server].run(["test", "-e", path]).returncode == 1, path
    portal.sh(server, "systemctl reload nftables.service")
    assert nft_rke2_rules(portal, server) == []


def test_firewall_ports_come_from_the_port_table_by_type_and_cni() -> None:
    """The variable the role opens is the port table's list for the node's type and the CNI."""
    cluster = cluster_create(
        name="hostprep-vars",
        rke2_version=V1,
        cni="calico",
        nodes=[
            {"hostname": "a", "internal_ip": "10.99.0.1", "role": "server"},
            {"hostname": "b", "internal_ip": "10.99.0.2", "role": "agent"},
        ],
    )
    specs = {
        node.hostname: {item["spec"] for item in VariableRenderer.render_node_vars(node)["rke2_firewall_ports"]}
        for node in cluster.cluster_nodes.all()
    }
    assert specs["a"] == expected_specs("server", "calico")
    assert specs["a"] == {"9345/tcp", "6443/tcp", "2379/tcp", "2380/tcp", "2381/tcp", "10250/tcp"} | {
        "30000-32767/tcp",
        "4789/udp",
        "179/tcp",
    }
    assert specs["b"] == {"10250/tcp", "30000-32767/tcp", "4789/udp", "179/tcp"}
    assert VariableRenderer.render_cluster_vars(cluster)["rke2_prepare_network_manager"] is True
