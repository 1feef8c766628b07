"""Reads shared by the API and the admin: cheap, with a constant number of queries whatever the row count."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import TypedDict

from django.db.models import (
    BooleanField,
    Count,
    ExpressionWrapper,
    IntegerField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from .choices import ACTIVE_JOB_STATUSES, LIVE_NODE_STATUSES, SERVER_ROLES
from .models import Cluster, Job, JobEvent, JobHostSummary, Node, SSHCredential

__all__ = [
    "EVENTS_PAGE_DEFAULT_LIMIT",
    "EVENTS_PAGE_MAX_LIMIT",
    "EventsPage",
    "HostCounts",
    "cluster_detail_queryset",
    "cluster_list",
    "credential_list",
    "job_events_page",
    "job_host_counts",
    "job_list",
    "job_stdout_chunks",
    "node_count_subquery",
    "node_list",
    "strip_ansi",
]

EVENTS_PAGE_DEFAULT_LIMIT = 500
EVENTS_PAGE_MAX_LIMIT = 2000
# After a job ended, events stop arriving within this many seconds whatever happened to its worker.
EVENTS_SETTLE_SECONDS = 180
EVENT_FIELDS = ("counter", "event", "stage", "host_name", "task", "stdout", "failed", "changed", "created")

# CSI sequences (colours, cursor movement), OSC sequences (titles, hyperlinks) and lone two-byte escapes.
_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


class HostCounts(TypedDict):
    ok: int
    changed: int
    failed: int
    unreachable: int


class EventRow(TypedDict):
    counter: int
    event: str
    stage: str
    host_name: str
    task: str
    stdout: str
    failed: bool
    changed: bool
    created: str | None


class JobState(TypedDict):
    id: int
    status: str
    stage: str
    stages: list[str]
    stages_completed: int
    explanation: str
    host_counts: HostCounts


class EventsPage(TypedDict):
    results: list[EventRow]
    next_after: int
    finished: bool
    job: JobState


def node_count_subquery(condition: Q) -> Coalesce:
    """The number of the cluster's nodes matching ``condition``, as a correlated subquery: computed for the rows
    a page shows (through the (cluster, status) index), not by joining and grouping every node of every cluster."""
    counts = (
        Node.objects.filter(condition, cluster=OuterRef("pk"))
        .order_by()
        .values("cluster")
        .annotate(count=Count("pk"))
        .values("count")
    )
    return Coalesce(Subquery(counts, output_field=IntegerField()), 0)


def cluster_list() -> QuerySet[Cluster]:
    """Clusters with their node counts, whether a kubeconfig is stored and their active job, in one query.

    Annotations: ``node_count``, ``server_count``, ``agent_count`` (live nodes only), ``failed_node_count``,
    ``has_kubeconfig``, ``active_job_id``, ``active_job_kind``. The encrypted columns are not loaded.
    """
    live = Q(status__in=LIVE_NODE_STATUSES)
    active_jobs = Job.objects.filter(cluster=OuterRef("pk"), status__in=ACTIVE_JOB_STATUSES).order_by("-pk")
    return (
        Cluster.objects.defer("token", "kubeconfig")
        .annotate(
            node_count=node_count_subquery(live),
            server_count=node_count_subquery(live & Q(role__in=SERVER_ROLES)),
            agent_count=node_count_subquery(live & ~Q(role__in=SERVER_ROLES)),
            failed_node_count=node_count_subquery(Q(status="failed")),
            has_kubeconfig=ExpressionWrapper(~Q(kubeconfig=""), output_field=BooleanField()),
            active_job_id=Subquery(active_jobs.values("pk")[:1]),
            active_job_kind=Subquery(active_jobs.values("kind")[:1]),
        )
        .order_by("name", "pk")
    )


def cluster_detail_queryset() -> QuerySet[Cluster]:
    """:func:`cluster_list` with every node of each cluster prefetched (ordered as created)."""
    return cluster_list().prefetch_related(Prefetch("cluster_nodes", queryset=Node.objects.order_by("pk")))


def node_list(*, cluster: Cluster) -> QuerySet[Node]:
    """The nodes of a cluster, removed ones included, oldest first."""
    return Node.objects.filter(cluster=cluster).order_by("pk")


def job_list() -> QuerySet[Job]:
    """Jobs, newest first, with their requester and (in one more query) their clusters loaded.

    The clusters are prefetched rather than joined: with a join, SQLite's planner starts from the clusters and
    sorts every job to find the newest page; alone, the jobs are read in the order of their creation index."""
    return (
        Job.objects.select_related("requested_by")
        .prefetch_related(Prefetch("cluster", queryset=Cluster.objects.defer("token", "kubeconfig")))
        .only(*_JOB_LIST_FIELDS)
        .order_by("-created_at", "-pk")
    )


_JOB_LIST_FIELDS = (
    "id",
    "public_id",
    "cluster_id",
    "kind",
    "status",
    "stages",
    "stage",
    "stages_completed",
    "params",
    "requested_by_id",
    "requested_by__id",
    "requested_by__username",
    "created_at",
    "started_at",
    "finished_at",
    "cancel_requested",
    "rc",
    "result",
    "explanation",
    "emitted_events",
    "resume_of_id",
)


def credential_list() -> QuerySet[SSHCredential]:
    """SSH credentials without their secret columns; ``has_passphrase`` and ``cluster_count`` annotated."""
    return (
        SSHCredential.objects.defer("private_key", "passphrase")
        .annotate(
            has_passphrase=ExpressionWrapper(~Q(passphrase=""), output_field=BooleanField()),
            cluster_count=Count("clusters", distinct=True),
        )
        .order_by("name", "pk")
    )


def job_host_counts(*, job: Job) -> HostCounts:
    """How many hosts of the job ended ok, changed, failed or unreachable (each host counted once, the worst
    outcome winning: unreachable, then failed, then changed)."""
    totals = JobHostSummary.objects.filter(job=job).aggregate(
        hosts_unreachable=Count("pk", filter=Q(dark__gt=0)),
        hosts_failed=Count("pk", filter=Q(dark=0, failures__gt=0)),
        hosts_changed=Count("pk", filter=Q(dark=0, failures=0, changed__gt=0)),
        hosts_ok=Count("pk", filter=Q(dark=0, failures=0, changed=0)),
    )
    return HostCounts(
        ok=totals["hosts_ok"] or 0,
        changed=totals["hosts_changed"] or 0,
        failed=totals["hosts_failed"] or 0,
        unreachable=totals["hosts_unreachable"] or 0,
    )


def job_events_page(
    *, job_id: int, after: int = 0, limit: int = EVENTS_PAGE_DEFAULT_LIMIT, host: str = "", search: str = ""
) -> EventsPage:
    """The events of job ``job_id`` with a counter above ``after``, at most ``limit`` of them in counter order, and
    the job's progress, in four queries. The result holds only JSON types, so any JSON encoder renders it the same.

    ``finished`` is true once the job is no longer active and every event it emitted is stored or known lost (the
    worker counts the events it could not store, and leaves a placeholder row for each), or once the job ended
    more than ``EVENTS_SETTLE_SECONDS`` ago (the worker stores its events before it ends the job, so nothing more
    is coming): a client polling with ``after=next_after`` can stop then. Raises ``Job.DoesNotExist`` for an
    unknown job.

    ``host`` keeps only that host's events and ``search`` only those whose output or task contains the text
    (case-insensitive); ``next_after`` then continues after the last matching event.
    """
    limit = max(1, min(int(limit), EVENTS_PAGE_MAX_LIMIT))
    job = Job.objects.only(
        "id", "status", "stage", "stages", "stages_completed", "explanation", "emitted_events", "finished_at", "result"
    ).get(pk=job_id)
    events = JobEvent.objects.filter(job_id=job.pk, counter__gt=after)
    if host:
        events = events.filter(host_name=host)
    if search:
        events = events.filter(Q(stdout__icontains=search) | Q(task__icontains=search))
    rows = list(events.order_by("counter").values(*EVENT_FIELDS)[:limit])
    results: list[EventRow] = []
    for row in rows:
        row["created"] = _isoformat(row["created"])
        results.append(row)  # type: ignore[arg-type]  # values() rows carry exactly EVENT_FIELDS
    finished = False
    if not job.is_active:
        # Counting is only needed once the job is over; the worker stores its events before finishing the job,
        # but a lagging write (or a lost worker) can leave fewer rows than were emitted.
        dropped = (job.result or {}).get("dropped_events") if isinstance(job.result, dict) else 0
        dropped = dropped if isinstance(dropped, int) and dropped > 0 else 0
        settled = job.finished_at is not None and job.finished_at < timezone.now() - dt.timedelta(
            seconds=EVENTS_SETTLE_SECONDS
        )
        finished = settled or JobEvent.objects.filter(job_id=job.pk).count() + dropped >= job.emitted_events
    return EventsPage(
        results=results,
        next_after=results[-1]["counter"] if results else after,
        finished=finished,
        job=JobState(
            id=job.pk,
            status=job.status,
            stage=job.stage,
            stages=list(job.stages or []),
            stages_completed=job.stages_completed,
            explanation=job.explanation,
            host_counts=job_host_counts(job=job),
        ),
    )


def _isoformat(value: dt.datetime | None) -> str | None:
    """ISO 8601 as the API renders datetimes elsewhere (UTC written ``Z``)."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences."""
    return _ANSI_RE.sub("", text)


def job_stdout_chunks(
    *, job: Job, ansi: bool = False, chunk_size: int = 2000, buffer_bytes: int = 64 * 1024
) -> Iterator[str]:
    """The job's output as text, event by event in counter order, read with a server-side cursor ``chunk_size``
    rows at a time and yielded in pieces of about ``buffer_bytes``. Terminal escapes are removed unless ``ansi``."""
    rows = (
        JobEvent.objects.filter(job_id=job.pk)
        .exclude(stdout="")
        .order_by("counter")
        .values_list("stdout", flat=True)
        .iterator(chunk_size=chunk_size)
    )
    pending: list[str] = []
    size = 0
    for stdout in rows:
        text = stdout.replace("\r\n", "\n")
        if not ansi:
            text = strip_ansi(text)
        if not text.endswith("\n"):
            text += "\n"
        pending.append(text)
        size += len(text)
        if size >= buffer_bytes:
            yield "".join(pending)
            pending, size = [], 0
    if pending:
        yield "".join(pending)
