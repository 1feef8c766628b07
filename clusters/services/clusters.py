"""Creating and changing clusters and their nodes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from ..choices import ACTIVE_JOB_STATUSES, LIVE_NODE_STATUSES, SERVER_ROLES, NodeRole, NodeStatus
from ..exceptions import InvalidState
from ..integrity import integrity_error_messages
from ..models import Cluster, Node, SSHCredential
from .audit import audit_record

__all__ = [
    "NODE_FIELDS",
    "cluster_create",
    "cluster_delete",
    "cluster_install_problems",
    "cluster_update",
    "cluster_warnings",
    "nodes_add",
    "nodes_mark_for_removal",
    "normalize_node_roles",
]

NODE_FIELDS = ("hostname", "internal_ip", "external_ip", "role", "use_external_ip", "labels", "taints", "node_vars")
CLUSTER_FIELDS = (
    "name",
    "description",
    "rke2_version",
    "registration_address",
    "cni",
    "cluster_cidr",
    "service_cidr",
    "cluster_dns",
    "cluster_domain",
    "tls_san",
    "cluster_vars",
    "ssh_credential",
    "prepare_firewall",
    "prepare_network_manager",
    "prepare_kernel",
)
# Accepted aliases for node roles: the legacy system's RKE2 types.
_ROLE_ALIASES = {"server": "server", "agent": NodeRole.WORKER.value, "": ""}


def _requested_role(spec: Mapping[str, Any]) -> str:
    role = str(spec.get("role") or "").strip().lower()
    return _ROLE_ALIASES.get(role, role)


def normalize_node_roles(
    nodes: Sequence[Mapping[str, Any]], *, has_initial_master: bool = False
) -> list[dict[str, Any]]:
    """Resolve node roles, returning copies of the specs with ``role`` set.

    ``server`` and ``agent`` are accepted as RKE2 types (``agent`` is a worker). When neither the cluster
    (``has_initial_master``) nor the specs have an initial master, the first server (given as ``server`` or
    ``master``) becomes the ``initial_master``; other servers are ``master``. A node without a role is a worker,
    unless no node has a role at all, in which case the first node is the initial master (when there is none).
    Entries that are not mappings are passed through for the validation to report.
    """
    specs: list[Any] = [dict(node) if isinstance(node, Mapping) else node for node in nodes]
    mappings = [spec for spec in specs if isinstance(spec, dict)]
    no_roles_given = all(not spec.get("role") for spec in mappings)
    initial_taken = has_initial_master or any(_requested_role(spec) == NodeRole.INITIAL_MASTER for spec in mappings)
    for position, spec in enumerate(mappings):
        role = _requested_role(spec)
        if not role:
            role = "server" if (no_roles_given and position == 0 and not initial_taken) else NodeRole.WORKER.value
        if role in ("server", NodeRole.MASTER) and not initial_taken:
            role = NodeRole.INITIAL_MASTER.value
            initial_taken = True
        elif role == "server":
            role = NodeRole.MASTER.value
        spec["role"] = role
    return specs


def _require_node_list(nodes: Any) -> None:
    if isinstance(nodes, (str, bytes, Mapping)) or not isinstance(nodes, Sequence):
        raise ValidationError({"nodes": ["Enter a list of nodes."]})


def _resolve_credential(value: Any) -> SSHCredential | None:
    """An SSH credential given as an instance or a primary key."""
    if value is None or value == "" or isinstance(value, SSHCredential):
        return value or None
    try:
        pk = int(value)
    except (TypeError, ValueError):
        raise ValidationError({"ssh_credential": ["Enter the id of an SSH credential."]}) from None
    credential = SSHCredential.objects.filter(pk=pk).first()
    if credential is None:
        raise ValidationError({"ssh_credential": [f"There is no SSH credential with id {pk}."]})
    return credential


def _refuse_while_job_active(cluster: Cluster, action: str) -> None:
    active = cluster.jobs.filter(status__in=ACTIVE_JOB_STATUSES).first()
    if active is not None:
        raise InvalidState(
            f"Cannot {action} while a job is active on the cluster ({active.get_kind_display()} #{active.pk}, "
            f"{active.status}); wait for it or cancel it."
        )


def _build_nodes(cluster: Cluster, specs: Sequence[Mapping[str, Any]], *, prefix: str = "nodes") -> list[Node]:
    """Validate node specs against each other and the cluster; errors are keyed ``nodes[i].field``."""
    errors: dict[str, list[str]] = {}
    nodes: list[Node] = []
    seen: dict[tuple[str, str], int] = {}
    for index, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            errors[f"{prefix}[{index}]"] = ["Enter a mapping of node fields (hostname, internal_ip, role, ...)."]
            continue
        unknown = set(spec) - set(NODE_FIELDS)
        if unknown:
            errors[f"{prefix}[{index}]"] = [f"Unknown field(s): {', '.join(sorted(unknown))}."]
            continue
        values = {key: spec[key] for key in NODE_FIELDS if key in spec}
        if values.get("external_ip") == "":
            values["external_ip"] = None
        node = Node(cluster=cluster, status=NodeStatus.PENDING, **values)
        try:
            node.full_clean(exclude=["cluster"], validate_constraints=False)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                key = f"{prefix}[{index}]" if field == "__all__" else f"{prefix}[{index}].{field}"
                errors.setdefault(key, []).extend(messages)
            continue
        for field in ("hostname", "internal_ip"):
            value = str(getattr(node, field))
            if (field, value) in seen:
                errors.setdefault(f"{prefix}[{index}].{field}", []).append(
                    f"Duplicate of {prefix}[{seen[(field, value)]}].{field}."
                )
            seen[(field, value)] = index
        nodes.append(node)
    if errors:
        raise ValidationError(errors)
    return nodes


def _check_against_existing(cluster: Cluster, nodes: Sequence[Node], *, prefix: str, offset: int = 0) -> None:
    live = Node.objects.filter(cluster=cluster).exclude(status=NodeStatus.REMOVED)
    hostnames = set(live.values_list("hostname", flat=True))
    addresses = set(live.values_list("internal_ip", flat=True))
    has_initial = live.filter(role=NodeRole.INITIAL_MASTER).exists()
    errors: dict[str, list[str]] = {}
    for index, node in enumerate(nodes, start=offset):
        if node.hostname in hostnames:
            errors.setdefault(f"{prefix}[{index}].hostname", []).append(
                "A node with this host name already exists in this cluster."
            )
        if node.internal_ip in addresses:
            errors.setdefault(f"{prefix}[{index}].internal_ip", []).append(
                "A node with this internal IP already exists in this cluster."
            )
        if node.role == NodeRole.INITIAL_MASTER and has_initial:
            errors.setdefault(f"{prefix}[{index}].role", []).append("The cluster already has an initial master.")
    if sum(1 for node in nodes if node.role == NodeRole.INITIAL_MASTER) > 1:
        errors.setdefault(f"{prefix}", []).append("A cluster has at most one initial master.")
    if errors:
        raise ValidationError(errors)


def _save_nodes(nodes: Iterable[Node]) -> list[Node]:
    saved: list[Node] = []
    try:
        with transaction.atomic():
            for node in nodes:
                node.save()
                saved.append(node)
    except IntegrityError as exc:  # a concurrent request took a name or address first
        raise ValidationError(integrity_error_messages(exc, Node, prefix=f"nodes[{len(saved)}]")) from exc
    return saved


@transaction.atomic
def cluster_create(*, nodes: Sequence[Mapping[str, Any]] = (), actor: Any = None, **fields: Any) -> Cluster:
    """Create a cluster and its nodes (all pending) in one transaction; a fresh join token is generated.

    Node roles are resolved by :func:`normalize_node_roles`. Errors are collected for the cluster's fields and
    every node (keyed ``nodes[i].field``) and raised together.
    """
    unknown = set(fields) - set(CLUSTER_FIELDS)
    if unknown:
        raise ValidationError({field: ["Unknown field."] for field in sorted(unknown)})
    _require_node_list(nodes)
    errors: dict[str, list[str]] = {}
    if "ssh_credential" in fields:
        try:
            fields["ssh_credential"] = _resolve_credential(fields["ssh_credential"])
        except ValidationError as exc:
            errors.update(exc.message_dict)
            fields.pop("ssh_credential")
    cluster = Cluster(**fields)
    try:
        cluster.full_clean()
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            errors.setdefault(field, []).extend(messages)
    specs = normalize_node_roles(nodes)
    try:
        built = _build_nodes(cluster, specs)
        if sum(1 for node in built if node.role == NodeRole.INITIAL_MASTER) > 1:
            errors.setdefault("nodes", []).append("A cluster has at most one initial master.")
    except ValidationError as exc:
        errors.update(exc.message_dict)
        built = []
    if errors:
        raise ValidationError(errors)
    try:
        with transaction.atomic():
            cluster.save()
    except IntegrityError as exc:  # a concurrent request took the name first, say: the constraint tells
        raise ValidationError(integrity_error_messages(exc, Cluster)) from exc
    for node in built:
        node.cluster = cluster
    _save_nodes(built)
    audit_record(action="cluster.create", actor=actor, cluster=cluster, detail={"nodes": len(built)})
    return cluster


@transaction.atomic
def cluster_update(*, cluster: Cluster, data: Mapping[str, Any], actor: Any = None) -> Cluster:
    """Change a cluster's settings. Critical values are frozen once bootstrapped; the version changes through an
    upgrade job only. On a validation error the instance is left as it was."""
    unknown = set(data) - set(CLUSTER_FIELDS)
    if unknown:
        raise ValidationError({field: ["Unknown field."] for field in sorted(unknown)})
    data = dict(data)
    if "ssh_credential" in data:
        data["ssh_credential"] = _resolve_credential(data["ssh_credential"])
    if cluster.is_bootstrapped and "rke2_version" in data and data["rke2_version"] != cluster.rke2_version:
        raise ValidationError({"rke2_version": ["The cluster is installed: change its version with an upgrade job."]})
    original = {field: getattr(cluster, field) for field in data}
    for field, value in data.items():
        setattr(cluster, field, value)
    try:
        cluster.full_clean()
    except ValidationError:
        for field, value in original.items():
            setattr(cluster, field, value)
        raise
    changed = sorted(field for field in data if getattr(cluster, field) != original[field])
    try:
        with transaction.atomic():
            cluster.save()
    except IntegrityError as exc:
        for field, value in original.items():
            setattr(cluster, field, value)
        raise ValidationError(integrity_error_messages(exc, Cluster)) from exc
    if changed:
        audit_record(action="cluster.update", actor=actor, cluster=cluster, detail={"fields": changed})
    return cluster


@transaction.atomic
def cluster_delete(*, cluster: Cluster, actor: Any = None) -> None:
    """Delete a cluster's record (not its hosts: that is the uninstall job). Refused while a job is active."""
    active = cluster.jobs.filter(status__in=ACTIVE_JOB_STATUSES).first()
    if active is not None:
        raise InvalidState(
            f"The cluster has an active job ({active.get_kind_display()} #{active.pk}); wait for it or cancel it."
        )
    audit_record(
        action="cluster.delete", actor=actor, cluster=None, object_repr=cluster.name, detail={"cluster_id": cluster.pk}
    )
    cluster.delete()


@transaction.atomic
def nodes_add(*, cluster: Cluster, nodes: Sequence[Mapping[str, Any]], actor: Any = None) -> list[Node]:
    """Add pending nodes to a cluster. Servers given as ``server`` become masters (initial master only when the
    cluster has none yet)."""
    _require_node_list(nodes)
    if not nodes:
        raise ValidationError({"nodes": ["Give at least one node."]})
    _refuse_while_job_active(cluster, "add nodes")
    has_initial = cluster.cluster_nodes.exclude(status=NodeStatus.REMOVED).filter(role=NodeRole.INITIAL_MASTER).exists()
    specs = normalize_node_roles(nodes, has_initial_master=has_initial or cluster.is_bootstrapped)
    built = _build_nodes(cluster, specs)
    _check_against_existing(cluster, built, prefix="nodes")
    saved = _save_nodes(built)
    audit_record(action="nodes.add", actor=actor, cluster=cluster, detail={"hostnames": [n.hostname for n in saved]})
    return saved


@transaction.atomic
def nodes_mark_for_removal(*, cluster: Cluster, hostnames: Sequence[str], actor: Any = None) -> list[Node]:
    """Mark nodes for removal (status ``draining``); a scale-in job takes them off their hosts.

    Guards etcd quorum: at most one installed server per removal, never the last server, and no server while
    another server is not active. The server that is the cluster's registration address (the initial master when
    no registration address is set) is kept until the address points elsewhere. Nodes that were never installed
    (pending) are removed at once. Refused while a job is active.
    """
    if isinstance(hostnames, (str, bytes)) or not isinstance(hostnames, Sequence) or not hostnames:
        raise ValidationError({"hostnames": ["Give a list of at least one host name."]})
    _refuse_while_job_active(cluster, "remove nodes")
    nodes = list(cluster.cluster_nodes.exclude(status=NodeStatus.REMOVED).select_for_update())
    by_name = {node.hostname: node for node in nodes}
    errors = []
    for name in dict.fromkeys(hostnames):
        node = by_name.get(name)
        if node is None:
            errors.append(f"No node named {name!r} in this cluster.")
        elif node.status == NodeStatus.DRAINING:
            errors.append(f"{name} is already marked for removal.")
    if errors:
        raise ValidationError({"hostnames": errors})
    targets = [by_name[name] for name in dict.fromkeys(hostnames)]
    live = [node for node in nodes if node.status in LIVE_NODE_STATUSES]
    target_servers = [node for node in targets if node.role in SERVER_ROLES and node.status != NodeStatus.PENDING]
    if target_servers:
        if len(target_servers) > 1:
            raise ValidationError({"hostnames": ["Remove one server at a time, so that etcd keeps its quorum."]})
        target = target_servers[0]
        remaining = [
            node
            for node in live
            if node.role in SERVER_ROLES and node not in targets and node.status != NodeStatus.PENDING
        ]
        if not remaining:
            raise ValidationError({"hostnames": [f"{target.hostname} is the cluster's last server."]})
        unhealthy = [node.hostname for node in remaining if node.status != NodeStatus.ACTIVE]
        if unhealthy:
            raise ValidationError(
                {
                    "hostnames": [
                        f"Servers {', '.join(unhealthy)} are not active: removing another server could break etcd quorum."
                    ]
                }
            )
        address = cluster.registration_address
        is_registration_target = address in (target.internal_ip, target.external_ip)
        if (not address and target.role == NodeRole.INITIAL_MASTER) or is_registration_target:
            raise ValidationError(
                {
                    "hostnames": [
                        (
                            f"{target.hostname} is the address the other nodes register with. Set the cluster's "
                            "registration address to another server, a VIP or a DNS name first."
                        )
                    ]
                }
            )
    never_installed = [node.pk for node in targets if node.status == NodeStatus.PENDING]
    installed = [node.pk for node in targets if node.status != NodeStatus.PENDING]
    if never_installed:
        Node.objects.filter(pk__in=never_installed, status=NodeStatus.PENDING).update(status=NodeStatus.REMOVED)
    if installed:
        Node.objects.filter(pk__in=installed, status__in=LIVE_NODE_STATUSES).update(status=NodeStatus.DRAINING)
    audit_record(
        action="nodes.mark_for_removal",
        actor=actor,
        cluster=cluster,
        detail={"hostnames": [n.hostname for n in targets]},
    )
    return list(Node.objects.filter(pk__in=[node.pk for node in targets]).order_by("pk"))


def cluster_install_problems(cluster: Cluster, nodes: Sequence[Node] | None = None) -> list[str]:
    """Reasons the cluster cannot be installed as defined (empty when it can)."""
    if nodes is None:
        nodes = list(cluster.cluster_nodes.filter(status__in=LIVE_NODE_STATUSES))
    problems = []
    initial = [node for node in nodes if node.role == NodeRole.INITIAL_MASTER]
    if len(initial) != 1:
        problems.append(f"An install needs exactly one initial master; the cluster has {len(initial)}.")
    if cluster.ssh_credential_id is None:
        problems.append("The cluster has no SSH credential.")
    return problems


def cluster_warnings(cluster: Cluster, nodes: Sequence[Node] | None = None) -> list[str]:
    """Allowed but risky aspects of the cluster's definition."""
    if nodes is None:
        nodes = list(cluster.cluster_nodes.filter(status__in=LIVE_NODE_STATUSES))
    warnings = []
    servers = sum(1 for node in nodes if node.role in SERVER_ROLES)
    if servers and servers % 2 == 0:
        warnings.append(
            f"The cluster has {servers} servers: an even number tolerates no more failures than {servers - 1} "
            "(etcd quorum); prefer an odd number."
        )
    if not cluster.registration_address and servers > 1:
        warnings.append(
            "No registration address: nodes register with the initial master's address, which then cannot be "
            "removed without re-pointing the agents. A VIP, load balancer or DNS name is recommended."
        )
    return warnings
