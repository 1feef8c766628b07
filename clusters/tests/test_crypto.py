"""Secrets at rest: ciphertext in the database, masked string forms, key rotation."""

from __future__ import annotations

import io
import json
import logging

import pytest
from cryptography.fernet import Fernet
from django.core import serializers
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from clusters import crypto
from clusters.fields import MASK, Secret, reveal
from clusters.models import Cluster, SSHCredential
from clusters.services.encryption import encryption_keys_rotate

from .factories import make_cluster, make_credential, ssh_private_key

pytestmark = pytest.mark.django_db

OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()
KUBECONFIG = "apiVersion: v1\nclusters:\n- cluster:\n    server: https://10.0.0.11:6443\n  name: default\n"
PASSPHRASE = "correct horse battery staple"


def raw_row(model: type, pk: int) -> dict[str, object]:
    """The row as stored, read with SQL (no model field conversion)."""
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table} WHERE id = %s", [pk])  # noqa: S608
        columns = [column[0] for column in cursor.description]
        return dict(zip(columns, cursor.fetchone(), strict=True))


def raw_value(model: type, pk: int, column: str) -> str:
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {connection.ops.quote_name(column)} FROM {table} WHERE id = %s", [pk])  # noqa: S608
        return cursor.fetchone()[0]


@pytest.fixture
def secrets_stored() -> tuple[Cluster, SSHCredential, dict[str, str]]:
    key_text = ssh_private_key("ed25519", passphrase=PASSPHRASE)
    credential = make_credential(private_key=key_text, passphrase=PASSPHRASE)
    cluster = make_cluster(ssh_credential=credential)
    Cluster.objects.filter(pk=cluster.pk).update(kubeconfig=KUBECONFIG)
    cluster.refresh_from_db()
    plain = {
        "token": reveal(cluster.token),
        "kubeconfig": KUBECONFIG,
        "private_key": key_text.strip(),
        "passphrase": PASSPHRASE,
    }
    return cluster, credential, plain


def _fragments(plain: str) -> list[str]:
    """Distinctive pieces of a secret: the whole value and, for multi-line ones, each long line."""
    return [plain] + [line for line in plain.splitlines() if len(line) >= 16 and "-----" not in line]


def test_raw_rows_hold_no_plaintext(secrets_stored):
    cluster, credential, plain = secrets_stored
    cluster_row = raw_row(Cluster, cluster.pk)
    credential_row = raw_row(SSHCredential, credential.pk)
    stored = json.dumps([cluster_row, credential_row], default=str)
    for name, value in plain.items():
        for fragment in _fragments(value):
            assert fragment not in stored, f"plaintext of {name} found in the raw rows"
    for row, columns in ((cluster_row, ("token", "kubeconfig")), (credential_row, ("private_key", "passphrase"))):
        for column in columns:
            assert row[column].startswith("gAAAAA"), f"{column} is not Fernet ciphertext"
            assert reveal(crypto.decrypt(row[column])) == (
                plain[column] if column != "private_key" else plain[column] + "\n"
            )


def test_values_written_by_update_are_encrypted_too(secrets_stored):
    cluster, _, _ = secrets_stored
    Cluster.objects.filter(pk=cluster.pk).update(kubeconfig="kind: Config # fresh")
    stored = raw_value(Cluster, cluster.pk, "kubeconfig")
    assert "fresh" not in stored
    assert reveal(Cluster.objects.get(pk=cluster.pk).kubeconfig) == "kind: Config # fresh"


def test_empty_secret_stays_empty(secrets_stored):
    cluster, _, _ = secrets_stored
    other = make_cluster("beta", subnet="10.0.1")
    assert raw_value(Cluster, other.pk, "kubeconfig") == ""
    assert reveal(other.kubeconfig) == ""
    assert Cluster.objects.filter(kubeconfig="").count() == 1  # only "beta": the lookup of "" still works


def test_string_forms_never_show_secrets(secrets_stored, caplog):
    cluster, credential, plain = secrets_stored
    cluster = Cluster.objects.get(pk=cluster.pk)
    credential = SSHCredential.objects.get(pk=credential.pk)
    shown = [
        str(cluster),
        repr(cluster),
        str(credential),
        repr(credential),
        str(cluster.token),
        repr(cluster.token),
        f"{cluster.token}",
        f"{cluster.token:>60}",
        f"{cluster.token}",
        f"{cluster.kubeconfig}",
        repr(credential.private_key),
        str(credential.passphrase),
        repr(cluster.__dict__),
        repr(credential.__dict__),
        repr(vars(cluster)),
        serializers.serialize("json", [cluster, credential]),
    ]
    with caplog.at_level(logging.INFO):
        logging.getLogger("clusters.tests").info(
            "cluster %s token %s key %r", cluster, cluster.token, credential.private_key
        )
    shown.append(caplog.text)
    text = "\n".join(shown)
    for name, value in plain.items():
        for fragment in _fragments(value):
            assert fragment not in text, f"{name} leaked through a string form"
    assert MASK in str(cluster.token)
    assert repr(cluster.token) == f"<Secret {MASK}>"
    # The plain value is there for code that asks for it explicitly.
    assert reveal(cluster.token) == plain["token"]
    assert cluster.token.reveal() == plain["token"]
    assert reveal(credential.passphrase) == PASSPHRASE


def test_values_set_in_code_are_masked_before_saving():
    cluster = Cluster(name="gamma", rke2_version="v1.31.4+rke2r1")
    assert isinstance(cluster.token, Secret)  # the generated default
    assert len(reveal(cluster.token)) >= 32
    cluster.kubeconfig = "kubeconfig-in-memory-0123456789"
    assert isinstance(cluster.kubeconfig, Secret)
    assert "kubeconfig-in-memory" not in repr(cluster.kubeconfig) + str(cluster.kubeconfig) + repr(vars(cluster))
    assert repr(Secret("")) == "<Secret (empty)>" and str(Secret("")) == ""
    assert reveal(None) == "" and reveal("plain") == "plain"


def test_generated_tokens_are_long_random_and_distinct():
    tokens = {reveal(make_cluster(f"c{i}", subnet=f"10.0.{i}").token) for i in range(5)}
    assert len(tokens) == 5
    for token in tokens:
        assert len(token) >= 32
        assert token.isalnum()


def test_old_key_data_stays_readable_after_a_new_key_is_prepended():
    with override_settings(FIELD_ENCRYPTION_KEYS=[OLD_KEY]):
        cluster = make_cluster()
        token = reveal(cluster.token)
        stored = raw_value(Cluster, cluster.pk, "token")
    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY]):
        assert reveal(Cluster.objects.get(pk=cluster.pk).token) == token
        assert not crypto.is_current(stored)
        # New writes use the new key.
        Cluster.objects.filter(pk=cluster.pk).update(kubeconfig=KUBECONFIG)
        assert crypto.is_current(raw_value(Cluster, cluster.pk, "kubeconfig"))
    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY]):
        with pytest.raises(crypto.DecryptionError):
            Cluster.objects.get(pk=cluster.pk)


def test_rotate_command_reencrypts_everything_under_the_new_key():
    with override_settings(FIELD_ENCRYPTION_KEYS=[OLD_KEY]):
        credential = make_credential(private_key=ssh_private_key(passphrase=PASSPHRASE), passphrase=PASSPHRASE)
        clusters = [make_cluster(f"c{i}", subnet=f"10.0.{i}", ssh_credential=credential) for i in range(5)]
        Cluster.objects.filter(pk=clusters[0].pk).update(kubeconfig=KUBECONFIG)
        before = {cluster.pk: reveal(cluster.token) for cluster in clusters}
        old_ciphertexts = {cluster.pk: raw_value(Cluster, cluster.pk, "token") for cluster in clusters}

    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY, OLD_KEY]):
        out = io.StringIO()
        call_command("rotate_encryption_keys", "--batch-size", "2", stdout=out)
        output = out.getvalue()
        assert "clusters.Cluster.token: 5 re-encrypted, 0 already current, 0 empty" in output
        assert "clusters.Cluster.kubeconfig: 1 re-encrypted, 0 already current, 4 empty" in output
        assert "clusters.SSHCredential.private_key: 1 re-encrypted" in output
        assert "clusters.SSHCredential.passphrase: 1 re-encrypted" in output
        assert "Total: 8 re-encrypted, 0 already current, 0 unreadable." in output
        for cluster in clusters:
            stored = raw_value(Cluster, cluster.pk, "token")
            assert stored != old_ciphertexts[cluster.pk]
            assert crypto.is_current(stored)

        # Idempotent: a second run finds everything current and writes nothing.
        out = io.StringIO()
        call_command("rotate_encryption_keys", stdout=out)
        assert "Total: 0 re-encrypted, 8 already current, 0 unreadable." in out.getvalue()

    # The old key can go now.
    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY]):
        for cluster in Cluster.objects.all():
            assert reveal(cluster.token) == before[cluster.pk]
        assert reveal(Cluster.objects.get(pk=clusters[0].pk).kubeconfig) == KUBECONFIG
        assert reveal(SSHCredential.objects.get(pk=credential.pk).passphrase) == PASSPHRASE


def test_rotation_reports_values_no_key_opens():
    with override_settings(FIELD_ENCRYPTION_KEYS=[OLD_KEY]):
        lost = make_cluster("lost")
    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY]):
        kept = make_cluster("kept", subnet="10.0.1")
        out = io.StringIO()
        with pytest.raises(CommandError, match="cannot be decrypted with any key"):
            call_command("rotate_encryption_keys", stdout=out)
        assert f"1 UNREADABLE (ids {lost.pk})" in out.getvalue()
        results = {result.label: result for result in encryption_keys_rotate()}
        assert results["clusters.Cluster.token"].unreadable == [lost.pk]
        assert results["clusters.Cluster.token"].current == 1
        assert reveal(Cluster.objects.get(pk=kept.pk).token)


def test_rotate_command_refuses_missing_keys():
    with override_settings(FIELD_ENCRYPTION_KEYS=[]):
        with pytest.raises(CommandError, match="FIELD_ENCRYPTION_KEYS is empty"):
            call_command("rotate_encryption_keys", stdout=io.StringIO())


def test_system_check_reports_missing_and_malformed_keys():
    with override_settings(FIELD_ENCRYPTION_KEYS=[]):
        assert [message.id for message in crypto.check_encryption_keys()] == ["clusters.E001"]
    with override_settings(FIELD_ENCRYPTION_KEYS=[NEW_KEY, "not-a-fernet-key"]):
        messages = crypto.check_encryption_keys()
        assert [message.id for message in messages] == ["clusters.E002"]
        assert "key 2" in messages[0].msg
    with override_settings(FIELD_ENCRYPTION_KEYS=[f" {NEW_KEY} ", ""]):  # stray spaces and empty items are ignored
        assert crypto.check_encryption_keys() == []
        assert crypto.decrypt(crypto.encrypt("x")) == "x"


def test_decrypting_something_that_is_not_ciphertext_fails_clearly():
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt("plain text that was never encrypted")
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt("nön-ascii")


def test_bytes_assigned_to_a_secret_field_are_decoded():
    cluster = make_cluster()
    cluster.kubeconfig = KUBECONFIG.encode()
    cluster.save()
    assert reveal(Cluster.objects.get(pk=cluster.pk).kubeconfig) == KUBECONFIG
