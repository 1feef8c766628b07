"""Webhooks: which jobs create deliveries, the signed body a real HTTP receiver on loopback gets, retries with
backoff, giving up, redirects not followed, secrets masked; and the Celery path through a real worker."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.utils import timezone

from clusters.choices import JobKind, JobStatus, WebhookDeliveryStatus
from clusters.fields import reveal
from clusters.models import AuditLog, Job, Webhook, WebhookDelivery
from clusters.services.webhooks import (
    SIGNATURE_HEADER,
    signature_header,
    signature_verify,
    webhook_create,
    webhook_delivery_attempt,
    webhook_update,
    webhooks_notify_job,
    webhooks_sweep,
)
from clusters.tests.factories import make_cluster, make_credential
from tests.worker import worker_factory  # noqa: F401  (fixture)

SECRET = "webhook-secret-0123456789"


class Receiver:
    """An HTTP server on loopback in a thread; answers each POST with the next status of ``statuses``."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [200])
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"path": self.path, "headers": self.headers, "body": body})
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                self.end_headers()
                self.wfile.write(f"answer {status}".encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(statuses: list[int] | None = None) -> Receiver:
        server = Receiver(statuses).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__()


@pytest.fixture
def cluster(db: Any) -> Any:
    return make_cluster("alpha", servers=1, workers=1, ssh_credential=make_credential("ops"))


def finished(cluster: Any, status: str = JobStatus.FAILED, **fields: Any) -> Job:
    fields.setdefault("kind", JobKind.UPGRADE)
    fields.setdefault("params", {"target_version": "v1.31.5+rke2r1"})
    return Job.objects.create(cluster=cluster, status=status, finished_at=timezone.now(), stages=["upgrade"], **fields)


def hook(url: str, **fields: Any) -> Webhook:
    fields.setdefault("name", "ops")
    return webhook_create(url=url, secret=SECRET, **fields)


# --- configuration ---------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_secret_is_stored_encrypted_and_audited_without_it(cluster: Any) -> None:
    created = hook("https://hooks.example.com/x", cluster=cluster)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM clusters_webhook WHERE id = %s", [created.pk])
        stored = cursor.fetchone()[0]
    assert SECRET not in stored
    assert reveal(Webhook.objects.get(pk=created.pk).secret) == SECRET
    assert str(Webhook.objects.get(pk=created.pk).secret) == "********"
    entry = AuditLog.objects.get(action="webhook.create")
    assert SECRET not in json.dumps(entry.detail)
    webhook_update(webhook=created, data={"enabled": False})
    assert reveal(Webhook.objects.get(pk=created.pk).secret) == SECRET  # kept when not given


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "secret", "field"),
    [
        ("ftp://example.com/x", SECRET, "url"),
        ("https://user:pw@example.com/x", SECRET, "url"),
        ("https://example.com/x#frag", SECRET, "url"),
        ("https://example.com/x", "short", "secret"),
    ],
)
def test_invalid_webhooks_are_refused_naming_the_field(url: str, secret: str, field: str) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as caught:
        webhook_create(name="bad", url=url, secret=secret)
    assert field in caught.value.message_dict


# --- which deliveries ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_deliveries_follow_scope_status_and_enabled(cluster: Any) -> None:
    other = make_cluster("beta", servers=1, workers=0, ssh_credential=cluster.ssh_credential)
    everywhere = hook("https://a.example.com/", name="all")
    only_alpha = hook("https://b.example.com/", name="alpha-only", cluster=cluster)
    hook("https://c.example.com/", name="beta-only", cluster=other)
    hook("https://d.example.com/", name="off", enabled=False)
    success_only = hook("https://e.example.com/", name="ok-only", notify_failed=False)

    failed = finished(cluster, JobStatus.FAILED)
    ids = webhooks_notify_job(job_id=failed.pk)
    assert {WebhookDelivery.objects.get(pk=pk).webhook_id for pk in ids} == {everywhere.pk, only_alpha.pk}
    assert webhooks_notify_job(job_id=failed.pk) == []  # once per webhook and job

    ok = finished(cluster, JobStatus.SUCCESSFUL)
    ids = webhooks_notify_job(job_id=ok.pk)
    assert {WebhookDelivery.objects.get(pk=pk).webhook_id for pk in ids} == {
        everywhere.pk,
        only_alpha.pk,
        success_only.pk,
    }

    canceled = finished(cluster, JobStatus.CANCELED)
    assert webhooks_notify_job(job_id=canceled.pk) == []  # nobody asked for cancels
    running = Job.objects.create(cluster=other, kind=JobKind.HEALTH, status=JobStatus.RUNNING)
    assert webhooks_notify_job(job_id=running.pk) == []


@pytest.mark.django_db
def test_sweep_notifies_jobs_ended_elsewhere(cluster: Any) -> None:
    created = hook("https://a.example.com/")
    job = finished(cluster, JobStatus.FAILED, explanation="The worker was lost.")
    assert webhooks_sweep() != []
    assert WebhookDelivery.objects.filter(webhook=created, job=job).count() == 1
    assert webhooks_sweep() == []


@pytest.mark.django_db
def test_a_new_webhook_is_not_told_about_older_jobs(cluster: Any) -> None:
    job = finished(cluster, JobStatus.FAILED)
    Job.objects.filter(pk=job.pk).update(finished_at=timezone.now() - timezone.timedelta(minutes=5))
    hook("https://a.example.com/")
    assert webhooks_notify_job(job_id=job.pk) == []


# --- sending ---------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_delivery_is_signed_and_carries_no_secret(cluster: Any, receiver: Callable[..., Receiver]) -> None:
    server = receiver([204])
    hook(server.url)
    token = reveal(cluster.token)
    job = finished(cluster, JobStatus.FAILED, explanation=f"Upgrade failed; the server said token={token}")
    (delivery_id,) = webhooks_notify_job(job_id=job.pk)

    outcome = webhook_delivery_attempt(delivery_id=delivery_id)

    assert outcome.status == WebhookDeliveryStatus.DELIVERED and outcome.retry_in is None
    (request,) = server.requests
    body = request["body"]
    assert token not in body.decode()
    assert SECRET not in body.decode()
    assert signature_verify(SECRET, body, request["headers"][SIGNATURE_HEADER])
    assert not signature_verify("another-secret-0123456789", body, request["headers"][SIGNATURE_HEADER])
    assert not signature_verify(SECRET, body + b" ", request["headers"][SIGNATURE_HEADER])
    payload = json.loads(body)
    assert payload["event"] == "job.failed"
    assert payload["delivery"] == delivery_id
    assert payload["job"]["id"] == job.pk and payload["job"]["params"] == {"target_version": "v1.31.5+rke2r1"}
    assert payload["cluster"]["name"] == "alpha"
    assert "********" in payload["job"]["explanation"]
    assert request["headers"]["X-RKE2-Portal-Event"] == "job.failed"
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert (delivery.status, delivery.response_code, delivery.attempts) == ("delivered", 204, 1)
    assert delivery.delivered_at is not None
    assert token not in json.dumps(delivery.payload)


def test_signature_refuses_old_timestamps() -> None:
    body = b'{"a":1}'
    header = signature_header(SECRET, body, 1_000_000)
    assert signature_verify(SECRET, body, header, now=1_000_100)
    assert not signature_verify(SECRET, body, header, now=1_000_000 + 301)
    assert not signature_verify(SECRET, body, "garbage")


@pytest.mark.django_db
def test_failed_attempts_back_off_then_give_up(cluster: Any, receiver: Callable[..., Receiver], settings: Any) -> None:
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    settings.WEBHOOK_RETRY_BASE_SECONDS = 5
    server = receiver([500, 503, 502])
    hook(server.url)
    (delivery_id,) = webhooks_notify_job(job_id=finished(cluster).pk)

    first = webhook_delivery_attempt(delivery_id=delivery_id)
    second = webhook_delivery_attempt(delivery_id=delivery_id)
    third = webhook_delivery_attempt(delivery_id=delivery_id)

    assert (first.status, first.retry_in) == ("retrying", 5)
    assert (second.status, second.retry_in) == ("retrying", 10)
    assert (third.status, third.retry_in) == ("failed", None)
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert delivery.attempts == 3 and delivery.response_code == 502
    assert "Gave up after 3 attempts" in delivery.error
    assert len(server.requests) == 3
    # Every attempt is signed afresh over the same body.
    for request in server.requests:
        assert signature_verify(SECRET, request["body"], request["headers"][SIGNATURE_HEADER])
    assert webhook_delivery_attempt(delivery_id=delivery_id).retry_in is None  # nothing more is sent
    assert len(server.requests) == 3


@pytest.mark.django_db
def test_redirects_are_not_followed_and_unreachable_receivers_retry(
    cluster: Any, receiver: Callable[..., Receiver]
) -> None:
    server = receiver([302])
    hook(server.url)
    (delivery_id,) = webhooks_notify_job(job_id=finished(cluster).pk)
    outcome = webhook_delivery_attempt(delivery_id=delivery_id)
    assert outcome.status == "retrying"
    assert [request["path"] for request in server.requests] == ["/hook"]
    assert WebhookDelivery.objects.get(pk=delivery_id).response_code == 302

    closed = Receiver()
    url = closed.url
    closed.server.server_close()  # nothing listens there any more
    hook(url, name="gone")
    job = finished(cluster)
    (gone_id,) = [
        pk for pk in webhooks_notify_job(job_id=job.pk) if WebhookDelivery.objects.get(pk=pk).webhook.name == "gone"
    ]
    outcome = webhook_delivery_attempt(delivery_id=gone_id)
    assert outcome.status == "retrying"
    delivery = WebhookDelivery.objects.get(pk=gone_id)
    assert delivery.response_code is None and "ConnectionRefusedError" in delivery.error


# --- through Celery --------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_celery_task_retries_until_delivered(
    worker_factory: Callable[..., Any],  # noqa: F811
    receiver: Callable[..., Receiver],
) -> None:
    server = receiver([500, 500, 200])
    cluster = make_cluster("alpha", servers=1, workers=0, ssh_credential=make_credential("ops"))
    hook(server.url)
    job = finished(cluster)
    worker_factory(env={"WEBHOOK_RETRY_BASE_SECONDS": "0.5"}, concurrency=1, queues="celery")

    (delivery_id,) = webhooks_notify_job(job_id=job.pk)  # autocommit: enqueued at once

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        delivery = WebhookDelivery.objects.get(pk=delivery_id)
        if delivery.status == WebhookDeliveryStatus.DELIVERED:
            break
        time.sleep(0.3)
    assert delivery.status == WebhookDeliveryStatus.DELIVERED, delivery.error
    assert delivery.attempts == 3 and delivery.response_code == 200
    assert len(server.requests) == 3


@pytest.mark.django_db
def test_sweep_enqueues_overdue_deliveries_again(
    cluster: Any, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clusters.tasks import deliver_webhook

    sent: list[Any] = []
    monkeypatch.setattr(deliver_webhook, "apply_async", lambda *args, **kwargs: sent.append(kwargs["args"]))
    created = hook("https://a.example.com/")
    job = finished(cluster)
    with django_capture_on_commit_callbacks(execute=True):
        (delivery_id,) = webhooks_notify_job(job_id=job.pk)
    assert sent == [[delivery_id]]
    late = timezone.now() - timezone.timedelta(minutes=10)
    WebhookDelivery.objects.filter(pk=delivery_id).update(status="retrying", next_attempt_at=late)
    with django_capture_on_commit_callbacks(execute=True):
        assert webhooks_sweep() == []
    assert sent == [[delivery_id], [delivery_id]]
    WebhookDelivery.objects.filter(pk=delivery_id).update(status="delivered")
    with django_capture_on_commit_callbacks(execute=True):
        webhooks_sweep()
    assert len(sent) == 2 and created.pk
