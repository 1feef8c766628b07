"""Input and output shapes of the API.

Input serializers are plain ``Serializer``s that check types and sizes only; the domain rules (names, addresses,
CIDRs, roles, state) are checked by the services, through the models' ``full_clean``, so the API and the admin
enforce the same ones. Output serializers never include a secret: the cluster token, SSH keys and passphrases and
the kubeconfig (which has its own download endpoint) are write-only or absent.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from inventory.renderers import STAGES

from ..choices import (
    LIVE_NODE_STATUSES,
    ClusterStatus,
    Cni,
    InstallationStage,
    JobKind,
    JobStatus,
    NodeRole,
    NodeStatus,
)
from ..models import SSHCredential
from ..selectors import EVENTS_PAGE_DEFAULT_LIMIT, EVENTS_PAGE_MAX_LIMIT
from ..services.clusters import cluster_warnings

__all__ = [
    "ClusterCreateInput",
    "ClusterDetailOutput",
    "ClusterOutput",
    "ClusterPreviewOutput",
    "ClusterUpdateInput",
    "CredentialCreateInput",
    "CredentialOutput",
    "CredentialUpdateInput",
    "ErrorOutput",
    "EventsPageOutput",
    "EventsQueryInput",
    "InstallInput",
    "InventoryQueryInput",
    "JobOutput",
    "NodeConfigPreviewOutput",
    "NodeInput",
    "NodeOutput",
    "PreflightInput",
    "ScaleInInput",
    "ScaleInOutput",
    "ScaleOutInput",
    "ScaleOutOutput",
    "UninstallInput",
    "UpgradeInput",
]

# Bounds that keep one request reasonable; the models check the values themselves.
MAX_NODES_PER_REQUEST = 500
MAX_LIST_ITEMS = 100
MAX_TEXT = 10_000
MAX_KEY_TEXT = 32_768
MAX_JSON_DEPTH = 4
MAX_JSON_ITEMS = 200
MAX_DRAIN_TIMEOUT = 24 * 3600
ROLE_CHOICES = [*NodeRole.values, "server", "agent"]


# --- fields -----------------------------------------------------------------------------------------------------


class _NonFinite(float):
    """NaN or Infinity met while reading a JSON document leniently (to name where it is)."""


def _json_path(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))


def _find_non_finite(value: Any, path: str = "") -> str | None:
    if isinstance(value, _NonFinite):
        return path or "the document"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _find_non_finite(item, _json_path(path, key))
        if found is not None:
            return found
    return None


def non_finite_location(raw: bytes, encoding: str = "utf-8") -> str | None:
    """Where the first NaN or Infinity of a JSON document is (``cluster_vars.max-pods``, ``nodes[0].node_vars.x``),
    or None when it holds none (or is not JSON even so)."""
    try:
        document = json.loads(raw.decode(encoding), parse_constant=_NonFinite)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return _find_non_finite(document)


def _check_json(value: Any, depth: int = 0) -> None:
    """Refuse JSON values no column can store: non-finite numbers, NUL characters, absurd nesting or size."""
    if depth > MAX_JSON_DEPTH:
        raise serializers.ValidationError("Too deeply nested.")
    if isinstance(value, float) and not math.isfinite(value):
        raise serializers.ValidationError("Numbers must be finite.")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise serializers.ValidationError("Integers must fit in 64 bits.")
    if isinstance(value, str) and "\x00" in value:
        raise serializers.ValidationError("Null characters are not allowed.")
    if isinstance(value, dict):
        if len(value) > MAX_JSON_ITEMS:
            raise serializers.ValidationError(f"At most {MAX_JSON_ITEMS} keys.")
        for key, item in value.items():
            _check_json(key, depth + 1)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        if len(value) > MAX_JSON_ITEMS:
            raise serializers.ValidationError(f"At most {MAX_JSON_ITEMS} items.")
        for item in value:
            _check_json(item, depth + 1)


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {
            "oneOf": [
                {"type": "string"},
                {"type": "number"},
                {"type": "boolean"},
                {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}},
            ]
        },
        "description": "Extra RKE2 config.yaml keys (flag names) mapped to scalars or lists of scalars.",
    }
)
class RKE2ConfigField(serializers.JSONField):
    """A mapping of extra RKE2 ``config.yaml`` keys; the model's validator checks the keys and values."""

    default_error_messages: ClassVar[dict[str, str]] = {
        "not_a_dict": "Expected a mapping of RKE2 configuration keys to values."
    }

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            self.fail("not_a_dict")
        _check_json(value)
        return value


class StrictCharField(serializers.CharField):
    """A string that must be given as a JSON string: a number or boolean is a mistake, not a name."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A boolean that must be given as JSON ``true``/``false``, so a typo never reads as a decision."""

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


_ENUM_FIELDS: dict[str, type[serializers.ChoiceField]] = {}


def enum_field(choices: type[Any], component: str, **kwargs: Any) -> serializers.ChoiceField:
    """A choice field whose schema is the shared enum component ``component`` (one name per choice set)."""
    field_class = _ENUM_FIELDS.get(component)
    if field_class is None:
        schema = {"type": "string", "enum": list(choices.values)}
        field_class = extend_schema_field(schema, component_name=component)(
            type(f"{component}Field", (serializers.ChoiceField,), {"__module__": __name__})
        )
        _ENUM_FIELDS[component] = field_class
    return field_class(choices=choices.choices, **kwargs)


# --- errors -----------------------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="Error")
class ErrorOutput(serializers.Serializer):
    """Every error response: a stable ``code``, a ``message`` for people, per-field ``errors`` and ``extra``
    details (such as the conflicting job)."""

    code = serializers.CharField(help_text="Stable error code, e.g. validation_error, job_conflict, invalid_state.")
    message = serializers.CharField()
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Messages by field path. Nested fields use dots and indexes: nodes[2].internal_ip. "
        "Errors about the request as a whole are under non_field_errors.",
    )
    extra = serializers.DictField(help_text="Details for programs, e.g. job_id of a conflicting job.")


# --- credentials ------------------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="CredentialCreate")
class CredentialCreateInput(serializers.Serializer):
    name = StrictCharField(max_length=100)
    username = StrictCharField(max_length=64, required=False)
    port = serializers.IntegerField(min_value=1, max_value=65535, required=False)
    become = StrictBooleanField(required=False)
    private_key = StrictCharField(
        max_length=MAX_KEY_TEXT,
        write_only=True,
        trim_whitespace=False,
        style={"base_template": "textarea.html"},
        help_text="OpenSSH or PEM private key. Write-only.",
    )
    passphrase = StrictCharField(
        max_length=1024,
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        help_text="Passphrase of the private key. Write-only.",
    )
    known_hosts = StrictCharField(max_length=MAX_KEY_TEXT, required=False, allow_blank=True, trim_whitespace=False)


@extend_schema_serializer(component_name="CredentialUpdate")
class CredentialUpdateInput(CredentialCreateInput):
    """Secrets that are omitted are kept; a new ``private_key`` replaces the passphrase (empty unless given)."""

    private_key = StrictCharField(
        max_length=MAX_KEY_TEXT,
        write_only=True,
        required=False,
        trim_whitespace=False,
        help_text="OpenSSH or PEM private key. Write-only; omit to keep the current key.",
    )


@extend_schema_serializer(component_name="Credential")
class CredentialOutput(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField()
    username = serializers.CharField()
    port = serializers.IntegerField()
    become = serializers.BooleanField()
    public_key_fingerprint = serializers.CharField(help_text="SHA256 fingerprint of the public key.")
    has_passphrase = serializers.BooleanField()
    known_hosts = serializers.CharField()
    cluster_count = serializers.IntegerField(help_text="Clusters using this credential.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


# --- nodes ------------------------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="NodeSpec")
class NodeInput(serializers.Serializer):
    hostname = StrictCharField(max_length=253, help_text="RFC 1123 host name; also the Kubernetes node name.")
    internal_ip = StrictCharField(max_length=64)
    external_ip = StrictCharField(max_length=64, required=False, allow_null=True, allow_blank=True)
    role = serializers.ChoiceField(
        choices=ROLE_CHOICES,
        required=False,
        allow_blank=True,
        help_text="initial_master, master or worker; server and agent are accepted as RKE2 types. Without any role, "
        "the first node becomes the initial master and the others workers.",
    )
    use_external_ip = StrictBooleanField(required=False)
    labels = serializers.ListField(child=StrictCharField(max_length=400), required=False, max_length=MAX_LIST_ITEMS)
    taints = serializers.ListField(child=StrictCharField(max_length=400), required=False, max_length=MAX_LIST_ITEMS)
    node_vars = RKE2ConfigField(required=False)


@extend_schema_serializer(component_name="Node")
class NodeOutput(serializers.Serializer):
    id = serializers.IntegerField()
    hostname = serializers.CharField()
    internal_ip = serializers.CharField()
    external_ip = serializers.CharField(allow_null=True)
    use_external_ip = serializers.BooleanField()
    ansible_ip = serializers.CharField(help_text="The address the portal connects to over SSH.")
    role = enum_field(NodeRole, "NodeRole")
    rke2_type = serializers.ChoiceField(choices=[("server", "server"), ("agent", "agent")])
    status = enum_field(NodeStatus, "NodeStatus")
    labels = serializers.ListField(child=serializers.CharField())
    taints = serializers.ListField(child=serializers.CharField())
    node_vars = RKE2ConfigField()
    installed_version = serializers.CharField()
    k8s_ready = serializers.BooleanField(
        allow_null=True, help_text="The node's Ready condition at the last health check (null: not read yet)."
    )
    kubelet_version = serializers.CharField(help_text="The kubelet version the node reported.")
    last_seen_at = serializers.DateTimeField(allow_null=True, help_text="The node's last heartbeat that was seen.")
    last_error = serializers.CharField()
    last_job = serializers.IntegerField(source="last_job_id", allow_null=True)
    install_started_at = serializers.DateTimeField(allow_null=True)
    install_finished_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


# --- clusters ---------------------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="ClusterUpdate")
class ClusterUpdateInput(serializers.Serializer):
    name = StrictCharField(max_length=63)
    description = StrictCharField(max_length=MAX_TEXT, required=False, allow_blank=True)
    rke2_version = StrictCharField(max_length=64, help_text="e.g. v1.31.4+rke2r1")
    registration_address = StrictCharField(max_length=253, required=False, allow_blank=True)
    cni = enum_field(Cni, "Cni", required=False)
    cluster_cidr = StrictCharField(max_length=100, required=False)
    service_cidr = StrictCharField(max_length=100, required=False)
    cluster_dns = StrictCharField(max_length=64, required=False)
    cluster_domain = StrictCharField(max_length=253, required=False)
    tls_san = serializers.ListField(child=StrictCharField(max_length=253), required=False, max_length=MAX_LIST_ITEMS)
    cluster_vars = RKE2ConfigField(required=False)
    prepare_firewall = serializers.BooleanField(
        required=False, help_text="Open exactly the RKE2 ports in an active firewalld, ufw or nftables (default true)."
    )
    prepare_network_manager = serializers.BooleanField(
        required=False, help_text="Keep NetworkManager off the CNI interfaces, disable nm-cloud-setup (default true)."
    )
    prepare_kernel = serializers.BooleanField(
        required=False, help_text="Load kernel modules and set kernel parameters (default true; off: only checked)."
    )
    ssh_credential = serializers.PrimaryKeyRelatedField(
        queryset=SSHCredential.objects.defer("private_key", "passphrase"),
        required=False,
        allow_null=True,
        help_text="Id of the SSH credential used to reach the hosts.",
    )


@extend_schema_serializer(component_name="ClusterCreate")
class ClusterCreateInput(ClusterUpdateInput):
    nodes = NodeInput(many=True, required=False, max_length=MAX_NODES_PER_REQUEST)


@extend_schema_serializer(component_name="Cluster")
class ClusterOutput(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.SerializerMethodField()
    name = serializers.CharField()
    description = serializers.CharField()
    rke2_version = serializers.CharField()
    registration_address = serializers.CharField()
    cni = enum_field(Cni, "Cni")
    cluster_cidr = serializers.CharField()
    service_cidr = serializers.CharField()
    cluster_dns = serializers.CharField()
    cluster_domain = serializers.CharField()
    tls_san = serializers.ListField(child=serializers.CharField())
    cluster_vars = RKE2ConfigField()
    prepare_firewall = serializers.BooleanField()
    prepare_network_manager = serializers.BooleanField()
    prepare_kernel = serializers.BooleanField()
    ssh_credential = serializers.IntegerField(source="ssh_credential_id", allow_null=True)
    status = enum_field(ClusterStatus, "ClusterStatus")
    installation_stage = enum_field(InstallationStage, "InstallationStage")
    bootstrapped_at = serializers.DateTimeField(allow_null=True)
    node_count = serializers.IntegerField(help_text="Live nodes (not removed or being removed).")
    server_count = serializers.IntegerField()
    agent_count = serializers.IntegerField()
    failed_node_count = serializers.IntegerField()
    has_kubeconfig = serializers.BooleanField()
    adoption_required = serializers.BooleanField(
        help_text="Imported and not adopted yet: run the adopt job before install, scale or upgrade jobs."
    )
    active_job = serializers.IntegerField(source="active_job_id", allow_null=True, help_text="Id of the active job.")
    health_summary = serializers.CharField(help_text="What the last health check or sync found.")
    health_checked_at = serializers.DateTimeField(allow_null=True, help_text="When (null: never).")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, cluster: Any) -> str:
        return _absolute(self.context, reverse("clusters-api:cluster-detail", args=[cluster.pk]))


@extend_schema_serializer(component_name="ClusterDetail")
class ClusterDetailOutput(ClusterOutput):
    nodes = NodeOutput(source="cluster_nodes.all", many=True)
    warnings = serializers.SerializerMethodField(
        help_text="Allowed but risky aspects of the definition (even number of servers, no registration address)."
    )

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_warnings(self, cluster: Any) -> list[str]:
        live = [node for node in cluster.cluster_nodes.all() if node.status in LIVE_NODE_STATUSES]
        return cluster_warnings(cluster, live)


# --- jobs -------------------------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="Job")
class JobOutput(serializers.Serializer):
    id = serializers.IntegerField()
    public_id = serializers.UUIDField()
    url = serializers.SerializerMethodField()
    cluster = serializers.IntegerField(source="cluster_id")
    cluster_name = serializers.CharField(source="cluster.name")
    kind = enum_field(JobKind, "JobKind")
    status = enum_field(JobStatus, "JobStatus")
    stages = serializers.ListField(child=serializers.CharField())
    stage = serializers.CharField()
    stages_completed = serializers.IntegerField()
    params = serializers.DictField()
    requested_by = serializers.CharField(source="requested_by.username", allow_null=True, default=None)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    cancel_requested = serializers.BooleanField()
    rc = serializers.IntegerField(allow_null=True)
    result = serializers.DictField()
    explanation = serializers.CharField()
    emitted_events = serializers.IntegerField()
    resume_of = serializers.IntegerField(source="resume_of_id", allow_null=True)

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, job: Any) -> str:
        return _absolute(self.context, reverse("clusters-api:job-detail", args=[job.pk]))


class EventsQueryInput(serializers.Serializer):
    after = serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False, default=0)
    limit = serializers.IntegerField(
        min_value=1, max_value=EVENTS_PAGE_MAX_LIMIT, required=False, default=EVENTS_PAGE_DEFAULT_LIMIT
    )
    host = serializers.CharField(
        max_length=255,
        required=False,
        default="",
        allow_blank=True,
        help_text="Only the events of this host (exact name).",
    )
    search = serializers.CharField(
        max_length=200,
        required=False,
        default="",
        allow_blank=True,
        trim_whitespace=False,
        help_text="Only the events whose output or task contains this text (case-insensitive).",
    )


class RelaunchInput(serializers.Serializer):
    confirm = serializers.CharField(
        max_length=63,
        required=False,
        default="",
        allow_blank=True,
        help_text="Relaunching an uninstall: the cluster's name, typed again.",
    )


class StdoutQueryInput(serializers.Serializer):
    ansi = serializers.BooleanField(required=False, default=False)


@extend_schema_serializer(component_name="JobEvent")
class _EventOutput(serializers.Serializer):
    counter = serializers.IntegerField()
    event = serializers.CharField()
    stage = serializers.CharField()
    host_name = serializers.CharField()
    task = serializers.CharField()
    stdout = serializers.CharField()
    failed = serializers.BooleanField()
    changed = serializers.BooleanField()
    created = serializers.DateTimeField(allow_null=True)


@extend_schema_serializer(component_name="HostCounts")
class _HostCountsOutput(serializers.Serializer):
    ok = serializers.IntegerField()
    changed = serializers.IntegerField()
    failed = serializers.IntegerField()
    unreachable = serializers.IntegerField()


@extend_schema_serializer(component_name="JobProgress")
class _JobStateOutput(serializers.Serializer):
    id = serializers.IntegerField()
    status = enum_field(JobStatus, "JobStatus")
    stage = serializers.CharField()
    stages = serializers.ListField(child=serializers.CharField())
    stages_completed = serializers.IntegerField()
    explanation = serializers.CharField()
    host_counts = _HostCountsOutput()


@extend_schema_serializer(component_name="JobEventsPage")
class EventsPageOutput(serializers.Serializer):
    """Documentation of the events page; the selector builds the data itself."""

    results = _EventOutput(many=True)
    next_after = serializers.IntegerField(help_text="Counter of the last event returned, or `after` when none.")
    finished = serializers.BooleanField(help_text="The job is over and every event it emitted is stored.")
    job = _JobStateOutput()


# --- job requests -----------------------------------------------------------------------------------------------


class _JobOptions(serializers.Serializer):
    """Options any job accepts."""

    workers_batch = serializers.RegexField(
        r"^(?:(?:100|[1-9][0-9]?)%|[1-9][0-9]{0,3})$",
        required=False,
        max_length=5,
        help_text="How many workers are changed at a time: a count (1-9999) or a percentage (1%-100%).",
    )
    drain_timeout = serializers.IntegerField(
        min_value=0, max_value=MAX_DRAIN_TIMEOUT, required=False, help_text="Seconds to wait for a node to drain."
    )

    def to_params(self) -> dict[str, Any]:
        params = dict(self.validated_data)
        batch = params.get("workers_batch")
        if isinstance(batch, str) and not batch.endswith("%"):
            params["workers_batch"] = int(batch)
        return params


@extend_schema_serializer(component_name="JobOptions")
class PreflightInput(_JobOptions):
    pass


@extend_schema_serializer(component_name="Install")
class InstallInput(_JobOptions):
    resume = StrictBooleanField(
        required=False, default=False, help_text="Resume the last failed install at the stage where it stopped."
    )
    check_reachability = StrictBooleanField(
        required=False,
        default=True,
        help_text="Prepare the hosts and check that every pair of nodes reaches the other on RKE2's ports first.",
    )


@extend_schema_serializer(component_name="Upgrade")
class UpgradeInput(_JobOptions):
    target_version = StrictCharField(max_length=64, help_text="e.g. v1.32.1+rke2r1")
    allow_downgrade = StrictBooleanField(required=False, default=False)
    allow_minor_skip = StrictBooleanField(required=False, default=False)
    snapshot = StrictBooleanField(
        required=False, default=True, help_text="Take an etcd snapshot on every server before the upgrade."
    )


@extend_schema_serializer(component_name="Uninstall")
class UninstallInput(_JobOptions):
    confirm = StrictCharField(max_length=63, help_text="The cluster's name, to confirm.")


@extend_schema_serializer(component_name="ScaleOut")
class ScaleOutInput(_JobOptions):
    nodes = NodeInput(many=True, min_length=1, max_length=MAX_NODES_PER_REQUEST)
    check_reachability = StrictBooleanField(
        required=False,
        default=True,
        help_text="Prepare the new hosts and check that every pair of nodes reaches the other on RKE2's ports first.",
    )

    def to_params(self) -> dict[str, Any]:
        params = super().to_params()
        params.pop("nodes", None)
        return params


@extend_schema_serializer(component_name="ScaleIn")
class ScaleInInput(_JobOptions):
    hostnames = serializers.ListField(
        child=StrictCharField(max_length=253), min_length=1, max_length=MAX_NODES_PER_REQUEST
    )
    ungraceful = StrictBooleanField(
        required=False,
        default=False,
        help_text="The hosts are gone: remove the nodes from Kubernetes without draining.",
    )
    snapshot = StrictBooleanField(
        required=False,
        default=True,
        help_text="Take an etcd snapshot on every server before a server is removed.",
    )

    def to_params(self) -> dict[str, Any]:
        params = super().to_params()
        params.pop("hostnames", None)
        return params


@extend_schema_serializer(component_name="ScaleOutResult")
class ScaleOutOutput(serializers.Serializer):
    nodes = NodeOutput(many=True)
    job = JobOutput()


@extend_schema_serializer(component_name="ScaleInResult")
class ScaleInOutput(serializers.Serializer):
    nodes = NodeOutput(many=True)
    job = JobOutput(allow_null=True, help_text="Null when every node was removed at once (none was installed).")


# --- previews ---------------------------------------------------------------------------------------------------


class InventoryQueryInput(serializers.Serializer):
    stage = serializers.ChoiceField(
        choices=list(STAGES), required=False, help_text="Only this stage (default: every install stage)."
    )


@extend_schema_serializer(component_name="ClusterPreview")
class ClusterPreviewOutput(serializers.Serializer):
    inventories = serializers.DictField(
        child=serializers.CharField(), help_text="Inventory YAML by stage; secrets are never in an inventory."
    )
    configs = serializers.DictField(
        child=serializers.CharField(),
        help_text="RKE2 config.yaml by host name, for the nodes the stages act on; the token is masked.",
    )
    stage_hosts = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), help_text="Hosts each stage acts on, in order."
    )
    registries = serializers.CharField(
        help_text="/etc/rancher/rke2/registries.yaml of every node; credentials are masked. Empty: no registry."
    )


@extend_schema_serializer(component_name="NodeConfigPreview")
class NodeConfigPreviewOutput(serializers.Serializer):
    hostname = serializers.CharField()
    config = serializers.CharField(help_text="The node's RKE2 config.yaml; the token is masked.")


class _ConfigDifferenceOutput(serializers.Serializer):
    key = serializers.CharField()
    change = serializers.ChoiceField(
        choices=["changed", "added", "removed"],
        help_text="changed: the portal would write another value; added: only the portal sets it; removed: the "
        "portal would drop it.",
    )
    running = serializers.JSONField(allow_null=True, help_text="What the node runs with (secrets masked).")
    portal = serializers.JSONField(allow_null=True, help_text="What the portal would write (secrets masked).")


class _NodeDifferencesOutput(serializers.Serializer):
    hostname = serializers.CharField()
    read = serializers.BooleanField(help_text="Whether an adopt job has read this node.")
    differences = _ConfigDifferenceOutput(many=True)


@extend_schema_serializer(component_name="Adoption")
class AdoptionOutput(serializers.Serializer):
    adoption_required = serializers.BooleanField(
        help_text="Imported and not adopted yet: install, scale and upgrade jobs are refused."
    )
    report = serializers.JSONField(help_text="What the last adopt job found and changed.")
    nodes = _NodeDifferencesOutput(many=True)


def _absolute(context: dict[str, Any], path: str) -> str:
    request = context.get("request")
    return request.build_absolute_uri(path) if request is not None else path
