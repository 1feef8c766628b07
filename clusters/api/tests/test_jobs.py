"""Job endpoints: list with filters, show, the events feed the admin's live log polls, the output, cancel."""

from __future__ import annotations

import pytest

from clusters.choices import JobKind, JobStatus
from clusters.models import AuditLog, Job, JobEvent

from .conftest import add_events, make_job

pytestmark = pytest.mark.django_db

EVENT_KEYS = {"counter", "event", "stage", "host_name", "task", "stdout", "failed", "changed", "created"}
JOB_KEYS = {"id", "status", "stage", "stages", "stages_completed", "explanation", "host_counts"}


def test_list_and_filters(api, make_cluster):
    alpha, beta = make_cluster("alpha"), make_cluster("beta")
    first = make_job(alpha, kind=JobKind.PREFLIGHT, status=JobStatus.FAILED)
    second = make_job(alpha, kind=JobKind.INSTALL, status=JobStatus.RUNNING)
    third = make_job(beta, kind=JobKind.PREFLIGHT, status=JobStatus.SUCCESSFUL)

    def ids(**query: object) -> list[int]:
        response = api.get("/api/jobs/", query)
        assert response.status_code == 200, response.json()
        return [job["id"] for job in response.json()["results"]]

    assert ids() == [third.pk, second.pk, first.pk]
    assert ids(cluster=alpha.pk) == [second.pk, first.pk]
    assert ids(kind="preflight") == [third.pk, first.pk]
    assert ids(status="running") == [second.pk]
    assert ids(cluster=alpha.pk, kind="preflight", status="failed") == [first.pk]
    assert ids(cluster=999999) == []


@pytest.mark.parametrize(
    "query", [{"status": "done"}, {"kind": "reboot"}, {"cluster": "abc"}, {"cluster": "0"}, {"cluster": "9" * 30}]
)
def test_list_rejects_bad_filters(api, query):
    response = api.get("/api/jobs/", query)

    assert response.status_code == 400
    assert list(response.json()["errors"]) == list(query)


def test_retrieve(api, finished_job, operator):
    Job.objects.filter(pk=finished_job.pk).update(requested_by=operator, rc=0, result={"rke2_installed_versions": {}})

    response = api.get(f"/api/jobs/{finished_job.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == finished_job.pk
    assert body["cluster"] == finished_job.cluster_id
    assert body["cluster_name"] == "alpha"
    assert body["requested_by"] == operator.username
    assert body["kind"] == "install" and body["status"] == "successful"
    assert body["public_id"] == str(finished_job.public_id)


def test_events_shape(api, finished_job):
    response = api.get(f"/api/jobs/{finished_job.pk}/events/")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"results", "next_after", "finished", "job"}
    assert [event["counter"] for event in body["results"]] == [1, 2, 3, 4, 5]
    assert all(set(event) == EVENT_KEYS for event in body["results"])
    first = body["results"][0]
    assert first["stdout"] == "\x1b[0;32mok: [node2] line 1\x1b[0m"  # raw: the live log renders colours itself
    assert first["created"] == "2026-01-02T03:04:06.123456Z"
    assert body["next_after"] == 5
    assert body["finished"] is True
    assert set(body["job"]) == JOB_KEYS
    assert body["job"]["id"] == finished_job.pk
    assert body["job"]["stages"] == ["initial_master", "joining_masters", "workers", "all"]
    assert body["job"]["stages_completed"] == 4
    assert body["job"]["host_counts"] == {"ok": 1, "changed": 1, "failed": 1, "unreachable": 0}


def test_events_paging_with_after_and_limit(api, installed_cluster):
    job = make_job(installed_cluster, status=JobStatus.RUNNING, stage="workers")
    add_events(job, 7)
    url = f"/api/jobs/{job.pk}/events/"

    page = api.get(url, {"after": 0, "limit": 3}).json()
    assert [e["counter"] for e in page["results"]] == [1, 2, 3]
    assert page["next_after"] == 3 and page["finished"] is False

    page = api.get(url, {"after": page["next_after"], "limit": 3}).json()
    assert [e["counter"] for e in page["results"]] == [4, 5, 6]

    page = api.get(url, {"after": 7}).json()
    assert page["results"] == [] and page["next_after"] == 7
    assert page["job"]["status"] == "running" and page["job"]["stage"] == "workers"


def test_events_are_ordered_by_counter(api, installed_cluster):
    job = make_job(installed_cluster)
    add_events(job, 2, start=5)
    add_events(job, 2, start=1)

    page = api.get(f"/api/jobs/{job.pk}/events/").json()

    assert [e["counter"] for e in page["results"]] == [1, 2, 5, 6]


def test_events_finished_only_when_every_emitted_event_is_stored(api, installed_cluster):
    job = make_job(installed_cluster, status=JobStatus.FAILED, emitted_events=4, explanation="Stage workers failed.")
    add_events(job, 3)
    url = f"/api/jobs/{job.pk}/events/"

    page = api.get(url).json()
    assert page["finished"] is False
    assert page["job"]["explanation"] == "Stage workers failed."

    add_events(job, 1, start=4)
    assert api.get(url, {"after": 3}).json()["finished"] is True


def test_events_default_and_maximum_limit(api, installed_cluster):
    job = make_job(installed_cluster, status=JobStatus.RUNNING)
    add_events(job, 501)
    url = f"/api/jobs/{job.pk}/events/"

    assert len(api.get(url).json()["results"]) == 500
    assert len(api.get(url, {"limit": 2000}).json()["results"]) == 501


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": 2001}, "limit"),
        ({"limit": 0}, "limit"),
        ({"after": -1}, "after"),
        ({"after": "x"}, "after"),
        ({"after": "9" * 40}, "after"),
    ],
)
def test_events_rejects_bad_parameters(api, finished_job, query, field):
    response = api.get(f"/api/jobs/{finished_job.pk}/events/", query)

    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_events_of_unknown_job(api):
    assert api.get("/api/jobs/777777/events/").status_code == 404


def test_stdout_streams_plain_text_in_counter_order(api, installed_cluster):
    job = make_job(installed_cluster)
    add_events(job, 2, start=3)
    add_events(job, 2, start=1)
    JobEvent.objects.create(job=job, counter=9, event="playbook_on_stats", stdout="")
    JobEvent.objects.create(job=job, counter=10, event="verbose", stdout="PLAY RECAP\r\nnode1 : ok=1\r\n")

    response = api.get(f"/api/jobs/{job.pk}/stdout/")

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    text = b"".join(response.streaming_content).decode()
    assert text == (
        "ok: [node2] line 1\nok: [node3] line 2\nok: [node1] line 3\nok: [node2] line 4\nPLAY RECAP\nnode1 : ok=1\n"
    )


def test_stdout_keeps_colours_on_request(api, finished_job):
    response = api.get(f"/api/jobs/{finished_job.pk}/stdout/", {"ansi": "1"})

    text = b"".join(response.streaming_content).decode()
    assert text.startswith("\x1b[0;32mok: [node2] line 1\x1b[0m\n")


def test_stdout_of_a_large_job_comes_in_chunks(api, installed_cluster):
    job = make_job(installed_cluster)
    JobEvent.objects.bulk_create(
        [JobEvent(job=job, counter=i, event="runner_on_ok", stdout="x" * 200) for i in range(1, 2001)]
    )

    response = api.get(f"/api/jobs/{job.pk}/stdout/")

    chunks = list(response.streaming_content)
    assert len(chunks) > 1
    assert sum(len(chunk) for chunk in chunks) == 2000 * 201


def test_stdout_ignores_the_accept_header(api, finished_job):
    response = api.get(f"/api/jobs/{finished_job.pk}/stdout/", HTTP_ACCEPT="text/plain")

    assert response.status_code == 200


def test_cancel_pending_job(api, installed_cluster, operator):
    job = make_job(installed_cluster, kind=JobKind.HEALTH, status=JobStatus.PENDING)

    response = api.post(f"/api/jobs/{job.pk}/cancel/")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "canceled" and body["cancel_requested"] is True
    assert AuditLog.objects.filter(action="job.cancel", actor=operator, cluster=installed_cluster).exists()


def test_cancel_running_job_asks_the_worker(api, installed_cluster):
    job = make_job(installed_cluster, kind=JobKind.HEALTH, status=JobStatus.RUNNING)

    body = api.post(f"/api/jobs/{job.pk}/cancel/").json()

    assert body["status"] == "running" and body["cancel_requested"] is True


def test_cancel_finished_job_is_a_conflict(api, finished_job):
    response = api.post(f"/api/jobs/{finished_job.pk}/cancel/")

    assert response.status_code == 409
    assert response.json()["code"] == "invalid_state"
