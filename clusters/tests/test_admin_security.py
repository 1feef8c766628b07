"""The admin pages of SSH host keys (operators see and clear them, audited) and of personal API tokens (every staff
user creates, sees and revokes their own; the token is shown once and only its hash is stored)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from clusters.models import APIToken, AuditLog, HostKey
from clusters.services.hostkeys import fingerprint
from clusters.services.tokens import api_token_create

pytestmark = pytest.mark.django_db

KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIHN0YW5kLWluIGhvc3Qga2V5IGZvciB0ZXN0cyEhISE="


@pytest.fixture
def staff(django_user_model: Any, client: Any) -> Any:
    """``staff(*codenames)``: a logged-in staff client holding the given clusters permissions."""

    def build(*codenames: str, username: str = "staff") -> Any:
        user = django_user_model.objects.create_user(username, f"{username}@example.com", "pw", is_staff=True)
        user.user_permissions.set(Permission.objects.filter(content_type__app_label="clusters", codename__in=codenames))
        client.force_login(user)
        client.user = user
        return client

    return build


@pytest.fixture
def host_key() -> HostKey:
    return HostKey.objects.create(address="10.0.0.1", hostname="node1", public_keys=f"ssh-ed25519 {KEY}\n")


def test_host_keys_are_listed_with_their_fingerprints(staff: Any, host_key: HostKey) -> None:
    client = staff("view_hostkey")

    response = client.get(reverse("admin:clusters_hostkey_changelist"))

    assert response.status_code == 200
    page = response.content.decode()
    assert fingerprint(KEY) in page and "10.0.0.1" in page
    assert "clear_host_keys" not in page  # viewing only: no clear action


def test_an_operator_clears_host_keys_and_it_is_audited(staff: Any, host_key: HostKey) -> None:
    client = staff("view_hostkey", "delete_hostkey")

    response = client.post(
        reverse("admin:clusters_hostkey_changelist"),
        {"action": "clear_host_keys", "_selected_action": [host_key.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert not HostKey.objects.exists()
    entry = AuditLog.objects.get(action="host_key.cleared")
    assert entry.actor == client.user and entry.detail["fingerprints"] == [f"ssh-ed25519 {fingerprint(KEY)}"]


def test_a_staff_user_creates_a_token_shown_once(staff: Any) -> None:
    client = staff()  # no model permission: every user manages their own tokens

    response = client.post(
        reverse("admin:clusters_apitoken_add"), {"name": "laptop", "expires_in_days": 10}, follow=True
    )

    assert response.status_code == 200
    token = APIToken.objects.get(user=client.user)
    shown = [str(message) for message in response.context["messages"]]
    [plaintext] = [word for message in shown for word in message.split() if word.startswith("rke2p_")]
    assert plaintext.startswith(token.token_key) and plaintext != token.digest
    again = client.get(reverse("admin:clusters_apitoken_change", args=[token.pk])).content.decode()
    assert plaintext not in again


def test_a_token_past_the_longest_lifetime_is_refused(staff: Any) -> None:
    client = staff()

    response = client.post(reverse("admin:clusters_apitoken_add"), {"name": "x", "expires_in_days": 9999})

    assert response.status_code == 200 and "expires_in_days" in response.context["adminform"].form.errors
    assert not APIToken.objects.exists()


def test_users_see_and_revoke_only_their_own_tokens(staff: Any, django_user_model: Any) -> None:
    other = django_user_model.objects.create_user("other", "other@example.com", "pw", is_staff=True)
    theirs, _ = api_token_create(user=other, name="theirs")
    client = staff()
    mine, _ = api_token_create(user=client.user, name="mine")

    listing = client.get(reverse("admin:clusters_apitoken_changelist")).content.decode()
    assert "mine" in listing and "theirs" not in listing
    assert client.post(reverse("admin:clusters_apitoken_delete", args=[theirs.pk]), {"post": "yes"}).status_code in (
        302,
        403,
        404,
    )
    assert APIToken.objects.filter(pk=theirs.pk).exists()

    client.post(reverse("admin:clusters_apitoken_delete", args=[mine.pk]), {"post": "yes"})

    assert not APIToken.objects.filter(pk=mine.pk).exists()
    assert AuditLog.objects.filter(action="api_token.revoked", actor=client.user).exists()
