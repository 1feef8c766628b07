"""SSH credential endpoints: secrets are write-only, the fingerprint is shown."""

from __future__ import annotations

import pytest

from clusters.fields import reveal
from clusters.models import AuditLog, SSHCredential

from .conftest import KEY_PASSPHRASE, assert_no_secret, make_private_key

pytestmark = pytest.mark.django_db

OUTPUT_KEYS = {
    "id",
    "name",
    "username",
    "port",
    "become",
    "public_key_fingerprint",
    "has_passphrase",
    "known_hosts",
    "cluster_count",
    "created_at",
    "updated_at",
}


def test_create_shows_fingerprint_never_the_key(api, encrypted_private_key, secrets_of):
    payload = {
        "name": "prod",
        "username": "ubuntu",
        "port": 2222,
        "become": True,
        "private_key": encrypted_private_key,
        "passphrase": KEY_PASSPHRASE,
    }

    response = api.post("/api/credentials/", payload, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert set(body) == OUTPUT_KEYS
    assert body["public_key_fingerprint"].startswith("SHA256:")
    assert body["has_passphrase"] is True
    credential = SSHCredential.objects.get(pk=body["id"])
    assert reveal(credential.private_key) == encrypted_private_key
    assert_no_secret(response.content, secrets_of(credential))
    entry = AuditLog.objects.get(action="credential.create")
    assert entry.detail == {"credential_id": credential.pk}


def test_list_and_retrieve_never_show_secrets(api, credential, cluster, secrets_of):
    secrets = secrets_of(credential)

    listing = api.get("/api/credentials/")
    detail = api.get(f"/api/credentials/{credential.pk}/")

    assert listing.status_code == detail.status_code == 200
    assert listing.json()["results"][0]["cluster_count"] == 1
    assert detail.json()["has_passphrase"] is False
    for response in (listing, detail):
        assert_no_secret(response.content, secrets)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"},
            "private_key",
        ),
        ({"private_key": ""}, "private_key"),
        ({"passphrase": "unexpected"}, "passphrase"),
        ({"port": 0}, "port"),
        ({"port": 10**30}, "port"),
        ({"become": "true"}, "become"),
        ({"username": "bad user"}, "username"),
        ({"name": ""}, "name"),
    ],
)
def test_create_validation(api, private_key, changes, field):
    payload = {"name": "k", "private_key": private_key, **changes}

    response = api.post("/api/credentials/", payload, format="json")

    assert response.status_code == 400, response.json()
    assert field in response.json()["errors"]
    assert_no_secret(response.content, [private_key.strip(), *private_key.splitlines()[1:-1]])


def test_wrong_passphrase_names_the_field_and_hides_the_key(api, encrypted_private_key):
    payload = {"name": "k", "private_key": encrypted_private_key, "passphrase": "wrong"}

    response = api.post("/api/credentials/", payload, format="json")

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["passphrase"]
    assert_no_secret(response.content, [line for line in encrypted_private_key.splitlines() if len(line) > 16])


def test_missing_passphrase_of_an_encrypted_key(api, encrypted_private_key):
    response = api.post("/api/credentials/", {"name": "k", "private_key": encrypted_private_key}, format="json")

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["passphrase"]


def test_update_keeps_secrets_that_are_not_given(api, credential, private_key):
    response = api.patch(f"/api/credentials/{credential.pk}/", {"name": "renamed", "port": 2200}, format="json")

    assert response.status_code == 200, response.json()
    credential.refresh_from_db()
    assert (credential.name, credential.port) == ("renamed", 2200)
    assert reveal(credential.private_key) == private_key
    assert AuditLog.objects.get(action="credential.update").detail["fields"] == ["name", "port"]


def test_update_with_a_new_key_replaces_the_passphrase(api, private_key, encrypted_private_key):
    created = api.post(
        "/api/credentials/",
        {"name": "k", "private_key": encrypted_private_key, "passphrase": KEY_PASSPHRASE},
        format="json",
    ).json()
    new_key = make_private_key()

    response = api.patch(f"/api/credentials/{created['id']}/", {"private_key": new_key}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["has_passphrase"] is False
    assert body["public_key_fingerprint"] != created["public_key_fingerprint"]
    entry = AuditLog.objects.filter(action="credential.update").latest("pk")
    assert entry.detail["fields"] == ["passphrase", "private_key"]
    assert new_key not in str(entry.detail)


def test_put_needs_name_but_not_the_key(api, credential):
    response = api.put(f"/api/credentials/{credential.pk}/", {"name": "full", "username": "root"}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["username"] == "root"


def test_delete_unused_credential(api, credential):
    response = api.delete(f"/api/credentials/{credential.pk}/")

    assert response.status_code == 204
    assert not SSHCredential.objects.exists()


def test_delete_refused_while_used(api, credential, cluster):
    response = api.delete(f"/api/credentials/{credential.pk}/")

    assert response.status_code == 409
    assert cluster.name in response.json()["message"]
    assert SSHCredential.objects.filter(pk=credential.pk).exists()
