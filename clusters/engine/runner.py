"""One playbook run through ansible-runner.

Each run gets a private data directory (``mkdtemp``, mode 0700) under ``settings.JOBS_WORK_DIR``:

- ``inventory/hosts.json``: the stage's inventory (no secrets);
- ``env/extravars`` (0600): every extra variable, secrets included; ansible-playbook reads it with ``-e @file``,
  so nothing secret is on its command line;
- ``known_hosts``: the host keys SSH accepts (stored in the database, or pinned by the credential); they are
  checked with ``ssh-keyscan`` before the playbook starts (:mod:`clusters.services.hostkeys`);
- ``tmp/`` (Ansible's local temp files), ``artifacts/`` (ansible-runner's); SSH's control sockets go to a short
  folder of their own under ``/tmp`` (a socket path may not exceed 108 bytes), removed with the run.

The SSH private key goes through ansible-runner's ``ssh_key``: a FIFO read once by ``ssh-add`` into a per-run
``ssh-agent``; a passphrase-protected key is opened in the worker first (the agent holds it unlocked anyway), so no
passphrase prompt has to be answered. The directory, and any process still using it
(SSH control masters, the agent), is removed after every run, whatever its outcome.

The ansible-playbook process gets a minimal environment (no database URL, Django or encryption keys), and
ansible-runner is told not to write environment files, not to keep output files and not to print the output.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from ansible_runner.config.runner import RunnerConfig
from ansible_runner.runner import Runner
from django.conf import settings
from django.utils import timezone

from inventory.serialization import serialize_extravars, serialize_inventory

from ..choices import JobStatus
from ..models import Job
from ..services.hostkeys import HostTarget, host_keys_check, known_hosts_text, targets_of
from ..sshkeys import KeyError_, unlocked_private_key
from .events import FAILURE_EVENTS, EventWriter, QueuedEvent
from .heartbeat import drop_broken_connection as _drop_broken_connection
from .process import process_start_token
from .redaction import Redactor

__all__ = [
    "JobControl",
    "PlaybookRun",
    "PlaybookRunner",
    "RunOutcome",
    "SSHAccess",
    "private_dir_owner",
    "remove_private_dir",
]

logger = logging.getLogger(__name__)

# Private directories are named job<id>.<worker pid>.<random>; the pid tells whether the worker that made one is
# still alive (leftovers of a dead worker are removed by the next one to start on the host). Names stay short:
# SSH control sockets live inside, and a unix socket path is limited to 107 bytes.
_PRIVATE_DIR_RE = re.compile(r"^job(?P<job>\d+)\.(?P<pid>\d+)\.")
# Environment variables the ansible-playbook process inherits from the worker; everything else (database URL,
# Django and encryption keys, broker URL) stays out of its environment and of ansible-runner's artifacts.
_ENV_KEEP = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TERM",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "AWX_ISOLATED_DATA_DIR",
        "ORIGINAL_STDOUT_CALLBACK",
        "MAX_EVENT_RES",
    }
)
_ENV_KEEP_PREFIXES = ("LC_", "ANSIBLE_", "RUNNER_")
_MAX_ERROR_CHARS = 2000
# SSH liveness. A host whose link goes down mid-task sends nothing, not even a reset: without keepalives the SSH
# connection (and the control master every task of the host shares) waits for TCP to give up, a quarter of an hour,
# and the stage with it. sshd answers keepalives whatever the remote task is doing, so a long silent task is not
# affected; a host that answers none for INTERVAL * COUNT seconds is reported unreachable.
SSH_CONNECT_TIMEOUT_SECONDS = 30
SSH_SERVER_ALIVE_INTERVAL_SECONDS = 15
SSH_SERVER_ALIVE_COUNT_MAX = 4


@dataclass(frozen=True)
class SSHAccess:
    """How the run logs in to the hosts."""

    private_key: str = ""
    passphrase: str = ""
    # known_hosts lines pinned by the credential; when empty, the keys stored per host (accepted on first contact).
    known_hosts: str = ""


@dataclass
class PlaybookRun:
    """What to run: one playbook of one stage, its inventory and extra variables (secrets allowed)."""

    stage: str
    playbook: str
    inventory: Mapping[str, Any]
    extravars: Mapping[str, Any]
    # Seconds the run may take (what is left of the job's timeout); None or 0: unlimited.
    timeout: float | None = None
    # The job's whole timeout, for the explanation when it expires (default: ``timeout``).
    job_timeout: float | None = None
    # Seconds without any output before the run is stopped; None or 0: unlimited.
    idle_timeout: float | None = None
    # The playbook writes a kubeconfig to the controller path given as ``rke2_kubeconfig_dest``.
    fetch_kubeconfig: bool = False


@dataclass
class RunOutcome:
    """What a run did. ``status``: successful, failed, canceled, timeout or error."""

    status: str
    rc: int | None = None
    explanation: str = ""
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    artifact_data: dict[str, Any] = field(default_factory=dict)
    # First failure message per host (unreachable included), secrets masked.
    host_errors: dict[str, str] = field(default_factory=dict)
    kubeconfig: str | None = None
    duration: float = 0.0
    events: int = 0

    @property
    def succeeded(self) -> bool:
        return self.status == "successful"

    def host_failed(self, host: str) -> bool:
        return bool(self.stats.get("failures", {}).get(host) or self.stats.get("dark", {}).get(host)) or (
            host in self.host_errors
        )


class JobControl:
    """ansible-runner's ``cancel_callback`` for one job, called about every ``pexpect_timeout`` seconds.

    Looks at the job's row at most every ``poll_seconds`` (one indexed primary-key read), bumps the heartbeat
    every ``heartbeat_seconds``, and records the process group of the playbook run so that a reaper can stop it
    if this worker dies. Asks ansible-runner to stop when a cancel was requested, or when the job is no longer
    running (a reaper gave it up). Never raises: a database hiccup must not abort a playbook.
    """

    def __init__(self, job_id: int, *, poll_seconds: float = 1.0, heartbeat_seconds: float = 10.0) -> None:
        self.job_id = job_id
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.cancel_requested = False
        self.lost = False
        self.ansible_pid: int | None = None
        self.writer: EventWriter | None = None
        self._last_poll = 0.0
        self._last_heartbeat = 0.0
        self._children_before: set[int] = set()

    def __call__(self) -> bool:
        try:
            self.tick()
        except Exception:
            logger.warning("job %s: checking for a cancel request failed", self.job_id, exc_info=True)
            _drop_broken_connection()
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.cancel_requested or self.lost

    def begin_run(self) -> None:
        self.ansible_pid = None
        try:
            self._children_before = {child.pid for child in psutil.Process().children()}
        except psutil.Error:
            self._children_before = set()

    def tick(self) -> None:
        now = time.monotonic()
        if self.ansible_pid is None:
            self._find_ansible_process()
        if now - self._last_poll >= self.poll_seconds:
            self._last_poll = now
            row = Job.objects.filter(pk=self.job_id).values_list("status", "cancel_requested").first()
            if row is None or row[0] != JobStatus.RUNNING:
                self.lost = True
            elif row[1]:
                self.cancel_requested = True
        if now - self._last_heartbeat >= self.heartbeat_seconds:
            self.heartbeat()

    def heartbeat(self) -> None:
        """Record that the job is alive (and how many events it emitted so far)."""
        self._last_heartbeat = time.monotonic()
        fields: dict[str, Any] = {"heartbeat_at": timezone.now()}
        if self.writer is not None:
            fields["emitted_events"] = self.writer.emitted
        if not Job.objects.filter(pk=self.job_id, status=JobStatus.RUNNING).update(**fields):
            self.lost = True

    def _find_ansible_process(self) -> None:
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        for child in children:
            if child.pid not in self._children_before:
                # ansible-runner starts the playbook (or the ssh-agent wrapping it) in a new session, so its pid is
                # also its process group id.
                self.ansible_pid = child.pid
                Job.objects.filter(pk=self.job_id).update(ansible_pid=child.pid)
                return


class PlaybookRunner:
    """Runs playbooks for one job, one at a time, numbering their events in one sequence across the job."""

    def __init__(
        self,
        *,
        job_id: int,
        writer: EventWriter,
        control: JobControl,
        redactor: Redactor,
        ssh: SSHAccess,
        project_dir: Path | str | None = None,
        work_dir: Path | str | None = None,
    ) -> None:
        self.job_id = job_id
        self.writer = writer
        self.control = control
        self.redactor = redactor
        self.ssh = ssh
        self.project_dir = Path(project_dir or settings.ANSIBLE_DIR)
        self.work_dir = Path(work_dir or settings.JOBS_WORK_DIR)
        self.last_counter = 0
        control.writer = writer

    # Events that are not Ansible's: stage banners and engine messages, numbered in the same sequence.
    def emit_message(
        self, stage: str, text: str, *, event: str = "portal_message", data: Mapping[str, Any] | None = None
    ) -> None:
        self.last_counter += 1
        self.writer.put(
            QueuedEvent(
                counter=self.last_counter,
                stage=stage,
                data={
                    "event": event,
                    "stdout": text,
                    "start_line": 0,
                    "end_line": text.count("\n") + 1,
                    "created": timezone.now().isoformat(),
                    "event_data": dict(data or {}),
                },
            )
        )

    def run(self, spec: PlaybookRun) -> RunOutcome:
        started = time.monotonic()
        private_dir = make_private_dir(self.work_dir, self.job_id)
        # ssh's control sockets live in a short folder of their own: a socket path may not exceed 108 bytes, which
        # a private folder under a long jobs folder (plus ssh's temporary suffix) easily does.
        control_dir = Path(tempfile.mkdtemp(prefix="rke2cp-", dir="/tmp" if os.path.isdir("/tmp") else None))
        state = _RunState(offset=self.last_counter, stage=spec.stage, redactor=self.redactor)
        interrupted = True
        try:
            outcome = self._run_in(private_dir, spec, state, control_dir=control_dir)
            interrupted = False
        except Exception as exc:
            logger.exception("job %s: stage %s could not run", self.job_id, spec.stage)
            outcome = RunOutcome(
                status="error", explanation=f"The playbook could not run: {self.redactor.text(str(exc))}"
            )
        finally:
            self._stop_leftovers(private_dir, kill_playbook=interrupted, control_dir=control_dir)
            remove_private_dir(private_dir)
            shutil.rmtree(control_dir, ignore_errors=True)
        self.last_counter = max(self.last_counter, state.max_counter)
        # Everything the outcome carries from Ansible's output is stored (job result, node errors, explanation):
        # masked here, before anything is cut to length.
        outcome.explanation = self.redactor.text(outcome.explanation)
        outcome.stats = state.stats
        outcome.artifact_data = state.artifact_data
        outcome.host_errors = state.host_errors
        outcome.duration = time.monotonic() - started
        outcome.events = state.events
        return outcome

    def _private_key_text(self) -> str | None:
        """The key handed to the run's ssh-agent: opened first when it has a passphrase."""
        if not self.ssh.private_key.strip():
            return None
        if self.ssh.passphrase:
            unlocked = unlocked_private_key(self.ssh.private_key, self.ssh.passphrase)
            self.redactor.add([unlocked])
            return unlocked
        return _with_newline(self.ssh.private_key)

    def _run_in(self, private_dir: Path, spec: PlaybookRun, state: _RunState, *, control_dir: Path) -> RunOutcome:
        for sub in ("inventory", "env", "tmp"):
            (private_dir / sub).mkdir(mode=0o700)
        inventory_path = private_dir / "inventory" / "hosts.json"
        write_private_file(inventory_path, serialize_inventory(spec.inventory))
        extravars = dict(spec.extravars)
        kubeconfig_path = private_dir / "kubeconfig"
        if spec.fetch_kubeconfig:
            extravars["rke2_kubeconfig_dest"] = str(kubeconfig_path)
        write_private_file(private_dir / "env" / "extravars", serialize_extravars(extravars))
        known_hosts_path = private_dir / "known_hosts"
        targets = targets_of(spec.inventory)
        refused = self._check_host_keys(spec.stage, targets, state)
        if refused is not None:
            return refused
        write_private_file(known_hosts_path, known_hosts_text(targets, pinned=self.ssh.known_hosts))

        envvars = {
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
            "ANSIBLE_LOCAL_TEMP": str(private_dir / "tmp"),
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            # ssh's ConnectTimeout: how long a new connection (or the control master's) may take to be set up.
            "ANSIBLE_TIMEOUT": str(_setting("JOB_SSH_CONNECT_TIMEOUT_SECONDS", SSH_CONNECT_TIMEOUT_SECONDS)),
            "ANSIBLE_SSH_COMMON_ARGS": " ".join(
                [
                    *ssh_liveness_options(),
                    "-o",
                    shlex.quote(f"UserKnownHostsFile={known_hosts_path}"),
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    "GlobalKnownHostsFile=/dev/null",
                    "-o",
                    "UpdateHostKeys=no",
                ]
            ),
            "MAX_EVENT_RES": str(settings.JOB_EVENT_MAX_RESULT_CHARS),
        }
        passwords: dict[str, str] = {}
        try:
            private_key = self._private_key_text()
        except KeyError_ as exc:
            return RunOutcome(status="failed", explanation=f"The SSH credential cannot be used: {exc.message}")
        runner_settings: dict[str, Any] = {
            "pexpect_timeout": settings.JOB_PEXPECT_TIMEOUT_SECONDS,
            "pexpect_use_poll": True,
            "suppress_output_file": True,
            "suppress_ansible_output": True,
        }
        if spec.timeout:
            runner_settings["job_timeout"] = max(1.0, float(spec.timeout))
        if spec.idle_timeout:
            runner_settings["idle_timeout"] = max(1.0, float(spec.idle_timeout))
        # ansible-runner reads its settings from env/settings and ignores the ``settings`` argument without it.
        write_private_file(private_dir / "env" / "settings", json.dumps(runner_settings))

        config = RunnerConfig(
            private_data_dir=str(private_dir),
            project_dir=str(self.project_dir),
            playbook=spec.playbook,
            inventory=str(inventory_path),
            ident=f"{self.job_id}-{spec.stage}",
            envvars=envvars,
            passwords=passwords,
            settings=runner_settings,
            ssh_key=private_key,
            quiet=True,
            suppress_env_files=True,
            fact_cache_type="",
            rotate_artifacts=0,
        )
        config.prepare()
        config.env = _safe_env(config.env)
        config.env["PATH"] = path_with_ansible(config.env.get("PATH"))
        runner = Runner(
            config,
            event_handler=state.event_handler(self.writer),
            status_handler=_status_handler(self.job_id, spec.stage),
            cancel_callback=self.control,
        )
        self.control.begin_run()
        status, rc = runner.run()
        outcome = RunOutcome(status=str(status), rc=rc)
        if status == "canceled":
            outcome.explanation = (
                "Stopped: the job is no longer running."
                if self.control.lost and not self.control.cancel_requested
                else "Canceled on request."
            )
        elif status == "timeout":
            elapsed = time.monotonic() - state.started
            if spec.timeout and elapsed >= float(spec.timeout):
                outcome.explanation = (
                    f"Timed out: the job may run for {_seconds(spec.job_timeout or spec.timeout)} at most."
                )
            else:
                outcome.explanation = f"Timed out: no output for {_seconds(spec.idle_timeout or 0)}."
        elif status == "failed":
            outcome.explanation = _failure_summary(spec.playbook, rc, state.host_errors)
            try:
                full = shutil.disk_usage(private_dir).free < 1 << 20
            except OSError:
                full = False
            if full:
                outcome.explanation += f" No space left on device: the job folder {private_dir.parent} is full."
        if spec.fetch_kubeconfig and status == "successful":
            if kubeconfig_path.is_file():
                outcome.kubeconfig = kubeconfig_path.read_text(encoding="utf-8")
                kubeconfig_path.unlink()
            else:
                outcome.status = "failed"
                outcome.explanation = f"{spec.playbook} did not write the kubeconfig."
        return outcome

    def _check_host_keys(self, stage: str, targets: list[HostTarget], state: _RunState) -> RunOutcome | None:
        """Learn the keys of hosts met for the first time; refuse the run (before Ansible starts, so nothing is sent)
        when a host presents a key other than the one trusted."""
        report = host_keys_check(targets, job_id=self.job_id, pinned=self.ssh.known_hosts)
        for target, keys in report.accepted:
            self.emit_message(
                stage,
                f"HOST KEY [{target.name}] accepted on first contact ({target.address}, port {target.port}): "
                + ", ".join(map(str, keys)),
                data={"host": target.name, "fingerprints": [str(key) for key in keys]},
            )
        for change in report.changed:
            self.emit_message(
                stage,
                f"HOST KEY [{change.target.name}] {change.message}",
                event="portal_host_key_changed",
                data={
                    "host": change.target.name,
                    "trusted": [str(key) for key in change.trusted],
                    "presented": [str(key) for key in change.presented],
                },
            )
        # The messages above took counters: Ansible's events of this run are numbered after them.
        state.offset = state.max_counter = self.last_counter
        if not report.changed:
            return None
        state.host_errors.update({change.target.name: change.message for change in report.changed})
        return RunOutcome(status="failed", explanation=" ".join(change.message for change in report.changed))

    def _stop_leftovers(self, private_dir: Path, *, kill_playbook: bool, control_dir: Path | None = None) -> None:
        """Stop what the run may have left running: the playbook's process group (if the run was interrupted by
        an exception), SSH control masters and the ssh-agent (they refer to the private directory)."""
        pid = self.control.ansible_pid
        if kill_playbook and pid is not None:
            kill_process_group(pid)
        _release_fifo_writers(private_dir)
        needles = [str(private_dir)] + ([str(control_dir)] if control_dir is not None else [])
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmdline = proc.info.get("cmdline") or []
                if proc.pid != os.getpid() and any(needle in part for part in cmdline for needle in needles):
                    proc.kill()
            except psutil.Error:
                continue


class _RunState:
    """What the event handler gathers during one run (only plain assignments: it runs in ansible-runner's loop)."""

    def __init__(self, *, offset: int, stage: str, redactor: Redactor | None = None) -> None:
        self.offset = offset
        self.stage = stage
        self.redactor = redactor or Redactor(())
        self.max_counter = offset
        self.events = 0
        self.stats: dict[str, dict[str, int]] = {}
        self.artifact_data: dict[str, Any] = {}
        self.host_errors: dict[str, str] = {}
        # Task of each host's recorded failure (see _note_failure).
        self.error_tasks: dict[str, str] = {}
        self.started = time.monotonic()

    def event_handler(self, writer: EventWriter) -> Callable[[dict[str, Any]], bool]:
        def handle(event: dict[str, Any]) -> bool:
            try:
                counter = self.offset + int(event.get("counter") or 0)
                if counter > self.max_counter:
                    self.max_counter = counter
                self.events += 1
                name = event.get("event")
                if name == "playbook_on_stats":
                    self._take_stats(event.get("event_data") or {})
                elif name in FAILURE_EVENTS:
                    self._note_failure(event)
                writer.put(QueuedEvent(counter=counter, stage=self.stage, data=event))
            except Exception:  # noqa: BLE001 - never raise into ansible-runner
                pass
            # False: ansible-runner writes no per-event file.
            return False

        return handle

    def _take_stats(self, data: Mapping[str, Any]) -> None:
        for key in ("ok", "changed", "dark", "failures", "ignored", "rescued", "skipped", "processed"):
            value = data.get(key)
            if isinstance(value, dict):
                self.stats[key] = {self.redactor.text(str(host)): int(count or 0) for host, count in value.items()}
        # A host whose failure was rescued, and which then went on to the end, did not fail.
        ended_badly = {host for key in ("failures", "dark") for host, count in self.stats.get(key, {}).items() if count}
        rescued = {host for host, count in self.stats.get("rescued", {}).items() if count}
        for host in [host for host in self.host_errors if host in rescued and host not in ended_badly]:
            del self.host_errors[host]
        artifact = data.get("artifact_data")
        if isinstance(artifact, dict):
            # Facts reported with set_stats are stored with the job: masked like the events.
            self.artifact_data = dict(self.redactor.data(artifact))

    def _note_failure(self, event: Mapping[str, Any]) -> None:
        data = event.get("event_data") or {}
        if data.get("ignore_errors"):
            return
        host = self.redactor.text(str(data.get("host") or ""))
        # A host stops at its first failure unless a rescue block takes over; a failure of another task after it (the
        # rescue's own, which tells why) is the one that ended the host, and replaces it. Failed loop items and their
        # task share the task: the first, most precise, message stays.
        task_uuid = str(data.get("task_uuid") or "")
        if not host or (host in self.host_errors and self.error_tasks.get(host) == task_uuid):
            return
        self.error_tasks[host] = task_uuid
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        message = ""
        for key in ("msg", "stderr", "reason", "module_stderr", "stdout"):
            value = res.get(key)
            if value:
                message = value if isinstance(value, str) else str(value)
                break
        task = str(data.get("task") or "")
        prefix = "unreachable" if event.get("event") == "runner_on_unreachable" else "failed"
        text = f"{prefix} at task {task!r}: {message}" if task else f"{prefix}: {message}"
        # Masked before it is cut, so that no part of a secret survives at the cut.
        self.host_errors[host] = self.redactor.text(text.strip())[:_MAX_ERROR_CHARS]


def _status_handler(job_id: int, stage: str) -> Callable[..., None]:
    def handle(data: Mapping[str, Any], runner_config: Any = None) -> None:
        # ``data`` also carries the command line and the environment on "starting": never logged.
        logger.debug("job %s: stage %s is %s", job_id, stage, data.get("status"))

    return handle


def _failure_summary(playbook: str, rc: int | None, host_errors: Mapping[str, str]) -> str:
    if host_errors:
        hosts = ", ".join(sorted(host_errors))
        first = next(iter(host_errors.items()))
        return f"{playbook} failed on {hosts}. {first[0]}: {first[1]}"[:_MAX_ERROR_CHARS]
    return f"{playbook} failed (exit code {rc})."


def _setting(name: str, default: int) -> int:
    value = getattr(settings, name, None)
    return max(1, int(value)) if value else default


def ssh_liveness_options() -> list[str]:
    """ssh options that end a connection to a host that stopped answering (see SSH_SERVER_ALIVE_*), as argv."""
    interval = _setting("JOB_SSH_KEEPALIVE_SECONDS", SSH_SERVER_ALIVE_INTERVAL_SECONDS)
    count = _setting("JOB_SSH_KEEPALIVE_COUNT", SSH_SERVER_ALIVE_COUNT_MAX)
    return ["-o", f"ServerAliveInterval={interval}", "-o", f"ServerAliveCountMax={count}"]


def _seconds(value: float) -> str:
    value = int(value)
    if value >= 3600 and value % 60 == 0:
        return f"{value // 3600} h {value % 3600 // 60:02d} min" if value % 3600 else f"{value // 3600} h"
    if value >= 60 and value % 60 == 0:
        return f"{value // 60} min"
    return f"{value} s"


def _with_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def path_with_ansible(path: str | None) -> str:
    """``path`` (a PATH value), with the folder of this Python in front when ``ansible-playbook`` is not found on
    it: a worker started as ``.venv/bin/celery ...`` by a service manager has the virtualenv's Python but a system
    PATH."""
    path = path if path is not None else os.defpath
    if shutil.which("ansible-playbook", path=path):
        return path
    return os.pathsep.join([str(Path(sys.executable).parent), path])


def _safe_env(env: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key in _ENV_KEEP or key.startswith(_ENV_KEEP_PREFIXES)}


# Files and directories.


def make_private_dir(work_dir: Path, job_id: int) -> Path:
    """A fresh private data directory (0700) for one run of ``job_id``."""
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # job<id>.<pid>.<process start>.<random>: the start time tells this process from a later one with its pid.
    pid = os.getpid()
    return Path(tempfile.mkdtemp(prefix=f"job{job_id}.{pid}.{process_start_token(pid) or 0}.", dir=work_dir))


def write_private_file(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (0600) and write ``text``; never reuses an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def private_dir_owner(path: Path) -> tuple[int, int] | None:
    """(job id, worker pid) of a private directory, or None for a name the engine does not make."""
    match = _PRIVATE_DIR_RE.match(path.name)
    return (int(match["job"]), int(match["pid"])) if match else None


def remove_private_dir(path: Path) -> None:
    """Delete a private directory and everything in it; logs (never raises) when that fails."""
    _release_fifo_writers(path)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        logger.error("could not remove the private directory %s", path)


def _release_fifo_writers(private_dir: Path) -> None:
    """ansible-runner writes the SSH key into a FIFO from a thread that blocks until ssh-add reads it. When the
    playbook never started, read the FIFO here, so that the thread finishes and the key leaves memory."""
    artifacts = private_dir / "artifacts"
    if not artifacts.is_dir():
        return
    for root, _dirs, files in os.walk(artifacts):
        for name in files:
            path = os.path.join(root, name)
            try:
                if stat.S_ISFIFO(os.lstat(path).st_mode):
                    _drain_fifo(path)
            except OSError:
                continue


def _drain_fifo(path: str) -> None:
    def drain() -> None:
        try:
            with open(path, "rb") as handle:  # blocks until the writer opens its end
                while handle.read(65536):
                    pass
        except OSError:
            pass

    reader = threading.Thread(target=drain, name="fifo-drain", daemon=True)
    reader.start()
    reader.join(2.0)
    try:
        os.unlink(path)
    except OSError:
        pass


def kill_process_group(pid: int) -> bool:
    """SIGKILL the process group led by ``pid`` if it still exists. Returns whether a signal was sent."""
    try:
        if os.getpgid(pid) != pid:
            return False
        os.killpg(pid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError, OSError):
        return False
