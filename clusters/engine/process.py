"""Which process runs a job, told apart from any later process that reuses its pid.

A pid alone names a process only while it lives: once it exits, the kernel may hand the same number to an
unrelated process. The engine therefore names a process by

- its *host*: the kernel's boot id and the pid namespace (two containers on one kernel, or one machine after a
  reboot, are different hosts even under the same host name);
- its pid;
- its start time in clock ticks since boot (``/proc/<pid>/stat``, field 22), which never changes for the life of
  a process and differs for any later process with the same pid.

:func:`process_identity` renders the three as ``<host>/<pid>/<start>``; it is stored on a running job
(``Job.worker_process``) and in the names of the job's private directories, so that a reaper on the same host
can tell for certain whether the process that wrote them still lives.

A job's worker process also keeps a *run marker* open (``job<id>.running`` in its jobs folder) for exactly as long
as it works on the job: a live pool process that has moved on (or ended the job abnormally) no longer holds it.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

import psutil

__all__ = [
    "RunMarker",
    "host_id",
    "process_holds_marker",
    "process_identity",
    "process_start_token",
    "same_host",
    "same_process",
]


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


@functools.cache
def _boot_id() -> str:
    boot = _read("/proc/sys/kernel/random/boot_id").replace("-", "")
    if not boot:
        # Not Linux: the boot time stands in for the boot id.
        boot = f"b{int(psutil.boot_time())}"
    return boot[:32]


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def host_id() -> str:
    """This process's host: boot id and pid namespace (pids mean the same thing for everything that shares it)."""
    return f"{_boot_id()}.{_pid_namespace()}"


def _to_base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if not number:
            return text


def process_start_token(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, base 36), or None when it does not exist or is a
    zombie."""
    raw = _read(f"/proc/{pid}/stat")
    if raw:
        fields = raw[raw.rfind(")") + 2 :].split()
        if len(fields) < 20 or fields[0] in ("Z", "X"):
            return None
        return _to_base36(int(fields[19]))
    try:  # not Linux
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return _to_base36(int(process.create_time() * 100))
    except psutil.Error:
        return None


def process_identity(pid: int | None = None) -> str:
    """``<host>/<pid>/<start>`` of process ``pid`` (default: this one); empty when it does not exist."""
    pid = os.getpid() if pid is None else pid
    token = process_start_token(pid)
    return f"{host_id()}/{pid}/{token}" if token else ""


def same_host(identity: str) -> bool:
    """Whether a process identity was taken on this host (so its pid can be looked up here)."""
    return bool(identity) and identity.split("/", 1)[0] == host_id()


def same_process(identity: str) -> bool:
    """Whether the process named by ``identity`` (taken on this host) is still alive: same pid, same start time."""
    try:
        _host, pid, _token = identity.split("/")
        return same_host(identity) and process_identity(int(pid)) == identity
    except ValueError:
        return False


def process_holds_marker(pid: int, job_id: int) -> bool | None:
    """Whether process ``pid`` has the run marker of job ``job_id`` open; None when its files cannot be read
    (another user's process): the caller must then assume it does."""
    name = RunMarker.file_name(job_id)
    try:
        return any(os.path.basename(item.path) == name for item in psutil.Process(pid).open_files())
    except psutil.AccessDenied:
        return None
    except psutil.Error:
        return False


class RunMarker:
    """The file a worker process keeps open while it works on a job (see the module docstring)."""

    def __init__(self, work_dir: Path, job_id: int) -> None:
        self.path = Path(work_dir) / self.file_name(job_id)
        self._fd: int | None = None

    @staticmethod
    def file_name(job_id: int) -> str:
        return f"job{job_id}.running"

    def __enter__(self) -> RunMarker:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            # A full or read-only jobs folder must not stop the job here (it fails where it needs the folder);
            # without a marker, a reaper on this host relies on the heartbeat alone.
            self._fd = None
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            try:
                self.path.unlink()
            except OSError:
                pass

    @property
    def held(self) -> bool:
        return self._fd is not None


def hostname() -> str:
    return socket.gethostname()[:255]
