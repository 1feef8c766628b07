"""API endpoints of the stored SSH host keys: list and read them (viewers), clear one (operators).

Clearing a host's keys makes the next job that reaches it accept the key it then presents.
"""

from __future__ import annotations

from typing import Any

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers, status
from rest_framework.generics import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response

from ..models import HostKey
from ..services.hostkeys import fingerprint, host_key_clear
from .filters import IdFilter
from .ordering import LIST_FILTERS
from .views import ERRORS, READ_ERRORS, APIViewSet

__all__ = ["HostKeyViewSet"]


class PublicKeyOutput(serializers.Serializer):
    type = serializers.CharField(help_text="Key type, e.g. ssh-ed25519.")
    fingerprint = serializers.CharField(help_text="SHA256 fingerprint, as ssh-keygen -l prints it.")
    public_key = serializers.CharField(help_text="Base64 key data, as in known_hosts.")


class HostKeyOutput(serializers.Serializer):
    id = serializers.IntegerField()
    address = serializers.CharField()
    port = serializers.IntegerField()
    hostname = serializers.CharField(help_text="The node's name when the key was accepted.")
    cluster = serializers.IntegerField(source="cluster_id", allow_null=True)
    cluster_name = serializers.SerializerMethodField()
    keys = serializers.SerializerMethodField()
    accepted_by_job = serializers.IntegerField(source="accepted_by_job_id", allow_null=True)
    created_at = serializers.DateTimeField(help_text="When the host was first reached and its keys accepted.")

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_cluster_name(self, obj: HostKey) -> str | None:
        return obj.cluster.name if obj.cluster_id else None

    @extend_schema_field(PublicKeyOutput(many=True))
    def get_keys(self, obj: HostKey) -> list[dict[str, str]]:
        return [{"type": kind, "fingerprint": fingerprint(data), "public_key": data} for kind, data in obj.keys]


class HostKeyFilter(django_filters.FilterSet):
    cluster = IdFilter(field_name="cluster_id", help_text="Cluster id (of the job that first reached the host).")
    address = django_filters.CharFilter(max_length=253, help_text="Exact address.")

    class Meta:
        model = HostKey
        fields: list[str] = []


@extend_schema_view(
    list=extend_schema(summary="List stored SSH host keys", responses={200: HostKeyOutput(many=True), **ERRORS}),
    retrieve=extend_schema(summary="Show a host's stored SSH host keys", responses={200: HostKeyOutput, **READ_ERRORS}),
    destroy=extend_schema(
        summary="Clear a host's stored SSH host keys",
        description="The next job that reaches the host accepts the key it presents then (recorded in the audit log).",
        responses={204: None, **READ_ERRORS},
    ),
)
class HostKeyViewSet(APIViewSet):
    permission_model = HostKey
    serializer_class = HostKeyOutput
    filter_backends = LIST_FILTERS
    filterset_class = HostKeyFilter
    ordering_fields = ("address", "port", "hostname", "created_at")
    search_fields = ("address", "hostname")
    http_method_names = ["get", "delete", "head", "options"]

    def get_queryset(self) -> Any:
        return HostKey.objects.select_related("cluster").order_by("address", "port")

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.paginated(self.filter_queryset(self.get_queryset()), HostKeyOutput)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(self.output(HostKeyOutput, get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])))

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        host_key_clear(host_key=get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"]), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
