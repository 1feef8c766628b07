"""etcd snapshots and restore: planning, recording what the servers listed, the schedule, the API and the admin.

Jobs are requested for real; the message to the broker is recorded instead of sent (the worker side runs end to end
on test hosts in ``tests/ansible/test_etcd_snapshots.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from clusters.choices import EtcdSnapshotKind, JobKind, JobStatus, NodeRole
from clusters.models import AuditLog, Cluster, EtcdSnapshot, Job
from clusters.services import snapshots
from clusters.services.jobs import job_request
from clusters.tasks import run_job

from .conftest import make_job, mark_installed

pytestmark = pytest.mark.django_db

V2 = "v1.32.1+rke2r1"


@pytest.fixture(autouse=True)
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    monkeypatch.setattr(run_job, "apply_async", lambda *args, **kwargs: messages.append(kwargs))
    return messages


@pytest.fixture
def installed(make_cluster: Callable[..., Cluster]) -> Cluster:
    """Two servers (node1 the initial master, node2) and one agent (node3), installed."""
    return mark_installed(make_cluster("alpha", nodes=3, servers=2))


def url(cluster: Cluster, suffix: str = "etcd-snapshots/") -> str:
    return f"/api/clusters/{cluster.pk}/{suffix}"


def add_snapshot(cluster: Cluster, node_name: str, name: str, **fields: Any) -> EtcdSnapshot:
    fields.setdefault("path", f"/var/lib/rancher/rke2/server/db/snapshots/{name}")
    fields.setdefault("created", timezone.now())
    return EtcdSnapshot.objects.create(
        cluster=cluster,
        node=cluster.cluster_nodes.get(hostname=node_name),
        node_name=node_name,
        name=name,
        kind=snapshots.kind_of(name),
        size=1234,
        **fields,
    )


def finish(job: Job) -> None:
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCESSFUL, finished_at=timezone.now())


# --- planning ------------------------------------------------------------------------------------------------------


def test_roles_of_the_test_cluster(installed: Cluster) -> None:
    roles = dict(installed.cluster_nodes.values_list("hostname", "role"))
    assert roles == {"node1": NodeRole.INITIAL_MASTER, "node2": NodeRole.MASTER, "node3": NodeRole.WORKER}


def test_snapshot_jobs_need_an_installed_cluster(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster("fresh")
    with pytest.raises(Exception, match="not installed yet"):
        job_request(cluster=cluster, kind=JobKind.ETCD_SNAPSHOT, params={})
    assert not Job.objects.filter(cluster=cluster).exists()


def test_upgrade_takes_a_pre_upgrade_snapshot_unless_switched_off(installed: Cluster) -> None:
    job = job_request(cluster=installed, kind=JobKind.UPGRADE, params={"target_version": V2})
    assert job.stages == ["etcd_snapshot", "upgrade"]
    assert snapshots.stage_vars(job, "etcd_snapshot") == {
        "rke2_snapshot_action": "save",
        "rke2_snapshot_name": "pre-upgrade",
    }
    finish(job)
    job = job_request(cluster=installed, kind=JobKind.UPGRADE, params={"target_version": V2, "snapshot": False})
    assert job.stages == ["upgrade"]
    finish(job)
    with pytest.raises(ValidationError) as caught:
        job_request(cluster=installed, kind=JobKind.UPGRADE, params={"target_version": V2, "snapshot": "no"})
    assert "snapshot" in caught.value.message_dict


def test_scale_in_of_a_server_takes_a_pre_removal_snapshot_and_of_a_worker_does_not(
    api: Any, installed: Cluster
) -> None:
    response = api.post(url(installed, "scale/remove/"), {"hostnames": ["node3"]}, format="json")
    assert response.status_code == 202, response.json()
    worker_job = Job.objects.get(pk=response.json()["job"]["id"])
    assert worker_job.stages == ["scale_remove"]
    finish(worker_job)
    response = api.post(url(installed, "scale/remove/"), {"hostnames": ["node2"]}, format="json")
    assert response.status_code == 202, response.json()
    server_job = Job.objects.get(pk=response.json()["job"]["id"])
    assert server_job.stages == ["etcd_snapshot", "scale_remove"]
    assert snapshots.stage_vars(server_job, "etcd_snapshot")["rke2_snapshot_name"] == "pre-removal"
    # The snapshot runs on the servers that are active, not on the one leaving.
    node1 = installed.cluster_nodes.get(hostname="node1")
    assert snapshots.stage_inventory_nodes(installed, "etcd_snapshot") == [node1.pk]


def test_scale_in_without_snapshot(api: Any, installed: Cluster) -> None:
    response = api.post(url(installed, "scale/remove/"), {"hostnames": ["node2"], "snapshot": False}, format="json")
    assert response.status_code == 202, response.json()
    assert Job.objects.get(pk=response.json()["job"]["id"]).stages == ["scale_remove"]


# --- API: take, list, prune, schedule ------------------------------------------------------------------------------


def test_take_a_snapshot(
    api: Any, installed: Cluster, sent: list[Any], operator: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(url(installed), {}, format="json")
    assert response.status_code == 202, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    assert (job.kind, job.stages, job.params) == (JobKind.ETCD_SNAPSHOT, ["etcd_snapshot"], {"name": "on-demand"})
    assert len(sent) == 1
    assert AuditLog.objects.filter(action="job.request.etcd_snapshot", actor=operator, cluster=installed).exists()
    # Every active server snapshots its own member.
    assert len(snapshots.stage_inventory_nodes(installed, "etcd_snapshot")) == 2


@pytest.mark.parametrize("name", ["pre-upgrade", "scheduled-x", "Bad Name", "-x", "etcd-snapshot"])
def test_a_snapshot_name_is_checked(api: Any, installed: Cluster, name: str) -> None:
    response = api.post(url(installed), {"name": name}, format="json")
    assert response.status_code == 400, response.json()
    assert "name" in response.json()["errors"]
    assert not Job.objects.filter(cluster=installed).exists()


def test_viewers_list_snapshots_but_request_nothing(client_for: Any, viewer: Any, installed: Cluster) -> None:
    add_snapshot(installed, "node1", "on-demand-node1-1764000000")
    client = client_for(viewer)
    response = client.get(url(installed))
    assert response.status_code == 200
    assert [row["name"] for row in response.json()["results"]] == ["on-demand-node1-1764000000"]
    assert response.json()["results"][0]["kind"] == "on-demand"
    for path, payload in (
        ("etcd-snapshots/", {}),
        ("etcd-snapshots/refresh/", {}),
        ("etcd-snapshots/prune/", {"retention": 1}),
        ("etcd-restore/", {"snapshot_id": 1, "confirm": "alpha"}),
    ):
        assert client.post(url(installed, path), payload, format="json").status_code == 403, path
    assert (
        client.put(
            url(installed, "etcd-snapshots/schedule/"), {"interval_minutes": 5, "retention": 1}, format="json"
        ).status_code
        == 403
    )


def test_prune_by_retention_or_by_id(api: Any, installed: Cluster) -> None:
    response = api.post(url(installed, "etcd-snapshots/prune/"), {}, format="json")
    assert response.status_code == 400 and "retention" in response.json()["errors"]
    response = api.post(url(installed, "etcd-snapshots/prune/"), {"retention": 2, "name": "scheduled"}, format="json")
    assert response.status_code == 202, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    assert snapshots.stage_vars(job, "etcd_snapshot_prune") == {
        "rke2_snapshot_action": "prune",
        "rke2_snapshot_name": "scheduled",
        "rke2_snapshot_retention": 2,
    }
    finish(job)
    one = add_snapshot(installed, "node1", "on-demand-node1-1764000000")
    two = add_snapshot(installed, "node2", "on-demand-node2-1764000000")
    response = api.post(url(installed, "etcd-snapshots/prune/"), {"snapshot_ids": [one.pk, 999999]}, format="json")
    assert response.status_code == 400 and "snapshot_ids" in response.json()["errors"]
    response = api.post(url(installed, "etcd-snapshots/prune/"), {"snapshot_ids": [one.pk, two.pk]}, format="json")
    assert response.status_code == 202, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    assert snapshots.stage_vars(job, "etcd_snapshot_prune") == {
        "rke2_snapshot_action": "delete",
        "rke2_snapshot_delete": {"node1": [one.name], "node2": [two.name]},
    }


def test_schedule(api: Any, installed: Cluster, operator: Any) -> None:
    response = api.put(
        url(installed, "etcd-snapshots/schedule/"), {"interval_minutes": 60, "retention": 3}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json() == {"interval_minutes": 60, "retention": 3, "last_scheduled_at": None}
    installed.refresh_from_db()
    assert (installed.etcd_snapshot_interval_minutes, installed.etcd_snapshot_retention) == (60, 3)
    assert AuditLog.objects.filter(action="cluster.etcd_snapshot_schedule", actor=operator).exists()
    response = api.put(
        url(installed, "etcd-snapshots/schedule/"), {"interval_minutes": -1, "retention": 3}, format="json"
    )
    assert response.status_code == 400 and "interval_minutes" in response.json()["errors"]


# --- API: restore ---------------------------------------------------------------------------------------------------


def test_restore_needs_the_typed_name_and_a_copy_on_the_initial_master(api: Any, installed: Cluster) -> None:
    on_master = add_snapshot(installed, "node1", "on-demand-node1-1764000000")
    elsewhere = add_snapshot(installed, "node2", "on-demand-node2-1764000000")
    response = api.post(
        url(installed, "etcd-restore/"), {"snapshot_id": on_master.pk, "confirm": "alph"}, format="json"
    )
    assert response.status_code == 400 and "confirm" in response.json()["errors"]
    response = api.post(
        url(installed, "etcd-restore/"), {"snapshot_id": elsewhere.pk, "confirm": "alpha"}, format="json"
    )
    assert response.status_code == 400
    assert "initial master (node1)" in str(response.json()["errors"]["snapshot_id"])
    assert not Job.objects.filter(cluster=installed).exists()
    response = api.post(
        url(installed, "etcd-restore/"), {"snapshot_id": on_master.pk, "confirm": "alpha"}, format="json"
    )
    assert response.status_code == 202, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    assert job.stages == ["etcd_restore"]
    assert "confirm" not in job.params
    assert snapshots.stage_vars(job, "etcd_restore") == {
        "rke2_restore_host": "node1",
        "rke2_restore_path": on_master.path,
    }


def test_restore_needs_its_own_permission(make_user: Any, client_for: Any, installed: Cluster) -> None:
    snapshot = add_snapshot(installed, "node1", "on-demand-node1-1764000000")
    group = Group.objects.create(name="job-requesters")
    group.permissions.set(Permission.objects.filter(codename__in=["add_job", "view_cluster", "view_etcdsnapshot"]))
    client = client_for(make_user("jo", "job-requesters"))
    response = client.post(
        url(installed, "etcd-restore/"), {"snapshot_id": snapshot.pk, "confirm": "alpha"}, format="json"
    )
    assert response.status_code == 403
    assert client.post(url(installed), {}, format="json").status_code == 202
    # Operators hold it (granted by the migrations).
    assert Group.objects.get(name="operators").permissions.filter(codename="restore_etcdsnapshot").exists()
    assert not Group.objects.get(name="viewers").permissions.filter(codename="restore_etcdsnapshot").exists()


# --- recording and the schedule --------------------------------------------------------------------------------------


def test_a_listing_replaces_the_rows_of_the_servers_that_reported(installed: Cluster) -> None:
    old = add_snapshot(installed, "node1", "on-demand-node1-1700000000")
    kept = add_snapshot(installed, "node2", "on-demand-node2-1700000000")
    job = make_job(installed, kind=JobKind.UPGRADE, params={"target_version": V2}, stages=["etcd_snapshot", "upgrade"])
    reported = {
        "node1": [
            {
                "name": "pre-upgrade-node1-1764000000",
                "location": "file:///srv/rke2/server/db/snapshots/pre-upgrade-node1-1764000000",
                "size": "20512",
                "created": "2025-11-24T16:00:00Z",
            },
            {
                "name": "etcd-snapshot-node1-1763990000",
                "location": "file:///x/etcd-snapshot-node1-1763990000",
                "size": "9",
                "created": "2025-11-24T13:13:20Z",
            },
            {
                "name": "mine-node1-1763000000",
                "location": "file:///x/mine-node1-1763000000",
                "size": "x",
                "created": "",
            },
        ]
    }
    assert snapshots.snapshots_record(installed, job, reported) == 3
    rows = {row.name: row for row in EtcdSnapshot.objects.filter(cluster=installed, node_name="node1")}
    assert set(rows) == {"pre-upgrade-node1-1764000000", "etcd-snapshot-node1-1763990000", "mine-node1-1763000000"}
    first = rows["pre-upgrade-node1-1764000000"]
    assert (first.kind, first.path, first.size, first.job_id) == (
        EtcdSnapshotKind.PRE_UPGRADE,
        "/srv/rke2/server/db/snapshots/pre-upgrade-node1-1764000000",
        20512,
        job.pk,
    )
    assert first.created == dt.datetime(2025, 11, 24, 16, 0, tzinfo=dt.UTC)
    assert rows["etcd-snapshot-node1-1763990000"].kind == EtcdSnapshotKind.SCHEDULED
    assert rows["mine-node1-1763000000"].kind == EtcdSnapshotKind.ON_DEMAND
    assert rows["mine-node1-1763000000"].size == 0 and rows["mine-node1-1763000000"].created is None
    assert not EtcdSnapshot.objects.filter(pk=old.pk).exists()
    assert EtcdSnapshot.objects.filter(pk=kept.pk).exists()  # node2 did not report: its rows stay
    # A server that reports an empty list has no snapshot left.
    snapshots.snapshots_record(installed, job, {"node2": []})
    assert not EtcdSnapshot.objects.filter(pk=kept.pk).exists()


def test_scheduled_snapshots_are_requested_when_due(
    installed: Cluster, sent: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    snapshots.snapshot_schedule_set(cluster=installed, interval_minutes=30, retention=4)
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        created = snapshots.snapshots_schedule_due(now)
    assert len(created) == 1 and len(sent) == 1
    job = Job.objects.get(pk=created[0])
    assert job.kind == JobKind.ETCD_SNAPSHOT and job.requested_by is None
    assert snapshots.stage_vars(job, "etcd_snapshot") == {
        "rke2_snapshot_action": "save",
        "rke2_snapshot_name": "scheduled",
        "rke2_snapshot_retention": 4,
    }
    installed.refresh_from_db()
    assert installed.etcd_snapshot_last_scheduled_at == now
    # Not due again within the interval; a cluster with an active job is skipped without using up its slot.
    finish(job)
    assert snapshots.snapshots_schedule_due(now + dt.timedelta(minutes=29)) == []
    busy = make_job(installed, kind=JobKind.HEALTH, status=JobStatus.RUNNING, stages=["health"])
    assert snapshots.snapshots_schedule_due(now + dt.timedelta(minutes=31)) == []
    installed.refresh_from_db()
    assert installed.etcd_snapshot_last_scheduled_at == now
    finish(busy)
    assert len(snapshots.snapshots_schedule_due(now + dt.timedelta(minutes=31))) == 1


def test_clusters_without_a_schedule_or_not_installed_are_left_alone(
    installed: Cluster, make_cluster: Callable[..., Cluster]
) -> None:
    fresh = make_cluster("fresh")
    Cluster.objects.filter(pk=fresh.pk).update(etcd_snapshot_interval_minutes=5)
    assert snapshots.snapshots_schedule_due() == []


# --- admin ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def staff(django_user_model: Any, client: Any) -> Any:
    user = django_user_model.objects.create_user("staff", "staff@example.com", "pw", is_staff=True)
    user.groups.add(Group.objects.get(name="operators"))
    client.force_login(user)
    return client


def test_admin_snapshot_page_and_restore_confirmation(
    staff: Any, installed: Cluster, django_capture_on_commit_callbacks: Any
) -> None:
    snapshot = add_snapshot(installed, "node1", "on-demand-node1-1764000000")
    page = reverse("admin:clusters_cluster_etcd_snapshots", args=[installed.pk])
    response = staff.get(page)
    assert response.status_code == 200
    text = response.content.decode()
    assert "on-demand-node1-1764000000" in text and 'data-operation="restore"' in text
    change = staff.get(reverse("admin:clusters_cluster_change", args=[installed.pk])).content.decode()
    assert 'data-operation="etcd-snapshots"' in change

    restore = reverse("admin:clusters_cluster_etcd_restore", args=[installed.pk, snapshot.pk])
    response = staff.post(restore, {"confirm": "beta"})
    assert response.status_code == 200
    assert "Type the cluster" in response.content.decode()
    assert not Job.objects.filter(cluster=installed).exists()
    response = staff.post(restore, {"confirm": "alpha"})
    assert response.status_code == 302
    job = Job.objects.get(cluster=installed)
    assert (job.kind, job.params["snapshot_name"]) == (JobKind.ETCD_RESTORE, snapshot.name)
    finish(job)

    response = staff.post(page, {"action": "take", "take-name": ""})
    assert response.status_code == 302
    job = Job.objects.filter(cluster=installed, kind=JobKind.ETCD_SNAPSHOT).get()
    finish(job)
    response = staff.post(page, {"action": "delete", "snapshot": [str(snapshot.pk)]})
    assert response.status_code == 302
    assert Job.objects.get(cluster=installed, kind=JobKind.ETCD_SNAPSHOT_PRUNE).params["delete"] == {
        "node1": [snapshot.name]
    }


def test_admin_upgrade_form_has_the_snapshot_switch(staff: Any, installed: Cluster) -> None:
    page = reverse("admin:clusters_cluster_upgrade", args=[installed.pk])
    assert 'name="snapshot"' in staff.get(page).content.decode()
    response = staff.post(page, {"target_version": V2})  # the box unticked
    assert response.status_code == 302
    assert Job.objects.get(cluster=installed, kind=JobKind.UPGRADE).stages == ["upgrade"]
