"""Cluster pages: the list, the cluster page with its nodes, and the lifecycle operations."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from ..choices import (
    ACTIVE_JOB_STATUSES,
    LIVE_NODE_STATUSES,
    JobKind,
    NodeRole,
    NodeStatus,
)
from ..forms import ClusterForm, NodeInlineForm, NodeInlineFormSet, node_spec, service_error_dict
from ..integrity import integrity_error_messages
from ..models import CRITICAL_FIELDS, Cluster, Job, Node
from ..selectors import node_count_subquery
from ..services.adoption import adoption_differences, differences_text
from ..services.audit import audit_record
from ..services.clusters import (
    CLUSTER_FIELDS,
    cluster_create,
    cluster_delete,
    cluster_update,
    cluster_warnings,
    nodes_add,
    nodes_mark_for_removal,
)
from ..services.jobs import job_cancel, job_request
from ..services.node_labels import node_labels_changed
from ..services.relaunch import job_relaunch, relaunch_permissions
from .base import SERVICE_ERRORS, ServiceErrorsMixin, ServiceRejected, badge, job_url, message_service_error
from .day2 import ClusterDay2Mixin
from .operations import CANCEL_JOB, DOWNLOAD_KUBECONFIG, REQUEST_JOB, ClusterOperationsMixin
from .snapshots import ClusterSnapshotsMixin

__all__ = ["ClusterAdmin", "NodeInline"]

# Jobs shown on the cluster page; the job list (filtered by cluster) has the rest.
RECENT_JOBS = 15


class NodeInline(admin.TabularInline):
    model = Node
    form = NodeInlineForm
    formset = NodeInlineFormSet
    fields = (
        "hostname",
        "internal_ip",
        "external_ip",
        "use_external_ip",
        "role",
        "labels",
        "taints",
        "node_vars",
        "state",
    )
    readonly_fields = ("state",)
    extra = 0
    verbose_name = "node"
    verbose_name_plural = "nodes"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Node]:
        return super().get_queryset(request).exclude(status=NodeStatus.REMOVED).order_by("pk")

    def get_extra(self, request: HttpRequest, obj: Cluster | None = None, **kwargs: Any) -> int:
        return 1 if obj is None else 0

    @admin.display(description="state")
    def state(self, node: Node) -> str:
        if not node.pk:
            return badge(NodeStatus.PENDING, "new")
        parts = [badge(node.status, node.get_status_display())]
        if node.installed_version:
            parts.append(format_html('<span class="rke2-muted">{}</span>', node.installed_version))
        if node.last_error:
            parts.append(format_html('<span class="rke2-error-hint" title="{}">last error</span>', node.last_error))
        return format_html_join(" ", "{}", ((part,) for part in parts))


class ActiveJobFilter(admin.SimpleListFilter):
    title = "active job"
    parameter_name = "active_job"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Has an active job"), ("no", "No active job")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> QuerySet[Cluster]:
        active = Job.objects.filter(cluster=OuterRef("pk"), status__in=ACTIVE_JOB_STATUSES)
        if self.value() == "yes":
            return queryset.filter(Exists(active))
        if self.value() == "no":
            return queryset.exclude(Exists(active))
        return queryset


_LIVE = Q(status__in=[*LIVE_NODE_STATUSES, NodeStatus.DRAINING])
# Correlated subqueries, computed for the page's rows only (a join would group every node of every cluster).
_ROLE_COUNTS = {f"nodes_{role.value}": node_count_subquery(_LIVE & Q(role=role)) for role in NodeRole}
_STATUS_COUNTS = {
    f"nodes_{status.value}": node_count_subquery(Q(status=status))
    for status in NodeStatus
    if status != NodeStatus.REMOVED
}


def annotate_cluster_list(queryset: QuerySet[Cluster]) -> QuerySet[Cluster]:
    """Node counts by role and status and the last job, so that the list costs the same few queries for any
    number of clusters."""
    # Scheduled health syncs are not what an operator looks for here (the health column shows what they found).
    last_job = (
        Job.objects.filter(cluster=OuterRef("pk")).exclude(kind=JobKind.HEALTH_SYNC).order_by("-created_at", "-pk")
    )
    return queryset.annotate(
        **_ROLE_COUNTS,
        **_STATUS_COUNTS,
        last_job_id=Subquery(last_job.values("pk")[:1]),
        last_job_kind=Subquery(last_job.values("kind")[:1]),
        last_job_status=Subquery(last_job.values("status")[:1]),
    )


@admin.register(Cluster)
class ClusterAdmin(
    ServiceErrorsMixin, ClusterDay2Mixin, ClusterOperationsMixin, ClusterSnapshotsMixin, admin.ModelAdmin
):
    form = ClusterForm
    inlines = [NodeInline]
    change_form_template = "admin/clusters/cluster/change_form.html"
    list_display = (
        "name",
        "rke2_version",
        "status_badge",
        "health_state",
        "stage_badge",
        "node_roles",
        "node_statuses",
        "last_job",
    )
    list_display_links = ("name",)
    list_filter = ("status", "installation_stage", ActiveJobFilter, "cni", "rke2_version", "ssh_credential")
    search_fields = (
        "name",
        "description",
        "registration_address",
        "cluster_nodes__hostname",
        "cluster_nodes__internal_ip",
    )
    list_select_related = ("ssh_credential",)
    list_per_page = 50
    actions = [
        "action_preflight",
        "action_install",
        "action_resume_install",
        "action_add_nodes",
        "action_upgrade",
        "action_uninstall",
        "action_adopt",
        "action_relaunch_last",
        "action_cancel",
    ]
    readonly_fields = (
        "status_badge",
        "stage_badge",
        "bootstrapped_at",
        "token_state",
        "kubeconfig_state",
        "created_at",
        "updated_at",
        "adoption_state",
        "adoption_differences",
    )

    # --- list ----------------------------------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Cluster]:
        return annotate_cluster_list(super().get_queryset(request))

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        # A cluster record is deleted from its own page, after its jobs have finished (see delete_model).
        actions.pop("delete_selected", None)
        return actions

    @admin.display(description="status", ordering="status")
    def status_badge(self, cluster: Cluster) -> str:
        return badge(cluster.status, cluster.get_status_display())

    @admin.display(description="installation stage", ordering="installation_stage")
    def stage_badge(self, cluster: Cluster) -> str:
        return badge(cluster.installation_stage, cluster.get_installation_stage_display())

    @admin.display(description="nodes by role")
    def node_roles(self, cluster: Cluster) -> str:
        short = {NodeRole.INITIAL_MASTER: "initial master", NodeRole.MASTER: "masters", NodeRole.WORKER: "workers"}
        parts = [
            (getattr(cluster, f"nodes_{role.value}", 0), short[role])
            for role in NodeRole
            if getattr(cluster, f"nodes_{role.value}", 0)
        ]
        if not parts:
            return format_html('<span class="rke2-muted">{}</span>', "no nodes")
        return format_html_join(", ", '<span class="rke2-count">{}</span> {}', parts)

    @admin.display(description="nodes by status")
    def node_statuses(self, cluster: Cluster) -> str:
        parts = [
            badge(status, f"{getattr(cluster, f'nodes_{status.value}', 0)} {status.label.lower()}")
            for status in NodeStatus
            if status != NodeStatus.REMOVED and getattr(cluster, f"nodes_{status.value}", 0)
        ]
        return format_html_join(" ", "{}", ((part,) for part in parts)) if parts else "—"

    @admin.display(description="last job", ordering="last_job_id")
    def last_job(self, cluster: Cluster) -> str:
        if not getattr(cluster, "last_job_id", None):
            return "—"
        kind = (
            JobKind(cluster.last_job_kind).label if cluster.last_job_kind in JobKind.values else cluster.last_job_kind
        )
        return format_html(
            '<a href="{}">{} #{}</a> {}',
            reverse("admin:clusters_job_change", args=[cluster.last_job_id]),
            kind,
            cluster.last_job_id,
            badge(cluster.last_job_status),
        )

    # --- cluster page --------------------------------------------------------------------------------------------

    def get_fieldsets(
        self, request: HttpRequest, obj: Cluster | None = None
    ) -> list[tuple[str | None, dict[str, Any]]]:
        fieldsets: list[tuple[str | None, dict[str, Any]]] = [
            (None, {"fields": ("name", "description", "rke2_version", "ssh_credential")}),
            (
                "Network",
                {
                    "fields": (
                        "registration_address",
                        "cni",
                        ("cluster_cidr", "service_cidr"),
                        ("cluster_dns", "cluster_domain"),
                        "tls_san",
                    )
                },
            ),
            ("Extra RKE2 configuration", {"fields": ("cluster_vars",), "classes": ("collapse",)}),
            ("Host preparation", {"fields": ("prepare_firewall", "prepare_network_manager", "prepare_kernel")}),
        ]
        if obj is not None and (obj.adoption_required or obj.adoption_report):
            fieldsets.append(("Adoption", {"fields": ("adoption_state", "adoption_differences")}))
        if obj is not None:
            fieldsets.insert(
                1,
                (
                    "State",
                    {
                        "fields": (
                            ("status_badge", "stage_badge"),
                            "bootstrapped_at",
                            "token_state",
                            "kubeconfig_state",
                            ("created_at", "updated_at"),
                        )
                    },
                ),
            )
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Cluster | None = None) -> tuple[str, ...]:
        fields = tuple(self.readonly_fields)
        if obj is not None and obj.is_bootstrapped:
            # Frozen once the first server has started: RKE2 refuses servers whose values differ, and the version
            # changes with an upgrade job.
            fields += ("rke2_version", *CRITICAL_FIELDS)
        return fields

    @admin.display(description="adoption")
    def adoption_state(self, cluster: Cluster) -> str:
        if cluster.adoption_required:
            return "Imported, not adopted yet: run the adopt job before install, scale or upgrade jobs."
        report = cluster.adoption_report or {}
        changes = " ".join(report.get("changes") or [])
        return f"Adopted by job #{report.get('job')} ({report.get('adopted_at', '')}). {changes}".strip()

    @admin.display(description="what runs vs what the portal would write")
    def adoption_differences(self, cluster: Cluster) -> str:
        return format_html("<pre>{}</pre>", differences_text(adoption_differences(cluster)))

    @admin.display(description="join token")
    def token_state(self, cluster: Cluster) -> str:
        return "Generated by the portal and stored encrypted; never shown."

    @admin.display(description="kubeconfig")
    def kubeconfig_state(self, cluster: Cluster) -> str:
        if not cluster.kubeconfig:
            return "Not fetched yet (an install fetches it)."
        return "Stored encrypted; use “Download kubeconfig” (audited)."

    def get_formset_kwargs(self, request: HttpRequest, obj: Cluster | None, inline: Any, prefix: str) -> dict[str, Any]:
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, NodeInline):
            kwargs["service_errors"] = getattr(request, "service_errors", None)
            if obj is None or obj.pk is None:
                kwargs["initial"] = [{"role": NodeRole.INITIAL_MASTER}]
        return kwargs

    def save_model(self, request: HttpRequest, obj: Cluster, form: ClusterForm, change: bool) -> None:
        if not change:
            return  # created together with its nodes in save_related(), by one service call
        data = {field: form.cleaned_data[field] for field in form.changed_data if field in CLUSTER_FIELDS}
        if not data:
            return
        stored = Cluster.objects.get(pk=obj.pk)
        try:
            cluster_update(cluster=stored, data=data, actor=request.user)
        except SERVICE_ERRORS as exc:
            raise ServiceRejected(service_error_dict(exc)) from exc

    def save_related(self, request: HttpRequest, form: ClusterForm, formsets: list[Any], change: bool) -> None:
        node_formset = next(formset for formset in formsets if isinstance(formset, NodeInlineFormSet))
        new_forms = node_formset.new_forms()
        try:
            if not change:
                fields = {field: form.cleaned_data[field] for field in CLUSTER_FIELDS if field in form.cleaned_data}
                cluster = cluster_create(nodes=[node_spec(f) for f in new_forms], actor=request.user, **fields)
                # The admin goes on with the instance it validated: make it the saved cluster.
                vars(form.instance).update(vars(cluster))
                node_formset.new_objects = list(cluster.cluster_nodes.order_by("pk"))
                node_formset.changed_objects, node_formset.deleted_objects = [], []
                return
            self._save_node_changes(request, form.instance, node_formset)
        except SERVICE_ERRORS as exc:
            raise ServiceRejected(service_error_dict(exc)) from exc

    def _save_node_changes(self, request: HttpRequest, cluster: Cluster, formset: NodeInlineFormSet) -> None:
        deleted = formset.deleted_nodes()
        if deleted:
            nodes_mark_for_removal(cluster=cluster, hostnames=[node.hostname for node in deleted], actor=request.user)
        changed = []
        for node_form in formset.changed_forms():
            try:
                with transaction.atomic():
                    node_form.save()
            except IntegrityError as exc:
                refused = integrity_error_messages(exc, Node)
                hostname = node_form.instance.hostname
                messages = [f"{hostname}: {message}" for found in refused.values() for message in found]
                raise ValidationError({"nodes": messages}) from exc
            changed.append((node_form.instance, node_form.changed_data))
            if {"labels", "taints"} & set(node_form.changed_data):
                # On a running node the change is applied now by a job (refused with the save while a job runs).
                node_labels_changed(
                    node=node_form.instance,
                    previous_labels=list(node_form.initial.get("labels") or []),
                    previous_taints=list(node_form.initial.get("taints") or []),
                    actor=request.user,
                )
        if changed:
            audit_record(
                action="nodes.update",
                actor=request.user,
                cluster=cluster,
                detail={"hostnames": [node.hostname for node, _ in changed]},
            )
        new_forms = formset.new_forms()
        added = (
            nodes_add(cluster=cluster, nodes=[node_spec(f) for f in new_forms], actor=request.user) if new_forms else []
        )
        formset.new_objects = added
        formset.changed_objects = changed
        formset.deleted_objects = deleted

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Cluster | None = None,
    ) -> HttpResponse:
        if obj is not None and obj.pk:
            context.update(self._cluster_page_context(request, obj))
            if request.method == "GET":
                self._message_warnings(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def response_add(self, request: HttpRequest, obj: Cluster, post_url_continue: str | None = None) -> HttpResponse:
        self._message_warnings(request, obj)
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request: HttpRequest, obj: Cluster) -> HttpResponse:
        response = super().response_change(request, obj)
        if response.status_code == 302 and response.get("Location", "") != request.path:
            self._message_warnings(request, obj)  # the cluster page adds them itself
        return response

    def _message_warnings(self, request: HttpRequest, cluster: Cluster) -> None:
        storage = messages.get_messages(request)
        queued = {str(message.message) for message in storage}
        storage.used = False  # keep them for the page
        for warning in cluster_warnings(cluster):
            if warning not in queued:
                messages.warning(request, warning)

    def _cluster_page_context(self, request: HttpRequest, cluster: Cluster) -> dict[str, Any]:
        jobs = list(
            cluster.jobs.select_related("requested_by")
            .exclude(kind=JobKind.HEALTH_SYNC)
            .order_by("-created_at", "-pk")[:RECENT_JOBS]
        )
        active = next((job for job in jobs if job.is_active), None)
        if active is None:
            active = cluster.jobs.filter(status__in=ACTIVE_JOB_STATUSES).first()
        user = request.user
        return {
            "recent_jobs": [(job, badge(job.status, job.get_status_display())) for job in jobs],
            "active_job": active,
            "active_job_badge": badge(active.status, active.get_status_display()) if active else "",
            "can_request_jobs": user.has_perm(REQUEST_JOB),
            "can_add_nodes": user.has_perm("clusters.add_node"),
            "can_remove_nodes": user.has_perms(["clusters.change_node", REQUEST_JOB]),
            "can_cancel": user.has_perm(CANCEL_JOB),
            "can_preview": user.has_perm("clusters.view_node"),
            "can_download_kubeconfig": user.has_perm(DOWNLOAD_KUBECONFIG) and bool(cluster.kubeconfig),
            "all_jobs_url": reverse("admin:clusters_job_changelist") + f"?cluster__id__exact={cluster.pk}",
        }

    # --- deletion ------------------------------------------------------------------------------------------------

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        # A summary instead of every related row: a cluster's jobs can hold hundreds of thousands of events.
        clusters = list(objs)
        ids = [cluster.pk for cluster in clusters]
        counts = {
            "nodes": Node.objects.filter(cluster_id__in=ids).count(),
            "jobs (with their events and host summaries)": Job.objects.filter(cluster_id__in=ids).count(),
        }
        summary = [format_html("Cluster: {}", cluster.name) for cluster in clusters]
        summary += [f"{count} {label}" for label, count in counts.items() if count]
        return summary, counts, set(), []

    def delete_model(self, request: HttpRequest, obj: Cluster) -> None:
        cluster_delete(cluster=obj, actor=request.user)

    # --- list actions --------------------------------------------------------------------------------------------

    def has_request_job_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REQUEST_JOB)

    def has_cancel_job_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(CANCEL_JOB)

    def _request_jobs(
        self, request: HttpRequest, queryset: QuerySet[Cluster], kind: str, params: dict[str, Any]
    ) -> None:
        for cluster in queryset:
            try:
                job = job_request(cluster=cluster, kind=kind, params=dict(params), actor=request.user)
            except SERVICE_ERRORS as exc:
                message_service_error(request, exc, subject=cluster.name)
            else:
                messages.success(
                    request,
                    format_html(
                        '{}: <a href="{}">{} #{}</a> requested.',
                        cluster.name,
                        job_url(job),
                        job.get_kind_display(),
                        job.pk,
                    ),
                )

    @admin.action(description="Adopt (read what runs on the nodes)", permissions=["request_job"])
    def action_adopt(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> None:
        self._request_jobs(request, queryset, JobKind.ADOPT, {})

    @admin.action(description="Run preflight checks", permissions=["request_job"])
    def action_preflight(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> None:
        self._request_jobs(request, queryset, JobKind.PREFLIGHT, {})

    @admin.action(description="Install", permissions=["request_job"])
    def action_install(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> None:
        self._request_jobs(request, queryset, JobKind.INSTALL, {"resume": False})

    @admin.action(description="Resume a failed install", permissions=["request_job"])
    def action_resume_install(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> None:
        self._request_jobs(request, queryset, JobKind.INSTALL, {"resume": True})

    @admin.action(description="Relaunch the last finished job", permissions=["request_job"])
    def action_relaunch_last(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> None:
        for cluster in queryset:
            last = cluster.jobs.exclude(status__in=ACTIVE_JOB_STATUSES).select_related("cluster").first()
            if last is None:
                messages.warning(request, f"{cluster.name}: no finished job to relaunch.")
                continue
            if not request.user.has_perms(relaunch_permissions(last.kind)):
                messages.error(request, f"{cluster.name}: you may not request a {last.get_kind_display().lower()} job.")
                continue
            if last.kind == JobKind.UNINSTALL:
                messages.warning(
                    request,
                    format_html(
                        '{}: relaunch the uninstall from <a href="{}">its page</a>, which asks for the name.',
                        cluster.name,
                        job_url(last),
                    ),
                )
                continue
            try:
                job = job_relaunch(job=last, actor=request.user)
            except SERVICE_ERRORS as exc:
                message_service_error(request, exc, subject=cluster.name)
            else:
                messages.success(
                    request,
                    format_html(
                        '{}: <a href="{}">{} #{}</a> requested again from #{}.',
                        cluster.name,
                        job_url(job),
                        job.get_kind_display(),
                        job.pk,
                        last.pk,
                    ),
                )

    @admin.action(description="Cancel the active job", permissions=["cancel_job"])
    def action_cancel(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> None:
        active = Job.objects.filter(cluster__in=queryset, status__in=ACTIVE_JOB_STATUSES).select_related("cluster")
        found = False
        for job in active:
            found = True
            try:
                job_cancel(job=job, actor=request.user)
            except SERVICE_ERRORS as exc:
                message_service_error(request, exc, subject=job.cluster.name)
            else:
                messages.success(
                    request, f"{job.cluster.name}: cancel of {job.get_kind_display()} #{job.pk} requested."
                )
        if not found:
            messages.warning(request, "None of the selected clusters has an active job.")

    def _one_cluster_page(
        self, request: HttpRequest, queryset: QuerySet[Cluster], url_name: str
    ) -> HttpResponse | None:
        clusters = list(queryset[:2])
        if len(clusters) != 1:
            messages.warning(request, "Select exactly one cluster for this operation.")
            return None
        return HttpResponseRedirect(reverse(f"admin:clusters_cluster_{url_name}", args=[clusters[0].pk]))

    @admin.action(description="Add nodes…", permissions=["request_job"])
    def action_add_nodes(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> HttpResponse | None:
        return self._one_cluster_page(request, queryset, "add_nodes")

    @admin.action(description="Upgrade…", permissions=["request_job"])
    def action_upgrade(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> HttpResponse | None:
        return self._one_cluster_page(request, queryset, "upgrade")

    @admin.action(description="Uninstall…", permissions=["request_job"])
    def action_uninstall(self, request: HttpRequest, queryset: QuerySet[Cluster]) -> HttpResponse | None:
        return self._one_cluster_page(request, queryset, "uninstall")
