"""``GET /api/``: the API's root, listing its resources (like DRF's DefaultRouter root view).

It answers without authentication: it reveals only the addresses of the resources (the OpenAPI schema at
``/api/schema/`` is public as well); every resource it lists still needs a token or a session.
"""

from __future__ import annotations

from typing import Any

from django.urls import NoReverseMatch, reverse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from rke2portal.exceptions import api_exception_handler

__all__ = ["APIRootView", "ROOT_RESOURCES"]

# Resource name -> URL name of its list (or page).
ROOT_RESOURCES = {
    "clusters": "clusters-api:cluster-list",
    "jobs": "clusters-api:job-list",
    "credentials": "clusters-api:credential-list",
    "host-keys": "clusters-api:host-key-list",
    "tokens": "clusters-api:api-token-list",
    "audit-log": "clusters-api:audit-log-list",
    "registries": "clusters-api:registry-list",
    "webhooks": "clusters-api:webhook-list",
    "webhook-deliveries": "clusters-api:webhook-delivery-list",
    "schema": "api-schema",
    "docs": "api-docs",
}


class APIRootView(APIView):
    authentication_classes = ()
    permission_classes = (AllowAny,)
    renderer_classes = (JSONRenderer,)

    def get_exception_handler(self) -> Any:
        return api_exception_handler

    @extend_schema(
        summary="The API's resources",
        description="Each resource's address. Public; the resources themselves need authentication.",
        responses={200: inline_serializer("APIRoot", {name: serializers.URLField() for name in ROOT_RESOURCES})},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        links = {}
        for name, url_name in ROOT_RESOURCES.items():
            try:
                links[name] = request.build_absolute_uri(reverse(url_name))
            except NoReverseMatch:
                continue
        return Response(links)
