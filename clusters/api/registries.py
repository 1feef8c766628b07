"""Private registries of clusters through the API: mirrors, credentials (write-only) and TLS settings."""

from __future__ import annotations

from typing import Any

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.generics import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response

from ..fields import reveal
from ..models import Cluster, Registry
from ..services.registries import registry_create, registry_delete, registry_update
from .filters import IdFilter
from .ordering import LIST_FILTERS
from .views import ERRORS, READ_ERRORS, APIViewSet

__all__ = ["RegistryViewSet"]

_SECRET_HELP = "Write-only: never returned. Omitted or empty on update: the stored one is kept."


class RegistryOutput(serializers.Serializer):
    id = serializers.IntegerField()
    cluster = serializers.IntegerField(source="cluster_id")
    name = serializers.CharField()
    endpoints = serializers.ListField(child=serializers.CharField())
    rewrite = serializers.DictField(child=serializers.CharField())
    username = serializers.CharField()
    credential = serializers.SerializerMethodField(
        help_text="Which kind of credential is stored (password, auth, identity_token) or none; never its value."
    )
    ca_file = serializers.CharField()
    cert_file = serializers.CharField()
    key_file = serializers.CharField()
    insecure_skip_verify = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_credential(self, registry: Registry) -> str:
        for field in ("password", "auth", "identity_token"):
            if reveal(getattr(registry, field)):
                return field
        return "none"


class RegistryInput(serializers.Serializer):
    cluster = serializers.PrimaryKeyRelatedField(queryset=Cluster.objects.only("pk", "name"))
    name = serializers.CharField(max_length=260, help_text="Registry host (docker.io, host:port), or * for every one.")
    endpoints = serializers.ListField(
        child=serializers.CharField(max_length=2000), required=False, default=list, max_length=20
    )
    rewrite = serializers.DictField(child=serializers.CharField(max_length=1000), required=False, default=dict)
    username = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    password = serializers.CharField(
        write_only=True, required=False, allow_blank=True, default="", trim_whitespace=False, help_text=_SECRET_HELP
    )
    auth = serializers.CharField(
        write_only=True, required=False, allow_blank=True, default="", trim_whitespace=False, help_text=_SECRET_HELP
    )
    identity_token = serializers.CharField(
        write_only=True, required=False, allow_blank=True, default="", trim_whitespace=False, help_text=_SECRET_HELP
    )
    ca_file = serializers.CharField(max_length=1024, required=False, allow_blank=True, default="")
    cert_file = serializers.CharField(max_length=1024, required=False, allow_blank=True, default="")
    key_file = serializers.CharField(max_length=1024, required=False, allow_blank=True, default="")
    insecure_skip_verify = serializers.BooleanField(required=False, default=False)


class RegistryUpdateInput(RegistryInput):
    cluster = None  # a registry stays with its cluster
    clear_credentials = serializers.BooleanField(
        write_only=True, required=False, default=False, help_text="Drop the stored credential and user name."
    )


class RegistryFilter(django_filters.FilterSet):
    cluster = IdFilter(field_name="cluster_id")

    class Meta:
        model = Registry
        fields: list[str] = []


@extend_schema_view(
    list=extend_schema(summary="List private registries", responses={200: RegistryOutput(many=True), **ERRORS}),
    retrieve=extend_schema(summary="Show a private registry", responses={200: RegistryOutput, **READ_ERRORS}),
    create=extend_schema(
        summary="Add a private registry to a cluster",
        description="Rendered to /etc/rancher/rke2/registries.yaml on every node by the next job that configures "
        "them. `password`, `auth` and `identity_token` are write-only and stored encrypted.",
        request=RegistryInput,
        responses={201: RegistryOutput, **ERRORS},
    ),
    update=extend_schema(
        summary="Change a private registry", request=RegistryUpdateInput, responses={200: RegistryOutput, **ERRORS}
    ),
    partial_update=extend_schema(
        summary="Change some fields of a private registry",
        request=RegistryUpdateInput,
        responses={200: RegistryOutput, **ERRORS},
    ),
    destroy=extend_schema(summary="Remove a private registry", responses={204: None, **READ_ERRORS}),
)
class RegistryViewSet(APIViewSet):
    permission_model = Registry
    serializer_class = RegistryOutput
    filter_backends = LIST_FILTERS
    filterset_class = RegistryFilter
    ordering_fields = ("name", "created_at", "updated_at")
    search_fields = ("name",)

    def get_queryset(self) -> Any:
        return Registry.objects.select_related("cluster").order_by("cluster__name", "name", "pk")

    def get_registry(self) -> Registry:
        return get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.paginated(self.filter_queryset(self.get_queryset()), RegistryOutput)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(self.output(RegistryOutput, self.get_registry()))

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = dict(self.parse(RegistryInput, request.data).validated_data)
        registry = registry_create(actor=request.user, **data)
        return Response(self.output(RegistryOutput, registry), status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        registry = self.get_registry()
        partial = kwargs.get("partial", False)
        data = self.parse(RegistryUpdateInput, request.data, partial=partial).validated_data
        registry = registry_update(registry=registry, data=dict(data), actor=request.user)
        return Response(self.output(RegistryOutput, registry))

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.update(request, *args, partial=True, **kwargs)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        registry_delete(registry=self.get_registry(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
