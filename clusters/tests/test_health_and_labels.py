"""Health that stays current (what a check records, degraded and back, the scheduled sync and its limits), labels and
taints of running nodes, certificate rotation requests: services, admin and API."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from clusters.choices import ClusterStatus, JobKind, JobStatus, NodeStatus
from clusters.engine import state
from clusters.exceptions import InvalidState, JobConflict
from clusters.models import AuditLog, Cluster, Job, Node, WebhookDelivery
from clusters.services.health import (
    health_record,
    health_settle_after_job,
    health_sync_purge,
    health_sync_run,
)
from clusters.services.jobs import job_request, plan_stages
from clusters.services.node_labels import node_labels_job_vars, node_labels_update
from clusters.services.webhooks import webhook_create, webhooks_notify_job
from clusters.tests.factories import make_cluster, make_credential, mark_installed

pytestmark = pytest.mark.django_db

VERSION = "v1.31.4+rke2r1"


@pytest.fixture
def cluster() -> Cluster:
    return mark_installed(
        make_cluster("alpha", servers=1, workers=2, rke2_version=VERSION, ssh_credential=make_credential("ops"))
    )


def report(cluster: Cluster, **overrides: dict[str, Any]) -> dict[str, Any]:
    """What health.yml reports for every node of the cluster: Ready on the cluster's version, unless overridden."""
    health = {
        node.hostname: {"ready": "True", "kubelet_version": VERSION, "last_heartbeat": "2026-12-03T10:00:00Z"}
        for node in cluster.cluster_nodes.all()
    }
    for name, values in overrides.items():
        health[name.replace("_", "-")] = {**health[name.replace("_", "-")], **values}
    return health


def finished_check(
    cluster: Cluster, health: dict[str, Any], *, kind: str = JobKind.HEALTH_SYNC, ok: bool = True
) -> Job:
    job = Job.objects.create(cluster=cluster, kind=kind, status=JobStatus.RUNNING, stages=[kind])
    if ok:
        health_record(cluster.pk, health)
    state.cluster_settle_after_job(job, JobStatus.SUCCESSFUL if ok else JobStatus.FAILED)
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.SUCCESSFUL if ok else JobStatus.FAILED, finished_at=timezone.now()
    )
    return job


# --- what a check records, degraded and back ------------------------------------------------------------------


def test_a_check_records_each_nodes_readiness_version_and_last_heartbeat(cluster: Cluster) -> None:
    finished_check(cluster, report(cluster))
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.ACTIVE
    assert cluster.health_summary == f"All 3 nodes Ready on {VERSION}."
    assert cluster.health_checked_at is not None
    for node in cluster.cluster_nodes.all():
        assert node.k8s_ready is True and node.kubelet_version == VERSION
        assert node.last_seen_at == dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.UTC)


def test_a_not_ready_node_degrades_the_cluster_and_its_recovery_restores_it_both_audited(cluster: Cluster) -> None:
    finished_check(cluster, report(cluster, alpha_w1={"ready": "Unknown"}))
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.DEGRADED
    assert "Not Ready: alpha-w1." in cluster.health_summary
    degraded = AuditLog.objects.get(action="cluster.health.degraded")
    assert degraded.detail["problems"] == ["Not Ready: alpha-w1."] and degraded.actor is None

    finished_check(cluster, report(cluster))
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.ACTIVE
    assert AuditLog.objects.filter(action="cluster.health.recovered").count() == 1
    # A check that changes nothing is not audited again.
    finished_check(cluster, report(cluster))
    assert AuditLog.objects.filter(action__startswith="cluster.health.").count() == 2


def test_version_drift_degrades_the_cluster(cluster: Cluster) -> None:
    finished_check(cluster, report(cluster, alpha_w2={"kubelet_version": "v1.30.8+rke2r1"}))
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.DEGRADED
    assert cluster.health_summary == f"Version drift from {VERSION}: alpha-w2 runs v1.30.8+rke2r1."


def test_a_node_kubernetes_does_not_list_is_not_ready(cluster: Cluster) -> None:
    health = report(cluster)
    del health["alpha-w2"]
    finished_check(cluster, health)
    assert Node.objects.get(hostname="alpha-w2").k8s_ready is False
    assert Cluster.objects.get(pk=cluster.pk).status == ClusterStatus.DEGRADED


def test_an_api_that_does_not_answer_degrades_the_cluster(cluster: Cluster) -> None:
    finished_check(cluster, {}, ok=False)
    cluster.refresh_from_db()
    assert cluster.status == ClusterStatus.DEGRADED
    assert cluster.health_summary == "The Kubernetes API did not answer."


def test_a_sync_changes_only_active_or_degraded_clusters(cluster: Cluster) -> None:
    Cluster.objects.filter(pk=cluster.pk).update(status=ClusterStatus.FAILED)
    job = Job.objects.create(cluster=cluster, kind=JobKind.HEALTH_SYNC, status=JobStatus.RUNNING)
    health_record(cluster.pk, report(cluster))
    health_settle_after_job(job, JobStatus.SUCCESSFUL)
    assert Cluster.objects.get(pk=cluster.pk).status == ClusterStatus.FAILED
    # An operator's check settles it.
    job.kind = JobKind.HEALTH
    health_settle_after_job(job, JobStatus.SUCCESSFUL)
    assert Cluster.objects.get(pk=cluster.pk).status == ClusterStatus.ACTIVE


# --- the scheduled sync ---------------------------------------------------------------------------------------


def test_the_sync_requests_one_light_job_per_free_installed_cluster_without_audit(cluster: Cluster) -> None:
    busy = mark_installed(make_cluster("busy", subnet="10.0.1", ssh_credential=make_credential("ops2")))
    Job.objects.create(cluster=busy, kind=JobKind.UPGRADE, status=JobStatus.RUNNING)
    make_cluster("fresh", subnet="10.0.2", ssh_credential=make_credential("ops3"))  # never installed

    result = health_sync_run()

    assert result.skipped == {"busy": "a job is active"}
    job = Job.objects.get(pk__in=result.requested)
    assert job.cluster_id == cluster.pk and job.kind == JobKind.HEALTH_SYNC and job.stages == ["health_sync"]
    assert job.requested_by is None and job.timeout_seconds == 120
    assert not AuditLog.objects.filter(action__startswith="job.request").exists()
    # The next round skips the cluster while its sync is pending.
    assert health_sync_run().requested == []


def test_a_pending_sync_gives_way_to_an_operators_job(cluster: Cluster) -> None:
    sync = Job.objects.get(pk__in=health_sync_run().requested)
    job = job_request(cluster=cluster, kind=JobKind.HEALTH)
    sync.refresh_from_db()
    assert sync.status == JobStatus.CANCELED and "Gave way" in sync.explanation
    assert job.status == JobStatus.PENDING
    # A running sync keeps the cluster (briefly): the request is refused.
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCESSFUL)
    Job.objects.create(cluster=cluster, kind=JobKind.HEALTH_SYNC, status=JobStatus.RUNNING)
    with pytest.raises(JobConflict):
        job_request(cluster=cluster, kind=JobKind.HEALTH)


def test_old_syncs_are_purged_except_the_last_of_each_cluster(cluster: Cluster) -> None:
    old = timezone.now() - dt.timedelta(hours=30)
    ids = []
    for _ in range(3):
        job = Job.objects.create(
            cluster=cluster, kind=JobKind.HEALTH_SYNC, status=JobStatus.SUCCESSFUL, finished_at=old
        )
        ids.append(job.pk)
    Job.objects.filter(pk__in=ids).update(created_at=old)
    manual = Job.objects.create(cluster=cluster, kind=JobKind.HEALTH, status=JobStatus.SUCCESSFUL)
    Job.objects.filter(pk=manual.pk).update(created_at=old)
    assert health_sync_purge() == 2
    assert list(Job.objects.filter(kind=JobKind.HEALTH_SYNC).values_list("pk", flat=True)) == [ids[-1]]
    assert Job.objects.filter(pk=manual.pk).exists()


def test_syncs_notify_no_webhook(cluster: Cluster) -> None:
    webhook_create(name="all", url="http://127.0.0.1:9/hook", secret="s3cret-value-0123456789")
    sync = Job.objects.create(cluster=cluster, kind=JobKind.HEALTH_SYNC, status=JobStatus.FAILED)
    assert webhooks_notify_job(job_id=sync.pk) == []
    check = Job.objects.create(cluster=cluster, kind=JobKind.HEALTH, status=JobStatus.FAILED)
    assert len(webhooks_notify_job(job_id=check.pk)) == 1
    assert WebhookDelivery.objects.count() == 1


# --- labels and taints of running nodes -----------------------------------------------------------------------


def test_changing_labels_of_an_active_node_requests_a_job_with_what_was_set_before(cluster: Cluster) -> None:
    node = Node.objects.get(hostname="alpha-w1")
    Node.objects.filter(pk=node.pk).update(labels=["tier=app", "old=1"], taints=["dedicated=x:NoSchedule"])
    node.refresh_from_db()
    node, job = node_labels_update(node=node, labels=["tier=web"], taints=[])
    assert node.labels == ["tier=web"] and node.taints == []
    assert job is not None and job.kind == JobKind.NODE_LABELS and job.stages == ["node_labels"]
    assert job.params == {
        "hostname": "alpha-w1",
        "previous_labels": ["tier=app", "old=1"],
        "previous_taints": ["dedicated=x:NoSchedule"],
    }
    assert node_labels_job_vars(job.params)["rke2_labels_node"] == "alpha-w1"
    entry = AuditLog.objects.get(action="node.labels.update")
    assert entry.detail["labels"] == {"before": ["tier=app", "old=1"], "after": ["tier=web"]}


def test_labels_of_a_node_not_installed_are_stored_for_its_install(cluster: Cluster) -> None:
    node = Node.objects.get(hostname="alpha-w2")
    Node.objects.filter(pk=node.pk).update(status=NodeStatus.PENDING)
    node.refresh_from_db()
    node, job = node_labels_update(node=node, labels=["a=b"])
    assert job is None and Node.objects.get(pk=node.pk).labels == ["a=b"]
    with pytest.raises(InvalidState, match="not active"):
        plan_stages(cluster, JobKind.NODE_LABELS, {"hostname": "alpha-w2"})


def test_a_label_change_is_refused_with_its_job_while_another_job_runs(cluster: Cluster) -> None:
    Job.objects.create(cluster=cluster, kind=JobKind.UPGRADE, status=JobStatus.RUNNING)
    node = Node.objects.get(hostname="alpha-w1")
    with pytest.raises(JobConflict):
        node_labels_update(node=node, labels=["x=y"])
    assert Node.objects.get(pk=node.pk).labels == []
    assert not AuditLog.objects.filter(action="node.labels.update").exists()


def test_invalid_labels_are_refused_naming_the_field(cluster: Cluster) -> None:
    from django.core.exceptions import ValidationError

    node = Node.objects.get(hostname="alpha-w1")
    with pytest.raises(ValidationError) as caught:
        node_labels_update(node=node, labels=["not a label"])
    assert "labels" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        node_labels_update(node=node, taints=["x=y:Sometimes"])
    assert "taints" in caught.value.message_dict


# --- API ------------------------------------------------------------------------------------------------------


@pytest.fixture
def api(django_user_model: Any) -> Any:
    def build(*codenames: str) -> APIClient:
        user = django_user_model.objects.create_user("op", "op@example.com", "pw")
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="clusters", codename__in=codenames))
        client = APIClient()
        client.force_authenticate(user)
        return client

    return build


def test_api_node_labels_and_certificate_rotation(cluster: Cluster, api: Any) -> None:
    client = api("view_cluster", "view_node", "change_node", "add_job", "view_job")
    url = reverse("clusters-api:cluster-node-labels", args=[cluster.pk])
    answer = client.post(url, {"hostname": "alpha-w1", "labels": ["tier=web"]}, format="json")
    assert answer.status_code == 202, answer.json()
    assert answer.json()["node"]["labels"] == ["tier=web"] and answer.json()["job"]["kind"] == "node_labels"
    # While that job is active, another change is refused and nothing changes.
    again = client.post(url, {"hostname": "alpha-w1", "labels": ["tier=db"]}, format="json")
    assert again.status_code == 409
    assert Node.objects.get(hostname="alpha-w1").labels == ["tier=web"]
    assert client.post(url, {"hostname": "nope", "labels": []}, format="json").status_code == 400
    bad = client.post(url, {"hostname": "alpha-w2", "taints": ["x"]}, format="json")
    assert bad.status_code == 400 and "taints" in bad.json()["errors"], bad.json()

    Job.objects.filter(cluster=cluster).update(status=JobStatus.SUCCESSFUL)
    rotate = client.post(reverse("clusters-api:cluster-rotate-certificates", args=[cluster.pk]), {}, format="json")
    assert rotate.status_code == 202 and rotate.json()["kind"] == "cert_rotate"
    assert AuditLog.objects.filter(action="job.request.cert_rotate").exists()

    # Without the permission to change nodes, labels are refused.
    Job.objects.filter(cluster=cluster).update(status=JobStatus.SUCCESSFUL)
    reader = APIClient()
    reader.force_authenticate(
        type(client.handler._force_user).objects.create_user("reader", "r@example.com", "pw")  # type: ignore[attr-defined]
    )
    assert reader.post(url, {"hostname": "alpha-w1", "labels": []}, format="json").status_code == 403


def test_api_job_list_hides_syncs_unless_asked_and_shows_health(cluster: Cluster, api: Any) -> None:
    client = api("view_cluster", "view_node", "view_job")
    Job.objects.create(cluster=cluster, kind=JobKind.HEALTH_SYNC, status=JobStatus.SUCCESSFUL)
    Job.objects.create(cluster=cluster, kind=JobKind.HEALTH, status=JobStatus.SUCCESSFUL)
    listed = client.get(reverse("clusters-api:job-list")).json()["results"]
    assert [job["kind"] for job in listed] == ["health"]
    syncs = client.get(reverse("clusters-api:job-list"), {"kind": "health_sync"}).json()["results"]
    assert [job["kind"] for job in syncs] == ["health_sync"]
    finished_check(cluster, report(cluster, alpha_w1={"ready": "False"}))
    detail = client.get(reverse("clusters-api:cluster-detail", args=[cluster.pk])).json()
    assert detail["status"] == "degraded" and detail["health_summary"] == "Not Ready: alpha-w1."
    nodes = {node["hostname"]: node for node in detail["nodes"]}
    assert nodes["alpha-w1"]["k8s_ready"] is False and nodes["alpha-s1"]["kubelet_version"] == VERSION


# --- admin ----------------------------------------------------------------------------------------------------


@pytest.fixture
def staff(django_user_model: Any, client: Any) -> Any:
    def build(*codenames: str) -> Any:
        user = django_user_model.objects.create_user("staff", "staff@example.com", "pw", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="clusters", codename__in=codenames))
        client.force_login(user)
        return client

    return build


@pytest.mark.parametrize(
    ("slug", "kind"),
    [("health", "health"), ("fetch_kubeconfig", "fetch_kubeconfig"), ("rotate_certificates", "cert_rotate")],
)
def test_admin_buttons_request_the_job(cluster: Cluster, staff: Any, slug: str, kind: str) -> None:
    client = staff("view_cluster", "change_cluster", "view_node", "add_job", "view_job")
    page = client.get(reverse("admin:clusters_cluster_change", args=[cluster.pk])).content.decode()
    assert f'data-operation="{slug.replace("_", "-")}"' in page
    url = reverse(f"admin:clusters_cluster_{slug}", args=[cluster.pk])
    data = {}
    if kind == "cert_rotate":
        # It restarts every node: the button opens a page that says so; only its confirmed POST requests the job.
        for shown in (client.get(url), client.post(url)):
            assert shown.status_code == 200 and "restarts RKE2 on all 3 nodes" in shown.content.decode()
        assert not Job.objects.exists()
        data = {"confirm": "yes"}
    else:
        assert client.get(url).status_code == 405
    answer = client.post(url, data)
    job = Job.objects.get(cluster=cluster)
    assert job.kind == kind and answer.status_code == 302
    assert AuditLog.objects.filter(action=f"job.request.{kind}").exists()


def test_admin_button_refused_without_the_permission(cluster: Cluster, staff: Any) -> None:
    client = staff("view_cluster", "view_node")
    assert client.post(reverse("admin:clusters_cluster_health", args=[cluster.pk])).status_code == 403
    assert not Job.objects.exists()


def test_admin_cluster_list_shows_health_and_its_age_and_job_list_hides_syncs(cluster: Cluster, staff: Any) -> None:
    client = staff("view_cluster", "view_node", "view_job")
    finished_check(cluster, report(cluster, alpha_w2={"ready": "Unknown"}))
    Cluster.objects.filter(pk=cluster.pk).update(health_checked_at=timezone.now() - dt.timedelta(minutes=7))
    listing = client.get(reverse("admin:clusters_cluster_changelist")).content.decode()
    assert "Not Ready: alpha-w2." in listing and "7\xa0minutes ago" in listing
    Job.objects.create(cluster=cluster, kind=JobKind.HEALTH, status=JobStatus.SUCCESSFUL)
    Job.objects.create(cluster=cluster, kind=JobKind.HEALTH_SYNC, status=JobStatus.SUCCESSFUL)
    listing = client.get(reverse("admin:clusters_cluster_changelist")).content.decode()
    assert "Health check #" in listing and "Health sync (scheduled) #" not in listing  # the last job column
    page = client.get(reverse("admin:clusters_cluster_change", args=[cluster.pk])).content.decode()
    assert "Health check #" in page and "Health sync (scheduled) #" not in page  # the recent jobs
    jobs = client.get(reverse("admin:clusters_job_changelist")).content.decode()
    assert "Health check #" in jobs and "Health sync (scheduled) #" not in jobs
    shown = client.get(reverse("admin:clusters_job_changelist"), {"health_syncs": "only"}).content.decode()
    assert "Health sync (scheduled) #" in shown


def test_admin_label_change_on_a_running_node_requests_the_job_or_is_refused_while_a_job_runs(
    cluster: Cluster, admin_client: Any
) -> None:
    from clusters.tests.test_admin import change_url, cluster_post_data

    index = list(cluster.cluster_nodes.order_by("pk").values_list("hostname", flat=True)).index("alpha-w1")
    Job.objects.create(cluster=cluster, kind=JobKind.UPGRADE, status=JobStatus.RUNNING)
    data = cluster_post_data(cluster)
    data[f"cluster_nodes-{index}-labels"] = "tier=web"
    refused = admin_client.post(change_url(cluster), data)
    assert refused.status_code == 200 and "active job" in refused.content.decode()
    assert Node.objects.get(hostname="alpha-w1").labels == []

    Job.objects.filter(cluster=cluster).update(status=JobStatus.SUCCESSFUL)
    answer = admin_client.post(change_url(cluster), data)
    assert answer.status_code == 302
    assert Node.objects.get(hostname="alpha-w1").labels == ["tier=web"]
    job = Job.objects.get(cluster=cluster, kind=JobKind.NODE_LABELS)
    assert job.params == {"hostname": "alpha-w1", "previous_labels": [], "previous_taints": []}
