"""Jobs under faults on the production-shaped stack (PostgreSQL, Redis, two Celery workers, beat, gunicorn) with
SSH test hosts and the stand-in RKE2.

Each case installs a small cluster through the API, injects one fault while a stage runs, and ends with a job
that either finished or failed with an explanation saying what happened, then is resumed or retried to success;
then :func:`assert_clean_end` checks contiguous event counters, the cluster released and no secret anywhere.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psutil
import pytest

from tests.testhosts.fixtures import MakeHosts

from .conftest import Portal, Stack, assert_clean_end, finish_case, wait_for, wait_stage_running

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
# A cut link is noticed by SSH keepalives (JOB_SSH_KEEPALIVE_SECONDS * JOB_SSH_KEEPALIVE_COUNT, a minute by default),
# or by the connection timeout for a new connection: the job must fail well within this.
LINK_CUT_BOUND_SECONDS = 150


def install(portal: Portal, cluster: dict[str, Any], *, resume: bool = False) -> dict[str, Any]:
    return portal.post(f"/api/clusters/{cluster['id']}/install/", {"resume": resume} if resume else {})


def resume_to_success(portal: Portal, cluster: dict[str, Any]) -> dict[str, Any]:
    job = portal.wait_job(install(portal, cluster, resume=True)["id"])
    assert job["status"] == "successful", job["explanation"]
    nodes = portal.get(f"/api/clusters/{cluster['id']}/nodes/")
    nodes = nodes["results"] if isinstance(nodes, dict) else nodes
    assert {node["status"] for node in nodes} == {"active"}
    return job


def test_redis_restarted_mid_job(stack: Stack, portal: Portal, make_hosts: MakeHosts, make_cluster, host_network):
    hosts = make_hosts(1)  # one server: the fault hits its own stage
    cluster = make_cluster(hosts, name="redis-restart")
    job = install(portal, cluster)
    wait_stage_running(stack, job["id"], "initial_master")

    stack.run("stop", "redis")
    # While the broker is down, a request is refused with a clear error and leaves nothing pending.
    other = make_cluster(make_hosts(1), name="redis-down")
    refused = portal.call("POST", f"/api/clusters/{other['id']}/preflight/", {})
    assert refused.status_code == 503, refused.text
    assert "broker" in refused.json()["message"]
    assert not stack.query("SELECT 1 FROM clusters_job WHERE cluster_id = %s AND status IN ('pending', 'running')",
                           other["id"])  # fmt: skip
    stack.run("start", "redis")

    done = portal.wait_job(job["id"])
    assert done["status"] == "successful", done["explanation"]
    # The workers reconnected: the refused request, made again, runs.
    retried = portal.wait_job(portal.post(f"/api/clusters/{other['id']}/preflight/")["id"], timeout=300)
    assert retried["status"] == "successful", retried["explanation"]
    assert_clean_end(stack, portal, cluster["id"], host_network.private_key_text)
    finish_case("redis restarted")


def test_postgres_restarted_mid_job(stack: Stack, portal: Portal, make_hosts: MakeHosts, make_cluster, host_network):
    hosts = make_hosts(1)  # one server: the fault hits its own stage
    cluster = make_cluster(hosts, name="pg-restart")
    job = install(portal, cluster)
    wait_stage_running(stack, job["id"], "initial_master")

    stack.run("restart", "postgres")
    done = portal.wait_job(job["id"])
    if done["status"] != "successful":
        # Allowed only with an explanation that says what happened; the install then resumes to success.
        assert "database" in done["explanation"].lower(), done["explanation"]
        resume_to_success(portal, cluster)
    assert_clean_end(stack, portal, cluster["id"], host_network.private_key_text)
    finish_case("PostgreSQL restarted")


def test_worker_stopped_with_sigterm_finishes_its_job(
    stack: Stack, portal: Portal, make_hosts: MakeHosts, make_cluster, host_network
):
    hosts = make_hosts(1)  # one server: the fault hits its own stage
    cluster = make_cluster(hosts, name="sigterm")
    job = install(portal, cluster)
    row = wait_stage_running(stack, job["id"], "initial_master")
    worker = stack.worker_of(row["worker_pid"])
    main_pid = stack.pid(worker)

    stack.signal(worker, signal.SIGTERM)  # warm shutdown: the running job is finished first
    done = portal.wait_job(job["id"])
    assert done["status"] == "successful", done["explanation"]
    wait_for(lambda: not psutil.pid_exists(main_pid), timeout=60, what=f"{worker} to exit after its job")
    stack.run("start", worker)
    assert_clean_end(stack, portal, cluster["id"], host_network.private_key_text)
    finish_case("worker SIGTERM")


def test_worker_killed_with_sigkill(stack: Stack, portal: Portal, make_hosts: MakeHosts, make_cluster, host_network):
    hosts = make_hosts(2)
    cluster = make_cluster(hosts, name="sigkill")
    job = install(portal, cluster)
    row = wait_stage_running(stack, job["id"], "workers")
    worker = stack.worker_of(row["worker_pid"])
    orphan = row["ansible_pid"]

    stack.signal(worker, signal.SIGKILL)
    # The other worker's reaper (same host) sees the process gone at once: the job fails, the orphan is stopped.
    done = portal.wait_job(job["id"], timeout=60)
    assert done["status"] == "failed"
    assert done["explanation"].startswith("Worker lost:") and "is gone" in done["explanation"], done["explanation"]
    if orphan:
        wait_for(
            lambda: not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE,
            timeout=30, what="the orphaned playbook to stop",
        )  # fmt: skip
    stack.run("start", worker)  # the service manager restarts it; it removes what its predecessor left
    resumed = resume_to_success(portal, cluster)
    assert resumed["stages"] == ["reachability", "workers", "all"]
    assert_clean_end(stack, portal, cluster["id"], host_network.private_key_text)
    finish_case("worker SIGKILL")


def test_jobs_folder_full(stack: Stack, portal: Portal, make_hosts: MakeHosts, make_cluster, host_network):
    hosts = make_hosts(1)  # one server: the fault hits its own stage
    cluster = make_cluster(hosts, name="disk-full")
    job = install(portal, cluster)
    row = wait_stage_running(stack, job["id"], "initial_master")
    folder = stack.jobs_dir(stack.worker_of(row["worker_pid"]))
    filler = folder / "filler"
    try:
        with open(filler, "wb") as handle:
            chunk = b"\0" * (1 << 20)
            try:
                while True:
                    handle.write(chunk)
                    handle.flush()
            except OSError:
                pass
        done = portal.wait_job(job["id"])
    finally:
        filler.unlink(missing_ok=True)
    assert done["status"] == "failed", done["explanation"]
    assert "No space left on device" in done["explanation"] or "space" in done["explanation"], done["explanation"]
    resume_to_success(portal, cluster)
    assert_clean_end(stack, portal, cluster["id"], host_network.private_key_text)
    finish_case("jobs folder full")


def test_link_cut_mid_join_then_restored(
    stack: Stack, portal: Portal, make_hosts: MakeHosts, make_cluster, host_network
):
    hosts = make_hosts(2)
    cluster = make_cluster(hosts, name="link-cut")
    job = install(portal, cluster)
    wait_stage_running(stack, job["id"], "workers")
    joining = hosts[1]
    # Cut while the joining host's SSH connection is up (its control master is kept between tasks): the hard case,
    # where nothing answers and nothing resets the connection, rather than a new connection that times out.
    wait_for(
        lambda: stack.query(
            "SELECT 1 FROM clusters_jobevent WHERE job_id = %s AND stage = 'workers' AND host_name = %s "
            "AND event = 'runner_on_ok' LIMIT 1",
            job["id"], joining.name,
        ),
        timeout=300, what=f"{joining.name} to run a task of the workers stage",
    )  # fmt: skip

    joining.cut_link()
    cut_at = time.monotonic()
    try:
        # SSH keepalives end the joining host's connection: the stage fails in bounded time, it does not hang.
        done = portal.wait_job(job["id"], timeout=LINK_CUT_BOUND_SECONDS)
        took = time.monotonic() - cut_at
    finally:
        joining.restore_link()
    assert done["status"] == "failed", done
    assert joining.name in done["explanation"] and "unreachable" in done["explanation"].lower(), done["explanation"]
    nodes = portal.get(f"/api/clusters/{cluster['id']}/nodes/")
    nodes = nodes["results"] if isinstance(nodes, dict) else nodes
    by_name = {node["hostname"]: node for node in nodes}
    assert by_name[joining.name]["status"] == "failed", by_name[joining.name]
    assert "unreachable" in by_name[joining.name]["last_error"].lower(), by_name[joining.name]
    print(f"link cut: job failed {took:.0f} s after the cut: {done['explanation'][:300]}")

    resumed = resume_to_success(portal, cluster)
    assert "workers" in resumed["stages"], resumed["stages"]
    assert_clean_end(stack, portal, cluster["id"], host_network.private_key_text)
    finish_case("link cut mid-join")


def test_no_process_of_the_stack_died_unexpectedly(stack: Stack) -> None:
    """The stack is whole after the faults (each case restarted what it stopped)."""
    status = stack.run("status")
    assert "stopped" not in status, status
    assert os.path.ismount(stack.jobs_dir("worker1")) and os.path.ismount(stack.jobs_dir("worker2"))
