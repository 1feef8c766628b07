"""The operations admin, through Django's test client: cluster and node editing through the services, the
lifecycle operations and their errors, the job page, SSH credentials, permissions and query counts."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from clusters.choices import ClusterStatus, JobKind, JobStatus, NodeRole, NodeStatus
from clusters.fields import reveal
from clusters.models import AuditLog, Cluster, Job, JobEvent, Node, SSHCredential
from clusters.services.clusters import NODE_FIELDS
from clusters.services.jobs import job_request
from clusters.tests.factories import make_cluster, make_credential, mark_installed, ssh_private_key

pytestmark = pytest.mark.django_db

VERSION = "v1.31.4+rke2r1"


# --- helpers ---------------------------------------------------------------------------------------------------------


def change_url(cluster: Cluster) -> str:
    return reverse("admin:clusters_cluster_change", args=[cluster.pk])


def op_url(cluster: Cluster, name: str) -> str:
    return reverse(f"admin:clusters_cluster_{name}", args=[cluster.pk])


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]] if response.context else []


def follow_messages(client: Any, response: Any) -> list[str]:
    """Messages shown on the page a redirect leads to."""
    assert response.status_code == 302, response.content[:500]
    return messages_of(client.get(response["Location"]))


def cluster_post_data(
    cluster: Cluster | None = None, nodes: list[dict[str, Any]] | None = None, **fields: Any
) -> dict[str, Any]:
    """The POST of the cluster page: the cluster's fields and its node rows (existing rows first)."""
    data: dict[str, Any] = {
        "name": "alpha",
        "description": "",
        "rke2_version": VERSION,
        "ssh_credential": "",
        "registration_address": "",
        "cni": "canal",
        "cluster_cidr": "10.42.0.0/16",
        "service_cidr": "10.43.0.0/16",
        "cluster_dns": "10.43.0.10",
        "cluster_domain": "cluster.local",
        "tls_san": "",
        "cluster_vars": "{}",
    }
    if cluster is not None:
        data.update(
            {
                "name": cluster.name,
                "description": cluster.description,
                "rke2_version": cluster.rke2_version,
                "ssh_credential": cluster.ssh_credential_id or "",
                "registration_address": cluster.registration_address,
                "cni": cluster.cni,
                "cluster_cidr": cluster.cluster_cidr,
                "service_cidr": cluster.service_cidr,
                "cluster_dns": cluster.cluster_dns,
                "cluster_domain": cluster.cluster_domain,
                "tls_san": ", ".join(cluster.tls_san),
                "cluster_vars": json.dumps(cluster.cluster_vars),
            }
        )
    data.update(fields)
    existing = list(cluster.cluster_nodes.exclude(status=NodeStatus.REMOVED).order_by("pk")) if cluster else []
    rows: list[dict[str, Any]] = []
    for node in existing:
        rows.append(
            {
                "id": node.pk,
                "cluster": cluster.pk,
                "hostname": node.hostname,
                "internal_ip": node.internal_ip,  # type: ignore[union-attr]
                "external_ip": node.external_ip or "",
                "role": node.role,
                "labels": ", ".join(node.labels),
                "taints": ", ".join(node.taints),
                "node_vars": json.dumps(node.node_vars),
                **({"use_external_ip": "on"} if node.use_external_ip else {}),
            }
        )
    for row in nodes or []:
        rows.append({"labels": "", "taints": "", "node_vars": "{}", "external_ip": "", **row})
    prefix = "cluster_nodes"
    data.update(
        {
            f"{prefix}-TOTAL_FORMS": len(rows),
            f"{prefix}-INITIAL_FORMS": len(existing),
            f"{prefix}-MIN_NUM_FORMS": 0,
            f"{prefix}-MAX_NUM_FORMS": 1000,
        }
    )
    for index, row in enumerate(rows):
        for key, value in row.items():
            if value is True:
                value = "on"
            if value is not False and value is not None:
                data[f"{prefix}-{index}-{key}"] = value
    return data


def node_form_errors(response: Any, index: int) -> dict[str, list[str]]:
    formset = next(f for f in response.context["inline_admin_formsets"] if f.formset.prefix == "cluster_nodes").formset
    return {field: list(errors) for field, errors in formset.forms[index].errors.items()}


def make_job(cluster: Cluster, *, kind: str = JobKind.INSTALL, status: str = JobStatus.RUNNING, **fields: Any) -> Job:
    """A job in the state a worker leaves it in."""
    fields.setdefault(
        "stages", ["initial_master", "joining_masters", "workers", "all"] if kind == JobKind.INSTALL else [kind]
    )
    return Job.objects.create(cluster=cluster, kind=kind, status=status, **fields)


@pytest.fixture
def credential() -> SSHCredential:
    return make_credential("ops")


@pytest.fixture
def cluster(credential: SSHCredential) -> Cluster:
    return make_cluster("alpha", servers=3, workers=2, ssh_credential=credential)


@pytest.fixture
def installed(cluster: Cluster) -> Cluster:
    return mark_installed(cluster)


@pytest.fixture
def user_with(django_user_model: Any, client: Any) -> Any:
    """``user_with(*codenames)``: a logged-in staff client holding the given clusters permissions."""

    def build(*codenames: str) -> Any:
        user = django_user_model.objects.create_user("staff", "staff@example.com", "pw", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="clusters", codename__in=codenames))
        client.force_login(user)
        return client

    return build


# --- cluster list ----------------------------------------------------------------------------------------------------


def test_cluster_list_shows_versions_states_node_counts_and_last_job(admin_client: Any, cluster: Cluster) -> None:
    other = make_cluster("beta", servers=1, subnet="10.1.0")
    job = make_job(cluster, status=JobStatus.FAILED)
    Node.objects.filter(hostname="alpha-w2").update(status=NodeStatus.FAILED)
    response = admin_client.get(reverse("admin:clusters_cluster_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    assert VERSION in html
    row = re.search(r"<tr[^>]*>(?:(?!</tr>).)*alpha(?:(?!</tr>).)*</tr>", html, re.S).group(0)  # type: ignore[union-attr]
    assert ">1</span> initial master" in row and ">2</span> masters" in row and ">2</span> workers" in row
    assert "4 pending" in row and "1 failed" in row
    assert f"Install #{job.pk}" in row and 'data-status="failed"' in row
    assert reveal(cluster.token) not in html and reveal(other.token) not in html


def test_cluster_list_query_count_does_not_grow_with_clusters(
    admin_client: Any, credential: SSHCredential, django_assert_num_queries: Any
) -> None:
    url = reverse("admin:clusters_cluster_changelist")
    make_cluster("c0", servers=1, workers=1, subnet="10.9.0", ssh_credential=credential)
    # session, user, result count, total count, clusters with their counts and last job, the version and
    # credential filter choices
    with django_assert_num_queries(7):
        assert admin_client.get(url).status_code == 200
    for index in range(1, 12):
        created = make_cluster(f"c{index}", servers=3, workers=2, subnet=f"10.9.{index}", ssh_credential=credential)
        make_job(created, status=JobStatus.SUCCESSFUL)
        make_job(created, kind=JobKind.PREFLIGHT, status=JobStatus.RUNNING)
    with django_assert_num_queries(7):
        response = admin_client.get(url)
    assert response.content.decode().count('class="field-name"') == 12


def test_cluster_list_search_and_filters(admin_client: Any, cluster: Cluster) -> None:
    make_cluster("beta", servers=1, subnet="10.1.0")
    url = reverse("admin:clusters_cluster_changelist")
    by_node = admin_client.get(url, {"q": "alpha-w1"})
    assert [c.name for c in by_node.context["cl"].result_list] == ["alpha"]
    by_address = admin_client.get(url, {"q": "10.1.0.11"})
    assert [c.name for c in by_address.context["cl"].result_list] == ["beta"]
    make_job(cluster, kind=JobKind.PREFLIGHT, status=JobStatus.PENDING)
    active = admin_client.get(url, {"active_job": "yes"})
    assert [c.name for c in active.context["cl"].result_list] == ["alpha"]
    idle = admin_client.get(url, {"active_job": "no"})
    assert [c.name for c in idle.context["cl"].result_list] == ["beta"]
    Cluster.objects.filter(name="beta").update(status=ClusterStatus.ACTIVE)
    assert [c.name for c in admin_client.get(url, {"status__exact": "active"}).context["cl"].result_list] == ["beta"]


# --- cluster page: creating and editing through the services ---------------------------------------------------------


def test_add_cluster_with_nodes_goes_through_the_service(admin_client: Any, admin_user: Any) -> None:
    data = cluster_post_data(
        name="gamma",
        tls_san="api.example.com, 10.5.0.5",
        nodes=[
            {"hostname": "g-1", "internal_ip": "10.5.0.11", "role": NodeRole.INITIAL_MASTER, "labels": "zone=a"},
            {
                "hostname": "g-2",
                "internal_ip": "10.5.0.12",
                "role": NodeRole.WORKER,
                "taints": "dedicated=db:NoSchedule",
            },
        ],
    )
    response = admin_client.post(reverse("admin:clusters_cluster_add"), data)
    assert response.status_code == 302, response.context and response.context["errors"]
    cluster = Cluster.objects.get(name="gamma")
    assert cluster.tls_san == ["api.example.com", "10.5.0.5"]
    nodes = list(cluster.cluster_nodes.order_by("hostname"))
    assert [(n.hostname, n.role, n.status) for n in nodes] == [
        ("g-1", NodeRole.INITIAL_MASTER, NodeStatus.PENDING),
        ("g-2", NodeRole.WORKER, NodeStatus.PENDING),
    ]
    assert nodes[0].labels == ["zone=a"] and nodes[1].taints == ["dedicated=db:NoSchedule"]
    entry = AuditLog.objects.get(action="cluster.create")
    assert entry.cluster == cluster and entry.actor == admin_user and entry.detail == {"nodes": 2}
    # The admin's own history names the cluster too.
    page = admin_client.get(change_url(cluster))
    assert page.status_code == 200


def test_add_page_proposes_an_initial_master_first(admin_client: Any) -> None:
    response = admin_client.get(reverse("admin:clusters_cluster_add"))
    html = response.content.decode()
    assert re.search(r'<option value="initial_master" selected>', html)


def test_node_field_errors_are_shown_next_to_the_field_and_nothing_is_saved(admin_client: Any) -> None:
    data = cluster_post_data(
        name="delta",
        nodes=[
            {"hostname": "d-1", "internal_ip": "10.6.0.11", "role": NodeRole.INITIAL_MASTER},
            {"hostname": "D_2", "internal_ip": "10.6.0.300", "role": NodeRole.WORKER, "labels": "not a label"},
        ],
    )
    response = admin_client.post(reverse("admin:clusters_cluster_add"), data)
    assert response.status_code == 200
    errors = node_form_errors(response, 1)
    assert set(errors) == {"hostname", "internal_ip", "labels"}
    assert node_form_errors(response, 0) == {}
    assert not Cluster.objects.filter(name="delta").exists()


def test_rows_are_checked_against_each_other(admin_client: Any) -> None:
    data = cluster_post_data(
        name="epsilon",
        nodes=[
            {"hostname": "e-1", "internal_ip": "10.7.0.11", "role": NodeRole.INITIAL_MASTER},
            {"hostname": "e-1", "internal_ip": "10.7.0.11", "role": NodeRole.INITIAL_MASTER},
        ],
    )
    response = admin_client.post(reverse("admin:clusters_cluster_add"), data)
    errors = node_form_errors(response, 1)
    assert "already used" in errors["hostname"][0] and "already used" in errors["internal_ip"][0]
    assert errors["role"] == ["A cluster has at most one initial master."]
    assert not Cluster.objects.filter(name="epsilon").exists()


def test_cluster_field_errors_from_the_model(admin_client: Any) -> None:
    data = cluster_post_data(name="Not A Name", service_cidr="10.42.0.0/24", rke2_version="1.31")
    response = admin_client.post(reverse("admin:clusters_cluster_add"), data)
    errors = response.context["adminform"].form.errors
    assert set(errors) >= {"name", "rke2_version", "service_cidr"}


def test_edit_cluster_and_add_and_remove_pending_nodes(admin_client: Any, cluster: Cluster, admin_user: Any) -> None:
    data = cluster_post_data(
        cluster,
        description="edge sites",
        nodes=[{"hostname": "alpha-w3", "internal_ip": "10.0.0.103", "role": "worker"}],
    )
    w2 = cluster.cluster_nodes.get(hostname="alpha-w2")
    index = list(cluster.cluster_nodes.order_by("pk")).index(w2)
    data[f"cluster_nodes-{index}-DELETE"] = "on"
    data["cluster_nodes-0-labels"] = "tier=control"
    response = admin_client.post(change_url(cluster), data)
    assert response.status_code == 302, response.context and [
        f.errors for f in response.context["inline_admin_formsets"][0].formset
    ]
    cluster.refresh_from_db()
    assert cluster.description == "edge sites"
    assert cluster.cluster_nodes.get(hostname="alpha-w3").status == NodeStatus.PENDING
    assert cluster.cluster_nodes.get(hostname="alpha-w2").status == NodeStatus.REMOVED
    assert cluster.cluster_nodes.get(hostname="alpha-s1").labels == ["tier=control"]
    actions = list(AuditLog.objects.filter(cluster=cluster, actor=admin_user).values_list("action", flat=True))
    assert {"cluster.update", "nodes.add", "nodes.mark_for_removal", "nodes.update"} <= set(actions)


def test_errors_raised_by_the_service_on_save_are_shown_on_the_row(admin_client: Any, cluster: Cluster) -> None:
    # The page was loaded; meanwhile another operator added alpha-w3. The form cannot know, the service does.
    data = cluster_post_data(cluster, nodes=[{"hostname": "alpha-w3", "internal_ip": "10.0.0.150", "role": "worker"}])
    from clusters.services.clusters import nodes_add

    nodes_add(cluster=cluster, nodes=[{"hostname": "alpha-w3", "internal_ip": "10.0.0.103", "role": "worker"}])
    response = admin_client.post(change_url(cluster), data)
    assert response.status_code == 200
    errors = node_form_errors(response, 5)
    assert errors == {"hostname": ["A node with this host name already exists in this cluster."]}
    assert cluster.cluster_nodes.filter(hostname="alpha-w3").count() == 1


def test_service_refusal_without_a_field_is_shown_on_the_form(admin_client: Any, cluster: Cluster) -> None:
    make_job(cluster, kind=JobKind.PREFLIGHT)
    data = cluster_post_data(cluster, nodes=[{"hostname": "alpha-w3", "internal_ip": "10.0.0.103", "role": "worker"}])
    response = admin_client.post(change_url(cluster), data)
    assert response.status_code == 200
    assert "while a job is active" in str(response.context["adminform"].form.non_field_errors())
    assert not cluster.cluster_nodes.filter(hostname="alpha-w3").exists()


def test_installed_cluster_freezes_version_critical_values_and_installed_nodes(
    admin_client: Any, installed: Cluster
) -> None:
    response = admin_client.get(change_url(installed))
    form = response.context["adminform"].form
    for field in ("rke2_version", "cni", "cluster_cidr", "service_cidr", "cluster_dns", "cluster_domain"):
        assert field not in form.fields
    formset = response.context["inline_admin_formsets"][0].formset
    # Labels and taints of a running node stay editable: a job applies them to the node.
    frozen = [name for name in NODE_FIELDS if name not in ("labels", "taints")]
    assert all(node_form.fields[name].disabled for node_form in formset.forms for name in frozen)
    assert not any(node_form.fields["labels"].disabled for node_form in formset.forms)
    # An installed node is removed by the removal operation, not by deleting its row.
    data = cluster_post_data(installed)
    for field in ("rke2_version", "cni", "cluster_cidr", "service_cidr", "cluster_dns", "cluster_domain"):
        data.pop(field)
    data["cluster_nodes-4-DELETE"] = "on"
    response = admin_client.post(change_url(installed), data)
    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert "alpha-w2: installed nodes are removed with the “Remove nodes” operation" in str(formset.non_form_errors())
    assert installed.cluster_nodes.get(hostname="alpha-w2").status == NodeStatus.ACTIVE


def test_even_number_of_servers_is_warned_about(admin_client: Any, credential: SSHCredential) -> None:
    cluster = make_cluster(
        "even", servers=2, subnet="10.3.0", registration_address="api.example.com", ssh_credential=credential
    )
    shown = messages_of(admin_client.get(change_url(cluster)))
    assert any("2 servers" in message and "odd number" in message for message in shown)


def test_token_and_kubeconfig_are_never_rendered(admin_client: Any, installed: Cluster) -> None:
    Cluster.objects.filter(pk=installed.pk).update(kubeconfig="")
    installed.kubeconfig = "apiVersion: v1\nkind: Config\nusers: [{name: admin, user: {token: sekrit-kube-token}}]\n"
    installed.save(update_fields=["kubeconfig"])
    token = reveal(installed.token)
    for url in (
        change_url(installed),
        op_url(installed, "previews"),
        reverse("admin:clusters_cluster_changelist"),
        reverse("admin:clusters_cluster_history", args=[installed.pk]),
    ):
        html = admin_client.get(url).content.decode()
        assert token not in html, url
        assert "sekrit-kube-token" not in html, url
    assert "never shown" in admin_client.get(change_url(installed)).content.decode()


def test_previews_show_each_stage_and_node_config(admin_client: Any, cluster: Cluster) -> None:
    response = admin_client.get(op_url(cluster, "previews"))
    assert response.status_code == 200
    html = response.content.decode()
    for stage in ("initial_master", "joining_masters", "workers"):
        assert f'id="stage-{stage}"' in html
    for node in cluster.cluster_nodes.all():
        assert f'id="config-{node.hostname}"' in html
    assert "node-name: alpha-s2" in html
    assert reveal(cluster.token) not in html


def test_kubeconfig_download_needs_the_permission_and_is_audited(
    admin_client: Any, user_with: Any, installed: Cluster, admin_user: Any
) -> None:
    installed.kubeconfig = "apiVersion: v1\nkind: Config\n"
    installed.save(update_fields=["kubeconfig"])
    response = admin_client.get(op_url(installed, "kubeconfig"))
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="alpha-kubeconfig.yaml"'
    assert response.content.decode() == "apiVersion: v1\nkind: Config\n"
    assert (
        AuditLog.objects.filter(action="cluster.kubeconfig.download", actor=admin_user, cluster=installed).count() == 1
    )
    assert 'data-operation="kubeconfig"' in admin_client.get(change_url(installed)).content.decode()

    viewer = user_with("view_cluster", "view_node")
    assert viewer.get(op_url(installed, "kubeconfig")).status_code == 403
    assert 'data-operation="kubeconfig"' not in viewer.get(change_url(installed)).content.decode()


def test_kubeconfig_not_fetched_yet_is_a_message(admin_client: Any, cluster: Cluster) -> None:
    shown = follow_messages(admin_client, admin_client.get(op_url(cluster, "kubeconfig")))
    assert any("no kubeconfig yet" in message for message in shown)


def test_job_history_on_the_cluster_page(admin_client: Any, cluster: Cluster) -> None:
    done = make_job(cluster, status=JobStatus.FAILED, explanation="Stage workers failed on alpha-w1.")
    active = make_job(cluster, kind=JobKind.PREFLIGHT, status=JobStatus.RUNNING)
    html = admin_client.get(change_url(cluster)).content.decode()
    assert f'data-job-id="{done.pk}"' in html and f'data-job-id="{active.pk}"' in html
    assert "Stage workers failed on alpha-w1." in html
    assert "Active job:" in html and 'data-operation="cancel"' in html


def test_delete_cluster_goes_through_the_service(admin_client: Any, cluster: Cluster) -> None:
    job = make_job(cluster, kind=JobKind.PREFLIGHT)
    JobEvent.objects.create(job=job, counter=1, event="verbose", stdout="x")
    url = reverse("admin:clusters_cluster_delete", args=[cluster.pk])
    page = admin_client.get(url)
    assert page.status_code == 200 and "1 jobs (with their events and host summaries)" in page.content.decode()
    refused = admin_client.post(url, {"post": "yes"})
    assert refused.status_code == 302
    assert refused["Location"] == reverse("admin:clusters_cluster_change", args=[cluster.pk])
    shown = follow_messages(admin_client, refused)
    assert any(message.startswith("The cluster was not deleted") and "active job" in message for message in shown), (
        shown
    )
    assert Cluster.objects.filter(pk=cluster.pk).exists()
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCESSFUL)
    assert admin_client.post(url, {"post": "yes"}).status_code == 302
    assert not Cluster.objects.filter(pk=cluster.pk).exists()
    assert AuditLog.objects.filter(action="cluster.delete", object_repr="alpha").exists()


# --- operations ------------------------------------------------------------------------------------------------------


def test_preflight_from_the_page_and_conflicts_from_the_list(admin_client: Any, cluster: Cluster) -> None:
    assert admin_client.get(op_url(cluster, "preflight")).status_code == 405
    response = admin_client.post(op_url(cluster, "preflight"))
    job = Job.objects.get(cluster=cluster)
    assert job.kind == JobKind.PREFLIGHT and job.status == JobStatus.PENDING and job.stages == ["preflight"]
    assert response["Location"] == reverse("admin:clusters_job_change", args=[job.pk])

    response = admin_client.post(
        reverse("admin:clusters_cluster_changelist"), {"action": "action_preflight", "_selected_action": [cluster.pk]}
    )
    shown = follow_messages(admin_client, response)
    assert any("already has an active job" in message and "Follow the active job" in message for message in shown)
    assert Job.objects.filter(cluster=cluster).count() == 1


def test_preflight_action_for_several_clusters(admin_client: Any, cluster: Cluster) -> None:
    other = make_cluster("beta", servers=1, subnet="10.1.0")  # no SSH credential
    response = admin_client.post(
        reverse("admin:clusters_cluster_changelist"),
        {"action": "action_preflight", "_selected_action": [cluster.pk, other.pk]},
    )
    shown = follow_messages(admin_client, response)
    assert any(message.startswith("alpha:") and "requested" in message for message in shown)
    assert any(message.startswith("beta:") and "no SSH credential" in message for message in shown)


def test_install_page_shows_the_plan_and_starts_the_install(
    admin_client: Any, cluster: Cluster, admin_user: Any
) -> None:
    page = admin_client.get(op_url(cluster, "install"))
    html = page.content.decode()
    assert "reachability → initial_master → joining_masters → workers → all" in html
    assert "resume" not in page.context["form"].fields
    response = admin_client.post(op_url(cluster, "install"), {})
    job = Job.objects.get(cluster=cluster, kind=JobKind.INSTALL)
    assert response["Location"] == reverse("admin:clusters_job_change", args=[job.pk])
    assert job.params == {"resume": False, "check_reachability": True} and job.requested_by == admin_user


def test_install_resumes_a_failed_install(admin_client: Any, cluster: Cluster) -> None:
    failed = make_job(cluster, status=JobStatus.FAILED, stage="workers", stages_completed=2, started_at=timezone.now())
    page = admin_client.get(op_url(cluster, "install"))
    assert "resume" in page.context["form"].fields
    assert "reachability → workers → all" in page.content.decode()
    admin_client.post(op_url(cluster, "install"), {"resume": "on"})
    job = Job.objects.exclude(pk=failed.pk).get(cluster=cluster)
    assert job.stages == ["reachability", "workers", "all"] and job.resume_of == failed
    assert job.params["check_reachability"] is True


def test_install_without_the_reachability_check(admin_client: Any, cluster: Cluster) -> None:
    admin_client.post(op_url(cluster, "install"), {"skip_reachability": "on"})
    job = Job.objects.get(cluster=cluster)
    assert job.stages == ["initial_master", "joining_masters", "workers", "all"]
    assert job.params == {"resume": False, "check_reachability": False}


def test_install_refused_is_a_message(admin_client: Any) -> None:
    cluster = make_cluster("bare", servers=1, subnet="10.2.0")
    response = admin_client.post(op_url(cluster, "install"), {})
    assert response.status_code == 200
    assert any("no SSH credential" in message for message in messages_of(response))
    assert not Job.objects.filter(cluster=cluster).exists()


def _add_nodes_data(rows: list[dict[str, Any]], *, start_job: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "nodes-TOTAL_FORMS": len(rows),
        "nodes-INITIAL_FORMS": 0,
        "nodes-MIN_NUM_FORMS": 0,
        "nodes-MAX_NUM_FORMS": 100,
    }
    if start_job:
        data["start_job"] = "on"
    for index, row in enumerate(rows):
        for key, value in {"labels": "", "taints": "", "node_vars": "{}", "role": "worker", **row}.items():
            data[f"nodes-{index}-{key}"] = value
    return data


def test_add_nodes_to_an_installed_cluster_starts_a_scale_out(admin_client: Any, installed: Cluster) -> None:
    data = _add_nodes_data([{"hostname": "alpha-w3", "internal_ip": "10.0.0.103"}], start_job=True)
    response = admin_client.post(op_url(installed, "add_nodes"), data)
    job = Job.objects.get(cluster=installed)
    assert response["Location"] == reverse("admin:clusters_job_change", args=[job.pk])
    assert job.kind == JobKind.SCALE_ADD and job.stages == ["reachability", "workers"]
    assert installed.cluster_nodes.get(hostname="alpha-w3").status == NodeStatus.PENDING


def test_add_nodes_errors_are_shown_on_their_rows(admin_client: Any, installed: Cluster) -> None:
    data = _add_nodes_data(
        [
            {"hostname": "alpha-w3", "internal_ip": "10.0.0.103"},
            {"hostname": "alpha-w4", "internal_ip": "10.0.0.101"},  # alpha-w1's address
        ],
        start_job=True,
    )
    response = admin_client.post(op_url(installed, "add_nodes"), data)
    assert response.status_code == 200
    formset = response.context["formset"]
    assert formset.forms[0].errors == {}
    assert formset.forms[1].errors == {"internal_ip": ["A node with this internal IP already exists in this cluster."]}
    assert not Job.objects.filter(cluster=installed).exists()
    assert not installed.cluster_nodes.filter(hostname="alpha-w3").exists()
    bad = admin_client.post(
        op_url(installed, "add_nodes"), _add_nodes_data([{"hostname": "x", "internal_ip": "nope"}], start_job=True)
    )
    assert "internal_ip" in bad.context["formset"].forms[0].errors


def test_add_nodes_before_install_only_adds_them(admin_client: Any, cluster: Cluster) -> None:
    data = _add_nodes_data([{"hostname": "alpha-w3", "internal_ip": "10.0.0.103"}], start_job=True)
    shown = follow_messages(admin_client, admin_client.post(op_url(cluster, "add_nodes"), data))
    assert any("Added alpha-w3" in message for message in shown)
    assert not Job.objects.filter(cluster=cluster).exists()


def test_remove_nodes_confirmation_names_nodes_and_warns_about_quorum(admin_client: Any, installed: Cluster) -> None:
    select = admin_client.get(op_url(installed, "remove_nodes"))
    assert [node.hostname for node in select.context["nodes"]] == [
        "alpha-s1",
        "alpha-s2",
        "alpha-s3",
        "alpha-w1",
        "alpha-w2",
    ]
    page = admin_client.get(op_url(installed, "remove_nodes"), {"hostnames": ["alpha-s3"]})
    html = page.content.decode()
    assert 'data-hostname="alpha-s3"' in html
    assert any("from 3 to 2 servers" in warning for warning in page.context["warnings"])
    assert any("tolerates 0 failures" in warning and "even number" in warning for warning in page.context["warnings"])
    response = admin_client.post(op_url(installed, "remove_nodes"), {"hostnames": ["alpha-s3"], "ungraceful": "on"})
    job = Job.objects.get(cluster=installed)
    assert response["Location"] == reverse("admin:clusters_job_change", args=[job.pk])
    assert job.kind == JobKind.SCALE_REMOVE and job.params == {"ungraceful": True, "snapshot": False}
    assert installed.cluster_nodes.get(hostname="alpha-s3").status == NodeStatus.DRAINING


def test_remove_two_servers_is_refused(admin_client: Any, installed: Cluster) -> None:
    response = admin_client.post(op_url(installed, "remove_nodes"), {"hostnames": ["alpha-s2", "alpha-s3"]})
    assert response.status_code == 200
    assert any("one server at a time" in message for message in messages_of(response))
    assert not installed.cluster_nodes.filter(status=NodeStatus.DRAINING).exists()
    assert not Job.objects.filter(cluster=installed).exists()


def test_remove_pending_node_needs_no_job(admin_client: Any, cluster: Cluster) -> None:
    shown = follow_messages(
        admin_client, admin_client.post(op_url(cluster, "remove_nodes"), {"hostnames": ["alpha-w2"]})
    )
    assert any("never installed" in message for message in shown)
    assert cluster.cluster_nodes.get(hostname="alpha-w2").status == NodeStatus.REMOVED
    assert not Job.objects.filter(cluster=cluster).exists()


def test_remove_action_on_the_node_list(admin_client: Any, cluster: Cluster) -> None:
    nodes = list(cluster.cluster_nodes.filter(hostname__in=["alpha-w1", "alpha-w2"]))
    response = admin_client.post(
        reverse("admin:clusters_node_changelist"),
        {"action": "action_remove", "_selected_action": [n.pk for n in nodes]},
    )
    assert response["Location"] == op_url(cluster, "remove_nodes") + "?hostnames=alpha-w1&hostnames=alpha-w2"
    other = make_cluster("beta", servers=1, subnet="10.1.0").cluster_nodes.get()
    response = admin_client.post(
        reverse("admin:clusters_node_changelist"),
        {"action": "action_remove", "_selected_action": [nodes[0].pk, other.pk]},
    )
    assert any("exactly one cluster" in message for message in follow_messages(admin_client, response))


def test_upgrade_form(admin_client: Any, installed: Cluster) -> None:
    bad = admin_client.post(op_url(installed, "upgrade"), {"target_version": "1.32"})
    assert "target_version" in bad.context["form"].errors
    older = admin_client.post(op_url(installed, "upgrade"), {"target_version": "v1.30.1+rke2r1"})
    assert "downgrades are refused" in str(older.context["form"].errors["target_version"])
    response = admin_client.post(
        op_url(installed, "upgrade"), {"target_version": "v1.32.1+rke2r1", "workers_batch": "25%"}
    )
    job = Job.objects.get(cluster=installed)
    assert response["Location"] == reverse("admin:clusters_job_change", args=[job.pk])
    assert job.kind == JobKind.UPGRADE
    assert job.params == {
        "target_version": "v1.32.1+rke2r1",
        "allow_downgrade": False,
        "allow_minor_skip": False,
        "snapshot": False,
        "workers_batch": "25%",
    }


def test_uninstall_needs_the_cluster_name_typed(admin_client: Any, installed: Cluster) -> None:
    page = admin_client.get(op_url(installed, "uninstall"))
    assert "Uninstall removes RKE2" in page.content.decode()
    wrong = admin_client.post(op_url(installed, "uninstall"), {"confirm": "alpha2"})
    assert wrong.status_code == 200
    assert "Type the cluster's name" in wrong.context["form"].errors["confirm"][0]
    assert not Job.objects.filter(cluster=installed).exists()
    admin_client.post(op_url(installed, "uninstall"), {"confirm": "alpha"})
    job = Job.objects.get(cluster=installed)
    assert job.kind == JobKind.UNINSTALL and "confirm" not in job.params


def test_upgrade_and_uninstall_actions_need_exactly_one_cluster(admin_client: Any, cluster: Cluster) -> None:
    other = make_cluster("beta", servers=1, subnet="10.1.0")
    url = reverse("admin:clusters_cluster_changelist")
    one = admin_client.post(url, {"action": "action_upgrade", "_selected_action": [cluster.pk]})
    assert one["Location"] == op_url(cluster, "upgrade")
    two = admin_client.post(url, {"action": "action_uninstall", "_selected_action": [cluster.pk, other.pk]})
    assert any("exactly one cluster" in message for message in follow_messages(admin_client, two))


def test_cancel_the_running_job_from_the_cluster_page(admin_client: Any, cluster: Cluster, admin_user: Any) -> None:
    job = make_job(cluster, kind=JobKind.PREFLIGHT, status=JobStatus.RUNNING)
    response = admin_client.post(op_url(cluster, "cancel_job"))
    assert response["Location"] == reverse("admin:clusters_job_change", args=[job.pk])
    job.refresh_from_db()
    assert job.cancel_requested and job.cancel_requested_by == admin_user and job.status == JobStatus.RUNNING
    Job.objects.filter(pk=job.pk).update(status=JobStatus.CANCELED)
    shown = follow_messages(admin_client, admin_client.post(op_url(cluster, "cancel_job")))
    assert any("no active job" in message for message in shown)


def test_cancel_from_the_job_page(admin_client: Any, cluster: Cluster, django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks(execute=False):
        job = job_request(cluster=cluster, kind=JobKind.PREFLIGHT)
    url = reverse("admin:clusters_job_cancel", args=[job.pk])
    shown = follow_messages(admin_client, admin_client.post(url))
    assert any("canceled before it started" in message for message in shown)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELED
    shown = follow_messages(admin_client, admin_client.post(url))
    assert any("already finished" in message for message in shown)


def test_operations_need_permissions(user_with: Any, installed: Cluster) -> None:
    viewer = user_with("view_cluster", "view_node", "view_job")
    page = viewer.get(change_url(installed))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-operation="' not in html.replace('data-operation="previews"', "")
    for name in ("install", "add_nodes", "remove_nodes", "upgrade", "uninstall"):
        assert viewer.get(op_url(installed, name)).status_code == 403, name
    for name in ("preflight", "cancel_job"):
        assert viewer.post(op_url(installed, name)).status_code == 403, name
    assert viewer.get(op_url(installed, "previews")).status_code == 200
    assert not Job.objects.exists()


# --- job page and events -------------------------------------------------------------------------------------------


def test_job_page_is_read_only_and_configures_the_live_log(admin_client: Any, cluster: Cluster) -> None:
    job = make_job(
        cluster, status=JobStatus.RUNNING, stage="joining_masters", stages_completed=1, started_at=timezone.now()
    )
    response = admin_client.get(reverse("admin:clusters_job_change", args=[job.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    config = json.loads(
        re.search(r'<script id="job-log-config" type="application/json">(.*?)</script>', html, re.S).group(1)
    )  # type: ignore[union-attr]
    assert config["eventsUrl"] == f"/api/jobs/{job.pk}/events/"
    assert config["stdoutUrl"].startswith(f"/api/jobs/{job.pk}/stdout/")
    assert config["maxLines"] == 2000 and config["pageSize"] == 500
    assert config["job"]["stages"] == job.stages and config["job"]["stages_completed"] == 1
    assert 'id="job-cancel"' in html
    assert 'name="_save"' not in html
    assert admin_client.get(reverse("admin:clusters_job_add")).status_code == 403


def test_job_list_and_cancel_action(admin_client: Any, cluster: Cluster) -> None:
    running = make_job(cluster, kind=JobKind.PREFLIGHT, status=JobStatus.RUNNING)
    response = admin_client.get(reverse("admin:clusters_job_changelist"), {"cluster__id__exact": cluster.pk})
    assert [job.pk for job in response.context["cl"].result_list] == [running.pk]
    admin_client.post(
        reverse("admin:clusters_job_changelist"), {"action": "action_cancel", "_selected_action": [running.pk]}
    )
    running.refresh_from_db()
    assert running.cancel_requested


def test_job_events_are_read_only(admin_client: Any, cluster: Cluster) -> None:
    job = make_job(cluster)
    event = JobEvent.objects.create(job=job, counter=1, event="runner_on_ok", host_name="alpha-s1", stdout="ok")
    assert admin_client.get(reverse("admin:clusters_jobevent_changelist")).status_code == 200
    page = admin_client.get(reverse("admin:clusters_jobevent_change", args=[event.pk]))
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert (
        admin_client.post(reverse("admin:clusters_jobevent_change", args=[event.pk]), {"stdout": "x"}).status_code
        == 403
    )
    assert admin_client.get(reverse("admin:clusters_jobevent_add")).status_code == 403
    assert (
        admin_client.post(reverse("admin:clusters_jobevent_delete", args=[event.pk]), {"post": "yes"}).status_code
        == 403
    )
    event.refresh_from_db()
    assert event.stdout == "ok"


# --- SSH credentials -----------------------------------------------------------------------------------------------


def test_credential_secrets_are_write_only(admin_client: Any, admin_user: Any) -> None:
    key = ssh_private_key(passphrase="s3cret-phrase")
    add = reverse("admin:clusters_sshcredential_add")
    page = admin_client.get(add).content.decode()
    assert re.search(r'<input type="password" name="passphrase"', page)
    assert 'class="rke2-secret-input"' in page or "rke2-secret-input" in page

    wrong = admin_client.post(
        add,
        {"name": "ops", "username": "root", "port": 22, "private_key": key, "passphrase": "nope", "known_hosts": ""},
    )
    assert wrong.status_code == 200
    assert "passphrase" in wrong.context["adminform"].form.errors
    html = wrong.content.decode()
    assert "PRIVATE KEY" not in html and "nope" not in html

    response = admin_client.post(
        add,
        {
            "name": "ops",
            "username": "root",
            "port": 22,
            "private_key": key,
            "passphrase": "s3cret-phrase",
            "known_hosts": "",
        },
    )
    assert response.status_code == 302
    credential = SSHCredential.objects.get(name="ops")
    assert reveal(credential.private_key).strip() == key.strip() and reveal(credential.passphrase) == "s3cret-phrase"
    assert credential.public_key_fingerprint.startswith("SHA256:")
    assert AuditLog.objects.filter(action="credential.create", actor=admin_user).exists()

    change = reverse("admin:clusters_sshcredential_change", args=[credential.pk])
    html = admin_client.get(change).content.decode()
    assert "PRIVATE KEY" not in html and "s3cret-phrase" not in html
    assert credential.public_key_fingerprint in html

    # Leaving the key empty keeps it (and its passphrase).
    response = admin_client.post(
        change,
        {
            "name": "ops",
            "username": "deploy",
            "port": 2222,
            "become": "on",
            "private_key": "",
            "passphrase": "",
            "known_hosts": "",
        },
    )
    assert response.status_code == 302
    credential.refresh_from_db()
    assert credential.username == "deploy" and credential.port == 2222 and credential.become
    assert reveal(credential.private_key).strip() == key.strip() and reveal(credential.passphrase) == "s3cret-phrase"
    assert AuditLog.objects.get(action="credential.update").detail["fields"] == ["become", "port", "username"]

    alone = admin_client.post(
        change,
        {"name": "ops", "username": "deploy", "port": 2222, "private_key": "", "passphrase": "x", "known_hosts": ""},
    )
    assert "passphrase" in alone.context["adminform"].form.errors


def test_credential_in_use_is_not_deleted(admin_client: Any, cluster: Cluster, credential: SSHCredential) -> None:
    url = reverse("admin:clusters_sshcredential_delete", args=[credential.pk])
    page = admin_client.get(url)
    assert page.status_code == 200 and "alpha" in page.content.decode()
    # Django's own check of protected objects refuses first, with the page that names them.
    refused = admin_client.post(url, {"post": "yes"})
    assert refused.status_code == 200 and "alpha" in refused.content.decode()
    assert SSHCredential.objects.filter(pk=credential.pk).exists()
