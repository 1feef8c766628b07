"""Routes of the API (mounted under /api/ by the project's URLconf)."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from .audit import AuditLogViewSet
from .hostkeys import HostKeyViewSet
from .registries import RegistryViewSet
from .root import APIRootView
from .snapshots import ClusterRestoreViewSet, ClusterSnapshotViewSet
from .tokens import APITokenViewSet
from .views import ClusterNodeViewSet, ClusterViewSet, CredentialViewSet, JobViewSet
from .webhooks import WebhookDeliveryViewSet, WebhookViewSet

app_name = "clusters-api"

router = SimpleRouter()
router.register("clusters", ClusterViewSet, basename="cluster")
router.register("jobs", JobViewSet, basename="job")
router.register("credentials", CredentialViewSet, basename="credential")
router.register("host-keys", HostKeyViewSet, basename="host-key")
router.register("tokens", APITokenViewSet, basename="api-token")
router.register("audit-log", AuditLogViewSet, basename="audit-log")
router.register("webhooks", WebhookViewSet, basename="webhook")
router.register("registries", RegistryViewSet, basename="registry")
router.register("webhook-deliveries", WebhookDeliveryViewSet, basename="webhook-delivery")

urlpatterns = [
    path("", APIRootView.as_view(), name="api-root"),
    path(
        "clusters/<int:cluster_pk>/nodes/",
        ClusterNodeViewSet.as_view({"get": "list"}),
        name="cluster-nodes",
    ),
    path(
        "clusters/<int:cluster_pk>/etcd-snapshots/",
        ClusterSnapshotViewSet.as_view({"get": "list", "post": "take"}),
        name="cluster-etcd-snapshots",
    ),
    path(
        "clusters/<int:cluster_pk>/etcd-snapshots/refresh/",
        ClusterSnapshotViewSet.as_view({"post": "refresh"}),
        name="cluster-etcd-snapshots-refresh",
    ),
    path(
        "clusters/<int:cluster_pk>/etcd-snapshots/prune/",
        ClusterSnapshotViewSet.as_view({"post": "prune"}),
        name="cluster-etcd-snapshots-prune",
    ),
    path(
        "clusters/<int:cluster_pk>/etcd-snapshots/schedule/",
        ClusterSnapshotViewSet.as_view({"put": "schedule"}),
        name="cluster-etcd-snapshots-schedule",
    ),
    path(
        "clusters/<int:cluster_pk>/etcd-restore/",
        ClusterRestoreViewSet.as_view({"post": "restore"}),
        name="cluster-etcd-restore",
    ),
    *router.urls,
]
