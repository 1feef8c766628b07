"""Moving the embedded SQLite database to PostgreSQL with export_database / import_database keeps every secret,
where dumpdata / loaddata would replace each one with the mask.

Each step runs ``manage.py`` in its own process, as an operator would, with the test settings' encryption keys on
both sides: source SQLite file, export, a new PostgreSQL database migrated and imported into, then the secrets read
back through the models and the raw tables checked for plaintext.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from clusters import crypto
from clusters.fields import MASK

from .test_import import postgres_server_url

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# Runs in the source database: data of every kind that holds a secret, then {model: {pk: {field: plain}}} of every
# encrypted column and the row count of every model.
POPULATE = """
import json
from django.contrib.auth.models import Group, User
from clusters.choices import JobKind, JobStatus
from clusters.engine import state
from clusters.fields import reveal
from clusters.models import Job, JobEvent
from clusters.services.encryption import encrypted_columns
from clusters.tests.factories import make_cluster, make_credential, ssh_private_key

key = ssh_private_key(passphrase="a passphrase to move")
credential = make_credential("movers", private_key=key, passphrase="a passphrase to move")
plain = make_credential("plain-key")
alpha = make_cluster("alpha", servers=3, workers=2, ssh_credential=credential)
beta = make_cluster("beta", servers=1, workers=1, ssh_credential=plain, subnet="10.1.0")
state.cluster_update(alpha.pk, kubeconfig="apiVersion: v1\\nusers:\\n- user:\\n    client-key-data: S2V5RGF0YQ==\\n")
job = Job.objects.create(cluster=alpha, kind=JobKind.INSTALL, status=JobStatus.FAILED, explanation="failed",
                         stages=["initial_master"], result={"facts": {"x": 1}})
JobEvent.objects.bulk_create([JobEvent(job=job, counter=n, event="runner_on_ok", stdout=f"line {n}") for n in range(1, 6)])
Job.objects.create(cluster=beta, kind=JobKind.HEALTH, status=JobStatus.SUCCESSFUL)
user = User.objects.create_user("operator-1", password="pw-operator-1")
user.groups.add(Group.objects.get(name="operators"))
"""

READ = """
import json
from django.apps import apps
from clusters.fields import reveal
from clusters.services.encryption import encrypted_columns
from clusters.services.transfer import EXCLUDED

secrets = {}
for model, field in encrypted_columns():
    for pk, value in model.objects.values_list("pk", field.name):
        secrets.setdefault(f"{model._meta.label}.{field.name}", {})[str(pk)] = reveal(value)
counts = {model._meta.label: model.objects.count() for model in apps.get_models()
          if model._meta.label_lower not in EXCLUDED}
print("RESULT:" + json.dumps({"secrets": secrets, "counts": counts}))
"""


def manage(database_url: str, data_dir: Path, *args: str) -> str:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "rke2portal.test_settings",
        "DATABASE_URL": database_url,
        "RKE2PORTAL_DATA_DIR": str(data_dir),
    }
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def manage_fails(database_url: str, data_dir: Path, *args: str) -> str:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "rke2portal.test_settings", "DATABASE_URL": database_url}
    env["RKE2PORTAL_DATA_DIR"] = str(data_dir)
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0, done.stdout
    return done.stderr


def read_back(database_url: str, data_dir: Path) -> dict[str, Any]:
    output = manage(database_url, data_dir, "shell", "-v", "0", "-c", READ)
    line = next(line for line in output.splitlines() if line.startswith("RESULT:"))
    return json.loads(line.removeprefix("RESULT:"))


@pytest.fixture
def postgres_target() -> Iterator[str]:
    import psycopg

    server = urlsplit(postgres_server_url())
    name = f"move_target_{uuid.uuid4().hex[:12]}"
    admin_url = urlunsplit(server._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(server._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def raw_postgres_values(url: str) -> list[tuple[str, str, str]]:
    """(table, column, text) of every text-like value of every table of the public schema."""
    import psycopg

    found = []
    with psycopg.connect(url) as db:
        tables = [row[0] for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            cursor = db.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - names from pg_tables
            columns = [column.name for column in cursor.description]
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    if isinstance(value, (dict, list)):
                        value = json.dumps(value)
                    if isinstance(value, str):
                        found.append((table, column, value))
    return found


def test_sqlite_to_postgresql_keeps_every_secret(tmp_path: Path, postgres_target: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    source = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    manage(source, data_dir, "migrate", "--noinput", "-v", "0")
    manage(source, data_dir, "shell", "-v", "0", "-c", POPULATE)
    before = read_back(source, data_dir)
    secrets = {label: values for label, values in before["secrets"].items() if any(values.values())}
    assert set(secrets) == {
        "clusters.Cluster.token",
        "clusters.Cluster.kubeconfig",
        "clusters.SSHCredential.private_key",
        "clusters.SSHCredential.passphrase",
    }
    plain_values = [value for values in secrets.values() for value in values.values() if value]

    # What dumpdata gives: the mask instead of every secret, so it cannot move a database.
    dumped = manage(source, data_dir, "dumpdata", "clusters.cluster", "clusters.sshcredential")
    assert MASK in dumped and not any(value in dumped for value in plain_values)

    export = tmp_path / "portal-export.json"
    output = manage(source, data_dir, "export_database", str(export))
    assert "Exported" in output
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    text = export.read_text()
    # No secret in clear in the file, nor the mask: ciphertext that the same keys open.
    assert not any(value in text for value in plain_values)
    key_lines = [line.strip() for value in plain_values for line in value.splitlines() if len(line.strip()) >= 16]
    assert not [line for line in key_lines if "-----" not in line and line in text]
    document = json.loads(text)
    tokens = [item["fields"]["token"] for item in document["objects"] if item["model"] == "clusters.cluster"]
    assert len(tokens) == 2 and MASK not in tokens
    assert sorted(crypto.decrypt(token) for token in tokens) == sorted(secrets["clusters.Cluster.token"].values())
    # loaddata does not take it for a fixture (it would store the ciphertext as the secret).
    manage_fails(source, data_dir, "loaddata", str(export))

    manage(postgres_target, data_dir, "migrate", "--noinput", "-v", "0")
    output = manage(postgres_target, data_dir, "import_database", str(export))
    assert "Imported" in output

    after = read_back(postgres_target, data_dir)
    assert after["secrets"] == before["secrets"]
    assert after["counts"] == before["counts"]
    assert after["counts"]["clusters.JobEvent"] == 5 and after["counts"]["clusters.Node"] == 7
    # Stored encrypted in PostgreSQL: no secret in clear in any table, every encrypted value opens.
    raw = raw_postgres_values(postgres_target)
    assert not [(table, column) for table, column, value in raw for secret in plain_values if secret in value]
    stored_tokens = [value for table, column, value in raw if (table, column) == ("clusters_cluster", "token")]
    assert sorted(crypto.decrypt(token) for token in stored_tokens) == sorted(
        secrets["clusters.Cluster.token"].values()
    )

    # The moved portal goes on: a new cluster gets the next id, and a second import is refused.
    manage(
        postgres_target,
        data_dir,
        "shell",
        "-v",
        "0",
        "-c",
        "from clusters.tests.factories import make_cluster; make_cluster('gamma', subnet='10.2.0')",
    )
    refused = manage_fails(postgres_target, data_dir, "import_database", str(export))
    assert "already holds" in refused


def test_an_export_under_other_keys_is_refused_with_the_reason(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    source = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    target = f"sqlite:///{tmp_path / 'target.sqlite3'}"
    manage(source, data_dir, "migrate", "--noinput", "-v", "0")
    manage(
        source, data_dir, "shell", "-v", "0", "-c", "from clusters.tests.factories import make_cluster; make_cluster()"
    )
    export = tmp_path / "export.json"
    manage(source, data_dir, "export_database", str(export))
    document = json.loads(export.read_text())
    for item in document["objects"]:
        if item["model"] == "clusters.cluster":
            item["fields"]["token"] = "gAAAAA" + "x" * 80  # not under any configured key
    export.write_text(json.dumps(document))
    manage(target, data_dir, "migrate", "--noinput", "-v", "0")

    message = manage_fails(target, data_dir, "import_database", str(export))

    assert "cannot be decrypted with FIELD_ENCRYPTION_KEYS" in message and "clusters.cluster" in message
    assert read_back(target, data_dir)["counts"]["clusters.Cluster"] == 0
    assert manage_fails(target, data_dir, "export_database", str(export))  # never overwrites a file
