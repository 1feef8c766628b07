"""Selectors shared by the API and the admin."""

from __future__ import annotations

import json

import pytest

from clusters import selectors
from clusters.choices import JobStatus, NodeStatus
from clusters.models import Job, Node

from .conftest import add_events, make_job

pytestmark = pytest.mark.django_db


def test_events_page_holds_only_json_types(finished_job):
    page = selectors.job_events_page(job_id=finished_job.pk, after=2, limit=2)

    assert json.loads(json.dumps(page)) == page
    assert [event["counter"] for event in page["results"]] == [3, 4]
    assert page["next_after"] == 4


def test_events_page_of_unknown_job():
    with pytest.raises(Job.DoesNotExist):
        selectors.job_events_page(job_id=123456)


def test_events_page_limit_is_clamped(installed_cluster):
    job = make_job(installed_cluster, status=JobStatus.RUNNING)
    add_events(job, 3)

    assert len(selectors.job_events_page(job_id=job.pk, limit=0)["results"]) == 1
    assert len(selectors.job_events_page(job_id=job.pk, limit=10**9)["results"]) == 3


def test_strip_ansi():
    text = "\x1b[0;32mok\x1b[0m \x1b]8;;http://x\x07link\x1b]8;;\x07 \x1b[2K\x1b[1Adone"

    assert selectors.strip_ansi(text) == "ok link done"


def test_cluster_list_counts(make_cluster):
    cluster = make_cluster("counted", nodes=4, servers=3)
    Node.objects.filter(cluster=cluster, hostname="node4").update(status=NodeStatus.REMOVED)
    Node.objects.filter(cluster=cluster, hostname="node3").update(status=NodeStatus.FAILED)
    job = make_job(cluster, status=JobStatus.PENDING)

    row = selectors.cluster_list().get(pk=cluster.pk)

    assert (row.node_count, row.server_count, row.agent_count, row.failed_node_count) == (3, 3, 0, 1)
    assert (row.active_job_id, row.active_job_kind, row.has_kubeconfig) == (job.pk, job.kind, False)
    assert {"token", "kubeconfig"} <= row.get_deferred_fields()
