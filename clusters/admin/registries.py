"""Private registries in the admin: mirrors, TLS settings and credentials (never shown, only replaced)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from ..fields import MASK, reveal
from ..models import Registry
from ..services.registries import SECRET_FIELDS, registry_create, registry_delete, registry_update
from .base import ServiceErrorsMixin, ServiceRejected

__all__ = ["RegistryAdmin"]

_PLAIN_FIELDS = (
    "cluster",
    "name",
    "endpoints",
    "rewrite",
    "username",
    "ca_file",
    "cert_file",
    "key_file",
    "insecure_skip_verify",
)


def _secret_input(help_text: str) -> forms.CharField:
    return forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=help_text + " Stored encrypted and never shown; leave empty to keep the stored one.",
    )


class RegistryForm(forms.ModelForm):
    endpoints = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 64}),
        help_text="Mirror endpoints, one http:// or https:// URL per line, tried in order.",
    )
    rewrite = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 64}),
        help_text='Image path rewrites as JSON, e.g. {"^rancher/(.*)": "mirror/rancher/$1"}.',
    )
    password = _secret_input("Password of the user name.")
    auth = _secret_input("base64 of username:password, instead of both.")
    identity_token = _secret_input("OAuth identity token, instead of a password.")
    clear_credentials = forms.BooleanField(required=False, help_text="Drop the stored credential and user name.")
    service_errors: dict[str, list[str]] = {}

    class Meta:
        model = Registry
        fields = _PLAIN_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["endpoints"] = "\n".join(self.instance.endpoints or [])
            self.initial["rewrite"] = json.dumps(self.instance.rewrite) if self.instance.rewrite else ""
            self.fields["cluster"].disabled = True

    def clean_endpoints(self) -> list[str]:
        return [line.strip() for line in (self.cleaned_data.get("endpoints") or "").splitlines() if line.strip()]

    def clean_rewrite(self) -> dict[str, Any]:
        text = (self.cleaned_data.get("rewrite") or "").strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValidationError(f"Enter valid JSON ({exc}).") from None
        if not isinstance(value, dict):
            raise ValidationError("Enter a JSON object: regular expression to replacement.")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        for field, errors in self.service_errors.items():
            for error in errors:
                self.add_error(field if field in self.fields else None, error)
        return data

    def _post_clean(self) -> None:
        # The service validates the model (with its stored credentials); ModelForm's own validation lacks them.
        pass


@admin.register(Registry)
class RegistryAdmin(ServiceErrorsMixin, admin.ModelAdmin):
    form = RegistryForm
    list_display = ("name", "cluster", "endpoint_list", "credential_state", "insecure_skip_verify", "updated_at")
    list_filter = ("cluster",)
    search_fields = ("name", "cluster__name")
    list_select_related = ("cluster",)
    readonly_fields = ("credential_state",)
    fieldsets = (
        (None, {"fields": ("cluster", "name")}),
        ("Mirror", {"fields": ("endpoints", "rewrite")}),
        (
            "Credentials",
            {"fields": ("credential_state", "username", "password", "auth", "identity_token", "clear_credentials")},
        ),
        ("TLS", {"fields": ("ca_file", "cert_file", "key_file", "insecure_skip_verify")}),
    )

    @admin.display(description="endpoints")
    def endpoint_list(self, registry: Registry) -> str:
        return ", ".join(registry.endpoints or []) or "-"

    @admin.display(description="credential")
    def credential_state(self, registry: Registry) -> str:
        for field in SECRET_FIELDS:
            if reveal(getattr(registry, field)):
                return f"{field.replace('_', ' ')}: {MASK} (stored encrypted)"
        return "none"

    def save_model(self, request: HttpRequest, obj: Registry, form: Any, change: bool) -> None:
        data = {name: form.cleaned_data.get(name) for name in _PLAIN_FIELDS if name != "cluster"}
        secrets = {name: form.cleaned_data.get(name) or "" for name in SECRET_FIELDS}
        try:
            if change:
                stored = Registry.objects.select_related("cluster").get(pk=obj.pk)
                data["clear_credentials"] = bool(form.cleaned_data.get("clear_credentials"))
                saved = registry_update(registry=stored, data={**data, **secrets}, actor=request.user)
            else:
                cluster = form.cleaned_data["cluster"]
                saved = registry_create(cluster=cluster, actor=request.user, **data, **secrets)
        except ValidationError as exc:
            raise ServiceRejected(
                exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
            ) from None
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: Registry) -> None:
        registry_delete(registry=obj, actor=request.user)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # deleted one at a time, through the service (audited)
        return actions

    def get_queryset(self, request: HttpRequest) -> QuerySet[Registry]:
        return super().get_queryset(request)
