"""Telling a live job from a lost one: the heartbeat thread, the run marker, process identities that survive pid
reuse, the private directories of dead (or replaced) processes, and pending jobs whose message was lost."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from clusters.choices import JobKind, JobStatus
from clusters.engine.events import EventWriter, QueuedEvent
from clusters.engine.heartbeat import Heartbeat
from clusters.engine.process import (
    RunMarker,
    process_holds_marker,
    process_identity,
    process_start_token,
    same_process,
)
from clusters.engine.reaper import jobs_fail_undelivered, jobs_reap_lost, private_dirs_cleanup
from clusters.engine.redaction import Redactor
from clusters.engine.runner import make_private_dir
from clusters.engine.service import job_claim
from clusters.models import Job, JobEvent
from clusters.services.jobs import JOB_QUEUE, job_dispatch
from tests.worker import require_redis

from .conftest import install_cluster_with, request

_names = iter(f"live{index}" for index in range(1000))


def claimed_job() -> Job:
    """An install claimed by this process, as a worker claims it."""
    job = request(install_cluster_with(name=next(_names)), JobKind.INSTALL)
    assert job_claim(job_id=job.pk)
    job.refresh_from_db()
    return job


def age_heartbeat(job: Job, seconds: float) -> None:
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=seconds))


def dead_process_identity() -> str:
    process = subprocess.Popen(["sleep", "30"])
    identity = process_identity(process.pid)
    process.kill()
    process.wait()
    return identity


@pytest.mark.django_db
def test_a_job_whose_process_is_alive_and_working_on_it_is_never_reaped(jobs_dir: Path) -> None:
    job = claimed_job()
    assert job.worker_process == process_identity()
    age_heartbeat(job, 3600)  # an hour without heartbeat: the main thread was blocked, say

    with RunMarker(jobs_dir, job.pk):
        assert process_holds_marker(os.getpid(), job.pk) is True
        assert jobs_reap_lost() == []
        assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING

    # The same live process, no longer working on the job (it returned without ending it): lost.
    assert process_holds_marker(os.getpid(), job.pk) is False
    assert jobs_reap_lost() == [job.pk]
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "no longer works on the job" in job.explanation


@pytest.mark.django_db
def test_a_job_whose_process_is_gone_is_reaped_at_once_even_with_a_fresh_heartbeat() -> None:
    job = claimed_job()
    Job.objects.filter(pk=job.pk).update(worker_process=dead_process_identity())

    assert jobs_reap_lost() == [job.pk]
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "is gone" in job.explanation


@pytest.mark.django_db
def test_a_later_process_with_the_same_pid_is_not_the_job_s_process(jobs_dir: Path) -> None:
    job = claimed_job()
    host, pid, start = job.worker_process.split("/")
    # This very pid, but a different start time: the recorded process ended and its pid was reused.
    Job.objects.filter(pk=job.pk).update(worker_process=f"{host}/{pid}/{start}0")
    assert not same_process(f"{host}/{pid}/{start}0") and same_process(job.worker_process)

    with RunMarker(jobs_dir, job.pk):
        assert jobs_reap_lost() == [job.pk]


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_goes_on_while_the_job_s_thread_is_blocked() -> None:
    job = claimed_job()
    age_heartbeat(job, 600)
    writer = EventWriter(job_id=job.pk, redactor=Redactor([]))
    writer.emitted = 7
    with Heartbeat(job.pk, interval=0.1, worker_process=job.worker_process, emitted=lambda: writer.emitted):
        time.sleep(0.6)  # the main thread does not return to ansible-runner's loop
    job.refresh_from_db()
    assert timezone.now() - job.heartbeat_at < timedelta(seconds=2)
    assert job.emitted_events == 7

    # Once the job has ended, beats change nothing.
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCESSFUL)
    beat = Heartbeat(job.pk, interval=10, worker_process=job.worker_process)
    assert beat.beat() is False


def test_private_dirs_carry_their_process_start_time(jobs_dir: Path) -> None:
    path = make_private_dir(jobs_dir, 12)
    job, pid, start, _random = path.name.split(".")
    assert (job, int(pid), start) == ("job12", os.getpid(), process_start_token(os.getpid()))
    assert private_dirs_cleanup(work_dir=jobs_dir) == []
    assert path.exists()


def test_a_private_dir_whose_pid_was_reused_is_removed(jobs_dir: Path) -> None:
    token = "K10c0ffee::server:0123456789abcdef"
    # Left by a process that died; its pid now belongs to this (later) process, which has another start time.
    stale = jobs_dir / f"job3.{os.getpid()}.{process_start_token(os.getpid())}0.abcdefgh"
    (stale / "env").mkdir(parents=True)
    (stale / "env" / "extravars").write_text(f'{{"rke2_token": "{token}"}}')

    assert private_dirs_cleanup(work_dir=jobs_dir) == [stale]
    assert not stale.exists()
    assert not any(token in p.read_text() for p in jobs_dir.rglob("*") if p.is_file())


@pytest.mark.django_db(transaction=True)
def test_a_pending_job_whose_message_was_lost_is_failed_but_not_one_still_queued(settings: object) -> None:
    require_redis()
    from rke2portal.celery import app

    settings.JOB_DISPATCH_GRACE_SECONDS = 60  # type: ignore[attr-defined]
    queued = request(install_cluster_with(name=next(_names)), JobKind.INSTALL)
    lost = request(install_cluster_with(name=next(_names)), JobKind.INSTALL)
    never_sent = request(install_cluster_with(name=next(_names)), JobKind.INSTALL)
    fresh = request(install_cluster_with(name=next(_names)), JobKind.INSTALL)
    try:
        assert Job.objects.get(pk=queued.pk).dispatched_at is not None
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(JOB_QUEUE)  # the broker lost every message...
        assert job_dispatch(queued) == ""  # ...but this one is queued again
        Job.objects.filter(pk=never_sent.pk).update(dispatched_at=None)
        old = timezone.now() - timedelta(minutes=5)
        Job.objects.filter(pk__in=[queued.pk, lost.pk, never_sent.pk]).update(created_at=old)

        assert sorted(jobs_fail_undelivered(recheck_seconds=0.1)) == sorted([lost.pk, never_sent.pk])
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(JOB_QUEUE)
    statuses = dict(Job.objects.values_list("pk", "status"))
    assert statuses[queued.pk] == JobStatus.PENDING and statuses[fresh.pk] == JobStatus.PENDING
    lost.refresh_from_db()
    never_sent.refresh_from_db()
    assert lost.status == JobStatus.FAILED and "no worker holds it" in lost.explanation
    assert never_sent.status == JobStatus.FAILED and "never reached the task queue" in never_sent.explanation
    # The cluster is free for the next request.
    assert request(lost.cluster, JobKind.INSTALL).status == JobStatus.PENDING
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(JOB_QUEUE)


@pytest.mark.django_db(transaction=True)
def test_events_that_could_not_be_stored_leave_contiguous_counters(jobs_dir: Path) -> None:
    job = claimed_job()
    writer = EventWriter(job_id=job.pk, redactor=Redactor([]), queue_size=1, put_timeout=0.01)
    for counter in range(1, 6):  # the writer is not running yet: 4 of 5 cannot be queued
        writer.put(QueuedEvent(counter=counter, stage="initial_master", data={"event": "verbose", "stdout": "x"}))
    writer.start().close()
    assert writer.dropped == 4
    rows = list(JobEvent.objects.filter(job=job).order_by("counter").values_list("counter", "event"))
    assert [counter for counter, _ in rows] == [1, 2, 3, 4, 5]
    assert [event for _, event in rows].count("portal_event_lost") == 4


@pytest.mark.django_db
def test_run_markers_of_jobs_that_ended_are_removed(jobs_dir: Path) -> None:
    from clusters.engine.reaper import run_markers_cleanup

    running = claimed_job()
    ended = claimed_job()
    Job.objects.filter(pk=ended.pk).update(status=JobStatus.FAILED)
    for job in (running, ended):
        (jobs_dir / RunMarker.file_name(job.pk)).touch()

    assert run_markers_cleanup(work_dir=jobs_dir) == [jobs_dir / RunMarker.file_name(ended.pk)]
    assert sorted(p.name for p in jobs_dir.iterdir()) == [RunMarker.file_name(running.pk)]
