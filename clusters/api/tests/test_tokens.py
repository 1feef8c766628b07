"""Personal API tokens: created with a password or a session (shown once), listed and revoked by their owner only,
refused once expired or revoked, and stored only as a hash."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
from django.apps import apps
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from clusters.models import APIToken, AuditLog

pytestmark = pytest.mark.django_db


def basic(user: Any) -> APIClient:
    client = APIClient()
    credentials = base64.b64encode(f"{user.username}:pw-{user.username}".encode()).decode()
    client.credentials(HTTP_AUTHORIZATION=f"Basic {credentials}")
    return client


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def create(user: Any, **data: Any) -> dict[str, Any]:
    response = basic(user).post("/api/tokens/", {"name": "ci", **data}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_a_user_creates_a_token_with_a_password_and_uses_it(viewer):
    body = create(viewer, expires_in_days=7)

    assert body["name"] == "ci"
    assert body["token"].startswith("rke2p_") and body["token_key"] == body["token"][:15]
    expiry = dt.datetime.fromisoformat(body["expiry"])
    assert dt.timedelta(days=6, hours=23) < expiry - timezone.now() <= dt.timedelta(days=7)
    assert bearer(body["token"]).get("/api/clusters/").status_code == 200
    assert AuditLog.objects.filter(action="api_token.created", actor=viewer).exists()


def test_the_token_is_shown_once_and_never_listed(viewer):
    body = create(viewer)

    listed = bearer(body["token"]).get("/api/tokens/")

    assert listed.status_code == 200
    [item] = listed.json()["results"]
    assert item["id"] == body["id"] and item["expired"] is False
    assert "token" not in item
    assert body["token"] not in listed.content.decode()


def test_a_session_creates_a_token_and_a_token_cannot(viewer):
    client = APIClient()
    client.force_login(viewer)
    response = client.post("/api/tokens/", {"name": "browser"}, format="json")
    assert response.status_code == 201
    default = dt.datetime.fromisoformat(response.json()["expiry"]) - timezone.now()
    assert dt.timedelta(days=29) < default <= dt.timedelta(days=30)

    refused = bearer(response.json()["token"]).post("/api/tokens/", {"name": "chained"}, format="json")

    assert refused.status_code == 403
    assert APIToken.objects.filter(user=viewer).count() == 1


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "x", "expires_in_days": 366}, "expires_in_days"),
        ({"name": "x", "expires_in_days": "soon"}, "expires_in_days"),
    ],
)
def test_bad_input_names_the_field(viewer, data, field):
    response = basic(viewer).post("/api/tokens/", data, format="json")

    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert not APIToken.objects.exists()


def test_a_wrong_password_creates_nothing(viewer):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(b"victor:wrong").decode())

    assert client.post("/api/tokens/", {"name": "x"}, format="json").status_code == 401
    assert not APIToken.objects.exists()


def test_a_revoked_token_is_refused(viewer):
    first, second = create(viewer), create(viewer)

    response = bearer(second["token"]).delete(f"/api/tokens/{first['id']}/")

    assert response.status_code == 204
    assert bearer(first["token"]).get("/api/clusters/").status_code == 401
    assert bearer(second["token"]).get("/api/clusters/").status_code == 200
    assert AuditLog.objects.filter(action="api_token.revoked", actor=viewer, detail__token_id=first["id"]).exists()


def test_an_expired_token_is_refused(viewer):
    body = create(viewer, expires_in_days=1)
    APIToken.objects.filter(pk=body["id"]).update(expiry=timezone.now() - dt.timedelta(seconds=1))

    response = bearer(body["token"]).get("/api/clusters/")

    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


def test_another_users_token_cannot_be_listed_or_revoked(viewer, operator):
    theirs = create(viewer)
    mine = create(operator)

    listed = bearer(mine["token"]).get("/api/tokens/").json()["results"]
    response = bearer(mine["token"]).delete(f"/api/tokens/{theirs['id']}/")

    assert [item["id"] for item in listed] == [mine["id"]]
    assert response.status_code == 404
    assert bearer(theirs["token"]).get("/api/clusters/").status_code == 200


def test_anonymous_requests_are_refused():
    client = APIClient()

    assert client.get("/api/tokens/").status_code == 401
    assert client.post("/api/tokens/", {"name": "x"}, format="json").status_code == 401


def test_only_a_hash_of_the_token_is_stored(viewer):
    token = create(viewer)["token"]
    secret_part = token[15:]  # what follows the stored, displayed prefix

    found = []
    with connection.cursor() as cursor:
        for model in apps.get_models():
            table = model._meta.db_table
            if table not in connection.introspection.table_names(cursor):
                continue
            columns = [column.name for column in connection.introspection.get_table_description(cursor, table)]
            quoted = ", ".join(connection.ops.quote_name(column) for column in columns)
            cursor.execute(f"SELECT {quoted} FROM {connection.ops.quote_name(table)}")  # noqa: S608 - names from the schema
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    text = value.decode(errors="replace") if isinstance(value, bytes | memoryview) else str(value)
                    if token in text or secret_part in text:
                        found.append(f"{table}.{column}")
    assert found == []
    stored = APIToken.objects.get(user=viewer)
    assert len(stored.digest) == 128 and stored.digest != token
