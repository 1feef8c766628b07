"""Pytest plugin: real Celery worker processes against the test database and the test Redis.

Fixtures:

``worker_factory`` (function)
    ``worker_factory(env=None, concurrency=2, queues="playbooks,celery") -> WorkerProcess`` starts
    ``celery -A rke2portal worker`` in its own process group, with the test settings, pointed at the test
    database (committed data only: the fixture uses ``transactional_db``) and at the test run's Redis broker
    (``TEST_REDIS_URL``; every test run has its own key prefix). ``env`` adds or overrides settings through
    environment variables (for example ``{"JOB_HEARTBEAT_SECONDS": "1"}``). Every worker started is stopped
    after the test, before the database is flushed.
``job_worker`` (function)
    One worker started with the defaults.

Redis is required: without ``TEST_REDIS_URL`` the tests using these fixtures are skipped, except under
``CI=true`` where they fail. For SQLite the test database is a file (see ``rke2portal/test_settings.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import psutil
import pytest

__all__ = [
    "WorkerProcess",
    "job_worker",
    "require_redis",
    "worker_database_url",
    "worker_environment",
    "worker_factory",
]

BASE_DIR = Path(__file__).resolve().parent.parent


def require_redis() -> str:
    """The test Redis URL; skips the calling test when there is none, or fails it under ``CI=true``."""
    url = os.environ.get("TEST_REDIS_URL", "")
    problem = "" if url else "TEST_REDIS_URL is not set"
    if url:
        import redis

        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except Exception as exc:  # noqa: BLE001 - any failure means no usable Redis
            problem = f"Redis at TEST_REDIS_URL does not answer: {exc}"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    return url


def worker_database_url() -> str:
    """A DATABASE_URL for the test database this process uses (call it once the test database is set up)."""
    from django.db import connection

    db = connection.settings_dict
    engine = db["ENGINE"]
    if engine == "django.db.backends.sqlite3":
        name = str(db["NAME"])
        if name == ":memory:" or "mode=memory" in name:
            raise RuntimeError("The SQLite test database is in memory; a worker process cannot see it.")
        return f"sqlite:///{os.path.abspath(name)}"
    if engine == "django.db.backends.postgresql":
        user = quote(str(db.get("USER") or ""), safe="")
        password = quote(str(db.get("PASSWORD") or ""), safe="")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = db.get("HOST") or "127.0.0.1"
        port = f":{db['PORT']}" if db.get("PORT") else ""
        return f"postgres://{auth}{host}{port}/{quote(str(db['NAME']), safe='')}"
    raise RuntimeError(f"Unsupported database engine for a worker process: {engine}")


class WorkerProcess:
    """A ``celery worker`` process (and its pool) in its own process group."""

    def __init__(
        self, *, env: Mapping[str, str], concurrency: int = 2, queues: str = "playbooks,celery", name: str = ""
    ) -> None:
        self.env = dict(env)
        self.concurrency = concurrency
        self.queues = queues
        self.name = name or f"testworker{os.getpid()}x{int(time.monotonic() * 1000) % 100000}"
        self.log_path = Path(tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.name} pid {self.pid}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "rke2portal", "worker",
            "-Q", self.queues, "-c", str(self.concurrency), "-P", "prefork",
            "-n", f"{self.name}@%h", "-l", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        """Start the worker and wait until it consumes its queues."""
        if self.alive:
            raise RuntimeError(f"{self!r} is already running")
        self.starts += 1
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                self.argv(), cwd=BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.process.returncode}:\n{self.log_text()[-4000:]}")
            if " ready." in self.log_text(offset):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the worker did not become ready within {timeout} s:\n{self.log_text()[-4000:]}")

    def log_text(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def pool_pids(self) -> list[int]:
        """Pids of the worker's pool processes."""
        if not self.alive:
            return []
        try:
            return [child.pid for child in psutil.Process(self.pid).children()]
        except psutil.Error:
            return []

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL of the whole process group if it does not exit in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(10)
        self._reap_group()

    def kill(self) -> None:
        """Crash the worker: SIGKILL its process group (main process and pool), as an OOM kill or a power cut
        would. What the worker started in other sessions (the playbook) keeps running."""
        if self.process is None:
            return
        self._signal(signal.SIGKILL)
        self.process.wait(10)
        self._reap_group()

    def _signal(self, signum: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def _reap_group(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            members = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == self.process.pid]
            if not members:
                return
            for member in members:
                try:
                    member.kill()
                except psutil.Error:
                    pass
            time.sleep(0.05)

    def cleanup(self) -> None:
        self.stop()
        try:
            self.log_path.unlink()
        except FileNotFoundError:
            pass


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


class WorkerFactory(Protocol):
    def __call__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        concurrency: int = 2,
        queues: str = "playbooks,celery",
        start: bool = True,
    ) -> WorkerProcess: ...


def worker_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker process: the test settings, the test database and broker, the data folder of
    this test process (so job files land where the tests look)."""
    from django.conf import settings

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "DJANGO_", "CELERY_", "DATABASE_")) and key != "COV_CORE_SOURCE"
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "rke2portal.test_settings",
            "DJANGO_READ_DOT_ENV_FILE": "false",
            "DATABASE_URL": worker_database_url(),
            "RKE2PORTAL_DATA_DIR": str(settings.DATA_DIR),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "CELERY_BROKER_KEY_PREFIX": settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", ""),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    for key in ("DJANGO_SECRET_KEY", "DJANGO_DEBUG"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


@pytest.fixture
def worker_factory(transactional_db: None) -> Iterator[WorkerFactory]:
    from django.conf import settings

    require_redis()
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.fail("The test settings do not use the test Redis as broker (TEST_REDIS_URL was set too late?).")
    workers: list[WorkerProcess] = []

    def factory(
        env: Mapping[str, str] | None = None,
        *,
        concurrency: int = 2,
        queues: str = "playbooks,celery",
        start: bool = True,
    ) -> WorkerProcess:
        worker = WorkerProcess(env=worker_environment(env), concurrency=concurrency, queues=queues)
        workers.append(worker)
        return worker.start() if start else worker

    yield factory
    for worker in workers:
        worker.cleanup()


@pytest.fixture
def job_worker(worker_factory: WorkerFactory) -> WorkerProcess:
    return worker_factory()
