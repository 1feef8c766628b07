"""Stand-in rke2 supervisor on :9345 - the registration endpoint servers and agents join through.

Paths follow rke2 (``/cacerts``, ``/ping``, ``/v1-rke2/...``).  Requests other than ``/cacerts`` and ``/ping``
authenticate with HTTP basic auth ``server:<secret>`` (joining servers) or ``node:<secret>`` (agents), the
secret being the token's password part, exactly like the real supervisor.
"""

import hmac
import json
import os
import tempfile
import urllib.parse

from . import apiserver, etcd, httputil, k8s, log, node, pki


class Supervisor:
    def __init__(self, paths, cluster_secret, agent_secret, etcd_client, critical):
        self.paths = paths
        self.cluster_secret = cluster_secret
        self.agent_secret = agent_secret
        self.etcd = etcd_client
        self.critical = critical

    def authenticate(self, user, password, allowed):
        if user not in allowed or password is None:
            return False
        secrets = [self.cluster_secret]
        if user == "node" and self.agent_secret:
            secrets.append(self.agent_secret)
        return any(s and hmac.compare_digest(password.encode(), s.encode()) for s in secrets)

    def apiservers(self):
        items, _ = self.etcd.list_json(apiserver.NODE_PREFIX)
        out = []
        for _, obj, _ in items:
            if obj.get("metadata", {}).get("labels", {}).get("node-role.kubernetes.io/control-plane") != "true":
                continue
            for addr in obj.get("status", {}).get("addresses", []):
                if addr.get("type") == "InternalIP":
                    out.append("%s:6443" % addr["address"])
        return sorted(set(out))

    def bootstrap(self):
        tls = self.paths.tls
        files = {}
        for rel in (
            "server-ca.crt",
            "server-ca.key",
            "client-ca.crt",
            "client-ca.key",
            "etcd/server-ca.crt",
            "etcd/server-ca.key",
            "etcd/peer-ca.crt",
            "etcd/peer-ca.key",
        ):
            files[rel] = pki.read(os.path.join(tls, rel))
        voters = [m for m in self.etcd.members() if not m["isLearner"] and m["clientURLs"]]
        return {
            "files": files,
            "critical": self.critical,
            "etcdEndpoints": [url for m in voters for url in m["clientURLs"]],
        }

    def issue_kubelet_cert(self, node_name, node_ip):
        tls = self.paths.tls
        with tempfile.TemporaryDirectory() as tmp:
            crt = os.path.join(tmp, "client.crt")
            key = os.path.join(tmp, "client.key")
            pki.issue(
                os.path.join(tls, "client-ca.crt"),
                os.path.join(tls, "client-ca.key"),
                crt,
                key,
                "system:node:%s" % node_name,
                orgs=["system:nodes"],
                server=False,
                client=True,
            )
            return pki.read(crt), pki.read(key)


class Handler(httputil.JSONHandler):
    supervisor = None

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def dispatch(self, method):
        sup = self.supervisor
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == "/cacerts" and method == "GET":
                return self.send_bytes(
                    200, pki.read(os.path.join(sup.paths.tls, "server-ca.crt")).encode(), "text/plain"
                )
            if path == "/ping" and method == "GET":
                return self.send_bytes(200, b"pong", "text/plain")
            user, password = self.basic_auth()
            if path == "/v1-rke2/server-bootstrap" and method == "GET":
                if not sup.authenticate(user, password, ("server",)):
                    return self.unauthorized(user)
                if not self.node_password_ok(self.headers.get("rke2-Node-Name")):
                    return None
                return self.send_json(200, sup.bootstrap())
            if path == "/v1-rke2/config" and method == "GET":
                if not sup.authenticate(user, password, ("server", "node")):
                    return self.unauthorized(user)
                return self.send_json(200, {"critical": sup.critical})
            if path == "/v1-rke2/apiservers" and method == "GET":
                if not sup.authenticate(user, password, ("server", "node")):
                    return self.unauthorized(user)
                return self.send_json(200, sup.apiservers())
            if path == "/v1-rke2/client-kubelet" and method == "POST":
                if not sup.authenticate(user, password, ("server", "node")):
                    return self.unauthorized(user)
                body = json.loads(self.read_body() or b"{}")
                name = str(body.get("nodeName") or "")
                if not name:
                    return self.send_json(400, {"error": "nodeName is required"})
                if not self.node_password_ok(name):
                    return None
                crt, key = sup.issue_kubelet_cert(name, body.get("nodeIP"))
                log.info("Issued kubelet client certificate", node=name, remote=self.client_address[0])
                return self.send_json(
                    200,
                    {
                        "cert": crt,
                        "key": key,
                        "serverCA": pki.read(os.path.join(sup.paths.tls, "server-ca.crt")),
                        "apiservers": sup.apiservers(),
                    },
                )
            self.send_bytes(404, b"404 page not found\n", "text/plain")
        except (etcd.EtcdError, etcd.EtcdUnavailable) as exc:
            self.send_json(503, k8s.status(503, "etcd unavailable: %s" % exc))
        except (ValueError, pki.PKIError) as exc:
            self.send_json(500, {"error": str(exc)})

    def node_password_ok(self, name):
        if not name:
            self.send_bytes(400, b"node name header is required\n", "text/plain")
            return False
        problem = node.check_node_password(self.supervisor.etcd, name, self.headers.get("rke2-Node-Password"))
        if problem:
            log.warning("Rejected node registration", node=name, remote=self.client_address[0], reason=problem)
            self.send_bytes(403, (problem + "\n").encode(), "text/plain")
            return False
        return True

    def unauthorized(self, user):
        log.warning(
            "Rejected join request with invalid token",
            remote=self.client_address[0],
            user=user or "<none>",
            path=self.path,
        )
        self.send_bytes(401, b"Unauthorized\n", "text/plain", {"WWW-Authenticate": 'Basic realm="rke2"'})


def make_handler(supervisor):
    return type("SupervisorHandler", (Handler,), {"supervisor": supervisor})
