"""Adopting imported clusters: the jobs refused until then, recording what the adopt playbook found, the keys kept
on every render, and the differences shown in the API and the admin. The playbook itself runs on test hosts in
tests/ansible/test_adopt.py; here its findings are given as it writes them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml
from django.core.exceptions import ValidationError
from django.db import connection
from django.urls import reverse

from clusters.choices import JobKind, NodeStatus
from clusters.engine.redaction import Redactor
from clusters.engine.runner import RunOutcome
from clusters.exceptions import InvalidState
from clusters.fields import MASK, reveal
from clusters.models import AuditLog, Cluster, Node
from clusters.services.adoption import (
    AdoptionError,
    adoption_differences,
    adoption_finish,
    adoption_record,
    adoption_workdir,
    differences_text,
    kept_config_of,
    merge_config,
    token_password,
)
from clusters.services.jobs import plan_stages
from inventory.configs import render_node_config

from .factories import make_cluster, make_credential, mark_installed

pytestmark = pytest.mark.django_db

SERVER_TOKEN = "K10" + "ab" * 32 + "::server:" + "handmade-secret-0123456789"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def finding(rke2_type: str, files: dict[str, dict], *, token: str = "", version: str = "v1.31.4+rke2r1") -> dict:
    """One node's findings as ansible/roles/rke2_adopt writes them."""
    return {
        "type": rke2_type,
        "version": version,
        "bin_dir": "/usr/local/bin",
        "method": "tar",
        "rpm_packages": [],
        "data_dir": merge_config(files).get("data-dir", "/var/lib/rancher/rke2"),
        "files": {name: b64(yaml.safe_dump(document)) for name, document in files.items()},
        "token": b64(token) if token else "",
    }


@pytest.fixture
def imported() -> Cluster:
    """An installed two-node cluster as the import leaves it: needing adoption, with a placeholder token."""
    cluster = mark_installed(make_cluster("legacy", servers=1, workers=1, ssh_credential=make_credential()))
    Cluster.objects.filter(pk=cluster.pk).update(adoption_required=True)
    cluster.refresh_from_db()
    return cluster


def findings_for(cluster: Cluster, *, server_files=None, agent_files=None, token=SERVER_TOKEN) -> dict:
    server, agent = list(cluster.cluster_nodes.order_by("pk"))[:2]
    server_files = server_files or {
        "config.yaml": {
            "token": "handmade-secret-0123456789",
            "node-name": server.hostname,
            "data-dir": "/srv/rke2",
            "kubelet-arg": ["max-pods=150"],
            "cni": "calico",
            "tls-san": ["api.example.com", server.internal_ip],
            "node-label": ["zone=a"],
        },
        "config.yaml.d/50-audit.yaml": {"kube-apiserver-arg+": ["audit-log-maxage=30"]},
    }
    agent_files = agent_files or {
        "config.yaml": {"server": f"https://{server.internal_ip}:9345", "token": "handmade-secret-0123456789"}
    }
    return {
        server.hostname: finding("server", server_files, token=token),
        agent.hostname: finding("agent", agent_files),
    }


def test_jobs_that_rewrite_the_configuration_are_refused_until_adopted(imported):
    for kind, params in (
        (JobKind.INSTALL, {}),
        (JobKind.UPGRADE, {"target_version": "v1.32.1+rke2r1"}),
        (JobKind.SCALE_ADD, {}),
        (JobKind.SCALE_REMOVE, {}),
    ):
        with pytest.raises(InvalidState, match="not adopted yet.*Run the adopt job first"):
            plan_stages(imported, kind, params)
    assert plan_stages(imported, JobKind.ADOPT, {}) == ["adopt"]
    assert plan_stages(imported, JobKind.PREFLIGHT, {}) == ["preflight"]
    assert plan_stages(imported, JobKind.HEALTH, {}) == ["health"]
    imported.adoption_required = False
    assert plan_stages(imported, JobKind.UPGRADE, {"target_version": "v1.32.1+rke2r1"})[-1:] == ["upgrade"]


def test_adopt_needs_an_installed_cluster_with_an_active_server():
    cluster = make_cluster("fresh", ssh_credential=make_credential())
    with pytest.raises(InvalidState, match="not installed yet"):
        plan_stages(cluster, JobKind.ADOPT, {})
    mark_installed(cluster)
    cluster.cluster_nodes.update(status=NodeStatus.FAILED)
    with pytest.raises(InvalidState, match="no active server"):
        plan_stages(cluster, JobKind.ADOPT, {})


def test_adoption_records_token_kept_keys_and_fields(imported):
    server, agent = imported.cluster_nodes.order_by("pk")
    report = adoption_record(imported.pk, None, findings_for(imported))

    imported.refresh_from_db()
    assert not imported.adoption_required
    assert reveal(imported.token) == SERVER_TOKEN
    assert imported.cni == "calico"  # taken from what the servers run
    assert imported.tls_san == ["api.example.com"]  # the server's own addresses are added by the portal anyway
    assert "The cluster token was replaced by the one the servers use." in report["changes"]
    assert "cni is calico on the servers (was canal)." in report["changes"]
    assert imported.adoption_report["nodes"][server.hostname]["data_dir"] == "/srv/rke2"
    assert imported.adoption_report["nodes"][server.hostname]["kept_keys"] == ["data-dir", "kubelet-arg"]
    server.refresh_from_db()
    agent.refresh_from_db()
    assert kept_config_of(server) == {"data-dir": "/srv/rke2", "kubelet-arg": ["max-pods=150"]}
    assert kept_config_of(agent) == {}
    assert server.labels == ["zone=a"]
    assert AuditLog.objects.filter(action="cluster.adopt", cluster=imported).count() == 1
    # Encrypted at rest: neither the token nor the files are readable in the database.
    with connection.cursor() as cursor:
        cursor.execute("SELECT running_config, kept_config FROM clusters_node WHERE id = %s", [server.pk])
        running, kept = cursor.fetchone()
    assert "handmade-secret" not in running and "max-pods" not in running and "max-pods" not in kept
    assert "handmade-secret" not in json.dumps(imported.adoption_report)


def test_the_next_render_keeps_the_unmanaged_keys(imported):
    adoption_record(imported.pk, None, findings_for(imported))
    server = imported.cluster_nodes.order_by("pk").first()
    imported.refresh_from_db()
    rendered = yaml.safe_load(render_node_config(server, reveal_secrets=True))
    assert rendered["data-dir"] == "/srv/rke2" and rendered["kubelet-arg"] == ["max-pods=150"]
    assert rendered["token"] == SERVER_TOKEN and rendered["cni"] == "calico"
    assert rendered["node-label"] == ["zone=a"]
    # The cluster's and the node's own extra config still win over kept keys.
    Node.objects.filter(pk=server.pk).update(node_vars={"kubelet-arg": ["max-pods=99"]})
    server.refresh_from_db()
    assert yaml.safe_load(render_node_config(server))["kubelet-arg"] == ["max-pods=99"]


def test_differences_between_what_runs_and_what_the_portal_would_write(imported):
    server, agent = imported.cluster_nodes.order_by("pk")
    assert [(item.hostname, item.read) for item in adoption_differences(imported)] == [
        (server.hostname, False),
        (agent.hostname, False),
    ]
    adoption_record(imported.pk, None, findings_for(imported))
    imported.refresh_from_db()
    differences = {item.hostname: item for item in adoption_differences(imported)}
    on_server = {d["key"]: d for d in differences[server.hostname].differences}
    # The short token the node's file holds and the full token stored are the same secret: no difference.
    assert "token" not in on_server
    # Keys only the portal writes; the drop-in's appended list is on both sides.
    assert on_server["node-ip"]["change"] == "added"
    assert on_server["write-kubeconfig-mode"] == {
        "key": "write-kubeconfig-mode",
        "change": "added",
        "running": None,
        "portal": "0600",
    }
    assert "kube-apiserver-arg" not in on_server
    assert not [d for d in differences[server.hostname].differences if d["change"] == "removed"]
    # A key the portal would drop is shown as removed; a secret is masked on both sides.
    running = json.loads(reveal(Node.objects.get(pk=agent.pk).running_config))
    running["config.yaml"].update({"agent-token": "some-agent-secret", "token": "another-secret"})
    Node.objects.filter(pk=agent.pk).update(running_config=json.dumps(running))
    on_agent = {d["key"]: d for d in adoption_differences(imported)[1].differences}
    assert on_agent["agent-token"] == {"key": "agent-token", "change": "removed", "running": MASK, "portal": None}
    assert on_agent["token"] == {"key": "token", "change": "changed", "running": MASK, "portal": MASK}
    text = differences_text(adoption_differences(imported))
    assert "some-agent-secret" not in text and "another-secret" not in text
    assert f"{agent.hostname}:\n" in text and "  - agent-token:" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("tokens", "the servers keep different cluster tokens"),
        ("no-token", "no server reported the cluster token"),
        ("secret-key", "holds credentials (etcd-s3-secret-key)"),
        ("missing", "no findings for"),
        ("bad-yaml", "is not valid YAML (line 1)"),
        ("cni", "the servers run cni multus, canal"),
    ],
)
def test_findings_that_cannot_be_recorded_change_nothing(imported, change, message):
    findings = findings_for(imported)
    server, agent = imported.cluster_nodes.order_by("pk")
    if change == "tokens":
        make_cluster("x")  # unrelated
        extra = {"hostname": "m2", "internal_ip": "10.0.0.12", "role": "server"}
        from clusters.services.clusters import nodes_add

        Cluster.objects.filter(pk=imported.pk).update(adoption_required=False)
        nodes_add(cluster=imported, nodes=[extra])
        Node.objects.filter(cluster=imported, hostname="m2").update(status=NodeStatus.ACTIVE)
        Cluster.objects.filter(pk=imported.pk).update(adoption_required=True)
        findings["m2"] = finding("server", {"config.yaml": {}}, token="K10cd::server:other-secret-value")
    elif change == "no-token":
        findings[server.hostname]["token"] = ""
    elif change == "secret-key":
        findings[server.hostname]["files"]["config.yaml"] = b64(yaml.safe_dump({"etcd-s3-secret-key": "s3cr3t"}))
    elif change == "missing":
        del findings[agent.hostname]
    elif change == "bad-yaml":
        findings[agent.hostname]["files"]["config.yaml"] = b64("token: [unclosed")
    elif change == "cni":
        findings[server.hostname]["files"]["config.yaml"] = b64(yaml.safe_dump({"cni": ["multus", "canal"]}))
    before = reveal(Cluster.objects.get(pk=imported.pk).token)
    with pytest.raises(AdoptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        adoption_record(imported.pk, None, findings)
    imported.refresh_from_db()
    assert imported.adoption_required and reveal(imported.token) == before
    assert not any(reveal(node.running_config) for node in imported.cluster_nodes.all())


def test_finish_reads_and_removes_the_findings_folder(imported, settings, tmp_path):
    settings.JOBS_WORK_DIR = tmp_path
    folder = adoption_workdir(7)
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    for host, data in findings_for(imported).items():
        (folder / f"{host}.json").write_text(json.dumps(data))
    redactor = Redactor([])
    outcome = adoption_finish(imported, None, folder, RunOutcome(status="successful", rc=0), redactor)
    assert outcome.status == "successful" and outcome.explanation.startswith("Adopted: ")
    assert not folder.exists()
    assert redactor.text(f"x {SERVER_TOKEN} y") != f"x {SERVER_TOKEN} y"  # the token is masked from now on

    # A failed run records nothing; a bad folder fails the stage with the reason; both remove the folder.
    folder = adoption_workdir(8)
    outcome = adoption_finish(imported, None, folder, RunOutcome(status="failed", rc=2), Redactor([]))
    assert outcome.status == "failed" and not folder.exists()
    folder = adoption_workdir(9)
    outcome = adoption_finish(imported, None, folder, RunOutcome(status="successful", rc=0), Redactor([]))
    assert outcome.status == "failed" and outcome.explanation.startswith("Not adopted: no findings for")
    assert not Path(folder).exists()


def test_merge_follows_rke2_and_token_password():
    files = {
        "config.yaml.d/20-b.yaml": {"kubelet-arg+": ["b=2"], "debug": True},
        "config.yaml": {"kubelet-arg": ["a=1"], "debug": False, "node-label": "x=1,y=2"},
        "config.yaml.d/10-a.yaml": {"node-label+": ["z=3"]},
    }
    assert merge_config(files) == {"kubelet-arg": ["a=1", "b=2"], "debug": True, "node-label": ["x=1", "y=2", "z=3"]}
    assert token_password("K10abc::server:pw") == "pw" and token_password("pw") == "pw"
    assert token_password("K10abc::pw") == "pw"


def test_api_shows_the_adoption_state_and_differences(imported, client):
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.create_superuser("root", password="pw")
    client.force_login(admin)
    detail = client.get(reverse("clusters-api:cluster-detail", args=[imported.pk]))
    assert detail.status_code == 200 and detail.json()["adoption_required"] is True
    url = reverse("clusters-api:cluster-adoption", args=[imported.pk])
    body = client.get(url).json()
    assert body["adoption_required"] is True and [node["read"] for node in body["nodes"]] == [False, False]
    adoption_record(imported.pk, None, findings_for(imported))
    body = client.get(url).json()
    assert body["adoption_required"] is False and body["report"]["changes"]
    server = body["nodes"][0]
    assert server["read"] and any(d["key"] == "node-ip" and d["change"] == "added" for d in server["differences"])
    assert "handmade-secret" not in json.dumps(body)
    assert client.post(url).status_code == 405  # read-only
    # The admin page shows the same comparison.
    page = client.get(reverse("admin:clusters_cluster_change", args=[imported.pk]))
    assert page.status_code == 200
    assert "what runs vs what the portal would write" in page.content.decode().lower()
    assert "+ node-ip:" in page.content.decode()
    assert "handmade-secret" not in page.content.decode()


def test_validation_of_kept_config_is_not_required_for_what_runs(imported):
    """Kept keys are what already runs: stored even when the portal would refuse them as extra config."""
    files = findings_for(imported)
    server = imported.cluster_nodes.order_by("pk").first()
    files[server.hostname]["files"]["config.yaml"] = b64(
        yaml.safe_dump({"write-kubeconfig-mode": "0644", "kubelet-arg": ["max-pods=150"]})
    )
    with pytest.raises(ValidationError):
        Node(node_vars={"write-kubeconfig-mode": "0644"}).clean_fields(exclude=["cluster", "hostname", "internal_ip"])
    adoption_record(imported.pk, None, files)
    server.refresh_from_db()
    assert kept_config_of(server)["write-kubeconfig-mode"] == "0644"


def test_keys_the_portal_writes_itself_are_not_kept(imported):
    """On nodes whose config.yaml the portal wrote, its own defaults and extra config stay the portal's."""
    Cluster.objects.filter(pk=imported.pk).update(cluster_vars={"etcd-snapshot-retention": 7})
    findings = findings_for(imported)
    server = imported.cluster_nodes.order_by("pk").first()
    findings[server.hostname]["files"]["config.yaml"] = b64(
        yaml.safe_dump({"write-kubeconfig-mode": "0600", "etcd-snapshot-retention": 7, "profile": "cis"})
    )
    adoption_record(imported.pk, None, findings)
    server.refresh_from_db()
    assert kept_config_of(server) == {"profile": "cis"}


def test_only_running_nodes_are_read(imported):
    """Pending nodes were never installed and failed ones are installed again by the next scale-out: the adopt job
    reads the active nodes only, and the others are listed as not read."""
    from clusters.services.adoption import adoption_node_ids
    from clusters.services.clusters import nodes_add

    Cluster.objects.filter(pk=imported.pk).update(adoption_required=False)
    pending, failed = nodes_add(
        cluster=imported,
        nodes=[
            {"hostname": "later", "internal_ip": "10.0.0.201", "role": "agent"},
            {"hostname": "broken", "internal_ip": "10.0.0.202", "role": "agent"},
        ],
    )
    Node.objects.filter(pk=failed.pk).update(status=NodeStatus.FAILED)
    Cluster.objects.filter(pk=imported.pk).update(adoption_required=True)
    active = list(imported.cluster_nodes.filter(status=NodeStatus.ACTIVE).order_by("pk").values_list("pk", flat=True))
    assert adoption_node_ids(imported) == active
    adoption_record(imported.pk, None, findings_for(imported))
    imported.refresh_from_db()
    assert not imported.adoption_required
    read = {item.hostname: item.read for item in adoption_differences(imported)}
    assert read["later"] is False and read["broken"] is False


def test_the_api_refuses_an_upgrade_before_the_adoption(imported, client):
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_superuser("root", password="pw"))
    response = client.post(
        reverse("clusters-api:cluster-upgrade", args=[imported.pk]),
        {"target_version": "v1.32.1+rke2r1"},
        content_type="application/json",
    )
    assert response.status_code == 409
    assert "Run the adopt job first" in response.json()["message"]
    assert not imported.jobs.exists()
