"""Day-2 operations of the cluster admin: health check, kubeconfig fetch and certificate rotation buttons, the
health column of the cluster list, and the job list filter that hides the scheduled health syncs."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince

from ..choices import LIVE_NODE_STATUSES, JobKind
from ..models import Cluster, Job
from ..services.jobs import job_request
from .base import SERVICE_ERRORS, job_url, message_service_error

__all__ = ["ClusterDay2Mixin", "HealthSyncFilter", "health_state"]

REQUEST_JOB = "clusters.add_job"

# Buttons of the cluster page: URL slug -> (job kind, what the button says).
DAY2_BUTTONS: dict[str, tuple[str, str]] = {
    "health": (JobKind.HEALTH, "Check health"),
    "fetch-kubeconfig": (JobKind.FETCH_KUBECONFIG, "Fetch kubeconfig"),
    "rotate-certificates": (JobKind.CERT_ROTATE, "Rotate certificates"),
}


DAY2_BUTTONS_BY_KIND = dict(DAY2_BUTTONS.values())
# Kinds that restart nodes: the button leads to a page that says what will happen; only its POST requests the job.
CONFIRMED_KINDS: dict[str, str] = {JobKind.CERT_ROTATE: "admin/clusters/cluster/rotate_certificates.html"}


def health_state(cluster: Cluster) -> str:
    """The last health check's finding and its age ("—" before the first)."""
    if cluster.health_checked_at is None:
        return "—"
    age = timesince(cluster.health_checked_at, timezone.now()).split(",")[0]
    return format_html(
        '<span class="rke2-health" title="{}">{}</span> <span class="rke2-muted">({} ago)</span>',
        cluster.health_summary,
        cluster.health_summary if len(cluster.health_summary) <= 80 else cluster.health_summary[:77] + "...",
        age,
    )


class ClusterDay2Mixin:
    """POST views of the cluster page that request a health check, a kubeconfig fetch or a certificate rotation,
    with the permissions the API requires (``clusters.add_job``). A certificate rotation restarts every node: its
    button opens a page that says so, whose confirmed POST requests the job."""

    admin_site: Any
    opts: Any

    def get_urls(self) -> list[Any]:
        urls = super().get_urls()  # type: ignore[misc]
        view = self.admin_site.admin_view
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        custom = [
            path(
                f"<path:object_id>/{slug}/",
                view(self._day2_view(kind)),
                name=f"{name}_{slug.replace('-', '_')}",
            )
            for slug, (kind, _label) in DAY2_BUTTONS.items()
        ]
        return custom + urls

    @admin.display(description="health")
    def health_state(self, cluster: Cluster) -> str:
        return health_state(cluster)

    def _day2_view(self, kind: str) -> Any:
        def view(request: HttpRequest, object_id: str) -> HttpResponse:
            confirmation = CONFIRMED_KINDS.get(kind)
            if request.method != "POST" and confirmation is None:
                return HttpResponseNotAllowed(["POST"])
            cluster = self._cluster(request, object_id, REQUEST_JOB)  # type: ignore[attr-defined]
            if confirmation is not None and not (request.method == "POST" and request.POST.get("confirm") == "yes"):
                # Restarts every node: a page that says so, then a confirmed POST.
                return self._render(  # type: ignore[attr-defined]
                    request,
                    confirmation,
                    cluster,
                    DAY2_BUTTONS_BY_KIND[kind],
                    nodes=list(cluster.cluster_nodes.filter(status__in=LIVE_NODE_STATUSES).order_by("pk")),
                )
            try:
                job = job_request(cluster=cluster, kind=kind, params={}, actor=request.user)
            except SERVICE_ERRORS as exc:
                message_service_error(request, exc)
                return HttpResponseRedirect(reverse("admin:clusters_cluster_change", args=[cluster.pk]))
            messages.success(request, f"{job.get_kind_display()} #{job.pk} requested; its log follows below.")
            return HttpResponseRedirect(job_url(job))

        view.__name__ = f"{kind}_view"
        return view


class HealthSyncFilter(admin.SimpleListFilter):
    """The scheduled health syncs run every few minutes on every cluster: hidden from the job list unless asked."""

    title = "scheduled health syncs"
    parameter_name = "health_syncs"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("shown", "Shown"), ("only", "Only these")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> QuerySet[Job]:
        if self.value() == "shown" or request.GET.get("kind__exact") == JobKind.HEALTH_SYNC:
            return queryset
        if self.value() == "only":
            return queryset.filter(kind=JobKind.HEALTH_SYNC)
        return queryset.exclude(kind=JobKind.HEALTH_SYNC)

    def choices(self, changelist: Any) -> Any:
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "Hidden",
        }
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == str(lookup),
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }
