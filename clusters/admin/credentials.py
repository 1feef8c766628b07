"""SSH credentials. The private key and its passphrase are write-only: the admin never shows them."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from ..forms import SSHCredentialForm, service_error_dict
from ..models import SSHCredential
from ..services.credentials import CREDENTIAL_FIELDS, credential_create, credential_delete, credential_update
from .base import SERVICE_ERRORS, ServiceErrorsMixin, ServiceRejected

__all__ = ["SSHCredentialAdmin"]


@admin.register(SSHCredential)
class SSHCredentialAdmin(ServiceErrorsMixin, admin.ModelAdmin):
    form = SSHCredentialForm
    list_display = ("name", "username", "port", "become", "public_key_fingerprint", "cluster_count", "updated_at")
    search_fields = ("name", "username", "public_key_fingerprint")
    readonly_fields = ("public_key_fingerprint", "key_state", "created_at", "updated_at")

    def get_fieldsets(
        self, request: HttpRequest, obj: SSHCredential | None = None
    ) -> list[tuple[str | None, dict[str, Any]]]:
        key_fields: tuple[str, ...] = ("private_key", "passphrase")
        if obj is not None:
            key_fields = ("key_state", "public_key_fingerprint", *key_fields)
        return [
            (None, {"fields": ("name", ("username", "port"), "become")}),
            ("Key", {"fields": key_fields}),
            ("Host keys", {"fields": ("known_hosts",)}),
            *([("History", {"fields": (("created_at", "updated_at"),)})] if obj is not None else []),
        ]

    def get_form(
        self, request: HttpRequest, obj: SSHCredential | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        # Only the form's own model fields: the secret inputs are extra fields that never write the model directly.
        kwargs["fields"] = SSHCredentialForm.Meta.fields
        return super().get_form(request, obj, change, **kwargs)

    def get_queryset(self, request: HttpRequest) -> QuerySet[SSHCredential]:
        return super().get_queryset(request).annotate(cluster_total=Count("clusters"))

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # deleted one at a time, through the service
        return actions

    @admin.display(description="clusters", ordering="cluster_total")
    def cluster_count(self, credential: SSHCredential) -> int:
        return getattr(credential, "cluster_total", 0)

    @admin.display(description="stored key")
    def key_state(self, credential: SSHCredential) -> str:
        state = "Stored encrypted; never shown."
        if credential.passphrase:
            state += " Protected by a passphrase (stored encrypted)."
        return state

    def save_model(self, request: HttpRequest, obj: SSHCredential, form: SSHCredentialForm, change: bool) -> None:
        data = form.service_data(only_changed=change)
        try:
            if change:
                if data:
                    stored = SSHCredential.objects.get(pk=obj.pk)
                    vars(obj).update(vars(credential_update(credential=stored, data=data, actor=request.user)))
            else:
                fields = {field: value for field, value in data.items() if field in CREDENTIAL_FIELDS}
                vars(obj).update(vars(credential_create(actor=request.user, **fields)))
        except SERVICE_ERRORS as exc:
            raise ServiceRejected(service_error_dict(exc)) from exc

    def delete_model(self, request: HttpRequest, obj: SSHCredential) -> None:
        credential_delete(credential=obj, actor=request.user)
