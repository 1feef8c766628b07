"""Webhooks through the API: configure them (the secret is write-only) and read their delivery log."""

from __future__ import annotations

from typing import Any, ClassVar

import django_filters
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import serializers, status
from rest_framework.generics import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response

from ..choices import WebhookDeliveryStatus
from ..models import Cluster, Webhook, WebhookDelivery
from ..services.webhooks import webhook_create, webhook_delete, webhook_update
from .filters import IdFilter
from .ordering import LIST_FILTERS
from .views import ERRORS, READ_ERRORS, APIViewSet

__all__ = ["WebhookDeliveryViewSet", "WebhookViewSet"]


class WebhookOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    url = serializers.CharField()
    cluster = serializers.IntegerField(source="cluster_id", allow_null=True, help_text="null: every cluster.")
    enabled = serializers.BooleanField()
    notify_successful = serializers.BooleanField()
    notify_failed = serializers.BooleanField()
    notify_canceled = serializers.BooleanField()
    has_secret = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_has_secret(self, hook: Webhook) -> bool:
        return True  # a webhook always has one; the field says so without showing it


class WebhookInput(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    url = serializers.CharField(max_length=2000)
    secret = serializers.CharField(
        write_only=True,
        min_length=16,
        max_length=1000,
        trim_whitespace=False,
        help_text="HMAC-SHA256 key (at least 16 characters). Write-only; omit it on update to keep the stored one.",
    )
    cluster = serializers.PrimaryKeyRelatedField(
        queryset=Cluster.objects.only("pk", "name"), allow_null=True, required=False, default=None
    )
    enabled = serializers.BooleanField(required=False, default=True)
    notify_successful = serializers.BooleanField(required=False, default=True)
    notify_failed = serializers.BooleanField(required=False, default=True)
    notify_canceled = serializers.BooleanField(required=False, default=False)


class WebhookUpdateInput(WebhookInput):
    secret = serializers.CharField(
        write_only=True,
        min_length=16,
        max_length=1000,
        trim_whitespace=False,
        required=False,
        help_text="A new HMAC-SHA256 key; omitted: the stored one is kept.",
    )


class WebhookDeliveryOutput(serializers.Serializer):
    id = serializers.IntegerField()
    webhook = serializers.IntegerField(source="webhook_id")
    webhook_name = serializers.CharField(source="webhook.name")
    job = serializers.IntegerField(source="job_id")
    event = serializers.CharField()
    status = serializers.ChoiceField(choices=WebhookDeliveryStatus.choices)
    attempts = serializers.IntegerField()
    response_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_attempt_at = serializers.DateTimeField(allow_null=True)
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)


class WebhookDeliveryFilter(django_filters.FilterSet):
    webhook = IdFilter(field_name="webhook_id")
    job = IdFilter(field_name="job_id")
    status = django_filters.ChoiceFilter(choices=WebhookDeliveryStatus.choices)

    class Meta:
        model = WebhookDelivery
        fields: list[str] = []


@extend_schema_view(
    list=extend_schema(summary="List webhooks", responses={200: WebhookOutput(many=True), **ERRORS}),
    retrieve=extend_schema(summary="Show a webhook", responses={200: WebhookOutput, **READ_ERRORS}),
    create=extend_schema(
        summary="Add a webhook",
        description="A signed JSON POST to `url` when a job of `cluster` (null: of any cluster) ends as chosen. "
        "`secret` is write-only.",
        request=WebhookInput,
        responses={201: WebhookOutput, **ERRORS},
    ),
    update=extend_schema(
        summary="Change a webhook", request=WebhookUpdateInput, responses={200: WebhookOutput, **ERRORS}
    ),
    partial_update=extend_schema(
        summary="Change some fields of a webhook", request=WebhookUpdateInput, responses={200: WebhookOutput, **ERRORS}
    ),
    destroy=extend_schema(summary="Delete a webhook and its delivery log", responses={204: None, **READ_ERRORS}),
)
class WebhookViewSet(APIViewSet):
    permission_model = Webhook
    serializer_class = WebhookOutput
    filter_backends = LIST_FILTERS
    ordering_fields = ("name", "created_at", "updated_at")
    search_fields = ("name", "url")

    def get_queryset(self) -> Any:
        return Webhook.objects.defer("secret").order_by("name", "pk")

    def get_webhook(self) -> Webhook:
        return get_object_or_404(Webhook.objects.all(), pk=self.kwargs["pk"])

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.paginated(self.filter_queryset(self.get_queryset()), WebhookOutput)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(self.output(WebhookOutput, get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])))

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = dict(self.parse(WebhookInput, request.data).validated_data)
        hook = webhook_create(actor=request.user, **data)
        return Response(self.output(WebhookOutput, hook), status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        hook = self.get_webhook()
        data = self.parse(WebhookUpdateInput, request.data, partial=kwargs.get("partial", False)).validated_data
        hook = webhook_update(webhook=hook, data=dict(data), actor=request.user)
        return Response(self.output(WebhookOutput, hook))

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.update(request, *args, partial=True, **kwargs)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        webhook_delete(webhook=self.get_webhook(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    list=extend_schema(summary="List webhook deliveries", responses={200: WebhookDeliveryOutput(many=True), **ERRORS}),
    retrieve=extend_schema(summary="Show a webhook delivery", responses={200: WebhookDeliveryOutput, **READ_ERRORS}),
)
class WebhookDeliveryViewSet(APIViewSet):
    """The delivery log: each job end told to each webhook, with the last response code."""

    permission_model = WebhookDelivery
    serializer_class = WebhookDeliveryOutput
    filter_backends = LIST_FILTERS
    filterset_class = WebhookDeliveryFilter
    ordering_fields = ("created_at", "status", "response_code", "attempts")
    search_fields = ("webhook__name", "event", "error")
    http_method_names = ["get", "head", "options"]
    action_permissions: ClassVar[dict[str, tuple[str, ...]]] = {
        "list": ("clusters.view_webhookdelivery",),
        "retrieve": ("clusters.view_webhookdelivery",),
    }

    def get_queryset(self) -> Any:
        return (
            WebhookDelivery.objects.select_related("webhook")
            .defer("payload", "response_body", "webhook__secret")
            .order_by("-created_at", "-pk")
        )

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.paginated(self.filter_queryset(self.get_queryset()), WebhookDeliveryOutput)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(
            self.output(WebhookDeliveryOutput, get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"]))
        )
