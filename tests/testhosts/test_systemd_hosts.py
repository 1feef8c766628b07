"""Systemd test hosts: real systemd as PID 1 booted with systemd-nspawn, reachable over real SSH."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ansible_runner
import pytest
import yaml

from tests.testhosts import cgroups, rootfs
from tests.testhosts.fixtures import MakeHosts, require_test_hosts
from tests.testhosts.harness import DEFAULT_CLAIMS_DIR, DEPLOY_USER, HostNetwork, cleanup_stale, instance_leftovers
from tests.testhosts.systemd import INOTIFY_LIMITS, SystemdHost

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"

# A service that reports readiness over $NOTIFY_SOCKET after a delay, as a Type=notify daemon does.
NOTIFY_SCRIPT = """\
import os, socket, sys, time
print("notify-demo starting", flush=True)
time.sleep(float(sys.argv[1]))
address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\\0" + address[1:]
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
    notify.connect(address)
    notify.sendall(b"READY=1\\nSTATUS=serving")
print("notify-demo ready", flush=True)
while True:
    time.sleep(3600)
"""

NOTIFY_UNIT = """\
[Unit]
Description=Notify demo

[Service]
Type=notify
ExecStart=/usr/bin/python3 /usr/local/bin/notify-demo.py {delay}
TimeoutStartSec=30

[Install]
WantedBy=multi-user.target
"""


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.05)


def _processes_mentioning(needle: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for name in ("cmdline", "mountinfo"):
            try:
                if needle.encode() in Path(f"/proc/{entry}/{name}").read_bytes():
                    found.append(int(entry))
                    break
            except OSError:
                pass
    return found


def _install_notify_unit(host: SystemdHost, name: str, delay: float) -> None:
    host.ssh(["tee", "/usr/local/bin/notify-demo.py"], input=NOTIFY_SCRIPT, check=True)
    host.ssh(["tee", f"/etc/systemd/system/{name}.service"], input=NOTIFY_UNIT.format(delay=delay), check=True)
    host.ssh("systemctl daemon-reload", check=True)


def test_hosts_boot_systemd_and_accept_ssh(make_systemd_hosts: MakeHosts) -> None:
    hosts = make_systemd_hosts(3)

    machine_ids = set()
    for host in hosts:
        assert isinstance(host, SystemdHost)
        state = host.wait_until_running()
        failed = host.failed_units()
        assert state == "running", f"{host.name} is {state}, failed units {failed}: {host.journal(output='short')}"
        assert failed == []
        assert "Too many open files" not in host.journal()
        assert host.ssh("ps -p 1 -o comm=", check=True).stdout.strip() == "systemd"
        assert host.ssh("hostname; id -un", check=True).stdout.split() == [host.name, "root"]
        as_deploy = host.ssh("id -un && sudo -n id -un && echo $HOME", user=DEPLOY_USER, check=True)
        assert as_deploy.stdout.split() == [DEPLOY_USER, "root", "/var/lib/deploy-home"]
        machine_ids.add(host.run(["cat", "/etc/machine-id"], check=True).stdout.strip())
        assert host.run(["systemd-detect-virt", "--container"]).stdout.strip() == "systemd-nspawn"
        # The stand-in's own etcd needs 2379/2380: the packaged service must not run.
        assert host.systemctl("is-enabled", "etcd.service").stdout.strip() == "masked"
        assert host.run(["etcd", "--version"], check=True).stdout.startswith("etcd Version")
        assert "Client Version" in host.run(["kubectl", "version", "--client"], check=True).stdout
        assert host.ssh(["test", "-w", "/usr/bin/kubectl"]).returncode != 0
    # What a container cannot do, and playbooks must report: kernel parameters; its own network it may change.
    denied = hosts[0].ssh("sysctl -w vm.overcommit_memory=1")
    assert denied.returncode != 0 and "permission denied" in denied.stderr
    assert hosts[0].ssh("nft add table inet probe && nft delete table inet probe").returncode == 0
    assert len(machine_ids) == 3
    for name, wanted in INOTIFY_LIMITS.items():
        assert int(Path(f"/proc/sys/fs/inotify/{name}").read_text()) >= wanted
    keys = {host.run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"], check=True).stdout for host in hosts}
    assert len(keys) == 3
    assert hosts[0].run(["getent", "hosts", hosts[2].name], check=True).stdout.split()[0] == hosts[2].ip


def test_files_are_private_to_each_host_and_the_root_stays_untouched(make_systemd_hosts: MakeHosts) -> None:
    node1, node2 = make_systemd_hosts(2)
    token = secrets.token_hex(8)
    root = rootfs.cached_root()
    assert root is not None

    node1.ssh(f"mkdir -p /etc/rancher/rke2 && echo {token} > /etc/rancher/rke2/config.yaml", check=True)
    node1.ssh(f"echo {token} > /var/tmp/probe && rm /etc/debian_version", check=True)

    assert node1.path("/etc/rancher/rke2/config.yaml") == node1.root_dir / "etc/rancher/rke2/config.yaml"
    assert node1.path("/etc/rancher/rke2/config.yaml").read_text() == f"{token}\n"
    assert node1.path("/var/tmp/probe").read_text() == f"{token}\n"
    assert not node1.path("/etc/debian_version").exists()
    assert node2.path("/etc/debian_version") == root / "etc/debian_version"
    assert node2.ssh(["test", "!", "-e", "/etc/rancher/rke2/config.yaml"]).returncode == 0
    assert (root / "etc/debian_version").exists()
    assert not (root / "etc/rancher").exists()


def test_notify_unit_start_blocks_until_ready_and_logs_to_the_journal(make_systemd_hosts: MakeHosts) -> None:
    (host,) = make_systemd_hosts(1)
    assert isinstance(host, SystemdHost)
    _install_notify_unit(host, "notify-demo", delay=2)

    started = time.monotonic()
    host.ssh("systemctl start notify-demo.service", check=True)
    elapsed = time.monotonic() - started

    assert elapsed >= 2.0, f"systemctl start returned after {elapsed:.2f}s, before READY=1"
    assert host.systemctl("is-active", "notify-demo.service").stdout.strip() == "active"
    assert host.systemctl("show", "-P", "StatusText", "notify-demo.service").stdout.strip() == "serving"
    journal = host.ssh("journalctl -u notify-demo.service --no-pager -o cat", check=True).stdout
    assert "notify-demo starting" in journal and "notify-demo ready" in journal
    assert "notify-demo ready" in host.journal("notify-demo.service")

    cursor = host.journal_cursor()
    host.ssh("systemctl restart notify-demo.service", check=True)
    assert host.journal("notify-demo.service", after_cursor=cursor).count("notify-demo ready") == 1
    assert host.journal("notify-demo.service").count("notify-demo ready") == 2

    # A main process that exits before READY=1 fails the start at once, with its output in the journal.
    host.ssh(
        ["tee", "/etc/systemd/system/broken-demo.service"],
        input="[Service]\nType=notify\nExecStart=/bin/sh -c 'echo cannot start: bad token; exit 3'\n",
        check=True,
    )
    host.ssh("systemctl daemon-reload", check=True)
    failed = host.ssh("systemctl start broken-demo.service")
    assert failed.returncode != 0
    assert host.systemctl("is-failed", "broken-demo.service").stdout.strip() == "failed"
    assert "cannot start: bad token" in host.journal("broken-demo.service")
    assert "broken-demo.service" in host.failed_units()


def test_ansible_systemd_service_over_ssh_on_three_hosts(
    make_systemd_hosts: MakeHosts,
    systemd_host_network: HostNetwork,
    systemd_ansible_ssh_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    hosts = make_systemd_hosts(3)
    tasks = [
        {"name": "Gather the service manager", "ansible.builtin.setup": {"gather_subset": ["!all", "virtual"]}},
        {
            "name": "Check the service manager",
            "ansible.builtin.assert": {
                "that": ["ansible_facts.service_mgr == 'systemd'", "ansible_facts.virtualization_role == 'guest'"]
            },
        },
        {
            "name": "Install the daemon",
            "ansible.builtin.copy": {"dest": "/usr/local/bin/notify-demo.py", "content": NOTIFY_SCRIPT, "mode": "0755"},
        },
        {
            "name": "Install the unit",
            "ansible.builtin.copy": {
                "dest": "/etc/systemd/system/notify-demo.service",
                "content": NOTIFY_UNIT.format(delay=0.5),
                "mode": "0644",
            },
        },
        {
            "name": "Start and enable it",
            "ansible.builtin.systemd_service": {
                "name": "notify-demo",
                "state": "started",
                "enabled": True,
                "daemon_reload": True,
            },
        },
        {"name": "Restart it", "ansible.builtin.systemd_service": {"name": "notify-demo", "state": "restarted"}},
        {"name": "Read the services", "ansible.builtin.service_facts": {}},
        {
            "name": "Check it runs",
            "ansible.builtin.assert": {
                "that": [
                    "ansible_facts.services['notify-demo.service'].state == 'running'",
                    "ansible_facts.services['notify-demo.service'].status == 'enabled'",
                ]
            },
        },
        {
            "name": "Read its journal",
            "ansible.builtin.command": "journalctl -u notify-demo.service --no-pager -o cat",
            "register": "journal",
            "changed_when": False,
        },
        {
            "name": "Check both starts waited for READY=1",
            "ansible.builtin.assert": {
                "that": ["journal.stdout_lines | select('equalto', 'notify-demo ready') | list | length == 2"]
            },
        },
        {
            "name": "Stop and disable it",
            "ansible.builtin.systemd_service": {"name": "notify-demo", "state": "stopped", "enabled": False},
        },
    ]
    playbook = [{"name": "Drive systemd", "hosts": "all", "become": True, "gather_facts": False, "tasks": tasks}]
    project = tmp_path / "project"
    project.mkdir()
    (project / "site.yml").write_text(yaml.safe_dump(playbook, sort_keys=False))
    (tmp_path / "runner").mkdir()

    runner = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        project_dir=str(project),
        playbook="site.yml",
        inventory=systemd_host_network.inventory(hosts, user=DEPLOY_USER),
        envvars=systemd_ansible_ssh_env,
        quiet=True,
    )

    assert (runner.status, runner.rc) == ("successful", 0), runner.stdout.read()
    assert set(runner.stats["ok"]) == {host.name for host in hosts}
    assert runner.stats["failures"] == {}
    for host in hosts:
        assert host.systemctl("is-active", "notify-demo.service").stdout.strip() == "inactive"
        assert host.systemctl("is-enabled", "notify-demo.service").stdout.strip() == "disabled"
        assert host.journal("notify-demo.service").count("notify-demo ready") == 2


def test_reboot_keeps_the_files_and_gets_a_new_boot(make_systemd_hosts: MakeHosts) -> None:
    (host,) = make_systemd_hosts(1)
    assert isinstance(host, SystemdHost)
    host.ssh("echo kept > /etc/kept", check=True)
    old_boot, old_pid = host.boot_id(), host.pid

    host.ssh("systemctl reboot")  # the connection may drop
    _wait_for(lambda: host.alive and host.pid != old_pid, timeout=30, message="the new boot")
    _wait_for(lambda: host.ssh("true").returncode == 0, timeout=30, message="ssh after reboot")

    assert host.boot_id() != old_boot
    assert host.ssh("cat /etc/kept", check=True).stdout == "kept\n"
    assert host.wait_until_running() == "running"
    host.reboot()
    assert host.ssh("cat /etc/kept", check=True).stdout == "kept\n"


def test_blocked_ports_and_cut_links(make_systemd_hosts: MakeHosts) -> None:
    server, client = make_systemd_hosts(2)
    assert isinstance(server, SystemdHost) and isinstance(client, SystemdHost)
    server.ssh("systemd-run --unit=udp-echo python3 -c \"import socket\n"
               "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 8472))\n"
               "while True:\n d, a = s.recvfrom(100); s.sendto(d, a)\"", check=True)  # fmt: skip
    probe = (
        "import socket, sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.5)\n"
        "for _ in range(6):\n"
        "  s.sendto(b'x', (sys.argv[1], 8472))\n"
        "  try: s.recvfrom(10); print('reached'); break\n"
        "  except OSError: pass\n"
        "else: print('blocked')"
    )

    def udp() -> str:
        return client.run(["python3", "-c", probe, server.ip], check=True).stdout.strip()

    def tcp() -> int:
        return client.run(["timeout", "2", "bash", "-c", f"</dev/tcp/{server.ip}/22"]).returncode

    assert udp() == "reached"
    server.block_port("udp", 8472)
    assert server.blocked_ports() == {"in_udp": [8472], "out_udp": [8472]}
    assert udp() == "blocked"
    assert tcp() == 0
    assert "udp dport @in_udp drop" in server.run(["nft", "list", "ruleset"], check=True).stdout
    server.unblock_port("udp", 8472)
    assert udp() == "reached"
    server.block_port("tcp", 22, direction="in")
    assert tcp() != 0
    server.unblock()
    assert server.blocked_ports() == {}
    assert tcp() == 0

    server.cut_link()
    assert tcp() != 0
    server.restore_link()
    _wait_for(lambda: tcp() == 0, message="the restored link")
    assert server.ssh("true").returncode == 0


def test_recreated_host_is_reachable_at_once(make_systemd_hosts: MakeHosts, systemd_host_network: HostNetwork) -> None:
    node1, node2 = make_systemd_hosts(2)
    # Both neighbour caches (this machine's and the peer's) now hold node1's address.
    assert node2.run(["timeout", "3", "bash", "-c", f"</dev/tcp/{node1.ip}/22"]).returncode == 0
    node1.ssh("echo old > /etc/marker", check=True)
    old_key = node1.host_public_key

    fresh = systemd_host_network.recreate_host(node1)
    started = time.monotonic()
    from_machine = fresh.ssh("hostname", timeout=10)
    from_peer = node2.run(["timeout", "3", "bash", "-c", f"</dev/tcp/{fresh.ip}/22"])
    elapsed = time.monotonic() - started

    assert from_machine.stdout.strip() == fresh.name and from_peer.returncode == 0
    # With a new MAC address the neighbour caches kept the old one: about 38 s without an answer.
    assert elapsed < 5, f"the recreated host took {elapsed:.1f}s to answer"
    assert fresh.host_public_key != old_key and fresh.known_hosts_line in systemd_host_network.known_hosts_text
    assert fresh.ssh(["test", "!", "-e", "/etc/marker"]).returncode == 0


def test_teardown_leaves_nothing() -> None:
    require_test_hosts("systemd")
    network = HostNetwork(flavour="systemd").start()
    try:
        hosts = network.add_hosts(2)
        index, run_dir, prefix = network.index, str(network.run_dir), f"thn{network.index}"
        assert cgroups.existing(f"{prefix}/h{hosts[0].slot}")
        # What real runs leave behind: a unit, a daemon started from an ssh session, one started from outside
        # any unit (nsenter) and an ssh ControlPersist master on this machine.
        hosts[0].ssh("systemd-run --unit=sleeper sleep 6001", check=True)
        hosts[0].ssh("sudo -n setsid nohup sleep 6002 >/dev/null 2>&1 </dev/null &", user=DEPLOY_USER, check=True)
        hosts[1].run(["sh", "-c", "setsid nohup sleep 6003 >/dev/null 2>&1 </dev/null &"], check=True)
        hosts[1].block_port("udp", 4789)
        control_path = f"{network.run_dir}/cm"
        subprocess.run(
            ["ssh", "-o", "ControlMaster=yes", "-o", "ControlPersist=300", "-o", f"ControlPath={control_path}",
             "-fN", *hosts[1].ssh_argv("root")[1:]],
            check=True, timeout=30, stdin=subprocess.DEVNULL, capture_output=True,
        )  # fmt: skip
        sleepers = [
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if Path(f"/proc/{pid}/cmdline").exists()
            and Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:2] in ([b"6001"], [b"6002"], [b"6003"])
        ]
        assert len(sleepers) == 3
        nspawns = [
            pid for pid in _processes_mentioning(run_dir) if Path(f"/proc/{pid}/comm").read_text() == "systemd-nspawn\n"
        ]
        assert len(nspawns) == 2
    finally:
        network.close()

    assert instance_leftovers(index, run_dir=run_dir) == []
    assert cgroups.existing(prefix) == []
    for pid in sleepers + nspawns:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert f"{prefix}h" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"10.213.{index}." not in subprocess.run(["ip", "neigh"], capture_output=True, text=True).stdout
    assert _processes_mentioning(run_dir) == []
    assert not Path(run_dir).exists()


def test_nine_hosts_boot_in_seconds() -> None:
    require_test_hosts("systemd")
    with HostNetwork(flavour="systemd", hostname_prefix="b") as network:
        started = time.perf_counter()
        hosts = network.add_hosts(9)
        ssh_ready = time.perf_counter() - started
        states = [host.wait_until_running() for host in hosts]
        running = time.perf_counter() - started
        assert all(host.ssh("true").returncode == 0 for host in hosts)
    assert states == ["running"] * 9
    ARTIFACTS.mkdir(exist_ok=True)
    report = {"hosts": 9, "ssh_ready_seconds": round(ssh_ready, 2), "running_seconds": round(running, 2)}
    (ARTIFACTS / "systemd-hosts-boot.json").write_text(json.dumps(report) + "\n")
    print(f"9 systemd hosts: ssh-ready {ssh_ready:.2f}s, running {running:.2f}s")
    assert ssh_ready < 30


def test_cli_serves_systemd_hosts_and_stale_cleanup_removes_them() -> None:
    require_test_hosts("systemd")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.testhosts", "up", "--count", "2", "--flavour", "systemd"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        pytest.fail(f"the CLI exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
    described = json.loads(line)
    index, run_dir = int(described["index"]), str(described["run_dir"])
    try:
        assert described["flavour"] == "systemd"
        login = subprocess.run(
            [*described["hosts"][1]["ssh"].split(), "ps -p 1 -o comm=; hostname"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert login.stdout.split() == ["systemd", "node2"]
    finally:
        # The owner dies without tearing down: its hosts keep running until a stale cleanup (which another
        # process starting a network may run first).
        proc.kill()
        proc.communicate(timeout=30)
    removed = cleanup_stale()
    assert index in [claim.index for claim in removed] or not (DEFAULT_CLAIMS_DIR / f"net-{index}.json").exists()
    assert instance_leftovers(index, run_dir=run_dir) == []
    assert cgroups.existing(f"thn{index}") == []


def test_missing_systemd_prerequisites_skip_locally_and_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "tests.testhosts.systemd.missing_systemd_prerequisites", lambda: ("/usr/bin/systemd-nspawn not found",)
    )
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="systemd-nspawn not found"):
        require_test_hosts("systemd")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="systemd-nspawn not found"):
        require_test_hosts("systemd")
