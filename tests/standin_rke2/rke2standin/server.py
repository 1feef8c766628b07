"""``rke2 server``: managed etcd, supervisor (:9345), API server (:6443) and the node's own kubelet."""

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time

from . import apiserver, config, etcd, httputil, log, node, pki, supervisor, yamlutil

KUBECTL = "/usr/bin/kubectl"
DEFAULT_KUBECONFIG = "/etc/rancher/rke2/rke2.yaml"
BOOTSTRAP_PREFIX = "/bootstrap/"
CA_FILES = (
    "server-ca.crt",
    "server-ca.key",
    "client-ca.crt",
    "client-ca.key",
    "etcd/server-ca.crt",
    "etcd/server-ca.key",
    "etcd/peer-ca.crt",
    "etcd/peer-ca.key",
)


class Server:
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
        self.etcd_proc = etcd.Process(
            self.paths.etcd_data, self.paths.etcd_pid, os.path.join(self.paths.logs("server"), "etcd.log")
        )
        self.retry = knobs["RKE2_STANDIN_JOIN_RETRY_INTERVAL"]
        self.clock = node.StartClock()
        self.http_servers = []

    # --- helpers ---------------------------------------------------------------------------------------
    def tls(self, rel):
        return os.path.join(self.paths.tls, rel)

    def sleep(self, seconds):
        if self.stopper.event.wait(seconds):
            self.shutdown()

    def retry_sleep(self):
        self.clock.wait_to_retry(self.sleep, self.retry)

    def member_name(self):
        try:
            with open(self.paths.etcd_name) as handle:
                value = handle.read().strip()
                if value:
                    return value
        except OSError:
            pass
        value = "%s-%s" % (self.name, secrets.token_hex(4))
        node.write_file(self.paths.etcd_name, value + "\n", mode=0o600)
        return value

    @property
    def peer_url(self):
        return "https://%s:2380" % self.ip

    def etcd_client(self, endpoints=None):
        return etcd.Client(
            endpoints or ["https://127.0.0.1:2379"],
            self.tls("etcd/server-ca.crt"),
            self.tls("etcd/client.crt"),
            self.tls("etcd/client.key"),
        )

    def issue_etcd_certs(self):
        # No common name: etcd's JSON gateway would log a warning for every request made with a CN.
        sans = ["localhost", "127.0.0.1", self.ip, socket.gethostname(), self.name]
        pki.issue(
            self.tls("etcd/server-ca.crt"),
            self.tls("etcd/server-ca.key"),
            self.tls("etcd/server-client.crt"),
            self.tls("etcd/server-client.key"),
            None,
            orgs=["etcd-server"],
            sans=sans,
        )
        pki.issue(
            self.tls("etcd/peer-ca.crt"),
            self.tls("etcd/peer-ca.key"),
            self.tls("etcd/peer-server-client.crt"),
            self.tls("etcd/peer-server-client.key"),
            None,
            orgs=["etcd-peer"],
            sans=sans,
        )
        pki.issue(
            self.tls("etcd/server-ca.crt"),
            self.tls("etcd/server-ca.key"),
            self.tls("etcd/client.crt"),
            self.tls("etcd/client.key"),
            None,
            orgs=["etcd-client"],
            server=False,
        )

    def etcd_args(self, initial_cluster=None, state=None):
        tls = self.paths.etcd_tls
        args = [
            "--name=%s" % self.member_name(),
            "--listen-client-urls=https://127.0.0.1:2379,https://%s:2379" % self.ip,
            "--advertise-client-urls=https://%s:2379" % self.ip,
            "--listen-peer-urls=https://%s:2380" % self.ip,
            "--initial-advertise-peer-urls=%s" % self.peer_url,
            "--client-cert-auth=true",
            "--trusted-ca-file=%s/server-ca.crt" % tls,
            "--cert-file=%s/server-client.crt" % tls,
            "--key-file=%s/server-client.key" % tls,
            "--peer-client-cert-auth=true",
            "--peer-trusted-ca-file=%s/peer-ca.crt" % tls,
            "--peer-cert-file=%s/peer-server-client.crt" % tls,
            "--peer-key-file=%s/peer-server-client.key" % tls,
            "--strict-reconfig-check=true",
            "--snapshot-count=10000",
            "--logger=zap",
            "--log-outputs=stderr",
            "--log-level=warn",
        ]
        if initial_cluster:
            args += ["--initial-cluster=%s" % initial_cluster, "--initial-cluster-state=%s" % state]
        return args

    def wait_etcd(self, client, what="etcd"):
        logged = 0.0
        while True:
            try:
                client.status()
                return
            except (etcd.EtcdError, etcd.EtcdUnavailable) as exc:
                if not self.etcd_proc.alive():
                    tail = _tail(self.etcd_proc.log_file, 5)
                    log.fatal("etcd exited before becoming ready", error=str(exc), log=tail)
                if time.time() - logged > 10:
                    log.info("Waiting for %s to become available" % what)
                    logged = time.time()
            self.sleep(0.3)

    # --- bootstrap / join ------------------------------------------------------------------------------
    def bootstrap(self):
        log.info("Bootstrapping new cluster: this node is the first server", node=self.name)
        for name, cn in (
            ("server-ca", "rke2-server-ca"),
            ("client-ca", "rke2-client-ca"),
            ("etcd/server-ca", "etcd-server-ca"),
            ("etcd/peer-ca", "etcd-peer-ca"),
        ):
            pki.ensure_ca(self.tls(name + ".crt"), self.tls(name + ".key"), cn)
        ca_pem = pki.read(self.tls("server-ca.crt"))
        token = node.Token(self.cfg.get("token"), "server")
        if not token.raw:
            secret = node.random_secret()
            log.info("Generated cluster token", path=self.paths.token)
        else:
            secret = token.password
            if token.ca_hash and token.ca_hash != node.ca_hash(ca_pem):
                log.warning(
                    "token CA hash does not match the Cluster CA certificate hash; using the token password only"
                )
        self.issue_etcd_certs()
        member = self.member_name()
        self.etcd_proc.start(self.etcd_args("%s=%s" % (member, self.peer_url), "new"))
        client = self.etcd_client()
        self.wait_etcd(client)
        critical = config.critical_values(self.cfg)
        client.put(
            apiserver.CLUSTER_CONFIG_KEY,
            {
                "critical": critical,
                "cluster-cidr": self.cfg.get("cluster-cidr"),
                "service-cidr": self.cfg.get("service-cidr"),
                "cni": self.cfg.get("cni"),
            },
        )
        self.reconcile_bootstrap_key(client, secret)
        api = apiserver.API(client, {}, self.knobs["RKE2_STANDIN_NODE_MONITOR_GRACE"])
        api.bootstrap_addons(self.cfg.get("cni") or [])
        log.info("etcd cluster bootstrapped", member=member)
        return secret

    def join(self):
        token = node.Token(self.cfg.get("token"), "server")
        if not token.raw:
            log.fatal("--token is required when --server is set (joining an existing cluster)")
        url = self.cfg["server"].rstrip("/")
        password = node.node_password()
        while True:
            boot = self._fetch_bootstrap(url, token, password)
            if boot is not None:
                break
            self.retry_sleep()
        local = config.critical_values(self.cfg)
        mismatches = [
            "%s (server: %s, local: %s)" % (key, json.dumps(boot["critical"].get(key)), json.dumps(local.get(key)))
            for key in local
            if boot["critical"].get(key) != local.get(key)
        ]
        if mismatches:
            log.fatal("critical configuration value mismatch between servers: " + "; ".join(mismatches))
        for rel, content in boot["files"].items():
            writer = pki.write_private if rel.endswith(".key") else pki.write_public
            writer(self.tls(rel), content)
        self.issue_etcd_certs()
        self._join_etcd(boot["etcdEndpoints"])
        return token.password

    def _fetch_bootstrap(self, url, token, password):
        where = "Failed to validate connection to cluster at %s" % url
        try:
            status, ca_pem = httputil.request(url + "/cacerts", ctx=httputil.client_context(verify=False), timeout=5)
        except OSError as exc:
            log.error("%s: failed to get CA certs: %s" % (where, exc))
            return None
        if status != 200:
            log.error("%s: failed to get CA certs: HTTP %d" % (where, status))
            return None
        ca_text = ca_pem.decode()
        if token.ca_hash and node.ca_hash(ca_text) != token.ca_hash:
            log.error("%s: token CA hash does not match the Cluster CA certificate hash" % where)
            return None
        if not token.ca_hash:
            log.warning("Cluster CA certificate is not trusted by the token: token does not include a CA hash")
        pki.write_public(self.tls("server-ca.crt"), ca_text)
        ctx = httputil.client_context(self.tls("server-ca.crt"))
        ctx.check_hostname = False
        headers = {"rke2-Node-Name": self.name, "rke2-Node-Password": password}
        try:
            status, data = httputil.request(
                url + "/v1-rke2/server-bootstrap",
                ctx=ctx,
                timeout=10,
                basic_auth=(token.user, token.password),
                headers=headers,
            )
        except OSError as exc:
            log.error("%s: %s" % (where, exc))
            return None
        if status == 401:
            log.error("%s: token rejected by the server: 401 Unauthorized (wrong token?)" % where)
            return None
        if status != 200:
            log.error("%s: server returned %d: %s" % (where, status, data.decode(errors="replace").strip()[:300]))
            return None
        return json.loads(data)

    def _join_etcd(self, endpoints):
        client = self.etcd_client(endpoints)
        member_id = None
        while True:
            try:
                members = client.members()
                mine = next((m for m in members if self.peer_url in m["peerURLs"]), None)
                if mine and mine["name"] and mine["name"] != self.member_name():
                    log.error(
                        "Failed to join etcd cluster: peer URL %s already belongs to member %s; delete that node "
                        "(kubectl delete node) before re-adding this host" % (self.peer_url, mine["name"])
                    )
                    self.retry_sleep()
                    continue
                if mine:
                    member_id = mine["id"]
                    log.info("Reusing existing etcd learner", id=member_id)
                else:
                    log.info("Adding member to etcd cluster as learner", peer=self.peer_url, name=self.member_name())
                    member_id, members = client.member_add(self.peer_url, learner=True)
                break
            except etcd.EtcdError as exc:
                log.error(
                    "Failed to join etcd cluster: etcdserver: %s" % str(exc).replace("etcdserver: ", ""),
                    retry="%gs" % self.retry,
                )
            except etcd.EtcdUnavailable as exc:
                log.error("Failed to join etcd cluster: %s" % exc)
            self.retry_sleep()
        parts = []
        for member in members:
            if member["id"] == member_id:
                parts.append("%s=%s" % (self.member_name(), self.peer_url))
            else:
                for peer in member["peerURLs"]:
                    parts.append("%s=%s" % (member["name"] or "unstarted-%s" % member["id"], peer))
        self.etcd_proc.start(self.etcd_args(",".join(parts), "existing"))
        started = last_log = time.time()
        while True:
            if not self.etcd_proc.alive():
                log.fatal("etcd exited while joining the cluster", log=_tail(self.etcd_proc.log_file, 5))
            try:
                client.member_promote(member_id)
                log.info(
                    "Promoted etcd learner to voting member",
                    name=self.member_name(),
                    seconds="%.1f" % (time.time() - started),
                )
                break
            except etcd.EtcdError as exc:
                text = str(exc)
                if "not a learner" in text:
                    break
                if time.time() - last_log > 10:
                    log.info("Waiting for etcd learner to catch up", error=text)
                    last_log = time.time()
            except etcd.EtcdUnavailable as exc:
                log.warning("etcd cluster unreachable while promoting learner", error=str(exc))
            self.sleep(0.5)
        self.wait_etcd(self.etcd_client(), "local etcd member")

    def reconcile_bootstrap_key(self, client, secret):
        """rke2 keeps the cluster's bootstrap data in etcd under a key derived from the token's password (and
        encrypted with it): a server started over existing data with another token cannot read it and exits."""
        own = BOOTSTRAP_PREFIX + hashlib.sha256(secret.encode()).hexdigest()[:12]
        while True:
            try:
                keys = [key for key, _, _ in client.list_prefix(BOOTSTRAP_PREFIX)[0]]
                if not keys:
                    client.put(own, {"serverCAHash": node.ca_hash(pki.read(self.tls("server-ca.crt")))})
                    return
                break
            except (etcd.EtcdError, etcd.EtcdUnavailable) as exc:
                log.info("Waiting for etcd to read bootstrap data", error=str(exc))
                self.sleep(1)
        if own not in keys:
            log.fatal(
                "preparing server: failed to bootstrap cluster data: failed to reconcile with local datastore: "
                "bootstrap data already found and encrypted with different token"
            )

    # --- cluster reset / restore -----------------------------------------------------------------------
    def cluster_reset(self, restore_path):
        """``rke2 server --cluster-reset [--cluster-reset-restore-path=FILE]``: make this node's etcd a cluster of
        one member, from its own data or from a snapshot (``etcdctl snapshot restore``: the data directory is
        replaced by the snapshot's content and the membership by this member alone), check the bootstrap data
        against the token, then exit: the service is started normally afterwards and the other servers join again
        with their etcd data removed."""
        if self.etcd_proc.running_pid():
            log.fatal("etcd is running on this node: stop rke2-server and run rke2-killall.sh before a cluster reset")
        missing = [rel for rel in CA_FILES if not os.path.exists(self.tls(rel))]
        if missing:
            log.fatal("cluster reset needs the server's certificates; missing: %s" % ", ".join(missing))
        member = self.member_name()
        self.issue_etcd_certs()
        if restore_path:
            if not os.path.isfile(restore_path):
                log.fatal("failed to restore etcd snapshot: snapshot file %s does not exist" % restore_path)
            log.info("Pre-restore etcd database moved aside; restoring snapshot", path=restore_path)
            if os.path.isdir(self.paths.etcd_data):
                os.rename(self.paths.etcd_data, "%s-old-%d" % (self.paths.etcd_data, int(time.time())))
            proc = subprocess.run(
                [
                    "etcdctl",
                    "snapshot",
                    "restore",
                    restore_path,
                    "--data-dir=%s" % self.paths.etcd_data,
                    "--name=%s" % member,
                    "--initial-cluster=%s=%s" % (member, self.peer_url),
                    "--initial-advertise-peer-urls=%s" % self.peer_url,
                ],
                env=dict(etcd.child_environment(), ETCDCTL_API="3"),
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                log.fatal("failed to restore etcd snapshot %s: %s" % (restore_path, proc.stderr.strip()[-500:]))
            os.chmod(self.paths.etcd_data, 0o700)
            self.etcd_proc.start(self.etcd_args())
        else:
            if not os.path.isdir(os.path.join(self.paths.etcd_data, "member")):
                log.fatal("cluster reset: no etcd data on this node (%s)" % self.paths.etcd_data)
            self.etcd_proc.start([*self.etcd_args(), "--force-new-cluster"])
        try:
            client = self.etcd_client()
            self.wait_etcd(client)
            members = client.members()
            log.info("etcd cluster membership reset", members=",".join(m["name"] for m in members))
            token = node.Token(self.cfg.get("token"), "server")
            secret = token.password if token.raw else node.Token(_read(self.paths.token), "server").password
            self.reconcile_bootstrap_key(client, secret)
        finally:
            self.etcd_proc.stop()
        log.info(
            "Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. Backup and "
            "delete ${datadir}/server/db on each peer etcd server and rejoin the nodes"
        )

    # --- serving --------------------------------------------------------------------------------------
    def issue_serving_certs(self):
        domain = self.cfg.get("cluster-domain") or "cluster.local"
        service_cidr = (self.cfg.get("service-cidr") or ["10.43.0.0/16"])[0]
        octets = service_cidr.split("/")[0].split(".")
        first_service_ip = "%s.%s.%s.%d" % (octets[0], octets[1], octets[2], int(octets[3]) + 1)
        sans = [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc." + domain,
            "localhost",
            socket.gethostname(),
            self.name,
            "127.0.0.1",
            self.ip,
            first_service_ip,
            *self.external_ips,
            *(self.cfg.get("tls-san") or []),
        ]
        pki.issue(
            self.tls("server-ca.crt"),
            self.tls("server-ca.key"),
            self.tls("serving-kube-apiserver.crt"),
            self.tls("serving-kube-apiserver.key"),
            "kube-apiserver",
            sans=sans,
            client=False,
        )
        if not os.path.exists(self.tls("client-admin.crt")):
            pki.issue(
                self.tls("client-ca.crt"),
                self.tls("client-ca.key"),
                self.tls("client-admin.crt"),
                self.tls("client-admin.key"),
                "system:admin",
                orgs=["system:masters"],
                server=False,
            )
        pki.issue(
            self.tls("client-ca.crt"),
            self.tls("client-ca.key"),
            self.paths.kubelet_crt,
            self.paths.kubelet_key,
            "system:node:%s" % self.name,
            orgs=["system:nodes"],
            server=False,
        )
        pki.write_public(self.paths.agent_ca, pki.read(self.tls("server-ca.crt")))

    def write_tokens(self, secret):
        ca_pem = pki.read(self.tls("server-ca.crt"))
        full = node.full_token(ca_pem, "server", secret)
        node.write_file(self.paths.token, full + "\n", mode=0o600)
        node.write_file(self.paths.node_token, full + "\n", mode=0o600)
        agent_token = node.Token(self.cfg.get("agent-token"), "node")
        if agent_token.raw:
            node.write_file(self.paths.agent_token, node.full_token(ca_pem, "node", agent_token.password) + "\n")
        return agent_token.password if agent_token.raw else None

    def write_kubeconfig(self):
        path = self.cfg.get("write-kubeconfig") or DEFAULT_KUBECONFIG
        mode_text = self.cfg.get("write-kubeconfig-mode") or ""
        try:
            mode = int(mode_text, 8) if mode_text else 0o600
        except ValueError:
            log.warning("invalid write-kubeconfig-mode %r, using 0600" % mode_text)
            mode = 0o600

        def b64(rel):
            return base64.b64encode(pki.read(self.tls(rel)).encode()).decode()

        kubeconfig = {
            "apiVersion": "v1",
            "clusters": [
                {
                    "cluster": {"certificate-authority-data": b64("server-ca.crt"), "server": "https://127.0.0.1:6443"},
                    "name": "default",
                }
            ],
            "contexts": [{"context": {"cluster": "default", "user": "default"}, "name": "default"}],
            "current-context": "default",
            "kind": "Config",
            "preferences": {},
            "users": [
                {
                    "name": "default",
                    "user": {
                        "client-certificate-data": b64("client-admin.crt"),
                        "client-key-data": b64("client-admin.key"),
                    },
                }
            ],
        }
        node.write_file(path, yamlutil.dump(kubeconfig), mode=mode)
        log.info("Wrote kubeconfig", path=path)

    def link_kubectl(self):
        version_dir = os.path.join(self.paths.data, "data", self.build.VERSION.replace("+", "-"), "bin")
        node.makedirs(version_dir)
        target = os.path.join(version_dir, "kubectl")
        if os.path.islink(target) or os.path.exists(target):
            os.unlink(target)
        os.symlink(KUBECTL, target)
        tmp = self.paths.bin + ".tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if os.path.isdir(self.paths.bin) and not os.path.islink(self.paths.bin):
            shutil.rmtree(self.paths.bin)
        os.symlink(version_dir, tmp)
        os.replace(tmp, self.paths.bin)

    def start_http(self, secret, agent_secret, client):
        grace = self.knobs["RKE2_STANDIN_NODE_MONITOR_GRACE"]
        info = apiserver.version_info(self.build.VERSION, self.build.COMMIT, self.build.GO_VERSION)
        api = apiserver.API(client, info, grace, local_node={"name": self.name, "ip": self.ip})
        api_ctx = httputil.server_context(
            self.tls("serving-kube-apiserver.crt"), self.tls("serving-kube-apiserver.key"), self.tls("client-ca.crt")
        )
        sup_ctx = httputil.server_context(
            self.tls("serving-kube-apiserver.crt"), self.tls("serving-kube-apiserver.key")
        )
        sup = supervisor.Supervisor(self.paths, secret, agent_secret, client, self.cluster_critical(client))
        for host in (self.ip, "127.0.0.1"):
            self.http_servers.append(httputil.TLSServer((host, 9345), supervisor.make_handler(sup), sup_ctx))
            self.http_servers.append(httputil.TLSServer((host, 6443), apiserver.make_handler(api), api_ctx))
        httputil.serve(self.http_servers)
        log.info("Supervisor listening", address="%s:9345" % self.ip)
        log.info("Kubernetes API server listening", address="%s:6443" % self.ip)

    @staticmethod
    def cluster_critical(client):
        value, _ = client.get_json(apiserver.CLUSTER_CONFIG_KEY)
        return (value or {}).get("critical", {})

    # --- main -----------------------------------------------------------------------------------------
    def run(self):
        signal.signal(signal.SIGTERM, self.stopper)
        signal.signal(signal.SIGINT, self.stopper)
        node.clear_ready()
        log.info("Starting rke2 %s (%s)" % (self.build.VERSION, self.build.COMMIT))
        for directory in (
            self.paths.server,
            self.paths.etcd_tls,
            self.paths.db,
            self.paths.logs("server"),
            self.paths.agent,
        ):
            node.makedirs(directory, 0o700 if directory != self.paths.logs("server") else 0o755)
        if self.cfg.get("cluster-reset"):
            self.cluster_reset(self.cfg.get("cluster-reset-restore-path") or "")
            raise SystemExit(0)
        self.images = node.image_archives(self.paths)
        existing = os.path.isdir(os.path.join(self.paths.etcd_data, "member"))
        if existing:
            if self.cfg.get("server"):
                log.info("Managed etcd cluster membership exists; ignoring --server", server=self.cfg["server"])
            missing = [rel for rel in CA_FILES if not os.path.exists(self.tls(rel))]
            if missing:
                log.fatal("etcd data exists but certificates are missing: %s" % ", ".join(missing))
            if not self.etcd_proc.adopt():
                self.issue_etcd_certs()
                self.etcd_proc.start(self.etcd_args())
            elif not os.path.exists(self.tls("etcd/client.crt")):
                # Removed by `rke2 certificate rotate`: the running etcd reads the new files at its next handshake.
                self.issue_etcd_certs()
            self.wait_etcd(self.etcd_client())
            token = node.Token(self.cfg.get("token"), "server")
            secret = token.password if token.raw else node.Token(_read(self.paths.token), "server").password
            self.reconcile_bootstrap_key(self.etcd_client(), secret)
        elif not self.cfg.get("server"):
            secret = self.bootstrap()
        else:
            secret = self.join()
        client = self.etcd_client()
        self.issue_serving_certs()
        agent_secret = self.write_tokens(secret)
        self.start_http(secret, agent_secret, client)
        self.write_kubeconfig()
        self.link_kubectl()
        password = node.node_password()
        while True:
            try:
                problem = node.check_node_password(client, self.name, password)
            except (etcd.EtcdError, etcd.EtcdUnavailable) as exc:
                problem = str(exc)
            if not problem:
                break
            log.error(problem, node=self.name)
            self.retry_sleep()
        delay = self.clock.delay_left(self.knobs["RKE2_STANDIN_SERVER_START_DELAY"])
        if delay > 0:
            log.info("Waiting for static pods to start", seconds=round(delay, 1))
            self.sleep(delay)
        ctx = httputil.client_context(self.tls("server-ca.crt"), self.paths.kubelet_crt, self.paths.kubelet_key)
        kubelet = node.Kubelet(self.node_info(), ["https://127.0.0.1:6443"], ctx, images_dir=self.paths.images)
        while True:
            try:
                kubelet.register()
                break
            except (OSError, httputil.HTTPError) as exc:
                log.error("Unable to register node with API server", error=str(exc))
                self.sleep(2)
        node.notify_ready("rke2 server is up and running")
        log.info("rke2 is up and running", node=self.name)
        interval = self.knobs["RKE2_STANDIN_HEARTBEAT_INTERVAL"]
        etcd_reported = False
        while not self.stopper.event.wait(interval):
            if not self.etcd_proc.alive() and not etcd_reported:
                log.error("etcd process exited", log=_tail(self.etcd_proc.log_file, 3))
                etcd_reported = True
            try:
                kubelet.heartbeat()
            except (OSError, httputil.HTTPError) as exc:
                log.error("Failed to update node lease", error=str(exc))
        self.shutdown()

    def node_info(self):
        annotations = {
            "rke2.io/hostname": socket.gethostname(),
            "rke2.io/internal-ip": self.ip,
            "rke2.io/node-args": json.dumps(node.redacted_args("server", self.cfg)),
            "etcd.rke2.cattle.io/node-name": self.member_name(),
            "etcd.rke2.cattle.io/node-address": self.ip,
            "node.alpha.kubernetes.io/ttl": "0",
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        }
        if self.external_ips:
            annotations["rke2.io/external-ip"] = ",".join(self.external_ips)
        return node.NodeInfo(
            self.name,
            self.ip,
            self.external_ips,
            "server",
            self.build.VERSION,
            node.parse_labels(self.cfg.get("node-label")),
            node.parse_taints(self.cfg.get("node-taint")),
            annotations,
        )

    def shutdown(self):
        log.info("Shutting down rke2 server (etcd keeps running until rke2-killall.sh)")
        for server in self.http_servers:
            try:
                server.server_close()
            except OSError:
                pass
        node.notifier().stopping()
        raise SystemExit(0)


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _tail(path, lines):
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(size - 4096, 0))
            data = handle.read().decode(errors="replace").splitlines()
        return " | ".join(data[-lines:])
    except OSError:
        return ""
