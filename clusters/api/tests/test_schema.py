"""The OpenAPI schema and Swagger UI, and a property-based run of every operation against the schema (Schemathesis):
whatever the input, no answer is a server error, and none carries a secret."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
import yaml
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import strategies as st
from rest_framework.test import APIClient

from clusters.choices import JobStatus
from clusters.services.credentials import credential_create
from clusters.services.tokens import api_token_create

from .conftest import add_events, assert_no_secret, make_job, mark_installed

pytestmark = pytest.mark.django_db

SECRET_FIELDS = ("private_key", "passphrase", "token", "kubeconfig", "password", "identity_token")


@pytest.fixture
def openapi() -> dict[str, Any]:
    response = APIClient().get("/api/schema/")
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def test_schema_lists_every_endpoint(openapi):
    assert openapi["openapi"].startswith("3.")
    expected = {
        "/api/clusters/": {"get", "post"},
        "/api/clusters/{id}/": {"get", "put", "patch", "delete"},
        "/api/clusters/{cluster_pk}/nodes/": {"get"},
        "/api/clusters/{id}/scale/add/": {"post"},
        "/api/clusters/{id}/scale/remove/": {"post"},
        "/api/clusters/{id}/install/": {"post"},
        "/api/clusters/{id}/upgrade/": {"post"},
        "/api/clusters/{id}/uninstall/": {"post"},
        "/api/clusters/{id}/preflight/": {"post"},
        "/api/clusters/{id}/fetch-kubeconfig/": {"post"},
        "/api/clusters/{id}/health/": {"post"},
        "/api/clusters/{id}/rotate-certificates/": {"post"},
        "/api/clusters/{id}/node-labels/": {"post"},
        "/api/clusters/{id}/inventory/": {"get"},
        "/api/clusters/{id}/config/{hostname}/": {"get"},
        "/api/clusters/{id}/kubeconfig/": {"get"},
        "/api/jobs/": {"get"},
        "/api/jobs/{id}/": {"get"},
        "/api/jobs/{id}/events/": {"get"},
        "/api/jobs/{id}/stdout/": {"get"},
        "/api/jobs/{id}/cancel/": {"post"},
        "/api/credentials/": {"get", "post"},
        "/api/credentials/{id}/": {"get", "put", "patch", "delete"},
        "/api/host-keys/": {"get"},
        "/api/host-keys/{id}/": {"get", "delete"},
        "/api/tokens/": {"get", "post"},
        "/api/tokens/{id}/": {"delete"},
        "/api/clusters/{id}/adopt/": {"post"},
        "/api/clusters/{id}/adoption/": {"get"},
        "/api/": {"get"},
        "/api/jobs/{id}/relaunch/": {"post"},
        "/api/audit-log/": {"get"},
        "/api/audit-log/{id}/": {"get"},
        "/api/webhooks/": {"get", "post"},
        "/api/webhooks/{id}/": {"get", "put", "patch", "delete"},
        "/api/webhook-deliveries/": {"get"},
        "/api/webhook-deliveries/{id}/": {"get"},
        "/api/clusters/{cluster_pk}/etcd-snapshots/": {"get", "post"},
        "/api/clusters/{cluster_pk}/etcd-snapshots/refresh/": {"post"},
        "/api/clusters/{cluster_pk}/etcd-snapshots/prune/": {"post"},
        "/api/clusters/{cluster_pk}/etcd-snapshots/schedule/": {"put"},
        "/api/clusters/{cluster_pk}/etcd-restore/": {"post"},
        "/api/registries/": {"get", "post"},
        "/api/registries/{id}/": {"get", "put", "patch", "delete"},
    }
    found = {path: set(item) - {"parameters"} for path, item in openapi["paths"].items()}
    assert found == expected
    assert {"knoxApiToken", "cookieAuth"} <= set(openapi["components"]["securitySchemes"])


def test_secrets_are_write_only_in_the_schema(openapi):
    components = openapi["components"]["schemas"]
    for name, component in components.items():
        properties = set(component.get("properties", {}))
        if name.endswith("Request"):
            continue
        if name == "APITokenCreatedOutput":  # a new API token is shown once, to its owner, in this response only
            properties -= {"token"}
        assert not properties & set(SECRET_FIELDS), name
    assert {"private_key", "passphrase"} <= set(components["CredentialCreateRequest"]["properties"])
    assert {"password", "auth", "identity_token"} <= set(components["RegistryInputRequest"]["properties"])
    assert not {"password", "auth", "identity_token"} & set(components["RegistryOutput"]["properties"])
    text = yaml.safe_dump(openapi)
    assert "BEGIN OPENSSH" not in text


def test_errors_are_documented(openapi):
    install = openapi["paths"]["/api/clusters/{id}/install/"]["post"]["responses"]
    assert set(install) == {"202", "400", "401", "403", "404", "409"}
    assert install["409"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/Error"


def test_swagger_ui_is_served_from_own_static_files():
    response = APIClient().get("/api/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn." not in html and "unpkg" not in html and "jsdelivr" not in html


# --- property-based run -----------------------------------------------------------------------------------------

# Identifiers of existing objects, by path parameter, filled per test run (path parameters are drawn from them
# half of the time, so that operations reach real objects and not only 404s).
KNOWN: dict[str, dict[str, list[Any]]] = {}


@pytest.fixture
def keep_connection() -> Iterator[None]:
    """Requests run inside the test's transaction: like Django's test client, the WSGI application must not close
    the database connection when a request starts or ends."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_data(make_cluster, private_key, operator, secrets_of) -> dict[str, Any]:
    installed = mark_installed(make_cluster("alpha", nodes=3))
    fresh = make_cluster("beta", nodes=2)
    job = make_job(installed, status=JobStatus.SUCCESSFUL, emitted_events=5)
    add_events(job, 5)
    running = make_job(fresh, status=JobStatus.RUNNING)
    spare = credential_create(name="spare", private_key=private_key)
    KNOWN.clear()
    KNOWN.update(
        {
            "clusters": {"id": [installed.pk, fresh.pk], "cluster_pk": [installed.pk, fresh.pk]},
            "jobs": {"id": [job.pk, running.pk]},
            "credentials": {"id": [installed.ssh_credential_id, spare.pk]},
            "hostname": {"hostname": ["node1", "node2", "node3"]},
        }
    )
    secrets = secrets_of(installed, fresh, spare, installed.ssh_credential)
    return {"token": api_token_create(user=operator, name="fuzz")[1], "secrets": secrets}


def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
    """Half of the time, point the operation at an existing object instead of a random identifier."""
    if not path_parameters:
        return st.just(path_parameters)
    resource = context.operation.path.split("/")[2]
    known = {**KNOWN.get(resource, {}), **KNOWN.get("hostname", {})}
    existing = {name: st.sampled_from(values) for name, values in known.items() if name in path_parameters}
    if not existing:
        return st.just(path_parameters)
    real = st.fixed_dictionaries(existing).map(lambda values: {**path_parameters, **values})
    return st.one_of(st.just(path_parameters), real)


schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
schema.hook(flatmap_path_parameters)


@pytest.mark.slow
@schema.parametrize()
@hypothesis.settings(
    max_examples=10, deadline=None, derandomize=True, database=None, suppress_health_check=list(hypothesis.HealthCheck)
)
def test_no_operation_fails_or_leaks(case, keep_connection, fuzz_data):
    """Every operation, with generated valid and invalid input, as an operator: never a 5xx, never a secret."""
    response = case.call(headers={"Authorization": f"Token {fuzz_data['token']}"})

    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code}"
    assert_no_secret(response.content, fuzz_data["secrets"])
