"""History volume: the API lists, job detail, the live log's events page, the admin changelists and the page of a
job with 100,000 events, on a year of synthetic history; and the nightly event purge beside a live log.

The data is bulk-loaded (PostgreSQL ``COPY``, SQLite ``executemany`` in large transactions), in two steps in one
database: first a small history (20 clusters, 500 nodes, 200 jobs, 20,000 events), measured; then the full one
(2,000 clusters, 50,000 nodes, 20,000 jobs, 5,000,000 events on PostgreSQL, 1,200,000 on SQLite, one job holding
100,000), measured again. The small history is the baseline: every page must cost the same number of queries on
both (the query counts are compared), and the ratio of the p95 times shows what the volume costs.

Every page is requested ``BENCH_HISTORY_REQUESTS`` times (default 30) through Django's test client, logged in as
a superuser; p50 and p95 of the wall time are printed with the query count, the p95 of this process's CPU time
and the median time spent in SQL (on a busy machine the wall time includes waiting for a CPU; the CPU ratio to
the small history is the steadier measure of what the volume costs). Goal: p95 <= 150 ms and constant query
counts.

Then the purge (``job_events_purge``) deletes 1,000,000 events of jobs older than the retention, while a thread
reads an events page and stores an event of a running job every 50 ms, from its own connection: the longest such
read or write is the longest the purge blocked the live log (goal < 1 s). The purge rate is printed too.

Environment:

- ``BENCH_HISTORY_SCALE``: a factor on the full history (e.g. 0.05 for a quick run); default 1.
- ``BENCH_HISTORY_DATABASES``: ``postgresql,sqlite`` (default), or one of them. Each runs in a process of its own.
- ``DATABASE_URL``: a PostgreSQL server to create a throwaway database on; when it is not a PostgreSQL URL, a
  throwaway PostgreSQL server is started (as ``scripts/test`` does; needs root) and removed afterwards.
"""

from __future__ import annotations

import atexit
import datetime as dt
import io
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

MAX_P95_SECONDS = 0.150
MAX_BLOCK_SECONDS = 1.0
PG_BIN = "/usr/lib/postgresql/15/bin"

FULL = {"clusters": 2000, "nodes_per_cluster": 25, "jobs_per_cluster": 10, "audit": 100_000, "big_job": 100_000}
FULL_EVENTS = {"postgresql": 5_000_000, "sqlite": 1_200_000}
PURGE_EVENTS = 1_000_000
SMALL = {"clusters": 20, "nodes_per_cluster": 25, "jobs_per_cluster": 10, "audit": 1000, "big_job": 1000}
SMALL_EVENTS = 20_000
RETENTION_DAYS = 365

STATUSES = ["active", "active", "active", "active", "degraded", "failed", "new", "uninstalled"]
VERSIONS = ["v1.29.12+rke2r1", "v1.30.8+rke2r1", "v1.31.4+rke2r1", "v1.32.1+rke2r1"]
JOB_KINDS = ["install", "scale_out", "upgrade", "preflight", "health", "fetch_kubeconfig"]
ACTIONS = ["job.request.install", "job.request.upgrade", "job.cancel", "kubeconfig.download", "cluster.update"]
EVENT_NAMES = ["runner_on_ok", "runner_on_ok", "runner_on_ok", "runner_on_skipped", "playbook_on_task_start"]


# --- throwaway databases -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_postgres() -> str:
    """A throwaway PostgreSQL server (removed at exit), as scripts/test starts one; returns its server URL."""
    run = tempfile.mkdtemp(prefix="rke2portal-bench-pg-")
    os.chmod(run, 0o755)
    data = os.path.join(run, "data")
    port = _free_port()
    shutil.chown(run, "postgres", "postgres")

    def as_postgres(command: str) -> None:
        subprocess.run(["su", "postgres", "-c", command], check=True, stdout=subprocess.DEVNULL)

    def stop() -> None:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            subprocess.run(
                ["su", "postgres", "-c", f"{PG_BIN}/pg_ctl -D {data} -m fast stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        shutil.rmtree(run, ignore_errors=True)

    atexit.register(stop)
    as_postgres(f"{PG_BIN}/initdb -D {data} -A trust -U postgres -E UTF8 --no-sync")
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {run} -c fsync=off -c max_connections=50 "
        "-c shared_buffers=512MB -c maintenance_work_mem=256MB -c max_wal_size=8GB -c checkpoint_timeout=30min"
    )
    as_postgres(f"{PG_BIN}/pg_ctl -D {data} -l {run}/server.log -w -o '{options}' start")
    return f"postgres://postgres@127.0.0.1:{port}/postgres"


def setup_database(backend: str) -> str:
    workdir = tempfile.mkdtemp(prefix="rke2portal-bench-")
    atexit.register(shutil.rmtree, workdir, True)
    os.environ["RKE2PORTAL_DATA_DIR"] = workdir
    os.environ["DJANGO_SETTINGS_MODULE"] = "rke2portal.test_settings"
    if backend == "sqlite":
        os.environ["DATABASE_URL"] = f"sqlite:///{workdir}/history.sqlite3"
        description = "SQLite (throwaway file)"
    else:
        import psycopg

        given = os.environ.get("DATABASE_URL", "")
        server = given if given.startswith(("postgres://", "postgresql://")) else start_postgres()
        name = f"rke2portal_bench_history_{os.getpid()}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            from django.db import connections

            connections.close_all()
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        atexit.register(drop)
        os.environ["DATABASE_URL"] = server.rsplit("/", 1)[0] + f"/{name}"
        description = "PostgreSQL" + (" (given server)" if given.startswith("postgres") else " (throwaway server)")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from django.conf import settings

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    return description


# --- bulk loading --------------------------------------------------------------------------------------------------


class Loader:
    """Rows into a model's table, fast: COPY on PostgreSQL, executemany in one transaction on SQLite.

    ``columns`` name the attributes given per row (``id`` included when the rows carry their primary key); every
    other column gets the field's default, converted by Django once."""

    def __init__(self) -> None:
        from django.db import connection, transaction

        self.transaction = transaction
        self.connection = connection
        self.postgres = connection.vendor == "postgresql"

    def ts(self, value: dt.datetime | None) -> Any:
        if value is None:
            return None
        if self.postgres:
            return value
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ")

    def uuid(self) -> str:
        value = uuid.uuid4()
        return str(value) if self.postgres else value.hex

    def constants(self, model: Any, columns: tuple[str, ...]) -> tuple[list[str], list[Any]]:
        from django.db.models import JSONField

        template = model()
        names, values = [], []
        for field in model._meta.concrete_fields:
            if field.attname in columns or field.primary_key:
                continue
            value = field.pre_save(template, True)
            if isinstance(field, JSONField):
                value = json.dumps(value)
            else:
                value = field.get_db_prep_save(value, self.connection)
            names.append(field.column)
            values.append(value)
        return names, values

    def column_names(self, model: Any, columns: tuple[str, ...]) -> list[str]:
        fields = {field.attname: field.column for field in model._meta.concrete_fields}
        return [fields[name] for name in columns]

    def load(self, model: Any, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> int:
        names, constants = self.constants(model, columns)
        all_names = self.column_names(model, columns) + names
        table = model._meta.db_table
        quoted = ", ".join(f'"{name}"' for name in all_names)
        tail = tuple(constants)
        count = 0
        with self.connection.cursor() as cursor:
            if self.postgres:
                with cursor.cursor.copy(f'COPY "{table}" ({quoted}) FROM STDIN') as copy:
                    for row in rows:
                        copy.write_row(row + tail)
                        count += 1
            else:
                marks = ", ".join("?" for _ in all_names)
                sql = f'INSERT INTO "{table}" ({quoted}) VALUES ({marks})'  # noqa: S608 - table and columns from the models

                def full_rows() -> Iterator[tuple[Any, ...]]:
                    nonlocal count
                    for row in rows:
                        count += 1
                        yield row + tail

                with self.transaction.atomic():
                    cursor.cursor.executemany(sql, full_rows())
        return count

    def load_events(self, job_events: list[tuple[int, int, dt.datetime]]) -> int:
        """``(job id, event count, finished at)`` per job: that many events, counters 1..count."""
        from clusters.models import JobEvent

        columns = ("job_id", "counter", "event", "host_name", "task", "stdout", "created", "ingested_at", "stage")
        names, constants = self.constants(JobEvent, columns)
        all_names = self.column_names(JobEvent, columns) + names
        table = JobEvent._meta.db_table
        quoted = ", ".join(f'"{name}"' for name in all_names)
        hosts = [f"node-{index:03d}" for index in range(25)]
        total = 0
        if self.postgres:

            def text(value: Any) -> str:
                if value is None:
                    return "\\N"
                if isinstance(value, bool):
                    return "t" if value else "f"
                return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")

            tail = "\t".join(text(value) for value in constants)
            with self.connection.cursor() as cursor:
                # The rows are consistent by construction: skip the per-row foreign key triggers when allowed.
                try:
                    cursor.execute("SET session_replication_role = replica")
                except Exception:  # noqa: BLE001 - not a superuser: keep the checks
                    pass
                with cursor.cursor.copy(f'COPY "{table}" ({quoted}) FROM STDIN') as copy:
                    buffer = io.StringIO()
                    for job_id, count, finished in job_events:
                        stamp = (finished - dt.timedelta(minutes=10)).isoformat()
                        for counter in range(1, count + 1):
                            host = hosts[counter % 25]
                            buffer.write(
                                f"{job_id}\t{counter}\t{EVENT_NAMES[counter % 5]}\t{host}\tTask {counter % 97}\t"
                                f'ok: [{host}] => (item={counter}) => {{"msg": "line {counter}"}}\t'
                                f"{stamp}\t{stamp}\tworkers\t{tail}\n"
                            )
                        total += count
                        if buffer.tell() > 4_000_000:
                            copy.write(buffer.getvalue())
                            buffer = io.StringIO()
                    copy.write(buffer.getvalue())
                cursor.execute("SET session_replication_role = DEFAULT")
            return total

        tail_values = tuple(constants)

        def rows() -> Iterator[tuple[Any, ...]]:
            for job_id, count, finished in job_events:
                stamp = self.ts(finished - dt.timedelta(minutes=10))
                for counter in range(1, count + 1):
                    host = hosts[counter % 25]
                    yield (
                        job_id,
                        counter,
                        EVENT_NAMES[counter % 5],
                        host,
                        f"Task {counter % 97}",
                        f'ok: [{host}] => (item={counter}) => {{"msg": "line {counter}"}}',
                        stamp,
                        stamp,
                        "workers",
                        *tail_values,
                    )

        marks = ", ".join("?" for _ in all_names)
        sql = f'INSERT INTO "{table}" ({quoted}) VALUES ({marks})'  # noqa: S608 - table and columns from the models
        batch: list[tuple[Any, ...]] = []
        with self.connection.cursor() as cursor:
            for row in rows():
                batch.append(row)
                if len(batch) >= 200_000:
                    with self.transaction.atomic():
                        cursor.cursor.executemany(sql, batch)
                    total += len(batch)
                    batch = []
            if batch:
                with self.transaction.atomic():
                    cursor.cursor.executemany(sql, batch)
                total += len(batch)
        return total

    def finish(self) -> None:
        """Sequences after explicit primary keys; fresh planner statistics."""
        from django.core.management.color import no_style

        from clusters.models import AuditLog, Cluster, Job, JobHostSummary, Node

        with self.connection.cursor() as cursor:
            if self.postgres:
                for sql in self.connection.ops.sequence_reset_sql(
                    no_style(), [Cluster, Node, Job, AuditLog, JobHostSummary]
                ):
                    cursor.execute(sql)
                cursor.execute("VACUUM ANALYZE")
            else:
                cursor.execute("ANALYZE")


def next_id(model: Any) -> int:
    from django.db.models import Max

    return (model.objects.aggregate(top=Max("pk"))["top"] or 0) + 1


def load_history(
    loader: Loader,
    *,
    label: str,
    clusters: int,
    nodes_per_cluster: int,
    jobs_per_cluster: int,
    events: int,
    big_job: int,
    purge_events: int,
    audit: int,
    actor_id: int,
) -> dict[str, Any]:
    """One bulk-loaded slice of history; returns the ids and counts the measurements need."""
    from clusters.models import AuditLog, Cluster, Job, JobHostSummary, Node

    now = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    first_cluster = next_id(Cluster)
    cluster_ids = list(range(first_cluster, first_cluster + clusters))
    loader.load(
        Cluster,
        ("id", "name", "status", "installation_stage", "rke2_version", "created_at", "updated_at"),
        (
            (
                cid,
                f"{label}-{cid:05d}",
                STATUSES[cid % len(STATUSES)],
                "complete",
                VERSIONS[cid % len(VERSIONS)],
                loader.ts(now - dt.timedelta(days=cid % 400)),
                loader.ts(now),
            )
            for cid in cluster_ids
        ),
    )
    first_node = next_id(Node)

    def node_rows() -> Iterator[tuple[Any, ...]]:
        node_id = first_node
        for cid in cluster_ids:
            for index in range(nodes_per_cluster):
                role = "initial_master" if index == 0 else "master" if index < 3 else "worker"
                status = "failed" if index == nodes_per_cluster - 1 and cid % 7 == 0 else "active"
                yield (
                    node_id,
                    cid,
                    f"{label}-{cid}-node-{index:03d}",
                    f"10.{cid // 250 % 250}.{cid % 250}.{index + 1}",
                    role,
                    status,
                    VERSIONS[cid % len(VERSIONS)],
                    loader.ts(now),
                    loader.ts(now),
                )
                node_id += 1

    loader.load(
        Node,
        (
            "id",
            "cluster_id",
            "hostname",
            "internal_ip",
            "role",
            "status",
            "installed_version",
            "created_at",
            "updated_at",
        ),
        node_rows(),
    )

    # Jobs: the oldest ones (finished before the retention) hold the events the purge deletes.
    first_job = next_id(Job)
    job_count = clusters * jobs_per_cluster
    job_ids = list(range(first_job, first_job + job_count))
    per_job = max(1, (events - big_job) // max(1, job_count - 1))
    purge_jobs = min(job_count - 1, math.ceil(purge_events / per_job)) if purge_events else 0
    big_job_id = job_ids[-1]
    finished: dict[int, dt.datetime] = {}
    for index, job_id in enumerate(job_ids):
        if index < purge_jobs:
            finished[job_id] = now - dt.timedelta(days=RETENTION_DAYS + 30, minutes=index)
        else:
            finished[job_id] = now - dt.timedelta(days=1, seconds=(job_count - index) * 1200 % (300 * 86400))
    counts = dict.fromkeys(job_ids, per_job)
    counts[big_job_id] = big_job
    if purge_jobs:
        purge_total = per_job * purge_jobs
        counts[job_ids[purge_jobs - 1]] += max(0, purge_events - purge_total)

    def job_rows() -> Iterator[tuple[Any, ...]]:
        for index, job_id in enumerate(job_ids):
            end = finished[job_id]
            status = "failed" if index % 9 == 0 else "successful"
            yield (
                job_id,
                loader.uuid(),
                cluster_ids[index % clusters],
                JOB_KINDS[index % len(JOB_KINDS)],
                status,
                json.dumps(["initial_master", "joining_masters", "workers"]),
                "workers",
                3 if status == "successful" else 2,
                actor_id,
                loader.ts(end - dt.timedelta(minutes=15)),
                loader.ts(end - dt.timedelta(minutes=14)),
                loader.ts(end),
                0 if status == "successful" else 2,
                "" if status == "successful" else "Stage workers failed on 1 host.",
                counts[job_id],
            )

    loader.load(
        Job,
        (
            "id",
            "public_id",
            "cluster_id",
            "kind",
            "status",
            "stages",
            "stage",
            "stages_completed",
            "requested_by_id",
            "created_at",
            "started_at",
            "finished_at",
            "rc",
            "explanation",
            "emitted_events",
        ),
        job_rows(),
    )
    loader.load(
        JobHostSummary,
        ("job_id", "host_name", "ok", "changed", "processed"),
        ((big_job_id, f"node-{index:03d}", 40, 3, 1) for index in range(25)),
    )
    loader.load(
        AuditLog,
        ("created_at", "actor_id", "action", "cluster_id", "object_repr", "detail"),
        (
            (
                loader.ts(now - dt.timedelta(minutes=index * 5)),
                actor_id,
                ACTIONS[index % len(ACTIONS)],
                cluster_ids[index % clusters],
                f"{label}-{cluster_ids[index % clusters]:05d}",
                json.dumps({"job": job_ids[index % job_count]}),
            )
            for index in range(audit)
        ),
    )
    stored = loader.load_events([(job_id, counts[job_id], finished[job_id]) for job_id in job_ids])
    loader.finish()
    elapsed = time.perf_counter() - started
    rows = clusters * (1 + nodes_per_cluster + jobs_per_cluster) + audit + stored
    print(
        f"{label}: {clusters} clusters, {clusters * nodes_per_cluster} nodes, {job_count} jobs, {stored} events "
        f"({purge_jobs} old jobs hold {sum(counts[j] for j in job_ids[:purge_jobs])}), {audit} audit entries: "
        f"loaded in {elapsed:.1f} s ({rows / elapsed:,.0f} rows/s)",
        flush=True,
    )
    return {
        "cluster": cluster_ids[len(cluster_ids) // 2],
        "big_job": big_job_id,
        "big_job_events": big_job,
    }


# --- measurements --------------------------------------------------------------------------------------------------


def pages(ids: dict[str, Any]) -> list[tuple[str, str]]:
    cluster, job, deep = ids["cluster"], ids["big_job"], int(ids["big_job_events"] * 0.9)
    return [
        ("API clusters", "/api/clusters/"),
        ("API clusters filtered+ordered", "/api/clusters/?status=active&ordering=-created_at"),
        ("API nodes", f"/api/clusters/{cluster}/nodes/"),
        ("API nodes filtered+ordered", f"/api/clusters/{cluster}/nodes/?status=active&ordering=-hostname"),
        ("API jobs", "/api/jobs/"),
        ("API jobs filtered+ordered", "/api/jobs/?status=failed&ordering=-finished_at"),
        ("API jobs of a cluster", f"/api/jobs/?cluster={cluster}"),
        ("API audit log", "/api/audit-log/"),
        ("API audit filtered+ordered", "/api/audit-log/?action=job.cancel&ordering=-created_at"),
        ("API job detail", f"/api/jobs/{job}/"),
        ("API events page (deep)", f"/api/jobs/{job}/events/?after={deep}&limit=500"),
        ("admin clusters", "/admin/clusters/cluster/"),
        ("admin nodes", "/admin/clusters/node/"),
        ("admin jobs", "/admin/clusters/job/"),
        ("admin jobs filtered", "/admin/clusters/job/?status__exact=failed"),
        ("admin audit log", "/admin/clusters/auditlog/"),
        ("admin job page (big job)", f"/admin/clusters/job/{job}/change/"),
    ]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(len(ordered) * 0.95) - 1)]


def measure(client: Any, ids: dict[str, Any], requests: int) -> dict[str, dict[str, float]]:
    """name -> p50/p95 wall time, p95 of this process's CPU time, median SQL time (s) and queries, per page.

    The CPU time of this process (Django, templates, serializers) does not count the time spent waiting for a CPU
    on a busy machine, nor the database server's work (in the SQL time, measured around each query)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    results = {}
    for name, url in pages(ids):
        response = client.get(url)  # warm-up, and a check that the page works
        if response.status_code != 200:
            raise SystemExit(f"{name}: {url} answered {response.status_code}: {response.content[:300]!r}")
        times, cpu, sql = [], [], []
        queries = 0
        for _ in range(requests):
            with CaptureQueriesContext(connection) as captured:
                started, started_cpu = time.perf_counter(), time.process_time()
                client.get(url)
                times.append(time.perf_counter() - started)
                cpu.append(time.process_time() - started_cpu)
            queries = len(captured.captured_queries)
            sql.append(sum(float(query["time"]) for query in captured.captured_queries))
        results[name] = {
            "p50": statistics.median(times),
            "p95": p95(times),
            "cpu95": p95(cpu),
            "sql50": statistics.median(sql),
            "queries": queries,
        }
    return results


def slowest_queries(client: Any, url: str, top: int = 3) -> list[tuple[float, str]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        client.get(url)
    timed = sorted(((float(q["time"]), q["sql"]) for q in captured.captured_queries), reverse=True)
    return timed[:top]


def purge_beside_live_log(loader: Loader, expected: int) -> tuple[bool, float, float, int]:
    """Run the purge while a thread reads and writes a live log every 50 ms; (ok, max block s, events/s, ops)."""
    from django.db import connection

    from clusters.engine.reaper import job_events_purge
    from clusters.models import Cluster, Job, JobEvent
    from clusters.selectors import job_events_page

    cluster = Cluster.objects.create(name="live-log", rke2_version=VERSIONS[0])
    live = Job.objects.create(cluster=cluster, kind="install", status="running", stages=["workers"])
    JobEvent.objects.bulk_create(
        [
            JobEvent(job=live, counter=counter, event="runner_on_ok", stdout=f"line {counter}")
            for counter in range(1, 201)
        ]
    )
    stop = threading.Event()
    worst = [0.0]
    operations = [0]
    errors: list[BaseException] = []

    def live_log() -> None:
        from django.db import connection as thread_connection

        counter = 200
        try:
            while not stop.is_set():
                started = time.perf_counter()
                job_events_page(job_id=live.pk, after=counter - 100, limit=500)
                counter += 1
                JobEvent.objects.create(job_id=live.pk, counter=counter, event="runner_on_ok", stdout=f"line {counter}")
                worst[0] = max(worst[0], time.perf_counter() - started)
                operations[0] += 1
                stop.wait(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            thread_connection.close()

    thread = threading.Thread(target=live_log, name="live-log")
    thread.start()
    time.sleep(0.5)
    started = time.perf_counter()
    try:
        deleted = job_events_purge(older_than_days=RETENTION_DAYS)
    finally:
        elapsed = time.perf_counter() - started
        time.sleep(0.2)
        stop.set()
        thread.join()
    connection.close()
    if errors:
        print(f"live log thread failed: {errors[0]!r}", file=sys.stderr)
    rate = deleted / elapsed if elapsed else float("inf")
    print(
        f"purge: {deleted:,} events deleted in {elapsed:.1f} s ({rate:,.0f} events/s); live log: {operations[0]} "
        f"read+insert rounds, longest {worst[0] * 1000:.0f} ms (goal < {MAX_BLOCK_SECONDS * 1000:.0f} ms)",
        flush=True,
    )
    ok = not errors and worst[0] < MAX_BLOCK_SECONDS and deleted >= expected
    if deleted < expected:
        print(f"FAILED: expected at least {expected} events to be purged", file=sys.stderr)
    return ok, worst[0], rate, operations[0]


def run(backend: str) -> bool:
    scale = float(os.environ.get("BENCH_HISTORY_SCALE", "1"))
    requests = int(os.environ.get("BENCH_HISTORY_REQUESTS", "30"))
    description = setup_database(backend)
    from django.contrib.auth import get_user_model
    from django.test import Client

    print(
        f"database: {description}; scale {scale}; {requests} requests a page; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs",
        flush=True,
    )
    user = get_user_model().objects.create_superuser("bench-admin", "bench@example.invalid", "bench-password")
    client = Client()
    client.force_login(user)
    loader = Loader()

    small = load_history(loader, label="small", events=SMALL_EVENTS, purge_events=0, actor_id=user.pk, **SMALL)
    baseline = measure(client, small, requests)

    full = {
        key: max(1, int(value * scale)) if key != "nodes_per_cluster" and key != "jobs_per_cluster" else value
        for key, value in FULL.items()
    }
    full["clusters"] = max(1, full["clusters"] - SMALL["clusters"])
    events = max(full["big_job"] * 2, int(FULL_EVENTS[backend] * scale) - SMALL_EVENTS)
    purge = int(PURGE_EVENTS * scale)
    large = load_history(loader, label="large", events=events, purge_events=purge, actor_id=user.pk, **full)
    results = measure(client, large, requests)
    print(f"load average after the loads: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    ok = True
    print(
        f"{'page':<30} {'p50 ms':>7} {'p95 ms':>7} {'cpu p95':>7} {'sql p50':>7} {'queries':>7} | "
        f"{'small p95':>9} {'cpu p95':>7} {'queries':>7} | {'p95 ratio':>9} {'cpu ratio':>9}"
    )
    for name, big in results.items():
        small_row = baseline[name]
        flags = []
        if big["p95"] > MAX_P95_SECONDS:
            flags.append("SLOW")
        if big["queries"] != small_row["queries"]:
            flags.append("QUERIES GROW")
        ok = ok and not flags
        print(
            f"{name:<30} {big['p50'] * 1000:>7.1f} {big['p95'] * 1000:>7.1f} {big['cpu95'] * 1000:>7.1f} "
            f"{big['sql50'] * 1000:>7.1f} {big['queries']:>7} | {small_row['p95'] * 1000:>9.1f} "
            f"{small_row['cpu95'] * 1000:>7.1f} {small_row['queries']:>7} | {big['p95'] / small_row['p95']:>9.2f} "
            f"{big['cpu95'] / small_row['cpu95']:>9.2f} {' '.join(flags)}",
            flush=True,
        )
        if "SLOW" in flags and os.environ.get("BENCH_HISTORY_EXPLAIN"):
            for seconds, sql in slowest_queries(client, dict(pages(large))[name]):
                print(f"    {seconds * 1000:.0f} ms: {sql[:400]}")
    purge_ok, _block, _rate, _ops = purge_beside_live_log(loader, expected=purge)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return ok and purge_ok


def main() -> bool:
    backends = [name.strip() for name in os.environ.get("BENCH_HISTORY_DATABASES", "postgresql,sqlite").split(",")]
    ok = True
    for backend in backends:
        if backend not in FULL_EVENTS:
            print(f"Unknown database {backend!r}: use postgresql or sqlite", file=sys.stderr)
            return False
        print(f"-- {backend}", flush=True)
        done = subprocess.run([sys.executable, "-m", "bench.bench_history", backend], check=False)
        ok = ok and done.returncode == 0
    return ok


def _child(argv: list[str]) -> int:
    return 0 if run(argv[0]) else 1


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
