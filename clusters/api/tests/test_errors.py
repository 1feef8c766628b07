"""Bad input is a 4xx in the API's error shape, never a 500; no response carries a secret."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from clusters.models import Cluster

from .conftest import add_events, assert_no_secret, make_job

pytestmark = pytest.mark.django_db

ERROR_KEYS = {"code", "message", "errors", "extra"}
NODE = {"hostname": "n1", "internal_ip": "10.0.0.1"}


def post_raw(api: Any, url: str, body: str | bytes, content_type: str = "application/json") -> Any:
    return api.generic("POST", url, body, content_type=content_type)


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content[:500]
    body = response.json()
    assert set(body) == ERROR_KEYS
    if code is not None:
        assert body["code"] == code
    return body


@pytest.mark.parametrize(
    "body",
    [
        "{",
        "{'name': 'x'}",
        '{"name": "x",}',
        "\xff\xfe",
        '{"name": NaN}',
        '{"name": Infinity}',
        "[" * 100_000 + "]" * 100_000,
        '{"port": ' + "9" * 5000 + "}",
    ],
    ids=["truncated", "single-quotes", "trailing-comma", "not-utf8", "nan", "infinity", "deep", "long-number"],
)
def test_malformed_json(api, body):
    data = body.encode("latin-1") if body == "\xff\xfe" else body

    assert_error(post_raw(api, "/api/clusters/", data), 400, "parse_error")


@pytest.mark.parametrize("body", ["[]", '"cluster"', "42", "null", "true"])
def test_body_that_is_not_an_object(api, body):
    errors = assert_error(post_raw(api, "/api/clusters/", body), 400, "validation_error")["errors"]

    assert "non_field_errors" in errors


def test_unsupported_media_type(api):
    assert_error(post_raw(api, "/api/clusters/", "name=x", "application/x-www-form-urlencoded"), 415)


def test_method_not_allowed(api, cluster):
    body = assert_error(api.post(f"/api/clusters/{cluster.pk}/", {}, format="json"), 405, "method_not_allowed")

    assert "POST" in body["message"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": 123456, "rke2_version": "v1.31.4+rke2r1"}, "name"),
        ({"name": True, "rke2_version": "v1.31.4+rke2r1"}, "name"),
        ({"name": "ok", "rke2_version": ["v1"]}, "rke2_version"),
        ({"name": "ok", "rke2_version": "v1.31.4+rke2r1", "tls_san": "a.example.com"}, "tls_san"),
        ({"name": "ok", "rke2_version": "v1.31.4+rke2r1", "tls_san": [None]}, "tls_san[0]"),
        ({"name": "ok", "rke2_version": "v1.31.4+rke2r1", "nodes": {"hostname": "a"}}, "nodes"),
        ({"name": "ok", "rke2_version": "v1.31.4+rke2r1", "nodes": [[1]]}, "nodes[0]"),
        ({"name": "ok", "rke2_version": "v1.31.4+rke2r1", "ssh_credential": 10**30}, "ssh_credential"),
        ({"name": "ok", "rke2_version": "v1.31.4+rke2r1", "ssh_credential": -1}, "ssh_credential"),
        ({"name": "ok", "rke2_version": "v1.31.4+rke2r1", "ssh_credential": 1.5}, "ssh_credential"),
        ({"name": "ok", "rke2_version": "v1.31.4+rke2r1", "cluster_vars": {"v": "a\x00b"}}, "cluster_vars"),
        ({"name": "ok", "rke2_version": "v1.31.4+rke2r1", "cluster_vars": {"v": [[[[[[1]]]]]]}}, "cluster_vars"),
        ({"name": "ok", "rke2_version": "v1.31.4+rke2r1", "cluster_vars": {"v": 10**300}}, "cluster_vars"),
        ({"name": "ok\x00", "rke2_version": "v1.31.4+rke2r1"}, "name"),
        ({"name": "ümlaut-cluster", "rke2_version": "v1.31.4+rke2r1"}, "name"),
        ({"name": "ok", "rke2_version": "v1.31.4+rke2r1", "description": "x" * 20_000}, "description"),
        ({"name": "k" * 64, "rke2_version": "v1.31.4+rke2r1"}, "name"),
        (
            {"name": "ok", "rke2_version": "v1.31.4+rke2r1", "nodes": [{**NODE, "labels": ["é=ü"]}]},
            "nodes[0].labels",
        ),
        (
            {"name": "ok", "rke2_version": "v1.31.4+rke2r1", "nodes": [{**NODE, "node_vars": {"k": "\u202e"}}]},
            None,  # an unusual but storable value: accepted
        ),
    ],
)
def test_wrong_types_and_values(api, payload, field):
    response = api.post("/api/clusters/", payload, format="json")

    if field is None:
        assert response.status_code == 201, response.json()
        return
    errors = assert_error(response, 400, "validation_error")["errors"]
    assert field in errors, errors


def test_huge_numbers_in_json_values_are_refused(api):
    body = '{"name": "ok", "rke2_version": "v1.31.4+rke2r1", "cluster_vars": {"v": 1e400}}'

    assert "cluster_vars" in assert_error(post_raw(api, "/api/clusters/", body), 400)["errors"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/clusters/99999999999999999999999999/",
        "/api/clusters/999999999999999999/",
        "/api/clusters/-1/",
        "/api/clusters/1.5/",
        "/api/clusters/%00/",
        "/api/clusters/١/",
        "/api/jobs/99999999999999999999/events/",
        "/api/clusters/1/config/%00/",
        "/api/clusters/1/config/" + "a" * 300 + "/",
        "/api/no-such-endpoint/",
    ],
)
def test_unknown_objects_and_paths_are_404(api, cluster, path):
    assert_error(api.get(path), 404, "not_found")


@pytest.mark.parametrize(
    "query",
    [
        {"page": "9" * 30},
        {"page": "abc"},
        {"page": "0"},
    ],
)
def test_bad_pages_are_404(api, cluster, query):
    assert_error(api.get("/api/clusters/", query), 404, "not_found")


@pytest.mark.parametrize(
    "query", [{"page_size": "9" * 30}, {"page_size": "-5"}, {"page_size": "x"}, {"status": "\x00"}, {"name": "a\x00"}]
)
def test_odd_list_parameters_never_fail(api, cluster, query):
    assert api.get("/api/clusters/", query).status_code in (200, 400)


def test_unicode_is_fine_where_free_text_is_allowed(api, cluster):
    response = api.patch(f"/api/clusters/{cluster.pk}/", {"description": "Zürich ☸ 東京 — ok"}, format="json")

    assert response.status_code == 200
    assert Cluster.objects.get(pk=cluster.pk).description == "Zürich ☸ 東京 — ok"


def test_conflict_names_the_reason(api, cluster):
    job = make_job(cluster, status="running")

    body = assert_error(api.post(f"/api/clusters/{cluster.pk}/preflight/", {}, format="json"), 409, "job_conflict")

    assert body["extra"]["job_id"] == job.pk
    assert "active job" in body["message"]


def test_non_api_404_stays_a_page():
    response = Client().get("/no-such-page/")

    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_no_response_contains_a_secret(make_user, client_for, finished_job, secrets_of):
    """Walk every read endpoint, and a few failing writes, as a superuser: the cluster token, the SSH key and the
    kubeconfig never appear (the kubeconfig download, which exists to return it, aside)."""
    cluster = finished_job.cluster
    credential = cluster.ssh_credential
    secrets = secrets_of(cluster, credential)
    assert len(secrets) >= 3
    add_events(finished_job, 3, start=6)
    client = client_for(make_user("root", superuser=True))
    reads = [
        "/api/clusters/",
        f"/api/clusters/{cluster.pk}/",
        f"/api/clusters/{cluster.pk}/nodes/",
        f"/api/clusters/{cluster.pk}/inventory/",
        f"/api/clusters/{cluster.pk}/config/node1/",
        f"/api/clusters/{cluster.pk}/config/node2/",
        "/api/jobs/",
        f"/api/jobs/{finished_job.pk}/",
        f"/api/jobs/{finished_job.pk}/events/",
        "/api/credentials/",
        f"/api/credentials/{credential.pk}/",
        "/api/schema/",
    ]
    for url in reads:
        response = client.get(url)
        assert response.status_code == 200, url
        assert_no_secret(response.content, secrets)
    stdout = client.get(f"/api/jobs/{finished_job.pk}/stdout/")
    assert_no_secret(b"".join(stdout.streaming_content), secrets)
    writes = [
        ("patch", f"/api/clusters/{cluster.pk}/", {"cluster_cidr": "10.99.0.0/16"}),
        ("patch", f"/api/credentials/{credential.pk}/", {"passphrase": "x" * 30}),
        ("post", f"/api/clusters/{cluster.pk}/install/", {}),
        ("post", f"/api/clusters/{cluster.pk}/uninstall/", {"confirm": "nope"}),
        ("post", f"/api/clusters/{cluster.pk}/scale/add/", {"nodes": [{**NODE, "hostname": "node1"}]}),
    ]
    for method, url, payload in writes:
        response = getattr(client, method)(url, payload, format="json")
        assert 400 <= response.status_code < 500, (url, response.status_code)
        assert_no_secret(response.content, secrets)
    download = client.get(f"/api/clusters/{cluster.pk}/kubeconfig/")
    assert download.status_code == 200 and download.content.decode().strip() in secrets


def test_errors_render_json_compactly(api):
    response = api.get("/api/clusters/123456/")

    assert json.loads(response.content) == {"code": "not_found", "message": "Not found.", "errors": {}, "extra": {}}
