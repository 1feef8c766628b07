"""Pages that must stay cheap as history grows (see bench/bench_history.py): the admin changelists of nodes, jobs
and the audit log, the job page, their filters, and the batched purge of old events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from clusters.admin.base import ClusterListFilter
from clusters.choices import JobKind, JobStatus
from clusters.engine.reaper import job_events_purge
from clusters.models import AuditLog, Cluster, Job, JobEvent, JobHostSummary

pytestmark = pytest.mark.django_db

VERSION = "v1.31.4+rke2r1"


def fill(count: int, *, nodes: int = 3, events: int = 5) -> list[Job]:
    """``count`` clusters, each with ``nodes`` nodes, a finished job with ``events`` events and an audit entry."""
    user = get_user_model().objects.get_or_create(username="someone")[0]
    jobs = []
    start = Cluster.objects.count()
    for index in range(start, start + count):
        cluster = Cluster.objects.create(name=f"h{index:03d}", rke2_version=VERSION, token="t" * 48)
        cluster.cluster_nodes.bulk_create(
            [
                cluster.cluster_nodes.model(
                    cluster=cluster, hostname=f"h{index}-n{number}", internal_ip=f"10.{index}.0.{number + 1}"
                )
                for number in range(nodes)
            ]
        )
        job = Job.objects.create(
            cluster=cluster,
            kind=JobKind.INSTALL,
            status=JobStatus.SUCCESSFUL,
            requested_by=user,
            finished_at=timezone.now(),
            emitted_events=events,
            stages=["workers"],
        )
        JobEvent.objects.bulk_create(
            [JobEvent(job=job, counter=counter, event="runner_on_ok", stdout="ok") for counter in range(1, events + 1)]
        )
        AuditLog.objects.create(actor=user, action="job.request.install", cluster=cluster, object_repr=cluster.name)
        jobs.append(job)
    return jobs


# Every admin page: the session and the user. Then the result count and the page (one count only: the full
# count is not shown), and the filters' choices that come from the database.
@pytest.mark.parametrize(
    ("url_name", "queries"),
    [
        ("admin:clusters_node_changelist", 2 + 2 + 1),  # cluster choices
        ("admin:clusters_job_changelist", 2 + 2 + 2),  # the page's clusters, cluster choices
        ("admin:clusters_auditlog_changelist", 2 + 2 + 1),  # user choices
    ],
)
def test_changelists_cost_the_same_queries_for_any_volume(
    admin_client: Any, django_assert_num_queries: Any, url_name: str, queries: int
) -> None:
    fill(1)
    with django_assert_num_queries(queries):
        assert admin_client.get(reverse(url_name)).status_code == 200
    fill(40, nodes=4, events=20)
    with django_assert_num_queries(queries):
        response = admin_client.get(reverse(url_name))
    assert response.status_code == 200
    changelist = response.context["cl"]
    assert len(changelist.result_list) == min(changelist.result_count, changelist.list_per_page) > 40


def test_job_page_costs_the_same_queries_for_any_number_of_events(
    admin_client: Any, django_assert_num_queries: Any
) -> None:
    small, large = fill(1, events=2)[0], fill(1, events=3000)[0]
    JobHostSummary.objects.bulk_create([JobHostSummary(job=large, host_name=f"n{index}", ok=3) for index in range(20)])
    JobHostSummary.objects.create(job=small, host_name="n0", ok=3)
    admin_client.get(reverse("admin:clusters_job_change", args=[small.pk]))  # content types are cached
    # session, user, the job and its cluster, its host counts and summaries, the job and its cluster again (the
    # admin's own change view)
    with django_assert_num_queries(8):
        assert admin_client.get(reverse("admin:clusters_job_change", args=[small.pk])).status_code == 200
    with django_assert_num_queries(8):
        response = admin_client.get(reverse("admin:clusters_job_change", args=[large.pk]))
    assert response.status_code == 200 and "n19" in response.content.decode()


def test_cluster_filter_lists_a_bounded_number_of_clusters_and_the_selected_one(admin_client: Any) -> None:
    jobs = fill(ClusterListFilter.max_choices + 5, nodes=1, events=0)
    last = jobs[-1].cluster
    url = reverse("admin:clusters_job_changelist")
    html = admin_client.get(url).content.decode()
    assert f"cluster__id__exact={jobs[0].cluster_id}" in html
    assert f"cluster__id__exact={last.pk}" not in html  # beyond the first clusters by name

    response = admin_client.get(url, {"cluster__id__exact": last.pk})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [jobs[-1]]
    assert f"cluster__id__exact={last.pk}" in response.content.decode()  # the selected one is listed


def test_audit_log_filters_by_action_family_and_date(admin_client: Any) -> None:
    fill(2, nodes=1, events=0)
    AuditLog.objects.create(action="cluster.kubeconfig.download", object_repr="h000")
    AuditLog.objects.create(action="nodes.add", object_repr="h001")
    AuditLog.objects.filter(action="job.request.install").update(created_at=timezone.now() - timedelta(days=400))
    url = reverse("admin:clusters_auditlog_changelist")

    def actions(params: dict[str, str]) -> list[str]:
        response = admin_client.get(url, params)
        assert response.status_code == 200
        return sorted(entry.action for entry in response.context["cl"].result_list)

    assert actions({"action_family": "job"}) == ["job.request.install"] * 2
    assert actions({"action_family": "kubeconfig"}) == ["cluster.kubeconfig.download"]
    assert actions({"action_family": "node"}) == ["nodes.add"]
    assert actions({"created_at__gte": (timezone.now() - timedelta(days=7)).isoformat()}) == [
        "cluster.kubeconfig.download",
        "nodes.add",
    ]


def test_purge_deletes_small_jobs_together_and_large_jobs_by_counter_ranges(
    django_assert_max_num_queries: Any,
) -> None:
    jobs = fill(12, nodes=1, events=3)
    large = fill(1, nodes=1, events=25)[0]
    JobEvent.objects.filter(job=large, counter__in=[5, 6, 7, 8, 9, 10, 11, 12, 13]).delete()  # a gap
    recent = jobs.pop()
    old = timezone.now() - timedelta(days=120)
    Job.objects.filter(pk__in=[job.pk for job in [*jobs, large]]).update(finished_at=old, result={"rc": 0})

    # 11 small jobs of 3 events in batches of 10 events: 4 groups; the large job: counters 1-10, 11-20, 21-30.
    with django_assert_max_num_queries(1 + 4 * 3 + 4 + 3):
        assert job_events_purge(older_than_days=90, batch_size=10, pause_seconds=0) == 11 * 3 + 16

    assert not JobEvent.objects.filter(job__in=[*jobs, large]).exists()
    assert JobEvent.objects.filter(job=recent).count() == 3
    purged = Job.objects.filter(pk__in=[job.pk for job in [*jobs, large]])
    assert {(job.emitted_events, job.result["events_purged"], job.result["rc"]) for job in purged} == {(0, True, 0)}
    assert Job.objects.get(pk=recent.pk).emitted_events == 3
