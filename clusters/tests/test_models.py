"""The domain models and the invariants the database itself enforces."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from clusters.choices import JobKind, JobStatus, NodeRole, NodeStatus
from clusters.models import AuditLog, Cluster, Job, JobEvent, JobHostSummary, Node, SSHCredential

from .factories import make_cluster, make_credential

pytestmark = pytest.mark.django_db


@pytest.fixture
def cluster() -> Cluster:
    return make_cluster(servers=1, workers=1)


def insert_node(cluster: Cluster, **fields) -> Node:
    """A node written straight to the database (no full_clean), so that only the constraints can refuse it."""
    fields.setdefault("hostname", "extra")
    fields.setdefault("internal_ip", "10.0.0.200")
    with transaction.atomic():
        return Node.objects.create(cluster=cluster, **fields)


def test_hostname_is_unique_per_cluster(cluster):
    with pytest.raises(IntegrityError):
        insert_node(cluster, hostname="alpha-s1")
    # Another cluster may use the same name, and a removed node frees its name.
    other = make_cluster("beta", subnet="10.9.0")
    insert_node(other, hostname="alpha-s1")
    Node.objects.filter(cluster=cluster, hostname="alpha-w1").update(status=NodeStatus.REMOVED)
    insert_node(cluster, hostname="alpha-w1")
    with pytest.raises(IntegrityError):
        insert_node(cluster, hostname="alpha-w1", internal_ip="10.0.0.201")


def test_internal_ip_is_unique_per_cluster(cluster):
    with pytest.raises(IntegrityError):
        insert_node(cluster, internal_ip="10.0.0.11")
    insert_node(make_cluster("beta", subnet="10.9.0"), internal_ip="10.0.0.11")


def test_at_most_one_initial_master(cluster):
    assert cluster.cluster_nodes.filter(role=NodeRole.INITIAL_MASTER).count() == 1
    with pytest.raises(IntegrityError):
        insert_node(cluster, role=NodeRole.INITIAL_MASTER)
    insert_node(cluster, role=NodeRole.MASTER)
    # Once the initial master is removed, another node may take the role.
    Node.objects.filter(cluster=cluster, role=NodeRole.INITIAL_MASTER).update(status=NodeStatus.REMOVED)
    insert_node(cluster, hostname="new-initial", internal_ip="10.0.0.202", role=NodeRole.INITIAL_MASTER)


def test_use_external_ip_requires_an_external_ip(cluster):
    with pytest.raises(IntegrityError):
        insert_node(cluster, use_external_ip=True, external_ip=None)
    node = insert_node(cluster, use_external_ip=True, external_ip="203.0.113.7")
    with pytest.raises(IntegrityError), transaction.atomic():
        Node.objects.filter(pk=node.pk).update(external_ip=None)


def test_full_clean_reports_the_same_constraints(cluster):
    node = Node(cluster=cluster, hostname="alpha-s1", internal_ip="10.0.0.11", role=NodeRole.INITIAL_MASTER)
    with pytest.raises(ValidationError) as info:
        node.full_clean()
    messages = info.value.messages
    assert "A node with this host name already exists in this cluster." in messages
    assert "A node with this internal IP already exists in this cluster." in messages
    assert "A cluster has at most one initial master." in messages


def test_ssh_port_range_is_enforced_by_the_database():
    credential = make_credential()
    with pytest.raises(IntegrityError), transaction.atomic():
        SSHCredential.objects.filter(pk=credential.pk).update(port=70000)
    with pytest.raises(IntegrityError), transaction.atomic():
        SSHCredential.objects.filter(pk=credential.pk).update(port=0)


def test_cluster_name_is_unique(cluster):
    with pytest.raises(IntegrityError), transaction.atomic():
        Cluster.objects.create(name="alpha", rke2_version="v1.31.4+rke2r1")


def test_one_active_job_per_cluster(cluster):
    Job.objects.create(cluster=cluster, kind=JobKind.PREFLIGHT)
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.create(cluster=cluster, kind=JobKind.INSTALL, status=JobStatus.RUNNING)
    Job.objects.filter(cluster=cluster).update(status=JobStatus.SUCCESSFUL)
    Job.objects.create(cluster=cluster, kind=JobKind.INSTALL)


def test_job_event_counters_are_unique_per_job(cluster):
    job = Job.objects.create(cluster=cluster, kind=JobKind.PREFLIGHT)
    JobEvent.objects.create(job=job, counter=1, event="playbook_on_start")
    with pytest.raises(IntegrityError), transaction.atomic():
        JobEvent.objects.create(job=job, counter=1, event="playbook_on_start")
    JobHostSummary.objects.create(job=job, host_name="alpha-s1", ok=3)
    with pytest.raises(IntegrityError), transaction.atomic():
        JobHostSummary.objects.create(job=job, host_name="alpha-s1")


def test_node_properties(cluster):
    server = cluster.cluster_nodes.get(hostname="alpha-s1")
    worker = cluster.cluster_nodes.get(hostname="alpha-w1")
    assert (server.role, server.is_server, server.rke2_type) == (NodeRole.INITIAL_MASTER, True, "server")
    assert (worker.role, worker.is_server, worker.rke2_type) == (NodeRole.WORKER, False, "agent")
    assert server.ansible_ip == "10.0.0.11"
    server.external_ip = "203.0.113.11"
    assert server.ansible_ip == "10.0.0.11"
    server.use_external_ip = True
    assert server.ansible_ip == "203.0.113.11"


def test_string_forms(cluster):
    node = cluster.cluster_nodes.get(hostname="alpha-s1")
    assert str(cluster) == "alpha" and repr(cluster) == f"<Cluster {cluster.pk}: alpha>"
    assert str(node) == "alpha-s1" and repr(node) == f"<Node {node.pk}: alpha-s1 (initial_master)>"
    job = Job.objects.create(cluster=cluster, kind=JobKind.INSTALL)
    assert str(job) == f"Install #{job.pk} (pending)"
    assert "cluster.create" in str(AuditLog.objects.filter(cluster=cluster).first())
    assert str(AuditLog(action="x.y")) == "x.y"


def test_node_queries_do_not_join_the_cluster_table(cluster):
    with CaptureQueriesContext(connection) as queries:
        list(Node.objects.all())
        list(JobEvent.objects.all())
        list(JobHostSummary.objects.all())
    for query in queries.captured_queries:
        assert "JOIN" not in query["sql"].upper(), query["sql"]
    assert list(cluster.cluster_nodes.values_list("hostname", flat=True)) == ["alpha-s1", "alpha-w1"]


def test_cluster_defaults(cluster):
    assert cluster.cni == "canal"
    assert (cluster.cluster_cidr, cluster.service_cidr, cluster.cluster_dns) == (
        "10.42.0.0/16",
        "10.43.0.0/16",
        "10.43.0.10",
    )
    assert cluster.cluster_domain == "cluster.local"
    assert cluster.installation_stage == "not_started" and cluster.status == "new"
    assert not cluster.is_bootstrapped
    assert cluster.tls_san == [] and cluster.cluster_vars == {}
