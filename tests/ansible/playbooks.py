"""Running the portal's playbooks against SSH test hosts, the way the job engine runs them.

Each run gets a private data directory (mode 0700) holding ``inventory/hosts.json`` (the rendered inventory),
``env/extravars`` (0600: job variables and secrets, read by ansible-playbook with ``-e @file``, never on its
command line) and a per-run SSH control socket directory. The SSH key goes through ansible-runner's ``ssh_key``
(an ssh-agent), never into a file. Directories are kept until :meth:`PlaybookRunner.cleanup` so that tests can
inspect the artifacts ansible-runner wrote.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import psutil

from inventory.renderers import RenderedInventory

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"

FAILED_EVENTS = ("runner_on_failed", "runner_on_unreachable")
RESULT_EVENTS = ("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped")


@dataclass
class PlaybookResult:
    """What one ansible-runner run produced."""

    playbook: str
    status: str
    rc: int
    events: list[dict[str, Any]]
    duration: float
    private_dir: Path
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    artifact_data: dict[str, Any] = field(default_factory=dict)

    def changed_count(self) -> int:
        return sum(self.stats.get("changed", {}).values())

    def changed_hosts(self) -> set[str]:
        return {host for host, count in self.stats.get("changed", {}).items() if count}

    def event_hosts(self) -> set[str]:
        """Hosts any task ran for (delegated tasks count for the host they were run for)."""
        return {event["event_data"]["host"] for event in self.events if event.get("event") in RESULT_EVENTS}

    def task_events(self, task: str, *kinds: str) -> list[dict[str, Any]]:
        """Events of the task named ``task`` (all kinds, or only ``kinds``), in emission order."""
        return [
            event
            for event in self.events
            if event.get("event_data", {}).get("task") == task and (not kinds or event.get("event") in kinds)
        ]

    def failures(self) -> list[str]:
        """One line per failed or unreachable host result: host, task and message."""
        lines = []
        for event in self.events:
            if event.get("event") in FAILED_EVENTS and not event["event_data"].get("ignore_errors"):
                data = event["event_data"]
                result = data.get("res", {})
                details = [result.get("msg") or "", *(result.get("stderr_lines") or [])[-3:]]
                lines.append(f"{data.get('host')}: {data.get('task')}: " + " | ".join(item for item in details if item))
        return lines

    def describe(self) -> str:
        return f"{self.playbook}: {self.status} (rc {self.rc}) in {self.duration:.1f}s; failures: {self.failures()}"


class PlaybookRunner:
    """Runs playbooks of ``ansible/`` through ``ansible_runner.run`` with private data directories."""

    def __init__(self, *, work_dir: Path, ssh_key: str, envvars: Mapping[str, str]) -> None:
        self.work_dir = work_dir
        self.ssh_key = ssh_key
        self.envvars = dict(envvars)
        self.results: list[PlaybookResult] = []

    def run(
        self,
        playbook: str,
        rendered: RenderedInventory,
        job_vars: Mapping[str, Any] | None = None,
        *,
        secret_overrides: Mapping[str, Any] | None = None,
    ) -> PlaybookResult:
        private_dir = Path(tempfile.mkdtemp(prefix=f"{Path(playbook).stem}-", dir=self.work_dir))
        private_dir.chmod(0o700)
        for sub in ("inventory", "env", "cp"):
            (private_dir / sub).mkdir(mode=0o700)
        inventory_path = private_dir / "inventory" / "hosts.json"
        _write_private(inventory_path, rendered.inventory_text())
        extravars = rendered.extravars_text(job_vars)
        if secret_overrides:
            extravars = RenderedInventory(
                rendered.inventory, {**rendered.secret_vars, **secret_overrides}
            ).extravars_text(job_vars)
        _write_private(private_dir / "env" / "extravars", extravars)
        envvars = {**self.envvars, "ANSIBLE_SSH_CONTROL_PATH_DIR": str(private_dir / "cp")}
        started = time.monotonic()
        runner = ansible_runner.run(
            private_data_dir=str(private_dir),
            project_dir=str(ANSIBLE_DIR),
            playbook=playbook,
            inventory=str(inventory_path),
            ident="run",
            envvars=envvars,
            ssh_key=self.ssh_key,
            quiet=True,
            suppress_env_files=True,
        )
        duration = time.monotonic() - started
        _stop_leftovers(private_dir)
        events = list(runner.events)
        stats_event = next((event for event in events if event.get("event") == "playbook_on_stats"), {})
        stats_data = stats_event.get("event_data", {})
        result = PlaybookResult(
            playbook=playbook,
            status=runner.status,
            rc=runner.rc,
            events=events,
            duration=duration,
            private_dir=private_dir,
            stats={
                key: stats_data.get(key) or {} for key in ("ok", "changed", "failures", "dark", "skipped", "rescued")
            },
            artifact_data=stats_data.get("artifact_data") or {},
        )
        self.results.append(result)
        return result

    def artifact_files(self) -> Iterable[Path]:
        """Every regular file ansible-runner left in the artifacts of the runs (the inputs under env/ excluded)."""
        for result in self.results:
            for path in sorted((result.private_dir / "artifacts").rglob("*")):
                if path.is_file() and not path.is_symlink():
                    yield path

    def cleanup(self) -> None:
        for result in self.results:
            shutil.rmtree(result.private_dir, ignore_errors=True)
        self.results.clear()


def _stop_leftovers(private_dir: Path) -> None:
    """Stop what a run leaves behind in its private directory: SSH ControlPersist masters and the ssh-agent."""
    marker = str(private_dir)
    leftovers = []
    for process in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in process.info["cmdline"] or ()):
            leftovers.append(process)
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(leftovers, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
