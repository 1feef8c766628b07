"""What ``job_request`` refuses before anything is queued.

- A database refusal is reported as the rule it names: the one-active-job-per-cluster rule is a conflict with the
  active job, any other rule is an error of its own (never a guessed conflict).
- Extra configuration stored before its keys were refused (imported, or saved by an older version) is never
  rendered into a node's config.yaml: a job that would render it is refused naming the field, the node and the key.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, connections, transaction
from rest_framework.test import APIClient

from clusters.choices import JobKind, JobStatus, NodeStatus
from clusters.exceptions import JobConflict
from clusters.integrity import integrity_refusal
from clusters.models import AuditLog, Cluster, Job, Node
from clusters.services.jobs import ONE_ACTIVE_JOB_CONSTRAINT, job_request
from clusters.services.tokens import api_token_create
from clusters.tasks import run_job

from .factories import make_cluster, make_credential, mark_installed

# Values the extra-config validator refuses today, as an older version could have stored them.
LEGACY_CLUSTER_VARS = {"kube-apiserver-arg": ["anonymous-auth=true"], "cluster-reset": True, "debug": True}
LEGACY_NODE_VARS = {"kubelet-arg": ["max-pods=200"], "write-kubeconfig-mode": "0644"}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Messages the job task would have sent to the broker (the broker's own behaviour is tested elsewhere)."""
    messages: list[dict[str, Any]] = []
    monkeypatch.setattr(run_job, "apply_async", lambda *args, **kwargs: messages.append(kwargs))
    return messages


# The database's rules ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_one_active_job_rule_is_the_constraint_the_service_expects():
    """The name the service compares with is the one the database reports, on either database."""
    cluster = make_cluster(servers=1, ssh_credential=make_credential())
    Job.objects.create(cluster=cluster, kind=JobKind.PREFLIGHT, status=JobStatus.RUNNING)
    with pytest.raises(IntegrityError) as info, transaction.atomic():
        Job.objects.create(cluster=cluster, kind=JobKind.HEALTH, status=JobStatus.PENDING)
    assert integrity_refusal(info.value, Job).constraint == ONE_ACTIVE_JOB_CONSTRAINT


@pytest.mark.django_db(transaction=True)
def test_a_request_that_loses_the_race_for_the_cluster_is_a_conflict(sent):
    """Two requests at once: both see no active job; the database lets one in, the other is a conflict naming the
    job that won."""
    cluster = make_cluster(servers=1, ssh_credential=make_credential())
    outcome: dict[str, Any] = {}

    def second_request() -> None:
        try:
            outcome["job"] = job_request(cluster=Cluster.objects.get(pk=cluster.pk), kind=JobKind.PREFLIGHT)
        except Exception as exc:  # noqa: BLE001 - the test looks at what was raised
            outcome["error"] = exc
        finally:
            connections.close_all()

    with transaction.atomic():
        first = job_request(cluster=cluster, kind=JobKind.PREFLIGHT)
        # The other request starts while this one's job is not committed: it sees no active job, then waits for
        # this transaction (PostgreSQL: the unique index; SQLite: the write lock) and is refused by the rule.
        other = threading.Thread(target=second_request)
        other.start()
        _wait_until_blocked(other, outcome)
    other.join(60)
    assert not other.is_alive()
    error = outcome.get("error")
    assert isinstance(error, JobConflict), outcome
    assert error.job is not None and error.job.pk == first.pk
    assert f"#{first.pk}" in error.message
    assert list(Job.objects.filter(cluster=cluster).values_list("pk", flat=True)) == [first.pk]


def _wait_until_blocked(thread: threading.Thread, outcome: dict[str, Any]) -> None:
    """Until ``thread`` waits on this transaction (PostgreSQL shows the wait; SQLite gets a moment)."""
    if connection.vendor != "postgresql":
        time.sleep(1.5)
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and thread.is_alive():
        with connection.cursor() as cursor:
            # pg_locks is read live (pg_stat_activity would be a snapshot taken once per transaction).
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            if cursor.fetchone()[0]:
                return
        time.sleep(0.05)
    raise AssertionError(f"the second request never waited for the first one's transaction: {outcome}")


@pytest.mark.django_db(transaction=True)
def test_another_database_rule_is_not_reported_as_a_conflict(sent):
    """A refusal by another rule (here: the requesting account was deleted meanwhile) is reported as that rule,
    never as "the cluster already has an active job"; nothing is left behind."""
    cluster = make_cluster(servers=1, ssh_credential=make_credential())
    user = get_user_model().objects.create_user(username="gone", password="pw-gone")
    get_user_model().objects.filter(pk=user.pk).delete()  # the object still has its primary key
    with pytest.raises(ValidationError) as info:
        job_request(cluster=cluster, kind=JobKind.PREFLIGHT, actor=user)
    text = " ".join(message for messages in info.value.message_dict.values() for message in messages)
    assert "active job" not in text
    assert "no longer exists" in text or "breaks the rule" in text, text
    assert not Job.objects.exists()
    assert not AuditLog.objects.filter(action__startswith="job.request").exists()
    assert sent == []


# Extra configuration stored before its keys were refused -------------------------------------------------------


def _store_legacy(cluster: Cluster, *, cluster_vars: dict[str, Any] | None = None, node: Node | None = None) -> None:
    """Write extra configuration as an older version did: straight to the table, past today's validation."""
    if cluster_vars is not None:
        Cluster.objects.filter(pk=cluster.pk).update(cluster_vars=cluster_vars)
    if node is not None:
        Node.objects.filter(pk=node.pk).update(node_vars=LEGACY_NODE_VARS)
    cluster.refresh_from_db()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("kube-apiserver-arg", ["anonymous-auth=true"], "anonymous-auth=true"),
        ("kube-apiserver-arg", ["authorization-mode=AlwaysAllow"], "AlwaysAllow"),
        ("cluster-reset", True, "cluster-reset"),
        ("write-kubeconfig-mode", "0644", "0644"),
    ],
)
def test_an_install_is_refused_while_the_cluster_holds_a_refused_key(sent, key, value, said):
    cluster = make_cluster(servers=1, ssh_credential=make_credential())
    _store_legacy(cluster, cluster_vars={key: value, "debug": True})
    with pytest.raises(ValidationError) as info:
        job_request(cluster=cluster, kind=JobKind.INSTALL)
    errors = info.value.message_dict
    assert list(errors) == ["cluster_vars"]
    (message,) = errors["cluster_vars"]
    assert repr(key) in message and said in message and "remove it" in message
    assert "debug" not in message
    assert not Job.objects.exists() and sent == []


@pytest.mark.django_db
def test_each_refused_key_of_the_cluster_and_of_its_nodes_is_named(sent):
    cluster = make_cluster(servers=1, workers=2, ssh_credential=make_credential())
    worker = cluster.cluster_nodes.get(hostname="alpha-w2")
    _store_legacy(cluster, cluster_vars=LEGACY_CLUSTER_VARS, node=worker)
    with pytest.raises(ValidationError) as info:
        job_request(cluster=cluster, kind=JobKind.INSTALL)
    errors = info.value.message_dict
    assert sorted(errors) == ["cluster_vars", "nodes[alpha-w2].node_vars"]
    assert len(errors["cluster_vars"]) == 2
    assert any("'kube-apiserver-arg'" in m and "anonymous-auth=true" in m for m in errors["cluster_vars"])
    assert any("'cluster-reset'" in m for m in errors["cluster_vars"])
    (node_message,) = errors["nodes[alpha-w2].node_vars"]
    assert "'write-kubeconfig-mode'" in node_message and "alpha-w2" in node_message
    assert not Job.objects.exists() and sent == []


@pytest.mark.django_db
def test_scale_out_and_upgrade_are_refused_too(sent):
    cluster = mark_installed(make_cluster(servers=1, workers=1, ssh_credential=make_credential()))
    Node.objects.create(cluster=cluster, hostname="alpha-w9", internal_ip="10.0.0.109", role="agent")
    _store_legacy(cluster, cluster_vars={"kube-apiserver-arg": ["anonymous-auth=true"]})
    with pytest.raises(ValidationError) as info:
        job_request(cluster=cluster, kind=JobKind.SCALE_ADD)
    assert list(info.value.message_dict) == ["cluster_vars"]
    with pytest.raises(ValidationError) as info:
        job_request(cluster=cluster, kind=JobKind.UPGRADE, params={"target_version": "v1.31.5+rke2r1"})
    assert list(info.value.message_dict) == ["cluster_vars"]
    assert not Job.objects.exists() and sent == []


@pytest.mark.django_db
def test_jobs_that_render_no_config_still_run_so_that_the_cluster_can_be_looked_at(sent):
    cluster = mark_installed(make_cluster(servers=1, ssh_credential=make_credential()))
    _store_legacy(cluster, cluster_vars=LEGACY_CLUSTER_VARS)
    job = job_request(cluster=cluster, kind=JobKind.PREFLIGHT)
    assert job.status == JobStatus.PENDING and Job.objects.filter(pk=job.pk).exists()


@pytest.mark.django_db
def test_a_scale_out_is_not_blocked_by_a_node_it_does_not_configure(sent):
    """Only the nodes a scale-out installs get a config.yaml: an active node's old keys are left to its next
    install or upgrade."""
    cluster = mark_installed(make_cluster(servers=1, workers=1, ssh_credential=make_credential()))
    _store_legacy(cluster, node=cluster.cluster_nodes.get(hostname="alpha-w1"))
    Node.objects.create(cluster=cluster, hostname="alpha-w9", internal_ip="10.0.0.109", role="agent")
    job = job_request(cluster=cluster, kind=JobKind.SCALE_ADD)
    assert job.kind == JobKind.SCALE_ADD
    Node.objects.filter(hostname="alpha-w1").update(status=NodeStatus.FAILED)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.FAILED)
    with pytest.raises(ValidationError) as info:
        job_request(cluster=cluster, kind=JobKind.SCALE_ADD)
    assert list(info.value.message_dict) == ["nodes[alpha-w1].node_vars"]


@pytest.mark.django_db
def test_the_api_refuses_the_job_with_a_400_naming_the_field_and_the_key(sent):
    cluster = make_cluster(servers=1, ssh_credential=make_credential())
    _store_legacy(cluster, cluster_vars={"cluster-reset": True})
    user = get_user_model().objects.create_user(username="olivia", password="pw-olivia")
    user.groups.add(Group.objects.get(name="operators"))
    _, token = api_token_create(user=user, name="tests")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    response = client.post(f"/api/clusters/{cluster.pk}/install/", {}, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert "cluster_vars" in str(body)
    assert "'cluster-reset'" in str(body) and "remove it" in str(body)
    assert not Job.objects.exists() and sent == []
