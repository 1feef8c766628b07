"""Lifecycle operations on one cluster: pages that take the operator's input, call a service and report back."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from ..choices import ACTIVE_JOB_STATUSES, LIVE_NODE_STATUSES, SERVER_ROLES, InstallationStage, JobKind, NodeStatus
from ..exceptions import InvalidState
from ..forms import (
    AddNodesForm,
    AddNodesFormSet,
    InstallForm,
    RemoveNodesForm,
    UninstallForm,
    UpgradeForm,
    apply_service_errors,
    node_spec,
    service_error_dict,
)
from ..models import Cluster, Job, Node
from ..services.clusters import cluster_install_problems, cluster_warnings, nodes_add
from ..services.jobs import job_cancel, job_request, plan_stages
from ..services.kubeconfig import kubeconfig_download
from ..services.previews import cluster_previews
from ..services.scaling import cluster_scale_in, cluster_scale_out
from .base import SERVICE_ERRORS, error_text, job_url, message_service_error

__all__ = ["CANCEL_JOB", "ClusterOperationsMixin", "DOWNLOAD_KUBECONFIG", "REQUEST_JOB", "removal_warnings"]

# The permissions an operation needs: the same as for the API's actions.
REQUEST_JOB = "clusters.add_job"
CANCEL_JOB = "clusters.change_job"
DOWNLOAD_KUBECONFIG = "clusters.download_kubeconfig"


def removal_warnings(targets: list[Node], live: list[Node]) -> list[str]:
    """What removing ``targets`` does to the cluster's etcd quorum, in words."""
    installed_servers = [n for n in live if n.role in SERVER_ROLES and n.status != NodeStatus.PENDING]
    leaving = [n for n in targets if n.role in SERVER_ROLES and n.status != NodeStatus.PENDING]
    if not leaving:
        return []
    before = len(installed_servers)
    after = before - len(leaving)
    warnings = [
        (
            f"Removing {', '.join(n.hostname for n in leaving)} takes an etcd member away: the cluster goes from "
            f"{before} to {after} server{'s' if after != 1 else ''}."
        ),
    ]
    if len(leaving) > 1:
        warnings.append("Remove one server at a time, so that etcd keeps its quorum; the portal refuses more.")
    if after >= 1:
        quorum = after // 2 + 1
        tolerated = (after - 1) // 2
        warnings.append(
            f"With {after} server{'s' if after != 1 else ''}, etcd needs {quorum} of them up and tolerates "
            f"{tolerated} failure{'s' if tolerated != 1 else ''}."
            + (" An even number of servers tolerates no more failures than one server fewer." if after % 2 == 0 else "")
        )
    else:
        warnings.append("No server would be left: the portal refuses to remove the last server.")
    unhealthy = [n.hostname for n in installed_servers if n not in leaving and n.status != NodeStatus.ACTIVE]
    if unhealthy:
        warnings.append(f"Servers {', '.join(unhealthy)} are not active: removing another server could break quorum.")
    return warnings


class ClusterOperationsMixin:
    """Pages of the cluster admin for preflight, install, scale-out, scale-in, upgrade, uninstall and cancel."""

    admin_site: Any
    opts: Any

    def get_urls(self) -> list[Any]:
        urls = super().get_urls()  # type: ignore[misc]
        view = self.admin_site.admin_view
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        pages = [
            ("preflight", self.preflight_view),
            ("install", self.install_view),
            ("add-nodes", self.add_nodes_view),
            ("remove-nodes", self.remove_nodes_view),
            ("upgrade", self.upgrade_view),
            ("uninstall", self.uninstall_view),
            ("cancel-job", self.cancel_job_view),
            ("previews", self.previews_view),
            ("kubeconfig", self.kubeconfig_view),
        ]
        custom = [
            path(f"<path:object_id>/{slug}/", view(func), name=f"{name}_{slug.replace('-', '_')}")
            for slug, func in pages
        ]
        return custom + urls

    # --- plumbing --------------------------------------------------------------------------------------------------

    def _cluster(self, request: HttpRequest, object_id: str, *perms: str) -> Cluster:
        """The cluster of the page, if the user may see it and holds ``perms`` (as the API requires them)."""
        cluster = Cluster.objects.select_related("ssh_credential").filter(pk=_int(object_id)).first()
        if cluster is None:
            raise Http404("No such cluster.")
        if not self.has_view_or_change_permission(request, cluster) or not request.user.has_perms(perms):  # type: ignore[attr-defined]
            raise PermissionDenied
        return cluster

    def _cluster_url(self, cluster: Cluster) -> str:
        return reverse("admin:clusters_cluster_change", args=[cluster.pk])

    def _render(
        self, request: HttpRequest, template: str, cluster: Cluster, title: str, **context: Any
    ) -> HttpResponse:
        return TemplateResponse(
            request,
            template,
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "cluster": cluster,
                "title": title,
                "cluster_url": self._cluster_url(cluster),
                **context,
            },
        )

    def _job_started(self, request: HttpRequest, job: Job) -> HttpResponse:
        messages.success(request, f"{job.get_kind_display()} #{job.pk} requested; its log follows below.")
        return HttpResponseRedirect(job_url(job))

    def _request_job(
        self, request: HttpRequest, cluster: Cluster, kind: str, params: dict[str, Any], form: Any = None
    ) -> HttpResponse | None:
        """Request a job; on refusal show the error (on ``form`` when it names a field) and return None."""
        try:
            job = job_request(cluster=cluster, kind=kind, params=params, actor=request.user)
        except SERVICE_ERRORS as exc:
            if form is not None and isinstance(exc, ValidationError):
                apply_service_errors(form, service_error_dict(exc))
            else:
                message_service_error(request, exc)
            return None
        return self._job_started(request, job)

    # --- preflight / install ---------------------------------------------------------------------------------------

    def preflight_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        cluster = self._cluster(request, object_id, REQUEST_JOB)
        return self._request_job(request, cluster, JobKind.PREFLIGHT, {}) or HttpResponseRedirect(
            self._cluster_url(cluster)
        )

    def install_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        cluster = self._cluster(request, object_id, REQUEST_JOB)
        form = InstallForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            response = self._request_job(
                request,
                cluster,
                JobKind.INSTALL,
                {
                    "resume": form.cleaned_data["resume"],
                    "check_reachability": not form.cleaned_data["skip_reachability"],
                },
                form,
            )
            if response is not None:
                return response
        plans: dict[str, Any] = {}
        for label, params in (("full", {}), ("resume", {"resume": True})):
            try:
                plans[label] = plan_stages(cluster, JobKind.INSTALL, params)
            except SERVICE_ERRORS as exc:
                plans[f"{label}_error"] = error_text(exc)
        if "resume" not in plans:
            form.fields.pop("resume")
        return self._render(
            request,
            "admin/clusters/cluster/install.html",
            cluster,
            "Install",
            form=form,
            plans=plans,
            problems=cluster_install_problems(cluster),
            warnings=cluster_warnings(cluster),
            nodes=list(cluster.cluster_nodes.filter(status__in=LIVE_NODE_STATUSES).order_by("pk")),
        )

    # --- scale out / scale in --------------------------------------------------------------------------------------

    def add_nodes_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        cluster = self._cluster(request, object_id, "clusters.add_node")
        data = request.POST if request.method == "POST" else None
        formset = AddNodesFormSet(data, prefix="nodes")
        form = AddNodesForm(data, initial={"start_job": cluster.is_bootstrapped})
        pending = list(cluster.cluster_nodes.filter(status__in=(NodeStatus.PENDING, NodeStatus.FAILED)).order_by("pk"))
        if data is not None and formset.is_valid() and form.is_valid():
            response = self._add_nodes(request, cluster, formset, form)
            if response is not None:
                return response
        return self._render(
            request,
            "admin/clusters/cluster/add_nodes.html",
            cluster,
            "Add nodes",
            formset=formset,
            form=form,
            pending=pending,
        )

    def _add_nodes(
        self, request: HttpRequest, cluster: Cluster, formset: Any, form: AddNodesForm
    ) -> HttpResponse | None:
        specs = [node_spec(node_form) for node_form in formset.filled_forms()]
        start_job = form.cleaned_data["start_job"] and cluster.is_bootstrapped
        params = {"check_reachability": not form.cleaned_data["skip_reachability"]}
        if start_job and not request.user.has_perm(REQUEST_JOB):
            raise PermissionDenied
        job = None
        try:
            if specs and start_job:
                added, job = cluster_scale_out(cluster=cluster, nodes=specs, params=params, actor=request.user)
            elif specs:
                added = nodes_add(cluster=cluster, nodes=specs, actor=request.user)
            elif start_job:
                added, job = [], job_request(cluster=cluster, kind=JobKind.SCALE_ADD, params=params, actor=request.user)
            else:
                formset.add_non_form_error("Enter at least one node.")
                return None
        except ValidationError as exc:
            rest = formset.apply_service_errors(service_error_dict(exc))
            if rest:
                formset.add_non_form_error(error_text(ValidationError(rest)))
            return None
        except SERVICE_ERRORS as exc:
            message_service_error(request, exc, subject="Nothing was added")
            return None
        if job is not None:
            return self._job_started(request, job)
        names = ", ".join(node.hostname for node in added)
        messages.success(request, f"Added {names}. They are installed by the cluster's next install or scale-out job.")
        return HttpResponseRedirect(self._cluster_url(cluster))

    def remove_nodes_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        cluster = self._cluster(request, object_id, "clusters.change_node", REQUEST_JOB)
        nodes = list(cluster.cluster_nodes.exclude(status=NodeStatus.REMOVED).order_by("pk"))
        removable = [node for node in nodes if node.status in LIVE_NODE_STATUSES]
        source = request.POST if request.method == "POST" else request.GET
        chosen = [name for name in source.getlist("hostnames") if name]
        if not chosen:
            return self._render(
                request,
                "admin/clusters/cluster/remove_nodes_select.html",
                cluster,
                "Remove nodes",
                nodes=removable,
                draining=[node for node in nodes if node.status == NodeStatus.DRAINING],
            )
        form = RemoveNodesForm(
            request.POST if request.method == "POST" else None,
            choices=[n.hostname for n in removable],
            initial={"hostnames": chosen},
        )
        targets = [node for node in removable if node.hostname in chosen]
        unknown = sorted(set(chosen) - {node.hostname for node in targets})
        if request.method == "POST" and form.is_valid():
            response = self._remove_nodes(request, cluster, form)
            if response is not None:
                return response
        return self._render(
            request,
            "admin/clusters/cluster/remove_nodes.html",
            cluster,
            "Remove nodes",
            form=form,
            targets=targets,
            unknown=unknown,
            warnings=removal_warnings(targets, removable),
            needs_job=any(node.status != NodeStatus.PENDING for node in targets),
        )

    def _remove_nodes(self, request: HttpRequest, cluster: Cluster, form: RemoveNodesForm) -> HttpResponse | None:
        hostnames = form.cleaned_data["hostnames"]
        try:
            _, job = cluster_scale_in(
                cluster=cluster,
                hostnames=hostnames,
                params={"ungraceful": form.cleaned_data["ungraceful"], "snapshot": form.cleaned_data["snapshot"]},
                actor=request.user,
            )
        except SERVICE_ERRORS as exc:
            message_service_error(request, exc, subject="No node was removed")
            return None
        if job is not None:
            return self._job_started(request, job)
        messages.success(request, f"Removed {', '.join(hostnames)}: never installed, so nothing to do on the hosts.")
        return HttpResponseRedirect(self._cluster_url(cluster))

    # --- upgrade / uninstall / cancel ------------------------------------------------------------------------------

    def upgrade_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        cluster = self._cluster(request, object_id, REQUEST_JOB)
        form = UpgradeForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            response = self._request_job(request, cluster, JobKind.UPGRADE, form.job_params(), form)
            if response is not None:
                return response
        return self._render(
            request,
            "admin/clusters/cluster/upgrade.html",
            cluster,
            "Upgrade",
            form=form,
            nodes=list(cluster.cluster_nodes.filter(status__in=LIVE_NODE_STATUSES).order_by("pk")),
        )

    def uninstall_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        cluster = self._cluster(request, object_id, REQUEST_JOB)
        form = UninstallForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            response = self._request_job(
                request, cluster, JobKind.UNINSTALL, {"confirm": form.cleaned_data["confirm"]}, form
            )
            if response is not None:
                return response
        return self._render(
            request,
            "admin/clusters/cluster/uninstall.html",
            cluster,
            "Uninstall",
            form=form,
            nodes=list(cluster.cluster_nodes.exclude(status=NodeStatus.REMOVED).order_by("pk")),
        )

    def cancel_job_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        cluster = self._cluster(request, object_id, CANCEL_JOB)
        job = cluster.jobs.filter(status__in=ACTIVE_JOB_STATUSES).first()
        if job is None:
            message_service_error(request, InvalidState("The cluster has no active job."))
            return HttpResponseRedirect(self._cluster_url(cluster))
        try:
            job = job_cancel(job=job, actor=request.user)
        except SERVICE_ERRORS as exc:
            message_service_error(request, exc)
        else:
            messages.success(
                request,
                format_html(
                    "{} #{}: {}",
                    job.get_kind_display(),
                    job.pk,
                    "canceled."
                    if not job.is_active
                    else "cancel requested; the worker stops the playbook within seconds.",
                ),
            )
        return HttpResponseRedirect(job_url(job))

    # --- previews and kubeconfig -----------------------------------------------------------------------------------

    def previews_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        cluster = self._cluster(request, object_id, "clusters.view_node")
        preview = None
        try:
            preview = cluster_previews(cluster)
        except SERVICE_ERRORS as exc:
            message_service_error(request, exc, subject="No preview")
        stages = []
        if preview is not None:
            stages = [
                {
                    "name": name,
                    "label": _stage_label(name),
                    "inventory": text,
                    "hosts": preview.stage_hosts.get(name, []),
                }
                for name, text in preview.inventories.items()
            ]
        return self._render(
            request,
            "admin/clusters/cluster/previews.html",
            cluster,
            "Inventories and node configs",
            stages=stages,
            configs=sorted(preview.configs.items()) if preview is not None else [],
            registries=preview.registries if preview is not None else "",
        )

    def kubeconfig_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        cluster = self._cluster(request, object_id, DOWNLOAD_KUBECONFIG)
        try:
            text = kubeconfig_download(cluster=cluster, actor=request.user)
        except SERVICE_ERRORS as exc:
            message_service_error(request, exc)
            return HttpResponseRedirect(self._cluster_url(cluster))
        response = HttpResponse(text, content_type="application/yaml; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{cluster.name}-kubeconfig.yaml"'
        response["Cache-Control"] = "no-store"
        return response


def _stage_label(name: str) -> str:
    labels = dict(InstallationStage.choices)
    return labels.get(name, name.replace("_", " ").capitalize())


def _int(value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Http404("No such cluster.") from None
