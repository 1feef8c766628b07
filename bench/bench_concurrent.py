"""Concurrent clusters on the production-shaped stack: N clusters (default 4) of M nodes (default 3: one initial
master and two agents) installed at once on two Celery workers, against the same N clusters installed one after
another on the same stack.

The stack is ``scripts/prodstack`` (PostgreSQL, Redis, gunicorn, two Celery workers with their own node names and
job folders, beat) in a throwaway folder; each worker runs ``ceil(N / 2)`` jobs at a time, so that all N can run at
once. Credentials and clusters are created and installs requested through the REST API, as an operator would;
what the stack stored is read with SQL from its database. Every phase installs on fresh SSH test hosts (a host
network of its own, closed when the phase ends, so idle clusters of a previous phase add no load) from the stand-in
RKE2's air-gap bundle with short start delays.

Controller CPU is the CPU time of the two worker services and of everything they start (pool processes,
ansible-playbook and its forks, ssh and its persistent control masters, which detach from their parent and so
escape a process tree): each worker's process tree is moved into a cgroup of its own as soon as the stack runs,
every process it starts later is born in it, and the cgroup's CPU counter (cgroup v2 ``cpu.stat``, or v1
``cpuacct.usage``) is read before and after each phase. Without a writable cgroup file system the bench falls back
to psutil over the live process trees (own plus reaped children's CPU), which misses the detached ssh masters and
says so. The worker CPU is split into the job engine's share (what the worker's main and pool processes used
themselves, from psutil) and the rest (Ansible and ssh). The test hosts (sshd, Ansible's modules, the stand-in
RKE2) are not the controller and are not counted; PostgreSQL's and gunicorn's CPU is shown beside it for
information.

Prints, for the sequential and the concurrent phase: wall time (first job created to last job finished), worker
CPU seconds, nodes installed per controller CPU-second, and the ratio concurrent / sequential of that efficiency
(goal >= 0.9, reported as PASS or FAIL); the stored events per second under concurrency (events stored over the
span from the first to the last event's timestamp: what Ansible emitted, stored as it came), on PostgreSQL, and
then on SQLite. The stack has no SQLite mode (it is the multi-machine shape), so the SQLite phase runs the
concurrent case on the embedded default configuration instead: a SQLite file and the file-system broker in one data
folder, shared by two worker processes started as the test suite starts them (``tests/worker.py``), requests made
through the services in this process.

Returns False when a job fails, a node is not active, a job's event counters are not contiguous (or differ from the
count it emitted), an event could not be stored (``portal_event_lost``), or a worker's log (or PostgreSQL's) shows a
lock error; a missed efficiency goal is reported but does not fail the run.

Needs root (network namespaces, cgroups) and the Debian packages postgresql and redis-server. Settings:
``BENCH_CONCURRENT_CLUSTERS`` (N, default 4), ``BENCH_CONCURRENT_NODES`` (M, default 3), ``BENCH_HOST_FLAVOUR``
(``namespace``, the default, or ``systemd``), ``BENCH_SERVER_START_DELAY`` and ``BENCH_AGENT_START_DELAY`` (the
stand-in's start delays in seconds, default 2 and 1), ``BENCH_CONCURRENT_SQLITE`` (``0`` skips the SQLite phase),
``BENCH_CONCURRENT_SQLITE_CLUSTERS`` (default N), ``BENCH_CONCURRENT_PG_FAST`` (``1``: PostgreSQL without fsync,
default off as in production), ``BENCH_CONCURRENT_TIMEOUT`` (seconds a phase may take, default 900).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERSION = "v1.31.4+rke2r1"
GOAL = 0.9
ROOT = Path(__file__).resolve().parents[1]
WORKERS = ("worker1", "worker2")
LOCK_ERRORS = re.compile(
    rb"database is locked|database table is locked|deadlock detected|could not obtain lock|lock timeout"
    rb"|LockNotAvailable",
    re.IGNORECASE,
)
SETTLE_SECONDS = 2.0  # after the last job ends: the worker removes the job's folder, ssh masters exit


@dataclass
class Settings:
    clusters: int
    nodes: int
    flavour: str
    server_delay: float
    agent_delay: float
    timeout: float
    airgap: Path


@dataclass
class Phase:
    """What one phase measured, and what went wrong in it."""

    label: str
    nodes: int = 0
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    events: int = 0
    event_span: float = 0.0
    spread: dict[str, int] = field(default_factory=dict)
    engine_cpu: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def worker_cpu(self) -> float:
        return sum(value for key, value in self.cpu.items() if "worker" in key)

    @property
    def efficiency(self) -> float:
        return self.nodes / self.worker_cpu if self.worker_cpu else 0.0

    @property
    def events_per_second(self) -> float:
        return self.events / self.event_span if self.event_span else 0.0


class CpuMeter:
    """CPU seconds of process trees: a cgroup per tree (v2 or v1 cpuacct), else psutil over the live trees."""

    def __init__(self) -> None:
        self.prefix = f"rke2portal-bench-{os.getpid()}-"
        self.groups: dict[str, Path] = {}
        self.roots: dict[str, int] = {}
        if Path("/sys/fs/cgroup/cgroup.controllers").exists():
            self.base: Path | None = Path("/sys/fs/cgroup")
            self.method = "cgroup v2 cpu.stat"
        elif Path("/sys/fs/cgroup/cpuacct/cpuacct.usage").exists():
            self.base = Path("/sys/fs/cgroup/cpuacct")
            self.method = "cgroup v1 cpuacct"
        else:
            self.base = None
            self.method = "psutil over the live process trees (detached ssh masters not counted)"

    def adopt(self, name: str, pid: int | None) -> None:
        """Count ``pid``, its descendants and every process they start from now on as ``name``."""
        import psutil

        if not pid:
            return
        self.roots[name] = pid
        if self.base is None:
            return
        try:
            tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
            group = self.base / f"{self.prefix}{name}"
            group.mkdir(exist_ok=True)
            self.groups[name] = group
            for process in tree:
                try:
                    (group / "cgroup.procs").write_text(f"{process.pid}\n")
                except ProcessLookupError:
                    pass
        except OSError as exc:
            print(f"no writable cgroup ({exc}); falling back to psutil", file=sys.stderr)
            self.close()
            self.base = None
            self.method = "psutil over the live process trees (detached ssh masters not counted)"

    def read(self) -> dict[str, float]:
        return {name: self._read(name) for name in self.roots}

    def _read(self, name: str) -> float:
        group = self.groups.get(name)
        if group is not None:
            if (group / "cpu.stat").exists():
                for line in (group / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) / 1e6
            return int((group / "cpuacct.usage").read_text()) / 1e9
        import psutil

        total = 0.0
        try:
            root = psutil.Process(self.roots[name])
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        for process in tree:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system + times.children_user + times.children_system
        return total

    def own(self, names: list[str]) -> float:
        """CPU seconds the given trees' long-lived processes (a worker's main and pool processes) used themselves,
        without what they started: the job engine's share; the rest of a worker's CPU is Ansible and ssh."""
        import psutil

        total = 0.0
        for name in names:
            try:
                root = psutil.Process(self.roots[name])
                processes = [root, *root.children()]
            except (KeyError, psutil.Error):
                continue
            for process in processes:
                try:
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                if process.name() in ("ansible-playbook", "ssh"):
                    continue
                total += times.user + times.system
        return total

    def forget(self, names: list[str]) -> None:
        for name in names:
            self.roots.pop(name, None)
            group = self.groups.pop(name, None)
            if group is not None:
                self._remove(group)

    def close(self) -> None:
        self.forget(list(self.roots))

    def _remove(self, group: Path) -> None:
        """Move what is left in the cgroup (a lingering ssh master) back to the root, then remove it."""
        assert self.base is not None
        try:
            for pid in (group / "cgroup.procs").read_text().split():
                try:
                    (self.base / "cgroup.procs").write_text(f"{pid}\n")
                except OSError:
                    pass
            group.rmdir()
        except OSError:
            pass


def main() -> bool:
    from tests.testhosts.harness import missing_prerequisites

    flavour = os.environ.get("BENCH_HOST_FLAVOUR", "namespace")
    problems = list(missing_prerequisites())
    if not problems and flavour == "systemd":
        from tests.testhosts.systemd import missing_systemd_prerequisites

        problems = list(missing_systemd_prerequisites())
    problems += [f"{tool} not found" for tool in ("redis-server",) if not shutil.which(tool)]
    if problems:
        print("cannot run: " + "; ".join(problems), file=sys.stderr)
        return False

    from tests.standin_rke2.build import build_bundle

    settings = Settings(
        clusters=int(os.environ.get("BENCH_CONCURRENT_CLUSTERS", "4")),
        nodes=int(os.environ.get("BENCH_CONCURRENT_NODES", "3")),
        flavour=flavour,
        server_delay=float(os.environ.get("BENCH_SERVER_START_DELAY", "2")),
        agent_delay=float(os.environ.get("BENCH_AGENT_START_DELAY", "1")),
        timeout=float(os.environ.get("BENCH_CONCURRENT_TIMEOUT", "900")),
        airgap=Path(tempfile.mkdtemp(prefix="bench-airgap-")),
    )
    meter = CpuMeter()
    try:
        build_bundle(
            settings.airgap / VERSION,
            VERSION,
            server_start_delay=settings.server_delay,
            agent_start_delay=settings.agent_delay,
            heartbeat_interval=10.0,
            join_retry_interval=1.0,
        )
        print(
            f"{settings.clusters} clusters of {settings.nodes} nodes (1 initial master + {settings.nodes - 1} "
            f"agents); test hosts: {flavour}; stand-in start delays: server {settings.server_delay:g} s, "
            f"agent {settings.agent_delay:g} s"
        )
        ok = _postgres(settings, meter)
        if os.environ.get("BENCH_CONCURRENT_SQLITE", "1") != "0":
            clusters = int(os.environ.get("BENCH_CONCURRENT_SQLITE_CLUSTERS", str(settings.clusters)))
            ok = _sqlite(settings, meter, clusters) and ok
        return ok
    finally:
        meter.close()
        shutil.rmtree(settings.airgap, ignore_errors=True)


def _portal_env(settings: Settings) -> dict[str, str]:
    """What every portal process of this bench gets: the air-gap bundle, generous start timeouts."""
    return {
        "RKE2_INSTALL_METHOD": "airgap",
        "RKE2_AIRGAP_ARTIFACT_DIR": str(settings.airgap),
        "RKE2_START_TIMEOUT_SECONDS": str(int(max(settings.server_delay, settings.agent_delay) * 4 + 120)),
        "LOG_LEVEL": "INFO",
    }


def _clean_environ() -> dict[str, str]:
    """This process's environment without any portal, broker or database setting of the caller's."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "JOB_", "RKE2_", "ANSIBLE_", "CELERY_", "DATABASE_", "PYTEST_"))
        and key not in ("FIELD_ENCRYPTION_KEYS", "TEST_REDIS_URL", "RKE2PORTAL_DATA_DIR", "JOBS_WORK_DIR")
    }


# PostgreSQL: the production-shaped stack.


def _postgres(settings: Settings, meter: CpuMeter) -> bool:
    from tests.faults.conftest import Portal, Stack

    folder = Path(tempfile.mkdtemp(prefix="bc-", dir="/tmp"))  # short: SSH control sockets live below it
    env = _clean_environ()
    env.update(_portal_env(settings))
    env.update(
        {
            "PRODSTACK_DIR": str(folder),
            "PRODSTACK_PG_FAST": os.environ.get("BENCH_CONCURRENT_PG_FAST", "0"),
            "PRODSTACK_WORKER_CONCURRENCY": str(math.ceil(settings.clusters / len(WORKERS))),
            "PRODSTACK_WEB_WORKERS": "1",
        }
    )
    stack = Stack(folder, env)
    try:
        stack.run("start", timeout=600)
        for service in (*WORKERS, "web"):
            meter.adopt(service, stack.pid(service))
        meter.adopt("postgres", _postmaster_pid(folder))
        print(f"controller CPU measured with {meter.method}")
        portal = Portal(stack)
        idle = _idle_cpu(meter, WORKERS)
        phases = []
        for concurrent in (False, True):
            phase = _stack_phase(stack, portal, meter, settings, concurrent=concurrent)
            phases.append(phase)
            _print_phase(phase)
        sequential, concurrent_phase = phases
        print(f"idle workers (both, measured before the phases): {idle * 60:.2f} CPU seconds a minute")
        _print_comparison(sequential, concurrent_phase)
        print(
            f"stored events per second under concurrency, PostgreSQL: {concurrent_phase.events_per_second:.0f} "
            f"({concurrent_phase.events} events in {concurrent_phase.event_span:.1f} s)"
        )
        return _report_problems(phases)
    finally:
        meter.forget([*WORKERS, "web", "postgres"])
        try:
            stack.run("destroy", timeout=180)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _postmaster_pid(folder: Path) -> int | None:
    try:
        return int((folder / "pg" / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _idle_cpu(meter: CpuMeter, names: tuple[str, ...], seconds: float = 10.0) -> float:
    """CPU seconds per second the idle workers use (broker polling, beat's periodic tasks)."""
    before = meter.read()
    time.sleep(seconds)
    after = meter.read()
    return sum(after[name] - before[name] for name in names if name in after) / seconds


def _stack_phase(stack: Any, portal: Any, meter: CpuMeter, settings: Settings, *, concurrent: bool) -> Phase:
    from tests.testhosts.harness import HostNetwork

    label = "concurrent" if concurrent else "sequential"
    phase = Phase(label=label, nodes=settings.clusters * settings.nodes)
    network = HostNetwork(flavour=settings.flavour, hostname_prefix="c" if concurrent else "s").start()
    try:
        clusters = []
        for index in range(settings.clusters):
            hosts = network.add_hosts(settings.nodes)
            credential = portal.post(
                "/api/credentials/",
                {
                    "name": f"bench-{label}-{index}",
                    "username": "root",
                    "private_key": network.private_key_text,
                    "known_hosts": network.known_hosts_text,
                },
            )
            nodes = [
                {"hostname": host.name, "internal_ip": host.ip, "role": "server" if position == 0 else "agent"}
                for position, host in enumerate(hosts)
            ]
            clusters.append(
                portal.post(
                    "/api/clusters/",
                    {
                        "name": f"bench-{label}-{index}",
                        "rke2_version": VERSION,
                        "ssh_credential": credential["id"],
                        "nodes": nodes,
                    },
                )
            )
        logs = [stack.folder / "log" / f"{worker}.log" for worker in WORKERS] + [stack.folder / "pg" / "server.log"]
        offsets = {path: path.stat().st_size if path.exists() else 0 for path in logs}
        before = meter.read()
        engine_before = meter.own(list(WORKERS))
        jobs: list[int] = []
        deadline = time.monotonic() + settings.timeout
        for cluster in clusters:
            jobs.append(portal.post(f"/api/clusters/{cluster['id']}/install/")["id"])
            if not concurrent:
                _wait_stack_jobs(stack, jobs[-1:], deadline)
        _wait_stack_jobs(stack, jobs, deadline)
        time.sleep(SETTLE_SECONDS)
        after = meter.read()
        phase.engine_cpu = meter.own(list(WORKERS)) - engine_before
        phase.cpu = {name: after[name] - before[name] for name in after}
        (first, last) = stack.query(
            "SELECT min(created_at), max(finished_at) FROM clusters_job WHERE id = ANY(%s)", jobs
        )[0]
        phase.wall = (last - first).total_seconds()
        for job_id, status, explanation, worker_pid in stack.query(
            "SELECT id, status, explanation, worker_pid FROM clusters_job WHERE id = ANY(%s) ORDER BY id", jobs
        ):
            if status != "successful":
                phase.problems.append(f"job {job_id}: {status}: {explanation[:300]}")
            try:
                worker = stack.worker_of(worker_pid) if worker_pid else "?"
            except Exception:  # noqa: BLE001 - the pool process is gone: the spread is only informative
                worker = "?"
            phase.spread[worker] = phase.spread.get(worker, 0) + 1
        inactive = stack.query(
            "SELECT hostname, status FROM clusters_node WHERE cluster_id = ANY(%s) AND status <> 'active'",
            [cluster["id"] for cluster in clusters],
        )
        phase.problems += [f"node {hostname}: {status}" for hostname, status in inactive]
        for job_id in jobs:
            counters = [
                row[0]
                for row in stack.query(
                    "SELECT counter FROM clusters_jobevent WHERE job_id = %s ORDER BY counter", job_id
                )
            ]
            ((emitted, lost),) = stack.query(
                "SELECT emitted_events, (SELECT count(*) FROM clusters_jobevent WHERE job_id = %s "
                "AND event = 'portal_event_lost') FROM clusters_job WHERE id = %s",
                job_id,
                job_id,
            )
            phase.problems += _event_problems(job_id, counters, emitted, lost)
        ((count, first_event, last_event),) = stack.query(
            "SELECT count(*), min(created), max(created) FROM clusters_jobevent WHERE job_id = ANY(%s)", jobs
        )
        phase.events = count
        phase.event_span = (last_event - first_event).total_seconds() if count else 0.0
        for path, offset in offsets.items():
            phase.problems += _lock_errors(path, offset)
    finally:
        network.close()
    return phase


def _wait_stack_jobs(stack: Any, jobs: list[int], deadline: float) -> None:
    while time.monotonic() < deadline:
        active = stack.query(
            "SELECT count(*) FROM clusters_job WHERE id = ANY(%s) AND status IN ('pending', 'running')", jobs
        )[0][0]
        if not active:
            return
        time.sleep(0.5)
    raise RuntimeError(f"jobs {jobs} did not end in time (BENCH_CONCURRENT_TIMEOUT)")


# SQLite: the embedded default configuration, two worker processes.


def _sqlite(settings: Settings, meter: CpuMeter, clusters: int) -> bool:
    from django.apps import apps

    if apps.ready:
        from django.db import connection

        if connection.vendor != "sqlite":
            print(f"SQLite phase skipped: Django is already set up on {connection.vendor} in this process")
            return True
    os.environ.pop("TEST_REDIS_URL", None)  # the file-system broker, the embedded default
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.update(_portal_env(settings))
    from . import setup_django

    setup_django()
    # The file-system broker's URL has no host name, which kombu notes on every connection of this process.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)

    from clusters.choices import JobKind
    from clusters.models import Job, JobEvent, Node
    from clusters.services.clusters import cluster_create
    from clusters.services.credentials import credential_create
    from clusters.services.jobs import job_request
    from tests.testhosts.harness import HostNetwork
    from tests.worker import WorkerProcess

    data_dir = Path(os.environ["RKE2PORTAL_DATA_DIR"])
    concurrency = math.ceil(clusters / len(WORKERS))
    workers = []
    network = None
    phase = Phase(label="concurrent, SQLite", nodes=clusters * settings.nodes)
    try:
        for index, name in enumerate(WORKERS, 1):
            env = _clean_environ()
            env.update(_portal_env(settings))
            jobs_dir = data_dir / f"jobs-{name}"
            jobs_dir.mkdir(mode=0o700)
            env.update(
                {
                    "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"],
                    "DJANGO_READ_DOT_ENV_FILE": "false",
                    "DATABASE_URL": os.environ["DATABASE_URL"],
                    "RKE2PORTAL_DATA_DIR": str(data_dir),
                    "JOBS_WORK_DIR": str(jobs_dir),
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                    "PYTHONDONTWRITEBYTECODE": "1",
                }
            )
            worker = WorkerProcess(env=env, concurrency=concurrency, name=f"benchsqlite{index}x{os.getpid()}")
            workers.append(worker)
            worker.start(timeout=120)
            meter.adopt(f"sqlite-{name}", worker.pid)
        network = HostNetwork(flavour=settings.flavour, hostname_prefix="l").start()
        created = []
        for index in range(clusters):
            hosts = network.add_hosts(settings.nodes)
            credential = credential_create(
                name=f"bench-sqlite-{index}",
                username="root",
                private_key=network.private_key_text,
                known_hosts=network.known_hosts_text,
            )
            nodes = [
                {"hostname": host.name, "internal_ip": host.ip, "role": "server" if position == 0 else "agent"}
                for position, host in enumerate(hosts)
            ]
            created.append(
                cluster_create(
                    name=f"bench-sqlite-{index}", rke2_version=VERSION, ssh_credential=credential, nodes=nodes
                )
            )
        offsets = [len(worker.log_text()) for worker in workers]
        before = meter.read()
        engine_before = meter.own([f"sqlite-{name}" for name in WORKERS])
        jobs = [job_request(cluster=cluster, kind=JobKind.INSTALL).pk for cluster in created]
        deadline = time.monotonic() + settings.timeout
        while Job.objects.filter(pk__in=jobs, status__in=("pending", "running")).exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs {jobs} did not end in time (BENCH_CONCURRENT_TIMEOUT)")
            time.sleep(0.5)
        time.sleep(SETTLE_SECONDS)
        after = meter.read()
        phase.engine_cpu = meter.own([f"sqlite-{name}" for name in WORKERS]) - engine_before
        phase.cpu = {name: after[name] - before[name] for name in after if name.startswith("sqlite-")}
        rows = list(Job.objects.filter(pk__in=jobs).order_by("pk"))
        phase.wall = (max(job.finished_at for job in rows) - min(job.created_at for job in rows)).total_seconds()
        pools = {pid: name for worker, name in zip(workers, WORKERS, strict=True) for pid in worker.pool_pids()}
        for job in rows:
            if job.status != "successful":
                phase.problems.append(f"job {job.pk}: {job.status}: {job.explanation[:300]}")
            worker_name = pools.get(job.worker_pid or 0, "?")
            phase.spread[worker_name] = phase.spread.get(worker_name, 0) + 1
            counters = list(JobEvent.objects.filter(job=job).order_by("counter").values_list("counter", flat=True))
            lost = JobEvent.objects.filter(job=job, event="portal_event_lost").count()
            phase.problems += _event_problems(job.pk, counters, job.emitted_events, lost)
        phase.problems += [
            f"node {hostname}: {status}"
            for hostname, status in Node.objects.filter(cluster__in=created)
            .exclude(status="active")
            .values_list("hostname", "status")
        ]
        events = JobEvent.objects.filter(job_id__in=jobs)
        phase.events = events.count()
        if phase.events:
            first = events.order_by("created").values_list("created", flat=True).first()
            last = events.order_by("-created").values_list("created", flat=True).first()
            phase.event_span = (last - first).total_seconds()
        for worker, offset in zip(workers, offsets, strict=True):
            text = worker.log_text()[offset:].encode()
            phase.problems += [
                f"{worker.name} log: {line.decode(errors='replace')[:200]}"
                for line in text.splitlines()
                if LOCK_ERRORS.search(line)
            ][:10]
    finally:
        meter.forget([f"sqlite-{name}" for name in WORKERS])
        for worker in workers:
            worker.cleanup()
        if network is not None:
            network.close()
    _print_phase(phase)
    print(
        f"stored events per second under concurrency, SQLite: {phase.events_per_second:.0f} "
        f"({phase.events} events in {phase.event_span:.1f} s)"
    )
    return _report_problems([phase])


# Checks and output.


def _event_problems(job_id: int, counters: list[int], emitted: int, lost: int) -> list[str]:
    problems = []
    if counters != list(range(1, len(counters) + 1)):
        missing = sorted(set(range(1, max(counters, default=0) + 1)) - set(counters))
        problems.append(f"job {job_id}: event counters not contiguous (missing {missing[:10]})")
    if emitted != len(counters):
        problems.append(f"job {job_id}: {emitted} events emitted, {len(counters)} stored")
    if lost:
        problems.append(f"job {job_id}: {lost} portal_event_lost events")
    return problems


def _lock_errors(path: Path, offset: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            text = handle.read()
    except OSError:
        return []
    return [
        f"{path.name}: {line.decode(errors='replace')[:200]}" for line in text.splitlines() if LOCK_ERRORS.search(line)
    ][:10]


def _print_phase(phase: Phase) -> None:
    others = ", ".join(f"{name} {value:.1f}" for name, value in sorted(phase.cpu.items()) if "worker" not in name)
    workers = ", ".join(f"{name} {value:.1f}" for name, value in sorted(phase.cpu.items()) if "worker" in name)
    spread = ", ".join(f"{name}: {count}" for name, count in sorted(phase.spread.items()))
    print(
        f"{phase.label}: {phase.nodes} nodes in {phase.wall:.1f} s; worker CPU {phase.worker_cpu:.1f} s ({workers}); "
        f"{phase.efficiency:.3f} nodes per CPU-second ({phase.worker_cpu / max(phase.nodes, 1):.1f} CPU-s per node); "
        f"jobs per worker: {spread}" + (f"; also CPU: {others}" if others else "")
    )
    print(
        f"  of the worker CPU: the job engine (worker and pool processes themselves) {phase.engine_cpu:.1f} s, "
        f"Ansible and ssh (the processes they start) {phase.worker_cpu - phase.engine_cpu:.1f} s"
    )
    print(
        f"  {phase.events} events stored in {phase.event_span:.1f} s ({phase.events_per_second:.0f} per second)"
        + (f"; {len(phase.problems)} problem(s)" if phase.problems else "")
    )


def _print_comparison(sequential: Phase, concurrent: Phase) -> None:
    ratio = concurrent.efficiency / sequential.efficiency if sequential.efficiency else 0.0
    speedup = sequential.wall / concurrent.wall if concurrent.wall else 0.0
    print(
        f"wall time: sequential {sequential.wall:.1f} s, concurrent {concurrent.wall:.1f} s "
        f"(concurrent is {speedup:.2f} x faster)"
    )
    print(
        f"nodes per controller CPU-second: sequential {sequential.efficiency:.3f}, concurrent "
        f"{concurrent.efficiency:.3f}; concurrent / sequential {ratio:.3f} (goal >= {GOAL}): "
        f"{'PASS' if ratio >= GOAL else 'FAIL'}"
    )


def _report_problems(phases: list[Phase]) -> bool:
    ok = True
    for phase in phases:
        for problem in phase.problems:
            print(f"PROBLEM ({phase.label}): {problem}", file=sys.stderr)
            ok = False
    return ok
