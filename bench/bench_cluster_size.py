"""Cluster size: installs of 10, 50 and 100 nodes (3 servers, the rest agents) on SSH test hosts, one after another,
each on fresh hosts.

Each install runs through the job engine in a worker process of its own (as a Celery worker runs it: claim, the
stages, every event stored), with the portal's playbooks and its defaults (``forks`` of ``ansible.cfg``, workers
joining ``rke2_workers_batch`` = 25 % at a time), installing the stand-in RKE2 from its air-gap bundle.

The hosts run systemd as PID 1 (``BENCH_HOST_FLAVOUR=systemd``, the default): the stand-in RKE2 then starts as a
``Type=notify`` unit and the host preparation finds systemd, as on a real agent; that is the lightest flavour that
is faithful for agents (the namespace hosts have no service manager, so the playbooks take their SysV path there).
The bench prints what one host costs in memory.

Prints per size:
- wall time, and each stage's time;
- controller CPU: the worker process, ansible-playbook, its forks and ssh (its persistent control masters included,
  which detach from their parent): the worker process is moved into a cgroup of its own before it starts the job, so
  everything it starts is counted; the job engine's own share (the worker process alone) is shown beside it. The test
  hosts (sshd, Ansible's modules, the stand-in RKE2) are not the controller and are not counted;
- controller CPU per node, and its ratio to the smallest size's (goal: within 20 %, i.e. <= 1.2);
- wall time per node, and the ratio of wall times against the ratio of sizes (goal: sub-linear);
- the worker process's peak RSS (its ``VmHWM``; goal < 500 MB), and the peak of what Ansible's processes held at once
  (the sum of their proportional set sizes, sampled every second);
- the per-host costs that grow with the cluster size: tasks whose runs per node (retries included) grow by more than
  20 % from the smallest to the largest size, and the commands a node delegates to the API host (kubectl).

Returns False when an install fails or a goal is missed. Needs root (network namespaces, cgroups). Settings:
``BENCH_SIZES`` (default ``10,50,100``), ``BENCH_SERVER_START_DELAY`` and ``BENCH_AGENT_START_DELAY`` (the
stand-in's start delays in seconds, default 5 and 3), ``BENCH_POSTGRES_URL`` (a throwaway PostgreSQL database on
that server instead of SQLite).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bench_install import _new_cluster, standin_setup

SERVERS = 3  # as _new_cluster makes them
CPU_GOAL = 1.2
RSS_GOAL_MB = 500
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    nodes: int
    status: str = ""
    wall: float = 0.0
    cpu: float = 0.0
    engine_cpu: float = 0.0
    worker_rss_mb: float = 0.0
    ansible_pss_mb: float = 0.0
    events: int = 0
    stages: list[dict] = field(default_factory=list)
    runs_per_node: dict[str, float] = field(default_factory=dict)
    delegated_per_node: dict[str, float] = field(default_factory=dict)
    host_mb: float = 0.0

    @property
    def cpu_per_node(self) -> float:
        return self.cpu / self.nodes


def main() -> bool:
    sizes = [int(size) for size in os.environ.get("BENCH_SIZES", "10,50,100").split(",") if size.strip()]
    server_delay = float(os.environ.get("BENCH_SERVER_START_DELAY", "5"))
    agent_delay = float(os.environ.get("BENCH_AGENT_START_DELAY", "3"))
    flavour = os.environ.get("BENCH_HOST_FLAVOUR", "systemd")

    folders = standin_setup(flavour=flavour, server_delay=server_delay, agent_delay=agent_delay, start_timeout=600)
    if folders is None:
        return False
    airgap, work_dir = folders
    from tests.testhosts.harness import HostNetwork

    from .bench_concurrent import CpuMeter
    from .bench_events import setup_database

    database = setup_database()
    print(
        f"database: {database}; test hosts: {flavour}; stand-in start delays: server {server_delay:g} s, agent "
        f"{agent_delay:g} s; {SERVERS} servers, the rest agents; CPU measured by {CpuMeter().method}"
    )
    results: list[Result] = []
    try:
        for size in sizes:
            network = HostNetwork(flavour=flavour).start()
            try:
                result = _install(network, size, CpuMeter())
            finally:
                network.close()
            results.append(result)
            _print_result(result)
            if result.status != "successful":
                return False
    finally:
        shutil.rmtree(airgap, ignore_errors=True)
        shutil.rmtree(work_dir, ignore_errors=True)
    return _print_summary(results)


def _memory_available_mb() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _install(network: object, size: int, meter: object) -> Result:
    from clusters.choices import JobKind
    from clusters.models import Job
    from clusters.services.jobs import job_request

    result = Result(nodes=size)
    available = _memory_available_mb()
    _, _, cluster = _new_cluster(network, size - SERVERS, f"bench-size-{size}")
    time.sleep(2)
    result.host_mb = (available - _memory_available_mb()) / size
    job = job_request(cluster=cluster, kind=JobKind.INSTALL, params={})

    worker = subprocess.Popen(
        [sys.executable, "-c", f"from bench.bench_cluster_size import _worker; _worker({job.pk})"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    meter.adopt("worker", worker.pid)  # type: ignore[attr-defined]
    sampler = _PssSampler(worker.pid)
    sampler.start()
    cpu_before = meter.read()["worker"]  # type: ignore[attr-defined]
    started = time.perf_counter()
    assert worker.stdin is not None and worker.stdout is not None
    worker.stdin.write("go\n")
    worker.stdin.close()
    report = json.loads(worker.stdout.read().strip().splitlines()[-1])
    worker.wait()
    result.wall = time.perf_counter() - started
    sampler.stop()
    result.cpu = meter.read()["worker"] - cpu_before  # type: ignore[attr-defined]
    meter.close()  # type: ignore[attr-defined]
    result.status = report["status"]
    result.engine_cpu = report["cpu"]
    result.worker_rss_mb = report["vm_hwm_kb"] / 1024
    result.ansible_pss_mb = sampler.peak / 1024 / 1024
    job = Job.objects.get(pk=job.pk)
    result.stages = job.result.get("stages", [])
    result.events = job.events.count()
    result.runs_per_node, result.delegated_per_node = _task_runs(job, size)
    if result.status != "successful":
        print(job.explanation, file=sys.stderr)
    return result


def _worker(job_id: int) -> None:
    """The worker process: Django set up from the environment the bench prepared, waits until the bench has put it
    into its cgroup, runs the job, prints its status, its own CPU time and its peak RSS as JSON."""
    import resource

    import django

    django.setup()
    from clusters.engine.service import job_execute

    sys.stdin.readline()
    status = job_execute(job_id=job_id)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/status") as stat:
        hwm = next(int(line.split()[1]) for line in stat if line.startswith("VmHWM:"))
    print(json.dumps({"status": status, "cpu": usage.ru_utime + usage.ru_stime, "vm_hwm_kb": hwm}), flush=True)


class _PssSampler(threading.Thread):
    """Peak of the summed proportional set size of the worker's descendants (ansible-playbook, its forks, ssh)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._stop_event.wait(1.0):
            try:
                children = psutil.Process(self.pid).children(recursive=True)
            except psutil.Error:
                continue
            total = 0
            for child in children:
                try:
                    total += child.memory_full_info().pss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _task_runs(job: object, size: int) -> tuple[dict[str, float], dict[str, float]]:
    """Per task (stage / task name): how many times it ran on some node, retries included, per node of the cluster;
    and the same for the runs delegated to another host (the API host's kubectl)."""
    from clusters.models import JobEvent

    runs: dict[str, int] = {}
    delegated: dict[str, int] = {}
    events = JobEvent.objects.filter(
        job=job,
        event__in=["runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_retry", "runner_item_on_ok"],
    )
    for event in events.values("stage", "task", "event_data").iterator():
        key = f"{event['stage']} / {event['task']}"
        runs[key] = runs.get(key, 0) + 1
        res = (event["event_data"] or {}).get("res") or {}
        if isinstance(res, dict) and res.get("_ansible_delegated_vars"):
            delegated[key] = delegated.get(key, 0) + 1
    return (
        {key: count / size for key, count in runs.items()},
        {key: count / size for key, count in delegated.items()},
    )


def _print_result(result: Result) -> None:
    print(f"-- {result.nodes} nodes: {result.status} in {result.wall:.1f} s, {result.events} events")
    for stage in result.stages:
        print(f"   {stage['stage']:>16} {stage['duration']:>8.1f} s {stage['events']:>7} events")
    print(
        f"   controller CPU {result.cpu:.1f} s ({result.cpu_per_node:.2f} s per node; the job engine itself "
        f"{result.engine_cpu:.1f} s); worker peak RSS {result.worker_rss_mb:.0f} MB; Ansible's processes at most "
        f"{result.ansible_pss_mb:.0f} MB PSS together; one test host {result.host_mb:.0f} MB",
        flush=True,
    )


def _print_summary(results: list[Result]) -> bool:
    base = results[0]
    ok = True
    print(
        f"{'nodes':>6} {'wall s':>8} {'wall/node':>9} {'CPU s':>8} {'CPU/node':>9} {'CPU/node ratio':>15} "
        f"{'worker RSS MB':>14}"
    )
    for result in results:
        print(
            f"{result.nodes:>6} {result.wall:>8.1f} {result.wall / result.nodes:>9.2f} {result.cpu:>8.1f} "
            f"{result.cpu_per_node:>9.2f} {result.cpu_per_node / base.cpu_per_node:>15.3f} {result.worker_rss_mb:>14.0f}"
        )
    last = results[-1]
    if len(results) > 1:
        cpu_ratio = max(abs(result.cpu_per_node / base.cpu_per_node - 1) for result in results)
        cpu_ok = cpu_ratio <= CPU_GOAL - 1
        wall_ok = last.wall / base.wall < last.nodes / base.nodes
        print(
            f"controller CPU per node: largest deviation from {base.nodes} nodes {cpu_ratio:.1%} (goal <= 20 %): "
            f"{'PASS' if cpu_ok else 'FAIL'}"
        )
        print(
            f"wall time {base.nodes} -> {last.nodes} nodes: x{last.wall / base.wall:.2f} for x{last.nodes / base.nodes:g} "
            f"nodes (goal: sub-linear): {'PASS' if wall_ok else 'FAIL'}"
        )
        ok = cpu_ok and wall_ok
        grown = {
            key: (base.runs_per_node.get(key, 0.0), per_node)
            for key, per_node in last.runs_per_node.items()
            if per_node > 1.2 * base.runs_per_node.get(key, 0.0) and per_node * last.nodes >= 3
        }
        print(f"tasks whose runs per node grew by more than 20 % from {base.nodes} to {last.nodes} nodes:")
        for key, (before, after) in sorted(grown.items(), key=lambda item: -item[1][1]):
            print(f"   {before:>6.2f} -> {after:>6.2f}  {key}")
        if not grown:
            print("   none")
    print(f"commands delegated to the API host per node, at {last.nodes} nodes:")
    for key, per_node in sorted(last.delegated_per_node.items(), key=lambda item: -item[1]):
        print(f"   {per_node:>6.2f}  {key}")
    rss_ok = all(result.worker_rss_mb < RSS_GOAL_MB for result in results)
    print(
        f"worker peak RSS at most {max(r.worker_rss_mb for r in results):.0f} MB (goal < {RSS_GOAL_MB} MB): "
        f"{'PASS' if rss_ok else 'FAIL'}"
    )
    return ok and rss_ok
