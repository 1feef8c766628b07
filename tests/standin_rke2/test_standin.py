"""Behaviour of the stand-in RKE2 on SSH test hosts, exercised directly (no product playbooks).

One cluster is built across the module (the tests run in file order and each builds on the previous state):
bundle -> install -> first server -> two servers joining at once -> agent (wrong token first) -> kubectl node
operations -> NotReady detection -> quorum-protected removal -> server removal + uninstall -> upgrade ->
Ansible's service module driving the SysV scripts.
"""

from __future__ import annotations

import hashlib
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
                "fatal: invalid kernel parameter value vm.overcommit_memory=0 - expected 1\n"
                "invalid kernel parameter value kernel.panic=0 - expected 10\n",
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
    for host, role in zip(hosts, ("server", "server", "server", "agent")):
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
