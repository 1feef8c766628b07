"""The node list: every cluster's nodes in one place. Nodes are edited on their cluster's page."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from ..choices import NodeStatus
from ..models import Node
from .base import ClusterListFilter, badge
from .operations import REQUEST_JOB

__all__ = ["NodeAdmin"]


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = (
        "hostname",
        "cluster_link",
        "role",
        "status_badge",
        "internal_ip",
        "external_ip",
        "installed_version",
        "last_job",
    )
    list_filter = ("status", "role", ("cluster", ClusterListFilter))
    search_fields = ("hostname", "internal_ip", "external_ip", "cluster__name")
    list_select_related = ("cluster", "last_job")
    show_full_result_count = False  # one count a page, not two
    actions = ["action_remove"]
    fields = (
        "cluster_link",
        "hostname",
        "role",
        "status_badge",
        "internal_ip",
        "external_ip",
        "use_external_ip",
        "labels",
        "taints",
        "node_vars",
        "installed_version",
        "install_started_at",
        "install_finished_at",
        "last_job",
        "last_error",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # nodes are added on their cluster's page, through the services

    def has_change_permission(self, request: HttpRequest, obj: Node | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Node | None = None) -> bool:
        return False  # nodes are removed by the “Remove nodes” operation

    def get_queryset(self, request: HttpRequest) -> QuerySet[Node]:
        # The list shows names: the encrypted columns (each decrypted on load) stay in the database.
        return (
            super()
            .get_queryset(request)
            .select_related("cluster", "last_job")
            .defer("running_config", "kept_config", "cluster__token", "cluster__kubeconfig")
        )

    def has_remove_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perms(["clusters.change_node", REQUEST_JOB])

    @admin.display(description="cluster", ordering="cluster__name")
    def cluster_link(self, node: Node) -> str:
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:clusters_cluster_change", args=[node.cluster_id]), node.cluster
        )

    @admin.display(description="status", ordering="status")
    def status_badge(self, node: Node) -> str:
        return badge(node.status, node.get_status_display())

    @admin.action(description="Remove the selected nodes…", permissions=["remove"])
    def action_remove(self, request: HttpRequest, queryset: QuerySet[Node]) -> HttpResponse | None:
        nodes = list(queryset.exclude(status__in=(NodeStatus.REMOVED, NodeStatus.DRAINING)).order_by("pk"))
        clusters = {node.cluster_id for node in nodes}
        if len(clusters) != 1:
            messages.warning(request, "Select live nodes of exactly one cluster to remove.")
            return None
        query = urlencode([("hostnames", node.hostname) for node in nodes])
        return HttpResponseRedirect(reverse("admin:clusters_cluster_remove_nodes", args=[clusters.pop()]) + "?" + query)
