"""Pod networking of the stand-in: what a node's CNI needs before the node is Ready and its pods are Ready.

The CNI of a cluster is the DaemonSet of a known CNI in the cluster (rke2 deploys the one named by ``cni:``; with
``cni: none`` there is none until the operator installs one).  On every node the kubelet stand-in "runs" that
DaemonSet's pod:

* the pod needs its CNI's images.  When the node was installed from airgap image archives (any archive in
  ``<data-dir>/agent/images``), a CNI rke2 packages needs its own archive there (``rke2-images-<cni>.linux-<arch>
  .tar.zst``; the all-in-one ``rke2-images`` archive holds Canal's).  Without one the pod is stuck pulling its
  image and the CNI never runs;
* once it runs, the node listens on the CNI's overlay port (UDP 8472 for VXLAN: canal, cilium, flannel; UDP 4789
  for calico) and probes every other Ready node on it, with real datagrams (a port blocked with nftables on a host
  breaks it).  Like VXLAN, an answer is a datagram to the prober's overlay port, so a blocked port cuts both ways.

The node posts the result in its Node's ``standin.rke2.io/network`` annotation (JSON); the API server derives from
it the Node's Ready condition (NotReady while no CNI runs, with kubelet's "cni plugin not initialized" message)
and the status of the CNI pod and of the pod-network pods (CoreDNS ...) on that node.
"""

import glob
import json
import os
import platform
import secrets
import socket
import threading
import time

from . import log

ANNOTATION = "standin.rke2.io/network"
PROBE_INTERVAL = 2.0  # seconds between two probe rounds
PROBE_TIMEOUT = 1.5  # seconds a probe round waits for answers
FAILED_ROUNDS = 2  # consecutive unanswered rounds before a peer that answered before counts as unreachable
MAGIC = b"RKE2-STANDIN-OVERLAY"
NOT_INITIALIZED = (
    "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
    "message:Network plugin returns error: cni plugin not initialized"
)
RKE2_RELEASE_PREFIX = "rke2-"  # Helm release names of the charts rke2 itself deploys


class Spec:
    def __init__(self, name, daemonset, app, containers, port, encapsulation, archives, image):
        self.name = name
        self.daemonset = daemonset
        self.app = app  # k8s-app label of its pods
        self.containers = containers
        self.port = port
        self.encapsulation = encapsulation
        self.archives = archives  # image archive base names that hold its images
        self.image = image


SPECS = {
    "canal": Spec(
        "canal",
        "rke2-canal",
        "canal",
        ("calico-node", "kube-flannel"),
        8472,
        "VXLAN",
        ("rke2-images", "rke2-images-canal"),
        "rancher/hardened-calico",
    ),
    "calico": Spec(
        "calico",
        "calico-node",
        "calico-node",
        ("calico-node",),
        4789,
        "VXLAN",
        ("rke2-images-calico",),
        "rancher/mirrored-calico-node",
    ),
    "cilium": Spec(
        "cilium",
        "cilium",
        "cilium",
        ("cilium-agent",),
        8472,
        "VXLAN",
        ("rke2-images-cilium",),
        "rancher/mirrored-cilium-cilium",
    ),
    "flannel": Spec(
        "flannel",
        "kube-flannel-ds",
        "flannel",
        ("kube-flannel",),
        8472,
        "VXLAN",
        ("rke2-images-flannel",),
        "rancher/hardened-flannel",
    ),
}
BY_DAEMONSET = {spec.daemonset: spec for spec in SPECS.values()}


def arch():
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def daemonset_object(spec):
    """The DaemonSet rke2's chart for ``spec`` creates (marked as a Helm release of rke2)."""
    release = spec.daemonset if spec.daemonset.startswith(RKE2_RELEASE_PREFIX) else RKE2_RELEASE_PREFIX + spec.name
    return {
        "metadata": {
            "name": spec.daemonset,
            "namespace": "kube-system",
            "labels": {"k8s-app": spec.app, "app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": "kube-system"},
        },
        "spec": {
            "selector": {"matchLabels": {"k8s-app": spec.app}},
            "template": {"spec": {"containers": [{"name": c} for c in spec.containers]}},
        },
    }


def find_cni(daemonsets):
    """(spec, packaged) of the first CNI DaemonSet found; packaged: deployed by rke2 (its images are rke2's)."""
    for ds in daemonsets:
        spec = BY_DAEMONSET.get(ds.get("metadata", {}).get("name"))
        if spec is None:
            continue
        release = (ds["metadata"].get("annotations") or {}).get("meta.helm.sh/release-name", "")
        return spec, release.startswith(RKE2_RELEASE_PREFIX)
    return None, False


def missing_archive(spec, images_dir, arch_name):
    """None when the CNI's images are available, else the message of a pull that cannot succeed.

    No archive at all in the images folder: the node was not installed from airgap archives, its images come
    from a registry."""
    try:
        present = [name for name in os.listdir(images_dir) if ".tar" in name]
    except OSError:
        present = []
    if not present:
        return None
    for base in spec.archives:
        if glob.glob(os.path.join(glob.escape(images_dir), "%s.linux-%s.tar*" % (base, arch_name))):
            return None
    wanted = " or ".join("%s.linux-%s.tar.zst" % (base, arch_name) for base in spec.archives)
    return (
        'Back-off pulling image "%s": failed to pull and unpack image: no registry reachable, and the airgap image '
        "archives in %s do not hold it (%s missing)" % (spec.image, images_dir, wanted)
    )


# --- the node side --------------------------------------------------------------------------------------


class Overlay:
    """The node's overlay endpoint: one UDP socket on the CNI's port, answering probes and collecting answers."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", port))
        self.sock.settimeout(0.5)
        self.lock = threading.Lock()
        self.answers = {}  # nonce -> peer ip
        self.closed = False
        self.thread = threading.Thread(target=self._serve, name="overlay-%d" % port, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.closed:
            try:
                data, addr = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            parts = data.split()
            if len(parts) < 3 or parts[0] != MAGIC:
                continue
            if parts[1] == b"PROBE":
                try:
                    # VXLAN-like: the answer is a new datagram to the peer's overlay port.
                    self.sock.sendto(b" ".join([MAGIC, b"ANSWER", parts[2]]), (addr[0], self.port))
                except OSError:
                    pass
            elif parts[1] == b"ANSWER":
                with self.lock:
                    self.answers[parts[2]] = addr[0]

    def probe(self, ips, timeout=PROBE_TIMEOUT):
        """The subset of ``ips`` that answered within ``timeout``."""
        nonces = {}
        for ip in ips:
            nonce = secrets.token_hex(8).encode()
            nonces[nonce] = ip
        deadline = time.monotonic() + timeout
        resend = time.monotonic() + timeout / 3
        self._send(nonces)
        answered = set()
        while time.monotonic() < deadline:
            with self.lock:
                for nonce in list(nonces):
                    if nonce in self.answers:
                        answered.add(nonces.pop(nonce))
                        self.answers.pop(nonce, None)
            if not nonces:
                break
            if resend and time.monotonic() >= resend:
                self._send(nonces)
                resend = None
            time.sleep(0.05)
        with self.lock:
            for nonce in nonces:
                self.answers.pop(nonce, None)
        return answered

    def _send(self, nonces):
        for nonce, ip in nonces.items():
            try:
                self.sock.sendto(b" ".join([MAGIC, b"PROBE", nonce]), (ip, self.port))
            except OSError:
                pass

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


class Network:
    """The CNI as the kubelet stand-in runs it: decides whether it runs, probes the peers, posts the result."""

    def __init__(self, kubelet, images_dir, arch_name=None):
        self.kubelet = kubelet
        self.images_dir = images_dir
        self.arch = arch_name or arch()
        self.overlay = None
        self.failures = {}  # peer name -> consecutive unanswered rounds
        self.answered_once = set()  # peers that answered at least once
        self.status = None
        self.posted = None
        self.thread = None
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def check(self):
        """One round: returns (and keeps) the status to post."""
        with self.lock:
            return self._check()

    def _check(self):
        _, data = self.kubelet.call("GET", "/apis/apps/v1/namespaces/kube-system/daemonsets")
        spec, packaged = find_cni((data or {}).get("items", []))
        if spec is None:
            self._close()
            status = {"running": False, "reason": "NetworkPluginNotReady", "message": NOT_INITIALIZED}
        else:
            problem = missing_archive(spec, self.images_dir, self.arch) if packaged else None
            if problem:
                self._close()
                status = {"cni": spec.name, "running": False, "reason": "ImagePullBackOff", "message": problem}
            else:
                status = self._probe(spec)
        if status != self.status:
            log.info(
                "CNI status",
                cni=status.get("cni", "none"),
                running=status["running"],
                ready=status.get("ready", False),
                message=status.get("message", ""),
            )
        self.status = status
        return status

    def _close(self):
        if self.overlay is not None:
            self.overlay.close()
            self.overlay = None
        self.failures = {}
        self.answered_once = set()

    def _probe(self, spec):
        base = {"cni": spec.name, "port": spec.port}
        if self.overlay is None or self.overlay.port != spec.port:
            self._close()
            try:
                self.overlay = Overlay(spec.port)
            except OSError as exc:
                return dict(
                    base,
                    running=False,
                    reason="NetworkPluginNotReady",
                    message="%s: failed to listen on UDP %d (%s): %s" % (spec.name, spec.port, spec.encapsulation, exc),
                )
        peers = self._peers()
        answered = self.overlay.probe(peers.values()) if peers else set()
        for name in list(self.failures):
            if name not in peers:
                del self.failures[name]
        self.answered_once &= set(peers)
        unreachable = []
        for name, ip in sorted(peers.items()):
            if ip in answered:
                self.failures.pop(name, None)
                self.answered_once.add(name)
                continue
            # A lost datagram is forgiven once for a peer that answered before; a new peer must answer at once.
            self.failures[name] = self.failures.get(name, 0) + 1
            if name not in self.answered_once or self.failures[name] >= FAILED_ROUNDS:
                unreachable.append([name, ip])
        status = dict(base, running=True, ready=not unreachable, unreachable=unreachable)
        if unreachable:
            status["message"] = "%s cannot reach %s on UDP %d (%s overlay of %s)" % (
                self.kubelet.info.name,
                ", ".join("%s (%s)" % (name, ip) for name, ip in unreachable),
                spec.port,
                spec.encapsulation,
                spec.name,
            )
        return status

    def _peers(self):
        """{name: InternalIP} of the other nodes whose kubelet reports them Ready."""
        _, data = self.kubelet.call("GET", "/api/v1/nodes")
        peers = {}
        for node in (data or {}).get("items", []):
            name = node["metadata"]["name"]
            if name == self.kubelet.info.name:
                continue
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in node.get("status", {}).get("conditions", [])
            )
            ip = next(
                (a["address"] for a in node.get("status", {}).get("addresses", []) if a.get("type") == "InternalIP"),
                None,
            )
            if ready and ip:
                peers[name] = ip
        return peers

    def annotation(self):
        return json.dumps(self.status, sort_keys=True) if self.status is not None else None

    def post(self):
        value = self.annotation()
        if value is None or value == self.posted:
            return
        patch = {"metadata": {"annotations": {ANNOTATION: value}}}
        self.kubelet.call(
            "PATCH", "/api/v1/nodes/" + self.kubelet.info.name, patch, content_type="application/merge-patch+json"
        )
        self.posted = value

    def start(self):
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="cni", daemon=True)
            self.thread.start()

    def _run(self):
        while not self.stop.wait(PROBE_INTERVAL):
            try:
                self.check()
                self.post()
            except Exception as exc:  # noqa: BLE001 - keep probing whatever one round hit
                log.error("Failed to update the CNI status", error=str(exc))


# --- the API server side --------------------------------------------------------------------------------


def node_network(node):
    """The network status a node's kubelet posted (not running when it posted none)."""
    raw = (node.get("metadata", {}).get("annotations") or {}).get(ANNOTATION)
    if raw:
        try:
            value = json.loads(raw)
            if isinstance(value, dict):
                return value
        except ValueError:
            pass
    return {"running": False, "reason": "NetworkPluginNotReady", "message": NOT_INITIALIZED}


def _set_condition(pod, ctype, status, reason=None, message=None):
    conditions = pod.setdefault("status", {}).setdefault("conditions", [])
    for cond in conditions:
        if cond.get("type") == ctype:
            break
    else:
        cond = {"type": ctype, "lastTransitionTime": pod["metadata"].get("creationTimestamp")}
        conditions.append(cond)
    cond["status"] = status
    for key, value in (("reason", reason), ("message", message)):
        if value:
            cond[key] = value
        else:
            cond.pop(key, None)


def _containers(pod):
    return [c["name"] for c in pod.get("spec", {}).get("containers", [])]


def _not_ready(pod, running, detail, waiting_reason=None):
    names = _containers(pod)
    status = pod.setdefault("status", {})
    if not running:
        status["phase"] = "Pending"
    for ctype in ("Ready", "ContainersReady"):
        _set_condition(
            pod,
            ctype,
            "False",
            "ContainersNotReady",
            "containers with unready status: [%s]: %s" % (" ".join(names), detail),
        )
    statuses = []
    for cs in status.get("containerStatuses") or [{"name": n, "image": "", "restartCount": 0} for n in names]:
        cs = dict(cs, ready=False)
        if not running:
            cs["started"] = False
            cs["state"] = {"waiting": {"reason": waiting_reason or "ContainerCreating", "message": detail}}
        statuses.append(cs)
    status["containerStatuses"] = statuses


def render_pod(pod, nodes):
    """Derive the pod's status from its node's network (``nodes``: {name: rendered Node})."""
    spec = pod.get("spec", {})
    node_name = spec.get("nodeName")
    if not node_name:
        if pod.get("status", {}).get("phase") == "Pending":
            not_ready = [n for n in nodes.values() if not _node_ready(n)]
            message = "0/%d nodes are available" % len(nodes)
            if not_ready:
                message += ": %d node(s) had untolerated taint {node.kubernetes.io/not-ready: }" % len(not_ready)
            _set_condition(pod, "PodScheduled", "False", "Unschedulable", message + ".")
        return pod
    node = nodes.get(node_name)
    if node is None:
        return pod
    owner = next((r for r in pod["metadata"].get("ownerReferences") or [] if r.get("controller")), {})
    is_cni = owner.get("kind") == "DaemonSet" and owner.get("name") in BY_DAEMONSET
    if not is_cni and spec.get("hostNetwork"):
        return pod
    net = node_network(node)
    if is_cni:
        if not net.get("running"):
            if net.get("reason") == "ImagePullBackOff":
                _not_ready(pod, False, net.get("message", ""), "ImagePullBackOff")
            else:
                _not_ready(pod, False, net.get("message", ""), "CrashLoopBackOff")
        elif not net.get("ready"):
            _not_ready(pod, True, "Readiness probe failed: " + net.get("message", ""))
        return pod
    if not net.get("running"):
        _not_ready(
            pod,
            False,
            "Failed to create pod sandbox: network is not ready: %s" % net.get("message", NOT_INITIALIZED),
        )
    elif not net.get("ready"):
        _not_ready(pod, True, "Readiness probe failed: pod network of node %s: %s" % (node_name, net.get("message")))
    return pod


def _node_ready(node):
    return any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in node.get("status", {}).get("conditions", [])
    )
