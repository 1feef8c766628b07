"""API endpoints. Each one parses its input, calls one service or selector, and formats the output.

Job requests answer ``202 Accepted`` with the job and its URL (also in ``Location``); the job runs on a worker once
the request's transaction has committed. Errors are rendered by :mod:`rke2portal.exceptions`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from knox.auth import TokenAuthentication
from rest_framework import status, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ParseError, PermissionDenied
from rest_framework.generics import get_object_or_404
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from rke2portal.exceptions import api_exception_handler

from .. import selectors
from ..choices import JobKind, NodeStatus
from ..models import Cluster, Job, Node, SSHCredential
from ..services.adoption import adoption_differences
from ..services.clusters import cluster_create, cluster_delete, cluster_update
from ..services.credentials import credential_create, credential_delete, credential_update
from ..services.jobs import job_cancel, job_request
from ..services.kubeconfig import kubeconfig_download
from ..services.node_labels import node_labels_update
from ..services.previews import cluster_previews, node_config_preview
from ..services.relaunch import job_relaunch, relaunch_permissions
from ..services.scaling import cluster_scale_in, cluster_scale_out
from . import day2
from . import serializers as s
from .filters import ClusterFilter, JobFilter, NodeFilter
from .ordering import LIST_FILTERS
from .pagination import StandardPagination
from .permissions import ActionPermissions

__all__ = ["ClusterNodeViewSet", "ClusterViewSet", "CredentialViewSet", "JobViewSet"]

ERRORS = {
    400: OpenApiResponse(s.ErrorOutput, description="Invalid input; `errors` names the fields."),
    401: OpenApiResponse(s.ErrorOutput, description="Not authenticated."),
    403: OpenApiResponse(s.ErrorOutput, description="Missing permission."),
    404: OpenApiResponse(s.ErrorOutput, description="No such object."),
}
CONFLICT = {409: OpenApiResponse(s.ErrorOutput, description="Another job is active, or the state does not allow it.")}
READ_ERRORS = {code: ERRORS[code] for code in (401, 403, 404)}
LIST_ERRORS = {code: ERRORS[code] for code in (400, 401, 403, 404)}
PK_REGEX = r"[0-9]{1,18}"
HOSTNAME_PATTERN = r"[a-z0-9][a-z0-9.-]{0,252}"


class JSONBodyParser(JSONParser):
    """DRF's JSON parser, also refusing documents nested too deeply to decode (a 400, not a crash)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = stream.read()
        try:
            return super().parse(io.BytesIO(raw), media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None
        except ParseError:
            # NaN and Infinity are not JSON: say which field holds one.
            location = s.non_finite_location(raw, (parser_context or {}).get("encoding") or "utf-8")
            if location is None:
                raise
            raise ParseError(
                f"JSON parse error - {location}: NaN and Infinity are not JSON numbers; numbers must be finite."
            ) from None


class FirstRendererNegotiation(BaseContentNegotiation):
    """Every endpoint has one representation (JSON, or plain text/YAML for downloads); ``Accept`` never turns a
    request into a 406."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        for parser in parsers:
            if request.content_type.split(";")[0].strip().lower() == parser.media_type:
                return parser
        return None

    def select_renderer(self, request: Request, renderers: list[Any], format_suffix: str | None = None) -> Any:
        return renderers[0], renderers[0].media_type


class APIViewSet(viewsets.GenericViewSet):
    """Base of the API's viewsets: JSON only, permission per action, standard pagination and error shape."""

    # Token first: its WWW-Authenticate challenge makes a missing or bad credential a 401, not a 403.
    authentication_classes = (TokenAuthentication, SessionAuthentication)
    permission_classes = (ActionPermissions,)
    parser_classes = (JSONBodyParser,)
    renderer_classes = (JSONRenderer,)
    content_negotiation_class = FirstRendererNegotiation
    pagination_class = StandardPagination
    metadata_class = None
    lookup_value_regex = PK_REGEX
    permission_model: type | None = None
    action_permissions: ClassVar[Mapping[str, Sequence[str]]] = {}

    def get_exception_handler(self) -> Any:
        return api_exception_handler

    def paginated(self, queryset: Any, serializer_class: type[s.serializers.Serializer]) -> Response:
        page = self.paginate_queryset(queryset)
        data = serializer_class(page, many=True, context=self.get_serializer_context()).data
        return self.get_paginated_response(data)

    def output(self, serializer_class: type[s.serializers.Serializer], instance: Any, **kwargs: Any) -> Any:
        return serializer_class(instance, context=self.get_serializer_context(), **kwargs).data

    def parse(self, serializer_class: type[s.serializers.Serializer], data: Any, **kwargs: Any) -> Any:
        serializer = serializer_class(data=data, context=self.get_serializer_context(), **kwargs)
        serializer.is_valid(raise_exception=True)
        return serializer

    def job_accepted(self, job: Job) -> Response:
        data = self.output(s.JobOutput, job)
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["url"]})


def _job_action(
    kind: str, input_class: type[s.serializers.Serializer], summary: str, description: str, **action_kwargs: Any
) -> Any:
    """A POST action on a cluster that requests a job of ``kind`` with the input's parameters."""

    def view(self: ClusterViewSet, request: Request, pk: str | None = None) -> Response:
        cluster = self.get_cluster()
        params = self.parse(input_class, request.data).to_params()
        job = job_request(cluster=cluster, kind=kind, params=params, actor=request.user)
        return self.job_accepted(job)

    view.__name__ = view.__qualname__ = str(kind)
    view.__doc__ = description
    decorated = action(detail=True, methods=["post"], **action_kwargs)(view)
    return extend_schema(
        summary=summary,
        description=description,
        request=input_class,
        filters=False,
        responses={202: s.JobOutput, **ERRORS, **CONFLICT},
    )(decorated)


@extend_schema_view(
    list=extend_schema(summary="List clusters", responses={200: s.ClusterOutput(many=True), **LIST_ERRORS}),
    retrieve=extend_schema(
        summary="Show a cluster and its nodes", responses={200: s.ClusterDetailOutput, **READ_ERRORS}
    ),
    create=extend_schema(
        summary="Create a cluster with its nodes",
        description="Creates the cluster and its nodes (all pending) in one transaction; nothing is installed yet. "
        "Node errors are reported as `nodes[i].field`.",
        request=s.ClusterCreateInput,
        responses={201: s.ClusterDetailOutput, **ERRORS},
    ),
    update=extend_schema(
        summary="Change a cluster",
        description="Nodes change through the scale endpoints; the version of an installed cluster through upgrade.",
        request=s.ClusterUpdateInput,
        responses={200: s.ClusterDetailOutput, **ERRORS},
    ),
    partial_update=extend_schema(
        summary="Change some fields of a cluster",
        request=s.ClusterUpdateInput,
        responses={200: s.ClusterDetailOutput, **ERRORS},
    ),
    destroy=extend_schema(
        summary="Delete a cluster's record",
        description="Removes the cluster from the portal, not from its hosts (that is the uninstall job). Refused "
        "while a job is active.",
        responses={204: None, **READ_ERRORS, **CONFLICT},
    ),
)
class ClusterViewSet(APIViewSet):
    permission_model = Cluster
    filter_backends = LIST_FILTERS
    filterset_class = ClusterFilter
    ordering_fields = ("name", "status", "rke2_version", "created_at", "updated_at", "node_count")
    search_fields = ("name", "description", "registration_address")
    serializer_class = s.ClusterOutput
    action_permissions: ClassVar[Mapping[str, Sequence[str]]] = {
        "scale_add": ["clusters.add_node", "clusters.add_job"],
        "scale_remove": ["clusters.change_node", "clusters.add_job"],
        "install": ["clusters.add_job"],
        "upgrade": ["clusters.add_job"],
        "uninstall": ["clusters.add_job"],
        "preflight": ["clusters.add_job"],
        "fetch_kubeconfig": ["clusters.add_job"],
        "health": ["clusters.add_job"],
        "adopt": ["clusters.add_job"],
        "cert_rotate": ["clusters.add_job"],
        "node_labels": ["clusters.change_node", "clusters.add_job"],
        "adoption": ["clusters.view_cluster", "clusters.view_node"],
        "inventory": ["clusters.view_cluster", "clusters.view_node"],
        "config": ["clusters.view_cluster", "clusters.view_node"],
        "kubeconfig": ["clusters.download_kubeconfig"],
    }

    def get_queryset(self) -> Any:
        if self.action == "retrieve":
            return selectors.cluster_detail_queryset()
        return selectors.cluster_list()

    def get_cluster(self) -> Cluster:
        """The cluster named in the URL, with every column (services change it), without list filters."""
        cluster = get_object_or_404(Cluster.objects.all(), pk=self.kwargs["pk"])
        self.check_object_permissions(self.request, cluster)
        return cluster

    def detail_output(self, cluster: Cluster) -> Any:
        return self.output(s.ClusterDetailOutput, selectors.cluster_detail_queryset().get(pk=cluster.pk))

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.paginated(self.filter_queryset(self.get_queryset()), s.ClusterOutput)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        cluster = get_object_or_404(self.get_queryset(), pk=kwargs["pk"])
        return Response(self.output(s.ClusterDetailOutput, cluster))

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        fields = dict(self.parse(s.ClusterCreateInput, request.data).validated_data)
        nodes = [dict(node) for node in fields.pop("nodes", [])]
        cluster = cluster_create(nodes=nodes, actor=request.user, **fields)
        data = self.detail_output(cluster)
        return Response(data, status=status.HTTP_201_CREATED, headers={"Location": data["url"]})

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        cluster = self.get_cluster()
        partial = kwargs.get("partial", False)
        data = self.parse(s.ClusterUpdateInput, request.data, partial=partial).validated_data
        cluster = cluster_update(cluster=cluster, data=dict(data), actor=request.user)
        return Response(self.detail_output(cluster))

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.update(request, *args, partial=True, **kwargs)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        cluster_delete(cluster=self.get_cluster(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Add nodes and install them",
        description="Adds the nodes (pending) and requests the scale-out job that joins them, in one transaction: "
        "when the job is refused, no node is added.",
        request=s.ScaleOutInput,
        responses={202: s.ScaleOutOutput, **ERRORS, **CONFLICT},
        filters=False,
    )
    @action(detail=True, methods=["post"], url_path="scale/add", url_name="scale-add")
    def scale_add(self, request: Request, pk: str | None = None) -> Response:
        cluster = self.get_cluster()
        serializer = self.parse(s.ScaleOutInput, request.data)
        nodes = [dict(node) for node in serializer.validated_data["nodes"]]
        added, job = cluster_scale_out(cluster=cluster, nodes=nodes, params=serializer.to_params(), actor=request.user)
        data = self.output(s.ScaleOutOutput, {"nodes": added, "job": job})
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["job"]["url"]})

    @extend_schema(
        summary="Remove nodes",
        description="Marks the nodes for removal and requests the scale-in job that drains and uninstalls them "
        "(202). Nodes that were never installed are removed at once; when no installed node is among them, no job "
        "is needed and the answer is 200 with `job` null. At most one server at a time, never the last one.",
        request=s.ScaleInInput,
        responses={202: s.ScaleInOutput, 200: s.ScaleInOutput, **ERRORS, **CONFLICT},
        filters=False,
    )
    @action(detail=True, methods=["post"], url_path="scale/remove", url_name="scale-remove")
    def scale_remove(self, request: Request, pk: str | None = None) -> Response:
        cluster = self.get_cluster()
        serializer = self.parse(s.ScaleInInput, request.data)
        marked, job = cluster_scale_in(
            cluster=cluster,
            hostnames=list(serializer.validated_data["hostnames"]),
            params=serializer.to_params(),
            actor=request.user,
        )
        data = self.output(s.ScaleInOutput, {"nodes": marked, "job": job})
        if job is None:
            return Response(data, status=status.HTTP_200_OK)
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["job"]["url"]})

    install = _job_action(
        JobKind.INSTALL,
        s.InstallInput,
        "Install the cluster",
        "Prepares the hosts and checks reachability between every pair of nodes on RKE2's ports (unless "
        "`check_reachability` is false), runs the staged install (initial master, joining masters, workers, "
        "post-checks) and fetches the kubeconfig. With `resume`, starts again at the stage where the last install "
        "failed.",
    )
    upgrade = _job_action(
        JobKind.UPGRADE,
        s.UpgradeInput,
        "Upgrade RKE2",
        "Upgrades servers one at a time, then workers in batches. Downgrades and skipping a minor version are "
        "refused unless allowed explicitly.",
    )
    uninstall = _job_action(
        JobKind.UNINSTALL,
        s.UninstallInput,
        "Uninstall RKE2 from every node",
        "Removes RKE2 and its data from the hosts. `confirm` must be the cluster's name.",
    )
    preflight = _job_action(
        JobKind.PREFLIGHT,
        s.PreflightInput,
        "Check the hosts",
        "Checks that every node is reachable and fit for RKE2 (OS, ports, resources); changes nothing.",
    )
    fetch_kubeconfig = _job_action(
        JobKind.FETCH_KUBECONFIG,
        s.PreflightInput,
        "Fetch the kubeconfig again",
        "Reads the admin kubeconfig from a server and stores it (encrypted).",
        url_path="fetch-kubeconfig",
        url_name="fetch-kubeconfig",
    )
    health = _job_action(
        JobKind.HEALTH,
        s.PreflightInput,
        "Check the cluster's health",
        "Checks the RKE2 services and whether every node is Ready.",
    )

    adopt = _job_action(
        JobKind.ADOPT,
        s.PreflightInput,
        "Adopt an imported cluster",
        "Reads every node's RKE2 configuration files, installed version and install method, and the servers' "
        "token; stores the token (encrypted) and the config keys the portal does not manage (kept on every "
        "render). Changes nothing on the nodes. Imported clusters refuse install, scale and upgrade jobs until "
        "adopted.",
    )

    cert_rotate = _job_action(
        JobKind.CERT_ROTATE,
        s.PreflightInput,
        "Rotate the certificates",
        "Runs `rke2 certificate rotate` on the servers one at a time (stop, rotate, start, wait until Ready), then "
        "restarts the agents in batches (`workers_batch`), then fetches and stores the new kubeconfig.",
        url_path="rotate-certificates",
        url_name="rotate-certificates",
    )

    @extend_schema(
        summary="Change the labels and taints of a node",
        description="Stores the node's new labels and/or taints. On an active node of an installed cluster a job "
        "applies them at once with kubectl (removing those the portal had set before and no longer wanted) and "
        "writes them into the node's config.yaml without restarting RKE2 (202). A node not installed yet gets them "
        "at its install (200, `job` null). Refused while the cluster has an active job (409): nothing changes then.",
        request=day2.NodeLabelsInput,
        responses={202: day2.NodeLabelsOutput, 200: day2.NodeLabelsOutput, **ERRORS, **CONFLICT},
        filters=False,
    )
    @action(detail=True, methods=["post"], url_path="node-labels", url_name="node-labels")
    def node_labels(self, request: Request, pk: str | None = None) -> Response:
        cluster = self.get_cluster()
        data = self.parse(day2.NodeLabelsInput, request.data).validated_data
        node = cluster.cluster_nodes.filter(hostname=data["hostname"]).exclude(status=NodeStatus.REMOVED).first()
        if node is None:
            raise DjangoValidationError({"hostname": [f"The cluster has no node {data['hostname']!r}."]})
        node, job = node_labels_update(
            node=node, labels=data.get("labels"), taints=data.get("taints"), actor=request.user
        )
        result = self.output(day2.NodeLabelsOutput, {"node": node, "job": job})
        if job is None:
            return Response(result, status=status.HTTP_200_OK)
        return Response(result, status=status.HTTP_202_ACCEPTED, headers={"Location": result["job"]["url"]})

    @extend_schema(
        summary="Compare what runs with what the portal would write",
        description="Whether the cluster still needs adoption, the last adopt job's report, and for every live "
        "node the config keys the portal would change, add or drop if it wrote config.yaml now (the node's "
        "config.yaml.d files laid over it, as RKE2 does). Secret values are masked. Read-only.",
        responses={200: s.AdoptionOutput, **READ_ERRORS},
        filters=False,
    )
    @action(detail=True, methods=["get"])
    def adoption(self, request: Request, pk: str | None = None) -> Response:
        cluster = self.get_cluster()
        data = {
            "adoption_required": cluster.adoption_required,
            "report": cluster.adoption_report or {},
            "nodes": adoption_differences(cluster),
        }
        return Response(self.output(s.AdoptionOutput, data))

    @extend_schema(
        summary="Preview the inventories and configs",
        description="The inventory of each install stage (or only `stage`) and the RKE2 config.yaml of every node "
        "those stages act on, as a job would use them, with the token masked.",
        parameters=[s.InventoryQueryInput],
        responses={200: s.ClusterPreviewOutput, **ERRORS},
        filters=False,
    )
    @action(detail=True, methods=["get"])
    def inventory(self, request: Request, pk: str | None = None) -> Response:
        cluster = self.get_cluster()
        stage = self.parse(s.InventoryQueryInput, request.query_params).validated_data.get("stage")
        return Response(self.output(s.ClusterPreviewOutput, cluster_previews(cluster, stage=stage)))

    @extend_schema(
        summary="Preview a node's RKE2 config",
        description="The /etc/rancher/rke2/config.yaml the node would get, with the token masked. 404 when the "
        "cluster has no live node of that name.",
        responses={200: s.NodeConfigPreviewOutput, **READ_ERRORS},
        filters=False,
        parameters=[
            OpenApiParameter("hostname", OpenApiTypes.STR, OpenApiParameter.PATH, pattern=f"^{HOSTNAME_PATTERN}$")
        ],
    )
    @action(detail=True, methods=["get"], url_path=rf"config/(?P<hostname>{HOSTNAME_PATTERN})", url_name="config")
    def config(self, request: Request, pk: str | None = None, hostname: str = "") -> Response:
        cluster = self.get_cluster()
        try:
            text = node_config_preview(cluster, hostname)
        except DjangoValidationError as exc:
            raise NotFound(" ".join(exc.messages)) from None
        return Response(self.output(s.NodeConfigPreviewOutput, {"hostname": hostname, "config": text}))

    @extend_schema(
        summary="Download the kubeconfig",
        description="The cluster's admin kubeconfig as a YAML attachment. Needs the permission "
        "`clusters.download_kubeconfig`; every download is recorded in the audit log. 409 while none is stored.",
        responses={
            (200, "text/yaml"): OpenApiResponse(OpenApiTypes.STR, description="kubeconfig YAML"),
            **READ_ERRORS,
            **CONFLICT,
        },
        filters=False,
    )
    @action(detail=True, methods=["get"])
    def kubeconfig(self, request: Request, pk: str | None = None) -> HttpResponse:
        cluster = self.get_cluster()
        text = kubeconfig_download(cluster=cluster, actor=request.user)
        response = HttpResponse(text, content_type="text/yaml; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{cluster.name}-kubeconfig.yaml"'
        response["Cache-Control"] = "no-store"
        return response


@extend_schema_view(
    list=extend_schema(summary="List a cluster's nodes", responses={200: s.NodeOutput(many=True), **LIST_ERRORS}),
)
class ClusterNodeViewSet(APIViewSet):
    """The nodes of one cluster (removed ones included), oldest first."""

    permission_model = Node
    filter_backends = LIST_FILTERS
    filterset_class = NodeFilter
    ordering_fields = ("hostname", "internal_ip", "role", "status", "created_at")
    search_fields = ("hostname", "internal_ip", "external_ip")
    serializer_class = s.NodeOutput
    action_permissions: ClassVar[Mapping[str, Sequence[str]]] = {
        "list": ["clusters.view_cluster", "clusters.view_node"]
    }

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):
            return Node.objects.none()
        cluster = get_object_or_404(Cluster.objects.only("pk"), pk=self.kwargs["cluster_pk"])
        return selectors.node_list(cluster=cluster)

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.paginated(self.filter_queryset(self.get_queryset()), s.NodeOutput)


@extend_schema_view(
    list=extend_schema(summary="List jobs", responses={200: s.JobOutput(many=True), **LIST_ERRORS}),
    retrieve=extend_schema(summary="Show a job", responses={200: s.JobOutput, **READ_ERRORS}),
)
class JobViewSet(APIViewSet):
    permission_model = Job
    filter_backends = LIST_FILTERS
    filterset_class = JobFilter
    ordering_fields = {
        "created_at": "created_at",
        "started_at": "started_at",
        "finished_at": "finished_at",
        "status": "status",
        "kind": "kind",
        "cluster": "cluster__name",
    }
    search_fields = ("cluster__name", "kind", "status", "stage", "explanation")
    serializer_class = s.JobOutput
    action_permissions: ClassVar[Mapping[str, Sequence[str]]] = {
        "events": ["clusters.view_job"],
        "stdout": ["clusters.view_job"],
        "cancel": ["clusters.change_job"],
        "relaunch": ["clusters.view_job", "clusters.add_job"],
    }

    def get_queryset(self) -> Any:
        return selectors.job_list()

    def get_job(self) -> Job:
        job = get_object_or_404(self.get_queryset(), pk=self.kwargs["pk"])
        self.check_object_permissions(self.request, job)
        return job

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        jobs = self.filter_queryset(self.get_queryset())
        if request.query_params.get("kind") != JobKind.HEALTH_SYNC:
            # Scheduled health syncs run every few minutes on every cluster: listed only when asked for by kind.
            jobs = jobs.exclude(kind=JobKind.HEALTH_SYNC)
        return self.paginated(jobs, s.JobOutput)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(self.output(s.JobOutput, self.get_job()))

    @extend_schema(
        summary="Follow a job's events",
        description="Events with a counter above `after`, oldest first, at most `limit` (default 500, max 2000), "
        "with the job's progress. Poll with `after=next_after` until `finished` is true.",
        parameters=[s.EventsQueryInput],
        responses={200: s.EventsPageOutput, **ERRORS},
        filters=False,
    )
    @action(detail=True, methods=["get"])
    def events(self, request: Request, pk: str | None = None) -> Response:
        query = self.parse(s.EventsQueryInput, request.query_params).validated_data
        try:
            page = selectors.job_events_page(
                job_id=int(self.kwargs["pk"]),
                after=query["after"],
                limit=query["limit"],
                host=query["host"],
                search=query["search"],
            )
        except Job.DoesNotExist:
            raise NotFound() from None
        return Response(page)

    @extend_schema(
        summary="Download a job's output",
        description="The job's whole output as plain text, streamed. Terminal colour codes are removed unless "
        "`ansi=1`.",
        parameters=[s.StdoutQueryInput],
        responses={(200, "text/plain"): OpenApiResponse(OpenApiTypes.STR), **ERRORS},
        filters=False,
    )
    @action(detail=True, methods=["get"])
    def stdout(self, request: Request, pk: str | None = None) -> StreamingHttpResponse:
        ansi = self.parse(s.StdoutQueryInput, request.query_params).validated_data["ansi"]
        job = self.get_job()
        response = StreamingHttpResponse(
            selectors.job_stdout_chunks(job=job, ansi=ansi), content_type="text/plain; charset=utf-8"
        )
        response["Content-Disposition"] = f'inline; filename="job-{job.pk}.log"'
        response["Cache-Control"] = "no-cache"
        return response

    @extend_schema(
        summary="Cancel a job",
        description="A pending job is canceled at once; a running one is stopped by its worker within seconds "
        "(`cancel_requested` is true until then). 409 when the job has already finished.",
        request=None,
        responses={200: s.JobOutput, **READ_ERRORS, **CONFLICT},
        filters=False,
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        job = job_cancel(job=self.get_job(), actor=request.user)
        return Response(self.output(s.JobOutput, selectors.job_list().get(pk=job.pk)))

    @extend_schema(
        summary="Relaunch a finished job",
        description="Requests a new job of the same kind with the same parameters (202, like any job request). A "
        "failed install that ran resumes at the stage that failed; an uninstall needs `confirm` (the cluster's "
        "name) again. 409 while this job or another job of the cluster is active, or when the cluster's state no "
        "longer allows the job.",
        request=s.RelaunchInput,
        responses={202: s.JobOutput, **ERRORS, **CONFLICT},
        filters=False,
    )
    @action(detail=True, methods=["post"])
    def relaunch(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_job()
        if not request.user.has_perms(relaunch_permissions(job.kind)):
            raise PermissionDenied(
                f"Relaunching a {job.get_kind_display().lower()} job needs the permissions to request one."
            )
        confirm = self.parse(s.RelaunchInput, request.data).validated_data["confirm"]
        return self.job_accepted(job_relaunch(job=job, actor=request.user, confirm=confirm))


@extend_schema_view(
    list=extend_schema(summary="List SSH credentials", responses={200: s.CredentialOutput(many=True), **LIST_ERRORS}),
    retrieve=extend_schema(summary="Show an SSH credential", responses={200: s.CredentialOutput, **READ_ERRORS}),
    create=extend_schema(
        summary="Create an SSH credential",
        description="The private key (and passphrase) are write-only; the key's fingerprint is shown instead.",
        request=s.CredentialCreateInput,
        responses={201: s.CredentialOutput, **ERRORS},
    ),
    update=extend_schema(
        summary="Change an SSH credential",
        description="Omitted secrets are kept. A new private key replaces the passphrase (empty unless given).",
        request=s.CredentialUpdateInput,
        responses={200: s.CredentialOutput, **ERRORS},
    ),
    partial_update=extend_schema(
        summary="Change some fields of an SSH credential",
        request=s.CredentialUpdateInput,
        responses={200: s.CredentialOutput, **ERRORS},
    ),
    destroy=extend_schema(
        summary="Delete an SSH credential",
        description="Refused while a cluster uses it.",
        responses={204: None, **READ_ERRORS, **CONFLICT},
    ),
)
class CredentialViewSet(APIViewSet):
    permission_model = SSHCredential
    serializer_class = s.CredentialOutput
    filter_backends = LIST_FILTERS
    ordering_fields = ("name", "username", "created_at", "cluster_count")
    search_fields = ("name", "username")

    def get_queryset(self) -> Any:
        return selectors.credential_list()

    def get_credential(self, *, annotated: bool) -> SSHCredential:
        queryset = self.get_queryset() if annotated else SSHCredential.objects.all()
        credential = get_object_or_404(queryset, pk=self.kwargs["pk"])
        self.check_object_permissions(self.request, credential)
        return credential

    def annotated(self, credential: SSHCredential) -> Any:
        return self.output(s.CredentialOutput, self.get_queryset().get(pk=credential.pk))

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.paginated(self.filter_queryset(self.get_queryset()), s.CredentialOutput)

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response(self.output(s.CredentialOutput, self.get_credential(annotated=True)))

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        fields = self.parse(s.CredentialCreateInput, request.data).validated_data
        credential = credential_create(actor=request.user, **fields)
        return Response(self.annotated(credential), status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        credential = self.get_credential(annotated=False)
        data = self.parse(s.CredentialUpdateInput, request.data, partial=kwargs.get("partial", False)).validated_data
        credential = credential_update(credential=credential, data=dict(data), actor=request.user)
        return Response(self.annotated(credential))

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.update(request, *args, partial=True, **kwargs)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        credential_delete(credential=self.get_credential(annotated=False), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
