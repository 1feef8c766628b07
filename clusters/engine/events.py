"""Storing Ansible events: a bounded in-memory queue fed by ansible-runner, drained by a writer thread.

ansible-runner calls its ``event_handler`` synchronously while it reads the playbook's output, so the handler
only appends to a queue (:meth:`EventWriter.put`). A writer thread with its own database connection turns the
queued events into :class:`~clusters.models.JobEvent` rows (secrets masked, NULs removed) and inserts them with
``bulk_create(ignore_conflicts=True)`` in batches: a batch is written when it is full, or when the flush interval
has passed since the previous write (so the first event after a quiet spell is written at once, and a busy
playbook's events at most one flush interval late). ``(job, counter)`` is unique, so inserting a batch again never
duplicates a row. When the database cannot be reached (it restarts, say), the batch is retried on a fresh
connection for up to ``outage_seconds``; when it refuses a batch, its rows are inserted one by one so that one bad
event does not lose the others.

An event that cannot be stored at all (the queue stayed full, or the database refused the row) leaves a
placeholder row under its counter, saying so: the counters of a job stay contiguous, and a client that waits until
every emitted event is stored is not kept waiting forever.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import InterfaceError, OperationalError, connection

from ..models import JobEvent
from .redaction import Redactor

__all__ = ["EventWriter", "QueuedEvent", "build_event"]

logger = logging.getLogger(__name__)

# Events whose host result counts as a failure (unless the task ignores errors).
FAILURE_EVENTS = frozenset(
    {"runner_on_failed", "runner_on_async_failed", "runner_item_on_failed", "runner_on_unreachable"}
)
CHANGE_EVENTS = frozenset({"runner_on_ok", "runner_item_on_ok", "runner_on_async_ok"})
_TEXT_LIMITS = {
    "play": 1024,
    "role": 1024,
    "task": 1024,
    "task_action": 128,
    "host_name": 255,
    "uuid": 64,
    "parent_uuid": 64,
}
_INSERT_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """An event as received from ansible-runner, with the job-wide counter and stage it belongs to."""

    counter: int
    stage: str
    data: Mapping[str, Any]


def _parse_created(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        created = datetime.fromisoformat(value)
    except ValueError:
        return None
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def _limit(value: Any, field: str) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return text[: _TEXT_LIMITS[field]]


def build_event(job_id: int, item: QueuedEvent, redactor: Redactor) -> JobEvent:
    """The :class:`JobEvent` row for one queued event, secrets masked."""
    raw = item.data
    name = str(raw.get("event") or "")
    data = raw.get("event_data")
    data = redactor.data(data) if isinstance(data, dict) else {}
    if name in FAILURE_EVENTS:
        failed = not data.get("ignore_errors", False)
    elif name == "playbook_on_stats":
        failed = bool(data.get("failures") or data.get("dark"))
    else:
        failed = False
    if name == "playbook_on_stats":
        changed = bool(data.get("changed"))
    elif name in CHANGE_EVENTS:
        res = data.get("res")
        changed = bool(res.get("changed")) if isinstance(res, dict) else False
    else:
        changed = False
    return JobEvent(
        job_id=job_id,
        counter=item.counter,
        stage=item.stage[:40],
        uuid=_limit(raw.get("uuid"), "uuid"),
        parent_uuid=_limit(raw.get("parent_uuid"), "parent_uuid"),
        event=name[:100],
        host_name=redactor.text(_limit(data.get("host"), "host_name")),
        play=redactor.text(_limit(data.get("play"), "play")),
        role=redactor.text(_limit(data.get("role"), "role")),
        task=redactor.text(_limit(data.get("task"), "task")),
        task_action=_limit(data.get("task_action") or data.get("resolved_action"), "task_action"),
        stdout=redactor.text(str(raw.get("stdout") or "")),
        start_line=max(0, int(raw.get("start_line") or 0)),
        end_line=max(0, int(raw.get("end_line") or 0)),
        event_data=data,
        failed=failed,
        changed=changed,
        created=_parse_created(raw.get("created")),
    )


_STOP = object()
_SYNC = object()


class EventWriter:
    """Writes one job's events to the database from a background thread.

    :meth:`put` is O(1) and never raises. :meth:`close` writes what is queued and stops the thread. ``emitted``
    counts events handed to :meth:`put`, ``dropped`` those that could not be queued or stored.
    """

    def __init__(
        self,
        *,
        job_id: int,
        redactor: Redactor,
        batch_size: int = 200,
        flush_seconds: float = 0.5,
        queue_size: int = 10000,
        put_timeout: float = 10.0,
        outage_seconds: float = 300.0,
    ) -> None:
        self.job_id = job_id
        self.redactor = redactor
        self.batch_size = max(1, batch_size)
        self.flush_seconds = max(0.01, flush_seconds)
        self.put_timeout = put_timeout
        self.outage_seconds = outage_seconds
        # (counter, stage) of events dropped before the writer got them; placeholders are written for them.
        self._gaps: list[tuple[int, str]] = []
        self.emitted = 0
        self.dropped = 0
        self.stored = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_size))
        self._thread = threading.Thread(target=self._run, name=f"job-{job_id}-events", daemon=True)
        self._started = False

    def start(self) -> EventWriter:
        self._thread.start()
        self._started = True
        return self

    def put(self, item: QueuedEvent) -> None:
        """Queue one event. When the queue is full (the database is slow or down), wait up to ``put_timeout``
        seconds, which slows the playbook's output down rather than losing events; then drop the event."""
        self.emitted += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            try:
                self._queue.put(item, timeout=self.put_timeout)
            except queue.Full:
                self.dropped += 1
                self._gaps.append((item.counter, item.stage))
        except Exception:  # noqa: BLE001 - the event handler must never raise into ansible-runner
            self.dropped += 1
            self._gaps.append((getattr(item, "counter", 0), getattr(item, "stage", "")))

    def sync(self, timeout: float = 30.0) -> bool:
        """Wait until every event queued so far is written. Returns False on timeout."""
        if not self._started or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._queue.put((_SYNC, done))
        return done.wait(timeout)

    def close(self, timeout: float | None = 120.0) -> None:
        """Write the queued events and stop the thread."""
        if not self._started:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("job %s: the event writer did not finish within %s s", self.job_id, timeout)

    # Writer thread.

    def _run(self) -> None:
        batch: list[JobEvent] = []
        deadline = 0.0
        last_write = 0.0
        try:
            while True:
                timeout = max(0.0, deadline - time.monotonic()) if batch else None
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    self._write(batch)
                    return
                if isinstance(item, tuple) and item and item[0] is _SYNC:
                    self._write(batch)
                    batch = []
                    item[1].set()
                    continue
                if item is not None:
                    try:
                        batch.append(build_event(self.job_id, item, self.redactor))
                    except Exception:
                        logger.exception("job %s: could not read event %s", self.job_id, getattr(item, "counter", "?"))
                        self.dropped += 1
                        self._gaps.append((getattr(item, "counter", 0), getattr(item, "stage", "")))
                    if len(batch) == 1:
                        # At most one write per flush interval: the first event after a quiet spell goes at
                        # once (a live view sees it without delay), the ones that follow are batched.
                        deadline = max(time.monotonic(), last_write + self.flush_seconds)
                if batch and (len(batch) >= self.batch_size or time.monotonic() >= deadline):
                    self._write(batch)
                    batch = []
                    last_write = time.monotonic()
        finally:
            connection.close()

    def _write(self, batch: list[JobEvent]) -> None:
        self._write_batch(batch)
        gaps = []
        while self._gaps:
            gaps.append(self._gaps.pop(0))  # pop is atomic: put() may append meanwhile
        if gaps:
            self._write_batch([_placeholder(self.job_id, counter, stage) for counter, stage in gaps], placeholders=True)

    def _write_batch(self, batch: list[JobEvent], *, placeholders: bool = False) -> None:
        if not batch:
            return
        deadline = time.monotonic() + self.outage_seconds
        delay = 0.2
        while True:
            try:
                JobEvent.objects.bulk_create(batch, ignore_conflicts=True)
                if not placeholders:
                    self.stored += len(batch)
                return
            except (OperationalError, InterfaceError):
                # The database cannot be reached: wait for it (the queue holds what arrives meanwhile).
                _reset_connection(force=True)
                if time.monotonic() >= deadline:
                    logger.warning("job %s: the database stayed unreachable; storing events one by one", self.job_id)
                    break
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                logger.warning(
                    "job %s: inserting %d events failed; retrying one by one", self.job_id, len(batch), exc_info=True
                )
                break
        for row in batch:
            if not self._write_one(row) and not placeholders:
                self._write_one(_placeholder(self.job_id, row.counter, row.stage))

    def _write_one(self, row: JobEvent) -> bool:
        placeholder = row.event == _PLACEHOLDER_EVENT
        for attempt in range(_INSERT_ATTEMPTS):
            try:
                JobEvent.objects.bulk_create([row], ignore_conflicts=True)
                if not placeholder:
                    self.stored += 1
                return True
            except Exception:  # noqa: BLE001
                _reset_connection()
                if attempt == 0:
                    # Whatever the database refused in the event's data, its text may still go in.
                    row.event_data = {"event_data_dropped": True}
                time.sleep(0.2 * (attempt + 1))
        if not placeholder:
            self.dropped += 1
        logger.error("job %s: event %s could not be stored", self.job_id, row.counter)
        return False


_PLACEHOLDER_EVENT = "portal_event_lost"


def _placeholder(job_id: int, counter: int, stage: str) -> JobEvent:
    """The row that stands for an event that could not be stored."""
    return JobEvent(
        job_id=job_id,
        counter=counter,
        stage=stage[:40],
        event=_PLACEHOLDER_EVENT,
        stdout=f"[event {counter} could not be stored]",
        end_line=1,
        event_data={"event_data_dropped": True},
    )


def _reset_connection(*, force: bool = False) -> None:
    """Drop the writer's connection if it broke (always, with ``force``), so that the next attempt reconnects."""
    try:
        if force or (connection.connection is not None and not connection.is_usable()):
            connection.close()
    except Exception:  # noqa: BLE001
        connection.close()
