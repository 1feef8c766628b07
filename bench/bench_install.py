"""Staged install time of 1 + 2 masters and N workers (default 6) on SSH test hosts, against the floor set by the
stand-in RKE2's start delays.

The install runs through the job engine (claim, four stages, events stored) with the portal's playbooks, over
SSH, installing the stand-in RKE2 from its air-gap bundle. The floor is the time RKE2 itself makes an install
wait, whatever runs it: the initial master and the two joining masters start one after the other (etcd admits
one learner at a time), then the workers start together (``workers_batch`` = all of them):

    floor = 3 x server start delay + agent start delay

Prints the wall time, each stage's time, the floor and their ratio (target <= 1.3 at N = 6), and how many tasks the
install started and ran on hosts, per stage. A second baseline (skip it with ``BENCH_INSTALL_PLAIN=0``) installs the
same cluster on fresh hosts with the same playbooks, inventories and variables (the reachability check first, as a
job does) through plain ansible-runner (no job, no events stored): the ratio of the two is what the job engine adds;
the rest of the distance to the floor is the playbooks' own work. Needs root (network
namespaces). Settings: ``BENCH_WORKERS`` (N), ``BENCH_SERVER_START_DELAY`` and ``BENCH_AGENT_START_DELAY``
(seconds, default 30 and 20: an RKE2 server typically needs 30 to 60 s to become Ready, an agent 20 to 30 s).
The hosts run systemd as PID 1 (``BENCH_HOST_FLAVOUR=systemd``, the default; ``namespace`` for the hosts without
systemd), so the stand-in RKE2 starts as a ``Type=notify`` unit as RKE2 does.
Also prints the tasks the install spent most wall time in (``BENCH_PROFILE_TOP``, default 12) and, with
``BENCH_INSTALL_TRACE=1``, each stage's first and last event, each node's service start and the stand-in's own log
milestones (``2``: also every task's start, on which hosts).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

MAX_RATIO = 1.3
VERSION = "v1.31.4+rke2r1"


def main() -> bool:
    workers = int(os.environ.get("BENCH_WORKERS", "6"))
    server_delay = float(os.environ.get("BENCH_SERVER_START_DELAY", "30"))
    agent_delay = float(os.environ.get("BENCH_AGENT_START_DELAY", "20"))

    flavour = os.environ.get("BENCH_HOST_FLAVOUR", "systemd")
    folders = standin_setup(
        flavour=flavour,
        server_delay=server_delay,
        agent_delay=agent_delay,
        start_timeout=int(max(server_delay, agent_delay) * 4 + 120),
    )
    if folders is None:
        return False
    airgap, work_dir = folders
    from tests.testhosts.harness import HostNetwork

    from .bench_events import setup_database

    database = setup_database()
    network = HostNetwork(flavour=flavour).start()
    print(f"test hosts: {flavour}")
    try:
        return _run(network, workers=workers, server_delay=server_delay, agent_delay=agent_delay, database=database)
    finally:
        network.close()
        shutil.rmtree(airgap, ignore_errors=True)
        shutil.rmtree(work_dir, ignore_errors=True)


def standin_setup(
    *, flavour: str, server_delay: float, agent_delay: float, start_timeout: int
) -> tuple[Path, Path] | None:
    """Checks that SSH test hosts of ``flavour`` can run here, builds the stand-in RKE2's air-gap bundle with these
    start delays, and points the portal at it (air-gap method, a jobs folder of its own). Returns the bundle's folder
    and the jobs folder (the caller removes them), or None after saying why the bench cannot run."""
    from tests.testhosts.harness import missing_prerequisites

    problems = missing_prerequisites()
    if not problems and flavour == "systemd":
        from tests.testhosts.systemd import missing_systemd_prerequisites

        problems = missing_systemd_prerequisites()
    if problems:
        print("cannot run: " + "; ".join(problems), file=sys.stderr)
        return None

    from tests.standin_rke2.build import build_bundle

    airgap = Path(tempfile.mkdtemp(prefix="bench-airgap-"))
    work_dir = Path(tempfile.mkdtemp(prefix="bench-jobs-", dir="/tmp"))
    build_bundle(
        airgap / VERSION,
        VERSION,
        server_start_delay=server_delay,
        agent_start_delay=agent_delay,
        # Node status every 10 s, the kubelet's default (nodeStatusUpdateFrequency); a node is Ready from its
        # registration on, so this sets only the stand-in's background load, not how soon a join is seen.
        heartbeat_interval=10.0,
        join_retry_interval=1.0,
    )
    os.environ.update(
        {
            "RKE2_INSTALL_METHOD": "airgap",
            "RKE2_AIRGAP_ARTIFACT_DIR": str(airgap),
            "RKE2_START_TIMEOUT_SECONDS": str(start_timeout),
            "JOBS_WORK_DIR": str(work_dir),
        }
    )
    return airgap, work_dir


def _run(network: object, *, workers: int, server_delay: float, agent_delay: float, database: str) -> bool:
    from clusters.choices import JobKind
    from clusters.engine.service import job_execute
    from clusters.models import Job, JobEvent
    from clusters.services.jobs import job_request

    hosts, _, cluster = _new_cluster(network, workers, "bench-install")
    job = job_request(cluster=cluster, kind=JobKind.INSTALL, params={"workers_batch": workers})

    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    status = job_execute(job_id=job.pk)
    elapsed = time.perf_counter() - started
    cpu = {key: value - cpu_before[key] for key, value in _cpu_seconds().items()}
    job = Job.objects.get(pk=job.pk)
    floor = 3 * server_delay + agent_delay
    print(f"database: {database}; 3 masters + {workers} workers")
    print(f"stand-in start delays: server {server_delay:g} s, agent {agent_delay:g} s")
    print(f"{'stage':>16} {'seconds':>8} {'events':>7}")
    for stage in job.result.get("stages", []):
        print(f"{stage['stage']:>16} {stage['duration']:>8.1f} {stage['events']:>7}")
    print(f"install: {status} in {elapsed:.1f} s ({JobEvent.objects.filter(job=job).count()} events stored)")
    # The test hosts share this machine's CPUs with the controller: every module Ansible runs on a node (a Python
    # process importing Ansible's module code) and the stand-in RKE2 processes are paid for here too.
    print(
        f"CPU seconds: {cpu['machine']:.0f} of {elapsed * (os.cpu_count() or 1):.0f} available "
        f"({os.cpu_count()} CPUs); ansible-playbook and ssh {cpu['children']:.0f}, the job engine {cpu['self']:.0f}, "
        f"the test hosts (sshd, modules, stand-in RKE2) {cpu['machine'] - cpu['children'] - cpu['self']:.0f}"
    )
    print(
        f"floor (3 x {server_delay:g} + {agent_delay:g}): {floor:.1f} s; overhead {elapsed - floor:.1f} s; "
        f"ratio {elapsed / floor:.3f} (target <= {MAX_RATIO} at 6 workers)"
    )
    _print_task_count(job)
    _print_task_profile(job)
    if os.environ.get("BENCH_INSTALL_TRACE") in ("1", "2"):
        _print_start_trace(job, hosts)
    if os.environ.get("BENCH_INSTALL_TRACE") == "2":
        _print_timeline(job)
    if status != "successful":
        print(job.explanation, file=sys.stderr)
        return False
    if os.environ.get("BENCH_INSTALL_PLAIN", "1") != "0":
        plain = _run_plain(network, workers=workers)
        print(
            f"plain ansible-runner, same playbooks on fresh hosts: {plain:.1f} s; engine / plain {elapsed / plain:.3f}"
        )
    return elapsed / floor <= MAX_RATIO


def _cpu_seconds() -> dict[str, float]:
    """CPU time used so far: by the whole machine, by this process, and by its finished child processes."""
    import resource

    with open("/proc/stat") as stat:
        fields = [float(value) for value in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0.0)  # all but idle and iowait
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "machine": busy / ticks,
        "self": own.ru_utime + own.ru_stime,
        "children": children.ru_utime + children.ru_stime,
    }


def _new_cluster(network: object, workers: int, name: str) -> tuple[list, object, object]:
    """Fresh test hosts and a cluster of 3 masters and ``workers`` workers on them, with its SSH credential."""
    from clusters.services.clusters import cluster_create
    from clusters.services.credentials import credential_create

    hosts = network.add_hosts(3 + workers)  # type: ignore[attr-defined]
    credential = credential_create(
        name=name,
        username="root",
        private_key=network.private_key_text,  # type: ignore[attr-defined]
        known_hosts=network.known_hosts_text,  # type: ignore[attr-defined]
    )
    nodes = [
        {"hostname": host.name, "internal_ip": host.ip, "role": "server" if index < 3 else "agent"}
        for index, host in enumerate(hosts)
    ]
    cluster = cluster_create(name=name, rke2_version=VERSION, ssh_credential=credential, nodes=nodes)
    return hosts, credential, cluster


def _print_task_count(job: object) -> None:
    """How many tasks the install started (per stage and in all) and how many times they ran on a host (a task's
    result on one host; skipped ones apart, retries of a polling task not counted)."""
    from django.db.models import Count, Q

    from clusters.models import JobEvent

    rows = (
        JobEvent.objects.filter(job=job)
        .values("stage")
        .annotate(
            started=Count("pk", filter=Q(event="playbook_on_task_start")),
            ran=Count("pk", filter=Q(event__in=["runner_on_ok", "runner_on_failed", "runner_on_unreachable"])),
            skipped=Count("pk", filter=Q(event="runner_on_skipped")),
        )
    )
    totals = {"started": 0, "ran": 0, "skipped": 0}
    print(f"{'stage':>16} {'tasks':>6} {'ran on hosts':>13} {'skipped':>8}")
    for row in sorted(rows, key=lambda row: row["stage"]):
        print(f"{row['stage']:>16} {row['started']:>6} {row['ran']:>13} {row['skipped']:>8}")
        for key in totals:
            totals[key] += row[key]
    print(f"{'install':>16} {totals['started']:>6} {totals['ran']:>13} {totals['skipped']:>8}")


def _print_task_profile(job: object, top: int = int(os.environ.get("BENCH_PROFILE_TOP", "12"))) -> None:
    """The tasks the install spent most wall time in: from a task's start event to the next task's (or the play's
    end), summed over the stages and the batches of a serial play."""
    from clusters.models import JobEvent

    marks = JobEvent.objects.filter(
        job=job, event__in=["playbook_on_task_start", "playbook_on_play_start", "playbook_on_stats"]
    ).order_by("counter")
    totals: dict[tuple[str, str], float] = {}
    previous = None
    for mark in marks.values("stage", "event", "task", "created"):
        if previous is not None and previous["event"] == "playbook_on_task_start" and mark["created"]:
            key = (previous["stage"], previous["task"])
            totals[key] = totals.get(key, 0.0) + (mark["created"] - previous["created"]).total_seconds()
        previous = mark
    print("slowest tasks (wall seconds summed over batches):")
    for (stage, task), seconds in sorted(totals.items(), key=lambda item: -item[1])[:top]:
        print(f"{seconds:>8.1f}  {stage:<16} {task}")


def _print_start_trace(job: object, hosts: list) -> None:
    """Per stage: when its first and last event came; per host: how long the service start task took, and the
    stand-in's own log milestones."""
    from django.db.models import Max, Min

    from clusters.models import JobEvent

    stages = JobEvent.objects.filter(job=job).values("stage").annotate(first=Min("created"), last=Max("created"))
    previous = None
    for stage in stages.order_by("first"):
        gap = f", {(stage['first'] - previous).total_seconds():.1f} s after the previous stage" if previous else ""
        print(f"stage {stage['stage']:<16} events {stage['first']:%H:%M:%S.%f} to {stage['last']:%H:%M:%S.%f}{gap}")
        previous = stage["last"]
    events = JobEvent.objects.filter(job=job, task="Start or restart the RKE2 service").order_by("counter")
    started = {}
    for event in events.values("event", "host_name", "created"):
        if event["event"] == "runner_on_start":
            started[event["host_name"]] = event["created"]
        elif event["event"] == "runner_on_ok" and event["host_name"] in started:
            took = (event["created"] - started[event["host_name"]]).total_seconds()
            print(f"start task {event['host_name']:<10} {took:6.1f} s (from {started[event['host_name']]:%H:%M:%S})")
    for host in hosts:
        for kind in ("server", "agent"):
            log = host.path(f"/var/lib/rancher/rke2/{kind}/logs/rke2.log")
            if log.exists():
                for line in log.read_text().splitlines():
                    if any(mark in line for mark in ("Starting rke2", "Waiting for", "up and running", "level=error")):
                        print(f"  {host.name:<10} {line[:150]}")


def _print_timeline(job: object) -> None:
    """Every task as it started, with the seconds since the job's first event and the hosts it ran on."""
    from clusters.models import JobEvent

    events = (
        JobEvent.objects.filter(job=job).order_by("counter").values("stage", "event", "task", "host_name", "created")
    )
    start = None
    current = None
    hosts: list[str] = []
    for event in events:
        start = start or event["created"]
        if event["event"] in ("playbook_on_task_start", "playbook_on_play_start", "playbook_on_stats"):
            if current:
                print(f"{current[0]:7.1f}  {current[1]:<16} {current[2][:60]:<60} {','.join(sorted(set(hosts)))[:40]}")
            current = ((event["created"] - start).total_seconds(), event["stage"], event["task"] or event["event"])
            hosts = []
        elif event["event"] == "runner_on_start" and event["host_name"]:
            hosts.append(event["host_name"])


def _run_plain(network: object, *, workers: int) -> float:
    """The same staged install without the job engine (its reachability check first): each stage's playbook through
    ``ansible_runner.run`` with the inventory the renderer gives, node statuses set by hand between stages, events
    dropped."""
    import ansible_runner
    from django.conf import settings

    from clusters.choices import NodeStatus
    from clusters.fields import reveal
    from clusters.models import Node
    from inventory.renderers import InventoryRenderer
    from inventory.serialization import serialize_extravars, serialize_inventory

    hosts, credential, cluster = _new_cluster(network, workers, "bench-plain")
    job_vars = {
        "rke2_install_method": "airgap",
        "rke2_install_script_url": settings.RKE2_INSTALL_SCRIPT_URL,
        "rke2_airgap_artifact_dir": str(Path(settings.RKE2_AIRGAP_ARTIFACT_DIR) / VERSION),
        "rke2_start_timeout": settings.RKE2_START_TIMEOUT_SECONDS,
        "rke2_unsafe_show_logs": False,
        "rke2_workers_batch": workers,
    }
    started = time.perf_counter()
    for stage in ("reachability", "initial_master", "joining_masters", "workers", "all"):
        if stage == "reachability":
            rendered = InventoryRenderer.render_for_reachability(cluster)
        else:
            rendered = InventoryRenderer.render_for_stage(cluster, stage)
        private_dir = Path(tempfile.mkdtemp(prefix="bench-plain-", dir="/tmp"))
        try:
            (private_dir / "env").mkdir()
            (private_dir / "inventory").mkdir()
            (private_dir / "inventory" / "hosts.json").write_text(serialize_inventory(rendered.inventory))
            extravars = {**job_vars, **rendered.secret_vars, "rke2_kubeconfig_dest": str(private_dir / "kubeconfig")}
            (private_dir / "env" / "extravars").write_text(serialize_extravars(extravars))
            result = ansible_runner.run(
                private_data_dir=str(private_dir),
                project_dir=str(settings.ANSIBLE_DIR),
                playbook=f"{stage}.yml",
                inventory=str(private_dir / "inventory" / "hosts.json"),
                ssh_key=reveal(credential.private_key),
                envvars={
                    "ANSIBLE_HOST_KEY_CHECKING": "True",
                    "ANSIBLE_SSH_COMMON_ARGS": f"-o UserKnownHostsFile={network.known_hosts_path}",  # type: ignore[attr-defined]
                    "ANSIBLE_SSH_CONTROL_PATH_DIR": str(private_dir / "cp"),
                },
                settings={"suppress_output_file": True, "pexpect_timeout": settings.JOB_PEXPECT_TIMEOUT_SECONDS},
                quiet=True,
                event_handler=lambda event: False,
                cancel_callback=lambda: False,
                fact_cache_type="",
            )
        finally:
            shutil.rmtree(private_dir, ignore_errors=True)
        if result.status != "successful":
            raise RuntimeError(f"plain install: stage {stage} ended {result.status}")
        if stage == "reachability":
            # As the job engine does: the hosts the check prepared are not prepared again.
            job_vars["rke2_prepared_hosts"] = rendered.hosts("prepare")
            continue
        if stage != "all":
            names = [
                name for group in ("initial_master", "joining_masters", "workers") for name in rendered.hosts(group)
            ]
            Node.objects.filter(cluster=cluster, hostname__in=names).update(status=NodeStatus.ACTIVE)
    return time.perf_counter() - started
