"""Statuses and other enumerations of the cluster domain."""

from django.db import models


class NodeRole(models.TextChoices):
    INITIAL_MASTER = "initial_master", "Initial master"
    MASTER = "master", "Master"
    WORKER = "worker", "Worker"


SERVER_ROLES = (NodeRole.INITIAL_MASTER, NodeRole.MASTER)


class NodeStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    INSTALLING = "installing", "Installing"
    ACTIVE = "active", "Active"
    FAILED = "failed", "Failed"
    DRAINING = "draining", "Draining"
    REMOVED = "removed", "Removed"


# Nodes that are part of the cluster's desired state (rendered into inventories).
LIVE_NODE_STATUSES = (NodeStatus.PENDING, NodeStatus.INSTALLING, NodeStatus.ACTIVE, NodeStatus.FAILED)


class InstallationStage(models.TextChoices):
    NOT_STARTED = "not_started", "Not started"
    INITIAL_MASTER = "initial_master", "Initial master"
    JOINING_MASTERS = "joining_masters", "Joining masters"
    WORKERS = "workers", "Workers"
    ALL = "all", "Post-install checks"
    COMPLETE = "complete", "Complete"
    FAILED = "failed", "Failed"


# The install stages, in order (the seed's staged install).
INSTALL_STAGES = (
    InstallationStage.INITIAL_MASTER,
    InstallationStage.JOINING_MASTERS,
    InstallationStage.WORKERS,
    InstallationStage.ALL,
)
# The stage an install or a scale-out runs first: hosts prepared, then every pair of nodes checked on RKE2's ports.
REACHABILITY_STAGE = "reachability"


class ClusterStatus(models.TextChoices):
    NEW = "new", "New"
    INSTALLING = "installing", "Installing"
    ACTIVE = "active", "Active"
    DEGRADED = "degraded", "Degraded"
    FAILED = "failed", "Failed"
    UPGRADING = "upgrading", "Upgrading"
    SCALING = "scaling", "Scaling"
    UNINSTALLING = "uninstalling", "Uninstalling"
    UNINSTALLED = "uninstalled", "Uninstalled"


class Cni(models.TextChoices):
    CANAL = "canal", "Canal"
    CALICO = "calico", "Calico"
    CILIUM = "cilium", "Cilium"
    FLANNEL = "flannel", "Flannel"
    NONE = "none", "None (bring your own)"


class JobKind(models.TextChoices):
    PREFLIGHT = "preflight", "Preflight checks"
    INSTALL = "install", "Install"
    SCALE_ADD = "scale_add", "Add nodes"
    SCALE_REMOVE = "scale_remove", "Remove nodes"
    UPGRADE = "upgrade", "Upgrade"
    UNINSTALL = "uninstall", "Uninstall"
    FETCH_KUBECONFIG = "fetch_kubeconfig", "Fetch kubeconfig"
    HEALTH = "health", "Health check"
    ADOPT = "adopt", "Adopt an imported cluster"
    HEALTH_SYNC = "health_sync", "Health sync (scheduled)"
    CERT_ROTATE = "cert_rotate", "Rotate certificates"
    NODE_LABELS = "node_labels", "Apply node labels and taints"
    ETCD_SNAPSHOT = "etcd_snapshot", "Take an etcd snapshot"
    ETCD_SNAPSHOT_LIST = "etcd_snapshot_list", "List etcd snapshots"
    ETCD_SNAPSHOT_PRUNE = "etcd_snapshot_prune", "Delete etcd snapshots"
    ETCD_RESTORE = "etcd_restore", "Restore etcd from a snapshot"


class JobStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCESSFUL = "successful", "Successful"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"


ACTIVE_JOB_STATUSES = (JobStatus.PENDING, JobStatus.RUNNING)
FINISHED_JOB_STATUSES = (JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.CANCELED)


class WebhookDeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RETRYING = "retrying", "Retrying"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"


class EtcdSnapshotKind(models.TextChoices):
    ON_DEMAND = "on-demand", "On demand"
    SCHEDULED = "scheduled", "Scheduled"
    PRE_UPGRADE = "pre-upgrade", "Before an upgrade"
    PRE_REMOVAL = "pre-removal", "Before a server is removed"
