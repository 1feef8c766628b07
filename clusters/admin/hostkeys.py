"""Stored SSH host keys (accepted on first contact): operators see them and clear a host's keys, audited."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join

from ..models import HostKey
from ..services.hostkeys import fingerprint, host_key_clear

__all__ = ["HostKeyAdmin"]


@admin.register(HostKey)
class HostKeyAdmin(admin.ModelAdmin):
    list_display = ("address", "port", "hostname", "cluster", "fingerprints", "created_at")
    list_filter = (("cluster", admin.RelatedOnlyFieldListFilter),)
    search_fields = ("address", "hostname", "cluster__name")
    list_select_related = ("cluster",)
    fields = ("address", "port", "hostname", "cluster", "fingerprints", "public_keys", "accepted_by_job", "created_at")
    readonly_fields = fields
    actions = ("clear_host_keys",)

    @admin.display(description="fingerprints")
    def fingerprints(self, obj: HostKey) -> Any:
        return format_html_join(
            "", "<div><code>{} {}</code></div>", ((kind, fingerprint(data)) for kind, data in obj.keys)
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: HostKey | None = None) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # cleared through the service, which audits each one
        return actions

    @admin.action(
        description="Clear the selected host keys (the next job accepts the host's key)", permissions=["delete"]
    )
    def clear_host_keys(self, request: HttpRequest, queryset: QuerySet[HostKey]) -> None:
        cleared = 0
        for host_key in queryset.select_related("cluster"):
            host_key_clear(host_key=host_key, actor=request.user)
            cleared += 1
        self.message_user(request, f"Cleared the stored host keys of {cleared} host(s).", messages.SUCCESS)

    def delete_model(self, request: HttpRequest, obj: HostKey) -> None:
        host_key_clear(host_key=obj, actor=request.user)
