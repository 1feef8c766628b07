"""The cluster domain: clusters, their nodes, SSH credentials, jobs and job events."""

from __future__ import annotations

import ipaddress
import secrets
import uuid

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from knox.models import AbstractAuthToken

from . import validators
from .choices import (
    ACTIVE_JOB_STATUSES,
    SERVER_ROLES,
    ClusterStatus,
    Cni,
    EtcdSnapshotKind,
    InstallationStage,
    JobKind,
    JobStatus,
    NodeRole,
    NodeStatus,
    WebhookDeliveryStatus,
)
from .fields import EncryptedTextField, reveal

# Values that must be identical on every server of a cluster; RKE2 refuses a join when they differ
# ("critical configuration value mismatch"), so they are frozen once the first server has bootstrapped.
CRITICAL_FIELDS = ("cni", "cluster_cidr", "service_cidr", "cluster_dns", "cluster_domain")


EXTERNAL_IP_REQUIRED = "Using the external IP requires an external IP."


def generate_cluster_token() -> str:
    """A fresh cluster join token: 48 random hexadecimal characters (192 bits)."""
    return secrets.token_hex(24)


class SSHCredential(models.Model):
    """How the portal logs in to a cluster's hosts: user, port, private key, and whether to become root."""

    name = models.CharField(max_length=100, unique=True)
    username = models.CharField(max_length=32, default="root", validators=[validators.validate_unix_username])
    port = models.PositiveIntegerField(default=22, validators=[MinValueValidator(1), MaxValueValidator(65535)])
    become = models.BooleanField(default=False, help_text="Use sudo to become root on the hosts.")
    private_key = EncryptedTextField(help_text="OpenSSH or PEM private key. Stored encrypted; never shown again.")
    passphrase = EncryptedTextField(blank=True, default="", help_text="Passphrase of the private key, if any.")
    public_key_fingerprint = models.CharField(max_length=100, blank=True, editable=False)
    known_hosts = models.TextField(
        blank=True,
        help_text="known_hosts lines for the cluster's hosts. When empty, new host keys are accepted on first "
        "connection and checked afterwards.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "SSH credential"
        constraints = [
            models.CheckConstraint(
                condition=Q(port__gte=1) & Q(port__lte=65535),
                name="%(app_label)s_%(class)s_port_range",
                violation_error_message="The SSH port must be between 1 and 65535.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.username})"

    def __repr__(self) -> str:
        return f"<SSHCredential {self.pk}: {self.name}>"

    def clean(self) -> None:
        super().clean()
        from .sshkeys import KeyError_, known_hosts_problems, load_private_key, normalize_private_key

        errors: dict[str, list[str]] = {}
        problems = known_hosts_problems(self.known_hosts or "")
        if problems:
            errors["known_hosts"] = problems
        key_text = reveal(self.private_key)
        if key_text != "":  # when empty, the field itself reports that it is required
            try:
                self.public_key_fingerprint = load_private_key(key_text, reveal(self.passphrase))
            except KeyError_ as exc:
                errors.setdefault(exc.field, []).append(exc.message)
            else:
                self.private_key = normalize_private_key(key_text)
        if errors:
            raise ValidationError(errors)


class Cluster(models.Model):
    """An RKE2 cluster: its pinned version, network settings, join token and the hosts it runs on."""

    name = models.CharField(max_length=63, unique=True, validators=[validators.validate_dns_label])
    description = models.TextField(blank=True)
    rke2_version = models.CharField(
        "RKE2 version", max_length=64, validators=[validators.validate_rke2_version], help_text="e.g. v1.31.4+rke2r1"
    )
    registration_address = models.CharField(
        max_length=253,
        blank=True,
        validators=[validators.validate_address],
        help_text="Fixed registration address (VIP, load balancer or DNS name). Empty: the initial master's address.",
    )
    cni = models.CharField("CNI", max_length=20, choices=Cni.choices, default=Cni.CANAL)
    cluster_cidr = models.CharField(
        "cluster CIDR", max_length=100, default="10.42.0.0/16", validators=[validators.validate_cidr]
    )
    service_cidr = models.CharField(
        "service CIDR", max_length=100, default="10.43.0.0/16", validators=[validators.validate_cidr]
    )
    cluster_dns = models.GenericIPAddressField("cluster DNS", default="10.43.0.10")
    cluster_domain = models.CharField(
        max_length=253, default="cluster.local", validators=[validators.validate_hostname]
    )
    tls_san = models.JSONField(
        "TLS SANs", default=list, blank=True, help_text="Extra names and addresses for the API certificate."
    )
    token = EncryptedTextField(default=generate_cluster_token, editable=False)
    kubeconfig = EncryptedTextField(blank=True, default="", editable=False)
    installation_stage = models.CharField(
        max_length=20, choices=InstallationStage.choices, default=InstallationStage.NOT_STARTED
    )
    status = models.CharField(max_length=20, choices=ClusterStatus.choices, default=ClusterStatus.NEW)
    bootstrapped_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="When the first server started; critical values are frozen from then on.",
    )
    cluster_vars = models.JSONField(
        "extra RKE2 config",
        default=dict,
        blank=True,
        validators=[validators.validate_rke2_config],
        help_text="Extra RKE2 config.yaml keys for every node (node values win).",
    )
    ssh_credential = models.ForeignKey(
        SSHCredential,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="clusters",
        verbose_name="SSH credential",
    )
    adoption_required = models.BooleanField(
        default=False,
        editable=False,
        help_text="Imported and not adopted yet: jobs that rewrite the configuration or restart RKE2 are refused "
        "until an adopt job has read what runs on the nodes.",
    )
    adoption_report = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="What the last adopt job found on each node (version, install method, data-dir, kept keys).",
    )
    health_checked_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When a health check or sync last read the nodes."
    )
    health_summary = models.CharField(
        max_length=1000,
        blank=True,
        editable=False,
        help_text="What the last health check found: nodes Ready, or the NotReady nodes and version drift.",
    )
    prepare_firewall = models.BooleanField(
        "open the RKE2 ports in the host firewall",
        default=True,
        help_text="When firewalld, ufw or an nftables ruleset is active on a node, open exactly the ports RKE2 needs "
        "for the node's type and the CNI (removed again by uninstall).",
    )
    prepare_network_manager = models.BooleanField(
        "keep NetworkManager off the CNI interfaces",
        default=True,
        help_text="Where NetworkManager is installed, mark the CNI's interfaces unmanaged and disable nm-cloud-setup.",
    )
    prepare_kernel = models.BooleanField(
        "load kernel modules and set kernel parameters",
        default=True,
        help_text="Load the kernel modules RKE2 needs and, with a CIS profile, write and apply its kernel parameters; "
        "off: only check them and name what is missing.",
    )
    etcd_snapshot_interval_minutes = models.PositiveIntegerField(
        "etcd snapshot interval (minutes)",
        default=0,
        validators=[MaxValueValidator(60 * 24 * 31)],
        help_text="Take a scheduled etcd snapshot on every server this often; 0: no scheduled snapshots.",
    )
    etcd_snapshot_retention = models.PositiveIntegerField(
        "scheduled etcd snapshots kept",
        default=5,
        validators=[MaxValueValidator(1000)],
        help_text="How many scheduled snapshots each server keeps (older ones are pruned after each one); 0: all.",
    )
    etcd_snapshot_last_scheduled_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the last scheduled snapshot job was requested."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("download_kubeconfig", "Can download the cluster's kubeconfig")]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Cluster {self.pk}: {self.name}>"

    @property
    def is_bootstrapped(self) -> bool:
        return self.bootstrapped_at is not None

    def clean(self) -> None:
        super().clean()
        errors: dict[str, list[str]] = {}

        def error(field: str, message: str) -> None:
            errors.setdefault(field, []).append(message)

        if not isinstance(self.tls_san, list) or not all(isinstance(item, str) for item in self.tls_san):
            error("tls_san", "Enter a list of DNS names or IP addresses.")
        else:
            for item in self.tls_san:
                try:
                    validators.validate_address(item)
                except ValidationError as exc:
                    zone = exc.code == "ipv6_zone"
                    error("tls_san", exc.messages[0] if zone else f"{item!r} is not an IP address or DNS name.")
        cluster_nets = _networks_or_none(self.cluster_cidr)
        service_nets = _networks_or_none(self.service_cidr)
        if cluster_nets is not None:
            self.cluster_cidr = ",".join(str(net) for net in cluster_nets)
        if service_nets is not None:
            self.service_cidr = ",".join(str(net) for net in service_nets)
            for snet in service_nets:
                # The API server refuses larger service ranges (it allocates a bitmap of the whole range).
                limit = 12 if snet.version == 4 else 108
                if snet.prefixlen < limit:
                    error("service_cidr", f"The service CIDR {snet} is too large: use a prefix of /{limit} or longer.")
        if cluster_nets is not None and service_nets is not None:
            for cnet in cluster_nets:
                for snet in service_nets:
                    if cnet.version == snet.version and cnet.overlaps(snet):
                        error("service_cidr", f"The service CIDR {snet} overlaps the cluster CIDR {cnet}.")
        if (
            service_nets is not None
            and isinstance(self.cluster_dns, str)
            and validators.is_ip_address(self.cluster_dns)
        ):
            dns = ipaddress.ip_address(self.cluster_dns)
            home = next((net for net in service_nets if net.version == dns.version and dns in net), None)
            if home is None:
                error(
                    "cluster_dns",
                    f"The cluster DNS address {dns} must lie inside the service CIDR ({self.service_cidr}).",
                )
            elif home.num_addresses > 2 and dns in (home.network_address, home.broadcast_address):
                error("cluster_dns", f"The cluster DNS address {dns} is the network or broadcast address of {home}.")
        if self.pk and self.is_bootstrapped:
            self._check_frozen_values(error)
        if errors:
            raise ValidationError(errors)

    def _check_frozen_values(self, error) -> None:  # type: ignore[no-untyped-def]
        stored = Cluster.objects.filter(pk=self.pk).values(*CRITICAL_FIELDS, "cluster_vars").first()
        if not stored:
            return
        frozen = "This value must match on every server and cannot change once the cluster is installed."
        for field in CRITICAL_FIELDS:
            before, after = str(stored[field]), str(getattr(self, field))
            if field in ("cluster_cidr", "service_cidr"):
                before, after = _canonical_cidrs(before), _canonical_cidrs(after)
            elif field == "cluster_dns":
                before, after = _canonical_ip(before), _canonical_ip(after)
            if before != after:
                error(field, f"{frozen} It is {stored[field]}.")
        before_vars = validators.critical_config(stored["cluster_vars"])
        after_vars = validators.critical_config(self.cluster_vars)
        if before_vars != after_vars:
            keys = ", ".join(sorted(set(before_vars) | set(after_vars)))
            error("cluster_vars", f"{keys}: {frozen}")


def _networks_or_none(value: object) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
    """The networks of a CIDR field value, or None when the value is malformed (its field validator reports it)."""
    try:
        validators.validate_cidr(value)  # type: ignore[arg-type]
    except ValidationError:
        return None
    return validators.parse_cidrs(value)  # type: ignore[arg-type]


def _canonical_cidrs(value: str) -> str:
    try:
        return validators.normalize_cidrs(value)
    except ValueError:
        return value


def _canonical_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


class Node(models.Model):
    """A host of a cluster and the role it plays in it."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="cluster_nodes")
    hostname = models.CharField(
        max_length=253, validators=[validators.validate_hostname], help_text="Also the Kubernetes node name."
    )
    internal_ip = models.GenericIPAddressField("internal IP")
    external_ip = models.GenericIPAddressField("external IP", null=True, blank=True)
    role = models.CharField(max_length=20, choices=NodeRole.choices, default=NodeRole.WORKER)
    status = models.CharField(max_length=20, choices=NodeStatus.choices, default=NodeStatus.PENDING)
    use_external_ip = models.BooleanField(
        "use external IP", default=False, help_text="Connect over SSH to the external IP instead of the internal one."
    )
    labels = models.JSONField(default=list, blank=True, help_text="Kubernetes labels (key=value) set at registration.")
    taints = models.JSONField(
        default=list, blank=True, help_text="Kubernetes taints (key=value:Effect) set at registration."
    )
    node_vars = models.JSONField(
        "extra RKE2 config",
        default=dict,
        blank=True,
        validators=[validators.validate_rke2_config],
        help_text="Extra RKE2 config.yaml keys for this node; they win over the cluster's.",
    )
    install_started_at = models.DateTimeField(null=True, blank=True, editable=False)
    install_finished_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    last_job = models.ForeignKey(
        "Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    installed_version = models.CharField(max_length=64, blank=True, editable=False)
    running_config = EncryptedTextField(
        blank=True,
        default="",
        editable=False,
        help_text="The RKE2 config files an adopt job read on the node (JSON: file name to mapping). Encrypted.",
    )
    kept_config = EncryptedTextField(
        blank=True,
        default="",
        editable=False,
        help_text="Keys of the node's config.yaml the portal does not manage, kept on every render (JSON). Encrypted.",
    )
    k8s_ready = models.BooleanField(
        "Ready", null=True, blank=True, editable=False, help_text="The node's Ready condition at the last health check."
    )
    kubelet_version = models.CharField(
        max_length=64, blank=True, editable=False, help_text="The kubelet version the node reported."
    )
    last_seen_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="The node's last heartbeat to Kubernetes that was seen."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        # By column, not by the cluster relation: ordering by a relation would join the cluster table into every
        # node query to sort by its name.
        ordering = ["cluster_id", "pk"]
        constraints = [
            # A removed node no longer occupies its name or address, so a host can be rebuilt and re-added.
            models.UniqueConstraint(
                fields=["cluster", "hostname"],
                condition=~Q(status=NodeStatus.REMOVED),
                name="%(app_label)s_%(class)s_unique_hostname",
                violation_error_message="A node with this host name already exists in this cluster.",
            ),
            models.UniqueConstraint(
                fields=["cluster", "internal_ip"],
                condition=~Q(status=NodeStatus.REMOVED),
                name="%(app_label)s_%(class)s_unique_internal_ip",
                violation_error_message="A node with this internal IP already exists in this cluster.",
            ),
            models.UniqueConstraint(
                fields=["cluster"],
                condition=Q(role=NodeRole.INITIAL_MASTER) & ~Q(status=NodeStatus.REMOVED),
                name="%(app_label)s_%(class)s_one_initial_master",
                violation_error_message="A cluster has at most one initial master.",
            ),
            models.CheckConstraint(
                condition=Q(use_external_ip=False) | Q(external_ip__isnull=False),
                name="%(app_label)s_%(class)s_external_ip_when_used",
                violation_error_message=EXTERNAL_IP_REQUIRED,
            ),
        ]
        indexes = [models.Index(fields=["cluster", "status"], name="clusters_node_cluster_status")]

    def __str__(self) -> str:
        return self.hostname

    def __repr__(self) -> str:
        return f"<Node {self.pk}: {self.hostname} ({self.role})>"

    @property
    def ansible_ip(self) -> str:
        """The address Ansible connects to."""
        if self.use_external_ip and self.external_ip:
            return self.external_ip
        return self.internal_ip

    @property
    def is_server(self) -> bool:
        return self.role in SERVER_ROLES

    @property
    def rke2_type(self) -> str:
        return "server" if self.is_server else "agent"

    def validate_constraints(self, exclude=None) -> None:  # type: ignore[no-untyped-def]
        # clean() reports the external-IP rule against the external_ip field; drop the constraint's duplicate.
        try:
            super().validate_constraints(exclude=exclude)
        except ValidationError as exc:
            errors = exc.update_error_dict({})
            kept = [error for error in errors.get(NON_FIELD_ERRORS, []) if error.messages != [EXTERNAL_IP_REQUIRED]]
            if kept:
                errors[NON_FIELD_ERRORS] = kept
            else:
                errors.pop(NON_FIELD_ERRORS, None)
            if errors:
                raise ValidationError(errors) from None

    def clean(self) -> None:
        super().clean()
        errors: dict[str, list[str]] = {}
        if self.use_external_ip and not self.external_ip:
            errors.setdefault("external_ip", []).append(EXTERNAL_IP_REQUIRED)
        critical = validators.critical_config(self.node_vars)
        if critical:
            errors.setdefault("node_vars", []).append(
                f"{', '.join(sorted(critical))}: must be the same on every server; set it in the cluster's extra "
                "RKE2 config instead."
            )
        for field, validator in (
            ("labels", validators.validate_node_label),
            ("taints", validators.validate_node_taint),
        ):
            value = getattr(self, field)
            if not isinstance(value, list):
                errors.setdefault(field, []).append("Enter a list.")
                continue
            for item in value:
                try:
                    validator(item if isinstance(item, str) else repr(item))
                except ValidationError as exc:
                    errors.setdefault(field, []).extend(exc.messages)
        if errors:
            raise ValidationError(errors)


class Job(models.Model):
    """One requested operation on a cluster (install, scale, upgrade, ...), run by a worker as ordered stages."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=20, choices=JobKind.choices)
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.PENDING)
    stages = models.JSONField(default=list, blank=True, help_text="Planned stages, in order.")
    stage = models.CharField(max_length=40, blank=True, help_text="The stage running now, or the last one that ran.")
    stages_completed = models.PositiveIntegerField(default=0)
    params = models.JSONField(default=dict, blank=True, help_text="Non-secret parameters of the request.")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    celery_task_id = models.CharField(max_length=255, blank=True)
    worker_hostname = models.CharField(max_length=255, blank=True)
    worker_pid = models.PositiveIntegerField(null=True, blank=True)
    ansible_pid = models.PositiveIntegerField(null=True, blank=True)
    worker_process = models.CharField(
        max_length=160, blank=True, help_text="The worker process: host (boot and pid namespace), pid, start time."
    )
    dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text="When the job's message was handed to the task queue."
    )
    timeout_seconds = models.PositiveIntegerField(default=0, help_text="0: the configured default.")
    idle_timeout_seconds = models.PositiveIntegerField(default=0, help_text="0: the configured default.")
    rc = models.IntegerField(null=True, blank=True)
    result = models.JSONField(default=dict, blank=True, help_text="Summary: per-host counts, facts reported back.")
    explanation = models.TextField(blank=True, help_text="Why the job ended as it did, in words.")
    emitted_events = models.PositiveIntegerField(default=0)
    resume_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["cluster"],
                condition=Q(status__in=ACTIVE_JOB_STATUSES),
                name="%(app_label)s_%(class)s_one_active_per_cluster",
                violation_error_message="The cluster already has an active job.",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="clusters_job_status_heartbeat"),
            models.Index(fields=["cluster", "-created_at"], name="clusters_job_cluster_created"),
            # The job lists (API and admin) show the newest first: read in index order, never sorted whole.
            models.Index(fields=["-created_at", "-id"], name="clusters_job_created"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    def __repr__(self) -> str:
        return f"<Job {self.pk}: {self.kind} {self.status}>"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_JOB_STATUSES


class JobEvent(models.Model):
    """One Ansible event of a job, as emitted by ansible-runner, in order of ``counter``."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    counter = models.PositiveIntegerField()
    stage = models.CharField(max_length=40, blank=True)
    uuid = models.CharField(max_length=64, blank=True)
    parent_uuid = models.CharField(max_length=64, blank=True)
    event = models.CharField(max_length=100)
    host_name = models.CharField(max_length=255, blank=True)
    play = models.CharField(max_length=1024, blank=True)
    role = models.CharField(max_length=1024, blank=True)
    task = models.CharField(max_length=1024, blank=True)
    task_action = models.CharField(max_length=128, blank=True)
    stdout = models.TextField(blank=True)
    start_line = models.PositiveIntegerField(default=0)
    end_line = models.PositiveIntegerField(default=0)
    event_data = models.JSONField(default=dict, blank=True)
    failed = models.BooleanField(default=False)
    changed = models.BooleanField(default=False)
    created = models.DateTimeField(null=True, blank=True, help_text="When Ansible emitted the event.")
    ingested_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job_id", "counter"]
        constraints = [
            models.UniqueConstraint(fields=["job", "counter"], name="%(app_label)s_%(class)s_unique_counter"),
        ]
        indexes = [models.Index(fields=["job", "host_name"], name="clusters_jobevent_job_host")]

    def __str__(self) -> str:
        return f"{self.event} #{self.counter}"


class JobHostSummary(models.Model):
    """Per-host totals of a job's playbook runs, from Ansible's stats events."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="host_summaries")
    host_name = models.CharField(max_length=255)
    ok = models.PositiveIntegerField(default=0)
    changed = models.PositiveIntegerField(default=0)
    dark = models.PositiveIntegerField("unreachable", default=0)
    failures = models.PositiveIntegerField(default=0)
    ignored = models.PositiveIntegerField(default=0)
    rescued = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    processed = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["job_id", "host_name"]
        verbose_name_plural = "job host summaries"
        constraints = [
            models.UniqueConstraint(fields=["job", "host_name"], name="%(app_label)s_%(class)s_unique_host"),
        ]

    def __str__(self) -> str:
        return f"{self.host_name}: ok={self.ok} changed={self.changed} failed={self.failures} unreachable={self.dark}"

    @property
    def failed(self) -> bool:
        return bool(self.failures or self.dark)


class EtcdSnapshot(models.Model):
    """An etcd snapshot file on one server of a cluster, as the last snapshot job listed it there."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="etcd_snapshots")
    node = models.ForeignKey(
        Node, on_delete=models.SET_NULL, null=True, blank=True, related_name="etcd_snapshots", editable=False
    )
    node_name = models.CharField(max_length=255, help_text="The server holding the file (its inventory name).")
    name = models.CharField(max_length=255)
    path = models.CharField(max_length=1024)
    size = models.BigIntegerField(default=0, help_text="Bytes.")
    created = models.DateTimeField(null=True, blank=True, help_text="When RKE2 wrote the snapshot.")
    kind = models.CharField(max_length=20, choices=EtcdSnapshotKind.choices, default=EtcdSnapshotKind.ON_DEMAND)
    job = models.ForeignKey(
        "Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="etcd_snapshots", editable=False
    )
    listed_at = models.DateTimeField(auto_now=True, help_text="When a job last saw the file.")

    class Meta:
        ordering = ["-created", "node_name", "name"]
        verbose_name = "etcd snapshot"
        permissions = [("restore_etcdsnapshot", "Can restore a cluster's etcd from a snapshot")]
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "node_name", "name"], name="%(app_label)s_%(class)s_unique_name_per_server"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} on {self.node_name}"


class AuditLog(models.Model):
    """Who did what to which cluster: job requests, cancels, kubeconfig downloads, credential changes."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    action = models.CharField(max_length=64)
    cluster = models.ForeignKey(Cluster, on_delete=models.SET_NULL, null=True, blank=True, related_name="audit_entries")
    object_repr = models.CharField(max_length=255, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"
        # The log filtered by action (the API's action and action_prefix), newest first, without reading it all.
        indexes = [models.Index(fields=["action", "-created_at"], name="clusters_audit_action_created")]

    def __str__(self) -> str:
        when = f"{self.created_at:%Y-%m-%d %H:%M:%S} " if self.created_at else ""
        return f"{when}{self.action} {self.object_repr}".strip()


class HostKey(models.Model):
    """The SSH host keys a host presented the first time a job reached it (trust on first use).

    One row per address and port, the way ``known_hosts`` identifies a host. Every later job checks that the host
    still presents one of these keys before Ansible connects; a changed key fails the job until an operator
    clears the row (then the next job accepts whatever key the host presents).
    """

    address = models.CharField(max_length=253)
    port = models.PositiveIntegerField(default=22, validators=[MinValueValidator(1), MaxValueValidator(65535)])
    public_keys = models.TextField(help_text="One key a line: type and base64 data, as in known_hosts.")
    hostname = models.CharField(max_length=253, blank=True, help_text="The node's name when its key was accepted.")
    cluster = models.ForeignKey(
        Cluster,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="host_keys",
        help_text="The cluster of the job that first reached the host.",
    )
    accepted_by_job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["address", "port"]
        verbose_name = "SSH host key"
        constraints = [
            models.UniqueConstraint(
                fields=["address", "port"],
                name="%(app_label)s_%(class)s_unique_host",
                violation_error_message="Host keys for this address and port are already stored.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.address}:{self.port}" + (f" ({self.hostname})" if self.hostname else "")

    @property
    def keys(self) -> list[tuple[str, str]]:
        """(key type, base64 data) of each stored key."""
        return [tuple(line.split()[:2]) for line in self.public_keys.splitlines() if len(line.split()) >= 2]  # type: ignore[misc]


class APIToken(AbstractAuthToken):
    """A personal API token (django-rest-knox): only a SHA-512 hash of it is stored; it has a name and an expiry.

    The plaintext is shown once, when the token is created. Revoking a token deletes its row.
    """

    id = models.BigAutoField(primary_key=True)
    digest = models.CharField(max_length=128, unique=True, editable=False)
    name = models.CharField(max_length=100)
    expiry = models.DateTimeField()

    class Meta:
        ordering = ["-created", "-pk"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.token_key}…)"

    def __repr__(self) -> str:
        return f"<APIToken {self.pk}: {self.name}>"


def webhook_url_problem(url: str) -> str:
    """Why ``url`` cannot receive webhooks (empty when it can): http(s) with a host, no credentials, no fragment."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "Enter a valid http:// or https:// URL."
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "Enter an http:// or https:// URL with a host name."
    if parts.username or parts.password:
        return "Put no user name or password in the URL: the signature authenticates the portal."
    if parts.fragment:
        return "Remove the #fragment: it is never sent to the server."
    return ""


class Webhook(models.Model):
    """A URL told when a job ends: a signed JSON POST per finished job, for every cluster or for one.

    The body is signed with HMAC-SHA256 under ``secret`` (stored encrypted); see ``clusters.services.webhooks``.
    """

    name = models.CharField(max_length=100, unique=True)
    url = models.URLField("URL", max_length=2000, help_text="http:// or https:// address that receives the POST.")
    secret = EncryptedTextField(
        help_text="Shared secret of the HMAC-SHA256 signature (at least 16 characters). Stored encrypted; never "
        "shown again."
    )
    cluster = models.ForeignKey(
        Cluster,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="webhooks",
        help_text="Only this cluster's jobs. Empty: the jobs of every cluster.",
    )
    enabled = models.BooleanField(default=True)
    notify_successful = models.BooleanField("jobs that succeed", default=True)
    notify_failed = models.BooleanField("jobs that fail", default=True)
    notify_canceled = models.BooleanField("jobs that are canceled", default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Webhook {self.pk}: {self.name}>"

    def clean(self) -> None:
        super().clean()
        errors: dict[str, list[str]] = {}
        problem = webhook_url_problem(self.url or "")
        if problem:
            errors["url"] = [problem]
        secret = reveal(self.secret)
        if secret and len(secret) < 16:
            errors["secret"] = ["Use a secret of at least 16 characters."]
        if not (self.notify_successful or self.notify_failed or self.notify_canceled):
            errors["notify_failed"] = ["Choose at least one kind of job end to notify."]
        if errors:
            raise ValidationError(errors)


class WebhookDelivery(models.Model):
    """One notification of one job to one webhook, with its attempts' outcome (the delivery log)."""

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="webhook_deliveries")
    event = models.CharField(max_length=40, help_text="job.successful, job.failed or job.canceled.")
    payload = models.JSONField(default=dict, help_text="The JSON body sent (secrets masked).")
    status = models.CharField(
        max_length=20, choices=WebhookDeliveryStatus.choices, default=WebhookDeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    response_code = models.PositiveIntegerField(null=True, blank=True, help_text="HTTP status of the last attempt.")
    response_body = models.TextField(blank=True, help_text="The start of the last response's body.")
    error = models.TextField(blank=True, help_text="Why the last attempt failed.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["webhook", "job"], name="%(app_label)s_%(class)s_once_per_job"),
        ]

    def __str__(self) -> str:
        return f"{self.event} of job #{self.job_id} to {self.webhook_id} ({self.status})"


class Registry(models.Model):
    """A container registry the nodes of a cluster pull through: its mirror endpoints and its credentials and TLS
    settings, rendered to RKE2's ``/etc/rancher/rke2/registries.yaml`` (see ``clusters.registries``).

    ``password``, ``auth`` and ``identity_token`` are stored encrypted and never shown again."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="registries")
    name = models.CharField(
        "registry",
        max_length=260,
        help_text="Registry host as images name it (docker.io, registry.example.com:5000), or * for every registry.",
    )
    endpoints = models.JSONField(
        default=list,
        blank=True,
        help_text="Mirror endpoints (http:// or https:// URLs), tried in order. Empty: no mirror, only the "
        "credentials and TLS settings below.",
    )
    rewrite = models.JSONField(
        default=dict, blank=True, help_text="Image path rewrites for the mirror: regular expression to replacement."
    )
    username = models.CharField(max_length=255, blank=True)
    password = EncryptedTextField(blank=True, default="", help_text="Stored encrypted; never shown again.")
    auth = EncryptedTextField(
        blank=True, default="", help_text="base64 of username:password, instead of both. Stored encrypted."
    )
    identity_token = EncryptedTextField(
        blank=True, default="", help_text="OAuth identity (refresh) token, instead of a password. Stored encrypted."
    )
    ca_file = models.CharField("CA file", max_length=1024, blank=True, help_text="Path on the nodes.")
    cert_file = models.CharField("client certificate file", max_length=1024, blank=True, help_text="Path on the nodes.")
    key_file = models.CharField("client key file", max_length=1024, blank=True, help_text="Path on the nodes.")
    insecure_skip_verify = models.BooleanField(
        default=False, help_text="Do not verify the registry's TLS certificate (avoid outside tests)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["cluster", "name"]
        verbose_name_plural = "registries"
        constraints = [
            models.UniqueConstraint(
                fields=["cluster", "name"],
                name="%(app_label)s_%(class)s_unique_per_cluster",
                violation_error_message="This cluster has a registry of this name already.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Registry {self.pk}: {self.name}>"

    def clean(self) -> None:
        from . import registries

        super().clean()
        errors: dict[str, list[str]] = {}

        def error(field: str, message: str) -> None:
            errors.setdefault(field, []).append(message)

        if problem := registries.registry_name_problem(self.name or ""):
            error("name", problem)
        if not isinstance(self.endpoints, list) or not all(isinstance(item, str) for item in self.endpoints):
            error("endpoints", "Enter a list of http:// or https:// URLs.")
        else:
            for url in self.endpoints:
                if problem := registries.endpoint_problem(url):
                    error("endpoints", problem)
            if len(set(self.endpoints)) != len(self.endpoints):
                error("endpoints", "Each endpoint once.")
        for problem in registries.rewrite_problems(self.rewrite if self.rewrite is not None else {}):
            error("rewrite", problem)
        if self.rewrite and not self.endpoints:
            error("rewrite", "Rewrites apply to a mirror: add its endpoints.")
        for field in ("ca_file", "cert_file", "key_file"):
            if problem := registries.file_path_problem(getattr(self, field) or ""):
                error(field, problem)
        if bool(self.cert_file) != bool(self.key_file):
            error("key_file" if self.cert_file else "cert_file", "A client certificate needs its key, and back.")
        if problem := registries.plain_value_problem(self.username or ""):
            error("username", problem)
        elif self.username and (":" in self.username or any(char.isspace() for char in self.username)):
            error("username", "A user name has no ':' and no spaces.")
        password, auth, identity = (reveal(self.password), reveal(self.auth), reveal(self.identity_token))
        kinds = [
            name for name, value in (("password", password), ("auth", auth), ("identity_token", identity)) if value
        ]
        if len(kinds) > 1:
            error(kinds[1], "Give one kind of credential: a user name and password, auth, or an identity token.")
        if password and not self.username:
            error("username", "A password needs its user name.")
        if self.username and not password and not identity:
            error("password", "Enter the password of this user name.")
        if auth and self.username:
            error("auth", "auth holds the user name already: leave the user name empty.")
        if not (
            self.endpoints or kinds or self.username or self.ca_file or self.cert_file or self.insecure_skip_verify
        ):
            error("endpoints", "Give the registry a mirror endpoint, credentials or TLS settings.")
        if errors:
            raise ValidationError(errors)
