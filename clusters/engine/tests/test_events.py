"""The event writer: batching, idempotent inserts, per-row fallback, masking, and a handler that never blocks."""

from __future__ import annotations

import time
from typing import Any

import pytest

from clusters.choices import JobKind, JobStatus
from clusters.engine.events import EventWriter, QueuedEvent, build_event
from clusters.engine.redaction import MASK, Redactor
from clusters.models import Job, JobEvent
from clusters.tests.factories import make_cluster

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "9b8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f"


@pytest.fixture
def job() -> Job:
    cluster = make_cluster("events")
    return Job.objects.create(
        cluster=cluster, kind=JobKind.INSTALL, status=JobStatus.RUNNING, stages=["initial_master"]
    )


def runner_event(counter: int, **fields: Any) -> dict[str, Any]:
    event = {
        "uuid": f"00000000-0000-0000-0000-{counter:012d}",
        "parent_uuid": "",
        "counter": counter,
        "event": "runner_on_ok",
        "stdout": f"ok: [h1] line {counter}",
        "start_line": counter - 1,
        "end_line": counter,
        "created": "2026-01-02T03:04:05.123456+00:00",
        "event_data": {"host": "h1", "task": "Say", "play": "Play", "task_action": "debug", "res": {"changed": True}},
    }
    event.update(fields)
    return event


def queued(counter: int, **fields: Any) -> QueuedEvent:
    return QueuedEvent(counter=counter, stage="initial_master", data=runner_event(counter, **fields))


def test_events_are_written_in_batches_within_the_flush_interval(job: Job) -> None:
    writer = EventWriter(job_id=job.pk, redactor=Redactor([]), batch_size=50, flush_seconds=0.3).start()
    try:
        for counter in range(1, 121):
            writer.put(queued(counter))
        # Two full batches go at once; the rest within the flush interval, while the writer still runs.
        deadline = time.monotonic() + 5
        while JobEvent.objects.filter(job=job).count() < 120 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert JobEvent.objects.filter(job=job).count() == 120
    finally:
        writer.close()
    assert writer.emitted == 120 and writer.stored == 120 and writer.dropped == 0
    event = JobEvent.objects.get(job=job, counter=7)
    assert (event.stage, event.event, event.host_name, event.task, event.play) == (
        "initial_master",
        "runner_on_ok",
        "h1",
        "Say",
        "Play",
    )
    assert event.changed and not event.failed and event.created.microsecond == 123456
    assert (event.start_line, event.end_line) == (6, 7)


def test_writing_an_event_again_never_duplicates_it(job: Job) -> None:
    writer = EventWriter(job_id=job.pk, redactor=Redactor([]), batch_size=10, flush_seconds=0.05).start()
    for counter in (1, 2, 3, 2, 3, 4):
        writer.put(queued(counter))
    writer.close()
    assert list(JobEvent.objects.filter(job=job).values_list("counter", flat=True)) == [1, 2, 3, 4]


def test_a_row_the_database_refuses_does_not_lose_the_others(job: Job) -> None:
    writer = EventWriter(job_id=job.pk, redactor=Redactor([]), batch_size=100, flush_seconds=0.05).start()
    for counter in (1, 2, -3, 4):  # a negative counter violates the column's check constraint
        writer.put(queued(counter))
    writer.close()
    assert list(JobEvent.objects.filter(job=job).values_list("counter", flat=True)) == [1, 2, 4]


def test_event_data_the_database_refuses_is_dropped_but_the_event_kept(job: Job) -> None:
    writer = EventWriter(job_id=job.pk, redactor=Redactor([]), batch_size=100, flush_seconds=0.05).start()
    writer.put(queued(1))
    writer.put(queued(2, event_data={"host": "h1", "res": {"value": {1, 2}}}))  # a set is not JSON
    writer.put(queued(3))
    writer.close()
    rows = dict(JobEvent.objects.filter(job=job).values_list("counter", "event_data"))
    assert sorted(rows) == [1, 2, 3]
    assert rows[2] == {"event_data_dropped": True} and rows[1]["host"] == "h1"
    assert writer.dropped == 0


def test_secrets_and_nul_characters_never_reach_the_database(job: Job) -> None:
    writer = EventWriter(job_id=job.pk, redactor=Redactor([TOKEN]), batch_size=10, flush_seconds=0.05).start()
    writer.put(
        queued(
            1,
            stdout=f"token {TOKEN}\x00 end",
            event_data={
                "host": "h1",
                "task": f"use {TOKEN}",
                "res": {"stdout": f"K10::server:{TOKEN}", "raw": "a\x00b"},
            },
        )
    )
    writer.close()
    event = JobEvent.objects.get(job=job)
    assert event.stdout == f"token {MASK} end"
    assert event.task == f"use {MASK}"
    assert event.event_data["res"] == {"stdout": f"K10::server:{MASK}", "raw": "ab"}


def test_failed_and_changed_flags_follow_ansible() -> None:
    redactor = Redactor([])
    failed = build_event(1, queued(1, event="runner_on_failed", event_data={"host": "h", "res": {}}), redactor)
    ignored = build_event(
        1, queued(2, event="runner_on_failed", event_data={"host": "h", "ignore_errors": True}), redactor
    )
    unreachable = build_event(1, queued(3, event="runner_on_unreachable", event_data={"host": "h"}), redactor)
    stats = build_event(
        1, queued(4, event="playbook_on_stats", event_data={"failures": {"h": 1}, "changed": {}}), redactor
    )
    ok = build_event(1, queued(5, event="runner_on_ok", event_data={"host": "h", "res": {"changed": False}}), redactor)
    assert (failed.failed, ignored.failed, unreachable.failed, stats.failed, ok.failed) == (
        True,
        False,
        True,
        True,
        False,
    )
    assert not ok.changed and not stats.changed


def test_put_never_blocks_for_long_when_the_writer_cannot_keep_up(job: Job) -> None:
    writer = EventWriter(job_id=job.pk, redactor=Redactor([]), queue_size=5, put_timeout=0.05)  # not started
    started = time.monotonic()
    for counter in range(1, 21):
        writer.put(queued(counter))
    assert time.monotonic() - started < 2
    assert writer.emitted == 20 and writer.dropped == 15
