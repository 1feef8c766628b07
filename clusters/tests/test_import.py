"""Importing the previous system's clusters from a JSON export, a SQLite database and a PostgreSQL database."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from clusters.choices import ClusterStatus, InstallationStage, NodeRole, NodeStatus
from clusters.fields import reveal
from clusters.models import AuditLog, Cluster, Node
from clusters.services.legacy_import import LegacySourceError, legacy_clusters_import, redact_source

from .factories import make_cluster

pytestmark = pytest.mark.django_db

PROD_TOKEN = "K10" + "ab" * 32 + "::server:" + "c0ffee" * 6

# The old system's rows: clusters with their nodes in a JSON column.
LEGACY_CLUSTERS = [
    {
        "id": 1,
        "name": "prod",
        "version": "v1.28.5+rke2r1",
        "token": PROD_TOKEN,
        "server_url": "https://10.0.0.100:9345",
        "cni": "calico",
        "status": "running",
        "created_at": "2024-03-01 10:15:00",
        "nodes": [
            {"hostname": "cp1", "ip": "10.0.0.1", "role": "server"},
            {"hostname": "cp2", "internal_ip": "10.0.0.2", "external_ip": "203.0.113.2", "role": "server"},
            {"hostname": "w1", "ip": "10.0.0.21", "role": "agent"},
            {"hostname": "CP3", "ip": "10.0.0.3", "role": "server"},
        ],
    },
    {
        "id": 2,
        "name": "edge",
        "version": "1.29.1+rke2r1",
        "token": None,
        "server_url": None,
        "cni": None,
        "status": "failed",
        "created_at": None,
        "nodes": [
            {"hostname": "e1", "ip": "10.1.0.21", "role": "agent"},
            {"hostname": "e2", "ip": "10.1.0.1", "role": "server"},
        ],
    },
    {
        "id": 3,
        "name": "broken",
        "version": "v1.28.5+rke2r1",
        "token": "t" * 40,
        "server_url": None,
        "cni": None,
        "status": "running",
        "created_at": None,
        "nodes": [
            {"hostname": "ok1", "ip": "10.2.0.1", "role": "server"},
            {"hostname": "bad_host", "ip": "10.2.0.2", "role": "agent"},
            {"hostname": "b3", "ip": "10.2.0.300", "role": "agent"},
        ],
    },
]
COLUMNS = ("id", "name", "version", "token", "server_url", "cni", "status", "created_at", "nodes")


def run_import(source: str, *args: str) -> tuple[str, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("import_legacy_clusters", source, *args, stdout=out, no_color=True)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def snapshot() -> list[object]:
    """Everything the import may write, in comparable form."""
    clusters = list(
        Cluster.objects.order_by("name").values_list(
            "name",
            "rke2_version",
            "registration_address",
            "cni",
            "status",
            "installation_stage",
            "bootstrapped_at",
        )
    )
    tokens = [reveal(cluster.token) for cluster in Cluster.objects.order_by("name")]
    nodes = list(
        Node.objects.order_by("pk").values_list(
            "cluster__name",
            "hostname",
            "internal_ip",
            "external_ip",
            "role",
            "status",
            "installed_version",
            "updated_at",
        )
    )
    return [clusters, tokens, nodes, AuditLog.objects.count()]


def assert_imported_as_expected(output: str, error: CommandError | None) -> None:
    # The summary line and the invalid cluster, reported with its bad nodes.
    assert "Clusters: 2 imported, 0 already present, 1 invalid. Nodes: 6 imported, 3 skipped." in output
    assert "skipped: broken (invalid)" in output
    assert "broken: node 'bad_host' (hostname):" in output
    assert "broken: node 'b3' (internal_ip): Enter a valid IPv4 or IPv6 address." in output
    assert error is not None and "1 cluster(s) skipped as invalid" in str(error)
    assert "note: edge: no token in the source: a new one is generated" in output
    assert "imported: prod (4 nodes, initial master cp1)" in output
    assert "next: prod: assign an SSH credential, then run the adopt job" in output

    assert sorted(Cluster.objects.values_list("name", flat=True)) == ["edge", "prod"]
    assert not Node.objects.filter(hostname__in=["ok1", "bad_host", "b3"]).exists()  # skipped whole

    prod = Cluster.objects.get(name="prod")
    assert (prod.rke2_version, prod.registration_address, prod.cni) == ("v1.28.5+rke2r1", "10.0.0.100", "calico")
    assert (prod.status, prod.installation_stage) == (ClusterStatus.ACTIVE, InstallationStage.COMPLETE)
    assert prod.bootstrapped_at == datetime(2024, 3, 1, 10, 15, tzinfo=UTC)
    assert reveal(prod.token) == PROD_TOKEN
    nodes = {node.hostname: node for node in prod.cluster_nodes.all()}
    assert {name: node.role for name, node in nodes.items()} == {
        "cp1": NodeRole.INITIAL_MASTER,
        "cp2": NodeRole.MASTER,
        "w1": NodeRole.WORKER,
        "cp3": NodeRole.MASTER,
    }
    assert {node.status for node in nodes.values()} == {NodeStatus.ACTIVE}  # a JSON column: every node active
    assert {node.installed_version for node in nodes.values()} == {"v1.28.5+rke2r1"}
    assert prod.adoption_required  # nothing may rewrite its configuration before an adopt job
    assert (nodes["cp2"].internal_ip, nodes["cp2"].external_ip, nodes["cp2"].use_external_ip) == (
        "10.0.0.2",
        "203.0.113.2",
        False,
    )

    edge = Cluster.objects.get(name="edge")
    assert edge.rke2_version == "v1.29.1+rke2r1"
    assert edge.is_bootstrapped and edge.cni == "canal" and edge.registration_address == ""
    assert len(reveal(edge.token)) >= 32
    assert dict(edge.cluster_nodes.values_list("hostname", "role")) == {
        "e1": NodeRole.WORKER,
        "e2": NodeRole.INITIAL_MASTER,
    }

    # The imported token is encrypted at rest like any other.
    with connection.cursor() as cursor:
        cursor.execute("SELECT token FROM clusters_cluster WHERE name = %s", ["prod"])
        (stored,) = cursor.fetchone()
    assert PROD_TOKEN not in stored and "c0ffee" not in stored
    assert AuditLog.objects.filter(action="cluster.import").count() == 2


def assert_idempotent(source: str) -> None:
    before = snapshot()
    output, _ = run_import(source)
    assert "Clusters: 0 imported, 2 already present, 1 invalid. Nodes: 0 imported, 9 skipped." in output
    assert "skipped: prod (already present; left unchanged)" in output
    assert snapshot() == before


# JSON export --------------------------------------------------------------------------------------------------


@pytest.fixture
def json_export(tmp_path: Path) -> Path:
    path = tmp_path / "clusters.json"
    path.write_text(json.dumps(LEGACY_CLUSTERS))
    return path


def test_import_from_a_json_export(json_export):
    output, error = run_import(str(json_export))
    assert_imported_as_expected(output, error)
    assert_idempotent(str(json_export))


def test_dry_run_writes_nothing_and_reports_the_same(json_export):
    output, error = run_import(str(json_export), "--dry-run")
    assert output.startswith("Dry run: nothing is written.")
    assert "would import: prod (4 nodes, initial master cp1)" in output
    assert "Clusters: 2 would import, 0 already present, 1 invalid. Nodes: 6 would import, 3 skipped." in output
    assert error is not None
    assert not Cluster.objects.exists() and not Node.objects.exists() and not AuditLog.objects.exists()


def test_json_export_wrapped_in_an_object_and_existing_clusters_are_left_alone(tmp_path):
    make_cluster("prod", subnet="10.9.0")
    path = tmp_path / "export.json"
    path.write_text(json.dumps({"clusters": LEGACY_CLUSTERS[:2]}))
    output, error = run_import(str(path))
    assert error is None
    assert "Clusters: 1 imported, 1 already present, 0 invalid. Nodes: 2 imported, 4 skipped." in output
    prod = Cluster.objects.get(name="prod")
    assert prod.status == ClusterStatus.NEW and prod.cluster_nodes.count() == 1  # untouched


def test_every_cluster_problem_is_named(tmp_path):
    base = {"version": "v1.28.5+rke2r1", "nodes": [{"hostname": "n1", "ip": "10.0.0.1", "role": "server"}]}
    rows = [
        {**base, "name": "Not A DNS Name"},
        {**base, "name": ""},
        {**base, "name": "noversion", "version": None},
        {**base, "name": "agentsonly", "nodes": [{"hostname": "a1", "ip": "10.0.0.1", "role": "agent"}]},
        {**base, "name": "badrole", "nodes": [{"hostname": "n1", "ip": "10.0.0.1", "role": "controlplane"}]},
        {
            **base,
            "name": "dupes",
            "nodes": [
                {"hostname": "n1", "ip": "10.0.0.1", "role": "server"},
                {"hostname": "n1", "ip": "10.0.0.1", "role": "agent"},
            ],
        },
        {**base, "name": "badcidr", "cluster_cidr": "10.43.0.0/16"},
        {**base, "name": "badvars", "cluster_vars": json.dumps({"server": "https://elsewhere:9345"})},
        {**base, "name": "nonodes", "nodes": []},
        {**base, "name": "spacetoken", "token": "has space in it"},
        {**base, "name": "badcni", "cni": "weave", "nodes": [{"hostname": "x_y", "ip": "10.0.0.1", "role": "server"}]},
        "not an object",
        {**base, "name": "fine", "token": "short-token"},
        {**base, "name": "fine"},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(rows))
    output, error = run_import(str(path))
    expectations = [
        "name: Enter a DNS-safe name",
        "#2: no name.",
        "noversion: no RKE2 version in the source",
        "agentsonly: no server node",
        "badrole: node 'n1' (role): 'controlplane' is not 'server' or 'agent'.",
        "dupes: node 'n1' (hostname): n1 is also used by node 'n1'.",
        "badcidr: service_cidr: The service CIDR 10.43.0.0/16 overlaps the cluster CIDR 10.43.0.0/16.",
        "badvars: cluster_vars: 'server' cannot be set here",
        "nonodes: no nodes in the source.",
        "spacetoken: token: contains whitespace",
        "badcni: cni: Value 'weave' is not a valid choice.",
        "badcni: node 'x_y' (hostname): Enter a valid RFC 1123 host name",
        "#12: not a mapping of cluster fields.",
        "fine: the source has another cluster with this name.",
        "note: fine: the token has only 11 characters; it is kept because the running cluster uses it.",
        "Clusters: 1 imported, 0 already present, 13 invalid.",
    ]
    for expected in expectations:
        assert expected in output, expected
    assert error is not None
    assert list(Cluster.objects.values_list("name", flat=True)) == ["fine"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/nonexistent/export.json", "no such file"),
        ("mysql://db/old", "Unsupported source"),
        ("sqlite:///nonexistent.db", "no such SQLite database"),
    ],
)
def test_unreadable_sources_are_reported(source, message):
    with pytest.raises(CommandError, match=message):
        call_command("import_legacy_clusters", source, stdout=io.StringIO())


def test_malformed_json_and_missing_tables_are_reported(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("import_legacy_clusters", str(bad), stdout=io.StringIO())
    empty_db = tmp_path / "empty.db"
    sqlite3.connect(empty_db).close()
    with pytest.raises(CommandError, match="has no table 'clusters'"):
        call_command("import_legacy_clusters", f"sqlite:///{empty_db}", stdout=io.StringIO())
    with pytest.raises(LegacySourceError, match="plain SQL identifier"):
        legacy_clusters_import(source=f"sqlite:///{empty_db}", table="clusters; DROP TABLE x")


def test_passwords_in_source_urls_are_masked():
    assert redact_source("postgres://old:hunter2@db:5432/rke2") == "postgres://old:***@db:5432/rke2"
    assert redact_source("postgres://old@db/rke2") == "postgres://old@db/rke2"
    assert redact_source("/tmp/export.json") == "/tmp/export.json"


# SQLite database of the old system ---------------------------------------------------------------------------------


def build_sqlite_source(path: Path, *, nodes_table: bool = False) -> None:
    """The old system's schema as SQLAlchemy created it on SQLite (JSON columns are TEXT there)."""
    db = sqlite3.connect(path)
    with db:
        if nodes_table:
            # After the old system's own migration: nodes in their own table, enum names as SQLAlchemy stores them.
            db.execute(
                "CREATE TABLE clusters (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL UNIQUE, version VARCHAR, "
                "token VARCHAR, server_url VARCHAR, cni VARCHAR, status VARCHAR, created_at DATETIME, "
                "installation_stage VARCHAR, cluster_vars JSON)"
            )
            db.execute(
                "CREATE TABLE nodes (id INTEGER PRIMARY KEY, cluster_id INTEGER REFERENCES clusters(id), "
                "hostname VARCHAR NOT NULL, internal_ip VARCHAR NOT NULL, external_ip VARCHAR, role VARCHAR, "
                "status VARCHAR, use_external_ip BOOLEAN, node_vars JSON)"
            )
            db.execute(
                "INSERT INTO clusters VALUES (7, 'migrated', 'v1.30.2+rke2r1', ?, 'lb.example.com', 'canal', "
                "'running', '2025-01-02T03:04:05', 'complete', ?)",
                [PROD_TOKEN, json.dumps({"write-kubeconfig-mode": "0400"})],
            )
            db.executemany(
                "INSERT INTO nodes VALUES (?, 7, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (1, "m1", "10.5.0.1", None, "INITIAL_MASTER", "ACTIVE", 0, None),
                    (
                        2,
                        "m2",
                        "10.5.0.2",
                        "198.51.100.2",
                        "MASTER",
                        "ACTIVE",
                        1,
                        json.dumps({"kubelet-arg+": ["max-pods=200"]}),
                    ),
                    (3, "gone", "10.5.0.3", None, "WORKER", "REMOVED", 0, None),
                    (4, "w1", "10.5.0.21", None, "WORKER", "ACTIVE", 0, None),
                ],
            )
        else:
            db.execute(
                "CREATE TABLE clusters (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL UNIQUE, version VARCHAR, "
                "token VARCHAR, server_url VARCHAR, cni VARCHAR, status VARCHAR, created_at DATETIME, nodes JSON)"
            )
            db.executemany(
                f"INSERT INTO clusters ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",  # noqa: S608
                [tuple(json.dumps(row[c]) if c == "nodes" else row[c] for c in COLUMNS) for row in LEGACY_CLUSTERS],
            )
    db.close()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_from_a_sqlite_database(tmp_path):
    path = tmp_path / "rke2.db"
    build_sqlite_source(path)
    digest = file_digest(path)
    output, error = run_import(f"sqlite:///{path}")
    assert_imported_as_expected(output, error)
    assert_idempotent(f"sqlite:///{path}")
    assert file_digest(path) == digest  # opened read-only


def test_relative_sqlite_url(tmp_path, monkeypatch):
    build_sqlite_source(tmp_path / "rke2.db")
    monkeypatch.chdir(tmp_path)
    output, _ = run_import("sqlite:///rke2.db", "--dry-run")
    assert "Clusters: 2 would import" in output


def test_import_from_a_database_with_a_nodes_table(tmp_path):
    path = tmp_path / "rke2.db"
    build_sqlite_source(path, nodes_table=True)
    output, error = run_import(f"sqlite:///{path}")
    assert error is None, output
    assert "Clusters: 1 imported, 0 already present, 0 invalid. Nodes: 3 imported, 0 skipped." in output
    cluster = Cluster.objects.get(name="migrated")
    assert cluster.registration_address == "lb.example.com"
    assert cluster.cluster_vars == {"write-kubeconfig-mode": "0400"}
    nodes = {node.hostname: node for node in cluster.cluster_nodes.all()}
    assert {name: node.role for name, node in nodes.items()} == {"m1": "initial_master", "m2": "master", "w1": "worker"}
    assert nodes["m2"].use_external_ip and nodes["m2"].ansible_ip == "198.51.100.2"
    assert nodes["m2"].node_vars == {"kubelet-arg+": ["max-pods=200"]}


# PostgreSQL database of the old system -----------------------------------------------------------------------------


def postgres_server_url() -> str:
    """A PostgreSQL server to create the source database on: TEST_POSTGRES_URL (set by scripts/test), or the
    server of DATABASE_URL. Skipped locally when there is none; a failure under CI."""
    url = os.environ.get("TEST_POSTGRES_URL", "")
    if not url and connection.vendor == "postgresql":
        url = os.environ.get("DATABASE_URL", "")
    if not url:
        message = "no PostgreSQL server: set TEST_POSTGRES_URL or run with a postgres DATABASE_URL"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return url


@pytest.fixture
def postgres_source() -> Iterator[str]:
    import psycopg
    from psycopg.types.json import Json

    server = urlsplit(postgres_server_url())
    name = f"legacy_import_src_{uuid.uuid4().hex[:12]}"
    admin_url = urlunsplit(server._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    source = urlunsplit(server._replace(path=f"/{name}"))
    try:
        with psycopg.connect(source) as db:
            db.execute(
                "CREATE TABLE clusters (id SERIAL PRIMARY KEY, name VARCHAR NOT NULL UNIQUE, version VARCHAR, "
                "token VARCHAR, server_url VARCHAR, cni VARCHAR, status VARCHAR, created_at TIMESTAMP, nodes JSON)"
            )
            with db.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO clusters ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})",  # noqa: S608
                    [tuple(Json(row[c]) if c == "nodes" else row[c] for c in COLUMNS) for row in LEGACY_CLUSTERS],
                )
        yield source
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_import_from_a_postgres_database(postgres_source):
    output, error = run_import(postgres_source)
    assert_imported_as_expected(output, error)
    assert_idempotent(postgres_source)
    import psycopg

    with psycopg.connect(postgres_source) as db:  # the source is left as it was
        assert db.execute("SELECT count(*) FROM clusters").fetchone()[0] == 3


def test_unreachable_postgres_source_is_reported_without_its_password():
    with pytest.raises(CommandError) as info:
        call_command("import_legacy_clusters", "postgres://old:hunter2@127.0.0.1:1/rke2", stdout=io.StringIO())
    assert "cannot connect" in str(info.value)
    assert "hunter2" not in str(info.value)


# The old system's PostgreSQL database after its own migration 001: nodes in a nodes table with roles and statuses
# (SQLAlchemy enums: PostgreSQL enum types holding the member names), extra config in JSON columns.

OLD_SCHEMA_AFTER_001 = [
    "CREATE TYPE noderole AS ENUM ('INITIAL_MASTER', 'MASTER', 'WORKER')",
    "CREATE TYPE nodestatus AS ENUM ('PENDING', 'INSTALLING', 'ACTIVE', 'FAILED', 'REMOVED')",
    (
        "CREATE TABLE clusters (id SERIAL PRIMARY KEY, name VARCHAR NOT NULL UNIQUE, version VARCHAR, "
        "token VARCHAR, server_url VARCHAR, cni VARCHAR, status VARCHAR, installation_stage VARCHAR, "
        "created_at TIMESTAMP, cluster_vars JSON)"
    ),
    (
        "CREATE TABLE nodes (id SERIAL PRIMARY KEY, cluster_id INTEGER NOT NULL REFERENCES clusters(id), "
        "hostname VARCHAR NOT NULL, internal_ip VARCHAR NOT NULL, external_ip VARCHAR, role noderole NOT NULL, "
        "status nodestatus NOT NULL, use_external_ip BOOLEAN DEFAULT false, node_vars JSON, created_at TIMESTAMP)"
    ),
]


@pytest.fixture
def postgres_source_after_001() -> Iterator[str]:
    import psycopg
    from psycopg.types.json import Json

    server = urlsplit(postgres_server_url())
    name = f"legacy_import_001_{uuid.uuid4().hex[:12]}"
    admin_url = urlunsplit(server._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    source = urlunsplit(server._replace(path=f"/{name}"))
    try:
        with psycopg.connect(source) as db:
            for statement in OLD_SCHEMA_AFTER_001:
                db.execute(statement)
            db.execute(
                "INSERT INTO clusters VALUES (1, 'calico-prod', 'v1.30.2+rke2r1', %s, 'https://lb.example.com:9345', "
                "NULL, 'running', 'complete', '2025-02-03 04:05:06', %s)",
                [
                    PROD_TOKEN,
                    Json({"cni": "calico", "tls-san": ["api.example.com"], "etcd-snapshot-retention": 10}),
                ],
            )
            db.execute(
                "INSERT INTO clusters VALUES (2, 'plain', 'v1.30.2+rke2r1', NULL, NULL, 'canal', 'running', "
                "'complete', NULL, NULL)"
            )
            rows = [
                (1, 1, "m1", "10.6.0.1", "INITIAL_MASTER", "ACTIVE", {"node-label": ["zone=a"]}),
                (2, 1, "m2", "10.6.0.2", "MASTER", "FAILED", None),
                (3, 1, "w-old", "10.6.0.20", "WORKER", "REMOVED", None),
                (
                    4,
                    1,
                    "w1",
                    "10.6.0.21",
                    "WORKER",
                    "ACTIVE",
                    {"node-label": "disk=ssd,zone=b", "node-taint": ["gpu=true:NoSchedule"], "kubelet-arg": ["v=2"]},
                ),
                (5, 1, "w2", "10.6.0.22", "WORKER", "PENDING", None),
                (6, 2, "p1", "10.7.0.1", "INITIAL_MASTER", "ACTIVE", None),
            ]
            with db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO nodes (id, cluster_id, hostname, internal_ip, role, status, node_vars) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(*row[:6], Json(row[6]) if row[6] is not None else None) for row in rows],
                )
        yield source
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_import_from_postgres_after_the_old_nodes_table_migration(postgres_source_after_001):
    output, error = run_import(postgres_source_after_001)
    assert error is None, output
    assert "Clusters: 2 imported, 0 already present, 0 invalid. Nodes: 5 imported, 0 skipped." in output

    cluster = Cluster.objects.get(name="calico-prod")
    # Old extra-config keys that have fields of their own land on those fields; the others stay extra config.
    assert cluster.cni == "calico"
    assert cluster.tls_san == ["api.example.com"]
    assert cluster.cluster_vars == {"etcd-snapshot-retention": 10}
    assert cluster.registration_address == "lb.example.com"
    assert cluster.adoption_required
    nodes = {node.hostname: node for node in cluster.cluster_nodes.all()}
    # The source's statuses are kept: failed stays failed, pending stays pending, removed is not imported.
    assert {name: node.status for name, node in nodes.items()} == {
        "m1": NodeStatus.ACTIVE,
        "m2": NodeStatus.FAILED,
        "w1": NodeStatus.ACTIVE,
        "w2": NodeStatus.PENDING,
    }
    assert {name: node.role for name, node in nodes.items()} == {
        "m1": NodeRole.INITIAL_MASTER,
        "m2": NodeRole.MASTER,
        "w1": NodeRole.WORKER,
        "w2": NodeRole.WORKER,
    }
    assert nodes["w2"].installed_version == "" and nodes["m2"].installed_version == "v1.30.2+rke2r1"
    assert nodes["m1"].labels == ["zone=a"] and nodes["m1"].node_vars == {}
    assert nodes["w1"].labels == ["disk=ssd", "zone=b"]
    assert nodes["w1"].taints == ["gpu=true:NoSchedule"]
    assert nodes["w1"].node_vars == {"kubelet-arg": ["v=2"]}
    assert reveal(cluster.token) == PROD_TOKEN

    plain = Cluster.objects.get(name="plain")
    assert plain.cni == "canal" and plain.adoption_required
    assert "note: plain: no token in the source" in output
    assert list(plain.cluster_nodes.values_list("hostname", "status")) == [("p1", NodeStatus.ACTIVE)]


def test_conflicting_old_keys_are_named(tmp_path):
    base = {"version": "v1.28.5+rke2r1", "nodes": [{"hostname": "n1", "ip": "10.0.0.1", "role": "server"}]}
    rows = [
        {**base, "name": "twocni", "cni": "canal", "cluster_vars": {"cni": "cilium"}},
        {
            **base,
            "name": "twoips",
            "nodes": [{"hostname": "n1", "ip": "10.0.0.1", "role": "server", "node_vars": {"node-ip": "10.0.0.9"}}],
        },
        {**base, "name": "twotokens", "token": PROD_TOKEN, "cluster_vars": {"token": "another-token-value"}},
        {**base, "name": "badlabel", "nodes": [{**base["nodes"][0], "node_vars": {"node-label": ["no label"]}}]},
        {**base, "name": "tokeninvars", "cluster_vars": {"token": PROD_TOKEN, "cni": "cilium"}},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(rows))
    output, error = run_import(str(path))
    assert "twocni: cluster_vars (cni): 'cilium' differs from the cni column ('canal')." in output
    assert "twoips: node 'n1' (node_vars node-ip): '10.0.0.9' differs from the internal_ip column" in output
    assert "twotokens: cluster_vars (token): differs from the token column" in output
    assert "badlabel: node 'n1' (labels):" in output
    assert "Clusters: 1 imported, 0 already present, 4 invalid." in output
    assert error is not None
    cluster = Cluster.objects.get(name="tokeninvars")
    assert reveal(cluster.token) == PROD_TOKEN and cluster.cni == "cilium" and cluster.cluster_vars == {}
