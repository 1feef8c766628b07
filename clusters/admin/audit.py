"""The audit log: who did what to which cluster. Append-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest

from ..models import AuditLog

__all__ = ["AuditLogAdmin"]


class ActionFamilyFilter(admin.SimpleListFilter):
    """Actions by what they act on (the part before the first dot): a fixed list, where listing the distinct
    actions stored would read the whole log."""

    title = "action"
    parameter_name = "action_family"
    families = (
        ("cluster", "Clusters"),
        ("node", "Nodes"),
        ("job", "Jobs"),
        ("kubeconfig", "Kubeconfig downloads"),
        ("credential", "SSH credentials"),
        ("host_key", "SSH host keys"),
        ("api_token", "API tokens"),
        ("webhook", "Webhooks"),
        ("registry", "Registries"),
    )

    def lookups(self, request: HttpRequest, model_admin: Any) -> tuple[tuple[str, str], ...]:
        return self.families

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuditLog]) -> QuerySet[AuditLog]:
        value = self.value()
        if value not in dict(self.families):
            return queryset
        prefixes = (f"{value}.", f"{value}s.", f"cluster.{value}.")
        condition = Q()
        for prefix in prefixes:
            condition |= Q(action__startswith=prefix)
        return queryset.filter(condition)


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor", "action", "cluster", "object_repr")
    # Fixed choices only: a filter listing the values stored (or a date hierarchy) reads the whole log each time.
    list_filter = (ActionFamilyFilter, ("created_at", admin.DateFieldListFilter), "actor")
    search_fields = ("action", "object_repr", "cluster__name", "actor__username")
    list_select_related = ("actor", "cluster")
    show_full_result_count = False  # one count a page, not two
    fields = ("created_at", "actor", "action", "cluster", "object_repr", "detail")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditLog]:
        # The list shows the cluster's name: its encrypted columns (each decrypted on load) stay in the database.
        return (
            super()
            .get_queryset(request)
            .select_related("actor", "cluster")
            .defer("cluster__token", "cluster__kubeconfig", "cluster__adoption_report")
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditLog | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditLog | None = None) -> bool:
        return False
