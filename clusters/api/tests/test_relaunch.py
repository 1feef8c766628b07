"""POST /api/jobs/<id>/relaunch/: the same job again, through the same checks, permissions and audit entries; and
the webhooks endpoints (write-only secret)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from clusters.choices import InstallationStage, JobKind, JobStatus
from clusters.fields import reveal
from clusters.models import AuditLog, Job, Webhook
from clusters.tasks import run_job

from .conftest import make_job

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Messages the job task would have sent to the broker (the engine's own tests cover the worker)."""
    messages: list[dict[str, Any]] = []
    monkeypatch.setattr(run_job, "apply_async", lambda *args, **kwargs: messages.append(kwargs))
    return messages


def relaunch(client: Any, job: Job, payload: dict[str, Any] | None = None) -> Any:
    return client.post(f"/api/jobs/{job.pk}/relaunch/", payload or {}, format="json")


def test_a_failed_upgrade_is_requested_again_with_its_parameters(api: Any, installed_cluster: Any) -> None:
    params = {"target_version": "v1.32.1+rke2r1", "workers_batch": "50%"}
    failed = make_job(
        installed_cluster, kind=JobKind.UPGRADE, status=JobStatus.FAILED, params=params, stages=["upgrade"]
    )

    response = relaunch(api, failed)

    assert response.status_code == 202, response.json()
    new = Job.objects.get(pk=response.json()["id"])
    assert (new.kind, new.status, new.params) == (JobKind.UPGRADE, JobStatus.PENDING, params)
    assert response["Location"].endswith(f"/api/jobs/{new.pk}/")
    assert new.requested_by.username == "olivia"
    actions = list(AuditLog.objects.filter(cluster=installed_cluster).values_list("action", "detail"))
    assert ("job.request.upgrade", {"job_id": new.pk}) in actions
    assert ("job.relaunch", {"job_id": new.pk, "relaunch_of": failed.pk, "resume": False}) in actions

    # One active job per cluster: the relaunch itself is active now.
    again = relaunch(api, failed)
    assert again.status_code == 409 and again.json()["code"] == "job_conflict"
    active = relaunch(api, new)
    assert active.status_code == 409 and "has not finished" in active.json()["message"]


def test_a_failed_install_resumes_where_it_failed(api: Any, cluster: Any) -> None:
    failed = make_job(
        cluster,
        kind=JobKind.INSTALL,
        status=JobStatus.FAILED,
        stage=InstallationStage.WORKERS,
        stages_completed=2,
        params={"resume": False},
        started_at=cluster.created_at,
    )

    response = relaunch(api, failed)

    assert response.status_code == 202, response.json()
    new = Job.objects.get(pk=response.json()["id"])
    assert new.params["resume"] is True
    assert new.stages == ["reachability", "workers", "all"]
    assert new.resume_of_id == failed.pk


def test_an_uninstall_needs_its_confirmation_again(api: Any, installed_cluster: Any) -> None:
    done = make_job(installed_cluster, kind=JobKind.UNINSTALL, status=JobStatus.FAILED, stages=["uninstall"])
    response = relaunch(api, done)
    assert response.status_code == 400 and "confirm" in response.json()["errors"]
    response = relaunch(api, done, {"confirm": "alpha"})
    assert response.status_code == 202, response.json()
    assert "confirm" not in Job.objects.get(pk=response.json()["id"]).params


def test_relaunch_needs_the_permission_to_request_jobs(
    client_for: Callable[..., Any], viewer: Any, installed_cluster: Any
) -> None:
    done = make_job(installed_cluster, kind=JobKind.HEALTH, status=JobStatus.SUCCESSFUL, stages=["health"])
    assert relaunch(client_for(viewer), done).status_code == 403
    assert relaunch(client_for(None), done).status_code == 401
    assert Job.objects.count() == 1


def test_relaunch_when_the_state_no_longer_allows_it_is_refused(api: Any, installed_cluster: Any) -> None:
    done = make_job(installed_cluster, kind=JobKind.SCALE_REMOVE, status=JobStatus.SUCCESSFUL, stages=["scale_remove"])
    response = relaunch(api, done)
    assert response.status_code == 409
    assert "No node is marked for removal" in response.json()["message"]


# --- webhooks through the API ----------------------------------------------------------------------------------------


def test_webhook_secret_is_write_only(
    client_for: Callable[..., Any], make_user: Callable[..., Any], operator: Any, cluster: Any
) -> None:
    root = client_for(make_user("root", superuser=True))
    secret = "s3cret-webhook-key-0123"
    response = root.post(
        "/api/webhooks/",
        {
            "name": "chat",
            "url": "https://chat.example.com/hook",
            "secret": secret,
            "cluster": cluster.pk,
            "notify_canceled": True,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert secret not in response.content.decode() and "secret" not in body
    assert body["cluster"] == cluster.pk and body["notify_canceled"] is True and body["has_secret"] is True
    hook = Webhook.objects.get(pk=body["id"])
    assert reveal(hook.secret) == secret

    listed = root.get("/api/webhooks/").content.decode()
    assert secret not in listed
    response = root.patch(f"/api/webhooks/{hook.pk}/", {"enabled": False}, format="json")
    assert response.status_code == 200 and response.json()["enabled"] is False
    assert reveal(Webhook.objects.get(pk=hook.pk).secret) == secret
    response = root.patch(f"/api/webhooks/{hook.pk}/", {"url": "gopher://x"}, format="json")
    assert response.status_code == 400 and "url" in response.json()["errors"]
    response = root.post(
        "/api/webhooks/", {"name": "short", "url": "https://x.example.com/", "secret": "short"}, format="json"
    )
    assert response.status_code == 400 and "secret" in response.json()["errors"]

    assert client_for(operator).get("/api/webhooks/").status_code == 403  # superusers, or granted explicitly
    assert root.delete(f"/api/webhooks/{hook.pk}/").status_code == 204
    assert list(
        AuditLog.objects.filter(action__startswith="webhook.").values_list("action", flat=True).order_by("pk")
    ) == ["webhook.create", "webhook.change", "webhook.delete"]
