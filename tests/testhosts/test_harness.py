"""The SSH test-host harness: real sshd, private filesystems, host-to-host traffic, Ansible, clean teardown."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import ansible_runner
import pytest
import yaml

from tests.testhosts.fixtures import MakeHosts, require_test_hosts
from tests.testhosts.harness import (
    DEFAULT_CLAIMS_DIR,
    DEPLOY_USER,
    TARGET_PYTHON,
    Host,
    HostNetwork,
    cleanup_stale,
    instance_leftovers,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def _processes_mentioning(needle: str) -> list[int]:
    """PIDs whose command line or mount table mentions ``needle`` (any mount namespace)."""
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


def _pids_in_namespace(host: Host) -> list[int]:
    target = os.stat(f"/run/netns/{host.namespace}")
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                pids.append(int(entry))
    return pids


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.05)


def test_root_and_deploy_log_in_with_the_key_only(
    make_hosts: MakeHosts, host_network: HostNetwork, tmp_path: Path
) -> None:
    hosts = make_hosts(3)

    for host in hosts:
        assert host.users == ("root", DEPLOY_USER)
        assert host.port == 22
        as_root = host.ssh(["sh", "-c", "hostname; id -un"], check=True)
        assert as_root.stdout.split() == [host.name, "root"]
        as_deploy = host.ssh("id -un && sudo -n true && sudo -n id -un && echo $HOME", user=DEPLOY_USER, check=True)
        assert as_deploy.stdout.split() == [DEPLOY_USER, "root", "/var/lib/deploy-home"]

    via_config = subprocess.run(
        ["ssh", "-F", str(host_network.ssh_config_path), "-o", "BatchMode=yes", f"{DEPLOY_USER}@{hosts[2].name}",
         "hostname"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    assert via_config.stdout.strip() == hosts[2].name

    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    for user in hosts[0].users:
        refused = subprocess.run(
            ["ssh", "-i", str(other_key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
             "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={hosts[0].known_hosts_path}",
             f"{user}@{hosts[0].ip}", "true"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert refused.returncode == 255
        assert "Permission denied (publickey)" in refused.stderr
    assert (os.stat(hosts[0].private_key_path).st_mode & 0o777) == 0o600
    assert hosts[0].private_key_path.read_text() == hosts[0].private_key_text


def test_each_host_has_its_own_hostname_and_files(make_hosts: MakeHosts) -> None:
    node1, node2, node3 = make_hosts(3)
    token = secrets.token_hex(8)

    for directory in ("/etc", "/var/lib", "/var/log", "/usr/local", "/opt", "/root", "/tmp", "/run"):
        probe = f"{directory}/testhosts-probe-{token}"
        node1.ssh(f"echo {token} > {probe}", check=True)
        assert node1.path(probe).read_text() == f"{token}\n"
        assert not Path(probe).exists()
        for other in (node2, node3):
            assert other.ssh(["test", "!", "-e", probe]).returncode == 0, (other.name, probe)
            assert not other.path(probe).exists()
    assert node1.path(f"/etc/testhosts-probe-{token}") == node1.root_dir / f"etc/testhosts-probe-{token}"

    machine_ids = set()
    for host in (node1, node2, node3):
        assert host.run(["hostname"], check=True).stdout.strip() == host.name
        assert host.path("/etc/hostname").read_text() == f"{host.name}\n"
        assert host.run(["getent", "passwd", DEPLOY_USER], check=True).stdout.startswith(f"{DEPLOY_USER}:")
        machine_ids.add(host.path("/etc/machine-id").read_text())
        processes = host.run(["ps", "-eo", "pid=,comm="], check=True).stdout.split()
        assert processes[:2] == ["1", "sshd"]
    assert len(machine_ids) == 3
    with pytest.raises(KeyError):
        pwd.getpwnam(DEPLOY_USER)

    # A file of the machine's /etc that the host deletes maps to a path that does not exist.
    assert node1.path("/etc/debian_version") == Path("/etc/debian_version")
    node1.ssh("rm /etc/debian_version", check=True)
    assert not node1.path("/etc/debian_version").exists()
    assert Path("/etc/debian_version").exists()
    assert node2.ssh("cat /etc/debian_version", check=True).stdout == Path("/etc/debian_version").read_text()


def test_hosts_reach_each_other_by_name_but_nothing_else(make_hosts: MakeHosts, host_network: HostNetwork) -> None:
    server, client = make_hosts(2)
    started = server.ssh(
        f"setsid nohup {TARGET_PYTHON} -m http.server 9345 --directory /etc >/dev/null 2>&1 </dev/null &",
        user=DEPLOY_USER,
        check=True,
    )
    assert started.returncode == 0
    fetch = (
        "import sys, urllib.request;"
        "print(urllib.request.urlopen(f'http://{sys.argv[1]}:9345/hostname', timeout=5).read().decode())"
    )

    def served() -> bool:
        return client.run([TARGET_PYTHON, "-c", fetch, server.name]).returncode == 0

    _wait_for(served, message="the http server on the first host")
    assert client.run([TARGET_PYTHON, "-c", fetch, server.name], check=True).stdout.strip() == server.name
    resolved = client.run(["getent", "hosts", server.name], check=True).stdout.split()
    assert resolved[0] == server.ip

    routes = client.run(["ip", "-4", "route", "show"], check=True).stdout
    assert "default" not in routes
    unreachable = client.run(["ip", "route", "get", "192.0.2.1"])
    assert unreachable.returncode != 0
    assert "unreachable" in unreachable.stderr.lower()

    daemons = [pid for pid in _pids_in_namespace(server) if b"http.server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert daemons, "the daemon started over ssh should run in the host"
    host_network.destroy_host(server)
    assert not any(Path(f"/proc/{pid}").exists() for pid in daemons)
    assert client.run(["getent", "hosts", server.name]).returncode != 0


def test_added_and_recreated_hosts_are_fresh_and_known(make_hosts: MakeHosts, host_network: HostNetwork) -> None:
    (node1,) = make_hosts(1)
    (node2,) = make_hosts(1)
    assert (node1.name, node2.name) == ("node1", "node2")
    assert node1.run(["getent", "hosts", "node2"], check=True).stdout.split()[0] == node2.ip
    node1.ssh("mkdir -p /etc/rancher/rke2 && echo old > /etc/rancher/rke2/config.yaml", check=True)
    old_key = node1.host_public_key

    fresh = host_network.recreate_host(node1)

    assert (fresh.name, fresh.ip) == (node1.name, node1.ip)
    assert not node1.alive and fresh.alive
    assert fresh.host_public_key != old_key
    assert fresh.known_hosts_line in host_network.known_hosts_text
    assert old_key not in host_network.known_hosts_text
    assert fresh.ssh(["test", "!", "-e", "/etc/rancher/rke2/config.yaml"]).returncode == 0
    assert not fresh.path("/etc/rancher/rke2/config.yaml").exists()
    assert (
        node2.ssh(["ssh-keyscan", "-t", "ed25519", fresh.name], check=True).stdout.split()[-1]
        == (fresh.host_public_key.split()[1])
    )

    named = make_hosts(names=["cp-1", "worker-1"])
    assert [host.name for host in named] == ["cp-1", "worker-1"]
    assert node2.run(["getent", "hosts", "worker-1"], check=True).stdout.split()[0] == named[1].ip
    with pytest.raises(ValueError, match="names"):
        make_hosts(names=["Bad_Name"])
    with pytest.raises(ValueError, match="already exists"):
        make_hosts(names=["cp-1"])


def test_ansible_runner_playbook_with_become_from_deploy(
    make_hosts: MakeHosts,
    host_network: HostNetwork,
    ansible_ssh_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    hosts = make_hosts(3)
    token = secrets.token_hex(8)
    config = "/etc/rancher/rke2/config.yaml"
    tasks = [
        {"name": "Reach the host", "ansible.builtin.ping": {}},
        {
            "name": "Log in as the deployment user",
            "ansible.builtin.command": "id -un",
            "become": False,
            "register": "login",
            "changed_when": False,
        },
        {
            "name": "Become root",
            "ansible.builtin.command": "id -un",
            "register": "elevated",
            "changed_when": False,
        },
        {"name": "Read the hostname", "ansible.builtin.command": "hostname", "register": "uts", "changed_when": False},
        {
            "name": "Check identities",
            "ansible.builtin.assert": {
                "that": [
                    "login.stdout == 'deploy'",
                    "elevated.stdout == 'root'",
                    "uts.stdout == inventory_hostname",
                ]
            },
        },
        {
            "name": "Create the configuration directory",
            "ansible.builtin.file": {"path": "/etc/rancher/rke2", "state": "directory", "mode": "0755"},
        },
        {
            "name": "Write the node configuration",
            "ansible.builtin.copy": {
                "dest": config,
                "content": "{{ {'node-name': inventory_hostname, 'token': run_token} | to_nice_yaml }}",
                "mode": "0600",
            },
        },
    ]
    playbook = [{"name": "Prove the test hosts", "hosts": "all", "become": True, "gather_facts": False, "tasks": tasks}]
    project = tmp_path / "project"
    project.mkdir()
    (project / "site.yml").write_text(yaml.safe_dump(playbook, sort_keys=False))
    (tmp_path / "runner").mkdir()
    events: Counter[str] = Counter()

    runner = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        project_dir=str(project),
        playbook="site.yml",
        inventory=host_network.inventory(hosts, user=DEPLOY_USER),
        extravars={"run_token": token},
        envvars=ansible_ssh_env,
        event_handler=lambda event: events.update([event["event"]]) or True,
        quiet=True,
    )

    assert (runner.status, runner.rc) == ("successful", 0), runner.stdout.read()
    assert events["runner_on_ok"] == len(tasks) * len(hosts)
    assert set(runner.stats["ok"]) == {host.name for host in hosts}
    for host in hosts:
        written = host.path(config)
        assert written == host.root_dir / config.lstrip("/")
        assert yaml.safe_load(written.read_text()) == {"node-name": host.name, "token": token}
        assert (os.stat(written).st_mode & 0o777) == 0o600
    real = Path(config)
    assert not real.exists() or token not in real.read_text()


def test_teardown_leaves_nothing(tmp_path: Path) -> None:
    require_test_hosts()
    network = HostNetwork().start()
    try:
        hosts = network.add_hosts(2)
        run_dir = str(network.run_dir)
        index = network.index
        assert len(network.bridge) <= 15 and all(len(host.veth) <= 15 for host in hosts)
        claim = json.loads((DEFAULT_CLAIMS_DIR / f"net-{index}.json").read_text())
        assert claim["pid"] == os.getpid()
        # Leave behind what real runs leave: a daemon started over ssh and an ssh ControlPersist master.
        hosts[0].ssh("sudo -n setsid nohup sleep 600 >/dev/null 2>&1 </dev/null &", user=DEPLOY_USER, check=True)
        control_path = f"{network.run_dir}/cm"
        # ssh honours the first value of an option: ours come before those of ssh_argv().
        subprocess.run(
            ["ssh", "-o", "ControlMaster=yes", "-o", "ControlPersist=300", "-o", f"ControlPath={control_path}",
             "-fN", *hosts[1].ssh_argv("root")[1:]],
            check=True, timeout=30, stdin=subprocess.DEVNULL, capture_output=True,
        )  # fmt: skip
        master = [pid for pid in _processes_mentioning(control_path) if pid != os.getpid()]
        assert master, "the ControlPersist master should run"
        assert _processes_mentioning(run_dir)
    finally:
        network.close()

    assert network.leftovers() == []
    assert instance_leftovers(index, run_dir=run_dir) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"thn{index}h" not in netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert f"thn{index}" not in links
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
    assert f"10.213.{index}." not in routes
    _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in master), message="the ssh master to exit")
    assert _processes_mentioning(run_dir) == []
    assert not Path(run_dir).exists()


def test_networks_of_one_process_get_separate_subnets() -> None:
    require_test_hosts()
    with HostNetwork(hostname_prefix="a") as first, HostNetwork(hostname_prefix="b") as second:
        assert first.index != second.index
        (a1,) = first.add_hosts()
        (b1,) = second.add_hosts()
        assert (a1.name, b1.name) == ("a1", "b1")
        assert a1.ssh("hostname", check=True).stdout.strip() == "a1"
        assert b1.ssh("hostname", check=True).stdout.strip() == "b1"
        assert a1.run(["ip", "route", "get", b1.ip]).returncode != 0
    assert first.leftovers() == [] and second.leftovers() == []


def _start_cli(count: int) -> tuple[subprocess.Popen[str], dict[str, object]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.testhosts", "up", "--count", str(count)],
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
    return proc, json.loads(line)


def test_cli_up_serves_hosts_until_sigterm() -> None:
    require_test_hosts()
    proc, described = _start_cli(2)
    try:
        hosts = described["hosts"]
        assert isinstance(hosts, list) and [host["name"] for host in hosts] == ["node1", "node2"]
        login = subprocess.run(
            [*hosts[1]["ssh"].split(), "hostname"], capture_output=True, text=True, timeout=30, check=True
        )
        assert login.stdout.strip() == "node2"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert instance_leftovers(int(described["index"]), run_dir=str(described["run_dir"])) == []


def test_cleanup_stale_removes_networks_of_dead_owners() -> None:
    require_test_hosts()
    proc, described = _start_cli(1)
    proc.kill()
    proc.communicate(timeout=30)
    index, run_dir = int(described["index"]), str(described["run_dir"])
    # The hosts outlive their owner until a stale cleanup (another session may get there first).
    removed = cleanup_stale()
    assert index in [claim.index for claim in removed] or not (DEFAULT_CLAIMS_DIR / f"net-{index}.json").exists()
    assert instance_leftovers(index, run_dir=run_dir) == []


def test_missing_prerequisites_skip_locally_and_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.testhosts.fixtures.missing_prerequisites", lambda: ("not running as root",))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not running as root"):
        require_test_hosts()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not running as root"):
        require_test_hosts()


def test_blocked_ports_and_cut_links(make_hosts: MakeHosts) -> None:
    server, client = make_hosts(2)

    def reaches_ssh() -> bool:
        probe = client.run(["timeout", "2", "bash", "-c", f"</dev/tcp/{server.ip}/22"])
        return probe.returncode == 0

    assert reaches_ssh()
    server.block_port("tcp", 22, direction="in")
    assert server.blocked_ports() == {"in_tcp": [22]}
    assert not reaches_ssh()
    server.unblock_port("tcp", 22)
    assert server.blocked_ports() == {}
    assert reaches_ssh()
    server.cut_link()
    assert not reaches_ssh()
    server.restore_link()
    _wait_for(reaches_ssh, message="the restored link")
    with pytest.raises(ValueError, match="proto"):
        server.block_port("icmp", 1)
