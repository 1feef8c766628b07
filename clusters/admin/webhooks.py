"""Webhooks in the admin: configure them (the secret is never shown) and read the delivery log."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from ..fields import MASK
from ..models import Webhook, WebhookDelivery
from ..services.webhooks import webhook_create, webhook_delete, webhook_delivery_redeliver, webhook_update
from .base import SERVICE_ERRORS, ServiceErrorsMixin, ServiceRejected, badge, message_service_error

__all__ = ["WebhookAdmin", "WebhookDeliveryAdmin"]

_FIELDS = ("name", "url", "cluster", "enabled", "notify_successful", "notify_failed", "notify_canceled")


class WebhookForm(forms.ModelForm):
    url = forms.URLField(
        label="URL",
        max_length=2000,
        assume_scheme="https",
        help_text="http:// or https:// address that receives the POST.",
    )
    secret = forms.CharField(
        required=False,
        strip=False,
        min_length=16,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="HMAC-SHA256 key, at least 16 characters. Stored encrypted and never shown; leave empty to keep "
        "the stored one.",
    )
    service_errors: dict[str, list[str]] = {}

    class Meta:
        model = Webhook
        fields = _FIELDS

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.instance.pk is None and not data.get("secret"):
            self.add_error("secret", "Set a secret: receivers verify the signature with it.")
        for field, errors in self.service_errors.items():
            for error in errors:
                self.add_error(field if field in self.fields else None, error)
        return data

    def _post_clean(self) -> None:
        # The service validates the model (with the secret); skip ModelForm's own full_clean without it.
        pass


@admin.register(Webhook)
class WebhookAdmin(ServiceErrorsMixin, admin.ModelAdmin):
    form = WebhookForm
    list_display = (
        "name",
        "url",
        "scope",
        "enabled",
        "notify_successful",
        "notify_failed",
        "notify_canceled",
        "deliveries_link",
    )
    list_filter = ("enabled",)
    search_fields = ("name", "url")
    list_select_related = ("cluster",)
    fieldsets = (
        (None, {"fields": ("name", "url", "secret_state", "secret", "cluster", "enabled")}),
        ("Notify when a job", {"fields": ("notify_successful", "notify_failed", "notify_canceled")}),
    )
    readonly_fields = ("secret_state",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Webhook]:
        return super().get_queryset(request).defer("secret")

    @admin.display(description="clusters")
    def scope(self, hook: Webhook) -> str:
        return hook.cluster.name if hook.cluster_id else "all clusters"

    @admin.display(description="secret")
    def secret_state(self, hook: Webhook) -> str:
        return f"{MASK} (stored encrypted)" if hook.pk else "not set"

    @admin.display(description="deliveries")
    def deliveries_link(self, hook: Webhook) -> str:
        url = reverse("admin:clusters_webhookdelivery_changelist") + f"?webhook__id__exact={hook.pk}"
        return format_html('<a href="{}">delivery log</a>', url)

    def save_model(self, request: HttpRequest, obj: Webhook, form: Any, change: bool) -> None:
        data = {name: form.cleaned_data.get(name) for name in _FIELDS}
        secret = form.cleaned_data.get("secret") or ""
        try:
            if change:
                saved = webhook_update(webhook=obj, data={**data, "secret": secret}, actor=request.user)
            else:
                saved = webhook_create(actor=request.user, secret=secret, **data)
        except ValidationError as exc:
            raise ServiceRejected(
                exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
            ) from None
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: Webhook) -> None:
        webhook_delete(webhook=obj, actor=request.user)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # deleted one at a time, through the service (audited)
        return actions


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """The delivery log: read-only, with a redeliver action."""

    list_display = (
        "created_at",
        "webhook",
        "job_link",
        "event",
        "status_badge",
        "response_code",
        "attempts",
        "last_attempt_at",
    )
    list_filter = ("status", "event", "webhook")
    search_fields = ("=job__id", "webhook__name", "error")
    list_select_related = ("webhook", "job")
    date_hierarchy = "created_at"
    actions = ["action_redeliver"]
    fields = (
        "webhook",
        "job_link",
        "event",
        "status_badge",
        "attempts",
        "response_code",
        "response_body",
        "error",
        "created_at",
        "last_attempt_at",
        "next_attempt_at",
        "delivered_at",
        "payload",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookDelivery]:
        return super().get_queryset(request).defer("webhook__secret")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WebhookDelivery | None = None) -> bool:
        return False

    def has_redeliver_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("clusters.change_webhook")

    @admin.display(description="job", ordering="job_id")
    def job_link(self, delivery: WebhookDelivery) -> str:
        return format_html(
            '<a href="{}">#{}</a>', reverse("admin:clusters_job_change", args=[delivery.job_id]), delivery.job_id
        )

    @admin.display(description="status", ordering="status")
    def status_badge(self, delivery: WebhookDelivery) -> str:
        tone = {"delivered": "successful", "retrying": "pending"}.get(delivery.status, delivery.status)
        return badge(tone, delivery.get_status_display())

    @admin.action(description="Deliver the selected again", permissions=["redeliver"])
    def action_redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = 0
        for delivery in queryset.select_related("webhook", "job__cluster"):
            try:
                webhook_delivery_redeliver(delivery=delivery, actor=request.user)
            except SERVICE_ERRORS as exc:
                message_service_error(request, exc, subject=f"Delivery #{delivery.pk}")
            else:
                count += 1
        if count:
            messages.success(request, f"{count} deliveries queued again.")
