"""Jobs under faults, as API clients see them: a broker that is down, and a log whose events could not all be
stored."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import pytest
from django.utils import timezone

from clusters.choices import ACTIVE_JOB_STATUSES, JobStatus
from clusters.models import Job

from .conftest import add_events, make_job


@pytest.fixture
def api(make_user, client_for):
    """A superuser's client: the transactional tests below run after the groups' data migration was flushed."""
    return client_for(make_user("chief", superuser=True))


@pytest.fixture
def broker_down() -> Iterator[Callable[[], None]]:
    """The Celery application of this process pointed at a port where no broker listens; the fixture's value
    brings the broker back."""
    from kombu import pools

    from rke2portal.celery import app

    old = app.conf.broker_write_url

    def point_at(url: str) -> None:
        app.conf.broker_write_url = url  # what publishing uses (set from broker_url at configuration)
        pools.reset()  # kombu's process-wide connection and producer pools
        app._pool = None
        app.amqp._producer_pool = None

    point_at("redis://127.0.0.1:9/0")
    try:
        yield lambda: point_at(old)
    finally:
        point_at(old)


@pytest.mark.django_db(transaction=True)
def test_a_job_requested_while_the_broker_is_down_is_refused_with_503_and_leaves_nothing_pending(
    api, installed_cluster, broker_down
):
    response = api.post(f"/api/clusters/{installed_cluster.pk}/health/", {}, format="json")

    assert response.status_code == 503, response.content
    body = response.json()
    assert body["code"] == "queue_unavailable"
    assert "task queue (broker) cannot be reached" in body["message"] and "the cluster is free" in body["message"]
    assert not Job.objects.filter(cluster=installed_cluster, status__in=ACTIVE_JOB_STATUSES).exists()
    job = Job.objects.get(pk=body["extra"]["job_id"])
    assert job.status == JobStatus.FAILED and job.explanation.startswith("Not queued:")
    assert job.dispatched_at is None and job.finished_at is not None


@pytest.mark.django_db(transaction=True)
def test_after_the_broker_is_back_the_cluster_takes_a_job_again(api, installed_cluster, broker_down):
    assert api.post(f"/api/clusters/{installed_cluster.pk}/health/", {}, format="json").status_code == 503
    broker_down()  # the broker is back
    response = api.post(f"/api/clusters/{installed_cluster.pk}/health/", {}, format="json")
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert job.status == JobStatus.PENDING and job.dispatched_at is not None


def test_a_job_that_lost_events_still_finishes_its_stream(api, installed_cluster):
    job = make_job(
        installed_cluster, status=JobStatus.FAILED, emitted_events=5, result={"dropped_events": 1},
        finished_at=timezone.now(), explanation="Stage workers failed.",
    )  # fmt: skip
    add_events(job, 4)
    page = api.get(f"/api/jobs/{job.pk}/events/").json()
    assert page["finished"] is True and [e["counter"] for e in page["results"]] == [1, 2, 3, 4]

    # Whatever the counts say, the stream of a job that ended long ago is finished.
    other = make_job(
        installed_cluster, status=JobStatus.FAILED, emitted_events=9,
        finished_at=timezone.now() - dt.timedelta(hours=1),
    )  # fmt: skip
    add_events(other, 3)
    assert api.get(f"/api/jobs/{other.pk}/events/").json()["finished"] is True
    running = make_job(installed_cluster, status=JobStatus.RUNNING, emitted_events=9)
    assert api.get(f"/api/jobs/{running.pk}/events/").json()["finished"] is False
