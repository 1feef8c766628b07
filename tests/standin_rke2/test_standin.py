"""Behaviour of the stand-in RKE2 on SSH test hosts, exercised directly (no product playbooks).

One cluster is built across the module (the tests run in file order and each builds on the previous state):
bundle -> install -> first server -> two servers joining at once -> agent (wrong token first) -> kubectl node
operations -> NotReady detection -> quorum-protected removal -> server removal + uninstall -> upgrade ->
Ansible's service module driving the SysV scripts.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.standin_rke2.build import build_bundle, commit_of
from tests.standin_rke2.rke2standin import cisprofile, etcd, log, node, yamlutil
from tests.standin_rke2.rke2standin import config as rke2_config

OLD = "v1.31.4+rke2r1"
NEW = "v1.32.1+rke2r1"
TOKEN = "standin-cluster-secret-7f3a"
KUBECTL = "/usr/bin/kubectl"
RKE2_KUBECTL = "/var/lib/rancher/rke2/bin/kubectl"
KUBECONFIG = "/etc/rancher/rke2/rke2.yaml"
ETCDCTL = (
    "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379"
    " --cacert=/var/lib/rancher/rke2/server/tls/etcd/server-ca.crt"
    " --cert=/var/lib/rancher/rke2/server/tls/etcd/server-client.crt"
    " --key=/var/lib/rancher/rke2/server/tls/etcd/server-client.key"
)
# Fast knobs so the module stays short; defaults are documented in README.md.
KNOBS = {
    "server_start_delay": 0.5,
    "agent_start_delay": 0.5,
    "heartbeat_interval": 1.0,
    "node_monitor_grace": 5.0,
    "join_retry_interval": 2.0,
}

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


# --------------------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def workdir():
    # Under /var/tmp: shared with the test hosts (their /tmp is private), so hosts can read the bundles.
    path = Path(tempfile.mkdtemp(prefix="rke2-standin-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def bundles(workdir):
    return {
        OLD: build_bundle(workdir / "bundle-old", OLD, **KNOBS),
        NEW: build_bundle(workdir / "bundle-new", NEW, **KNOBS),
    }


@pytest.fixture(scope="module")
def hosts(host_network):
    created = host_network.add_hosts(4)
    yield created
    for host in created:
        if host.alive:
            host.run(["sh", "-c", "/usr/local/bin/rke2-killall.sh >/dev/null 2>&1 || true"], timeout=30)
        host_network.destroy_host(host)


@pytest.fixture(scope="module")
def state():
    return {}


def sh(host, script, timeout=60, check=True):
    proc = host.run(["sh", "-c", script], timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            "%s: %r failed with %d\nstdout: %s\nstderr: %s"
            % (host.name, script, proc.returncode, proc.stdout, proc.stderr)
        )
    return proc


def install(host, bundle, version, role):
    return sh(
        host,
        "INSTALL_RKE2_ARTIFACT_PATH=%s INSTALL_RKE2_VERSION='%s' INSTALL_RKE2_TYPE=%s INSTALL_RKE2_METHOD=tar"
        " sh %s/install.sh" % (bundle, version, role, bundle),
        check=False,
    )


def write_config(host, lines):
    text = "\n".join(lines) + "\n"
    sh(host, "mkdir -p /etc/rancher/rke2 && umask 077 && cat > /etc/rancher/rke2/config.yaml <<'EOF'\n%sEOF" % text)


def log_of(host, role):
    return sh(host, "cat /var/lib/rancher/rke2/%s/logs/rke2.log" % role, check=False).stdout


def kubectl(state, *args, check=True, timeout=60):
    cmd = [KUBECTL, "--kubeconfig", str(state["kubeconfig"]), "--cache-dir", str(state["kcache"]), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            "kubectl %s failed (%d): %s%s" % (" ".join(args), proc.returncode, proc.stdout, proc.stderr)
        )
    return proc


def nodes_json(state):
    return json.loads(kubectl(state, "get", "nodes", "-o", "json").stdout)["items"]


def ready_status(state, name):
    return kubectl(
        state, "get", "node", name, "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
    ).stdout.strip()


def wait_for(predicate, timeout, what, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def etcd_members(host):
    out = sh(host, ETCDCTL + " member list -w json").stdout
    return json.loads(out)["members"]


def rke2_processes(host):
    out = sh(host, "ps -eo pid=,args=", check=False).stdout
    return [line for line in out.splitlines() if "/bin/rke2 " in line or "bin/etcd " in line]


# --------------------------------------------------------------------------------------------------------------
# config parsing (in-process: the same module runs on the hosts' system python)


def test_config_written_by_ansible_parses_without_pyyaml(tmp_path, monkeypatch):
    from ansible.plugins.filter.core import to_nice_yaml

    desired = {
        "token": "K10abc::server:s3cr'et #1",
        "server": "https://10.0.0.1:9345",
        "node-name": "node-1",
        "node-ip": "10.0.0.2",
        "tls-san": ["10.0.0.1", "rke2.example.test"],
        "node-label": ["tier=web", "zone=a"],
        "node-taint": ["CriticalAddonsOnly=true:NoExecute"],
        "write-kubeconfig-mode": "0640",
        "cni": ["multus", "canal"],
        "disable-kube-proxy": False,
    }
    text = to_nice_yaml(desired)
    assert yamlutil.load_subset(text) == desired
    (tmp_path / "config.yaml").write_text(text)
    drop_in = tmp_path / "config.yaml.d"
    drop_in.mkdir()
    (drop_in / "10-extra.yaml").write_text(to_nice_yaml({"tls-san+": ["lb.example.test"], "node-name": "override"}))
    monkeypatch.setattr(yamlutil, "load", yamlutil.load_subset)
    server = rke2_config.load("server", str(tmp_path / "config.yaml"))
    assert server["tls-san"] == ["10.0.0.1", "rke2.example.test", "lb.example.test"]
    assert server["node-name"] == "override"
    assert server["write-kubeconfig-mode"] == "0640"
    assert server["cluster-cidr"] == ["10.42.0.0/16"]
    agent = rke2_config.load("agent", str(tmp_path / "config.yaml"))
    assert "tls-san" not in agent and "cni" not in agent and agent["node-ip"] == ["10.0.0.2"]
    for unsupported in ("a:\n  nested: 1\n", "a: &anchor 1\n", "a: |\n  block\n"):
        with pytest.raises(yamlutil.YAMLError):
            yamlutil.load_subset(unsupported)


def test_notifier_sends_one_datagram_to_path_and_abstract_sockets(tmp_path):
    received = {}
    for name, address, env_value in (
        ("path", str(tmp_path / "notify.sock"), str(tmp_path / "notify.sock")),
        ("abstract", "\0rke2-standin-test-%d" % os.getpid(), "@rke2-standin-test-%d" % os.getpid()),
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(address)
            listener.settimeout(5)
            environ = {"NOTIFY_SOCKET": env_value, "RKE2_STANDIN_READY_FILE": str(tmp_path / name), "PATH": "/bin"}
            notifier = node.Notifier(environ)
            # The variables belong to this process only: taken out of the environment children inherit.
            assert environ == {"PATH": "/bin"}
            notifier.notify_ready("rke2 is up")
            received[name] = listener.recv(4096)
            notifier.stopping()
            assert listener.recv(4096) == b"STOPPING=1\n"
        assert not (tmp_path / name).exists()
    assert received == {"path": b"READY=1\nSTATUS=rke2 is up\n", "abstract": b"READY=1\nSTATUS=rke2 is up\n"}
    # Without a socket nothing is sent and nothing fails.
    assert node.Notifier({}).send("READY=1\n") is False


def test_etcd_does_not_inherit_the_notify_socket(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "1000")
    env = etcd.child_environment()
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env and env["PATH"] == os.environ["PATH"]


def _proc_sys(tmp_path, **values):
    root = tmp_path / "proc-sys"
    for name, default in cisprofile.KERNEL_PARAMETERS:
        path = root / name.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("%s\n" % values.get(name.replace(".", "_"), default))
    return str(root)


def _validate(role, cfg, version, proc_sys):
    """(exit code or None, logged lines) of cisprofile.validate."""
    lines = []
    original = log._emit
    log._emit = lambda level, msg, fields: lines.append("%s: %s" % (level, msg))
    try:
        cisprofile.validate(role, cfg, version, proc_sys)
        return None, lines
    except SystemExit as exc:
        return exc.code, lines
    finally:
        log._emit = original


@pytest.mark.parametrize(
    ("version", "profile", "sysctls", "expected"),
    [
        # the host's values do not matter without a profile
        (OLD, "", {"kernel_panic": 0}, (None, "warning: not running in CIS mode")),
        (OLD, "cis", {}, (None, None)),
        (
            OLD,
            "cis",
            {"kernel_panic": 0, "vm_overcommit_memory": 0},
            (
                1,
                (
                    "fatal: invalid kernel parameter value vm.overcommit_memory=0 - expected 1\n"
                    "invalid kernel parameter value kernel.panic=0 - expected 10\n"
                ),
            ),
        ),
        (OLD, "cis-1.23", {}, (1, "fatal: cis-1.23 profile is deprecated. Please use 'cis' instead.")),
        (OLD, "etcd", {}, (1, "fatal: invalid value provided for --profile flag")),
        (OLD, "cis-1.6", {}, (1, "fatal: invalid value provided for --profile flag")),
        ("v1.32.6+rke2r1", "cis-1.23", {}, (1, "fatal: invalid value provided for --profile flag")),
        ("v1.32.6+rke2r1", "etcd", {"kernel_panic": 0}, (None, None)),
        ("v1.34.1+rke2r1", "cis", {"vm_panic_on_oom": 1}, (1, None)),
    ],
)
def test_cis_profile_names_and_kernel_parameters_by_release(tmp_path, version, profile, sysctls, expected):
    code, lines = _validate("server", {"profile": profile}, version, _proc_sys(tmp_path, **sysctls))
    assert code == expected[0], lines
    if expected[1]:
        assert lines[-1] == expected[1]


def test_cis_profile_needs_readable_parameters_and_protect_kernel_defaults(tmp_path):
    proc_sys = _proc_sys(tmp_path)
    os.unlink(os.path.join(proc_sys, "kernel", "panic"))
    code, lines = _validate("agent", {"profile": "cis"}, OLD, proc_sys)
    assert code == 1 and lines[-1] == "fatal: open %s/kernel/panic: no such file or directory" % proc_sys
    cfg = {"profile": "cis", "protect-kernel-defaults": False}
    code, lines = _validate("agent", cfg, OLD, _proc_sys(tmp_path))
    assert code == 1 and lines[-1] == "fatal: --protect-kernel-defaults must be true when using --profile=cis"
    cfg = {"profile": "cis"}
    assert _validate("agent", cfg, OLD, _proc_sys(tmp_path)) == (None, [])
    assert cfg["protect-kernel-defaults"] is True


def test_data_dir_from_config_moves_every_node_path(tmp_path):
    (tmp_path / "config.yaml").write_text("data-dir: /srv/rke2\ntoken: x\n")
    cfg = rke2_config.load("agent", str(tmp_path / "config.yaml"))
    paths = node.Paths(cfg["data-dir"])
    moved = [value for value in vars(paths).values() if isinstance(value, str)]
    assert moved and all(value.startswith("/srv/rke2") for value in moved)
    assert paths.images == "/srv/rke2/agent/images" and paths.log_file("agent") == "/srv/rke2/agent/logs/rke2.log"
    assert node.Paths(None).data == "/var/lib/rancher/rke2"


# --------------------------------------------------------------------------------------------------------------
# bundle and installer


def test_bundle_has_airgap_layout_and_baked_in_version(bundles, tmp_path):
    old = bundles[OLD]
    assert {p.name for p in old.iterdir()} >= {
        "install.sh",
        "rke2-images.linux-amd64.tar.zst",
        "rke2.linux-amd64.tar.gz",
        "sha256sum-amd64.txt",
    }
    sums = dict(line.split()[::-1] for line in (old / "sha256sum-amd64.txt").read_text().splitlines())
    for name, digest in sums.items():
        assert hashlib.sha256((old / name).read_bytes()).hexdigest() == digest
    with tarfile.open(old / "rke2.linux-amd64.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        for required in (
            "bin/rke2",
            "bin/rke2-killall.sh",
            "bin/rke2-uninstall.sh",
            "lib/systemd/system/rke2-server.service",
            "lib/systemd/system/rke2-agent.service",
            "share/rke2/init.d/rke2-server",
            "share/rke2/init.d/rke2-agent",
        ):
            assert required in members, required
        assert members["bin/rke2"].mode & 0o111
        unit = tar.extractfile("lib/systemd/system/rke2-server.service").read().decode()
        for setting in (
            "Type=notify",
            "TimeoutStartSec=0",
            "KillMode=process",
            "Delegate=yes",
            "Restart=always",
            "RestartSec=5s",
            "ExecCondition=/bin/sh -c 'if systemctl is-active --quiet rke2-agent.service; then",
            "ExecStart=/usr/local/bin/rke2 server",
        ):
            assert setting in unit
        assert "Conflicts=" not in unit and "NotifyAccess" not in unit
        sysctls = tar.extractfile("share/rke2/rke2-cis-sysctl.conf").read().decode()
        assert sorted(line.split("=")[0] for line in sysctls.split()) == sorted(
            name for name, _ in cisprofile.KERNEL_PARAMETERS
        )
        knobs = tar.extractfile("share/rke2/standin.env").read().decode()
        assert "RKE2_STANDIN_NODE_MONITOR_GRACE=5" in knobs
        tar.extractall(tmp_path / "x", filter="tar")
    version = subprocess.run(
        ["/usr/bin/python3", str(tmp_path / "x/bin/rke2"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert version == "rke2 version %s (%s)\ngo version go1.22.9 X:boringcrypto\n" % (OLD, commit_of(OLD))
    if shutil.which("zstd"):
        raw = subprocess.run(
            ["zstd", "-dc", str(old / "rke2-images.linux-amd64.tar.zst")], capture_output=True, check=True
        ).stdout
        assert raw == b"\0" * 1024  # an empty tar archive


def test_installer_verifies_checksum_and_version(hosts, bundles, workdir):
    host = hosts[0]
    tampered = workdir / "tampered"
    shutil.copytree(bundles[OLD], tampered)
    data = bytearray((tampered / "rke2.linux-amd64.tar.gz").read_bytes())
    data[-10] ^= 0xFF
    (tampered / "rke2.linux-amd64.tar.gz").write_bytes(bytes(data))
    proc = install(host, tampered, OLD, "server")
    assert proc.returncode != 0
    assert "sha256 does not match" in proc.stderr
    proc = install(host, bundles[NEW], OLD, "server")
    assert proc.returncode != 0
    assert "tarball contains rke2 %s, but INSTALL_RKE2_VERSION is %s" % (NEW, OLD) in proc.stderr
    assert not host.path("/usr/local/bin/rke2").exists()
    assert not host.path("/etc/init.d/rke2-server").exists()


def test_install_unpacks_tarball_and_sysv_scripts_without_starting(hosts, bundles):
    for host, role in zip(hosts, ("server", "server", "server", "agent"), strict=True):
        proc = install(host, bundles[OLD], OLD, role)
        assert proc.returncode == 0, proc.stderr
        assert "unpacking tarball file to /usr/local" in proc.stdout
        assert "installing SysV init scripts" in proc.stdout
        version = sh(host, "rke2 --version").stdout
        assert version.startswith("rke2 version %s (" % OLD)
        for role_name in ("server", "agent"):
            script = host.path("/etc/init.d/rke2-%s" % role_name)
            assert script.stat().st_mode & 0o111
            assert "# Provides:          rke2-%s" % role_name in script.read_text()
            assert sh(host, "service rke2-%s status" % role_name, check=False).returncode == 3
        assert host.path("/var/lib/rancher/rke2/agent/images/rke2-images.linux-amd64.tar.zst").exists()
        assert rke2_processes(host) == []


# --------------------------------------------------------------------------------------------------------------
# cluster lifecycle


def test_first_server_bootstraps_etcd_token_kubeconfig(hosts, state, workdir):
    first = hosts[0]
    write_config(
        first,
        [
            "token: %s" % TOKEN,
            "node-ip: %s" % first.ip,
            "tls-san:",
            "  - %s" % first.ip,
            "  - rke2.standin.test",
            'write-kubeconfig-mode: "0640"',
            "node-label:",
            "  - tier=control",
            "cluster-cidr: 10.42.0.0/16",
            "no-such-option: 1",
        ],
    )
    started = time.monotonic()
    proc = sh(first, "service rke2-server start", timeout=60)
    state["first_start_seconds"] = time.monotonic() - started
    assert "Started rke2-server" in proc.stdout
    assert sh(first, "service rke2-server status").stdout.startswith("rke2-server is running")

    ca_pem = first.path("/var/lib/rancher/rke2/server/tls/server-ca.crt").read_bytes()
    node_token = first.path("/var/lib/rancher/rke2/server/node-token").read_text().strip()
    assert node_token == "K10%s::server:%s" % (hashlib.sha256(ca_pem).hexdigest(), TOKEN)
    state["node_token"] = node_token

    kubeconfig = first.path(KUBECONFIG)
    assert oct(kubeconfig.stat().st_mode & 0o777) == "0o640"
    text = kubeconfig.read_text()
    assert "server: https://127.0.0.1:6443" in text
    state["kubeconfig"] = workdir / "kubeconfig"
    state["kubeconfig"].write_text(text.replace("https://127.0.0.1:6443", "https://%s:6443" % first.ip))
    state["kubeconfig"].chmod(0o600)
    state["kcache"] = workdir / "kube-cache"

    assert sh(first, "readlink -f %s" % RKE2_KUBECTL).stdout.strip() == os.path.realpath(KUBECTL)
    inside = sh(first, "%s --kubeconfig %s get nodes" % (RKE2_KUBECTL, KUBECONFIG)).stdout
    assert re.search(r"^%s\s+Ready\s+control-plane,etcd,master\s+\S+\s+%s" % (first.name, re.escape(OLD)), inside, re.M)
    assert "Unknown flag --no-such-option found in config.yaml, skipping" in log_of(first, "server")

    listening = sh(first, "ss -Hltn").stdout
    for address in (
        "%s:2379" % first.ip,
        "127.0.0.1:2379",
        "%s:2380" % first.ip,
        "%s:6443" % first.ip,
        "%s:9345" % first.ip,
    ):
        assert address in listening, listening
    local = [line.split()[3] for line in listening.splitlines()]
    wildcard = [a for a in local if a.rsplit(":", 1)[0] in ("0.0.0.0", "*", "[::]") and not a.endswith(":22")]
    assert wildcard == [], "stand-in must bind the host's own addresses only: %s" % wildcard
    members = etcd_members(first)
    assert len(members) == 1 and members[0]["name"].startswith(first.name + "-")
    assert kubectl(state, "get", "--raw=/readyz").stdout == "ok"


def test_two_servers_joining_at_once_are_serialised_by_etcd_learners(hosts, state):
    first, joiners = hosts[0], hosts[1:3]
    for host in joiners:
        write_config(host, ["server: https://%s:9345" % first.ip, "token: %s" % state["node_token"]])
    barrier = threading.Barrier(len(joiners))
    results = {}

    def join(host):
        barrier.wait()
        begin = time.monotonic()
        proc = host.run(["service", "rke2-server", "start"], timeout=120)
        results[host.name] = (proc.returncode, time.monotonic() - begin, proc.stdout + proc.stderr)

    threads = [threading.Thread(target=join, args=(host,)) for host in joiners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    for host in joiners:
        assert results[host.name][0] == 0, results[host.name]
    logs = {host.name: log_of(host, "server") for host in joiners}
    refused = [name for name, text in logs.items() if "etcdserver: too many learner members in cluster" in text]
    assert refused, "no joiner was refused by etcd: %s" % logs
    state["join_seconds"] = {name: round(seconds, 2) for name, (_, seconds, _) in results.items()}
    members = etcd_members(first)
    assert len(members) == 3
    assert not any(m.get("isLearner") for m in members)
    for host in joiners:
        assert "Promoted etcd learner to voting member" in logs[host.name]
        assert host.path("/var/lib/rancher/rke2/server/node-token").read_text().strip() == state["node_token"]


def test_agent_with_wrong_token_blocks_then_joins(hosts, state):
    first, agent = hosts[0], hosts[3]
    write_config(
        agent, ["server: https://%s:9345" % first.ip, "token: not-the-token", "node-label:", "  - role=worker"]
    )
    proc = sh(agent, "timeout 5 service rke2-agent start", check=False, timeout=30)
    assert proc.returncode == 124, "start must keep blocking on a wrong token: %s" % proc.stdout
    assert "running, activating" in sh(agent, "service rke2-agent status").stdout
    assert "token rejected by the server: 401 Unauthorized" in log_of(agent, "agent")
    assert "Rejected join request with invalid token" in log_of(first, "server")
    sh(agent, "service rke2-agent stop")
    assert sh(agent, "service rke2-agent status", check=False).returncode == 3

    write_config(
        agent,
        [
            "server: https://%s:9345" % first.ip,
            "token: %s" % state["node_token"],
            "node-label:",
            "  - role=worker",
            "cni: canal",
        ],
    )
    begin = time.monotonic()
    sh(agent, "service rke2-agent start", timeout=60)
    state["agent_start_seconds"] = round(time.monotonic() - begin, 2)
    assert ready_status(state, agent.name) == "True"
    log = log_of(agent, "agent")
    assert "Unknown flag --cni found in config.yaml, skipping" in log
    node = next(n for n in nodes_json(state) if n["metadata"]["name"] == agent.name)
    assert node["metadata"]["labels"]["role"] == "worker"
    assert "node-role.kubernetes.io/control-plane" not in node["metadata"]["labels"]
    assert TOKEN not in json.dumps(node)


def test_kubectl_reads_nodes_and_pods(hosts, state):
    items = {n["metadata"]["name"]: n for n in nodes_json(state)}
    assert set(items) == {h.name for h in hosts}
    for host in hosts:
        node = items[host.name]
        assert node["status"]["nodeInfo"]["kubeletVersion"] == OLD
        assert {"type": "InternalIP", "address": host.ip} in node["status"]["addresses"]
        is_server = host is not hosts[3]
        assert (node["metadata"]["labels"].get("node-role.kubernetes.io/control-plane") == "true") == is_server
        assert (node["metadata"]["labels"].get("node-role.kubernetes.io/etcd") == "true") == is_server
    wide = kubectl(state, "get", "nodes", "-o", "wide").stdout
    assert wide.split("\n")[0].split() == [
        "NAME",
        "STATUS",
        "ROLES",
        "AGE",
        "VERSION",
        "INTERNAL-IP",
        "EXTERNAL-IP",
        "OS-IMAGE",
        "KERNEL-VERSION",
        "CONTAINER-RUNTIME",
    ]
    assert re.search(
        r"^%s\s+Ready\s+<none>\s+\S+\s+%s\s+%s\s" % (hosts[3].name, re.escape(OLD), hosts[3].ip), wide, re.M
    )
    servers = kubectl(state, "get", "nodes", "-l", "node-role.kubernetes.io/etcd=true", "-o", "name").stdout.split()
    assert sorted(servers) == sorted("node/%s" % h.name for h in hosts[:3])
    pods = kubectl(state, "get", "pods", "-A", "-o", "wide").stdout
    assert re.search(r"^kube-system\s+etcd-%s\s+1/1\s+Running" % hosts[0].name, pods, re.M)
    assert kubectl(state, "version", "-o", "json").stdout.count(OLD) == 1


def test_kubectl_label_taint_cordon_drain(hosts, state):
    first, agent = hosts[0], hosts[3]
    kubectl(state, "label", "node", agent.name, "disk=ssd")
    kubectl(state, "taint", "nodes", agent.name, "dedicated=batch:NoSchedule")
    node = json.loads(kubectl(state, "get", "node", agent.name, "-o", "json").stdout)
    assert node["metadata"]["labels"]["disk"] == "ssd"
    assert node["spec"]["taints"] == [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}]
    kubectl(state, "taint", "nodes", agent.name, "dedicated-")
    kubectl(state, "label", "node", agent.name, "disk-")
    node = json.loads(kubectl(state, "get", "node", agent.name, "-o", "json").stdout)
    assert "disk" not in node["metadata"]["labels"] and not node["spec"].get("taints")

    before = json.loads(
        kubectl(state, "get", "pods", "-A", "--field-selector", "spec.nodeName=%s" % first.name, "-o", "json").stdout
    )["items"]
    movable = [p["metadata"]["name"] for p in before if p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"]
    assert movable, "the first server should run the packaged deployments' pods"
    drain = kubectl(state, "drain", first.name, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s")
    assert "node/%s drained" % first.name in drain.stdout
    for name in movable:
        assert "pod/%s evicted" % name in drain.stdout
    status = kubectl(state, "get", "node", first.name).stdout
    assert "Ready,SchedulingDisabled" in status
    after = json.loads(kubectl(state, "get", "pods", "-A", "-o", "json").stdout)["items"]
    replicas = [p for p in after if p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"]
    assert len(replicas) == len(movable)
    assert all(p["spec"].get("nodeName") not in (None, first.name) for p in replicas)
    kubectl(state, "uncordon", first.name)
    assert "SchedulingDisabled" not in kubectl(state, "get", "node", first.name).stdout

    refused = kubectl(state, "drain", agent.name, "--timeout=10s", check=False)
    assert refused.returncode != 0
    assert "cannot delete DaemonSet-managed Pods" in refused.stderr
    kubectl(state, "uncordon", agent.name)


def test_node_turns_not_ready_without_heartbeats(hosts, state):
    agent = hosts[3]
    sh(agent, "service rke2-agent stop")
    wait_for(lambda: ready_status(state, agent.name) == "Unknown", 20, "node to become NotReady")
    assert re.search(r"^%s\s+NotReady\s" % agent.name, kubectl(state, "get", "nodes").stdout, re.M)
    sh(agent, "service rke2-agent start", timeout=60)
    assert ready_status(state, agent.name) == "True"


def test_removal_that_would_break_quorum_is_refused(hosts, state):
    first, second, third = hosts[:3]
    sh(third, "rke2-killall.sh")
    assert rke2_processes(third) == []
    proc = kubectl(state, "delete", "node", second.name, check=False)
    assert proc.returncode != 0
    assert "failed to remove etcd member" in proc.stderr and "etcdserver:" in proc.stderr
    assert len(etcd_members(first)) == 3
    assert second.name in kubectl(state, "get", "nodes", "-o", "name").stdout
    sh(third, "service rke2-server start", timeout=60)
    assert ready_status(state, third.name) == "True"


def test_deleting_a_server_removes_its_member_and_uninstall_cleans_up(hosts, state):
    first, third = hosts[0], hosts[2]
    kubectl(state, "delete", "node", third.name)
    wait_for(lambda: len(etcd_members(first)) == 2, 10, "etcd member removal")
    assert third.name not in kubectl(state, "get", "nodes", "-o", "name").stdout
    assert not any(third.name in line for line in kubectl(state, "get", "pods", "-A", "-o", "wide").stdout.splitlines())
    sh(third, "service rke2-server stop && rke2-uninstall.sh")
    assert rke2_processes(third) == []
    for path in (
        "/usr/local/bin/rke2",
        "/usr/local/bin/rke2-killall.sh",
        "/usr/local/bin/rke2-uninstall.sh",
        "/usr/local/share/rke2",
        "/usr/local/lib/systemd/system/rke2-server.service",
        "/etc/init.d/rke2-server",
        "/etc/init.d/rke2-agent",
        "/etc/rancher",
        "/var/lib/rancher",
    ):
        assert sh(third, "test -e %s" % path, check=False).returncode == 1, path
    assert len(etcd_members(first)) == 2


def test_upgrade_reports_new_version(hosts, bundles, state):
    first, agent = hosts[0], hosts[3]
    for host, role in ((first, "server"), (agent, "agent")):
        proc = install(host, bundles[NEW], NEW, role)
        assert proc.returncode == 0, proc.stderr
        assert sh(host, "rke2 --version").stdout.startswith("rke2 version %s (" % NEW)
        sh(host, "service rke2-%s restart" % role, timeout=60)
        version = kubectl(state, "get", "node", host.name, "-o", "jsonpath={.status.nodeInfo.kubeletVersion}").stdout
        assert version == NEW
    assert (
        kubectl(state, "get", "node", hosts[1].name, "-o", "jsonpath={.status.nodeInfo.kubeletVersion}").stdout == OLD
    )
    assert json.loads(kubectl(state, "version", "-o", "json").stdout)["serverVersion"]["gitVersion"] == NEW


def run_playbook(host_network, env, private_data_dir, hosts, plays):
    """Run ``plays`` (built as data, written as JSON - valid YAML) over SSH with ansible-runner.

    Returns {(host, task name): (failed, result)} from the runner's events."""
    import ansible_runner

    project = private_data_dir / "project"
    project.mkdir(parents=True)
    (project / "check.yml").write_text(json.dumps(plays, indent=1))
    results = {}

    def handler(event):
        if event.get("event") in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable"):
            data = event["event_data"]
            results[(data["host"], data["task"])] = (event["event"] != "runner_on_ok", data["res"])
        return True

    runner = ansible_runner.run(
        private_data_dir=str(private_data_dir),
        playbook="check.yml",
        inventory=host_network.inventory(hosts),
        envvars=env,
        event_handler=handler,
        quiet=True,
        timeout=240,
    )
    assert results, runner.stdout.read()
    return results


def test_ansible_service_module_drives_the_init_scripts(hosts, bundles, state, host_network, tmp_path):
    agent, spare = hosts[3], hosts[2]
    assert install(spare, bundles[NEW], NEW, "server").returncode == 0
    # A joining server whose critical values differ from the cluster's exits before it is ready.
    write_config(
        spare,
        ["server: https://%s:9345" % hosts[0].ip, "token: %s" % state["node_token"], "cluster-cidr: 10.99.0.0/16"],
    )
    status = {
        "ansible.builtin.command": "service rke2-agent status",
        "register": "st",
        "changed_when": False,
        "failed_when": False,
    }
    plays = [
        {
            "name": "agent",
            "hosts": agent.name,
            "gather_facts": False,
            "tasks": [
                {"name": "facts", "ansible.builtin.setup": {"filter": "ansible_service_mgr"}},
                {"name": "stop", "ansible.builtin.service": {"name": "rke2-agent", "state": "stopped"}},
                {"name": "status after stop", **status},
                {
                    "name": "start",
                    "ansible.builtin.service": {"name": "rke2-agent", "state": "started", "enabled": True},
                },
                {
                    "name": "start again",
                    "ansible.builtin.service": {"name": "rke2-agent", "state": "started", "enabled": True},
                },
                {"name": "restart", "ansible.builtin.service": {"name": "rke2-agent", "state": "restarted"}},
                {"name": "status after restart", **status},
            ],
        },
        {
            "name": "failing server",
            "hosts": spare.name,
            "gather_facts": False,
            "tasks": [
                {
                    "name": "start failing",
                    "ansible.builtin.service": {"name": "rke2-server", "state": "started"},
                    "ignore_errors": True,
                },
            ],
        },
    ]
    env = host_network.ansible_env(control_path_dir=tempfile.mkdtemp(prefix="cp-", dir=host_network.run_dir))
    begin = time.monotonic()
    results = run_playbook(host_network, env, tmp_path / "pdd", [agent, spare], plays)
    state["ansible_playbook_seconds"] = round(time.monotonic() - begin, 2)

    def task(host, name):
        return results[(host.name, name)]

    failed, facts = task(agent, "facts")
    state["service_mgr"] = facts["ansible_facts"]["ansible_service_mgr"]
    assert not failed and state["service_mgr"] != "systemd"
    failed, res = task(agent, "stop")
    assert not failed and res["changed"] is True
    assert task(agent, "status after stop")[1]["rc"] == 3
    failed, res = task(agent, "start")
    assert not failed and res["changed"] is True and res["enabled"] is True, res
    failed, res = task(agent, "start again")
    assert not failed and res["changed"] is False
    failed, res = task(agent, "restart")
    assert not failed and res["changed"] is True
    assert task(agent, "status after restart")[1]["rc"] == 0
    assert ready_status(state, agent.name) == "True"
    assert sh(agent, "ls /etc/rc2.d/S*rke2-agent /etc/rc0.d/K*rke2-agent", check=False).returncode == 0

    failed, res = task(spare, "start failing")
    assert failed
    assert "critical configuration value mismatch" in json.dumps(res)
    assert len(etcd_members(hosts[0])) == 2


def test_killall_stops_everything_it_started(hosts):
    for host in hosts:
        sh(host, "test -x /usr/local/bin/rke2-killall.sh && rke2-killall.sh || true")
        assert rke2_processes(host) == []
        listening = sh(host, "ss -Hltn").stdout
        for port in (":2379", ":2380", ":6443", ":9345"):
            assert port not in listening


# --------------------------------------------------------------------------------------------------------------
# one more server, alone in its own cluster: readiness notification, data-dir, refusals (token, CIS profile)

DATA_DIR = "/srv/rke2-data"
SOLO_TOKEN = "solo-cluster-secret-1"

# Run inside the host: an abstract notification socket with SO_PASSCRED (so the sender of every datagram is
# known, as systemd knows it), rke2 started on it directly (no init script), until READY=1 and two seconds more.
NOTIFY_PROBE = r"""
import json, os, socket, struct, subprocess, sys, time
name = "rke2-standin-notify-%d" % os.getpid()
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
sock.bind("\0" + name)
sock.settimeout(0.3)
stderr = open(sys.argv[1], "w")
env = dict(os.environ, NOTIFY_SOCKET="@" + name)
proc = subprocess.Popen(["/usr/local/bin/rke2", "server"], env=env, stdout=stderr, stderr=stderr)
messages, ready_at, deadline = [], None, time.time() + 90
while time.time() < deadline and proc.poll() is None:
    if ready_at and time.time() - ready_at > 2:
        break
    try:
        data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    except socket.timeout:
        continue
    pid = None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("3i", payload)[0]
    messages.append({"pid": pid, "data": data.decode()})
    if "READY=1" in data.decode():
        ready_at = time.time()
etcd = []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            cmd = open("/proc/%s/cmdline" % entry, "rb").read().split(b"\0")
            if cmd and cmd[0].endswith(b"/etcd"):
                environ = open("/proc/%s/environ" % entry, "rb").read().split(b"\0")
                etcd.append({"pid": int(entry), "notify": any(v.startswith(b"NOTIFY_SOCKET=") for v in environ)})
        except OSError:
            pass
alive = proc.poll() is None
proc.terminate()
code = proc.wait(30)
print(json.dumps({"rke2": proc.pid, "alive": alive, "code": code, "messages": messages, "etcd": etcd}))
"""


@pytest.fixture(scope="module")
def solo(host_network, bundles):
    (host,) = host_network.add_hosts(1)
    proc = sh(
        host,
        "INSTALL_RKE2_ARTIFACT_PATH=%s INSTALL_RKE2_VERSION='%s' INSTALL_RKE2_TYPE=server INSTALL_RKE2_METHOD=tar"
        " INSTALL_RKE2_AGENT_IMAGES_DIR=%s/agent/images sh %s/install.sh" % (bundles[OLD], OLD, DATA_DIR, bundles[OLD]),
    )
    assert "systemd is not running" in proc.stdout
    yield host
    if host.alive:
        sh(host, "RKE2_DATA_DIR=%s /usr/local/bin/rke2-killall.sh >/dev/null 2>&1 || true" % DATA_DIR, timeout=30)
    host_network.destroy_host(host)


def solo_config(host, *extra):
    write_config(host, ["token: %s" % SOLO_TOKEN, "node-ip: %s" % host.ip, "data-dir: %s" % DATA_DIR, *extra])


def set_sysctls(host, **values):
    """Bind files over /proc/sys entries inside the host's own mount namespace: the host then reads these values
    (a container cannot set kernel.* / vm.* for itself).  Without values: undo."""
    sh(host, "for f in kernel/panic kernel/panic_on_oops vm/overcommit_memory vm/panic_on_oom; do"
             " umount /proc/sys/$f 2>/dev/null; done; true")  # fmt: skip
    for name, value in values.items():
        path = "/proc/sys/" + name.replace("__", "/")
        sh(host, "mkdir -p /run/sysctl && echo %d > /run/sysctl/%s && mount --bind /run/sysctl/%s %s"
                 % (value, name, name, path))  # fmt: skip


CIS_OK = {"kernel__panic": 10, "kernel__panic_on_oops": 1, "vm__overcommit_memory": 1, "vm__panic_on_oom": 0}


def test_ready_is_notified_by_rke2_only_and_logs_go_to_stderr(solo, workdir):
    solo_config(solo, "tls-san:", "  - solo.standin.test")
    probe = workdir / "notify_probe.py"
    probe.write_text(NOTIFY_PROBE)
    proc = sh(solo, "python3 %s /run/rke2-probe.log" % probe, timeout=150)
    result = json.loads(proc.stdout)
    stderr = solo.path("/run/rke2-probe.log").read_text()
    assert result["alive"], stderr
    ready = [m for m in result["messages"] if "READY=1" in m["data"]]
    assert len(ready) == 1 and ready[0]["data"] == "READY=1\nSTATUS=rke2 server is up and running\n"
    # Every datagram came from the rke2 process itself: etcd (which notifies when it has a socket) sent none.
    assert {m["pid"] for m in result["messages"]} == {result["rke2"]}, result
    assert result["etcd"] and not any(e["notify"] for e in result["etcd"]), result
    assert result["code"] == 0
    # Without an init script the logs are stderr (the journal under systemd), logrus style; no log file.
    assert 'level=info msg="rke2 is up and running"' in stderr
    assert 'level=info msg="Importing images from %s/agent/images/rke2-images.linux-amd64.tar.zst"' % DATA_DIR in stderr
    assert not solo.path(DATA_DIR + "/server/logs/rke2.log").exists()


def test_data_dir_holds_every_node_file(solo):
    for path in (
        "server/tls/server-ca.crt",
        "server/tls/etcd/server-client.crt",
        "server/db/etcd/member",
        "server/token",
        "server/node-token",
        "server/logs/etcd.log",
        "agent/client-kubelet.crt",
        "agent/images/rke2-images.linux-amd64.tar.zst",
    ):
        assert solo.path("%s/%s" % (DATA_DIR, path)).exists(), path
    assert sh(solo, "readlink -f %s/bin/kubectl" % DATA_DIR).stdout.strip() == os.path.realpath(KUBECTL)
    assert sh(solo, "test -e /var/lib/rancher/rke2", check=False).returncode == 1
    assert "--data-dir=%s/server/db/etcd" % DATA_DIR in "\n".join(rke2_processes(solo))
    # etcd keeps running after rke2 stopped (KillMode=process); a snapshot finds it through config.yaml.
    out = sh(solo, "rke2 etcd-snapshot save --name probe 2>&1").stdout
    assert "Saved etcd snapshot" in out and "%s/server/db/snapshots/probe-" % DATA_DIR in out


def test_restart_with_another_token_over_existing_data_is_fatal(solo):
    solo_config(solo, "tls-san:", "  - solo.standin.test")
    started = sh(solo, "service rke2-server start", timeout=90)
    assert "Started rke2-server" in started.stdout
    assert sh(solo, "readlink /run/rke2/rke2-server.log").stdout.strip() == DATA_DIR + "/server/logs/rke2.log"
    # Never both types at once (the units' ExecCondition=): the start is skipped, not failed.
    skipped = sh(solo, "service rke2-agent start")
    assert "Error: rke2-server is running!" in skipped.stdout
    assert sh(solo, "service rke2-agent status", check=False).returncode == 3

    write_config(solo, ["token: another-secret", "node-ip: %s" % solo.ip, "data-dir: %s" % DATA_DIR])
    proc = sh(solo, "service rke2-server restart", timeout=90, check=False)
    assert proc.returncode == 1, proc.stdout
    message = (
        "preparing server: failed to bootstrap cluster data: failed to reconcile with local datastore: "
        "bootstrap data already found and encrypted with different token"
    )
    assert 'level=fatal msg="%s"' % message in proc.stderr
    assert message in solo.path(DATA_DIR + "/server/logs/rke2.log").read_text()
    assert sh(solo, "service rke2-server status", check=False).returncode != 0
    # The same token given in its full K10 form is accepted again.
    node_token = solo.path(DATA_DIR + "/server/node-token").read_text().strip()
    write_config(solo, ["token: %s" % node_token, "node-ip: %s" % solo.ip, "data-dir: %s" % DATA_DIR])
    assert "Started rke2-server" in sh(solo, "service rke2-server start", timeout=90).stdout
    sh(solo, "service rke2-server stop")


@pytest.mark.parametrize(
    ("profile", "sysctls", "no_etcd_user", "messages"),
    [
        (
            "cis",
            {"kernel__panic": 0, "kernel__panic_on_oops": 1, "vm__overcommit_memory": 0, "vm__panic_on_oom": 0},
            False,
            [
                "invalid kernel parameter value vm.overcommit_memory=0 - expected 1\\n",
                "invalid kernel parameter value kernel.panic=0 - expected 10\\n",
            ],
        ),
        ("cis", CIS_OK, True, ["missing required: user: unknown user etcd\\n", "group: unknown group etcd\\n"]),
        ("cis-1.23", CIS_OK, False, ["cis-1.23 profile is deprecated. Please use 'cis' instead."]),
        ("cis-1.6", CIS_OK, False, ["invalid value provided for --profile flag"]),
    ],
)
def test_cis_profile_refuses_an_unprepared_host(solo, profile, sysctls, no_etcd_user, messages):
    solo_config(solo, "profile: %s" % profile)
    set_sysctls(solo, **sysctls)
    if no_etcd_user:
        sh(solo, "cp -a /etc/passwd /etc/group /run/ && sed -i '/^etcd:/d' /etc/passwd /etc/group")
    try:
        proc = sh(solo, "service rke2-server start", timeout=90, check=False)
    finally:
        if no_etcd_user:
            sh(solo, "cp -a /run/passwd /run/group /etc/")
        set_sysctls(solo)
    assert proc.returncode == 1, proc.stdout
    fatal = [line for line in proc.stderr.splitlines() if "level=fatal" in line]
    assert fatal, proc.stderr
    for message in messages:
        assert message in fatal[-1], fatal
    assert not [line for line in rke2_processes(solo) if "/bin/rke2 " in line]


def test_cis_profile_starts_on_a_prepared_host(solo):
    assert sh(solo, "getent passwd etcd && getent group etcd", check=False).returncode == 0
    solo_config(solo, "profile: cis")
    log = solo.path(DATA_DIR + "/server/logs/rke2.log")
    before = len(log.read_text().splitlines())
    set_sysctls(solo, **CIS_OK)
    try:
        assert "Started rke2-server" in sh(solo, "service rke2-server start", timeout=90).stdout
    finally:
        set_sysctls(solo)
    this_start = "\n".join(log.read_text().splitlines()[before:])
    assert "Starting rke2 %s" % OLD in this_start and "level=fatal" not in this_start
    assert "not running in CIS mode" not in this_start


def test_killall_and_uninstall_use_rke2_data_dir_like_the_real_scripts(solo):
    # The scripts do not read config.yaml: with the default data dir the node's etcd is not found.
    sh(solo, "rke2-killall.sh")
    left = rke2_processes(solo)
    assert left and all("bin/etcd " in line for line in left), left
    sh(solo, "RKE2_DATA_DIR=%s rke2-killall.sh" % DATA_DIR)
    assert rke2_processes(solo) == []
    sh(solo, "RKE2_DATA_DIR=%s rke2-uninstall.sh" % DATA_DIR)
    for path in (DATA_DIR, "/usr/local/bin/rke2", "/etc/rancher", "/run/rke2", "/etc/init.d/rke2-server"):
        assert sh(solo, "test -e %s" % path, check=False).returncode == 1, path


# --------------------------------------------------------------------------------------------------------------
# under real systemd (systemd-nspawn hosts): the units' semantics with the stand-in process


def push_bundle(host, bundle):
    """Copy a bundle into a systemd host (its /var/tmp is private): /opt/standin/<bundle name>."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(str(bundle), arcname=bundle.name)
    proc = host.run(
        ["sh", "-c", "mkdir -p /opt/standin && base64 -d | tar xzf - -C /opt/standin"],
        input=base64.b64encode(buf.getvalue()).decode(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return "/opt/standin/" + bundle.name


def invocation_lines(host, unit):
    """The journal lines of the unit's current (or last) start only."""
    invocation = host.systemctl("show", "-p", "InvocationID", "--value", unit).stdout.strip()
    assert invocation, unit
    # The process's own lines carry _SYSTEMD_INVOCATION_ID, systemd's lines about the unit INVOCATION_ID.
    out = host.run(
        [
            "journalctl",
            "--no-pager",
            "-o",
            "cat",
            "_SYSTEMD_INVOCATION_ID=" + invocation,
            "+",
            "INVOCATION_ID=" + invocation,
        ]
    )
    return out.stdout


def unit_state(host, unit):
    props = host.systemctl("show", "-p", "ActiveState,SubState,NRestarts,MainPID,StatusText", unit).stdout
    return dict(line.split("=", 1) for line in props.splitlines() if "=" in line)


def timed_start(host, unit, action="start"):
    begin = time.monotonic()
    proc = host.systemctl(action, unit, timeout=120)
    return proc, time.monotonic() - begin


def etcd_pids(host):
    out = sh(host, "ps -eo pid=,args=", check=False).stdout
    return [int(line.split()[0]) for line in out.splitlines() if " /usr/bin/etcd " in " " + line.strip() + " "]


@pytest.fixture(scope="module")
def sd_hosts(systemd_host_network, bundles):
    created = systemd_host_network.add_hosts(2)
    for host, role in zip(created, ("server", "agent"), strict=True):
        path = push_bundle(host, bundles[OLD])
        proc = sh(
            host,
            "INSTALL_RKE2_ARTIFACT_PATH=%s INSTALL_RKE2_VERSION='%s' INSTALL_RKE2_TYPE=%s INSTALL_RKE2_METHOD=tar"
            " sh %s/install.sh" % (path, OLD, role, path),
        )
        assert "SysV" not in proc.stdout
    yield created
    for host in created:
        if host.alive:
            host.run(["sh", "-c", "/usr/local/bin/rke2-killall.sh >/dev/null 2>&1 || true"], timeout=60)
        systemd_host_network.destroy_host(host)


SD_START_DELAY = 5.0


def test_systemd_units_have_the_real_semantics(sd_hosts):
    server = sd_hosts[0]
    unit = server.systemctl("cat", "rke2-server.service").stdout
    assert "/usr/local/lib/systemd/system/rke2-server.service" in unit
    props = server.systemctl(
        "show", "-p", "Type,NotifyAccess,KillMode,Restart,RestartUSec,TimeoutStartUSec,Delegate,ExecCondition",
        "rke2-server.service",
    ).stdout  # fmt: skip
    for expected in (
        "Type=notify",
        "NotifyAccess=main",
        "KillMode=process",
        "Restart=always",
        "RestartUSec=5s",
        "TimeoutStartUSec=infinity",
        "Delegate=yes",
        "systemctl is-active --quiet rke2-agent.service",
    ):
        assert expected in props, props
    assert not server.path("/etc/init.d/rke2-server").exists()


def test_systemd_start_that_dies_before_ready_fails_with_the_reason_in_the_journal(sd_hosts):
    server = sd_hosts[0]
    write_config(server, ["token: %s" % TOKEN, "node-ip: %s" % server.ip, "profile: cis-1.6"])
    proc, seconds = timed_start(server, "rke2-server")
    assert proc.returncode != 0 and seconds < 30, (proc, seconds)
    lines = invocation_lines(server, "rke2-server")
    assert 'level=fatal msg="invalid value provided for --profile flag"' in lines
    assert "Main process exited, code=exited, status=1/FAILURE" in lines
    # Restart=always: the unit keeps trying every 5 s until it is stopped.
    assert unit_state(server, "rke2-server")["ActiveState"] in ("activating", "failed")
    server.systemctl("stop", "rke2-server")
    server.systemctl("reset-failed", "rke2-server")
    assert etcd_pids(server) == []


def test_systemd_start_blocks_until_rke2_is_ready(sd_hosts, state):
    server = sd_hosts[0]
    sh(server, "echo RKE2_STANDIN_SERVER_START_DELAY=%g > /etc/default/rke2-server" % SD_START_DELAY)
    write_config(server, ["token: %s" % TOKEN, "node-ip: %s" % server.ip])
    proc, seconds = timed_start(server, "rke2-server")
    assert proc.returncode == 0, proc.stderr
    assert seconds >= SD_START_DELAY, seconds
    status = unit_state(server, "rke2-server")
    assert status["ActiveState"] == "active" and status["StatusText"] == "rke2 server is up and running"
    ready = sh(
        server,
        "%s --kubeconfig %s get node %s -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}'"
        % (RKE2_KUBECTL, KUBECONFIG, server.name),
    ).stdout
    assert ready == "True"
    lines = invocation_lines(server, "rke2-server")
    # The process's logrus lines are in the journal; the unit became active only after READY=1.
    assert 'level=info msg="rke2 is up and running"' in lines
    assert lines.index("rke2 is up and running") < lines.index("Started rke2-server.service")
    assert not server.path("/var/lib/rancher/rke2/server/logs/rke2.log").exists()
    # etcd runs in the unit's cgroup without the notification socket, and sent nothing (with the default
    # NotifyAccess=main systemd would log "Got notification message from PID ..." for it).
    (etcd_pid,) = etcd_pids(server)
    assert "rke2-server.service" in sh(server, "cat /proc/%d/cgroup" % etcd_pid).stdout
    assert "NOTIFY_SOCKET=" not in sh(server, "tr '\\0' '\\n' < /proc/%d/environ" % etcd_pid).stdout
    assert "notification message" not in server.journal("rke2-server.service")
    state["sd_node_token"] = server.path("/var/lib/rancher/rke2/server/node-token").read_text().strip()


def test_systemd_notify_access_all_still_waits_for_rke2(sd_hosts):
    """With NotifyAccess=all a READY=1 from etcd would end the start early: a fresh etcd is ready in about a
    second, rke2 only after the start delay."""
    server = sd_hosts[0]
    sh(server, "rke2-killall.sh >/dev/null")
    assert etcd_pids(server) == []
    sh(server, "mkdir -p /etc/systemd/system/rke2-server.service.d && printf '[Service]\\nNotifyAccess=all\\n'"
               " > /etc/systemd/system/rke2-server.service.d/notify.conf && systemctl daemon-reload")  # fmt: skip
    try:
        proc, seconds = timed_start(server, "rke2-server")
        assert proc.returncode == 0, proc.stderr
        assert seconds >= SD_START_DELAY, seconds
        assert "Running etcd" in invocation_lines(server, "rke2-server")
    finally:
        sh(server, "rm -rf /etc/systemd/system/rke2-server.service.d && systemctl daemon-reload")


def test_systemd_agent_and_exec_condition(sd_hosts, state):
    server, agent = sd_hosts
    write_config(agent, ["server: https://%s:9345" % server.ip, "token: %s" % state["sd_node_token"]])
    proc, _ = timed_start(agent, "rke2-agent")
    assert proc.returncode == 0, proc.stderr
    assert unit_state(agent, "rke2-agent")["StatusText"] == "rke2 agent is up and running"
    assert 'msg="rke2 agent is up and running"' in invocation_lines(agent, "rke2-agent")
    # The other type is skipped while one runs (ExecCondition=), and the start still succeeds.
    proc = agent.systemctl("start", "rke2-server")
    assert proc.returncode == 0
    assert unit_state(agent, "rke2-server")["ActiveState"] == "inactive"
    journal = agent.journal("rke2-server.service")
    assert "Error: rke2-agent is running!" in journal and "Skipped due to 'exec-condition'" in journal


def test_systemd_stop_leaves_etcd_and_a_killed_rke2_is_restarted(sd_hosts):
    server = sd_hosts[0]
    (etcd_pid,) = etcd_pids(server)
    server.systemctl("stop", "rke2-server", check=True)
    assert unit_state(server, "rke2-server")["ActiveState"] == "inactive"
    assert etcd_pids(server) == [etcd_pid]  # KillMode=process
    proc, _ = timed_start(server, "rke2-server")
    assert proc.returncode == 0
    assert "Found running etcd, reusing it" in invocation_lines(server, "rke2-server")
    before = unit_state(server, "rke2-server")
    sh(server, "kill -KILL %s" % before["MainPID"])
    wait_for(
        lambda: (
            (s := unit_state(server, "rke2-server"))["ActiveState"] == "active" and s["MainPID"] != before["MainPID"]
        ),
        30,
        "Restart=always to start rke2 again",
    )
    assert int(unit_state(server, "rke2-server")["NRestarts"]) == int(before["NRestarts"]) + 1


def test_systemd_token_change_fails_every_restart(sd_hosts):
    server = sd_hosts[0]
    write_config(server, ["token: another-secret", "node-ip: %s" % server.ip])
    proc, _ = timed_start(server, "rke2-server", "restart")
    assert proc.returncode != 0
    lines = invocation_lines(server, "rke2-server")
    assert "bootstrap data already found and encrypted with different token" in lines
    restarts = int(unit_state(server, "rke2-server")["NRestarts"])
    wait_for(lambda: int(unit_state(server, "rke2-server")["NRestarts"]) > restarts, 20, "the unit to try again")
    write_config(server, ["token: %s" % TOKEN, "node-ip: %s" % server.ip])
    proc, _ = timed_start(server, "rke2-server", "restart")
    assert proc.returncode == 0, proc.stderr


def test_systemd_killall_stops_the_units_and_uninstall_removes_them(sd_hosts):
    for host, unit in zip(sd_hosts, ("rke2-server", "rke2-agent"), strict=True):
        sh(host, "rke2-killall.sh >/dev/null")
        assert unit_state(host, unit)["ActiveState"] in ("inactive", "failed")
        assert rke2_processes(host) == []
        sh(host, "rke2-uninstall.sh >/dev/null")
        assert host.systemctl("cat", unit).returncode != 0
        assert sh(host, "test -e /var/lib/rancher/rke2 || test -e /usr/local/bin/rke2", check=False).returncode == 1
