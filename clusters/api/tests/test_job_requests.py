"""Endpoints that request jobs: install, upgrade, uninstall, preflight, fetch-kubeconfig, health and scaling.

Jobs are enqueued when the request's transaction commits. The tests capture the commit callbacks without running
them, then run them against a recording stand-in for the task's ``apply_async``: no broker is needed, and the job
engine's own tests cover the worker side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from clusters.choices import JobKind, JobStatus, NodeStatus
from clusters.models import AuditLog, Job, Node
from clusters.services.jobs import _PUBLISH_RETRY_POLICY
from clusters.tasks import run_job

from .conftest import make_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Messages the job task would have sent to the broker."""
    messages: list[dict[str, Any]] = []
    monkeypatch.setattr(run_job, "apply_async", lambda *args, **kwargs: messages.append(kwargs))
    return messages


@pytest.fixture
def post(api: Any, django_capture_on_commit_callbacks: Any) -> Callable[..., tuple[Any, list[Any]]]:
    """POST as an operator; returns the response and the commit callbacks the request registered (not run)."""

    def send(url: str, payload: Any = None) -> tuple[Any, list[Any]]:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = api.post(url, payload, format="json") if payload is not None else api.post(url)
        return response, callbacks

    return send


def run_callbacks(callbacks: list[Any]) -> None:
    for callback in callbacks:
        callback()


def assert_accepted(response: Any, enqueued: list[Any] | None = None, *, kind: str) -> Job:
    assert response.status_code == 202, response.json()
    if enqueued is not None:
        assert len(enqueued) == 1
    body = response.json()
    job = Job.objects.get(pk=body["id"])
    assert job.kind == kind
    assert job.status == JobStatus.PENDING
    assert body["url"] == f"http://testserver/api/jobs/{job.pk}/"
    assert response["Location"] == body["url"]
    assert body["stages"] == job.stages
    return job


def test_install_enqueues_one_job_after_commit(cluster, operator, post, sent):
    response, enqueued = post(f"/api/clusters/{cluster.pk}/install/", {})

    job = assert_accepted(response, enqueued, kind=JobKind.INSTALL)
    assert job.stages == ["reachability", "initial_master", "joining_masters", "workers", "all"]
    assert job.requested_by == operator
    assert job.params == {"resume": False, "check_reachability": True}
    assert len(enqueued) == 1 and sent == []  # nothing is sent before the commit
    run_callbacks(enqueued)
    # Publishing retries briefly, then gives up (a broker that is down must not hang the request).
    assert sent == [
        {"args": [job.pk], "task_id": job.celery_task_id, "queue": "playbooks", "retry_policy": _PUBLISH_RETRY_POLICY}
    ]
    assert _PUBLISH_RETRY_POLICY["max_retries"] <= 3
    assert AuditLog.objects.filter(action="job.request.install", cluster=cluster, actor=operator).exists()


def test_install_conflicts_with_an_active_job(cluster, post):
    active = make_job(cluster, kind=JobKind.PREFLIGHT, status=JobStatus.RUNNING)

    response, enqueued = post(f"/api/clusters/{cluster.pk}/install/", {})

    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "job_conflict"
    assert f"#{active.pk}" in body["message"]
    assert body["extra"] == {"job_id": active.pk, "job_kind": "preflight", "job_status": "running"}
    assert enqueued == []


def test_install_resume_needs_a_failed_install(cluster, post):
    response, enqueued = post(f"/api/clusters/{cluster.pk}/install/", {"resume": True})

    assert response.status_code == 400
    assert "resume" in response.json()["errors"]
    assert enqueued == []


def test_install_resume_starts_at_the_failed_stage(cluster, post):
    failed = make_job(
        cluster, kind=JobKind.INSTALL, status=JobStatus.FAILED, stage="workers", started_at=timezone.now()
    )

    response, enqueued = post(f"/api/clusters/{cluster.pk}/install/", {"resume": True})

    job = assert_accepted(response, enqueued, kind=JobKind.INSTALL)
    assert job.stages == ["reachability", "workers", "all"]
    assert response.json()["resume_of"] == failed.pk


def test_an_install_that_failed_its_reachability_check_resumes_at_its_next_stage(cluster, post):
    failed = make_job(
        cluster,
        kind=JobKind.INSTALL,
        status=JobStatus.FAILED,
        stage="reachability",
        stages=["reachability", "workers", "all"],
        started_at=timezone.now(),
    )

    response, enqueued = post(f"/api/clusters/{cluster.pk}/install/", {"resume": True})

    job = assert_accepted(response, enqueued, kind=JobKind.INSTALL)
    assert job.stages == ["reachability", "workers", "all"] and job.resume_of == failed


def test_the_reachability_check_can_be_turned_off(cluster, post):
    response, enqueued = post(f"/api/clusters/{cluster.pk}/install/", {"check_reachability": False})

    job = assert_accepted(response, enqueued, kind=JobKind.INSTALL)
    assert job.stages == ["initial_master", "joining_masters", "workers", "all"]

    Job.objects.filter(pk=job.pk).update(status=JobStatus.CANCELED)
    response, enqueued = post(f"/api/clusters/{cluster.pk}/install/", {"check_reachability": "maybe"})
    assert response.status_code == 400 and "check_reachability" in response.json()["errors"], response.json()
    assert enqueued == []


def test_install_refused_for_an_installed_cluster(installed_cluster, post):
    response, _ = post(f"/api/clusters/{installed_cluster.pk}/install/", {})

    assert response.status_code == 409
    assert response.json()["code"] == "invalid_state"


def test_install_needs_a_credential(make_cluster, post):
    cluster = make_cluster("nocred", ssh_credential=None)

    response, _ = post(f"/api/clusters/{cluster.pk}/install/", {})

    assert response.status_code == 409
    assert "SSH credential" in response.json()["message"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"resume": "yes"}, "resume"),
        ({"resume": 1}, "resume"),
        ({"workers_batch": "0"}, "workers_batch"),
        ({"workers_batch": "150%"}, "workers_batch"),
        ({"drain_timeout": -1}, "drain_timeout"),
        ({"drain_timeout": 10**12}, "drain_timeout"),
    ],
)
def test_job_options_are_validated(cluster, payload, field, post):
    response, _ = post(f"/api/clusters/{cluster.pk}/install/", payload)

    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_job_options_are_stored(cluster, post):
    response, enqueued = post(f"/api/clusters/{cluster.pk}/install/", {"workers_batch": "25%", "drain_timeout": 300})
    job = assert_accepted(response, enqueued, kind=JobKind.INSTALL)
    assert job.params == {"resume": False, "check_reachability": True, "workers_batch": "25%", "drain_timeout": 300}

    Job.objects.filter(pk=job.pk).update(status=JobStatus.CANCELED)
    response, enqueued = post(f"/api/clusters/{cluster.pk}/preflight/", {"workers_batch": "2"})
    assert assert_accepted(response, enqueued, kind=JobKind.PREFLIGHT).params == {"workers_batch": 2}


def test_upgrade(installed_cluster, post):
    response, enqueued = post(f"/api/clusters/{installed_cluster.pk}/upgrade/", {"target_version": "v1.32.1+rke2r1"})

    job = assert_accepted(response, enqueued, kind=JobKind.UPGRADE)
    assert job.stages == ["etcd_snapshot", "upgrade"]
    assert job.params == {
        "target_version": "v1.32.1+rke2r1",
        "allow_downgrade": False,
        "allow_minor_skip": False,
        "snapshot": True,
    }
    assert len(enqueued) == 1


@pytest.mark.parametrize(
    "payload",
    [{}, {"target_version": "latest"}, {"target_version": "v1.30.1+rke2r1"}, {"target_version": "v1.34.1+rke2r1"}],
)
def test_upgrade_refuses_bad_targets(installed_cluster, payload, post):
    response, _ = post(f"/api/clusters/{installed_cluster.pk}/upgrade/", payload)

    assert response.status_code == 400
    assert "target_version" in response.json()["errors"]


def test_upgrade_needs_an_installed_cluster(cluster, post):
    response, _ = post(f"/api/clusters/{cluster.pk}/upgrade/", {"target_version": "v1.32.1+rke2r1"})

    assert response.status_code == 409
    assert response.json()["code"] == "invalid_state"


def test_uninstall_needs_the_name_as_confirmation(installed_cluster, post):
    url = f"/api/clusters/{installed_cluster.pk}/uninstall/"

    response, enqueued = post(url, {"confirm": "something-else"})
    assert response.status_code == 400
    assert "confirm" in response.json()["errors"]

    response, enqueued = post(url, {"confirm": installed_cluster.name})
    job = assert_accepted(response, enqueued, kind=JobKind.UNINSTALL)
    assert "confirm" not in job.params


def test_preflight(cluster, post):
    job = assert_accepted(*post(f"/api/clusters/{cluster.pk}/preflight/", {}), kind=JobKind.PREFLIGHT)
    assert job.stages == ["preflight"]


def test_preflight_accepts_an_empty_body(cluster, post):
    assert_accepted(*post(f"/api/clusters/{cluster.pk}/preflight/"), kind=JobKind.PREFLIGHT)


@pytest.mark.parametrize(("path", "kind"), [("fetch-kubeconfig", JobKind.FETCH_KUBECONFIG), ("health", JobKind.HEALTH)])
def test_maintenance_jobs(installed_cluster, path, kind, post):
    assert_accepted(*post(f"/api/clusters/{installed_cluster.pk}/{path}/", {}), kind=kind)


def test_job_request_on_unknown_cluster(post):
    response, _ = post("/api/clusters/555555/preflight/", {})

    assert response.status_code == 404


# --- scaling ----------------------------------------------------------------------------------------------------


def test_scale_add(installed_cluster, post, sent):
    nodes = [
        {"hostname": "node4", "internal_ip": "10.0.0.4"},
        {"hostname": "node5", "internal_ip": "10.0.0.5", "role": "server"},
    ]

    response, enqueued = post(f"/api/clusters/{installed_cluster.pk}/scale/add/", {"nodes": nodes})

    assert response.status_code == 202, response.json()
    body = response.json()
    assert [(n["hostname"], n["role"], n["status"]) for n in body["nodes"]] == [
        ("node4", "worker", "pending"),
        ("node5", "master", "pending"),
    ]
    job = Job.objects.get(pk=body["job"]["id"])
    assert job.kind == JobKind.SCALE_ADD
    assert job.stages == ["reachability", "joining_masters", "workers"]
    assert response["Location"] == body["job"]["url"]
    run_callbacks(enqueued)
    assert [message["args"] for message in sent] == [[job.pk]]


def test_scale_add_keeps_nothing_when_the_job_is_refused(cluster, post):
    nodes = [{"hostname": "node9", "internal_ip": "10.0.0.9"}]

    response, enqueued = post(f"/api/clusters/{cluster.pk}/scale/add/", {"nodes": nodes})

    assert response.status_code == 409  # not installed yet
    assert not Node.objects.filter(hostname="node9").exists()
    assert not Job.objects.exists()
    assert enqueued == []


def test_scale_add_refused_while_a_job_is_active(installed_cluster, post):
    make_job(installed_cluster, kind=JobKind.HEALTH, status=JobStatus.PENDING)

    nodes = [{"hostname": "node9", "internal_ip": "10.0.0.9"}]

    response, enqueued = post(f"/api/clusters/{installed_cluster.pk}/scale/add/", {"nodes": nodes})

    assert response.status_code == 409
    assert response.json()["code"] == "job_conflict"
    assert not Node.objects.filter(hostname="node9").exists()
    assert enqueued == []


def test_scale_add_reports_node_errors(installed_cluster, post):
    nodes = [{"hostname": "node1", "internal_ip": "10.0.0.8"}, {"hostname": "node8", "internal_ip": "nope"}]

    response, _ = post(f"/api/clusters/{installed_cluster.pk}/scale/add/", {"nodes": nodes})

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert "nodes[1].internal_ip" in errors
    assert not Node.objects.filter(hostname="node8").exists()


def test_scale_add_needs_nodes(installed_cluster, post):
    response, _ = post(f"/api/clusters/{installed_cluster.pk}/scale/add/", {"nodes": []})

    assert response.status_code == 400
    assert "nodes" in response.json()["errors"]


def test_scale_remove(installed_cluster, post):
    response, enqueued = post(
        f"/api/clusters/{installed_cluster.pk}/scale/remove/", {"hostnames": ["node3"], "ungraceful": True}
    )

    assert response.status_code == 202, response.json()
    body = response.json()
    assert [(n["hostname"], n["status"]) for n in body["nodes"]] == [("node3", "draining")]
    job = Job.objects.get(pk=body["job"]["id"])
    assert job.kind == JobKind.SCALE_REMOVE
    assert job.params == {"ungraceful": True, "snapshot": True}
    assert len(enqueued) == 1


def test_scale_remove_of_never_installed_nodes_needs_no_job(installed_cluster, post):
    Node.objects.create(cluster=installed_cluster, hostname="spare", internal_ip="10.0.0.50")

    response, enqueued = post(f"/api/clusters/{installed_cluster.pk}/scale/remove/", {"hostnames": ["spare"]})

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["job"] is None
    assert body["nodes"][0]["status"] == NodeStatus.REMOVED
    assert not Job.objects.exists()
    assert enqueued == []


@pytest.mark.parametrize(
    ("hostnames", "message"),
    [(["node1"], "last server"), (["ghost"], "ghost")],
)
def test_scale_remove_refusals(installed_cluster, hostnames, message, post):
    response, _ = post(f"/api/clusters/{installed_cluster.pk}/scale/remove/", {"hostnames": hostnames})

    assert response.status_code == 400
    assert message in " ".join(response.json()["errors"]["hostnames"])
    assert not Node.objects.filter(status=NodeStatus.DRAINING).exists()


def test_scale_remove_refused_while_a_job_is_active(installed_cluster, post):
    make_job(installed_cluster, kind=JobKind.HEALTH, status=JobStatus.RUNNING)

    response, _ = post(f"/api/clusters/{installed_cluster.pk}/scale/remove/", {"hostnames": ["node3"]})

    assert response.status_code == 409
    assert Node.objects.get(cluster=installed_cluster, hostname="node3").status == NodeStatus.ACTIVE
