"""The audit log through the API: read-only, filtered by cluster, user, action and time.

Readable by whoever may read it in the admin (``clusters.view_auditlog``: the operators group and superusers).
"""

from __future__ import annotations

from typing import Any

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_view
from rest_framework import serializers
from rest_framework.generics import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response

from ..models import AuditLog
from .filters import IdFilter
from .ordering import LIST_FILTERS
from .views import ERRORS, READ_ERRORS, APIViewSet

__all__ = ["AuditLogViewSet"]


_FIELDS = (
    "id",
    "created_at",
    "action",
    "actor_id",
    "actor__id",
    "actor__username",
    "cluster_id",
    "cluster__id",
    "cluster__name",
    "object_repr",
    "detail",
)


class AuditLogOutput(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    action = serializers.CharField(help_text="e.g. job.request.install, job.cancel, kubeconfig.download.")
    user = serializers.SerializerMethodField()
    cluster = serializers.IntegerField(source="cluster_id", allow_null=True)
    cluster_name = serializers.SerializerMethodField()
    object_repr = serializers.CharField()
    detail = serializers.DictField()

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_user(self, entry: AuditLog) -> str | None:
        return entry.actor.get_username() if entry.actor_id else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_cluster_name(self, entry: AuditLog) -> str | None:
        return entry.cluster.name if entry.cluster_id else None


class AuditLogFilter(django_filters.FilterSet):
    cluster = IdFilter(field_name="cluster_id", help_text="Cluster id.")
    user = django_filters.CharFilter(
        field_name="actor__username", max_length=150, help_text="User name of who acted (exact)."
    )
    action = django_filters.CharFilter(max_length=64, help_text="Exact action, e.g. job.cancel.")
    action_prefix = django_filters.CharFilter(
        field_name="action", lookup_expr="startswith", max_length=64, help_text="Actions starting so, e.g. job."
    )
    since = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="gte", help_text="Entries at or after this ISO 8601 time."
    )
    until = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="lt", help_text="Entries before this ISO 8601 time."
    )

    class Meta:
        model = AuditLog
        fields: list[str] = []


@extend_schema_view(
    list=extend_schema(summary="Read the audit log", responses={200: AuditLogOutput(many=True), **ERRORS}),
    retrieve=extend_schema(summary="Show an audit log entry", responses={200: AuditLogOutput, **READ_ERRORS}),
)
class AuditLogViewSet(APIViewSet):
    """Who did what to which cluster, newest first."""

    permission_model = AuditLog
    serializer_class = AuditLogOutput
    filter_backends = LIST_FILTERS
    filterset_class = AuditLogFilter
    ordering_fields = {
        "created_at": "created_at",
        "action": "action",
        "user": "actor__username",
        "cluster": "cluster__name",
    }
    search_fields = ("action", "object_repr", "cluster__name", "actor__username")
    http_method_names = ["get", "head", "options"]

    def get_queryset(self) -> Any:
        return AuditLog.objects.select_related("actor", "cluster").only(*_FIELDS).order_by("-created_at", "-pk")

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.paginated(self.filter_queryset(self.get_queryset()), AuditLogOutput)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(self.output(AuditLogOutput, get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])))
