"""Job pages: the job list, the job page with its live log, and the (read-only) events."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from .. import selectors
from ..choices import JobKind
from ..models import Cluster, Job, JobEvent
from ..services.jobs import job_cancel
from ..services.relaunch import job_relaunch, relaunch_params, relaunch_permissions
from .base import SERVICE_ERRORS, ClusterListFilter, badge, job_url, message_service_error
from .day2 import HealthSyncFilter
from .operations import CANCEL_JOB
from .results import result_tables

__all__ = ["JobAdmin", "JobEventAdmin", "job_log_config"]

# Log lines the job page keeps on screen; the full log is a link away.
LOG_MAX_LINES = 2000
LOG_POLL_MILLISECONDS = 1000
LOG_PAGE_SIZE = 500


def job_log_config(job: Job) -> dict[str, Any]:
    """What the live log script needs: where to poll, how much to keep, and the job's state to start from."""
    return {
        "jobId": job.pk,
        "eventsUrl": reverse("clusters-api:job-events", args=[job.pk]),
        "stdoutUrl": reverse("clusters-api:job-stdout", args=[job.pk]) + "?ansi=0",
        "pageSize": LOG_PAGE_SIZE,
        "maxLines": LOG_MAX_LINES,
        "pollInterval": LOG_POLL_MILLISECONDS,
        "job": {
            "id": job.pk,
            "status": job.status,
            "stage": job.stage,
            "stages": list(job.stages or []),
            "stages_completed": job.stages_completed,
            "explanation": job.explanation,
            "host_counts": selectors.job_host_counts(job=job),
        },
    }


def _duration(job: Job) -> str:
    if job.started_at is None:
        return "—"
    seconds = int(((job.finished_at or timezone.now()) - job.started_at).total_seconds())
    minutes, seconds = divmod(max(seconds, 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Jobs are requested through the cluster operations and run by the workers: here they are followed and
    canceled, never edited."""

    change_form_template = "admin/clusters/job/change_form.html"
    list_display = ("job_label", "cluster_link", "status_badge", "progress", "requested_by", "created_at", "duration")
    list_display_links = ("job_label",)
    # By date with fixed ranges, not a date hierarchy: listing the years and months that hold jobs reads them all.
    list_filter = (
        "status",
        "kind",
        HealthSyncFilter,
        ("created_at", admin.DateFieldListFilter),
        ("cluster", ClusterListFilter),
    )
    search_fields = ("cluster__name", "=id")
    list_select_related = ("requested_by",)  # the clusters are prefetched: see get_queryset
    show_full_result_count = False  # one count a page, not two
    list_per_page = 50
    actions = ["action_cancel"]
    fieldsets = (
        (None, {"fields": (("cluster_link", "kind"), "stages_display", "params")}),
        ("Timing", {"fields": (("requested_by", "created_at"), ("started_at", "finished_at"), "duration")}),
        ("Outcome", {"fields": ("explanation", "rc", "emitted_events", "resume_of")}),
        ("Result as stored (JSON)", {"fields": ("result",), "classes": ("collapse",)}),
        (
            "Cancel",
            {"fields": (("cancel_requested", "cancel_requested_by", "cancel_requested_at"),), "classes": ("collapse",)},
        ),
        (
            "Worker",
            {
                "fields": ("celery_task_id", ("worker_hostname", "worker_pid", "ansible_pid"), "heartbeat_at"),
                "classes": ("collapse",),
            },
        ),
    )
    readonly_fields = (
        "cluster_link",
        "kind",
        "status_badge",
        "stage",
        "stages_display",
        "params",
        "requested_by",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "explanation",
        "rc",
        "emitted_events",
        "result",
        "resume_of",
        "cancel_requested",
        "cancel_requested_by",
        "cancel_requested_at",
        "celery_task_id",
        "worker_hostname",
        "worker_pid",
        "ansible_pid",
        "heartbeat_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False

    def has_cancel_job_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(CANCEL_JOB)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        # The clusters in a query of their own, without their encrypted columns (each decrypted on load): joined,
        # SQLite's planner would start from the clusters and sort every job to find the newest page.
        clusters = Cluster.objects.defer("token", "kubeconfig", "adoption_report")
        return (
            super()
            .get_queryset(request)
            .select_related("requested_by", "cancel_requested_by")
            .prefetch_related(Prefetch("cluster", queryset=clusters))
        )

    def get_urls(self) -> list[Any]:
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("<path:object_id>/cancel/", self.admin_site.admin_view(self.cancel_view), name=f"{name}_cancel"),
            path("<path:object_id>/relaunch/", self.admin_site.admin_view(self.relaunch_view), name=f"{name}_relaunch"),
            *super().get_urls(),
        ]

    @admin.display(description="job", ordering="pk")
    def job_label(self, job: Job) -> str:
        return f"{job.get_kind_display()} #{job.pk}"

    @admin.display(description="cluster", ordering="cluster__name")
    def cluster_link(self, job: Job) -> str:
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:clusters_cluster_change", args=[job.cluster_id]), job.cluster
        )

    @admin.display(description="status", ordering="status")
    def status_badge(self, job: Job) -> str:
        label = job.get_status_display()
        if job.is_active and job.cancel_requested:
            label += " (cancel requested)"
        return badge(job.status, label)

    @admin.display(description="stages")
    def progress(self, job: Job) -> str:
        total = len(job.stages or [])
        return f"{job.stages_completed}/{total}" + (f" · {job.stage}" if job.stage and job.is_active else "")

    @admin.display(description="stages")
    def stages_display(self, job: Job) -> str:
        return ", ".join(job.stages or []) or "—"

    @admin.display(description="duration")
    def duration(self, job: Job) -> str:
        return _duration(job)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        job = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if job is not None:
            context.update(
                {
                    "subtitle": f"{job.get_kind_display()} #{job.pk} · {job.cluster.name}",
                    "job": job,
                    "log_config": job_log_config(job),
                    "host_summaries": list(job.host_summaries.order_by("host_name")),
                    "can_cancel": job.is_active and self.has_cancel_job_permission(request),
                    "can_relaunch": not job.is_active and request.user.has_perms(relaunch_permissions(job.kind)),
                    "relaunch_needs_confirm": job.kind == JobKind.UNINSTALL,
                    "relaunch_resumes": job.kind == JobKind.INSTALL and relaunch_params(job).get("resume", False),
                    "result_tables": result_tables(job.result),
                    "duration_display": _duration(job),
                }
            )
        return super().change_view(request, object_id, form_url, context)

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self.get_object(request, object_id)
        if job is None:
            raise Http404("No such job.")
        if not self.has_cancel_job_permission(request):
            raise PermissionDenied
        try:
            job = job_cancel(job=job, actor=request.user)
        except SERVICE_ERRORS as exc:
            message_service_error(request, exc)
        else:
            if job.is_active:
                messages.success(request, "Cancel requested: the worker stops the playbook within seconds.")
            else:
                messages.success(request, "The job was canceled before it started.")
        return HttpResponseRedirect(job_url(job))

    def relaunch_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self.get_object(request, object_id)
        if job is None:
            raise Http404("No such job.")
        if not request.user.has_perms(relaunch_permissions(job.kind)):
            raise PermissionDenied
        try:
            new = job_relaunch(job=job, actor=request.user, confirm=request.POST.get("confirm", "")[:63])
        except SERVICE_ERRORS as exc:
            message_service_error(request, exc)
            return HttpResponseRedirect(job_url(job))
        messages.success(
            request, f"{new.get_kind_display()} #{new.pk} requested again from #{job.pk}; its log follows."
        )
        return HttpResponseRedirect(job_url(new))

    @admin.action(description="Cancel the selected jobs", permissions=["cancel_job"])
    def action_cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        for job in queryset:
            try:
                job_cancel(job=job, actor=request.user)
            except SERVICE_ERRORS as exc:
                message_service_error(request, exc, subject=f"{job.get_kind_display()} #{job.pk}")
            else:
                messages.success(request, f"{job.get_kind_display()} #{job.pk}: cancel requested.")


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    """Ansible events as the workers stored them; read-only."""

    list_display = ("job", "counter", "event", "stage", "host_name", "task", "failed", "changed", "created")
    list_filter = ("failed", "changed")  # no filter by event type: listing its values would scan every event
    search_fields = ("=job__id", "host_name", "task")
    list_select_related = ("job",)
    show_full_result_count = False
    list_per_page = 100
    fields = (
        "job",
        "counter",
        "stage",
        "event",
        "host_name",
        "play",
        "role",
        "task",
        "task_action",
        "failed",
        "changed",
        "stdout",
        "created",
        "ingested_at",
        "uuid",
        "parent_uuid",
        "start_line",
        "end_line",
        "event_data",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: JobEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: JobEvent | None = None) -> bool:
        return False
