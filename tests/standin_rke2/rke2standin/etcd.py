"""Real etcd (Debian's /usr/bin/etcd 3.4): process management and a client for its v3 JSON gateway."""

import base64
import json
import os
import signal
import subprocess
import threading
import time

from . import httputil, log

ETCD_BIN = "/usr/bin/etcd"


class EtcdError(Exception):
    """An error answered by etcd itself (e.g. ``etcdserver: too many learner members in cluster``)."""


class EtcdUnavailable(Exception):
    """No endpoint could be reached."""


def _b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def _unb64(text):
    return base64.b64decode(text or "")


def prefix_end(prefix):
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return bytes(raw)


class Client:
    def __init__(self, endpoints, cafile, certfile, keyfile, timeout=5.0):
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.ctx = httputil.client_context(cafile, certfile, keyfile)
        self.ctx.check_hostname = False  # members are addressed by IP; the chain is still verified
        self._lock = threading.Lock()

    def with_endpoints(self, endpoints):
        clone = Client.__new__(Client)
        clone.endpoints = list(endpoints)
        clone.timeout = self.timeout
        clone.ctx = self.ctx
        clone._lock = threading.Lock()
        return clone

    def call(self, path, body):
        last = None
        for endpoint in list(self.endpoints):
            try:
                status, data = httputil.request(
                    endpoint + path, method="POST", body=body, ctx=self.ctx, timeout=self.timeout
                )
            except OSError as exc:
                last = exc
                continue
            try:
                payload = json.loads(data) if data else {}
            except ValueError:
                payload = {"error": data.decode("utf-8", "replace")}
            if status != 200 or "error" in payload:
                message = payload.get("error") or payload.get("message") or "HTTP %d" % status
                raise EtcdError(message)
            if endpoint != self.endpoints[0]:
                with self._lock:
                    self.endpoints.remove(endpoint)
                    self.endpoints.insert(0, endpoint)
            return payload
        raise EtcdUnavailable("no etcd endpoint reachable (%s): %s" % (", ".join(self.endpoints), last))

    # --- kv -------------------------------------------------------------------------------------------
    def get(self, key):
        resp = self.call("/v3/kv/range", {"key": _b64(key)})
        kvs = resp.get("kvs") or []
        if not kvs:
            return None, 0
        return _unb64(kvs[0].get("value")), int(kvs[0].get("mod_revision", 0))

    def get_json(self, key):
        value, rev = self.get(key)
        if value is None:
            return None, 0
        return json.loads(value), rev

    def list_prefix(self, prefix):
        resp = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        items = []
        for kv in resp.get("kvs") or []:
            items.append((_unb64(kv["key"]).decode(), _unb64(kv.get("value")), int(kv.get("mod_revision", 0))))
        return items, int(resp.get("header", {}).get("revision", 0))

    def list_json(self, prefix):
        items, rev = self.list_prefix(prefix)
        return [(key, json.loads(value), mod) for key, value, mod in items], rev

    def put(self, key, value):
        if not isinstance(value, (bytes, str)):
            value = json.dumps(value, sort_keys=True)
        resp = self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
        return int(resp.get("header", {}).get("revision", 0))

    def cas(self, key, value, mod_revision):
        """Write ``value`` if the key's mod revision is ``mod_revision`` (0 = must not exist).

        Returns the new revision, or None when the comparison failed."""
        if not isinstance(value, (bytes, str)):
            value = json.dumps(value, sort_keys=True)
        body = {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
        }
        resp = self.call("/v3/kv/txn", body)
        if not resp.get("succeeded"):
            return None
        return int(resp.get("header", {}).get("revision", 0))

    def delete(self, key, mod_revision=None):
        if mod_revision is None:
            resp = self.call("/v3/kv/deleterange", {"key": _b64(key)})
            return int(resp.get("deleted", 0))
        body = {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
        }
        resp = self.call("/v3/kv/txn", body)
        return 1 if resp.get("succeeded") else 0

    # --- cluster --------------------------------------------------------------------------------------
    @staticmethod
    def _member(member):
        return {
            "id": member.get("ID"),
            "name": member.get("name", ""),
            "peerURLs": member.get("peerURLs") or [],
            "clientURLs": member.get("clientURLs") or [],
            "isLearner": bool(member.get("isLearner")),
        }

    def members(self):
        resp = self.call("/v3/cluster/member/list", {})
        return [self._member(m) for m in resp.get("members") or []]

    def member_add(self, peer_url, learner=True):
        resp = self.call("/v3/cluster/member/add", {"peerURLs": [peer_url], "isLearner": learner})
        return resp["member"]["ID"], [self._member(m) for m in resp.get("members") or []]

    def member_remove(self, member_id):
        self.call("/v3/cluster/member/remove", {"ID": str(member_id)})

    def member_promote(self, member_id):
        self.call("/v3/cluster/member/promote", {"ID": str(member_id)})

    def status(self):
        return self.call("/v3/maintenance/status", {})


# ---------------------------------------------------------------------------------------------------------


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().split(b"\0")
    except OSError:
        return []


# Variables of the service manager that belong to the rke2 process alone.  etcd notifies READY=1 on
# $NOTIFY_SOCKET when it has one: under Type=notify with NotifyAccess=all that would report rke2 ready early.
PRIVATE_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def child_environment():
    return {key: value for key, value in os.environ.items() if key not in PRIVATE_ENVIRONMENT}


class Process:
    """The node's etcd member.  Started detached (own session), so that stopping the rke2 service leaves it
    running - like the etcd static pod under ``KillMode=process``; ``rke2-killall.sh`` stops it."""

    def __init__(self, data_dir, pid_file, log_file):
        self.data_dir = data_dir
        self.pid_file = pid_file
        self.log_file = log_file
        self.pid = None
        self._child = None

    def running_pid(self):
        try:
            with open(self.pid_file) as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            return None
        cmd = _cmdline(pid)
        if (
            _pid_alive(pid)
            and cmd
            and os.path.basename(cmd[0].decode()) == "etcd"
            and (("--data-dir=%s" % self.data_dir).encode() in cmd)
        ):
            return pid
        return None

    def adopt(self):
        pid = self.running_pid()
        if pid:
            self.pid = pid
            log.info("Found running etcd, reusing it", pid=pid)
            return True
        return False

    def start(self, args):
        os.makedirs(os.path.dirname(self.log_file), exist_ok=True)
        out = open(self.log_file, "ab")
        cmd = [ETCD_BIN, "--data-dir=%s" % self.data_dir, *args]
        log.info("Running etcd", args=" ".join(cmd[1:]))
        self._child = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
            env=child_environment(),
        )
        out.close()
        self.pid = self._child.pid
        with open(self.pid_file + ".tmp", "w") as handle:
            handle.write("%d\n" % self.pid)
        os.replace(self.pid_file + ".tmp", self.pid_file)

    def alive(self):
        if self._child is not None:
            return self._child.poll() is None
        return bool(self.pid) and _pid_alive(self.pid)

    def stop(self, timeout=10.0):
        if not self.pid:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.time() + timeout
        while time.time() < deadline and self.alive():
            time.sleep(0.1)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
