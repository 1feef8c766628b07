"""Liveness and readiness probes for load balancers, orchestrators and the compose health checks.

- ``GET /healthz``: the web process answers (no database, no broker): ``{"status": "ok"}``, always 200.
- ``GET /readyz``: the portal can do its work: the database answers a query, the broker accepts a connection, and
  at least one worker answers a ping (``celery inspect ping``), each within ``READYZ_TIMEOUT_SECONDS``. 200 with
  ``"status": "ok"`` when all pass, 503 with ``"status": "unavailable"`` otherwise; ``checks`` says which failed.
  With the embedded folder broker (``filesystem://``), which cannot broadcast, the worker check is reported as
  ``skipped`` and does not fail the probe.

Both are public and say nothing secret (no addresses, no error texts that could hold credentials). They are
answered by :class:`ProbeMiddleware`, first in the chain, so that neither ``ALLOWED_HOSTS`` nor the HTTPS redirect
gets in the way of a probe sent to ``127.0.0.1`` over plain HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

__all__ = ["ProbeMiddleware", "check_broker", "check_database", "check_worker", "healthz", "readiness", "readyz"]

Check = dict[str, Any]


def _timed(func: Callable[[], Check]) -> Check:
    start = time.monotonic()
    try:
        result = func()
    except Exception as exc:  # noqa: BLE001 - a failing dependency is a failed check, not a 500
        result = {"ok": False, "error": type(exc).__name__}
    result["ms"] = round((time.monotonic() - start) * 1000, 1)
    return result


def check_database() -> Check:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"ok": True}


def check_broker() -> Check:
    from .celery import app

    timeout = settings.READYZ_TIMEOUT_SECONDS
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        conn.default_channel  # noqa: B018 - opening a channel proves the broker talks
    return {"ok": True}


def _broadcast_supported() -> bool:
    from .celery import app

    with app.connection_for_read() as conn:
        return "fanout" in conn.transport.implements.exchange_type


def check_worker() -> Check:
    from .celery import app

    if not _broadcast_supported():
        return {"ok": True, "skipped": True, "reason": "the broker cannot broadcast a ping"}
    replies = app.control.ping(timeout=settings.READYZ_TIMEOUT_SECONDS) or []
    workers = sorted(name for reply in replies for name in reply)
    if not workers:
        return {"ok": False, "error": "no worker answered"}
    return {"ok": True, "workers": len(workers)}


def readiness() -> tuple[bool, dict[str, Check]]:
    checks = {"database": _timed(check_database), "broker": _timed(check_broker)}
    if checks["broker"]["ok"]:
        checks["worker"] = _timed(check_worker)
    else:
        checks["worker"] = {"ok": False, "error": "broker unavailable", "ms": 0.0}
    return all(check["ok"] for check in checks.values()), checks


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    return _no_store(JsonResponse({"status": "ok"}))


def readyz(request: HttpRequest) -> HttpResponse:
    ready, checks = readiness()
    body = {"status": "ok" if ready else "unavailable", "checks": checks}
    return _no_store(JsonResponse(body, status=200 if ready else 503))


_PROBES = {"/healthz": healthz, "/readyz": readyz}


class ProbeMiddleware:
    """Answers ``GET``/``HEAD`` on the probe paths before any other middleware runs."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = _PROBES.get(request.path_info.rstrip("/") or "/")
        if probe is not None and request.method in ("GET", "HEAD"):
            return probe(request)
        return self.get_response(request)
