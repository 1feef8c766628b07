"""Webhooks: a signed JSON POST to configured URLs when a job ends.

Each finished job gets at most one delivery per matching webhook (a database constraint), created by
:func:`webhooks_notify_job` (called by the worker after a job, and by a periodic sweep for jobs ended elsewhere: by
the reaper, a cancel before start, a broker that refused the job). Deliveries are sent by the Celery task
``clusters.deliver_webhook`` (enqueued after commit), which calls :func:`webhook_delivery_attempt` and retries with
exponential backoff.

Signature: the request carries ``X-RKE2-Portal-Signature: t=<unix time>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256 under the webhook's secret of ``"<unix time>." + body`` (the raw body bytes). Receivers recompute it,
compare in constant time and refuse old timestamps (replays). See :func:`signature_verify`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from ..choices import FINISHED_JOB_STATUSES, JobKind, JobStatus, WebhookDeliveryStatus
from ..engine.redaction import Redactor
from ..fields import reveal
from ..models import Job, Webhook, WebhookDelivery
from .audit import audit_record

__all__ = [
    "SIGNATURE_HEADER",
    "AttemptOutcome",
    "payload_build",
    "signature_header",
    "signature_verify",
    "webhook_create",
    "webhook_delete",
    "webhook_delivery_attempt",
    "webhook_update",
    "webhooks_for_job",
    "webhooks_notify_job",
    "webhooks_sweep",
]

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-RKE2-Portal-Signature"
EVENT_HEADER = "X-RKE2-Portal-Event"
DELIVERY_HEADER = "X-RKE2-Portal-Delivery"
USER_AGENT = "rke2portal-webhooks/1"
RESPONSE_BODY_CHARS = 2000
# A delivery whose attempt is this late is taken as lost (its message is gone) and enqueued again by the sweep.
_OVERDUE_SECONDS = 300
_EDITABLE = ("name", "url", "cluster", "enabled", "notify_successful", "notify_failed", "notify_canceled")
_STATUS_FLAG = {
    JobStatus.SUCCESSFUL: "notify_successful",
    JobStatus.FAILED: "notify_failed",
    JobStatus.CANCELED: "notify_canceled",
}


# --- configuration ---------------------------------------------------------------------------------------------


def webhook_create(*, actor: Any = None, secret: str, **fields: Any) -> Webhook:
    """Create a webhook after validating it (the URL, a secret of 16 characters or more); audited."""
    unknown = set(fields) - set(_EDITABLE)
    if unknown:
        raise ValidationError({sorted(unknown)[0]: ["Unknown field."]})
    webhook = Webhook(secret=secret, **fields)
    if not reveal(secret):
        raise ValidationError({"secret": ["This field is required."]})
    webhook.full_clean()
    with transaction.atomic():
        webhook.save()
        audit_record(
            action="webhook.create",
            actor=actor,
            cluster=webhook.cluster,
            object_repr=webhook.name,
            detail={"webhook_id": webhook.pk, "url": webhook.url},
        )
    return webhook


def webhook_update(*, webhook: Webhook, data: dict[str, Any], actor: Any = None) -> Webhook:
    """Change a webhook; an omitted or empty ``secret`` keeps the stored one. Audited (never with the secret)."""
    data = dict(data)
    secret = data.pop("secret", None)
    unknown = set(data) - set(_EDITABLE)
    if unknown:
        raise ValidationError({sorted(unknown)[0]: ["Unknown field."]})
    for name, value in data.items():
        setattr(webhook, name, value)
    if secret:
        webhook.secret = secret
    webhook.full_clean()
    with transaction.atomic():
        webhook.save()
        changed = sorted(data) + (["secret"] if secret else [])
        audit_record(
            action="webhook.change",
            actor=actor,
            cluster=webhook.cluster,
            object_repr=webhook.name,
            detail={"webhook_id": webhook.pk, "fields": changed},
        )
    return webhook


def webhook_delete(*, webhook: Webhook, actor: Any = None) -> None:
    with transaction.atomic():
        audit_record(
            action="webhook.delete",
            actor=actor,
            cluster=webhook.cluster,
            object_repr=webhook.name,
            detail={"webhook_id": webhook.pk},
        )
        webhook.delete()


# --- which webhooks, what body ---------------------------------------------------------------------------------


def webhooks_for_job(job: Job) -> QuerySet[Webhook]:
    """The enabled webhooks that want this job's end: for its cluster or for all, and for its final status."""
    flag = _STATUS_FLAG.get(job.status)
    if flag is None:
        return Webhook.objects.none()
    hooks = Webhook.objects.filter(Q(cluster__isnull=True) | Q(cluster_id=job.cluster_id), enabled=True, **{flag: True})
    if job.finished_at is not None:
        hooks = hooks.filter(created_at__lte=job.finished_at)  # a new webhook is not told about older jobs
    return hooks


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    text = value.astimezone(dt.UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def payload_build(job: Job) -> dict[str, Any]:
    """The JSON body for a finished job. Every string passes through the redactor holding the cluster's and the
    credential's secrets, so a secret that slipped into an explanation or a parameter is masked."""
    cluster = job.cluster
    credential = cluster.ssh_credential
    redactor = Redactor(
        [
            reveal(cluster.token),
            reveal(cluster.kubeconfig),
            reveal(credential.private_key) if credential else "",
            reveal(credential.passphrase) if credential else "",
        ]
    )
    body = {
        "event": f"job.{job.status}",
        "job": {
            "id": job.pk,
            "public_id": str(job.public_id),
            "kind": job.kind,
            "status": job.status,
            "stages": list(job.stages or []),
            "stage": job.stage,
            "stages_completed": job.stages_completed,
            "params": job.params or {},
            "explanation": job.explanation,
            "rc": job.rc,
            "requested_by": job.requested_by.get_username() if job.requested_by_id else None,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
            "relaunch_of": job.resume_of_id,
            "api_path": f"/api/jobs/{job.pk}/",
            "admin_path": f"/admin/clusters/job/{job.pk}/change/",
        },
        "cluster": {"id": cluster.pk, "name": cluster.name, "status": cluster.status},
    }
    return redactor.data(body)


# --- creating deliveries ---------------------------------------------------------------------------------------


def webhooks_notify_job(*, job_id: int) -> list[int]:
    """Create the deliveries of a finished job (once per webhook, whoever calls first) and enqueue them after
    commit. Returns the new deliveries' ids; nothing for a job still active or already notified."""
    job = Job.objects.select_related("cluster", "cluster__ssh_credential", "requested_by").filter(pk=job_id).first()
    if job is None or job.status not in FINISHED_JOB_STATUSES:
        return []
    if job.kind == JobKind.HEALTH_SYNC:
        return []  # scheduled syncs are not notified; a cluster that turns degraded is in the audit log
    hooks = list(webhooks_for_job(job).exclude(deliveries__job=job))
    if not hooks:
        return []
    payload = payload_build(job)
    created: list[int] = []
    for hook in hooks:
        try:
            with transaction.atomic():
                delivery = WebhookDelivery.objects.create(
                    webhook=hook, job=job, event=payload["event"], payload=payload
                )
        except IntegrityError:
            continue  # another process created it first
        created.append(delivery.pk)
        transaction.on_commit(partial(_enqueue, delivery.pk), robust=True)
    return created


def _enqueue(delivery_id: int, countdown: float = 0) -> None:
    from ..tasks import deliver_webhook

    deliver_webhook.apply_async(args=[delivery_id], countdown=countdown)


def webhooks_sweep(*, now: dt.datetime | None = None) -> list[int]:
    """Notify the jobs that ended in the last ``WEBHOOK_SWEEP_WINDOW_SECONDS`` and have no delivery yet for a
    webhook that wants them (jobs ended by the reaper or canceled before they started); also enqueue again the
    deliveries whose retry is overdue (a lost message). Runs from beat."""
    now = now or timezone.now()
    window = now - dt.timedelta(seconds=settings.WEBHOOK_SWEEP_WINDOW_SECONDS)
    created: list[int] = []
    if Webhook.objects.filter(enabled=True).exists():
        ended = Job.objects.filter(status__in=FINISHED_JOB_STATUSES, finished_at__gte=window).values_list(
            "pk", flat=True
        )
        for job_id in ended:
            created += webhooks_notify_job(job_id=job_id)
    overdue = WebhookDelivery.objects.filter(
        status__in=(WebhookDeliveryStatus.PENDING, WebhookDeliveryStatus.RETRYING),
        created_at__gte=window,
    ).filter(
        Q(next_attempt_at__lt=now - dt.timedelta(seconds=_OVERDUE_SECONDS))
        | Q(next_attempt_at__isnull=True, created_at__lt=now - dt.timedelta(seconds=_OVERDUE_SECONDS))
    )
    for delivery_id in overdue.values_list("pk", flat=True):
        transaction.on_commit(partial(_enqueue, delivery_id), robust=True)
    return created


# --- sending ---------------------------------------------------------------------------------------------------


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    """``t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>." + body>``."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def signature_verify(secret: str, body: bytes, header: str, *, tolerance: int = 300, now: float | None = None) -> bool:
    """What a receiver does: parse the header, refuse a timestamp more than ``tolerance`` seconds away, and compare
    the HMAC in constant time."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        received = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance:
        return False
    expected = signature_header(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, received)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not an instruction: the signed body goes only to the configured URL."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True)
class AttemptOutcome:
    status: str
    retry_in: float | None  # seconds until the next attempt, None when done


def _backoff(attempts: int) -> float:
    return min(settings.WEBHOOK_RETRY_BASE_SECONDS * (2 ** max(attempts - 1, 0)), settings.WEBHOOK_RETRY_MAX_SECONDS)


def webhook_delivery_attempt(*, delivery_id: int) -> AttemptOutcome:
    """Send a delivery once and record the outcome. A 2xx answer delivers it; anything else (another status, a
    timeout, a refused connection) schedules a retry after an exponentially growing delay, until
    ``WEBHOOK_MAX_ATTEMPTS`` attempts have failed."""
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.status in (WebhookDeliveryStatus.DELIVERED, WebhookDeliveryStatus.FAILED):
        return AttemptOutcome(status=delivery.status if delivery else "missing", retry_in=None)
    hook = delivery.webhook
    body = json.dumps({**delivery.payload, "delivery": delivery.pk}, sort_keys=True, separators=(",", ":")).encode()
    timestamp = int(time.time())
    request = urllib.request.Request(
        hook.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature_header(reveal(hook.secret), body, timestamp),
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: str(delivery.pk),
        },
    )
    code: int | None = None
    text = ""
    error = ""
    try:
        with _OPENER.open(request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:
            code = response.status
            text = response.read(RESPONSE_BODY_CHARS).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        code = exc.code
        try:
            text = exc.read(RESPONSE_BODY_CHARS).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - the body is only informative
            text = ""
        error = f"The receiver answered HTTP {exc.code}."
    except Exception as exc:  # noqa: BLE001 - any network failure is a failed attempt
        reason = getattr(exc, "reason", exc)
        error = f"Not delivered: {type(reason).__name__}: {reason}"[:500]
    now = timezone.now()
    attempts = delivery.attempts + 1
    ok = code is not None and 200 <= code < 300
    if ok:
        status, retry_in, error = WebhookDeliveryStatus.DELIVERED, None, ""
    elif attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        status, retry_in = WebhookDeliveryStatus.FAILED, None
        error = f"{error or 'Not delivered.'} Gave up after {attempts} attempts."
    else:
        status, retry_in = WebhookDeliveryStatus.RETRYING, _backoff(attempts)
    WebhookDelivery.objects.filter(pk=delivery.pk, attempts=delivery.attempts).update(
        status=status,
        attempts=attempts,
        response_code=code,
        response_body=text.replace("\x00", ""),
        error=error,
        last_attempt_at=now,
        next_attempt_at=now + dt.timedelta(seconds=retry_in) if retry_in is not None else None,
        delivered_at=now if ok else None,
    )
    if not ok:
        logger.info("webhook delivery %s to %s: attempt %s failed (%s)", delivery.pk, hook.pk, attempts, error)
    return AttemptOutcome(status=status, retry_in=retry_in)


def webhook_delivery_redeliver(*, delivery: WebhookDelivery, actor: Any = None) -> WebhookDelivery:
    """Send a delivery again (from the admin): its attempts start over. Audited."""
    with transaction.atomic():
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDeliveryStatus.PENDING, attempts=0, next_attempt_at=None, error=""
        )
        audit_record(
            action="webhook.redeliver",
            actor=actor,
            cluster=delivery.job.cluster,
            object_repr=delivery.webhook.name,
            detail={"delivery_id": delivery.pk, "job_id": delivery.job_id},
        )
        transaction.on_commit(partial(_enqueue, delivery.pk), robust=True)
    delivery.refresh_from_db()
    return delivery
