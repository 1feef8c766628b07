"""The Celery application: playbook jobs on their own queue, acknowledged on receipt; the beat schedule's tasks."""

from __future__ import annotations

import pytest
from celery.schedules import crontab

from clusters.services.jobs import JOB_QUEUE
from rke2portal.celery import app


@pytest.fixture(autouse=True)
def _tasks_discovered() -> None:
    app.loader.import_default_modules()  # what a worker does at start: autodiscover the apps' tasks


def test_playbook_jobs_run_one_at_a_time_on_their_queue_and_are_never_redelivered() -> None:
    task = app.tasks["clusters.run_job"]
    assert task.acks_late is False
    assert app.conf.task_acks_late is False
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_routes["clusters.run_job"]["queue"] == JOB_QUEUE == "playbooks"


def test_the_beat_schedule_runs_the_reaper_every_minute_and_the_purge_nightly() -> None:
    schedule = app.conf.beat_schedule
    assert schedule["reap-lost-jobs"]["task"] == "clusters.reap_lost_jobs"
    assert float(schedule["reap-lost-jobs"]["schedule"]) == 60.0
    assert schedule["purge-job-events"]["task"] == "clusters.purge_job_events"
    assert isinstance(schedule["purge-job-events"]["schedule"], crontab)
    for entry in schedule.values():
        assert entry["task"] in app.tasks
        assert app.tasks[entry["task"]].time_limit  # housekeeping is bounded
