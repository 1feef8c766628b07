"""The fault suite's stack: ``scripts/prodstack`` (PostgreSQL, Redis, gunicorn, two Celery workers with their own
job folders, beat) in a throwaway folder, SSH test hosts, and the stand-in RKE2 air-gap bundle.

Jobs are requested through the REST API as an operator would (a session of the ``admin`` user); what the stack
stored is read with plain SQL from its own database. Every case ends with :func:`assert_clean_end`: contiguous
event counters and a finished event stream, the cluster released, no secret in any table or file of the stack.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import requests

from tests.standin_rke2.build import build_bundle
from tests.testhosts.harness import Host, HostNetwork

ROOT = Path(__file__).resolve().parents[2]
VERSION = "v1.31.4+rke2r1"
# Stand-in timings: quick, but slow enough that a stage is still running when a fault is injected.
KNOBS = {"server_start_delay": 2.0, "agent_start_delay": 1.0, "heartbeat_interval": 1.0, "join_retry_interval": 1.0}
ACTIVE = ("pending", "running")
JOBS_TMPFS_MB = 48


@dataclass
class Figures:
    """What the suite checked, for its closing line."""

    cases: int = 0
    events: int = 0
    tables: int = 0
    columns: int = 0
    rows: int = 0
    files: int = 0
    needles: int = 0
    done: list[str] = field(default_factory=list)


FIGURES = Figures()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES.cases:
        terminalreporter.write_line(
            f"fault suite: {FIGURES.cases} cases run ({', '.join(FIGURES.done)}); {FIGURES.events} events checked "
            f"for contiguous counters; secrets scanned: {FIGURES.needles} needles in {FIGURES.rows} rows of "
            f"{FIGURES.columns} columns of {FIGURES.tables} tables and in {FIGURES.files} files"
        )


class Stack:
    """A running ``scripts/prodstack`` in its own folder."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env

    def run(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            [str(ROOT / "scripts" / "prodstack"), *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if result.returncode and args[0] != "status":
            raise AssertionError(f"prodstack {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    @property
    def portal_env(self) -> dict[str, str]:
        env = {}
        for line in (self.folder / "env").read_text().splitlines():
            if line and not line.startswith("#"):
                key, value = line.split("=", 1)
                env[key] = value
        return env

    def pid(self, service: str) -> int | None:
        try:
            return int((self.folder / "run" / f"{service}.pid").read_text())
        except (OSError, ValueError):
            return None

    def jobs_dir(self, worker: str) -> Path:
        return self.folder / f"jobs-{worker}"

    def worker_of(self, pid: int) -> str:
        """The worker service (worker1 or worker2) whose pool process ``pid`` is."""
        parent = psutil.Process(pid).ppid()
        for worker in ("worker1", "worker2"):
            if self.pid(worker) == parent:
                return worker
        raise AssertionError(f"pid {pid} belongs to no worker of the stack")

    def signal(self, service: str, signum: int) -> None:
        pid = self.pid(service)
        assert pid
        if signum == signal.SIGKILL:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)

    def db(self) -> psycopg.Connection:
        return psycopg.connect(self.portal_env["DATABASE_URL"], autocommit=True, connect_timeout=5)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        for attempt in range(30):  # the database may be restarting
            try:
                with self.db() as conn:
                    return conn.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                if attempt == 29:
                    raise
                time.sleep(1)
        return []


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    from django.conf import settings

    airgap = Path(tempfile.mkdtemp(prefix="faults-airgap-"))
    folder = Path(tempfile.mkdtemp(prefix="fs-"))  # short: SSH control sockets live in the job folders
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "JOB_", "RKE2_"))}
    env.update(
        {
            "PRODSTACK_DIR": str(folder),
            "PRODSTACK_PG_FAST": "1",
            "PRODSTACK_JOBS_TMPFS_MB": str(JOBS_TMPFS_MB),
            "PRODSTACK_WORKER_CONCURRENCY": "1",
            "PRODSTACK_WEB_WORKERS": "1",
            # The test process decrypts what the stack stores, to know what to look for.
            "FIELD_ENCRYPTION_KEYS": ",".join(settings.FIELD_ENCRYPTION_KEYS),
            "RKE2_INSTALL_METHOD": "airgap",
            "RKE2_AIRGAP_ARTIFACT_DIR": str(airgap),
            "RKE2_START_TIMEOUT_SECONDS": "120",
            "JOB_HEARTBEAT_SECONDS": "1",
            "JOB_LOST_AFTER_SECONDS": "20",
            "JOB_REAPER_INTERVAL_SECONDS": "3",
            "JOB_CANCEL_POLL_SECONDS": "0.5",
            "JOB_PEXPECT_TIMEOUT_SECONDS": "0.5",
            "JOB_TIMEOUT_SECONDS": "900",
            "LOG_LEVEL": "INFO",
        }
    )
    stack = Stack(folder, env)
    try:
        build_bundle(airgap / VERSION, VERSION, **KNOBS)
        stack.run("start")
        yield stack
    finally:
        try:
            stack.run("destroy", timeout=120)
        finally:
            shutil.rmtree(airgap, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)


class Portal:
    """The stack's REST API, logged in as its administrator (session authentication, CSRF token sent)."""

    def __init__(self, stack: Stack) -> None:
        self.base = f"http://127.0.0.1:{stack.portal_env['DJANGO_CSRF_TRUSTED_ORIGINS'].rsplit(':', 1)[1]}"
        self.session = requests.Session()
        login = f"{self.base}/admin/login/"
        self.session.get(login, timeout=30).raise_for_status()
        password = (stack.folder / "admin-password").read_text().strip()
        response = self.session.post(
            login,
            data={"username": "admin", "password": password, "next": "/admin/",
                  "csrfmiddlewaretoken": self.session.cookies["csrftoken"]},
            headers={"Referer": login}, timeout=30,
        )  # fmt: skip
        assert response.ok and "sessionid" in self.session.cookies, response.text[:500]

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        headers = {"X-CSRFToken": self.session.cookies.get("csrftoken", ""), "Referer": f"{self.base}/"}
        for attempt in range(20):
            try:
                return self.session.request(method, f"{self.base}{path}", json=body, headers=headers, timeout=60)
            except requests.ConnectionError:
                if attempt == 19:
                    raise
                time.sleep(1)
        raise AssertionError("unreachable")

    def post(self, path: str, body: Any = None, *, expect: int | tuple[int, ...] = (200, 201, 202)) -> Any:
        response = self.call("POST", path, body or {})
        expected = (expect,) if isinstance(expect, int) else expect
        assert response.status_code in expected, f"POST {path}: {response.status_code} {response.text[:2000]}"
        return response.json()

    def get(self, path: str) -> Any:
        response = self.call("GET", path)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:2000]}"
        return response.json()

    def job(self, job_id: int) -> dict[str, Any]:
        return self.get(f"/api/jobs/{job_id}/")

    def wait_job(self, job_id: int, *, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] not in ACTIVE:
                return job
            time.sleep(1)
        raise AssertionError(f"job {job_id} did not end within {timeout} s: {self.job(job_id)}")


@pytest.fixture(scope="session")
def portal(stack: Stack) -> Portal:
    return Portal(stack)


@pytest.fixture
def make_cluster(portal: Portal, host_network: HostNetwork) -> Callable[..., dict[str, Any]]:
    names = iter(range(1000))

    def make(hosts: Sequence[Host], *, name: str) -> dict[str, Any]:
        credential = portal.post(
            "/api/credentials/",
            {"name": f"{name}-{next(names)}-root", "username": "root", "private_key": host_network.private_key_text,
             "known_hosts": host_network.known_hosts_text},
        )  # fmt: skip
        nodes = [
            {"hostname": host.name, "internal_ip": host.ip, "role": "server" if index == 0 else "agent"}
            for index, host in enumerate(hosts)
        ]
        return portal.post(
            "/api/clusters/",
            {"name": name, "rke2_version": VERSION, "ssh_credential": credential["id"], "nodes": nodes},
        )

    return make


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_stage_running(stack: Stack, job_id: int, stage: str, *, timeout: float = 300) -> dict[str, Any]:
    """Wait until the job's playbook for ``stage`` runs a task; returns the job's row (worker pid, ...)."""
    wait_for(
        lambda: stack.query(
            "SELECT 1 FROM clusters_jobevent WHERE job_id = %s AND stage = %s AND event = 'runner_on_start' LIMIT 1",
            job_id, stage,
        ),
        timeout=timeout, what=f"stage {stage} of job {job_id} to run",
    )  # fmt: skip
    (row,) = stack.query("SELECT status, worker_pid, ansible_pid FROM clusters_job WHERE id = %s", job_id)
    return {"status": row[0], "worker_pid": row[1], "ansible_pid": row[2]}


# Closing checks.


def secrets_of(stack: Stack, cluster_id: int, private_key: str) -> list[str]:
    """Needles for the cluster's token, the SSH private key and the kubeconfig's credentials."""
    from clusters.crypto import decrypt
    from clusters.tests.secret_scan import needles_for

    (token, kubeconfig) = stack.query("SELECT token, kubeconfig FROM clusters_cluster WHERE id = %s", cluster_id)[0]
    values = [decrypt(token)] if token else []
    values.append(private_key)
    if kubeconfig:
        text = decrypt(kubeconfig)
        values += [
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.strip().startswith(("client-key-data:", "client-certificate-data:", "token:", "password:"))
        ]
    needles: list[str] = []
    for value in values:
        needles += needles_for(value)
        needles += [line.strip() for line in value.splitlines() if len(line.strip()) >= 16 and "-----" not in line]
    return sorted({needle for needle in needles if needle})


def scan_database(stack: Stack, needles: Sequence[str]) -> list[str]:
    columns = stack.query(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND data_type IN ('text', 'character varying', 'jsonb', 'json', 'bytea', 'character')"
    )
    findings = []
    with stack.db() as conn:
        tables = {table for table, _ in columns}
        FIGURES.tables = max(FIGURES.tables, len(tables))
        FIGURES.columns = max(FIGURES.columns, len(columns))
        for table in tables:
            FIGURES.rows += conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]  # noqa: S608
        for table, column in columns:
            for needle in needles:
                hit = conn.execute(
                    f'SELECT count(*) FROM "{table}" WHERE position(%s in "{column}"::text) > 0',  # noqa: S608
                    (needle,),
                ).fetchone()[0]
                if hit:
                    findings.append(f"{table}.{column}: {needle[:8]}...")
    return findings


def scan_files(stack: Stack, needles: Sequence[str]) -> list[str]:
    """Every file of the stack (database files, Redis's append-only file, logs, job folders) and of the system's
    temporary folder that the workers could have written."""
    encoded = [needle.encode() for needle in needles]
    findings = []
    for base in (stack.folder,):
        for path in base.rglob("*"):
            try:
                if not path.is_file() or path.is_symlink() or "static" in path.relative_to(base).parts[:1]:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            FIGURES.files += 1
            findings += [f"{path}: {needle[:8]!r}..." for needle in encoded if needle in data]
    return findings


def assert_clean_end(stack: Stack, portal: Portal, cluster_id: int, private_key: str) -> None:
    """Contiguous counters and a finished stream for every job of the cluster, the cluster released, no private
    folder left in the job folders, no secret in any table or file."""
    jobs = stack.query("SELECT id, status, emitted_events FROM clusters_job WHERE cluster_id = %s", cluster_id)
    assert jobs and not [job for job in jobs if job[1] in ACTIVE], jobs
    for job_id, _status, emitted in jobs:
        counters = [row[0] for row in stack.query(
            "SELECT counter FROM clusters_jobevent WHERE job_id = %s ORDER BY counter", job_id
        )]  # fmt: skip
        assert counters == list(range(1, len(counters) + 1)), f"job {job_id}: counters {counters[:5]}... not contiguous"
        assert emitted == len(counters), f"job {job_id}: {emitted} emitted, {len(counters)} stored"
        lost = stack.query(
            "SELECT count(*) FROM clusters_jobevent WHERE job_id = %s AND event = 'portal_event_lost'", job_id
        )[0][0]
        assert lost == 0, f"job {job_id}: {lost} events could not be stored"
        FIGURES.events += len(counters)
        after, finished = 0, False
        for _ in range(100):
            page = portal.get(f"/api/jobs/{job_id}/events/?after={after}&limit=2000")
            after, finished = page["next_after"], page["finished"]
            if finished and not page["results"]:
                break
        assert finished, f"job {job_id}: the event stream never finishes"
    for worker in ("worker1", "worker2"):
        leftovers = [p.name for p in stack.jobs_dir(worker).iterdir() if p.is_dir()]
        assert leftovers == [], f"{worker}: private folders left: {leftovers}"
    needles = secrets_of(stack, cluster_id, private_key)
    assert len(needles) >= 3
    FIGURES.needles = max(FIGURES.needles, len(needles))
    assert scan_database(stack, needles) == []
    assert scan_files(stack, needles) == []


def finish_case(name: str) -> None:
    FIGURES.cases += 1
    FIGURES.done.append(name)
