"""Ansible variables of a cluster (``all.vars``) and of each node (host vars).

The variable names are the contract with the playbooks and the config templates in ``ansible/templates/``.

Cluster variables: ``rke2_cluster_name``, ``rke2_version``, ``rke2_registration_address``, ``rke2_server_url``,
``rke2_api_host``, ``rke2_cni``, ``rke2_cluster_cidr``, ``rke2_service_cidr``, ``rke2_cluster_dns``,
``rke2_cluster_domain``, ``rke2_tls_san`` and the secrets ``rke2_token`` (a :class:`~clusters.fields.Secret`)
and ``rke2_registries`` (the ``registries.yaml`` document, credentials as Secrets); they never go into an
inventory, see :data:`SECRET_VARS`.

``rke2_reachability_ports`` lists the ports preflight checks between nodes (:func:`reachability_ports`).
``rke2_prepare_firewall``, ``rke2_prepare_network_manager`` and ``rke2_prepare_kernel`` switch the parts of host
preparation (role ``rke2_host_prep``); the host variable ``rke2_firewall_ports`` lists the ports the node's firewall
opens (:func:`firewall_ports`).

Host variables: ``ansible_host``, ``ansible_port``, ``ansible_user``, ``ansible_become`` (the last three only when
the cluster has an SSH credential), ``rke2_role``, ``rke2_type``, ``rke2_node_name``, ``rke2_node_ip``,
``rke2_node_external_ip`` (only when the node has one), ``rke2_node_labels``, ``rke2_node_taints`` and
``rke2_extra_config``.

Precedence of ``rke2_extra_config`` (the free-form RKE2 ``config.yaml`` keys), lowest first:

1. the portal's defaults for the node's RKE2 type (:data:`DEFAULT_SERVER_CONFIG`, :data:`DEFAULT_AGENT_CONFIG`);
2. ``Node.kept_config``: keys an adopt job found in the node's own ``config.yaml`` (imported clusters);
3. ``Cluster.cluster_vars``;
4. ``Node.node_vars``.

A later layer replaces a key's whole value (lists are not concatenated). Two kinds of keys are then dropped:
keys the portal sets from model fields (:data:`MANAGED_CONFIG_KEYS`: ``server``, ``token``, node identity, labels,
taints, CNI, CIDRs, cluster DNS/domain, ``tls-san``), and, on agents, keys only servers understand
(:func:`is_server_only_key`), which an agent would otherwise skip with a warning. The config templates lay the
managed keys over ``rke2_extra_config``, so model fields always win.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from clusters.choices import LIVE_NODE_STATUSES, SERVER_ROLES, NodeRole, NodeStatus
from clusters.fields import Secret, reveal
from clusters.models import Cluster, Node, Registry, SSHCredential
from clusters.registries import registries_document, registries_variable
from inventory import ports as rke2_ports

__all__ = [
    "DEFAULT_AGENT_CONFIG",
    "DEFAULT_SERVER_CONFIG",
    "MANAGED_CONFIG_KEYS",
    "SECRET_VARS",
    "SUPERVISOR_PORT",
    "ClusterSnapshot",
    "VariableRenderer",
    "is_server_only_key",
    "pick_api_host",
    "server_url",
]

SUPERVISOR_PORT = 9345

# Variables that hold secrets: never written into an inventory; the job engine passes them in a 0600 extravars file.
SECRET_VARS = frozenset({"rke2_token", "rke2_registries"})

DEFAULT_SERVER_CONFIG: Mapping[str, Any] = {"write-kubeconfig-mode": "0600"}
DEFAULT_AGENT_CONFIG: Mapping[str, Any] = {}

# Keys the config templates set from model fields. Extra config cannot override them.
MANAGED_CONFIG_KEYS = frozenset(
    {
        "server",
        "token",
        "token-file",
        "agent-token",
        "agent-token-file",
        "node-name",
        "node-ip",
        "node-external-ip",
        "node-label",
        "node-taint",
        "cni",
        "cluster-cidr",
        "service-cidr",
        "cluster-dns",
        "cluster-domain",
        "tls-san",
    }
)

_SERVER_ONLY_KEYS = frozenset(
    {
        "advertise-address",
        "advertise-port",
        "cluster-init",
        "cluster-reset",
        "cluster-reset-restore-path",
        "cni",
        "cluster-cidr",
        "cluster-dns",
        "cluster-domain",
        "disable",
        "disable-apiserver",
        "disable-cloud-controller",
        "disable-controller-manager",
        "disable-etcd",
        "disable-kube-proxy",
        "disable-scheduler",
        "egress-selector-mode",
        "embedded-registry",
        "enable-servicelb",
        "https-listen-port",
        "ingress-controller",
        "secrets-encryption",
        "secrets-encryption-provider",
        "service-cidr",
        "service-node-port-range",
        "supervisor-metrics",
        "system-default-registry",
        "tls-san",
        "tls-san-security",
        "write-kubeconfig",
        "write-kubeconfig-group",
        "write-kubeconfig-mode",
    }
)
_SERVER_ONLY_PREFIXES = (
    "etcd-",
    "kube-apiserver-",
    "kube-controller-manager-",
    "kube-scheduler-",
    "cloud-controller-manager-",
    "datastore-",
)

# The node columns rendering reads; the snapshot loads only these.
RENDER_FIELDS = (
    "id",
    "cluster_id",
    "hostname",
    "internal_ip",
    "external_ip",
    "use_external_ip",
    "role",
    "status",
    "labels",
    "taints",
    "node_vars",
    "kept_config",
)

# Preference when choosing the API host among servers: running ones first, never-installed ones last.
_STATUS_RANK = {NodeStatus.ACTIVE: 0, NodeStatus.INSTALLING: 1, NodeStatus.FAILED: 2, NodeStatus.PENDING: 3}
_LIVE = frozenset(status.value for status in LIVE_NODE_STATUSES)
_SERVERS = frozenset(role.value for role in SERVER_ROLES)


def is_server_only_key(key: str) -> bool:
    """Whether an RKE2 config key is a server flag that agents do not know (``key+`` counts as ``key``)."""
    base = key.rstrip("+")
    return base in _SERVER_ONLY_KEYS or base.startswith(_SERVER_ONLY_PREFIXES)


def reachability_ports(cni: str) -> list[dict[str, Any]]:
    """The ports preflight checks between nodes (from :mod:`inventory.ports`): ``{port, protocol, listeners,
    sources}``, ``listeners`` being the nodes that listen on the port and ``sources`` the nodes that must reach it
    (``servers`` or ``all``): supervisor and API on every server from every node, etcd client and peer between
    servers, the kubelet on every node from every node, and the CNI's overlay (UDP) between every pair."""
    checked = [rke2_ports.SUPERVISOR, rke2_ports.KUBE_API, rke2_ports.ETCD_CLIENT, rke2_ports.ETCD_PEER]
    checked.append(rke2_ports.KUBELET)
    if (overlay := rke2_ports.overlay_port(cni)) is not None:
        checked.append(overlay)
    return [
        {
            "port": port.port,
            "protocol": port.protocol,
            "listeners": "servers" if port in rke2_ports.SERVER_PORTS else "all",
            "sources": port.peers,
            "purpose": port.purpose,
        }
        for port in checked
    ]


def firewall_ports(rke2_type: str, cni: str) -> list[dict[str, Any]]:
    """The ports a node of ``rke2_type`` listens on for the cluster's CNI (from :mod:`inventory.ports`), which host
    preparation opens in its firewall: ``{port, end, protocol, spec, purpose}``, ``spec`` being ``6443/tcp`` or
    ``30000-32767/tcp``."""
    return [
        {"port": port.port, "end": port.end, "protocol": port.protocol, "spec": port.spec, "purpose": port.purpose}
        for port in rke2_ports.listening_ports(rke2_type, cni)
    ]


def server_url(address: str) -> str:
    """The supervisor URL joining nodes register against: ``https://<address>:9345`` (IPv6 in brackets)."""
    if not address:
        return ""
    try:
        is_v6 = ipaddress.ip_address(address).version == 6
    except ValueError:
        is_v6 = False
    host = f"[{address}]" if is_v6 else address
    return f"https://{host}:{SUPERVISOR_PORT}"


def _text(value: Any) -> str:
    """A plain ``str`` (not an enum, a Secret or another subclass), so every serializer sees the same value."""
    if isinstance(value, str):
        return str.__str__(value) if type(value) is not str else value
    return str(value)


def _plain(value: Any) -> Any:
    """JSON-like data with every string a plain ``str`` and every sequence a list."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, Mapping):
        return {_text(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def pick_api_host(candidates: Iterable[Node], *, require_active: bool = False) -> Node | None:
    """The server to run cluster-wide ``kubectl`` calls on: an active one when there is one (the initial master
    first among equals, then in inventory order), else the most advanced one. With ``require_active`` only active
    servers qualify. Non-servers and nodes that are draining or removed never qualify."""
    best: tuple[tuple[int, int, int], Node] | None = None
    for index, node in enumerate(candidates):
        if node.role not in _SERVERS or node.status not in _LIVE:
            continue
        if require_active and node.status != NodeStatus.ACTIVE:
            continue
        rank = (_STATUS_RANK.get(node.status, 9), 0 if node.role == NodeRole.INITIAL_MASTER else 1, index)
        if best is None or rank < best[0]:
            best = (rank, node)
    return best[1] if best else None


@dataclass
class ClusterSnapshot:
    """A cluster with its nodes, SSH credential and registries, read once (three queries), so that rendering is
    pure Python.

    ``nodes`` holds every node that is not removed (live and draining), in inventory order (the order they were
    added in), with only the fields rendering reads (:data:`RENDER_FIELDS`; others load on access, one query each).
    The credential is loaded without its key material.
    """

    cluster: Cluster
    nodes: list[Node]
    credential: SSHCredential | None
    _cluster_vars: dict[str, Any] | None = field(default=None, repr=False)
    registries: list[Registry] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, cluster: Cluster) -> ClusterSnapshot:
        nodes = list(
            Node.objects.filter(cluster_id=cluster.pk)
            .exclude(status=NodeStatus.REMOVED)
            .only(*RENDER_FIELDS)
            .order_by("pk")
        )
        for node in nodes:
            Node.cluster.field.set_cached_value(node, cluster)  # no query per node for node.cluster
        registries = list(Registry.objects.filter(cluster_id=cluster.pk).order_by("name"))
        return cls(cluster=cluster, nodes=nodes, credential=load_credential(cluster), registries=registries)

    @cached_property
    def live_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.status in _LIVE]

    @cached_property
    def live_servers(self) -> list[Node]:
        return [node for node in self.live_nodes if node.role in _SERVERS]

    def registration_address(self) -> str:
        """The fixed registration address, or the internal IP of the initial master (of the best remaining server
        when the initial master is gone or leaving)."""
        if self.cluster.registration_address:
            return _text(self.cluster.registration_address)
        servers = self.live_servers
        initial = next((node for node in servers if node.role == NodeRole.INITIAL_MASTER), None)
        chosen = initial or pick_api_host(servers)
        return _text(chosen.internal_ip) if chosen else ""

    def tls_san(self) -> list[str]:
        """Registration address, every live server's host name and addresses, then the cluster's extra names;
        without duplicates, in that order."""
        names: list[str] = []
        if address := self.registration_address():
            names.append(address)
        for node in self.live_servers:
            names.append(_text(node.hostname))
            names.append(_text(node.internal_ip))
            if node.external_ip:
                names.append(_text(node.external_ip))
        names.extend(_text(item) for item in (self.cluster.tls_san or []))
        return list(dict.fromkeys(name for name in names if name))

    def cluster_vars(self) -> dict[str, Any]:
        """The cluster variables including the secret ``rke2_token`` (computed once per snapshot; a copy)."""
        if self._cluster_vars is None:
            cluster = self.cluster
            address = self.registration_address()
            api_host = pick_api_host(self.live_servers)
            self._cluster_vars = {
                "rke2_cluster_name": _text(cluster.name),
                "rke2_version": _text(cluster.rke2_version),
                "rke2_registration_address": address,
                "rke2_server_url": server_url(address),
                "rke2_api_host": _text(api_host.hostname) if api_host else "",
                "rke2_cni": _text(cluster.cni),
                "rke2_cluster_cidr": _text(cluster.cluster_cidr),
                "rke2_service_cidr": _text(cluster.service_cidr),
                "rke2_cluster_dns": _text(cluster.cluster_dns),
                "rke2_cluster_domain": _text(cluster.cluster_domain),
                "rke2_tls_san": self.tls_san(),
                "rke2_reachability_ports": reachability_ports(_text(cluster.cni)),
                "rke2_prepare_firewall": bool(cluster.prepare_firewall),
                "rke2_prepare_network_manager": bool(cluster.prepare_network_manager),
                "rke2_prepare_kernel": bool(cluster.prepare_kernel),
                "rke2_token": Secret(reveal(cluster.token)),
                # The registries.yaml document, credentials as Secrets: a secret variable, like the token.
                "rke2_registries": registries_variable(registries_document(self.registries or ())),
            }
        return dict(self._cluster_vars)

    def node_vars(self, node: Node) -> dict[str, Any]:
        return node_vars(node, cluster=self.cluster, credential=self.credential)


def load_credential(cluster: Cluster) -> SSHCredential | None:
    """The cluster's SSH credential without its key material (one query, none when already loaded)."""
    if cluster.ssh_credential_id is None:
        return None
    if Cluster.ssh_credential.is_cached(cluster):
        return cluster.ssh_credential
    return (
        SSHCredential.objects.only("id", "name", "username", "port", "become")
        .filter(pk=cluster.ssh_credential_id)
        .first()
    )


def extra_config(node: Node, cluster: Cluster) -> dict[str, Any]:
    """``rke2_extra_config`` of a node: defaults < cluster_vars < node_vars, without managed keys (and without
    server-only keys on agents)."""
    is_server = node.role in _SERVERS
    merged: dict[str, Any] = dict(DEFAULT_SERVER_CONFIG if is_server else DEFAULT_AGENT_CONFIG)
    # Keys an adopt job found in the node's own config.yaml that the portal does not manage: kept on every render.
    kept = _kept_config(node)
    for layer in (kept, cluster.cluster_vars, node.node_vars):
        if isinstance(layer, Mapping):
            merged.update(layer)
    result = {}
    for key, value in merged.items():
        key = _text(key)
        base = key.rstrip("+")
        if base in MANAGED_CONFIG_KEYS or (not is_server and is_server_only_key(base)):
            continue
        result[key] = _plain(value)
    return result


def _kept_config(node: Node) -> dict[str, Any]:
    from clusters.services.adoption import kept_config_of

    return kept_config_of(node)


def node_vars(node: Node, *, cluster: Cluster, credential: SSHCredential | None) -> dict[str, Any]:
    """The host variables of one node."""
    variables: dict[str, Any] = {"ansible_host": _text(node.ansible_ip)}
    if credential is not None:
        variables["ansible_port"] = int(credential.port)
        variables["ansible_user"] = _text(credential.username)
        variables["ansible_become"] = bool(credential.become)
    variables["rke2_role"] = _text(node.role)
    variables["rke2_type"] = "server" if node.role in _SERVERS else "agent"
    variables["rke2_node_name"] = _text(node.hostname)
    variables["rke2_node_ip"] = _text(node.internal_ip)
    if node.external_ip:
        variables["rke2_node_external_ip"] = _text(node.external_ip)
    variables["rke2_node_labels"] = _plain(list(node.labels or []))
    variables["rke2_node_taints"] = _plain(list(node.taints or []))
    variables["rke2_extra_config"] = extra_config(node, cluster)
    variables["rke2_firewall_ports"] = firewall_ports(variables["rke2_type"], _text(cluster.cni))
    return variables


def split_secrets(variables: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split variables into (public, secret) by :data:`SECRET_VARS` and by value type (:class:`Secret`)."""
    public: dict[str, Any] = {}
    secret: dict[str, Any] = {}
    for key, value in variables.items():
        (secret if key in SECRET_VARS or isinstance(value, Secret) else public)[key] = value
    return public, secret


class VariableRenderer:
    """Cluster and node variables for the playbooks and config templates (see the module docstring)."""

    @staticmethod
    def render_cluster_vars(cluster: Cluster, *, snapshot: ClusterSnapshot | None = None) -> dict[str, Any]:
        """Cluster variables, including ``rke2_token`` as a :class:`~clusters.fields.Secret` (masked in str/repr;
        ``reveal()`` it to use it). Separate it with :func:`split_secrets` before writing anything.

        ``rke2_api_host`` here is the cluster's preferred API host; an inventory may choose another one (for
        example when that server is being removed). Three queries, or none with a ``snapshot``."""
        return (snapshot or ClusterSnapshot.load(cluster)).cluster_vars()

    @staticmethod
    def render_node_vars(node: Node, *, snapshot: ClusterSnapshot | None = None) -> dict[str, Any]:
        """Host variables of one node. Up to two queries (its cluster, the credential), none with a ``snapshot``."""
        if snapshot is not None:
            return snapshot.node_vars(node)
        cluster = node.cluster
        return node_vars(node, cluster=cluster, credential=load_credential(cluster))

    @staticmethod
    def render_secret_vars(cluster: Cluster) -> dict[str, Any]:
        """Only the secret variables (``rke2_token``, ``rke2_registries``). One query (the registries)."""
        registries = Registry.objects.filter(cluster_id=cluster.pk).order_by("name")
        document = registries_document(registries)
        return {"rke2_token": Secret(reveal(cluster.token)), "rke2_registries": registries_variable(document)}


def ordered_subset(
    snapshot_nodes: Sequence[Node], wanted: Iterable[Node | int], *, allowed: Iterable[Node], what: str
) -> list[Node]:
    """The snapshot's own instances for ``wanted`` (nodes or primary keys), in inventory order.

    Raises ``ValueError`` naming the host when one of them is not in ``allowed``."""
    allowed_pks = {node.pk for node in allowed}
    by_pk = {node.pk: node for node in snapshot_nodes}
    wanted_pks = []
    for item in wanted:
        pk = item if isinstance(item, int) else item.pk
        if pk not in allowed_pks:
            name = by_pk[pk].hostname if pk in by_pk else (getattr(item, "hostname", None) or f"#{pk}")
            raise ValueError(
                f"Node {name} cannot be in {what}: it is not a live node of this cluster with a suitable role."
            )
        wanted_pks.append(pk)
    chosen = set(wanted_pks)
    return [node for node in snapshot_nodes if node.pk in chosen]
