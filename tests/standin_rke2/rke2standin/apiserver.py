"""Stand-in kube-apiserver on :6443 - the subset of the Kubernetes API the real kubectl needs for node
lifecycle work (get/label/taint/cordon/drain/delete nodes, list/evict pods, leases, discovery, watch).

State lives in etcd (``/registry/...`` keys, JSON values), so every server node answers the same.  The small
amount of controller behaviour that node lifecycle depends on is done inline: Node ``Ready`` is derived from
the node's lease (node-monitor grace period), deleting a Node removes its etcd member first (rke2's managed
etcd controller) and garbage-collects its pods, evicted replicated pods are re-created on another node.
"""

import json
import random
import string
import time
import urllib.parse

from . import cni, etcd, httputil, k8s, log
from . import node as node_mod

NODE_PREFIX = "/registry/minions/"
POD_PREFIX = "/registry/pods/"
LEASE_PREFIX = "/registry/leases/"
DS_PREFIX = "/registry/daemonsets/"
CLUSTER_CONFIG_KEY = "/rke2/cluster-config"
NODE_LEASE_NS = "kube-node-lease"
NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
MEMBER_ANNOTATION = "etcd.rke2.cattle.io/node-name"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
ANONYMOUS_PATHS = ("/version", "/healthz", "/livez", "/readyz")
REMOVE_MEMBER_RETRY_SECONDS = 7.0
ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _resource(name, singular, kind, namespaced, verbs, short=(), group=None, version=None, categories=None):
    entry = {
        "name": name,
        "singularName": singular,
        "namespaced": namespaced,
        "kind": kind,
        "verbs": verbs,
    }
    if short:
        entry["shortNames"] = list(short)
    if group is not None:
        entry["group"] = group
        entry["version"] = version
    if categories:
        entry["categories"] = categories
    return entry


DISCOVERY = {
    "v1": [
        _resource("events", "event", "Event", True, ["get", "list", "watch"], ["ev"]),
        _resource("namespaces", "namespace", "Namespace", False, ["get", "list"], ["ns"]),
        _resource("nodes", "node", "Node", False, ALL_VERBS, ["no"]),
        _resource("nodes/status", "", "Node", False, ["get", "patch", "update"]),
        _resource("pods", "pod", "Pod", True, ALL_VERBS, ["po"], categories=["all"]),
        _resource("pods/eviction", "", "Eviction", True, ["create"], group="policy", version="v1"),
        _resource("pods/status", "", "Pod", True, ["get", "patch", "update"]),
    ],
    "apps/v1": [
        _resource(
            "daemonsets", "daemonset", "DaemonSet", True, ["create", "get", "list", "watch"], ["ds"], categories=["all"]
        ),
    ],
    "coordination.k8s.io/v1": [
        _resource("leases", "lease", "Lease", True, ALL_VERBS),
    ],
    "policy/v1": [
        _resource(
            "poddisruptionbudgets",
            "poddisruptionbudget",
            "PodDisruptionBudget",
            True,
            ["get", "list", "watch"],
            ["pdb"],
        ),
    ],
}

# (group, resource) -> storage description
STORED = {
    ("", "nodes"): {"prefix": NODE_PREFIX, "kind": "Node", "apiVersion": "v1", "namespaced": False},
    ("", "pods"): {"prefix": POD_PREFIX, "kind": "Pod", "apiVersion": "v1", "namespaced": True},
    ("coordination.k8s.io", "leases"): {
        "prefix": LEASE_PREFIX,
        "kind": "Lease",
        "apiVersion": "coordination.k8s.io/v1",
        "namespaced": True,
    },
    ("apps", "daemonsets"): {"prefix": DS_PREFIX, "kind": "DaemonSet", "apiVersion": "apps/v1", "namespaced": True},
}
EMPTY_LISTS = {
    ("", "events"): ("EventList", "v1"),
    ("policy", "poddisruptionbudgets"): ("PodDisruptionBudgetList", "policy/v1"),
}


def _suffix(n=5):
    return "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


def _hexsuffix(n=10):
    return "".join(random.choice(string.hexdigits.lower()[:16]) for _ in range(n))


class API:
    def __init__(self, client, version_info, grace, local_node=None):
        self.etcd = client
        self.version_info = version_info
        self.grace = grace
        self.local_node = local_node
        self._cluster = None

    # --- storage helpers --------------------------------------------------------------------------------
    @staticmethod
    def key(desc, namespace, name):
        if desc["namespaced"]:
            return "%s%s/%s" % (desc["prefix"], namespace, name)
        return desc["prefix"] + name

    @staticmethod
    def _with_rv(obj, rev):
        obj.setdefault("metadata", {})["resourceVersion"] = str(rev)
        return obj

    def cluster(self):
        if self._cluster is None:
            value, _ = self.etcd.get_json(CLUSTER_CONFIG_KEY)
            self._cluster = value or {}
        return self._cluster

    def get_obj(self, desc, namespace, name, resource):
        obj, rev = self.etcd.get_json(self.key(desc, namespace, name))
        if obj is None:
            raise k8s.not_found(resource, name)
        return self._with_rv(obj, rev), rev

    def list_objs(self, desc, namespace=None):
        prefix = desc["prefix"] + (namespace + "/" if desc["namespaced"] and namespace else "")
        items, rev = self.etcd.list_json(prefix)
        return [self._with_rv(obj, mod) for _, obj, mod in items], rev

    def create_obj(self, desc, obj, dry_run=False):
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = meta["generateName"] + _suffix()
            meta["name"] = name
        if not name:
            raise k8s.APIError(422, "metadata.name: Required value: name or generateName is required")
        meta.pop("resourceVersion", None)
        meta["uid"] = k8s.new_uid()
        meta["creationTimestamp"] = k8s.now_rfc3339()
        obj["kind"] = desc["kind"]
        obj["apiVersion"] = desc["apiVersion"]
        if dry_run:
            return self._with_rv(obj, 0)
        rev = self.etcd.cas(self.key(desc, meta.get("namespace"), name), obj, 0)
        if rev is None:
            raise k8s.already_exists(desc["kind"].lower() + "s", name)
        return self._with_rv(obj, rev)

    def update_obj(self, desc, namespace, name, resource, mutate, expected_rv=None, dry_run=False):
        """Read-modify-write with optimistic concurrency; ``mutate(obj) -> new obj``."""
        for _ in range(20):
            current, rev = self.get_obj(desc, namespace, name, resource)
            if expected_rv not in (None, "", str(rev)):
                raise k8s.conflict(resource, name)
            updated = mutate(json.loads(json.dumps(current)))
            meta = updated.setdefault("metadata", {})
            for field in ("name", "uid", "creationTimestamp", "namespace"):
                if field in current["metadata"]:
                    meta[field] = current["metadata"][field]
            meta.pop("resourceVersion", None)
            updated["kind"] = desc["kind"]
            updated["apiVersion"] = desc["apiVersion"]
            before = dict(current, metadata={k: v for k, v in current["metadata"].items() if k != "resourceVersion"})
            if updated == before or dry_run:
                return self._with_rv(updated, rev)
            new_rev = self.etcd.cas(self.key(desc, namespace, name), updated, rev)
            if new_rev is not None:
                return self._with_rv(updated, new_rev)
        raise k8s.conflict(resource, name)

    # --- nodes ------------------------------------------------------------------------------------------
    def leases(self):
        items, _ = self.etcd.list_json(LEASE_PREFIX + NODE_LEASE_NS + "/")
        return {obj["metadata"]["name"]: obj for _, obj, _ in items}

    def render_node(self, node, leases):
        lease = leases.get(node["metadata"]["name"])
        renew = k8s.parse_time(lease.get("spec", {}).get("renewTime")) if lease else 0.0
        registered = k8s.parse_time(node["metadata"].get("creationTimestamp"))
        ready = bool(renew) and time.time() - renew < self.grace
        heartbeat = k8s.now_rfc3339(renew or registered)
        status = node.setdefault("status", {})
        conditions = []
        for ctype, reason, message in (
            ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ):
            conditions.append(
                {
                    "type": ctype,
                    "status": "False" if ready else "Unknown",
                    "reason": reason if ready else "NodeStatusUnknown",
                    "message": message if ready else "Kubelet stopped posting node status.",
                    "lastHeartbeatTime": heartbeat,
                    "lastTransitionTime": k8s.now_rfc3339(registered),
                }
            )
        network = cni.node_network(node)
        # The kubelet posts NotReady while no CNI runs on the node (cni: none, images missing).
        network_down = ready and not network.get("running")
        conditions.append(
            {
                "type": "Ready",
                "status": ("False" if network_down else "True") if ready else "Unknown",
                "reason": ("KubeletNotReady" if network_down else "KubeletReady") if ready else "NodeStatusUnknown",
                "message": (
                    (cni.NOT_INITIALIZED if network_down else "kubelet is posting ready status")
                    if ready
                    else "Kubelet stopped posting node status."
                ),
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": k8s.now_rfc3339(
                    max(registered, renew - self.grace) if ready else (renew + self.grace if renew else registered)
                ),
            }
        )
        status["conditions"] = conditions
        return node

    def render_pods(self, pods):
        """Pod status as the kubelets report it: pod-network pods depend on their node's CNI (cni.render_pod)."""
        nodes, _ = self.list_objs(STORED[("", "nodes")])
        leases = self.leases()
        by_name = {n["metadata"]["name"]: self.render_node(n, leases) for n in nodes}
        for pod in pods:
            cni.render_pod(pod, by_name)
        return pods

    @staticmethod
    def node_ready(node):
        for cond in node.get("status", {}).get("conditions", []):
            if cond.get("type") == "Ready":
                return cond.get("status") == "True"
        return False

    def allocate_pod_cidr(self, nodes):
        cidr = (self.cluster().get("cluster-cidr") or ["10.42.0.0/16"])[0]
        base = cidr.split("/")[0].split(".")
        used = {n.get("spec", {}).get("podCIDR") for n in nodes}
        for index in range(256):
            candidate = "%s.%s.%d.0/24" % (base[0], base[1], index)
            if candidate not in used:
                return candidate
        return None

    def create_node(self, obj, dry_run=False):
        nodes, _ = self.list_objs(STORED[("", "nodes")])
        spec = obj.setdefault("spec", {})
        if not spec.get("podCIDR"):
            pod_cidr = self.allocate_pod_cidr(nodes)
            if pod_cidr:
                spec["podCIDR"] = pod_cidr
                spec["podCIDRs"] = [pod_cidr]
        node = self.create_obj(STORED[("", "nodes")], obj, dry_run=dry_run)
        if not dry_run:
            self.create_node_pods(node)
            self.schedule_pending()
        return node

    def delete_node(self, name, dry_run=False):
        desc = STORED[("", "nodes")]
        node, rev = self.get_obj(desc, None, name, "nodes")
        client = self.etcd
        member_name = node["metadata"].get("annotations", {}).get(MEMBER_ANNOTATION)
        if member_name and not dry_run:
            client = self.remove_etcd_member(member_name, name)
        if dry_run:
            return node
        client.delete(self.key(desc, None, name))
        client.delete(LEASE_PREFIX + NODE_LEASE_NS + "/" + name)
        client.delete(node_mod.NODE_PASSWORD_PREFIX + name + ".node-password.rke2")
        api = self if client is self.etcd else API(client, self.version_info, self.grace)
        pods, _ = api.list_objs(STORED[("", "pods")])
        for pod in pods:
            if pod.get("spec", {}).get("nodeName") == name:
                api.remove_pod(pod, reschedule=True)
        api.schedule_pending()
        log.info("Deleted node", node=name)
        return node

    def remove_etcd_member(self, member_name, node_name):
        """Remove the node's etcd member (rke2's managed etcd controller does this on Node deletion).

        Talks to the other members, so that removing the local member does not cut the request short.
        Returns a client usable after the removal."""
        members = self.etcd.members()
        target = next((m for m in members if m["name"] == member_name), None)
        if target is None:
            log.info("etcd member already gone", member=member_name, node=node_name)
            return self.etcd
        others = [url for m in members if m["id"] != target["id"] and not m["isLearner"] for url in m["clientURLs"]]
        client = self.etcd.with_endpoints(others) if others else self.etcd
        # etcd answers "unhealthy cluster" while a member has been connected for less than its health interval
        # (5s); rke2's controller keeps retrying, so retry for a little longer than that before giving up.
        deadline = time.time() + REMOVE_MEMBER_RETRY_SECONDS
        while True:
            try:
                client.member_remove(target["id"])
                break
            except (etcd.EtcdError, etcd.EtcdUnavailable) as exc:
                if "unhealthy cluster" in str(exc) and time.time() < deadline:
                    time.sleep(0.5)
                    continue
                log.error("Failed to remove etcd member", member=member_name, node=node_name, error=str(exc))
                raise k8s.APIError(
                    500, "failed to remove etcd member %s of node %s: %s" % (member_name, node_name, exc)
                ) from None
        log.info("Removed etcd member", member=member_name, node=node_name)
        return client

    # --- pods ------------------------------------------------------------------------------------------
    def node_ip(self, node):
        for addr in node.get("status", {}).get("addresses", []):
            if addr.get("type") == "InternalIP":
                return addr.get("address")
        return ""

    def _pod(self, name, namespace, node, owner, labels, containers, host_network, annotations=None, volumes=None):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": annotations or {},
                "ownerReferences": [owner] if owner else [],
            },
            "spec": {
                "containers": [{"name": c, "image": "rancher/hardened-%s" % c} for c in containers],
                "hostNetwork": host_network,
                "priorityClassName": "system-node-critical" if host_network else "system-cluster-critical",
                "tolerations": (
                    [{"operator": "Exists"}]
                    if host_network
                    else [
                        {"key": "CriticalAddonsOnly", "operator": "Exists"},
                        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
                    ]
                ),
                "volumes": volumes or [],
            },
            "status": {"phase": "Pending"},
        }
        if node is not None:
            self._bind(pod, node)
        return pod

    def _bind(self, pod, node):
        pod["spec"]["nodeName"] = node["metadata"]["name"]
        if pod["spec"].get("hostNetwork"):
            ip = self.node_ip(node)
        else:
            cidr = node.get("spec", {}).get("podCIDR") or "10.42.0.0/24"
            ip = "%s.%d" % (cidr.split("/")[0].rsplit(".", 1)[0], random.randint(2, 250))
        stamp = k8s.now_rfc3339()
        pod["status"] = {
            "phase": "Running",
            "hostIP": self.node_ip(node),
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": stamp,
            "qosClass": "Burstable",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": stamp}
                for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": stamp}},
                }
                for c in pod["spec"]["containers"]
            ],
        }

    def create_node_pods(self, node):
        name = node["metadata"]["name"]
        labels = node["metadata"].get("labels", {})
        owner = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"], "controller": True}
        components = ["kube-proxy"]
        if labels.get("node-role.kubernetes.io/control-plane") == "true":
            components = [
                "etcd",
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "cloud-controller-manager",
                "kube-proxy",
            ]
        desc = STORED[("", "pods")]
        for component in components:
            pod = self._pod(
                "%s-%s" % (component, name),
                "kube-system",
                node,
                owner,
                {"component": component, "tier": "control-plane"},
                [component],
                True,
                annotations={MIRROR_ANNOTATION: k8s.new_uid().replace("-", ""), "kubernetes.io/config.source": "file"},
            )
            try:
                self.create_obj(desc, pod)
            except k8s.APIError:
                pass
        daemonsets, _ = self.list_objs(STORED[("apps", "daemonsets")])
        pods, _ = self.list_objs(desc)
        for ds in daemonsets:
            self.ensure_ds_pod(ds, node, pods)

    def ensure_ds_pod(self, ds, node, pods=None):
        if pods is None:
            pods, _ = self.list_objs(STORED[("", "pods")])
        node_name = node["metadata"]["name"]
        for pod in pods:
            ref = (pod["metadata"].get("ownerReferences") or [{}])[0]
            if (
                ref.get("kind") == "DaemonSet"
                and ref.get("uid") == ds["metadata"]["uid"]
                and (pod["spec"].get("nodeName") == node_name)
            ):
                return
        ds_name = ds["metadata"]["name"]
        owner = {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "name": ds_name,
            "uid": ds["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        labels = dict(ds["spec"]["selector"]["matchLabels"])
        pod = self._pod(
            "%s-%s" % (ds_name, _suffix()),
            ds["metadata"]["namespace"],
            node,
            owner,
            labels,
            [c["name"] for c in ds["spec"]["template"]["spec"]["containers"]],
            True,
        )
        self.create_obj(STORED[("", "pods")], pod)

    def bootstrap_addons(self, cni_names):
        """Objects the first server's packaged components would create (DaemonSet, two Deployments' pods)."""
        ds_desc = STORED[("apps", "daemonsets")]
        for name in cni_names:
            if name not in cni.SPECS:
                continue
            ds = cni.daemonset_object(cni.SPECS[name])
            try:
                self.create_obj(ds_desc, ds)
            except k8s.APIError:
                pass
        pod_desc = STORED[("", "pods")]
        for deploy, labels, volumes in (
            ("rke2-coredns-rke2-coredns", {"k8s-app": "kube-dns"}, []),
            ("rke2-metrics-server", {"app": "rke2-metrics-server"}, [{"name": "tmp-dir", "emptyDir": {}}]),
        ):
            rs_name = "%s-%s" % (deploy, _hexsuffix())
            owner = {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": rs_name,
                "uid": k8s.new_uid(),
                "controller": True,
                "blockOwnerDeletion": True,
            }
            pod = self._pod(
                "%s-%s" % (rs_name, _suffix()),
                "kube-system",
                None,
                owner,
                labels,
                [deploy.split("-")[1]],
                False,
                volumes=volumes,
            )
            self.create_obj(pod_desc, pod)

    def schedulable_nodes(self):
        nodes, _ = self.list_objs(STORED[("", "nodes")])
        leases = self.leases()
        out = []
        for node in nodes:
            self.render_node(node, leases)
            if node.get("spec", {}).get("unschedulable") or not self.node_ready(node):
                continue
            blocking = [
                t
                for t in node.get("spec", {}).get("taints", []) or []
                if t.get("effect") in ("NoSchedule", "NoExecute")
                and t.get("key") not in ("CriticalAddonsOnly", "node-role.kubernetes.io/control-plane")
            ]
            if not blocking:
                out.append(node)
        return out

    def schedule_pending(self):
        desc = STORED[("", "pods")]
        pods, _ = self.list_objs(desc)
        pending = [p for p in pods if not p["spec"].get("nodeName")]
        if not pending:
            return
        nodes = self.schedulable_nodes()
        if not nodes:
            return
        load = {n["metadata"]["name"]: 0 for n in nodes}
        for pod in pods:
            if pod["spec"].get("nodeName") in load and not pod["spec"].get("hostNetwork"):
                load[pod["spec"]["nodeName"]] += 1
        by_name = {n["metadata"]["name"]: n for n in nodes}
        for pod in pending:
            target = min(load, key=lambda n: (load[n], n))
            load[target] += 1

            def bind(obj, node=by_name[target]):
                if not obj["spec"].get("nodeName"):
                    self._bind(obj, node)
                return obj

            try:
                self.update_obj(desc, pod["metadata"]["namespace"], pod["metadata"]["name"], "pods", bind)
            except k8s.APIError:
                continue

    def remove_pod(self, pod, reschedule=True):
        """Delete a pod; a ReplicaSet-owned pod gets a Pending replacement (the ReplicaSet controller's job)."""
        desc = STORED[("", "pods")]
        meta = pod["metadata"]
        self.etcd.delete(self.key(desc, meta["namespace"], meta["name"]))
        ref = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
        if reschedule and ref and ref.get("kind") == "ReplicaSet":
            replacement = json.loads(json.dumps(pod))
            replacement["metadata"] = {
                "name": "%s-%s" % (ref["name"], _suffix()),
                "namespace": meta["namespace"],
                "labels": meta.get("labels", {}),
                "annotations": dict((meta.get("annotations") or {}).items()),
                "ownerReferences": meta.get("ownerReferences"),
            }
            replacement["spec"].pop("nodeName", None)
            replacement["status"] = {"phase": "Pending"}
            self.create_obj(desc, replacement)


# ---------------------------------------------------------------------------------------------------------
# HTTP layer


def _parse_path(path):
    """Return (group, version, namespace, resource, name, subresource) or None for non-resource paths."""
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/") if p]
    if not parts:
        return None
    if parts[0] == "api" and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return group, version, namespace, resource, name, sub


class Handler(httputil.JSONHandler):
    api = None  # set on the subclass

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def dispatch(self, method):
        url = urllib.parse.urlsplit(self.path)
        self.query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        path = url.path.rstrip("/") or "/"
        try:
            if not path.startswith(ANONYMOUS_PATHS):
                cn, _ = self.peer_identity()
                if not cn:
                    raise k8s.APIError(401, "Unauthorized")
            body = self.read_body() if method in ("POST", "PUT", "PATCH", "DELETE") else b""
            self.route(method, path, body)
        except k8s.APIError as exc:
            self.send_json(exc.code, exc.body)
        except etcd.EtcdUnavailable as exc:
            self.send_json(503, k8s.status(503, "etcd cluster is unavailable or misconfigured: %s" % exc))
        except etcd.EtcdError as exc:
            self.send_json(500, k8s.status(500, "etcdserver: %s" % exc))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # --- non-resource ----------------------------------------------------------------------------------
    def route(self, method, path, body):
        api = self.api
        if path in ("/healthz", "/livez"):
            return self.send_bytes(200, b"ok", "text/plain; charset=utf-8")
        if path.startswith(("/readyz", "/healthz/", "/livez/")):
            return self.readyz()
        if path == "/version":
            return self.send_json(200, api.version_info)
        if path == "/api":
            return self.send_json(
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {
                            "clientCIDR": "0.0.0.0/0",
                            "serverAddress": "%s:6443" % (api.local_node or {}).get("ip", "127.0.0.1"),
                        }
                    ],
                },
            )
        if path == "/apis":
            return self.send_json(
                200,
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [self.group_entry(gv) for gv in DISCOVERY if "/" in gv],
                },
            )
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) == 2:
            gvs = [gv for gv in DISCOVERY if gv.split("/")[0] == parts[1]]
            if not gvs:
                raise k8s.APIError(404, "the server could not find the requested resource")
            entry = self.group_entry(gvs[0])
            entry.update({"kind": "APIGroup", "apiVersion": "v1"})
            return self.send_json(200, entry)
        if (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) == 3):
            gv = "/".join(parts[1:])
            if gv not in DISCOVERY:
                raise k8s.APIError(404, "the server could not find the requested resource")
            return self.send_json(
                200,
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": gv,
                    "resources": DISCOVERY[gv],
                },
            )
        parsed = _parse_path(path)
        if parsed is None:
            raise k8s.APIError(404, "the server could not find the requested resource")
        return self.resource(method, parsed, body)

    @staticmethod
    def group_entry(gv):
        group, version = gv.split("/")
        ver = {"groupVersion": gv, "version": version}
        return {"name": group, "versions": [ver], "preferredVersion": ver}

    def readyz(self):
        checks = [("ping", True), ("log", True)]
        try:
            self.api.etcd.status()
            checks.append(("etcd", True))
        except (etcd.EtcdError, etcd.EtcdUnavailable):
            checks.append(("etcd", False))
        ok = all(flag for _, flag in checks)
        if "verbose" in self.query:
            lines = [
                "[%s]%s ok" % ("+" if flag else "-", name) if flag else "[-]%s failed: reason withheld" % name
                for name, flag in checks
            ]
            lines.append("readyz check passed" if ok else "readyz check failed")
            text = "\n".join(lines) + "\n"
        else:
            text = "ok" if ok else "[-]etcd failed: reason withheld\nreadyz check failed\n"
        self.send_bytes(200 if ok else 500, text.encode(), "text/plain; charset=utf-8")

    # --- resources -------------------------------------------------------------------------------------
    def wants_table(self):
        return "as=Table" in (self.headers.get("Accept") or "")

    def resource(self, method, parsed, body):
        group, version, namespace, resource, name, sub = parsed
        api = self.api
        gv = "%s/%s" % (group, version) if group else version
        if gv not in DISCOVERY:
            raise k8s.APIError(404, "the server could not find the requested resource")
        if group == "" and resource == "namespaces":
            return self.namespaces(method, namespace, name if namespace is None else None)
        if (group, resource) in EMPTY_LISTS:
            if method != "GET":
                raise k8s.APIError(405, "method not allowed")
            kind, api_version = EMPTY_LISTS[(group, resource)]
            if name:
                raise k8s.not_found(resource, name)
            return self.send_list(kind, api_version, [], 0, resource)
        desc = STORED.get((group, resource))
        if desc is None:
            raise k8s.APIError(404, "the server could not find the requested resource")
        if desc["namespaced"] and name and not namespace:
            raise k8s.APIError(404, "the server could not find the requested resource")
        dry_run = "dryRun" in self.query
        if method == "GET" and name is None:
            if self.query.get("watch") in ("1", "true"):
                return self.watch(desc, resource, namespace)
            return self.list(desc, resource, namespace)
        if method == "GET":
            obj = self.get_rendered(desc, namespace, name, resource)
            if self.wants_table():
                rev = obj["metadata"].get("resourceVersion", "0")
                return self.send_json(200, self.table(resource, [obj], rev))
            return self.send_json(200, obj)
        if method == "POST" and name is None:
            obj = self.parse_body(body)
            if desc["namespaced"]:
                obj.setdefault("metadata", {})["namespace"] = namespace
            if resource == "nodes":
                created = api.create_node(obj, dry_run=dry_run)
            else:
                created = api.create_obj(desc, obj, dry_run=dry_run)
                if resource == "leases" and not dry_run:
                    api.schedule_pending()
                if resource == "daemonsets" and not dry_run:
                    # An operator installing a CNI (cni: none): the DaemonSet controller puts a pod on every node.
                    nodes, _ = api.list_objs(STORED[("", "nodes")])
                    for node in nodes:
                        api.ensure_ds_pod(created, node)
            return self.send_json(201, created)
        if method == "POST" and resource == "pods" and sub == "eviction":
            return self.evict(namespace, name, dry_run)
        if method in ("PUT", "PATCH") and name:
            return self.modify(method, desc, resource, namespace, name, sub, body, dry_run)
        if method == "DELETE" and name and sub is None:
            if resource == "nodes":
                deleted = api.delete_node(name, dry_run=dry_run)
            elif resource == "pods":
                pod, _ = api.get_obj(desc, namespace, name, resource)
                if not dry_run:
                    api.remove_pod(pod)
                    self.recreate_ds_pod(pod)
                    api.schedule_pending()
                deleted = pod
            else:
                deleted, _ = api.get_obj(desc, namespace, name, resource)
                if not dry_run:
                    api.etcd.delete(api.key(desc, namespace, name))
            return self.send_json(200, deleted)
        raise k8s.APIError(405, "the server does not allow this method on the requested resource")

    def parse_body(self, body):
        try:
            obj = json.loads(body or b"{}")
        except ValueError:
            raise k8s.APIError(400, "the request body is not valid JSON (only JSON is supported)") from None
        if not isinstance(obj, (dict, list)):
            raise k8s.APIError(400, "the request body must be a JSON object")
        return obj

    def get_rendered(self, desc, namespace, name, resource):
        obj, _ = self.api.get_obj(desc, namespace, name, resource)
        if resource == "nodes":
            self.api.render_node(obj, self.api.leases())
        elif resource == "pods":
            self.api.render_pods([obj])
        return obj

    def rendered_list(self, desc, resource, namespace):
        items, rev = self.api.list_objs(desc, namespace)
        if resource == "nodes":
            leases = self.api.leases()
            for node in items:
                self.api.render_node(node, leases)
        elif resource == "pods":
            self.api.render_pods(items)
        label_match = k8s.parse_label_selector(self.query.get("labelSelector"))
        field_match = k8s.parse_field_selector(self.query.get("fieldSelector"))
        items = [obj for obj in items if label_match(obj.get("metadata", {}).get("labels")) and field_match(obj)]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items, rev

    def list(self, desc, resource, namespace):
        items, rev = self.rendered_list(desc, resource, namespace)
        return self.send_list(desc["kind"] + "List", desc["apiVersion"], items, rev, resource)

    def send_list(self, kind, api_version, items, rev, resource):
        if self.wants_table():
            return self.send_json(200, self.table(resource, items, rev))
        return self.send_json(
            200,
            {
                "kind": kind,
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(rev)},
                "items": items,
            },
        )

    def table(self, resource, items, rev):
        include = self.query.get("includeObject", "Metadata")
        if resource == "nodes":
            cols = [
                k8s.column("Name", fmt="name"),
                k8s.column("Status"),
                k8s.column("Roles"),
                k8s.column("Age"),
                k8s.column("Version"),
                k8s.column("Internal-IP", priority=1),
                k8s.column("External-IP", priority=1),
                k8s.column("OS-Image", priority=1),
                k8s.column("Kernel-Version", priority=1),
                k8s.column("Container-Runtime", priority=1),
            ]
            rows = []
            for node in items:
                status = "Ready" if self.api.node_ready(node) else "NotReady"
                if node.get("spec", {}).get("unschedulable"):
                    status += ",SchedulingDisabled"
                roles = sorted(
                    k.split("/", 1)[1]
                    for k in node["metadata"].get("labels", {})
                    if k.startswith("node-role.kubernetes.io/") and k.split("/", 1)[1]
                )
                addrs = {a["type"]: a["address"] for a in node.get("status", {}).get("addresses", [])}
                info = node.get("status", {}).get("nodeInfo", {})
                rows.append(
                    (
                        node,
                        [
                            node["metadata"]["name"],
                            status,
                            ",".join(roles) or "<none>",
                            k8s.age(node),
                            info.get("kubeletVersion", ""),
                            addrs.get("InternalIP", "<none>"),
                            addrs.get("ExternalIP", "<none>"),
                            info.get("osImage", "<unknown>"),
                            info.get("kernelVersion", "<unknown>"),
                            info.get("containerRuntimeVersion", "<unknown>"),
                        ],
                    )
                )
            return k8s.table(cols, rows, rev, include)
        if resource == "pods":
            cols = [
                k8s.column("Name", fmt="name"),
                k8s.column("Ready"),
                k8s.column("Status"),
                k8s.column("Restarts", kind="string"),
                k8s.column("Age"),
                k8s.column("IP", priority=1),
                k8s.column("Node", priority=1),
                k8s.column("Nominated Node", priority=1),
                k8s.column("Readiness Gates", priority=1),
            ]
            rows = []
            for pod in items:
                statuses = pod.get("status", {}).get("containerStatuses", [])
                total = len(pod.get("spec", {}).get("containers", []))
                ready = sum(1 for s in statuses if s.get("ready"))
                rows.append(
                    (
                        pod,
                        [
                            pod["metadata"]["name"],
                            "%d/%d" % (ready, total),
                            pod.get("status", {}).get("phase", "Unknown"),
                            "0",
                            k8s.age(pod),
                            pod.get("status", {}).get("podIP") or "<none>",
                            pod.get("spec", {}).get("nodeName") or "<none>",
                            "<none>",
                            "<none>",
                        ],
                    )
                )
            return k8s.table(cols, rows, rev, include)
        cols = [k8s.column("Name", fmt="name"), k8s.column("Age")]
        return k8s.table(cols, [(o, [o["metadata"]["name"], k8s.age(o)]) for o in items], rev, include)

    def namespaces(self, method, name, _unused):
        if method != "GET":
            raise k8s.APIError(405, "namespaces are read-only in this API server")
        objs = [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": ns,
                    "uid": "00000000-0000-0000-0000-%012d" % i,
                    "resourceVersion": "1",
                    "creationTimestamp": "2024-01-01T00:00:00Z",
                    "labels": {"kubernetes.io/metadata.name": ns},
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }
            for i, ns in enumerate(NAMESPACES)
        ]
        if name:
            for obj in objs:
                if obj["metadata"]["name"] == name:
                    return self.send_json(200, obj)
            raise k8s.not_found("namespaces", name)
        return self.send_list("NamespaceList", "v1", objs, 1, "namespaces")

    def modify(self, method, desc, resource, namespace, name, sub, body, dry_run):
        api = self.api
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        patch = self.parse_body(body)
        if method == "PUT":
            expected = (patch.get("metadata") or {}).get("resourceVersion")

            def mutate(current):
                if sub == "status":
                    return dict(current, status=patch.get("status", {}))
                if "status" in current:
                    return dict(patch, status=current["status"])
                return patch

        else:
            expected = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
            if content_type == "application/json-patch+json":

                def mutate(current):
                    return k8s.json_patch(current, patch)

            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                strategic = content_type == "application/strategic-merge-patch+json"
                if not isinstance(patch, dict):
                    raise k8s.APIError(400, "patch body must be a JSON object")

                def mutate(current):
                    return k8s.merge_patch(current, patch, strategic=strategic)

            else:
                raise k8s.APIError(
                    415,
                    "the body of the request was in an unknown format - accepted media types "
                    "include: application/json-patch+json, application/merge-patch+json, "
                    "application/strategic-merge-patch+json",
                )
        if resource == "nodes":

            def strip_conditions(current, inner=mutate):
                result = inner(current)
                result.get("status", {}).pop("conditions", None)
                return result

            updated = api.update_obj(desc, namespace, name, resource, strip_conditions, expected, dry_run)
            api.render_node(updated, api.leases())
            if not dry_run and not updated.get("spec", {}).get("unschedulable"):
                api.schedule_pending()
        else:
            updated = api.update_obj(desc, namespace, name, resource, mutate, expected, dry_run)
            if resource == "leases" and not dry_run:
                api.schedule_pending()
        return self.send_json(200, updated)

    def evict(self, namespace, name, dry_run):
        api = self.api
        pod, _ = api.get_obj(STORED[("", "pods")], namespace, name, "pods")
        if not dry_run:
            api.remove_pod(pod)
            self.recreate_ds_pod(pod)
            api.schedule_pending()
        self.send_json(201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})

    def recreate_ds_pod(self, pod):
        ref = next((r for r in pod["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
        node_name = pod["spec"].get("nodeName")
        if not ref or ref.get("kind") != "DaemonSet" or not node_name:
            return
        try:
            node, _ = self.api.get_obj(STORED[("", "nodes")], None, node_name, "nodes")
            ds, _ = self.api.get_obj(
                STORED[("apps", "daemonsets")], pod["metadata"]["namespace"], ref["name"], "daemonsets"
            )
        except k8s.APIError:
            return
        self.api.ensure_ds_pod(ds, node)

    # --- watch -----------------------------------------------------------------------------------------
    def watch(self, desc, resource, namespace):
        try:
            timeout = float(self.query.get("timeoutSeconds") or 1800)
        except ValueError:
            timeout = 1800.0
        deadline = time.time() + min(timeout, 1800.0)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        since = self.query.get("resourceVersion")
        initial_type = "ADDED" if since in (None, "", "0") else "MODIFIED"
        previous = {}
        first = True

        def send(event_type, obj):
            data = json.dumps({"type": event_type, "object": obj}).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            while True:
                items, _ = self.rendered_list(desc, resource, namespace)
                current = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in items}
                for key, obj in current.items():
                    encoded = json.dumps(obj, sort_keys=True)
                    if key not in previous:
                        send(initial_type if first else "ADDED", obj)
                    elif previous[key][0] != encoded:
                        send("MODIFIED", obj)
                    previous[key] = (encoded, obj)
                for key in [k for k in previous if k not in current]:
                    send("DELETED", previous.pop(key)[1])
                first = False
                if time.time() >= deadline:
                    break
                time.sleep(1.0)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        except (etcd.EtcdError, etcd.EtcdUnavailable):
            try:
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
        self.close_connection = True


def make_handler(api):
    return type("APIHandler", (Handler,), {"api": api})


def version_info(version, commit, go_version):
    core = version.split("+")[0].lstrip("v")
    major, minor = core.split(".")[:2]
    return {
        "major": major,
        "minor": minor,
        "emulationMajor": major,
        "emulationMinor": minor,
        "minCompatibilityMajor": major,
        "minCompatibilityMinor": str(max(int(minor) - 1, 0)),
        "gitVersion": version,
        "gitCommit": commit,
        "gitTreeState": "clean",
        "buildDate": "2024-12-10T00:00:00Z",
        "goVersion": go_version,
        "compiler": "gc",
        "platform": "linux/amd64",
    }
