"""Pieces shared by ``rke2 server`` and ``rke2 agent``: paths, tokens, readiness notification, node identity
and the kubelet stand-in (Node registration + lease heartbeats through the API server)."""

import hashlib
import json
import os
import platform
import secrets
import socket
import subprocess
import threading
import time

from . import cni, httputil, k8s, log

DATA_DIR = "/var/lib/rancher/rke2"
NODE_PASSWORD_FILE = "/etc/rancher/node/password"
NODE_PASSWORD_PREFIX = "/registry/secrets/kube-system/"


class Paths:
    """Every file the stand-in keeps under rke2's ``data-dir`` (``/var/lib/rancher/rke2`` unless configured)."""

    def __init__(self, data_dir=DATA_DIR):
        self.data = os.path.abspath(data_dir or DATA_DIR)
        self.server = os.path.join(self.data, "server")
        self.tls = os.path.join(self.server, "tls")
        self.etcd_tls = os.path.join(self.tls, "etcd")
        self.db = os.path.join(self.server, "db")
        self.etcd_data = os.path.join(self.db, "etcd")
        self.etcd_name = os.path.join(self.db, "etcd-member-name")
        self.etcd_pid = os.path.join(self.server, "etcd.pid")
        self.snapshots = os.path.join(self.db, "snapshots")
        self.token = os.path.join(self.server, "token")
        self.node_token = os.path.join(self.server, "node-token")
        self.agent_token = os.path.join(self.server, "agent-token")
        self.agent = os.path.join(self.data, "agent")
        self.images = os.path.join(self.agent, "images")
        self.kubelet_crt = os.path.join(self.agent, "client-kubelet.crt")
        self.kubelet_key = os.path.join(self.agent, "client-kubelet.key")
        self.agent_ca = os.path.join(self.agent, "server-ca.crt")
        self.lb_file = os.path.join(self.agent, "etc", "rke2-agent-load-balancer.json")
        self.bin = os.path.join(self.data, "bin")

    def logs(self, role):
        return os.path.join(self.data, role, "logs")

    def log_file(self, role):
        return os.path.join(self.logs(role), "rke2.log")


def makedirs(path, mode=0o755):
    os.makedirs(path, mode=mode, exist_ok=True)


def write_file(path, data, mode=0o600):
    makedirs(os.path.dirname(path))
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def image_archives(paths):
    """The airgap image archives in ``<data-dir>/agent/images`` (rke2 imports them into containerd at start)."""
    try:
        names = sorted(os.listdir(paths.images))
    except OSError:
        return []
    found = []
    for name in names:
        full = os.path.join(paths.images, name)
        if os.path.isfile(full) and name.endswith((".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.bz2", ".tar.lz4")):
            log.info("Importing images from %s" % full)
            found.append(full)
    return found


# --- tokens ---------------------------------------------------------------------------------------------


class Token:
    """``K10<sha256 of CA bundle>::<user>:<password>`` or a bare password."""

    def __init__(self, raw, default_user):
        raw = (raw or "").strip()
        self.raw = raw
        self.ca_hash = None
        self.user = default_user
        self.password = raw
        if raw.startswith("K10") and "::" in raw:
            head, _, creds = raw.partition("::")
            self.ca_hash = head[3:] or None
            user, sep, password = creds.partition(":")
            if sep:
                self.user, self.password = user, password
            else:
                self.password = creds


def ca_hash(ca_pem):
    return hashlib.sha256(ca_pem.encode()).hexdigest()


def full_token(ca_pem, user, password):
    return "K10%s::%s:%s" % (ca_hash(ca_pem), user, password)


def random_secret():
    return secrets.token_hex(16)


# --- readiness ------------------------------------------------------------------------------------------


class Notifier:
    """The service manager's readiness protocol.

    Under systemd (``Type=notify``) the unit's ``$NOTIFY_SOCKET`` receives ``READY=1`` as one datagram, like
    ``sd_notify(3)``; a leading ``@`` names a socket in the abstract namespace.  The variable is taken out of the
    environment when the process starts, so that no child (etcd, openssl) can notify on rke2's behalf.  The SysV
    init script passes ``RKE2_STANDIN_READY_FILE`` instead and waits for that file."""

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        self.socket_path = environ.pop("NOTIFY_SOCKET", None) or None
        self.ready_file = environ.pop("RKE2_STANDIN_READY_FILE", None) or None
        self.ready = False

    @staticmethod
    def address(path):
        if path.startswith("@"):
            return "\0" + path[1:]
        return path

    def send(self, state):
        """Send one notification datagram; returns False (and logs) when it cannot be delivered."""
        if not self.socket_path:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode(), self.address(self.socket_path))
            return True
        except OSError as exc:
            log.warning("Failed to notify systemd", error=str(exc), socket=self.socket_path)
            return False

    def notify_ready(self, status):
        self.ready = True
        self.send("READY=1\nSTATUS=%s\n" % status)
        if self.ready_file:
            write_file(self.ready_file, "READY=1\nSTATUS=%s\nMAINPID=%d\n" % (status, os.getpid()), mode=0o644)

    def status(self, text):
        self.send("STATUS=%s\n" % text)

    def stopping(self):
        self.send("STOPPING=1\n")
        self.clear()

    def clear(self):
        if self.ready_file:
            try:
                os.unlink(self.ready_file)
            except FileNotFoundError:
                pass


NOTIFIER = None


def notifier():
    """The process's notifier (created by the command line before anything else runs)."""
    global NOTIFIER
    if NOTIFIER is None:
        NOTIFIER = Notifier()
    return NOTIFIER


def notify_ready(status):
    notifier().notify_ready(status)


def clear_ready():
    notifier().clear()


# --- identity -------------------------------------------------------------------------------------------


def detect_node_ip():
    """The first global IPv4 address (rke2 uses the default-route interface; test hosts have no default route)."""
    try:
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    return None


def node_password():
    """The per-host node password rke2 keeps in /etc/rancher/node/password."""
    try:
        with open(NODE_PASSWORD_FILE) as handle:
            value = handle.read().strip()
            if value:
                return value
    except OSError:
        pass
    value = secrets.token_hex(16)
    write_file(NODE_PASSWORD_FILE, value + "\n", mode=0o600)
    return value


def password_hash(password):
    return hashlib.sha256(password.encode()).hexdigest()


def check_node_password(etcd_client, node_name, password):
    """Mirror of rke2's ``<node>.node-password.rke2`` secret check; returns an error message or None."""
    key = NODE_PASSWORD_PREFIX + node_name + ".node-password.rke2"
    digest = password_hash(password or "")
    stored, _ = etcd_client.get_json(key)
    if stored is None:
        etcd_client.cas(key, {"hash": digest}, 0)
        return None
    if stored.get("hash") != digest:
        return (
            "Node password rejected, duplicate hostname or contents of '/etc/rancher/node/password' may not "
            "match server node-password secret entry, try enabling a unique node name with the --with-node-id flag"
        )
    return None


def os_image():
    try:
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def _meminfo_kib():
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def parse_labels(items):
    labels = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if key:
            labels[key.strip()] = value.strip() if sep else ""
    return labels


def parse_taints(items):
    taints = []
    for item in items or []:
        body, _, effect = item.rpartition(":")
        if not body:
            log.warning("ignoring invalid node-taint %r" % item)
            continue
        key, sep, value = body.partition("=")
        taint = {"key": key, "effect": effect}
        if sep:
            taint["value"] = value
        taints.append(taint)
    return taints


def redacted_args(role, cfg):
    args = [role]
    for key in sorted(cfg):
        if key in ("token", "agent-token") or "secret" in key or key.startswith(("etcd-s3-access", "etcd-s3-secret")):
            args.extend(["--" + key, "********"])
            continue
        values = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
        for value in values:
            if value in ("", None, False):
                continue
            args.extend(["--" + key, "true" if value is True else str(value)])
    return args


class NodeInfo:
    def __init__(self, name, ip, external_ips, role, version, labels, taints, annotations):
        self.name = name
        self.ip = ip
        self.external_ips = external_ips
        self.role = role
        self.version = version
        self.labels = labels
        self.taints = taints
        self.annotations = annotations

    def status(self):
        addresses = [{"type": "InternalIP", "address": self.ip}]
        addresses += [{"type": "ExternalIP", "address": ip} for ip in self.external_ips]
        addresses.append({"type": "Hostname", "address": socket.gethostname()})
        mem = _meminfo_kib()
        cpus = str(os.cpu_count() or 1)
        machine_id = ""
        try:
            with open("/etc/machine-id") as handle:
                machine_id = handle.read().strip()
        except OSError:
            pass
        system_uuid = hashlib.md5(("%s/%s" % (machine_id, self.name)).encode()).hexdigest()
        try:
            with open("/proc/sys/kernel/random/boot_id") as handle:
                boot_id = handle.read().strip()
        except OSError:
            boot_id = ""
        capacity = {
            "cpu": cpus,
            "ephemeral-storage": "41152736Ki",
            "hugepages-2Mi": "0",
            "memory": "%dKi" % mem,
            "pods": "110",
        }
        return {
            "addresses": addresses,
            "capacity": capacity,
            "allocatable": dict(capacity),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
                "bootID": boot_id,
                "containerRuntimeVersion": "containerd://1.7.23-k3s2",
                "kernelVersion": platform.release(),
                "kubeProxyVersion": self.version,
                "kubeletVersion": self.version,
                "machineID": machine_id,
                "operatingSystem": "linux",
                "osImage": os_image(),
                "systemUUID": system_uuid,
            },
        }

    def base_labels(self):
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        labels = {
            "beta.kubernetes.io/arch": arch,
            "beta.kubernetes.io/instance-type": "rke2",
            "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch,
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "node.kubernetes.io/instance-type": "rke2",
        }
        if self.role == "server":
            labels.update(
                {
                    "node-role.kubernetes.io/control-plane": "true",
                    "node-role.kubernetes.io/etcd": "true",
                    "node-role.kubernetes.io/master": "true",
                }
            )
        return labels

    def node_object(self):
        labels = self.base_labels()
        labels.update(self.labels)
        spec = {"providerID": "rke2://%s" % self.name}
        if self.taints:
            spec["taints"] = self.taints
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels, "annotations": dict(self.annotations)},
            "spec": spec,
            "status": self.status(),
        }


class Kubelet:
    """Registers the Node and renews its lease, failing over between API servers like rke2's client LB."""

    def __init__(self, info, endpoints, ctx, lb_file=None, images_dir=None):
        self.info = info
        self.endpoints = list(dict.fromkeys(endpoints))
        self.ctx = ctx
        self.lb_file = lb_file
        self.registered = False
        self._last_refresh = 0.0
        self._lock = threading.RLock()
        # The node's CNI: checked before the Node is registered, then probed in the background.
        self.network = cni.Network(self, images_dir or os.path.join(DATA_DIR, "agent", "images"))

    def call(self, method, path, body=None, content_type=None, ok=(200, 201)):
        with self._lock:
            return self._call(method, path, body, content_type, ok)

    def _call(self, method, path, body, content_type, ok):
        last = None
        for endpoint in list(self.endpoints):
            headers = {"Content-Type": content_type} if content_type else None
            try:
                status, data = httputil.request(
                    endpoint + path, method=method, body=body, ctx=self.ctx, headers=headers, timeout=10
                )
            except OSError as exc:
                last = exc
                continue
            if endpoint != self.endpoints[0]:
                self.endpoints.remove(endpoint)
                self.endpoints.insert(0, endpoint)
                log.info("Switched API server endpoint", endpoint=endpoint)
            if status == 404:
                return 404, None
            if status not in ok:
                raise httputil.HTTPError(status, data, endpoint + path)
            return status, json.loads(data) if data else None
        raise OSError("no API server reachable (%s): %s" % (", ".join(self.endpoints), last))

    def register(self):
        name = self.info.name
        self.network.check()
        network = {cni.ANNOTATION: self.network.annotation()}
        status, existing = self.call("GET", "/api/v1/nodes/" + name)
        if status == 404:
            obj = self.info.node_object()
            obj["metadata"]["annotations"].update(network)
            self.call("POST", "/api/v1/nodes", obj)
            log.info("Successfully registered node", node=name)
        else:
            patch = {"metadata": {"annotations": dict(self.info.annotations, **network)}, "status": self.info.status()}
            if self.info.role == "server":
                patch["metadata"]["labels"] = {
                    k: v for k, v in self.info.base_labels().items() if k.startswith("node-role.kubernetes.io/")
                }
            self.call("PATCH", "/api/v1/nodes/" + name, patch, content_type="application/merge-patch+json")
            log.info("Updated node status", node=name, kubeletVersion=self.info.version)
        self.renew_lease()
        self.network.posted = network[cni.ANNOTATION]
        self.registered = True
        self.network.start()

    def renew_lease(self):
        name = self.info.name
        path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/"
        status, lease = self.call("GET", path + name)
        spec = {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": k8s.now_micro()}
        if status == 404:
            self.call(
                "POST",
                path[:-1],
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": name, "namespace": "kube-node-lease"},
                    "spec": spec,
                },
            )
        else:
            lease["spec"] = spec
            self.call("PUT", path + name, lease)

    def heartbeat(self):
        status, _ = self.call("GET", "/api/v1/nodes/" + self.info.name)
        if status == 404:
            log.info("Node object not found, registering it again", node=self.info.name)
            self.register()
            return
        self.renew_lease()
        if self.lb_file and time.time() - self._last_refresh > 30:
            self.refresh_endpoints()

    def refresh_endpoints(self):
        self._last_refresh = time.time()
        status, nodes = self.call("GET", "/api/v1/nodes?labelSelector=node-role.kubernetes.io%2Fcontrol-plane%3Dtrue")
        if status != 200:
            return
        found = []
        for node in nodes.get("items", []):
            for addr in node.get("status", {}).get("addresses", []):
                if addr.get("type") == "InternalIP":
                    found.append("https://%s:6443" % addr["address"])
        if found:
            current = self.endpoints[0]
            rest = [e for e in found if e != current]
            self.endpoints = ([current] if current in found or current.startswith("https://127.") else []) + rest
            if not self.endpoints:
                self.endpoints = found
            if self.lb_file:
                save_lb(self.lb_file, self.endpoints)


def save_lb(path, endpoints, server_url=None):
    data = {"ServerURL": server_url or "", "ServerAddresses": [e.split("//", 1)[-1] for e in endpoints]}
    try:
        with open(path) as handle:
            old = json.load(handle)
        data["ServerURL"] = server_url or old.get("ServerURL", "")
    except (OSError, ValueError):
        pass
    write_file(path, json.dumps(data, indent=2) + "\n", mode=0o600)


def load_lb(path):
    try:
        with open(path) as handle:
            data = json.load(handle)
        return ["https://%s" % a for a in data.get("ServerAddresses", [])]
    except (OSError, ValueError):
        return []


class Stopper:
    def __init__(self):
        self.event = threading.Event()

    def __call__(self, signum, frame):
        log.info("Received signal, shutting down", signal=signum)
        self.event.set()


class StartClock:
    """Counts a start delay from the start of the process: the stand-in's own start-up work is part of it, the
    time spent waiting to retry a join is not (a real node also needs its full start-up time once it can join)."""

    def __init__(self):
        self.started = time.monotonic()
        self.blocked = 0.0

    def wait_to_retry(self, sleep, seconds):
        began = time.monotonic()
        sleep(seconds)
        self.blocked += time.monotonic() - began

    def delay_left(self, delay):
        return max(0.0, delay - (time.monotonic() - self.started - self.blocked))
