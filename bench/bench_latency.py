"""Request-to-first-event latency: from ``job_request`` (committed, task sent through Redis) to the job's first
event stored in the database, with a real worker process. Median of ``BENCH_REQUESTS`` preflight jobs
(default 10). Target: median < 1 s.

Two "first events" are measured:

- the first event of the job: the stage banner the worker stores as soon as it has claimed the job and
  prepared the stage, before Ansible starts (what a live view shows first);
- the first event from Ansible itself (``playbook_on_start``), which also includes ansible-playbook's start-up.

Baseline, in the same run: plain ansible-runner, from ``run()`` to its first event callback for the same
playbook (no queue, no database); the ratio of the first Ansible event to it shows what the portal adds.

Redis: ``BENCH_REDIS_URL``, else ``TEST_REDIS_URL``, else ``redis://127.0.0.1:6379/5`` (every run uses its own
key prefix). The database is a throwaway SQLite file (or PostgreSQL, see ``bench_events``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MAX_MEDIAN_SECONDS = 1.0
PLAYBOOK = """\
- name: Preflight
  hosts: initial_master:joining_masters:workers
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Check the host
      ansible.builtin.debug:
        msg: "{{ inventory_hostname }} is fine"
"""


def baseline_first_event(project: Path) -> float:
    import ansible_runner

    private_dir = Path(tempfile.mkdtemp(prefix="bench-latency-", dir="/tmp"))
    first: list[float] = []

    def handler(event: dict[str, Any]) -> bool:
        if not first:
            first.append(time.perf_counter())
        return False

    started = time.perf_counter()
    try:
        ansible_runner.run(
            private_data_dir=str(private_dir),
            project_dir=str(project),
            playbook="preflight.yml",
            inventory={"all": {"children": {"initial_master": {"hosts": {"n1": {}}}}}},
            quiet=True,
            event_handler=handler,
            cancel_callback=lambda: False,
            settings={"suppress_output_file": True},
        )
    finally:
        shutil.rmtree(private_dir, ignore_errors=True)
    return first[0] - started


def main() -> bool:
    redis_url = os.environ.get("BENCH_REDIS_URL") or os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/5"
    project = Path(tempfile.mkdtemp(prefix="bench-latency-project-"))
    (project / "preflight.yml").write_text(PLAYBOOK)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-lat-", dir="/tmp"))
    os.environ.update(
        {
            "CELERY_BROKER_URL": redis_url,
            "CELERY_BROKER_KEY_PREFIX": f"rke2portal-bench-{secrets.token_hex(4)}:",
            "ANSIBLE_DIR": str(project),
            "JOBS_WORK_DIR": str(work_dir),
            # The benchmark's playbook runs locally; its node address is on no network: scan nothing.
            "SSH_HOST_KEY_TRUST_ON_FIRST_USE": "false",
        }
    )
    from .bench_events import setup_database

    database = setup_database()
    from tests.worker import WorkerProcess, worker_environment

    worker = WorkerProcess(
        env=worker_environment(
            {"ANSIBLE_DIR": str(project), "JOBS_WORK_DIR": str(work_dir), "SSH_HOST_KEY_TRUST_ON_FIRST_USE": "false"}
        ),
        concurrency=1,
    )
    try:
        worker.start()
        return _measure(project, database, redis_url)
    finally:
        worker.cleanup()
        shutil.rmtree(project, ignore_errors=True)
        shutil.rmtree(work_dir, ignore_errors=True)


def _measure(project: Path, database: str, redis_url: str) -> bool:
    from django.utils import timezone

    from clusters.choices import ACTIVE_JOB_STATUSES, JobKind
    from clusters.models import Job, JobEvent
    from clusters.services.clusters import cluster_create
    from clusters.services.credentials import credential_create
    from clusters.tests.factories import ssh_private_key

    count = int(os.environ.get("BENCH_REQUESTS", "10"))
    credential = credential_create(name="bench-latency", username="root", private_key=ssh_private_key())
    cluster = cluster_create(
        name="bench-latency",
        rke2_version="v1.31.4+rke2r1",
        ssh_credential=credential,
        nodes=[{"hostname": "n1", "internal_ip": "10.0.0.11", "role": "server"}],
    )
    from clusters.services.jobs import job_request

    first_any: list[float] = []
    first_ansible: list[float] = []
    baselines: list[float] = []
    print(f"database: {database}; broker: {redis_url.split('@')[-1]}; {count} requests", flush=True)
    print(f"{'request':>8} {'first event ms':>15} {'first Ansible event ms':>23} {'baseline ms':>12}", flush=True)
    for index in range(count):
        requested = timezone.now()
        job = job_request(cluster=cluster, kind=JobKind.PREFLIGHT)
        deadline = time.monotonic() + 120
        while Job.objects.filter(pk=job.pk, status__in=ACTIVE_JOB_STATUSES).exists():
            if time.monotonic() > deadline:
                print(f"job {job.pk} did not finish", file=sys.stderr)
                return False
            time.sleep(0.05)
        events = JobEvent.objects.filter(job=job).order_by("counter")
        first = events.first()
        ansible = events.filter(event="playbook_on_start").first()
        if first is None or ansible is None:
            print(f"job {job.pk} stored no events: {Job.objects.get(pk=job.pk).explanation}", file=sys.stderr)
            return False
        first_any.append((first.ingested_at - requested).total_seconds())
        first_ansible.append((ansible.ingested_at - requested).total_seconds())
        baselines.append(baseline_first_event(project))
        row = (first_any[-1] * 1000, first_ansible[-1] * 1000, baselines[-1] * 1000)
        print(
            f"{index + 1:>8} {row[0]:>15.0f} {row[1]:>23.0f} {row[2]:>12.0f}",
            flush=True,
        )
    median_any = statistics.median(first_any)
    median_ansible = statistics.median(first_ansible)
    median_baseline = statistics.median(baselines)
    print(f"median request -> first event: {median_any * 1000:.0f} ms (target < {MAX_MEDIAN_SECONDS * 1000:.0f} ms)")
    print(
        f"median request -> first Ansible event: {median_ansible * 1000:.0f} ms; plain ansible-runner start -> first "
        f"event: {median_baseline * 1000:.0f} ms; ratio {median_ansible / median_baseline:.2f}"
    )
    return median_any < MAX_MEDIAN_SECONDS
