"""API endpoints of the caller's own API tokens: create one (shown once), list them, revoke one.

A token is created with the user's password (HTTP Basic) or a browser session, never with another token, so a
leaked token cannot outlive its expiry by minting successors. Listing and revoking work with any of the three.
Another user's token is answered 404, as if it did not exist.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, extend_schema_view
from knox.auth import TokenAuthentication
from rest_framework import serializers, status
from rest_framework.authentication import BasicAuthentication, SessionAuthentication
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from ..models import APIToken
from ..services.tokens import api_token_create, api_token_get, api_token_revoke, api_tokens_of
from .ordering import StrictOrderingFilter, StrictSearchFilter
from .views import ERRORS, READ_ERRORS, APIViewSet

__all__ = ["APITokenViewSet"]


class APITokenCreateInput(serializers.Serializer):
    name = serializers.CharField(max_length=100, help_text="What the token is for, e.g. the program that uses it.")
    expires_in_days = serializers.IntegerField(
        required=False, min_value=1, help_text="Lifetime in days (default and maximum set by the portal)."
    )

    def validate_expires_in_days(self, value: int) -> int:
        if value > settings.API_TOKEN_MAX_DAYS:
            raise serializers.ValidationError(f"Enter a whole number of days from 1 to {settings.API_TOKEN_MAX_DAYS}.")
        return value


class APITokenOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    token_key = serializers.CharField(help_text="The first characters of the token, to recognise it.")
    created = serializers.DateTimeField()
    expiry = serializers.DateTimeField()
    expired = serializers.SerializerMethodField()

    @extend_schema_field(serializers.BooleanField())
    def get_expired(self, obj: APIToken) -> bool:
        return obj.expiry <= timezone.now()


class APITokenCreatedOutput(APITokenOutput):
    token = serializers.CharField(help_text="The token. Shown only in this response: store it now.")


@extend_schema_view(
    list=extend_schema(summary="List your API tokens", responses={200: APITokenOutput(many=True), **ERRORS}),
    create=extend_schema(
        summary="Create an API token",
        description="Authenticate with your user name and password (HTTP Basic) or a session. The token is in the "
        "response only; send it as `Authorization: Token <token>`.",
        request=APITokenCreateInput,
        responses={201: APITokenCreatedOutput, **ERRORS},
    ),
    destroy=extend_schema(
        summary="Revoke one of your API tokens",
        responses={204: None, **READ_ERRORS, 404: OpenApiResponse(description="You have no token with this id.")},
    ),
)
class APITokenViewSet(APIViewSet):
    # Token first: its WWW-Authenticate challenge makes a missing credential a 401.
    authentication_classes = (TokenAuthentication, BasicAuthentication, SessionAuthentication)
    serializer_class = APITokenOutput
    http_method_names = ["get", "post", "delete", "head", "options"]
    # Every authenticated user manages their own tokens: no model permission needed.
    action_permissions: ClassVar[dict[str, tuple[str, ...]]] = {"list": (), "create": (), "destroy": ()}
    filter_backends = (StrictSearchFilter, StrictOrderingFilter)
    ordering_fields = ("name", "created", "expiry")
    search_fields = ("name",)

    def get_queryset(self) -> Any:
        return api_tokens_of(self.request.user)

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.paginated(self.filter_queryset(self.get_queryset()), APITokenOutput)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if isinstance(request.successful_authenticator, TokenAuthentication):
            raise PermissionDenied(
                "Create API tokens with your user name and password (HTTP Basic) or a browser session, not a token."
            )
        data = self.parse(APITokenCreateInput, request.data).validated_data
        token, plaintext = api_token_create(user=request.user, **data)
        body = self.output(APITokenOutput, token)
        body["token"] = plaintext
        return Response(body, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        api_token_revoke(token=api_token_get(user=request.user, token_id=self.kwargs["pk"]), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
