"""The admin's relaunch (job page and cluster action), the job result as tables, the live log's filter controls,
webhooks with a masked secret and their delivery log."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from clusters.choices import InstallationStage, JobKind, JobStatus
from clusters.fields import reveal
from clusters.models import AuditLog, Cluster, Job, JobHostSummary, Webhook, WebhookDelivery
from clusters.services.webhooks import webhook_create
from clusters.tests.factories import make_cluster, make_credential, mark_installed

pytestmark = pytest.mark.django_db

SECRET = "admin-webhook-secret-0123"


@pytest.fixture
def cluster() -> Cluster:
    return mark_installed(make_cluster("alpha", servers=1, workers=1, ssh_credential=make_credential("ops")))


@pytest.fixture
def staff(django_user_model: Any, client: Any) -> Any:
    def build(*codenames: str) -> Any:
        user = django_user_model.objects.create_user("staff", "staff@example.com", "pw", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="clusters", codename__in=codenames))
        client.force_login(user)
        return client

    return build


def failed_upgrade(cluster: Cluster) -> Job:
    return Job.objects.create(
        cluster=cluster,
        kind=JobKind.UPGRADE,
        status=JobStatus.FAILED,
        stages=["upgrade"],
        stage="upgrade",
        params={"target_version": "v1.32.1+rke2r1"},
        finished_at=timezone.now(),
        result={
            "stages": [
                {
                    "stage": "upgrade",
                    "playbook": "upgrade.yml",
                    "status": "failed",
                    "rc": 2,
                    "failed_hosts": {"alpha-s1": "drain timed out"},
                }
            ],
            "facts": {"alpha-s1": {"version": "v1.31.4+rke2r1", "ready": True}},
            "dropped_events": 0,
        },
    )


def test_job_page_shows_result_tables_relaunch_and_log_filters(admin_client: Any, cluster: Cluster) -> None:
    job = failed_upgrade(cluster)
    JobHostSummary.objects.create(job=job, host_name="alpha-s1", ok=3, failures=1)
    html = admin_client.get(reverse("admin:clusters_job_change", args=[job.pk])).content.decode()
    assert 'id="job-result"' in html
    assert "<th>playbook</th>" in html and "<td>upgrade.yml</td>" in html
    assert "<td>alpha-s1: drain timed out</td>" in html
    assert "<th>version</th>" in html and "<td>v1.31.4+rke2r1</td>" in html
    assert 'id="job-relaunch"' in html and ">Relaunch<" in html
    assert 'id="log-host"' in html and '<option value="alpha-s1">' in html
    assert 'id="log-search"' in html


def test_relaunch_from_the_job_page(
    admin_client: Any, cluster: Cluster, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clusters.tasks import run_job

    monkeypatch.setattr(run_job, "apply_async", lambda *args, **kwargs: None)
    job = failed_upgrade(cluster)
    response = admin_client.post(reverse("admin:clusters_job_relaunch", args=[job.pk]))
    new = Job.objects.exclude(pk=job.pk).get()
    assert response.status_code == 302 and response["Location"] == reverse("admin:clusters_job_change", args=[new.pk])
    assert new.params == job.params and new.kind == JobKind.UPGRADE and new.status == JobStatus.PENDING
    assert AuditLog.objects.filter(action="job.relaunch", detail__relaunch_of=job.pk).exists()
    # The relaunch is active: a second one is refused with a message, nothing created.
    response = admin_client.post(reverse("admin:clusters_job_relaunch", args=[job.pk]), follow=True)
    assert "already has an active job" in response.content.decode() or "active" in response.content.decode()
    assert Job.objects.count() == 2
    assert admin_client.get(reverse("admin:clusters_job_relaunch", args=[job.pk])).status_code == 405


def test_relaunch_needs_the_job_permission(staff: Any, cluster: Cluster) -> None:
    job = failed_upgrade(cluster)
    client = staff("view_job", "view_cluster")
    html = client.get(reverse("admin:clusters_job_change", args=[job.pk])).content.decode()
    assert 'id="job-relaunch"' not in html
    assert client.post(reverse("admin:clusters_job_relaunch", args=[job.pk])).status_code == 403
    assert Job.objects.count() == 1


def test_failed_install_relaunch_is_a_resume_and_uninstall_asks_the_name(admin_client: Any) -> None:
    cluster = make_cluster("beta", servers=1, ssh_credential=make_credential("ops2"))
    install = Job.objects.create(
        cluster=cluster,
        kind=JobKind.INSTALL,
        status=JobStatus.FAILED,
        stage=InstallationStage.WORKERS,
        started_at=timezone.now(),
        stages=["initial_master"],
    )
    html = admin_client.get(reverse("admin:clusters_job_change", args=[install.pk])).content.decode()
    assert "Relaunch (resume)" in html
    uninstall = Job.objects.create(cluster=cluster, kind=JobKind.UNINSTALL, status=JobStatus.FAILED)
    html = admin_client.get(reverse("admin:clusters_job_change", args=[uninstall.pk])).content.decode()
    assert 'id="job-relaunch-confirm"' in html
    response = admin_client.post(reverse("admin:clusters_job_relaunch", args=[uninstall.pk]), follow=True)
    assert "Type the cluster" in response.content.decode()


def test_cluster_action_relaunches_the_last_finished_job(
    admin_client: Any, cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clusters.tasks import run_job

    monkeypatch.setattr(run_job, "apply_async", lambda *args, **kwargs: None)
    job = failed_upgrade(cluster)
    response = admin_client.post(
        reverse("admin:clusters_cluster_changelist"),
        {"action": "action_relaunch_last", "_selected_action": [cluster.pk]},
        follow=True,
    )
    assert response.status_code == 200
    new = Job.objects.exclude(pk=job.pk).get()
    assert new.kind == JobKind.UPGRADE and new.params == job.params
    assert f"requested again from #{job.pk}" in response.content.decode()


# --- webhooks --------------------------------------------------------------------------------------------------------


def test_webhook_added_in_the_admin_keeps_its_secret_hidden(admin_client: Any, cluster: Cluster) -> None:
    response = admin_client.post(
        reverse("admin:clusters_webhook_add"),
        {
            "name": "chat",
            "url": "https://chat.example.com/hook",
            "secret": SECRET,
            "cluster": cluster.pk,
            "enabled": "on",
            "notify_failed": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    hook = Webhook.objects.get(name="chat")
    assert reveal(hook.secret) == SECRET and hook.cluster_id == cluster.pk and not hook.notify_successful
    page = admin_client.get(reverse("admin:clusters_webhook_change", args=[hook.pk])).content.decode()
    assert SECRET not in page and "********" in page
    # Saving without a secret keeps it; a bad URL is an error on its field.
    response = admin_client.post(
        reverse("admin:clusters_webhook_change", args=[hook.pk]),
        {"name": "chat", "url": "https://chat.example.com/v2", "secret": "", "enabled": "on", "notify_failed": "on"},
    )
    assert response.status_code == 302
    hook.refresh_from_db()
    assert hook.url.endswith("/v2") and reveal(hook.secret) == SECRET
    response = admin_client.post(
        reverse("admin:clusters_webhook_change", args=[hook.pk]),
        {"name": "chat", "url": "https://u:p@chat.example.com/", "enabled": "on", "notify_failed": "on"},
    )
    assert response.status_code == 200 and "no user name or password" in response.content.decode()
    response = admin_client.post(
        reverse("admin:clusters_webhook_add"),
        {"name": "nosecret", "url": "https://x.example.com/", "notify_failed": "on"},
    )
    assert response.status_code == 200 and not Webhook.objects.filter(name="nosecret").exists()


def test_delivery_log_lists_response_codes(admin_client: Any, cluster: Cluster) -> None:
    hook = webhook_create(name="chat", url="https://chat.example.com/", secret=SECRET)
    job = failed_upgrade(cluster)
    WebhookDelivery.objects.create(
        webhook=hook,
        job=job,
        event="job.failed",
        status="failed",
        attempts=6,
        response_code=503,
        error="The receiver answered HTTP 503. Gave up after 6 attempts.",
    )
    html = admin_client.get(reverse("admin:clusters_webhookdelivery_changelist")).content.decode()
    assert "503" in html and "job.failed" in html and f"#{job.pk}" in html
    assert SECRET not in html
