"""Cluster and node services: creation with nodes, role defaults, scaling guards, frozen values."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from clusters.choices import JobKind, JobStatus, NodeRole, NodeStatus
from clusters.exceptions import InvalidState
from clusters.fields import reveal
from clusters.models import AuditLog, Cluster, Job, Node
from clusters.services.clusters import (
    cluster_create,
    cluster_delete,
    cluster_install_problems,
    cluster_update,
    cluster_warnings,
    nodes_add,
    nodes_mark_for_removal,
    normalize_node_roles,
)

from .factories import DEFAULT_VERSION, make_cluster, make_credential, mark_installed

pytestmark = pytest.mark.django_db


def roles(cluster: Cluster) -> dict[str, str]:
    return dict(cluster.cluster_nodes.exclude(status=NodeStatus.REMOVED).values_list("hostname", "role"))


def statuses(cluster: Cluster) -> dict[str, str]:
    return dict(cluster.cluster_nodes.values_list("hostname", "status"))


def error_dict(excinfo: pytest.ExceptionInfo[ValidationError]) -> dict[str, list[str]]:
    return excinfo.value.message_dict


# normalize_node_roles ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "has_initial", "expected"),
    [
        (["server", "server", "agent"], False, ["initial_master", "master", "worker"]),
        (["agent", "server", "server"], False, ["worker", "initial_master", "master"]),
        ([None, None, None], False, ["initial_master", "worker", "worker"]),
        ([None, None], True, ["worker", "worker"]),
        (["server", "initial_master", "agent"], False, ["master", "initial_master", "worker"]),
        (["master", "master"], False, ["initial_master", "master"]),
        (["server", "master"], True, ["master", "master"]),
        (["SERVER", " Agent ", "worker"], False, ["initial_master", "worker", "worker"]),
        ([None, "server"], False, ["worker", "initial_master"]),
        (["boss"], False, ["boss"]),  # left for validation to report
    ],
)
def test_normalize_node_roles(given, has_initial, expected):
    specs = [{"hostname": f"n{i}", "role": role} for i, role in enumerate(given)]
    result = normalize_node_roles(specs, has_initial_master=has_initial)
    assert [spec["role"] for spec in result] == expected
    assert [spec.get("role") for spec in specs] == list(given)  # the input is not modified


# cluster_create ---------------------------------------------------------------------------------------------------


def test_create_cluster_with_nodes_in_one_call():
    admin = get_user_model().objects.create_user("admin")
    credential = make_credential()
    cluster = cluster_create(
        name="prod",
        rke2_version=DEFAULT_VERSION,
        registration_address="k8s.example.com",
        tls_san=["k8s.example.com"],
        ssh_credential=credential.pk,
        actor=admin,
        nodes=[
            {"hostname": "cp1", "internal_ip": "10.0.0.11", "role": "server"},
            {"hostname": "cp2", "internal_ip": "10.0.0.12", "role": "server", "external_ip": "203.0.113.12"},
            {"hostname": "cp3", "internal_ip": "10.0.0.13", "role": "server"},
            {"hostname": "w1", "internal_ip": "10.0.0.21", "role": "agent", "labels": ["tier=web"]},
            {"hostname": "w2", "internal_ip": "10.0.0.22", "role": "agent", "taints": ["gpu=yes:NoSchedule"]},
        ],
    )
    assert roles(cluster) == {"cp1": "initial_master", "cp2": "master", "cp3": "master", "w1": "worker", "w2": "worker"}
    assert set(statuses(cluster).values()) == {NodeStatus.PENDING}
    assert cluster.ssh_credential == credential
    assert len(reveal(cluster.token)) >= 32
    assert cluster_install_problems(cluster) == []
    assert cluster_warnings(cluster) == []
    entry = AuditLog.objects.get(action="cluster.create")
    assert (entry.actor, entry.cluster, entry.detail) == (admin, cluster, {"nodes": 5})


def test_nodes_without_roles_make_the_first_one_initial_master():
    cluster = make_cluster(
        nodes=[
            {"hostname": "a", "internal_ip": "10.0.0.1"},
            {"hostname": "b", "internal_ip": "10.0.0.2"},
        ]
    )
    assert roles(cluster) == {"a": "initial_master", "b": "worker"}


def test_create_reports_every_error_keyed_by_node_and_writes_nothing():
    with pytest.raises(ValidationError) as info:
        cluster_create(
            name="Bad Name",
            rke2_version="1.31",
            nodes=[
                {"hostname": "ok", "internal_ip": "10.0.0.1", "role": "server"},
                {"hostname": "Bad_Host", "internal_ip": "10.0.0.999", "role": "agent"},
                {"hostname": "ok", "internal_ip": "10.0.0.1", "role": "agent"},
                {"hostname": "x", "internal_ip": "10.0.0.5", "colour": "blue"},
                "not-a-mapping",
                {"hostname": "y", "internal_ip": "10.0.0.6", "role": "boss"},
                {"hostname": "z", "internal_ip": "10.0.0.7", "use_external_ip": True},
            ],
        )
    errors = error_dict(info)
    assert set(errors) == {
        "name",
        "rke2_version",
        "nodes[1].hostname",
        "nodes[1].internal_ip",
        "nodes[2].hostname",
        "nodes[2].internal_ip",
        "nodes[3]",
        "nodes[4]",
        "nodes[5].role",
        "nodes[6].external_ip",
    }
    assert errors["nodes[2].hostname"] == ["Duplicate of nodes[0].hostname."]
    assert errors["nodes[3]"] == ["Unknown field(s): colour."]
    assert Cluster.objects.count() == 0 and Node.objects.count() == 0


def test_create_refuses_two_initial_masters_unknown_fields_and_bad_node_lists():
    two = [
        {"hostname": "a", "internal_ip": "10.0.0.1", "role": "initial_master"},
        {"hostname": "b", "internal_ip": "10.0.0.2", "role": "initial_master"},
    ]
    with pytest.raises(ValidationError) as info:
        cluster_create(name="a", rke2_version=DEFAULT_VERSION, nodes=two)
    assert error_dict(info) == {"nodes": ["A cluster has at most one initial master."]}
    with pytest.raises(ValidationError) as info:
        cluster_create(name="a", rke2_version=DEFAULT_VERSION, status="active", token="mine")
    assert set(error_dict(info)) == {"status", "token"}
    for nodes in ("a,b", {"hostname": "a"}, 5):
        with pytest.raises(ValidationError) as info:
            cluster_create(name="a", rke2_version=DEFAULT_VERSION, nodes=nodes)
        assert error_dict(info) == {"nodes": ["Enter a list of nodes."]}
    with pytest.raises(ValidationError) as info:
        cluster_create(name="a", rke2_version=DEFAULT_VERSION, ssh_credential=999999)
    assert error_dict(info) == {"ssh_credential": ["There is no SSH credential with id 999999."]}


def test_create_refuses_a_taken_name():
    make_cluster("prod")
    with pytest.raises(ValidationError) as info:
        make_cluster("prod", subnet="10.1.0")
    assert "name" in error_dict(info)


# nodes_add --------------------------------------------------------------------------------------------------------


def test_add_nodes_before_and_after_install():
    cluster = make_cluster(servers=1)
    added = nodes_add(
        cluster=cluster,
        nodes=[
            {"hostname": "alpha-s2", "internal_ip": "10.0.0.12", "role": "server"},
            {"hostname": "alpha-w1", "internal_ip": "10.0.0.101"},
        ],
    )
    assert [(node.hostname, node.role, node.status) for node in added] == [
        ("alpha-s2", "master", "pending"),
        ("alpha-w1", "worker", "pending"),
    ]
    mark_installed(cluster)
    # Even when the initial master is gone, an installed cluster never gets a new one.
    Node.objects.filter(cluster=cluster, role=NodeRole.INITIAL_MASTER).update(status=NodeStatus.REMOVED)
    (node,) = nodes_add(cluster=cluster, nodes=[{"hostname": "alpha-s3", "internal_ip": "10.0.0.13", "role": "server"}])
    assert node.role == NodeRole.MASTER
    assert AuditLog.objects.filter(action="nodes.add").count() == 2


def test_add_first_server_to_an_empty_cluster_makes_it_initial_master():
    cluster = make_cluster(nodes=[])
    (node,) = nodes_add(cluster=cluster, nodes=[{"hostname": "n1", "internal_ip": "10.0.0.1", "role": "server"}])
    assert node.role == NodeRole.INITIAL_MASTER


def test_add_nodes_conflicting_with_existing_ones():
    cluster = make_cluster(servers=1, workers=1)
    with pytest.raises(ValidationError) as info:
        nodes_add(
            cluster=cluster,
            nodes=[
                {"hostname": "fresh", "internal_ip": "10.0.0.50"},
                {"hostname": "alpha-w1", "internal_ip": "10.0.0.11"},
                {"hostname": "again", "internal_ip": "10.0.0.60", "role": "initial_master"},
            ],
        )
    assert error_dict(info) == {
        "nodes[1].hostname": ["A node with this host name already exists in this cluster."],
        "nodes[1].internal_ip": ["A node with this internal IP already exists in this cluster."],
        "nodes[2].role": ["The cluster already has an initial master."],
    }
    assert cluster.cluster_nodes.count() == 2
    with pytest.raises(ValidationError) as info:
        nodes_add(cluster=cluster, nodes=[])
    assert error_dict(info) == {"nodes": ["Give at least one node."]}


def test_a_removed_node_can_be_added_again():
    cluster = make_cluster(servers=1, workers=1)
    mark_installed(cluster)
    Node.objects.filter(hostname="alpha-w1").update(status=NodeStatus.REMOVED)
    (node,) = nodes_add(cluster=cluster, nodes=[{"hostname": "alpha-w1", "internal_ip": "10.0.0.101", "role": "agent"}])
    assert node.status == NodeStatus.PENDING
    assert cluster.cluster_nodes.filter(hostname="alpha-w1").count() == 2


def test_node_changes_are_refused_while_a_job_is_active():
    cluster = make_cluster(servers=1, workers=1)
    Job.objects.create(cluster=cluster, kind=JobKind.INSTALL, status=JobStatus.RUNNING)
    with pytest.raises(InvalidState, match="Cannot add nodes while a job is active"):
        nodes_add(cluster=cluster, nodes=[{"hostname": "n9", "internal_ip": "10.0.0.9"}])
    with pytest.raises(InvalidState, match="Cannot remove nodes while a job is active"):
        nodes_mark_for_removal(cluster=cluster, hostnames=["alpha-w1"])


# nodes_mark_for_removal -------------------------------------------------------------------------------------------


@pytest.fixture
def installed() -> Cluster:
    cluster = make_cluster(servers=3, workers=2, registration_address="k8s.example.com")
    return mark_installed(cluster)


def test_remove_workers_and_never_installed_nodes(installed):
    (pending,) = nodes_add(cluster=installed, nodes=[{"hostname": "late", "internal_ip": "10.0.0.77"}])
    marked = nodes_mark_for_removal(cluster=installed, hostnames=["alpha-w1", "late", "alpha-w1"])
    assert [(node.hostname, node.status) for node in marked] == [("alpha-w1", "draining"), ("late", "removed")]
    entry = AuditLog.objects.get(action="nodes.mark_for_removal")
    assert entry.detail == {"hostnames": ["alpha-w1", "late"]}
    with pytest.raises(ValidationError) as info:
        nodes_mark_for_removal(cluster=installed, hostnames=["alpha-w1", "late", "ghost"])
    assert error_dict(info) == {
        "hostnames": [
            "alpha-w1 is already marked for removal.",
            "No node named 'late' in this cluster.",
            "No node named 'ghost' in this cluster.",
        ]
    }
    for bad in ([], "alpha-w2"):
        with pytest.raises(ValidationError):
            nodes_mark_for_removal(cluster=installed, hostnames=bad)


def test_remove_one_server_at_a_time(installed):
    with pytest.raises(ValidationError, match="one server at a time"):
        nodes_mark_for_removal(cluster=installed, hostnames=["alpha-s2", "alpha-s3"])
    nodes_mark_for_removal(cluster=installed, hostnames=["alpha-s3"])
    assert statuses(installed)["alpha-s3"] == NodeStatus.DRAINING


def test_no_server_removal_while_another_server_is_unhealthy(installed):
    Node.objects.filter(hostname="alpha-s2").update(status=NodeStatus.FAILED)
    with pytest.raises(ValidationError, match="alpha-s2 are not active"):
        nodes_mark_for_removal(cluster=installed, hostnames=["alpha-s3"])
    # The failed server itself may go (that is how a dead server is replaced).
    nodes_mark_for_removal(cluster=installed, hostnames=["alpha-s2"])


def test_never_remove_the_last_server():
    cluster = mark_installed(make_cluster(servers=1, workers=1, registration_address="k8s.example.com"))
    with pytest.raises(ValidationError, match="last server"):
        nodes_mark_for_removal(cluster=cluster, hostnames=["alpha-s1"])
    # Workers are not guarded.
    nodes_mark_for_removal(cluster=cluster, hostnames=["alpha-w1"])


def test_the_registration_target_stays_until_the_address_moves():
    cluster = mark_installed(make_cluster(servers=3))
    with pytest.raises(ValidationError, match="register with"):
        nodes_mark_for_removal(cluster=cluster, hostnames=["alpha-s1"])
    cluster_update(cluster=cluster, data={"registration_address": "10.0.0.12"})
    with pytest.raises(ValidationError, match="register with"):
        nodes_mark_for_removal(cluster=cluster, hostnames=["alpha-s2"])
    nodes_mark_for_removal(cluster=cluster, hostnames=["alpha-s1"])
    assert statuses(cluster)["alpha-s1"] == NodeStatus.DRAINING


def test_pending_servers_are_not_guarded():
    cluster = make_cluster(servers=1)
    marked = nodes_mark_for_removal(cluster=cluster, hostnames=["alpha-s1"])
    assert marked[0].status == NodeStatus.REMOVED
    assert cluster_install_problems(cluster) == [
        "An install needs exactly one initial master; the cluster has 0.",
        "The cluster has no SSH credential.",
    ]


# cluster_update / cluster_delete ----------------------------------------------------------------------------------


def test_update_before_install_may_change_anything():
    cluster = make_cluster()
    credential = make_credential()
    cluster_update(
        cluster=cluster,
        data={
            "cni": "cilium",
            "cluster_cidr": "10.52.0.0/16",
            "rke2_version": "v1.32.1+rke2r1",
            "ssh_credential": credential.pk,
        },
    )
    cluster.refresh_from_db()
    assert (cluster.cni, cluster.cluster_cidr, cluster.rke2_version) == ("cilium", "10.52.0.0/16", "v1.32.1+rke2r1")
    assert cluster.ssh_credential == credential
    entry = AuditLog.objects.get(action="cluster.update")
    assert entry.detail == {"fields": ["cluster_cidr", "cni", "rke2_version", "ssh_credential"]}


def test_update_after_install_keeps_critical_values_and_the_version():
    cluster = mark_installed(make_cluster())
    with pytest.raises(ValidationError) as info:
        cluster_update(cluster=cluster, data={"cni": "cilium", "cluster_domain": "example.local", "description": "x"})
    assert set(error_dict(info)) == {"cni", "cluster_domain"}
    # The instance is left as it was.
    assert (cluster.cni, cluster.cluster_domain, cluster.description) == ("canal", "cluster.local", "")
    with pytest.raises(ValidationError) as info:
        cluster_update(cluster=cluster, data={"rke2_version": "v1.32.1+rke2r1"})
    assert error_dict(info) == {"rke2_version": ["The cluster is installed: change its version with an upgrade job."]}
    with pytest.raises(ValidationError) as info:
        cluster_update(cluster=cluster, data={"token": "x", "status": "new"})
    assert set(error_dict(info)) == {"token", "status"}
    cluster_update(cluster=cluster, data={"description": "production", "tls_san": ["k8s.example.com"]})
    cluster.refresh_from_db()
    assert cluster.description == "production"
    # Nothing changed: no audit entry.
    count = AuditLog.objects.filter(action="cluster.update").count()
    cluster_update(cluster=cluster, data={"description": "production"})
    assert AuditLog.objects.filter(action="cluster.update").count() == count


def test_delete_is_refused_while_a_job_is_active():
    cluster = make_cluster()
    job = Job.objects.create(cluster=cluster, kind=JobKind.PREFLIGHT)
    with pytest.raises(InvalidState, match="active job"):
        cluster_delete(cluster=cluster)
    Job.objects.filter(pk=job.pk).update(status=JobStatus.FAILED)
    cluster_delete(cluster=cluster)
    assert not Cluster.objects.exists() and not Node.objects.exists()
    assert AuditLog.objects.get(action="cluster.delete").object_repr == "alpha"


# Install checks and warnings ---------------------------------------------------------------------------------------


def test_install_needs_exactly_one_initial_master_and_a_credential():
    cluster = make_cluster(nodes=[{"hostname": "w", "internal_ip": "10.0.0.1", "role": "worker"}])
    assert cluster_install_problems(cluster) == [
        "An install needs exactly one initial master; the cluster has 0.",
        "The cluster has no SSH credential.",
    ]
    cluster = make_cluster("beta", servers=1, ssh_credential=make_credential())
    assert cluster_install_problems(cluster) == []


def test_even_number_of_servers_is_a_warning():
    cluster = make_cluster(servers=2, registration_address="k8s.example.com")
    (warning,) = cluster_warnings(cluster)
    assert "2 servers" in warning and "odd number" in warning
    cluster = make_cluster("beta", servers=3)
    (warning,) = cluster_warnings(cluster)
    assert "No registration address" in warning


# Job options -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"workers_batch": 0}, "workers_batch"),
        ({"workers_batch": "0%"}, "workers_batch"),
        ({"workers_batch": "lots"}, "workers_batch"),
        ({"workers_batch": True}, "workers_batch"),
        ({"drain_timeout": -1}, "drain_timeout"),
        ({"drain_timeout": "60"}, "drain_timeout"),
    ],
)
def test_job_options_are_checked_when_the_job_is_requested(params, field):
    from clusters.services.jobs import job_request

    cluster = make_cluster(servers=1, ssh_credential=make_credential())
    with pytest.raises(ValidationError) as info:
        job_request(cluster=cluster, kind=JobKind.PREFLIGHT, params=params)
    assert list(info.value.message_dict) == [field]
    assert not Job.objects.exists()


def test_valid_job_options_are_kept(django_capture_on_commit_callbacks):
    from clusters.services.jobs import job_request

    cluster = make_cluster(servers=1, ssh_credential=make_credential())
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = job_request(
            cluster=cluster, kind=JobKind.PREFLIGHT, params={"workers_batch": "25%", "drain_timeout": 120}
        )
    assert job.params == {"workers_batch": "25%", "drain_timeout": 120}
    assert len(callbacks) == 1
