"""Pod networking of the stand-in RKE2 on SSH test hosts: a node is Ready once its CNI runs; the CNI pod needs its
image archive (airgap) and UDP reachability of every other node on the overlay port; CoreDNS follows its node.

Three small clusters, one per CNI case: canal (VXLAN, UDP 8472), calico (UDP 4789, its own image archive) and
``cni: none`` (NotReady until an operator installs a CNI). Ports are blocked with nftables inside one host's own
network namespace, so the probes between the nodes are real datagrams.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.standin_rke2.build import build_bundle

VERSION = "v1.31.4+rke2r1"
TOKEN = "standin-cni-secret-5c1e"
KUBECTL = "/var/lib/rancher/rke2/bin/kubectl"
KUBECONFIG = "/etc/rancher/rke2/rke2.yaml"
IMAGES = "/var/lib/rancher/rke2/agent/images"
KNOBS = {
    "server_start_delay": 0.2,
    "agent_start_delay": 0.2,
    "heartbeat_interval": 1.0,
    "node_monitor_grace": 10.0,
    "join_retry_interval": 1.0,
}
NFT_TABLE = "standin_cni_test"

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def bundle():
    # Under /var/tmp: shared with the test hosts (their /tmp is private).
    path = Path(tempfile.mkdtemp(prefix="rke2-standin-cni-", dir="/var/tmp"))
    path.chmod(0o755)
    yield build_bundle(path / "bundle", VERSION, **KNOBS)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cluster_hosts(host_network):
    created = []

    def make(n):
        hosts = host_network.add_hosts(n)
        created.extend(hosts)
        return hosts

    yield make
    for host in created:
        if host.alive:
            host.run(["sh", "-c", "/usr/local/bin/rke2-killall.sh >/dev/null 2>&1 || true"], timeout=30)
        host_network.destroy_host(host)


def sh(host, script, timeout=60, check=True):
    proc = host.run(["sh", "-c", script], timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            "%s: %r failed (%d): %s %s" % (host.name, script, proc.returncode, proc.stdout, proc.stderr)
        )
    return proc


def nft(host, script):
    """Run an nftables script in the host's own network namespace."""
    subprocess.run(
        ["ip", "netns", "exec", host.namespace, "nft", "-f", "-"], input=script, text=True, check=True, timeout=30
    )


def block_udp(host, port):
    nft(
        host,
        "table inet %s {\n  chain input { type filter hook input priority -10; policy accept; udp dport %d drop; }\n}\n"
        % (NFT_TABLE, port),
    )


def unblock(host):
    nft(host, "delete table inet %s\n" % NFT_TABLE)


@pytest.fixture(scope="module")
def core_bundle(bundle):
    """The bundle without the per-part image archives: what an airgap install of the core images leaves."""
    path = bundle.parent / "core-only"
    path.mkdir()
    for item in bundle.iterdir():
        if not item.name.startswith("rke2-images-"):
            shutil.copy2(item, path / item.name)
    return path


def start(host, bundle, role, lines):
    sh(
        host,
        "INSTALL_RKE2_ARTIFACT_PATH=%s INSTALL_RKE2_VERSION='%s' INSTALL_RKE2_TYPE=%s INSTALL_RKE2_METHOD=tar sh %s/install.sh"
        % (bundle, VERSION, role, bundle),
    )
    text = "\n".join(["token: %s" % TOKEN, "node-ip: %s" % host.ip, *lines]) + "\n"
    sh(host, "mkdir -p /etc/rancher/rke2 && umask 077 && cat > /etc/rancher/rke2/config.yaml <<'EOF'\n%sEOF" % text)
    sh(host, "service rke2-%s start" % role, timeout=90)


def start_cluster(hosts, bundle, server_lines=()):
    first, *agents = hosts
    start(first, bundle, "server", list(server_lines))
    for agent in agents:
        start(agent, bundle, "agent", ["server: https://%s:9345" % first.ip])


def kubectl(host, *args):
    proc = host.run([KUBECTL, "--kubeconfig", KUBECONFIG, *args], timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ready(obj):
    return next((c for c in obj["status"].get("conditions", []) if c["type"] == "Ready"), {})


def nodes(host):
    return {n["metadata"]["name"]: ready(n) for n in json.loads(kubectl(host, "get", "nodes", "-o", "json"))["items"]}


def pods(host, selector):
    items = json.loads(kubectl(host, "get", "pods", "-A", "-l", selector, "-o", "json"))["items"]
    return {p["metadata"]["name"]: p for p in items}


def wait_for(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError("timed out waiting until %s (last: %r)" % (what, last))


def all_ready(host, selector, count):
    found = pods(host, selector)
    return len(found) == count and all(ready(p).get("status") == "True" for p in found.values()) and found


def not_ready_messages(host, selector):
    """{node: Ready message} of the pods that are not Ready."""
    return {
        p["spec"].get("nodeName", ""): ready(p).get("message", "")
        for p in pods(host, selector).values()
        if ready(p).get("status") != "True"
    }


def test_canal_needs_udp_8472_between_every_node(cluster_hosts, bundle):
    hosts = cluster_hosts(3)
    first, _, blocked = hosts
    start_cluster(hosts, bundle)

    assert {name: cond["status"] for name, cond in nodes(first).items()} == {h.name: "True" for h in hosts}
    canal = wait_for(lambda: all_ready(first, "k8s-app=canal", 3), "a Ready canal pod on every node")
    assert sorted(p["spec"]["nodeName"] for p in canal.values()) == sorted(h.name for h in hosts)
    wait_for(lambda: all_ready(first, "k8s-app=kube-dns", 1), "CoreDNS Ready")
    listening = sh(blocked, "ss -Hlun 'sport = :8472'").stdout
    assert ":8472" in listening

    block_udp(blocked, 8472)
    try:
        broken = wait_for(
            lambda: (m := not_ready_messages(first, "k8s-app=canal")) and len(m) == 3 and m,
            "every canal pod to notice the blocked port",
        )
        for node, message in broken.items():
            assert "UDP 8472" in message, message
            if node != blocked.name:
                assert "cannot reach %s (%s)" % (blocked.name, blocked.ip) in message, message
        assert "cannot reach" in broken[blocked.name]
        # The nodes stay Ready: their CNI runs, it is the overlay that is cut.
        assert all(cond["status"] == "True" for cond in nodes(first).values())
        dns = pods(first, "k8s-app=kube-dns")
        assert all(ready(p)["status"] == "False" and "UDP 8472" in ready(p)["message"] for p in dns.values()), dns
    finally:
        unblock(blocked)
    wait_for(lambda: all_ready(first, "k8s-app=canal", 3), "canal Ready again once the port is open")
    wait_for(lambda: all_ready(first, "k8s-app=kube-dns", 1), "CoreDNS Ready again")


def test_calico_needs_its_image_archive_and_udp_4789(cluster_hosts, bundle, core_bundle):
    hosts = cluster_hosts(2)
    first, agent = hosts
    # Installed from the core archive only (rke2-images holds Canal's images, not calico's).
    start(first, core_bundle, "server", ["cni: calico"])
    cond = nodes(first)[first.name]
    assert cond["status"] == "False" and "cni plugin not initialized" in cond["message"], cond
    pod = wait_for(lambda: pods(first, "k8s-app=calico-node"), "a calico pod")
    (calico,) = pod.values()
    waiting = calico["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ImagePullBackOff"
    assert "rke2-images-calico.linux-amd64.tar.zst" in waiting["message"]
    assert calico["status"]["phase"] == "Pending"
    assert pods(first, "k8s-app=kube-dns") and all(
        p["status"]["phase"] == "Pending" and not p["spec"].get("nodeName")
        for p in pods(first, "k8s-app=kube-dns").values()
    )

    for host in hosts:
        sh(host, "mkdir -p %s && cp %s/rke2-images-calico.linux-amd64.tar.zst %s/" % (IMAGES, bundle, IMAGES))
    wait_for(lambda: nodes(first)[first.name]["status"] == "True", "the server Ready once calico's images are there")
    start(agent, core_bundle, "agent", ["server: https://%s:9345" % first.ip])
    wait_for(lambda: all_ready(first, "k8s-app=calico-node", 2), "calico Ready on both nodes")
    listening = sh(agent, "ss -Hlun").stdout
    assert ":4789" in listening and ":8472" not in listening

    block_udp(agent, 8472)  # not calico's port: nothing changes
    try:
        time.sleep(5)
        assert all_ready(first, "k8s-app=calico-node", 2)
    finally:
        unblock(agent)
    block_udp(agent, 4789)
    try:
        broken = wait_for(lambda: not_ready_messages(first, "k8s-app=calico-node").get(first.name), "calico to break")
        assert "cannot reach %s (%s) on UDP 4789" % (agent.name, agent.ip) in broken
    finally:
        unblock(agent)


def test_without_cni_nodes_wait_until_one_is_installed(cluster_hosts, bundle):
    hosts = cluster_hosts(2)
    first, agent = hosts
    start_cluster(hosts, bundle, ["cni: none"])

    state = nodes(first)
    assert set(state) == {first.name, agent.name}
    for cond in state.values():
        assert cond["status"] == "False" and cond["reason"] == "KubeletNotReady", cond
        assert "network plugin" in cond["message"].lower() or "cni plugin not initialized" in cond["message"], cond
    assert kubectl(first, "get", "daemonsets", "-n", "kube-system", "-o", "name").strip() == ""
    (dns,) = pods(first, "k8s-app=kube-dns").values()
    assert dns["status"]["phase"] == "Pending" and not dns["spec"].get("nodeName")
    scheduled = next(c for c in dns["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["status"] == "False" and "not-ready" in scheduled["message"]

    # The operator installs a CNI of their own (its images come from their registry).
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "cilium", "namespace": "kube-system", "labels": {"k8s-app": "cilium"}},
        "spec": {
            "selector": {"matchLabels": {"k8s-app": "cilium"}},
            "template": {
                "metadata": {"labels": {"k8s-app": "cilium"}},
                "spec": {"containers": [{"name": "cilium-agent", "image": "quay.io/cilium/cilium"}]},
            },
        },
    }
    proc = first.run(
        [KUBECTL, "--kubeconfig", KUBECONFIG, "create", "--validate=false", "-f", "-"],
        input=json.dumps(manifest),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: all(c["status"] == "True" for c in nodes(first).values()), "nodes Ready with the new CNI")
    wait_for(lambda: all_ready(first, "k8s-app=cilium", 2), "cilium Ready on both nodes")
    wait_for(lambda: all_ready(first, "k8s-app=kube-dns", 1), "CoreDNS scheduled and Ready")
