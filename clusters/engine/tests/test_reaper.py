"""Lost jobs: failed with an explanation, their cluster released, their orphaned playbook and files removed."""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from django.utils import timezone

from clusters.choices import ClusterStatus, InstallationStage, JobKind, JobStatus, NodeStatus
from clusters.engine.reaper import job_events_purge, job_mark_lost, jobs_reap_lost, private_dirs_cleanup
from clusters.models import Cluster, Job, JobEvent, Node

from .conftest import install_cluster_with, request

pytestmark = pytest.mark.django_db


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


_names = iter(f"lost{index}" for index in range(1000))


def running_install(
    *, host: str = "elsewhere", pid: int | None = None, heartbeat_age: float = 0, **fields: object
) -> Job:
    cluster = install_cluster_with(masters=1, workers=1, name=next(_names))
    job = request(cluster, JobKind.INSTALL)
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        stage="initial_master",
        started_at=now - timedelta(seconds=heartbeat_age + 5),
        heartbeat_at=now - timedelta(seconds=heartbeat_age),
        worker_hostname=host,
        worker_pid=pid or 4242,
        emitted_events=10,
        **fields,
    )
    Node.objects.filter(cluster=cluster, role="initial_master").update(status=NodeStatus.INSTALLING)
    Cluster.objects.filter(pk=cluster.pk).update(
        status=ClusterStatus.INSTALLING, installation_stage=InstallationStage.INITIAL_MASTER
    )
    JobEvent.objects.create(job=job, counter=1, event="playbook_on_start", stage="initial_master")
    job.refresh_from_db()
    return job


def test_a_job_without_heartbeat_is_failed_and_its_cluster_released(settings: object) -> None:
    job = running_install(heartbeat_age=600)

    assert jobs_reap_lost() == [job.pk]

    job.refresh_from_db()
    cluster = job.cluster
    cluster.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.finished_at is not None
    assert job.explanation.startswith("Worker lost: no heartbeat since") and "elsewhere" in job.explanation
    assert cluster.installation_stage == InstallationStage.FAILED and cluster.status == ClusterStatus.FAILED
    master = Node.objects.get(cluster=cluster, role="initial_master")
    assert master.status == NodeStatus.FAILED and master.last_error.startswith("Worker lost")
    last = JobEvent.objects.filter(job=job).order_by("counter").last()
    assert last.event == "portal_message" and last.stdout == job.explanation and last.counter == 2
    assert job.emitted_events == 2  # what is stored is the whole log now
    # The cluster is free again: the install can be resumed from the stage that was running.
    resumed = request(cluster, JobKind.INSTALL, {"resume": True})
    assert resumed.stages == ["reachability", "initial_master", "joining_masters", "workers", "all"]


def test_jobs_with_a_live_worker_are_left_alone() -> None:
    elsewhere = running_install(heartbeat_age=5)
    here = running_install(host=socket.gethostname(), pid=os.getpid(), heartbeat_age=5)
    Job.objects.filter(pk=here.pk).update(started_at=timezone.now())

    assert jobs_reap_lost() == []
    assert set(Job.objects.filter(pk__in=[elsewhere.pk, here.pk]).values_list("status", flat=True)) == {
        JobStatus.RUNNING
    }


def test_a_job_whose_worker_process_is_gone_is_reaped_at_once() -> None:
    job = running_install(host=socket.gethostname(), pid=dead_pid(), heartbeat_age=1)

    assert jobs_reap_lost() == [job.pk]
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "is gone" in job.explanation


def test_a_pid_reused_by_a_later_process_does_not_keep_a_job_alive() -> None:
    job = running_install(host=socket.gethostname(), pid=os.getpid(), heartbeat_age=1)
    Job.objects.filter(pk=job.pk).update(started_at=timezone.now() - timedelta(days=30))

    assert jobs_reap_lost() == [job.pk]


def test_a_heartbeat_that_moved_keeps_the_job() -> None:
    job = running_install(heartbeat_age=600)
    stale = Job.objects.get(pk=job.pk)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now())

    assert job_mark_lost(job=stale, explanation="Worker lost: test") is False
    assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING


def test_the_orphaned_playbook_of_a_lost_job_is_killed(jobs_dir: Path) -> None:
    job = running_install(host=socket.gethostname(), pid=dead_pid(), heartbeat_age=1)
    orphan = subprocess.Popen(
        ["sh", "-c", "sleep 300", str(jobs_dir / f"job{job.pk}.1.abcdef" / "x")], start_new_session=True
    )
    stranger = subprocess.Popen(["sh", "-c", "sleep 300", str(jobs_dir / "other")], start_new_session=True)
    Job.objects.filter(pk=job.pk).update(ansible_pid=orphan.pid)
    try:
        assert jobs_reap_lost() == [job.pk]
        assert orphan.wait(10) == -9
        assert stranger.poll() is None
        # A pid recorded for a job but now used by an unrelated process is not touched.
        other = running_install(host=socket.gethostname(), pid=dead_pid(), heartbeat_age=1, ansible_pid=stranger.pid)
        assert jobs_reap_lost() == [other.pk]
        assert stranger.poll() is None
    finally:
        for process in (orphan, stranger):
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait(10)


def test_leftover_private_dirs_of_dead_workers_are_removed(jobs_dir: Path) -> None:
    gone = jobs_dir / f"job1.{dead_pid()}.abcdefgh"
    mine = jobs_dir / f"job2.{os.getpid()}.abcdefgh"
    other = jobs_dir / "not-a-job-dir"
    for path in (gone, mine, other):
        (path / "env").mkdir(parents=True)
        (path / "env" / "extravars").write_text("{}")
    holder = subprocess.Popen(["sh", "-c", "sleep 300", str(gone / "cp" / "socket")], start_new_session=True)

    assert private_dirs_cleanup(work_dir=jobs_dir) == [gone]

    assert not gone.exists() and mine.exists() and other.exists()
    assert holder.wait(10) == -9
    assert not any(str(gone) in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


def test_events_of_old_jobs_are_purged() -> None:
    cluster = install_cluster_with(name="purge")
    old = Job.objects.create(
        cluster=cluster,
        kind=JobKind.HEALTH,
        status=JobStatus.SUCCESSFUL,
        emitted_events=3,
        finished_at=timezone.now() - timedelta(days=100),
    )
    recent = Job.objects.create(
        cluster=cluster,
        kind=JobKind.HEALTH,
        status=JobStatus.FAILED,
        emitted_events=2,
        finished_at=timezone.now() - timedelta(days=1),
    )
    JobEvent.objects.bulk_create([JobEvent(job=old, counter=i, event="verbose") for i in (1, 2, 3)])
    JobEvent.objects.bulk_create([JobEvent(job=recent, counter=i, event="verbose") for i in (1, 2)])

    assert job_events_purge(older_than_days=90, batch_size=2) == 3

    old.refresh_from_db()
    assert not JobEvent.objects.filter(job=old).exists() and JobEvent.objects.filter(job=recent).count() == 2
    assert old.emitted_events == 0 and old.result["events_purged"] is True
