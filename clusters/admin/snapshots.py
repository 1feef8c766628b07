"""etcd snapshots in the admin: the cluster's snapshot page (take, list again, prune, delete, schedule) and the
restore page with its typed confirmation; a read-only list of every cluster's snapshots."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from ..choices import EtcdSnapshotKind, NodeRole
from ..forms import apply_service_errors, service_error_dict
from ..models import Cluster, EtcdSnapshot
from ..services.snapshots import (
    MAX_RETENTION,
    etcd_restore_request,
    snapshot_request,
    snapshot_schedule_set,
    snapshots_list_request,
    snapshots_prune_request,
)
from .base import SERVICE_ERRORS, job_url, message_service_error

__all__ = ["ClusterSnapshotsMixin", "EtcdSnapshotAdmin"]

REQUEST_JOB = "clusters.add_job"
VIEW_SNAPSHOTS = "clusters.view_etcdsnapshot"
RESTORE = "clusters.restore_etcdsnapshot"
CHANGE_CLUSTER = "clusters.change_cluster"


class SnapshotTakeForm(forms.Form):
    name = forms.CharField(
        label="Name",
        required=False,
        max_length=40,
        widget=forms.TextInput(attrs={"placeholder": "on-demand", "size": 20}),
        help_text="The file name's prefix (empty: on-demand). Each server writes <name>-<node>-<time>.",
    )


class SnapshotPruneForm(forms.Form):
    name = forms.ChoiceField(
        label="Snapshots named",
        choices=[(kind.value, kind.value) for kind in EtcdSnapshotKind],
        initial=EtcdSnapshotKind.ON_DEMAND,
    )
    retention = forms.IntegerField(
        label="Keep per server", min_value=1, max_value=MAX_RETENTION, initial=5, help_text="The newest ones are kept."
    )


class SnapshotScheduleForm(forms.Form):
    interval_minutes = forms.IntegerField(
        label="Every (minutes)", min_value=0, max_value=60 * 24 * 31, help_text="0: no scheduled snapshots."
    )
    retention = forms.IntegerField(
        label="Scheduled snapshots kept per server", min_value=0, max_value=MAX_RETENTION, help_text="0: all."
    )


class RestoreForm(forms.Form):
    confirm = forms.CharField(
        label="Cluster name",
        max_length=63,
        widget=forms.TextInput(attrs={"autocomplete": "off", "size": 30}),
        help_text="Type the cluster's name to confirm.",
    )


class ClusterSnapshotsMixin:
    """The cluster admin's pages for etcd snapshots and restore."""

    admin_site: Any
    opts: Any

    def get_urls(self) -> list[Any]:
        urls = super().get_urls()  # type: ignore[misc]
        view = self.admin_site.admin_view
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("<path:object_id>/etcd-snapshots/", view(self.etcd_snapshots_view), name=f"{name}_etcd_snapshots"),
            path(
                "<path:object_id>/etcd-restore/<int:snapshot_id>/",
                view(self.etcd_restore_view),
                name=f"{name}_etcd_restore",
            ),
            *urls,
        ]

    def _snapshot_cluster(self, request: HttpRequest, object_id: str, *perms: str) -> Cluster:
        try:
            pk = int(object_id)
        except (TypeError, ValueError):
            pk = 0
        cluster = Cluster.objects.filter(pk=pk).first()
        if cluster is None:
            from django.http import Http404

            raise Http404("No such cluster.")
        if not request.user.has_perms(perms):  # type: ignore[attr-defined]
            raise PermissionDenied
        return cluster

    def _snapshots_url(self, cluster: Cluster) -> str:
        return reverse("admin:clusters_cluster_etcd_snapshots", args=[cluster.pk])

    def etcd_snapshots_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        cluster = self._snapshot_cluster(request, object_id, VIEW_SNAPSHOTS)
        take = SnapshotTakeForm(prefix="take")
        prune = SnapshotPruneForm(prefix="prune")
        schedule = SnapshotScheduleForm(
            prefix="schedule",
            initial={
                "interval_minutes": cluster.etcd_snapshot_interval_minutes,
                "retention": cluster.etcd_snapshot_retention,
            },
        )
        if request.method == "POST":
            action = request.POST.get("action", "")
            response, take, prune, schedule = self._snapshot_action(request, cluster, action, take, prune, schedule)
            if response is not None:
                return response
        snapshots = list(cluster.etcd_snapshots.select_related("node", "job").order_by("-created", "node_name"))
        initial = cluster.cluster_nodes.filter(role=NodeRole.INITIAL_MASTER).values_list("hostname", flat=True).first()
        return self._render(  # type: ignore[attr-defined]
            request,
            "admin/clusters/cluster/etcd_snapshots.html",
            cluster,
            "etcd snapshots",
            snapshots=snapshots,
            initial_master=initial or "",
            take_form=take,
            prune_form=prune,
            schedule_form=schedule,
            can_request=request.user.has_perm(REQUEST_JOB),  # type: ignore[attr-defined]
            can_restore=request.user.has_perms((REQUEST_JOB, RESTORE)),  # type: ignore[attr-defined]
            can_schedule=request.user.has_perm(CHANGE_CLUSTER),  # type: ignore[attr-defined]
        )

    def _snapshot_action(
        self, request: HttpRequest, cluster: Cluster, action: str, take: Any, prune: Any, schedule: Any
    ) -> tuple[HttpResponse | None, Any, Any, Any]:
        needed = CHANGE_CLUSTER if action == "schedule" else REQUEST_JOB
        if not request.user.has_perm(needed):  # type: ignore[attr-defined]
            raise PermissionDenied
        try:
            if action == "take":
                take = SnapshotTakeForm(request.POST, prefix="take")
                if not take.is_valid():
                    return None, take, prune, schedule
                job = snapshot_request(cluster=cluster, name=take.cleaned_data["name"], actor=request.user)
            elif action == "list":
                job = snapshots_list_request(cluster=cluster, actor=request.user)
            elif action == "prune":
                prune = SnapshotPruneForm(request.POST, prefix="prune")
                if not prune.is_valid():
                    return None, take, prune, schedule
                job = snapshots_prune_request(
                    cluster=cluster,
                    retention=prune.cleaned_data["retention"],
                    name=prune.cleaned_data["name"],
                    actor=request.user,
                )
            elif action == "delete":
                ids = [int(value) for value in request.POST.getlist("snapshot") if value.isdigit()]
                if not ids:
                    messages.error(request, "Select the snapshots to delete.")
                    return HttpResponseRedirect(self._snapshots_url(cluster)), take, prune, schedule
                job = snapshots_prune_request(cluster=cluster, snapshot_ids=ids, actor=request.user)
            elif action == "schedule":
                schedule = SnapshotScheduleForm(request.POST, prefix="schedule")
                if not schedule.is_valid():
                    return None, take, prune, schedule
                snapshot_schedule_set(
                    cluster=cluster,
                    interval_minutes=schedule.cleaned_data["interval_minutes"],
                    retention=schedule.cleaned_data["retention"],
                    actor=request.user,
                )
                messages.success(request, "Snapshot schedule saved.")
                return HttpResponseRedirect(self._snapshots_url(cluster)), take, prune, schedule
            else:
                return HttpResponseNotAllowed(["POST"]), take, prune, schedule
        except SERVICE_ERRORS as exc:
            form = {"take": take, "prune": prune, "schedule": schedule}.get(action)
            if form is not None and isinstance(exc, ValidationError) and form.is_bound:
                apply_service_errors(form, service_error_dict(exc))
            else:
                message_service_error(request, exc)
            return None, take, prune, schedule
        messages.success(request, f"{job.get_kind_display()} #{job.pk} requested; its log follows below.")
        return HttpResponseRedirect(job_url(job)), take, prune, schedule

    def etcd_restore_view(self, request: HttpRequest, object_id: str, snapshot_id: int) -> HttpResponse:
        cluster = self._snapshot_cluster(request, object_id, VIEW_SNAPSHOTS, REQUEST_JOB, RESTORE)
        snapshot = EtcdSnapshot.objects.filter(cluster=cluster, pk=snapshot_id).first()
        if snapshot is None:
            messages.error(request, "No such snapshot of this cluster; list the snapshots again.")
            return HttpResponseRedirect(self._snapshots_url(cluster))
        form = RestoreForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            try:
                job = etcd_restore_request(
                    cluster=cluster, snapshot=snapshot, confirm=form.cleaned_data["confirm"], actor=request.user
                )
            except SERVICE_ERRORS as exc:
                if isinstance(exc, ValidationError):
                    apply_service_errors(form, service_error_dict(exc))
                else:
                    message_service_error(request, exc)
            else:
                messages.success(request, f"{job.get_kind_display()} #{job.pk} requested; its log follows below.")
                return HttpResponseRedirect(job_url(job))
        return self._render(  # type: ignore[attr-defined]
            request,
            "admin/clusters/cluster/etcd_restore.html",
            cluster,
            "Restore etcd",
            form=form,
            snapshot=snapshot,
            snapshots_url=self._snapshots_url(cluster),
            nodes=list(cluster.cluster_nodes.filter(status="active").order_by("pk")),
        )


@admin.register(EtcdSnapshot)
class EtcdSnapshotAdmin(admin.ModelAdmin):
    """Every cluster's snapshots, as the last snapshot jobs listed them (read-only: jobs change them)."""

    list_display = ("name", "cluster_link", "node_name", "kind", "size_text", "created", "job_link")
    list_filter = ("kind", "cluster")
    search_fields = ("name", "node_name", "cluster__name")
    ordering = ("-created",)
    list_select_related = ("cluster", "job")

    @admin.display(description="cluster", ordering="cluster__name")
    def cluster_link(self, obj: EtcdSnapshot) -> str:
        url = reverse("admin:clusters_cluster_etcd_snapshots", args=[obj.cluster_id])
        return format_html('<a href="{}">{}</a>', url, obj.cluster.name)

    @admin.display(description="size", ordering="size")
    def size_text(self, obj: EtcdSnapshot) -> str:
        size = float(obj.size)
        for unit in ("B", "KiB", "MiB", "GiB"):
            if size < 1024 or unit == "GiB":
                return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
            size /= 1024
        return str(obj.size)

    @admin.display(description="job")
    def job_link(self, obj: EtcdSnapshot) -> str:
        if obj.job_id is None:
            return "-"
        return format_html('<a href="{}">#{}</a>', reverse("admin:clusters_job_change", args=[obj.job_id]), obj.job_id)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
