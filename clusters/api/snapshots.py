"""etcd snapshots and restore in the API.

- ``GET /api/clusters/{id}/etcd-snapshots/``: the snapshots the last snapshot jobs listed on each server;
- ``POST /api/clusters/{id}/etcd-snapshots/``: take a snapshot on every active server (``name``: optional prefix);
- ``POST /api/clusters/{id}/etcd-snapshots/refresh/``: list them again;
- ``POST /api/clusters/{id}/etcd-snapshots/prune/``: keep the ``retention`` newest per server of those named
  ``name`` (default ``on-demand``), or delete ``snapshot_ids``;
- ``PUT /api/clusters/{id}/etcd-snapshots/schedule/``: ``interval_minutes`` (0: none) and ``retention`` (0: all);
- ``POST /api/clusters/{id}/etcd-restore/``: restore from ``snapshot_id`` (a copy on the initial master), with
  ``confirm`` the cluster's name.

Job requests answer 202 with the job, like the cluster actions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.generics import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response

from ..choices import EtcdSnapshotKind
from ..models import Cluster, EtcdSnapshot
from ..services.snapshots import (
    MAX_INTERVAL_MINUTES,
    MAX_RETENTION,
    etcd_restore_request,
    snapshot_request,
    snapshot_schedule_set,
    snapshots_list_request,
    snapshots_prune_request,
)
from . import serializers as s
from .views import CONFLICT, ERRORS, LIST_ERRORS, READ_ERRORS, APIViewSet

__all__ = ["ClusterRestoreViewSet", "ClusterSnapshotViewSet"]

JOB = "clusters.add_job"


@extend_schema_serializer(component_name="EtcdSnapshot")
class EtcdSnapshotOutput(serializers.Serializer):
    id = serializers.IntegerField()
    cluster = serializers.IntegerField(source="cluster_id")
    node = serializers.IntegerField(source="node_id", allow_null=True)
    node_name = serializers.CharField(help_text="The server holding the file.")
    name = serializers.CharField()
    path = serializers.CharField()
    size = serializers.IntegerField(help_text="Bytes.")
    created = serializers.DateTimeField(allow_null=True)
    kind = s.enum_field(EtcdSnapshotKind, "EtcdSnapshotKind")
    job = serializers.IntegerField(source="job_id", allow_null=True, help_text="The job that first listed it.")
    listed_at = serializers.DateTimeField()


@extend_schema_serializer(component_name="EtcdSnapshotTake")
class SnapshotTakeInput(serializers.Serializer):
    name = s.StrictCharField(
        required=False, allow_blank=True, max_length=40, help_text="The file name's prefix (default on-demand)."
    )


@extend_schema_serializer(component_name="EtcdSnapshotPrune")
class SnapshotPruneInput(serializers.Serializer):
    retention = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_RETENTION, help_text="How many to keep per server."
    )
    name = s.StrictCharField(
        required=False, allow_blank=True, max_length=40, help_text="Name prefix of the snapshots to prune."
    )
    snapshot_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        min_length=1,
        max_length=MAX_RETENTION,
        help_text="Delete these snapshots instead.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("retention" in attrs) == ("snapshot_ids" in attrs):
            raise serializers.ValidationError({"retention": ["Give either retention or snapshot_ids."]})
        return attrs


@extend_schema_serializer(component_name="EtcdSnapshotSchedule")
class SnapshotScheduleInput(serializers.Serializer):
    interval_minutes = serializers.IntegerField(min_value=0, max_value=MAX_INTERVAL_MINUTES, help_text="0: none.")
    retention = serializers.IntegerField(min_value=0, max_value=MAX_RETENTION, help_text="0: keep all.")


@extend_schema_serializer(component_name="EtcdSnapshotScheduleResult")
class SnapshotScheduleOutput(serializers.Serializer):
    interval_minutes = serializers.IntegerField(source="etcd_snapshot_interval_minutes")
    retention = serializers.IntegerField(source="etcd_snapshot_retention")
    last_scheduled_at = serializers.DateTimeField(source="etcd_snapshot_last_scheduled_at", allow_null=True)


@extend_schema_serializer(component_name="EtcdRestore")
class RestoreInput(serializers.Serializer):
    snapshot_id = serializers.IntegerField(min_value=1, help_text="A snapshot on the initial master.")
    confirm = s.StrictCharField(max_length=63, help_text="The cluster's name, to confirm.")


class _ClusterScoped(APIViewSet):
    def get_cluster(self) -> Cluster:
        cluster = get_object_or_404(Cluster.objects.all(), pk=self.kwargs["cluster_pk"])
        self.check_object_permissions(self.request, cluster)
        return cluster


class ClusterSnapshotViewSet(_ClusterScoped):
    """A cluster's etcd snapshots and the jobs that take, list and prune them."""

    serializer_class = EtcdSnapshotOutput
    action_permissions: ClassVar[Mapping[str, Sequence[str]]] = {
        "list": ["clusters.view_cluster", "clusters.view_etcdsnapshot"],
        "take": [JOB],
        "refresh": [JOB],
        "prune": [JOB],
        "schedule": ["clusters.change_cluster"],
    }

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):
            return EtcdSnapshot.objects.none()
        return EtcdSnapshot.objects.filter(cluster=self.get_cluster()).order_by("-created", "node_name", "name")

    @extend_schema(
        summary="List a cluster's etcd snapshots",
        description="What the last snapshot jobs listed on each server (newest first).",
        responses={200: EtcdSnapshotOutput(many=True), **LIST_ERRORS},
    )
    def list(self, request: Request, cluster_pk: str = "") -> Response:
        return self.paginated(self.get_queryset(), EtcdSnapshotOutput)

    @extend_schema(
        summary="Take an etcd snapshot",
        description="Every active server snapshots its etcd member (`rke2 etcd-snapshot save`), then the snapshots "
        "are listed again.",
        request=SnapshotTakeInput,
        responses={202: s.JobOutput, **ERRORS, **CONFLICT},
    )
    def take(self, request: Request, cluster_pk: str = "") -> Response:
        cluster = self.get_cluster()
        data = self.parse(SnapshotTakeInput, request.data).validated_data
        return self.job_accepted(snapshot_request(cluster=cluster, name=data.get("name") or "", actor=request.user))

    @extend_schema(
        summary="List the etcd snapshots again",
        description="Reads `rke2 etcd-snapshot list` on every active server.",
        request=None,
        responses={202: s.JobOutput, **ERRORS, **CONFLICT},
    )
    def refresh(self, request: Request, cluster_pk: str = "") -> Response:
        return self.job_accepted(snapshots_list_request(cluster=self.get_cluster(), actor=request.user))

    @extend_schema(
        summary="Delete old etcd snapshots",
        description="Keeps the `retention` newest snapshots per server among those named `name` (default "
        "on-demand), as `rke2 etcd-snapshot prune`; or deletes the snapshots `snapshot_ids`.",
        request=SnapshotPruneInput,
        responses={202: s.JobOutput, **ERRORS, **CONFLICT},
    )
    def prune(self, request: Request, cluster_pk: str = "") -> Response:
        cluster = self.get_cluster()
        data = self.parse(SnapshotPruneInput, request.data).validated_data
        job = snapshots_prune_request(
            cluster=cluster,
            retention=data.get("retention"),
            name=data.get("name") or "",
            snapshot_ids=data.get("snapshot_ids"),
            actor=request.user,
        )
        return self.job_accepted(job)

    @extend_schema(
        summary="Schedule etcd snapshots",
        description="Beat requests a snapshot job every `interval_minutes` (0: never); each server then keeps "
        "`retention` scheduled snapshots (0: all). A cluster with an active job waits for the next minute.",
        request=SnapshotScheduleInput,
        responses={200: SnapshotScheduleOutput, **ERRORS},
    )
    def schedule(self, request: Request, cluster_pk: str = "") -> Response:
        cluster = self.get_cluster()
        data = self.parse(SnapshotScheduleInput, request.data).validated_data
        cluster = snapshot_schedule_set(
            cluster=cluster, interval_minutes=data["interval_minutes"], retention=data["retention"], actor=request.user
        )
        return Response(self.output(SnapshotScheduleOutput, cluster))


class ClusterRestoreViewSet(_ClusterScoped):
    """Restore a cluster's etcd from a snapshot."""

    serializer_class = RestoreInput
    action_permissions: ClassVar[Mapping[str, Sequence[str]]] = {
        "restore": [JOB, "clusters.restore_etcdsnapshot"],
    }

    @extend_schema(
        summary="Restore etcd from a snapshot",
        description="Stops every node, resets etcd on the initial master from the snapshot (`rke2 server "
        "--cluster-reset --cluster-reset-restore-path`), removes the other servers' etcd data, starts the initial "
        "master, lets the other servers join one at a time, then starts the agents. `confirm` must be the "
        "cluster's name.",
        request=RestoreInput,
        responses={202: s.JobOutput, **ERRORS, **CONFLICT, **{k: v for k, v in READ_ERRORS.items() if k == 404}},
    )
    def restore(self, request: Request, cluster_pk: str = "") -> Response:
        cluster = self.get_cluster()
        data = self.parse(RestoreInput, request.data).validated_data
        job = etcd_restore_request(
            cluster=cluster, snapshot=data["snapshot_id"], confirm=data["confirm"], actor=request.user
        )
        return self.job_accepted(job)
