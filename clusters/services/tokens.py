"""Personal API tokens: created, listed and revoked by the user they belong to.

Tokens are django-rest-knox tokens (:class:`~clusters.models.APIToken`): the plaintext is returned once, by
:func:`api_token_create`, and only its SHA-512 hash is stored. Every token has a name and an expiry (at most
``API_TOKEN_MAX_DAYS`` days away); knox refuses, and deletes, a token past its expiry. Revoking deletes the token.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet

from ..exceptions import ApplicationError
from ..models import APIToken
from .audit import audit_record

__all__ = ["TokenNotFound", "api_token_create", "api_token_get", "api_token_revoke", "api_tokens_of"]


class TokenNotFound(ApplicationError):
    """No token of this user has this id (another user's token is not found either)."""

    code = "not_found"
    http_status = 404


def api_tokens_of(user: Any) -> QuerySet[APIToken]:
    """The user's own tokens, newest first (expired ones until knox removes them)."""
    return APIToken.objects.filter(user=user).order_by("-created", "-pk")


def api_token_get(*, user: Any, token_id: Any) -> APIToken:
    token = api_tokens_of(user).filter(pk=token_id).first() if str(token_id).isdigit() else None
    if token is None:
        raise TokenNotFound("You have no API token with this id.")
    return token


@transaction.atomic
def api_token_create(*, user: Any, name: str, expires_in_days: int | None = None) -> tuple[APIToken, str]:
    """Create a token for ``user``; returns it and its plaintext, which is never available again."""
    errors: dict[str, list[str]] = {}
    name = (name or "").strip() if isinstance(name, str) else ""
    if not name:
        errors["name"] = ["Give the token a name, such as the program that will use it."]
    elif len(name) > 100:
        errors["name"] = ["Use at most 100 characters."]
    days = settings.API_TOKEN_DEFAULT_DAYS if expires_in_days is None else expires_in_days
    maximum = int(settings.API_TOKEN_MAX_DAYS)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= maximum:
        errors["expires_in_days"] = [f"Enter a whole number of days from 1 to {maximum}."]
    if errors:
        raise ValidationError(errors)
    instance, plaintext = APIToken.objects.create(user=user, expiry=timedelta(days=days), name=name)
    audit_record(
        action="api_token.created",
        actor=user,
        object_repr=f"{user.get_username()}: {name}",
        detail={
            "token_id": instance.pk,
            "name": name,
            "token_key": instance.token_key,
            "expiry": instance.expiry.isoformat(),
        },
    )
    return instance, plaintext


@transaction.atomic
def api_token_revoke(*, token: APIToken, actor: Any) -> None:
    """Revoke (delete) a token. Only its owner may, or a superuser."""
    if token.user_id != getattr(actor, "pk", None) and not getattr(actor, "is_superuser", False):
        raise TokenNotFound("You have no API token with this id.")
    audit_record(
        action="api_token.revoked",
        actor=actor,
        object_repr=f"{token.user.get_username()}: {token.name}",
        detail={"token_id": token.pk, "name": token.name, "token_key": token.token_key},
    )
    token.delete()
