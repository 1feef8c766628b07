"""The audit log: who did what to which cluster. Append-only."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from ..models import AuditLog

__all__ = ["AuditLogAdmin"]


@admin.register(AuditLog)
class AuditLogAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor", "action", "cluster", "object_repr")
    list_filter = ("action", ("actor", admin.RelatedOnlyFieldListFilter))
    search_fields = ("action", "object_repr", "cluster__name", "actor__username")
    list_select_related = ("actor", "cluster")
    date_hierarchy = "created_at"
    fields = ("created_at", "actor", "action", "cluster", "object_repr", "detail")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditLog | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditLog | None = None) -> bool:
        return False
