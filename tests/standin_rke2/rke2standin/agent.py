"""``rke2 agent``: joins through the supervisor with the token, then registers and heartbeats its Node."""

import json
import os
import signal
import socket

from . import httputil, log, node, pki


class Agent:
    def __init__(self, cfg, knobs, build):
        self.cfg = cfg
        self.knobs = knobs
        self.build = build
        self.paths = node.Paths(cfg.get("data-dir"))
        self.name = (cfg.get("node-name") or socket.gethostname()).strip().lower()
        ips = cfg.get("node-ip") or []
        self.ip = ips[0] if ips else node.detect_node_ip()
        if not self.ip:
            log.fatal("unable to determine the node IP; set node-ip")
        self.external_ips = cfg.get("node-external-ip") or []
        self.stopper = node.Stopper()
        self.retry = knobs["RKE2_STANDIN_JOIN_RETRY_INTERVAL"]
        self.clock = node.StartClock()

    def sleep(self, seconds):
        if self.stopper.event.wait(seconds):
            self.shutdown()

    def retry_sleep(self):
        self.clock.wait_to_retry(self.sleep, self.retry)

    def supervisors(self):
        urls = [self.cfg["server"].rstrip("/")]
        for endpoint in node.load_lb(self.paths.lb_file):
            host = endpoint.split("//", 1)[-1].rsplit(":", 1)[0]
            url = "https://%s:9345" % host
            if url not in urls:
                urls.append(url)
        return urls

    def fetch_credentials(self, token, password):
        for url in self.supervisors():
            where = "Failed to validate connection to cluster at %s" % url
            try:
                status, ca_pem = httputil.request(
                    url + "/cacerts", ctx=httputil.client_context(verify=False), timeout=5
                )
            except OSError as exc:
                log.error("%s: failed to get CA certs: %s" % (where, exc))
                continue
            if status != 200:
                log.error("%s: failed to get CA certs: HTTP %d" % (where, status))
                continue
            ca_text = ca_pem.decode()
            if token.ca_hash and node.ca_hash(ca_text) != token.ca_hash:
                log.error("%s: token CA hash does not match the Cluster CA certificate hash" % where)
                continue
            pki.write_public(self.paths.agent_ca, ca_text)
            ctx = httputil.client_context(self.paths.agent_ca)
            ctx.check_hostname = False
            headers = {"rke2-Node-Name": self.name, "rke2-Node-Password": password}
            try:
                status, data = httputil.request(
                    url + "/v1-rke2/client-kubelet",
                    method="POST",
                    ctx=ctx,
                    timeout=10,
                    headers=headers,
                    basic_auth=(token.user, token.password),
                    body={"nodeName": self.name, "nodeIP": self.ip},
                )
            except OSError as exc:
                log.error("%s: %s" % (where, exc))
                continue
            if status == 401:
                log.error("%s: token rejected by the server: 401 Unauthorized (wrong token?)" % where)
                continue
            if status != 200:
                log.error(
                    "Waiting to retrieve agent configuration from %s: %d %s"
                    % (url, status, data.decode(errors="replace").strip()[:300])
                )
                continue
            return url, json.loads(data)
        return None, None

    def run(self):
        signal.signal(signal.SIGTERM, self.stopper)
        signal.signal(signal.SIGINT, self.stopper)
        node.clear_ready()
        log.info("Starting rke2 agent %s (%s)" % (self.build.VERSION, self.build.COMMIT))
        if not self.cfg.get("server"):
            log.fatal("--server is required")
        token = node.Token(self.cfg.get("token"), "node")
        if not token.raw:
            log.fatal("--token is required")
        node.makedirs(self.paths.logs("agent"))
        self.images = node.image_archives(self.paths)
        node.makedirs(os.path.dirname(self.paths.lb_file), 0o700)
        password = node.node_password()
        while True:
            url, creds = self.fetch_credentials(token, password)
            if creds:
                break
            self.retry_sleep()
        pki.write_public(self.paths.kubelet_crt, creds["cert"])
        pki.write_private(self.paths.kubelet_key, creds["key"])
        endpoints = ["https://%s" % a for a in creds.get("apiservers") or []]
        if not endpoints:
            endpoints = ["https://%s:6443" % url.split("//", 1)[-1].rsplit(":", 1)[0]]
        node.save_lb(self.paths.lb_file, endpoints, self.cfg["server"])
        log.info("Retrieved agent configuration", supervisor=url, apiservers=",".join(endpoints))
        delay = self.clock.delay_left(self.knobs["RKE2_STANDIN_AGENT_START_DELAY"])
        if delay > 0:
            log.info("Waiting for kubelet and kube-proxy to start", seconds=round(delay, 1))
            self.sleep(delay)
        ctx = httputil.client_context(self.paths.agent_ca, self.paths.kubelet_crt, self.paths.kubelet_key)
        ctx.check_hostname = False
        kubelet = node.Kubelet(
            self.node_info(), endpoints, ctx, lb_file=self.paths.lb_file, images_dir=self.paths.images
        )
        while True:
            try:
                kubelet.register()
                break
            except (OSError, httputil.HTTPError) as exc:
                log.error("Unable to register node with API server", error=str(exc))
                self.sleep(2)
        node.notify_ready("rke2 agent is up and running")
        log.info("rke2 agent is up and running", node=self.name)
        interval = self.knobs["RKE2_STANDIN_HEARTBEAT_INTERVAL"]
        while not self.stopper.event.wait(interval):
            try:
                kubelet.heartbeat()
            except (OSError, httputil.HTTPError) as exc:
                log.error("Failed to update node lease", error=str(exc))
        self.shutdown()

    def node_info(self):
        annotations = {
            "rke2.io/hostname": socket.gethostname(),
            "rke2.io/internal-ip": self.ip,
            "rke2.io/node-args": json.dumps(node.redacted_args("agent", self.cfg)),
            "node.alpha.kubernetes.io/ttl": "0",
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        }
        if self.external_ips:
            annotations["rke2.io/external-ip"] = ",".join(self.external_ips)
        return node.NodeInfo(
            self.name,
            self.ip,
            self.external_ips,
            "agent",
            self.build.VERSION,
            node.parse_labels(self.cfg.get("node-label")),
            node.parse_taints(self.cfg.get("node-taint")),
            annotations,
        )

    def shutdown(self):
        log.info("Shutting down rke2 agent")
        node.notifier().stopping()
        raise SystemExit(0)
