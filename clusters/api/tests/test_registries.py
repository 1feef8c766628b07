"""Private registries: validation, encryption at rest, rendering to registries.yaml, the API (credentials
write-only), the admin (credentials masked) and the masked preview."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client

from clusters.fields import MASK, reveal
from clusters.models import AuditLog, Cluster, Registry
from clusters.registries import registries_document
from clusters.services.previews import cluster_previews
from clusters.services.registries import registry_create, registry_update
from inventory.registries import render_registries
from inventory.renderers import ClusterSnapshot, InventoryRenderer
from inventory.serialization import load_ansible_data

pytestmark = pytest.mark.django_db

PASSWORD = "s3cret-registry-password-9f2c"
TOKEN = "identity-token-0b1d2e3f4a5b"


@pytest.fixture
def root(client_for: Callable[..., Any], make_user: Callable[..., Any]) -> Any:
    return client_for(make_user("root", superuser=True))


@pytest.fixture
def registry(cluster: Cluster) -> Registry:
    return registry_create(
        cluster=cluster,
        name="registry.example.com:5000",
        endpoints=["https://mirror.example.com:5000", "http://10.0.0.9:5000"],
        rewrite={"^rancher/(.*)": "mirrors/rancher/$1"},
        username="puller",
        password=PASSWORD,
        ca_file="/etc/ssl/registry-ca.pem",
    )


def test_credentials_are_encrypted_at_rest_and_audited_without_them(registry: Registry) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT password FROM clusters_registry WHERE id = %s", [registry.pk])
        stored = cursor.fetchone()[0]
    assert stored and PASSWORD not in stored
    assert reveal(Registry.objects.get(pk=registry.pk).password) == PASSWORD
    assert str(registry.password) == MASK and PASSWORD not in repr(registry.password)
    entry = AuditLog.objects.get(action="registry.create")
    assert PASSWORD not in str(entry.detail) and entry.object_repr == "registry.example.com:5000"


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"name": "https://registry.example.com"}, "name", "without a scheme"),
        ({"name": "bad_host!"}, "name", "not a valid host name"),
        ({"name": "registry.example.com:99999"}, "name", "not a valid port"),
        ({"endpoints": ["ftp://mirror.example.com"]}, "endpoints", "http:// or https://"),
        ({"endpoints": ["https://user:pw@mirror.example.com"]}, "endpoints", "no user name or password"),
        ({"endpoints": ["https://mirror.example.com"], "rewrite": {"(": "x"}}, "rewrite", "regular expression"),
        ({"endpoints": ["https://m.example.com"], "username": "u"}, "password", "password of this user"),
        ({"endpoints": ["https://m.example.com"], "password": PASSWORD}, "username", "needs its user name"),
        ({"username": "u", "password": PASSWORD, "identity_token": TOKEN}, "identity_token", "one kind"),
        ({"username": "glpat-abcdefghijklmnop", "identity_token": TOKEN}, "username", "looks like a credential"),
        ({"ca_file": "relative/ca.pem"}, "ca_file", "absolute file path"),
        ({"cert_file": "/etc/ssl/c.pem"}, "key_file", "needs its key"),
        ({}, "endpoints", "mirror endpoint, credentials or TLS"),
    ],
)
def test_invalid_registries_are_refused_naming_the_field(
    cluster: Cluster, fields: dict[str, Any], field: str, words: str
) -> None:
    fields.setdefault("name", "docker.io")
    with pytest.raises(ValidationError) as error:
        registry_create(cluster=cluster, **fields)
    assert field in error.value.message_dict, error.value.message_dict
    assert any(words in message for message in error.value.message_dict[field]), error.value.message_dict
    assert PASSWORD not in str(error.value)


def test_wildcard_ipv6_and_duplicates(cluster: Cluster) -> None:
    registry_create(cluster=cluster, name="*", endpoints=["https://mirror.example.com"])
    registry_create(cluster=cluster, name="[fd00::5]:5000", insecure_skip_verify=True)
    with pytest.raises(ValidationError) as error:
        registry_create(cluster=cluster, name="*", endpoints=["https://other.example.com"])
    assert "has a registry of this name already" in str(error.value)


def test_registries_yaml_document_and_secret_variable(registry: Registry, cluster: Cluster) -> None:
    registry_create(cluster=cluster, name="ghcr.io", identity_token=TOKEN)
    snapshot = ClusterSnapshot.load(cluster)
    document = registries_document(snapshot.registries)
    assert document == {
        "mirrors": {
            "registry.example.com:5000": {
                "endpoint": ["https://mirror.example.com:5000", "http://10.0.0.9:5000"],
                "rewrite": {"^rancher/(.*)": "mirrors/rancher/$1"},
            }
        },
        "configs": {
            "ghcr.io": {"auth": {"identity_token": TOKEN}},
            "registry.example.com:5000": {
                "auth": {"username": "puller", "password": PASSWORD},
                "tls": {"ca_file": "/etc/ssl/registry-ca.pem"},
            },
        },
    }
    # A secret variable: never in the inventory, only in the 0600 extravars file.
    rendered = InventoryRenderer.render_for_stage(cluster, "initial_master")
    assert "rke2_registries" not in rendered.inventory["all"]["vars"]
    assert PASSWORD not in rendered.inventory_text() and PASSWORD not in rendered.preview_text()
    extravars = load_ansible_data(rendered.extravars_text())
    configs = {item["name"]: item["config"] for item in extravars["rke2_registries"]["configs"]}
    assert configs["registry.example.com:5000"]["auth"]["password"] == PASSWORD

    # The file text, masked for previews and revealed as the playbook writes it (same template).
    masked = render_registries(snapshot)
    assert PASSWORD not in masked and TOKEN not in masked and MASK in masked
    assert masked.startswith("# Managed by the RKE2 portal")
    revealed = yaml.safe_load(render_registries(snapshot, reveal_secrets=True))
    assert revealed == {
        **document,
        "configs": {
            "ghcr.io": {"auth": {"identity_token": TOKEN}},
            "registry.example.com:5000": {
                "auth": {"username": "puller", "password": PASSWORD},
                "tls": {"ca_file": "/etc/ssl/registry-ca.pem"},
            },
        },
    }
    assert yaml.safe_load(masked)["configs"]["ghcr.io"]["auth"]["identity_token"] == MASK


def test_no_registry_no_file(cluster: Cluster) -> None:
    snapshot = ClusterSnapshot.load(cluster)
    assert snapshot.cluster_vars()["rke2_registries"] == {}
    assert load_ansible_data(InventoryRenderer.render_for_operation(cluster).extravars_text())["rke2_registries"] == {}
    assert render_registries(snapshot) == ""
    assert cluster_previews(cluster).registries == ""


def test_update_keeps_credentials_unless_replaced_or_cleared(registry: Registry) -> None:
    registry = registry_update(registry=registry, data={"endpoints": ["https://new.example.com"], "password": ""})
    assert reveal(Registry.objects.get(pk=registry.pk).password) == PASSWORD
    registry = registry_update(registry=registry, data={"username": "", "auth": "cHVsbGVyOnB3"})
    stored = Registry.objects.get(pk=registry.pk)
    assert reveal(stored.auth) == "cHVsbGVyOnB3" and reveal(stored.password) == ""
    registry_update(registry=stored, data={"clear_credentials": True})
    stored = Registry.objects.get(pk=registry.pk)
    assert not reveal(stored.auth) and not stored.username
    assert AuditLog.objects.filter(action="registry.update").count() == 3


def test_api_credentials_are_write_only(root: Any, cluster: Cluster) -> None:
    created = root.post(
        "/api/registries/",
        {
            "cluster": cluster.pk,
            "name": "registry.example.com",
            "endpoints": ["https://mirror.example.com"],
            "username": "puller",
            "password": PASSWORD,
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert "password" not in body and PASSWORD not in created.content.decode()
    assert body["credential"] == "password" and body["username"] == "puller"
    for response in (root.get(f"/api/registries/{body['id']}/"), root.get("/api/registries/", {"cluster": cluster.pk})):
        assert response.status_code == 200 and PASSWORD not in response.content.decode()
    # An update without the password keeps it.
    changed = root.patch(f"/api/registries/{body['id']}/", {"endpoints": ["https://b.example.com"]}, format="json")
    assert changed.status_code == 200, changed.content
    assert reveal(Registry.objects.get(pk=body["id"]).password) == PASSWORD
    # The preview shows the file with the password masked.
    preview = root.get(f"/api/clusters/{cluster.pk}/inventory/")
    assert preview.status_code == 200, preview.content
    assert "https://b.example.com" in preview.json()["registries"] and PASSWORD not in preview.content.decode()
    assert MASK in preview.json()["registries"]


def test_api_bad_input_is_a_400_naming_the_field(root: Any, cluster: Cluster) -> None:
    response = root.post(
        "/api/registries/",
        {"cluster": cluster.pk, "name": "docker.io", "endpoints": ["https://u:p@mirror.example.com"]},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "endpoints" in response.json()["errors"]
    assert "u:p@" not in response.content.decode()


def test_operators_manage_registries_and_viewers_only_read_them(
    api: Any, client_for: Callable[..., Any], viewer: Any, cluster: Cluster
) -> None:
    data = {"cluster": cluster.pk, "name": "docker.io", "username": "u", "password": PASSWORD}
    assert api.post("/api/registries/", data, format="json").status_code == 201
    reader = client_for(viewer)
    listed = reader.get("/api/registries/")
    assert listed.status_code == 200 and PASSWORD not in listed.content.decode()
    assert reader.post("/api/registries/", {**data, "name": "quay.io"}, format="json").status_code == 403


def test_admin_masks_the_credentials(registry: Registry, make_user: Callable[..., Any]) -> None:
    client = Client()
    client.force_login(make_user("admin", superuser=True))
    page = client.get(f"/admin/clusters/registry/{registry.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert PASSWORD not in text and f"password: {MASK} (stored encrypted)" in text
    listing = client.get("/admin/clusters/registry/")
    assert listing.status_code == 200 and PASSWORD not in listing.content.decode()
    # Saving without a password keeps the stored one; a new one replaces it.
    form = {
        "name": registry.name,
        "endpoints": "https://mirror.example.com:5000",
        "rewrite": "",
        "username": "puller",
        "password": "",
        "auth": "",
        "identity_token": "",
        "ca_file": "",
        "cert_file": "",
        "key_file": "",
    }
    saved = client.post(f"/admin/clusters/registry/{registry.pk}/change/", form)
    assert saved.status_code == 302, saved.content.decode()[:2000]
    assert reveal(Registry.objects.get(pk=registry.pk).password) == PASSWORD
    refused = client.post(f"/admin/clusters/registry/{registry.pk}/change/", {**form, "endpoints": "ftp://x.example"})
    assert refused.status_code == 200 and "http:// or https://" in refused.content.decode()
    preview = client.get(f"/admin/clusters/cluster/{registry.cluster_id}/previews/")
    assert preview.status_code == 200
    assert "registries.yaml" in preview.content.decode() and PASSWORD not in preview.content.decode()
