"""Personal API tokens in the admin: every user creates, sees and revokes their own (superusers see all).

The token is shown once, in the message after it is created; only its hash is stored.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from ..models import APIToken
from ..services.tokens import api_token_create, api_token_revoke

__all__ = ["APITokenAdmin"]


class APITokenCreateForm(forms.ModelForm):
    # Declared for the admin's form factory; rebuilt in __init__ with the configured bounds.
    expires_in_days = forms.IntegerField(min_value=1)

    class Meta:
        model = APIToken
        fields = ("name",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["expires_in_days"] = forms.IntegerField(
            min_value=1,
            max_value=settings.API_TOKEN_MAX_DAYS,
            initial=settings.API_TOKEN_DEFAULT_DAYS,
            label="Expires in (days)",
            help_text="The token stops working after this many days.",
        )


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):
    form = APITokenCreateForm
    list_display = ("name", "token_key", "user", "created", "expiry", "expired")
    search_fields = ("name", "token_key")
    fields = ("name", "token_key", "user", "created", "expiry")
    readonly_fields = ("token_key", "user", "created", "expiry")

    def get_queryset(self, request: HttpRequest) -> QuerySet[APIToken]:
        queryset = super().get_queryset(request).select_related("user")
        return queryset if request.user.is_superuser else queryset.filter(user=request.user)

    def get_fields(self, request: HttpRequest, obj: APIToken | None = None) -> Any:
        return ("name", "expires_in_days") if obj is None else self.fields

    def get_readonly_fields(self, request: HttpRequest, obj: APIToken | None = None) -> Any:
        return () if obj is None else self.fields

    @admin.display(boolean=True)
    def expired(self, obj: APIToken) -> bool:
        return obj.expiry <= timezone.now()

    # Any staff user manages their own tokens (get_queryset limits them to those).
    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_staff

    def has_view_permission(self, request: HttpRequest, obj: APIToken | None = None) -> bool:
        return self.has_module_permission(request) and (obj is None or self._owns(request, obj))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: APIToken | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: APIToken | None = None) -> bool:
        return self.has_module_permission(request) and (obj is None or self._owns(request, obj))

    @staticmethod
    def _owns(request: HttpRequest, obj: APIToken) -> bool:
        return obj.user_id == request.user.pk or request.user.is_superuser

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def save_model(self, request: HttpRequest, obj: APIToken, form: APITokenCreateForm, change: bool) -> None:
        token, plaintext = api_token_create(
            user=request.user, name=form.cleaned_data["name"], expires_in_days=form.cleaned_data["expires_in_days"]
        )
        vars(obj).update(vars(token))
        self.message_user(
            request,
            f"Your API token “{token.name}” (expires {token.expiry:%Y-%m-%d %H:%M} UTC). Copy it now; it is not shown "
            f"again: {plaintext}",
            messages.WARNING,
        )

    def delete_model(self, request: HttpRequest, obj: APIToken) -> None:
        api_token_revoke(token=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[APIToken]) -> None:
        for token in queryset:
            api_token_revoke(token=token, actor=request.user)
