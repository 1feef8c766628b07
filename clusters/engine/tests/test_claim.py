"""Claiming a job: exactly one worker process runs it, and only while it is pending and not canceled."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from django.db import connection

from clusters.choices import JobKind, JobStatus
from clusters.engine.service import job_claim, job_execute
from clusters.models import Job
from clusters.services.jobs import job_cancel

from .conftest import install_cluster_with, request


@pytest.mark.django_db
def test_a_pending_job_is_claimed_once() -> None:
    job = request(install_cluster_with(), JobKind.INSTALL)

    assert job_claim(job_id=job.pk) is True
    assert job_claim(job_id=job.pk) is False

    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING
    assert job.worker_hostname == socket.gethostname() and job.worker_pid == os.getpid()
    assert job.started_at is not None and job.heartbeat_at == job.started_at


@pytest.mark.django_db
def test_a_canceled_or_finished_job_is_not_run() -> None:
    cluster = install_cluster_with()
    job = request(cluster, JobKind.INSTALL)
    job_cancel(job=job)

    assert job_execute(job_id=job.pk) is None
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELED and job.started_at is None
    assert job_execute(job_id=job.pk + 1000) is None  # no such job


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_of_one_job_give_it_to_one_worker() -> None:
    job = request(install_cluster_with(), JobKind.INSTALL)
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def claim() -> None:
        try:
            barrier.wait()
            results.append(job_claim(job_id=job.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(results) == [False, False, False, True]
    assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING
