"""Who may call what: anonymous, a user without groups, viewers, operators, kubeconfig downloaders, superusers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from clusters.choices import JobStatus
from clusters.models import HostKey

from .conftest import make_job

pytestmark = pytest.mark.django_db

READ, CLUSTER_READ, WRITE, KUBECONFIG = "read", "cluster-read", "write", "kubeconfig"
VERSION = "v1.31.4+rke2r1"


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: Callable[[dict[str, Any]], str]
    kind: str
    payload: dict[str, Any] | None = None


ENDPOINTS = [
    Endpoint("cluster-list", "get", lambda o: "/api/clusters/", CLUSTER_READ),
    Endpoint("cluster-detail", "get", lambda o: f"/api/clusters/{o['cluster']}/", CLUSTER_READ),
    Endpoint("cluster-nodes", "get", lambda o: f"/api/clusters/{o['cluster']}/nodes/", READ),
    Endpoint("cluster-inventory", "get", lambda o: f"/api/clusters/{o['cluster']}/inventory/", READ),
    Endpoint("cluster-config", "get", lambda o: f"/api/clusters/{o['cluster']}/config/node1/", READ),
    Endpoint("job-list", "get", lambda o: "/api/jobs/", READ),
    Endpoint("job-detail", "get", lambda o: f"/api/jobs/{o['job']}/", READ),
    Endpoint("job-events", "get", lambda o: f"/api/jobs/{o['job']}/events/", READ),
    Endpoint("job-stdout", "get", lambda o: f"/api/jobs/{o['job']}/stdout/", READ),
    Endpoint("credential-list", "get", lambda o: "/api/credentials/", READ),
    Endpoint("credential-detail", "get", lambda o: f"/api/credentials/{o['credential']}/", READ),
    Endpoint("kubeconfig", "get", lambda o: f"/api/clusters/{o['cluster']}/kubeconfig/", KUBECONFIG),
    Endpoint("cluster-create", "post", lambda o: "/api/clusters/", WRITE, {"name": "new", "rke2_version": VERSION}),
    Endpoint("cluster-patch", "patch", lambda o: f"/api/clusters/{o['cluster']}/", WRITE, {"description": "x"}),
    Endpoint(
        "cluster-put",
        "put",
        lambda o: f"/api/clusters/{o['cluster']}/",
        WRITE,
        {"name": "alpha", "rke2_version": VERSION},
    ),
    Endpoint("cluster-delete", "delete", lambda o: f"/api/clusters/{o['other_cluster']}/", WRITE),
    Endpoint("install", "post", lambda o: f"/api/clusters/{o['other_cluster']}/install/", WRITE, {}),
    Endpoint(
        "upgrade",
        "post",
        lambda o: f"/api/clusters/{o['cluster']}/upgrade/",
        WRITE,
        {"target_version": "v1.32.1+rke2r1"},
    ),
    Endpoint("uninstall", "post", lambda o: f"/api/clusters/{o['cluster']}/uninstall/", WRITE, {"confirm": "alpha"}),
    Endpoint("preflight", "post", lambda o: f"/api/clusters/{o['cluster']}/preflight/", WRITE, {}),
    Endpoint("fetch-kubeconfig", "post", lambda o: f"/api/clusters/{o['cluster']}/fetch-kubeconfig/", WRITE, {}),
    Endpoint("health", "post", lambda o: f"/api/clusters/{o['cluster']}/health/", WRITE, {}),
    Endpoint(
        "scale-add",
        "post",
        lambda o: f"/api/clusters/{o['cluster']}/scale/add/",
        WRITE,
        {"nodes": [{"hostname": "node7", "internal_ip": "10.0.0.7"}]},
    ),
    Endpoint(
        "scale-remove", "post", lambda o: f"/api/clusters/{o['cluster']}/scale/remove/", WRITE, {"hostnames": ["node3"]}
    ),
    Endpoint("job-cancel", "post", lambda o: f"/api/jobs/{o['finished_job']}/cancel/", WRITE),
    Endpoint("credential-create", "post", lambda o: "/api/credentials/", WRITE, {"name": "k2", "private_key": "x"}),
    Endpoint("credential-patch", "patch", lambda o: f"/api/credentials/{o['credential']}/", WRITE, {"known_hosts": ""}),
    Endpoint("credential-delete", "delete", lambda o: f"/api/credentials/{o['spare_credential']}/", WRITE),
    Endpoint("host-key-list", "get", lambda o: "/api/host-keys/", READ),
    Endpoint("host-key-detail", "get", lambda o: f"/api/host-keys/{o['host_key']}/", READ),
    Endpoint("host-key-clear", "delete", lambda o: f"/api/host-keys/{o['host_key']}/", WRITE),
]

# Which roles may call each kind of endpoint.
ALLOWED = {
    "nobody": set(),
    "viewer": {READ, CLUSTER_READ},
    "operator": {READ, CLUSTER_READ, WRITE},
    "downloader": {READ, CLUSTER_READ, KUBECONFIG},  # viewers + kubeconfig-downloaders
    "downloader-only": {CLUSTER_READ, KUBECONFIG},  # sees the clusters it downloads kubeconfigs from
    "superuser": {READ, CLUSTER_READ, WRITE, KUBECONFIG},
}
GROUPS = {
    "nobody": (),
    "viewer": ("viewers",),
    "operator": ("operators",),
    "downloader": ("viewers", "kubeconfig-downloaders"),
    "downloader-only": ("kubeconfig-downloaders",),
    "superuser": (),
}


@pytest.fixture
def objects(installed_cluster, make_cluster, private_key) -> dict[str, Any]:
    from clusters.services.credentials import credential_create

    other = make_cluster("other")
    job = make_job(other, status=JobStatus.SUCCESSFUL)
    finished = make_job(installed_cluster, status=JobStatus.SUCCESSFUL)
    spare = credential_create(name="spare", private_key=private_key)
    host_key = HostKey.objects.create(
        address="10.0.0.1",
        port=22,
        hostname="node1",
        cluster=installed_cluster,
        public_keys="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHN0YW5kLWluIGhvc3Qga2V5IGZvciB0ZXN0cyEhISE=\n",
    )
    return {
        "cluster": installed_cluster.pk,
        "other_cluster": other.pk,
        "job": job.pk,
        "finished_job": finished.pk,
        "credential": installed_cluster.ssh_credential_id,
        "spare_credential": spare.pk,
        "host_key": host_key.pk,
    }


def call(client: APIClient, endpoint: Endpoint, objects: dict[str, Any]) -> Any:
    method = getattr(client, endpoint.method)
    if endpoint.payload is None:
        return method(endpoint.path(objects))
    return method(endpoint.path(objects), endpoint.payload, format="json")


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_anonymous_gets_401_with_a_challenge(endpoint, objects):
    response = call(APIClient(), endpoint, objects)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert response.json()["code"] == "not_authenticated"


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
@pytest.mark.parametrize("role", list(ALLOWED))
def test_permission_matrix(role, endpoint, objects, make_user, client_for):
    user = make_user(f"user-{role}", *GROUPS[role], superuser=role == "superuser")

    response = call(client_for(user), endpoint, objects)

    if endpoint.kind in ALLOWED[role]:
        assert response.status_code not in (401, 403), (response.status_code, getattr(response, "data", None))
        assert response.status_code < 500
    else:
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"


def test_invalid_token_is_401(objects):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")

    response = client.get("/api/clusters/")

    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


def test_session_authentication_enforces_csrf(viewer, operator, objects):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(viewer)
    assert client.get("/api/clusters/").status_code == 200

    client.force_login(operator)
    response = client.post(f"/api/clusters/{objects['cluster']}/preflight/", {}, format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["message"]


def test_default_groups_exist_with_their_permissions(db):
    def codenames(name: str) -> set[str]:
        return set(Group.objects.get(name=name).permissions.values_list("codename", flat=True))

    assert {"view_cluster", "view_job", "view_node", "view_sshcredential"} <= codenames("viewers")
    assert not any(code.startswith(("add_", "change_", "delete_")) for code in codenames("viewers"))
    assert "download_kubeconfig" not in codenames("viewers") | codenames("operators")
    operator_codes = {"add_cluster", "change_cluster", "delete_cluster", "add_job", "change_job", "add_node"}
    assert operator_codes <= codenames("operators")
    assert "download_kubeconfig" in codenames("kubeconfig-downloaders")
