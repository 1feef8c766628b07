"""A first visit: / leads to the admin, /api/ lists the resources, lists sort and search (unknown fields are a
400), the audit log through the API, the live log filtered by host and text, and the health probes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from clusters.choices import JobKind, JobStatus
from clusters.models import AuditLog, WebhookDelivery
from clusters.services.audit import audit_record
from clusters.services.webhooks import webhook_create
from tests.worker import worker_factory  # noqa: F401  (fixture)

from .conftest import add_events, make_job

pytestmark = pytest.mark.django_db

AUTH = 4  # token + user, the user's tokens, user permissions, group permissions


def test_root_redirects_to_the_admin() -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/"


def test_api_root_lists_the_resources_without_authentication() -> None:
    response = Client().get("/api/")
    assert response.status_code == 200
    body = response.json()
    for name in (
        "clusters",
        "jobs",
        "credentials",
        "host-keys",
        "tokens",
        "audit-log",
        "webhooks",
        "webhook-deliveries",
        "registries",
        "schema",
        "docs",
    ):
        assert body[name].startswith("http://testserver/api/"), name
    assert Client().get(body["clusters"]).status_code == 401  # the resources still need a credential


# --- ordering and search ---------------------------------------------------------------------------------------------


def test_clusters_sort_and_search(api: Any, make_cluster: Callable[..., Any]) -> None:
    for name in ("bravo", "alpha", "charlie"):
        make_cluster(name, nodes=1, description=f"the {name} cluster")
    names = lambda response: [item["name"] for item in response.json()["results"]]  # noqa: E731
    assert names(api.get("/api/clusters/", {"ordering": "-name"})) == ["charlie", "bravo", "alpha"]
    assert names(api.get("/api/clusters/", {"ordering": "name"})) == ["alpha", "bravo", "charlie"]
    assert names(api.get("/api/clusters/", {"search": "BRAV"})) == ["bravo"]
    assert names(api.get("/api/clusters/", {"search": "cluster", "ordering": "-created_at"})) == [
        "charlie",
        "alpha",
        "bravo",
    ]


@pytest.mark.parametrize(
    "url",
    [
        "/api/clusters/",
        "/api/jobs/",
        "/api/credentials/",
        "/api/host-keys/",
        "/api/tokens/",
        "/api/audit-log/",
        "/api/webhooks/",
        "/api/webhook-deliveries/",
    ],
)
def test_unknown_ordering_is_a_400_naming_the_field(
    client_for: Callable[..., Any], make_user: Callable[..., Any], url: str
) -> None:
    client = client_for(make_user("root", superuser=True))
    response = client.get(url, {"ordering": "secret_sauce"})
    assert response.status_code == 400, response.content
    assert "secret_sauce" in response.content.decode()
    assert "ordering" in response.json()["errors"]


def test_jobs_sort_by_cluster_and_search_the_explanation(api: Any, make_cluster: Callable[..., Any]) -> None:
    beta, alpha = make_cluster("beta", nodes=1), make_cluster("alpha", nodes=1)
    first = make_job(beta, kind=JobKind.UPGRADE, status=JobStatus.FAILED, explanation="etcd quorum lost")
    second = make_job(alpha, kind=JobKind.HEALTH, status=JobStatus.SUCCESSFUL)
    ids = lambda response: [item["id"] for item in response.json()["results"]]  # noqa: E731
    assert ids(api.get("/api/jobs/", {"ordering": "cluster"})) == [second.pk, first.pk]
    assert ids(api.get("/api/jobs/", {"search": "quorum"})) == [first.pk]
    assert ids(api.get("/api/jobs/", {"search": "quorum", "kind": "health"})) == []


# --- the audit log ---------------------------------------------------------------------------------------------------


def test_audit_log_filters_and_permissions(
    client_for: Callable[..., Any], operator: Any, viewer: Any, make_cluster: Callable[..., Any]
) -> None:
    alpha, beta = make_cluster("alpha", nodes=1), make_cluster("beta", nodes=1)
    api, as_viewer, anonymous = client_for(operator), client_for(viewer), client_for(None)
    AuditLog.objects.all().delete()
    audit_record(action="job.request.install", actor=operator, cluster=alpha)
    audit_record(action="job.cancel", actor=operator, cluster=beta)
    old = audit_record(action="kubeconfig.download", actor=viewer, cluster=alpha)
    AuditLog.objects.filter(pk=old.pk).update(created_at=timezone.now() - dt.timedelta(days=3))

    assert as_viewer.get("/api/audit-log/").status_code == 403
    assert anonymous.get("/api/audit-log/").status_code == 401
    actions = lambda params: [item["action"] for item in api.get("/api/audit-log/", params).json()["results"]]  # noqa: E731
    assert actions({}) == ["job.cancel", "job.request.install", "kubeconfig.download"]
    assert actions({"cluster": alpha.pk}) == ["job.request.install", "kubeconfig.download"]
    assert actions({"user": "victor"}) == ["kubeconfig.download"]
    assert actions({"action": "job.cancel"}) == ["job.cancel"]
    assert actions({"action_prefix": "job."}) == ["job.cancel", "job.request.install"]
    since = (timezone.now() - dt.timedelta(days=1)).isoformat()
    assert actions({"since": since}) == ["job.cancel", "job.request.install"]
    assert actions({"until": since}) == ["kubeconfig.download"]
    assert actions({"ordering": "action"}) == ["job.cancel", "job.request.install", "kubeconfig.download"]
    entry = api.get("/api/audit-log/", {"action": "job.cancel"}).json()["results"][0]
    assert entry["user"] == "olivia" and entry["cluster_name"] == "beta"
    bad = api.get("/api/audit-log/", {"since": "yesterday"})
    assert bad.status_code == 400 and "since" in bad.json()["errors"]


@pytest.mark.parametrize("count", [1, 20])
def test_new_lists_cost_constant_queries(
    api: Any,
    operator: Any,
    make_user: Callable[..., Any],
    client_for: Callable[..., Any],
    make_cluster: Callable[..., Any],
    django_assert_num_queries: Any,
    count: int,
) -> None:
    cluster = make_cluster("alpha", nodes=1)
    for index in range(count):
        audit_record(action=f"test.{index}", actor=operator, cluster=cluster)
        hook = webhook_create(
            name=f"hook{index:02d}",
            url=f"https://h{index}.example.com/",
            secret="s" * 20,
            cluster=cluster if index % 2 else None,
        )
        WebhookDelivery.objects.create(webhook=hook, job=make_job(cluster), event="job.successful")
    with django_assert_num_queries(AUTH + 2):  # count, page
        response = api.get("/api/audit-log/", {"page_size": 100})
    assert response.status_code == 200 and response.json()["count"] >= count
    root = client_for(make_user("root", superuser=True))
    with django_assert_num_queries(2 + 2):  # token + user, tokens (a superuser needs no permission query); count, page
        response = root.get("/api/webhooks/", {"page_size": 100})
    assert len(response.json()["results"]) == count
    assert all("secret" not in item for item in response.json()["results"])
    with django_assert_num_queries(2 + 2):
        response = root.get("/api/webhook-deliveries/", {"page_size": 100})
    assert len(response.json()["results"]) == count


# --- the live log's filters ------------------------------------------------------------------------------------------


def test_events_filter_by_host_and_text(api: Any, finished_job: Any) -> None:
    add_events(finished_job, 10, start=6)
    url = f"/api/jobs/{finished_job.pk}/events/"
    page = api.get(url, {"host": "node2"}).json()
    assert {event["host_name"] for event in page["results"]} == {"node2"}
    assert [event["counter"] for event in page["results"]] == [1, 4, 7, 10, 13]
    page = api.get(url, {"host": "node2", "after": 7, "limit": 1}).json()
    assert [event["counter"] for event in page["results"]] == [10] and page["next_after"] == 10
    page = api.get(url, {"search": "LINE 1"}).json()
    assert [event["counter"] for event in page["results"]] == [1, 10, 11, 12, 13, 14, 15]
    page = api.get(url, {"search": "no such text"}).json()
    assert page["results"] == [] and page["next_after"] == 0 and page["finished"] is True
    assert api.get(url, {"search": "x" * 201}).status_code == 400


# --- probes ----------------------------------------------------------------------------------------------------------


def test_healthz_answers_whatever_the_host() -> None:
    response = Client(HTTP_HOST="not-an-allowed-host.example").get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db(transaction=True)
def test_readyz_needs_a_live_worker(worker_factory: Callable[..., Any]) -> None:  # noqa: F811
    response = Client().get("/readyz")
    body = response.json()
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True
    if body["checks"]["worker"].get("skipped"):
        pytest.fail("the test broker must be Redis (TEST_REDIS_URL) so that workers answer pings")
    assert response.status_code == 503 and body["status"] == "unavailable"
    assert body["checks"]["worker"]["ok"] is False

    worker_factory(concurrency=1, queues="celery")
    response = Client().get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"]["worker"] == {
        "ok": True,
        "workers": 1,
        "ms": response.json()["checks"]["worker"]["ms"],
    }
