"""Event ingestion: a playbook emitting more than 5,000 events, run through the job engine (every event masked,
batched and stored in the database while the playbook runs) and through plain ansible-runner with no database
writes, alternately in the same run.

Prints the wall time of both (best of ``BENCH_ROUNDS`` runs each, default 3), their ratio (target <= 1.15), the
stored events per second, the ingestion lag (event stored minus event emitted: median and 95th percentile), and
the capacity of the event writer alone (synthetic events queued as fast as possible), which shows the headroom
above what Ansible emits.
The database is a throwaway SQLite file, or a throwaway PostgreSQL database created on the server given by
``BENCH_POSTGRES_URL`` (e.g. ``postgres://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import setup_django

HOSTS = 5
ITEMS_PER_HOST = 1010
MAX_RATIO = 1.15
PLAYBOOK = """\
- name: Emit many events
  hosts: all
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Say something for every item
      ansible.builtin.debug:
        msg: "item {{ item }} of {{ inventory_hostname }}"
      loop: "{{ range(items | int) | list }}"
"""


def setup_database() -> str:
    """Django on a throwaway database; returns its description."""
    server = os.environ.get("BENCH_POSTGRES_URL", "")
    if not server:
        setup_django()
        return "SQLite"
    import atexit

    import psycopg

    name = f"rke2portal_bench_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    atexit.register(drop)
    workdir = tempfile.mkdtemp(prefix="rke2portal-bench-")
    atexit.register(shutil.rmtree, workdir, True)
    os.environ["RKE2PORTAL_DATA_DIR"] = workdir
    os.environ["DATABASE_URL"] = server.rsplit("/", 1)[0] + f"/{name}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "rke2portal.test_settings"
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    return "PostgreSQL"


def make_project() -> Path:
    project = Path(tempfile.mkdtemp(prefix="bench-events-"))
    (project / "events.yml").write_text(PLAYBOOK)
    return project


def inventory() -> dict[str, Any]:
    return {"all": {"hosts": {f"host{index}": {} for index in range(1, HOSTS + 1)}}}


def run_plain(project: Path) -> tuple[float, int]:
    """Plain ansible-runner: same playbook, same runner settings, events counted and dropped."""
    import ansible_runner

    private_dir = Path(tempfile.mkdtemp(prefix="bench-plain-", dir="/tmp"))
    count = 0

    def handler(event: dict[str, Any]) -> bool:
        nonlocal count
        count += 1
        return False

    from django.conf import settings

    started = time.perf_counter()
    try:
        result = ansible_runner.run(
            private_data_dir=str(private_dir),
            project_dir=str(project),
            playbook="events.yml",
            inventory=inventory(),
            extravars={"items": ITEMS_PER_HOST},
            quiet=True,
            event_handler=handler,
            cancel_callback=lambda: False,
            settings={"suppress_output_file": True, "pexpect_timeout": settings.JOB_PEXPECT_TIMEOUT_SECONDS},
            fact_cache_type="",
        )
        assert result.status == "successful", result.status
    finally:
        elapsed = time.perf_counter() - started
        shutil.rmtree(private_dir, ignore_errors=True)
    return elapsed, count


def run_engine(project: Path, job_id: int) -> tuple[float, int, int]:
    """The job engine: the same playbook through PlaybookRunner, every event stored by the EventWriter."""
    from django.conf import settings

    from clusters.engine.events import EventWriter
    from clusters.engine.redaction import Redactor
    from clusters.engine.runner import JobControl, PlaybookRun, PlaybookRunner, SSHAccess
    from clusters.models import JobEvent

    redactor = Redactor(["3f1c9a7e5b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d"])
    writer = EventWriter(
        job_id=job_id,
        redactor=redactor,
        batch_size=settings.JOB_EVENT_BATCH_SIZE,
        flush_seconds=settings.JOB_EVENT_FLUSH_SECONDS,
        queue_size=settings.JOB_EVENT_QUEUE_SIZE,
    )
    control = JobControl(
        job_id, poll_seconds=settings.JOB_CANCEL_POLL_SECONDS, heartbeat_seconds=settings.JOB_HEARTBEAT_SECONDS
    )
    work_dir = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    runner = PlaybookRunner(
        job_id=job_id,
        writer=writer,
        control=control,
        redactor=redactor,
        ssh=SSHAccess(),
        project_dir=project,
        work_dir=work_dir,
    )
    started = time.perf_counter()
    writer.start()
    try:
        outcome = runner.run(
            PlaybookRun(stage="all", playbook="events.yml", inventory=inventory(), extravars={"items": ITEMS_PER_HOST})
        )
    finally:
        writer.close()
    elapsed = time.perf_counter() - started
    shutil.rmtree(work_dir, ignore_errors=True)
    assert outcome.status == "successful", outcome.explanation
    stored = JobEvent.objects.filter(job_id=job_id).count()
    return elapsed, writer.emitted, stored


def writer_capacity(job_id: int, count: int = 20000) -> float:
    """Events per second the EventWriter alone stores (synthetic events queued as fast as possible)."""
    from django.conf import settings

    from clusters.engine.events import EventWriter, QueuedEvent
    from clusters.engine.redaction import Redactor

    writer = EventWriter(
        job_id=job_id,
        redactor=Redactor(["3f1c9a7e5b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c3e5b7d"]),
        batch_size=settings.JOB_EVENT_BATCH_SIZE,
        flush_seconds=settings.JOB_EVENT_FLUSH_SECONDS,
        queue_size=settings.JOB_EVENT_QUEUE_SIZE,
    )
    started = time.perf_counter()
    writer.start()
    for counter in range(1, count + 1):
        writer.put(
            QueuedEvent(
                counter=counter,
                stage="all",
                data={
                    "event": "runner_item_on_ok",
                    "uuid": f"00000000-0000-0000-0000-{counter:012d}",
                    "counter": counter,
                    "stdout": f'ok: [host1] => (item={counter}) => {{"msg": "item {counter} of host1"}}',
                    "start_line": counter,
                    "end_line": counter + 1,
                    "created": "2026-01-02T03:04:05.123456+00:00",
                    "event_data": {"host": "host1", "task": "Say something", "res": {"msg": f"item {counter}"}},
                },
            )
        )
    writer.close()
    return count / (time.perf_counter() - started)


def lag_seconds(job_id: int) -> list[float]:
    from clusters.models import JobEvent

    rows = JobEvent.objects.filter(job_id=job_id, created__isnull=False).values_list("created", "ingested_at")
    return sorted((ingested - created).total_seconds() for created, ingested in rows)


def main() -> bool:
    database = setup_database()
    from clusters.models import Cluster, Job

    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    project = make_project()
    cluster = Cluster.objects.create(name=f"bench-events-{os.getpid()}", rke2_version="v1.31.4+rke2r1")
    plain_times: list[float] = []
    engine_times: list[float] = []
    rates: list[float] = []
    lags: list[float] = []
    print(f"database: {database}; {HOSTS} hosts x {ITEMS_PER_HOST} items; {rounds} rounds", flush=True)
    print(f"{'run':>12} {'wall s':>8} {'events':>7} {'stored':>7} {'stored/s':>9}", flush=True)
    try:
        for _round in range(rounds):
            elapsed, count = run_plain(project)
            plain_times.append(elapsed)
            print(f"{'runner':>12} {elapsed:>8.2f} {count:>7} {'-':>7} {'-':>9}", flush=True)
            job = Job.objects.create(cluster=cluster, kind="health", status="running", stages=["all"])
            elapsed, emitted, stored = run_engine(project, job.pk)
            engine_times.append(elapsed)
            rates.append(stored / elapsed)
            lags.extend(lag_seconds(job.pk))
            print(f"{'engine':>12} {elapsed:>8.2f} {emitted:>7} {stored:>7} {stored / elapsed:>9.0f}", flush=True)
            if stored != emitted or emitted < 5000:
                print(f"FAILED: {emitted} events emitted, {stored} stored", file=sys.stderr)
                return False
            Job.objects.filter(pk=job.pk).update(status="successful")
    finally:
        shutil.rmtree(project, ignore_errors=True)
    ratio = min(engine_times) / min(plain_times)
    lags.sort()
    p95 = lags[int(len(lags) * 0.95) - 1] if lags else float("nan")
    print(
        f"best wall time: engine {min(engine_times):.2f} s, plain runner {min(plain_times):.2f} s; "
        f"ratio {ratio:.3f} (target <= {MAX_RATIO}); median ratio "
        f"{statistics.median(engine_times) / statistics.median(plain_times):.3f}"
    )
    print(f"stored events/s: {max(rates):.0f} best, {statistics.median(rates):.0f} median")
    print(f"ingestion lag: median {statistics.median(lags) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    capacity_job = Job.objects.create(cluster=cluster, kind="health", status="successful", stages=["all"])
    print(f"event writer alone (20,000 synthetic events): {writer_capacity(capacity_job.pk):.0f} events/s")
    return ratio <= MAX_RATIO
