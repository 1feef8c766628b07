"""Secrets of a job stay out of process arguments and environments, stored events, logs and leftover files."""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from clusters.choices import JobKind, JobStatus
from clusters.fields import reveal
from clusters.models import JobEvent
from clusters.tests.factories import make_cluster, make_credential, ssh_private_key

from .conftest import FakeProject, request
from .test_orchestrator import run_in_thread

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PASSPHRASE = "Tr0ub4dor&3-horse-staple"
WORKER_SECRETS = ("DJANGO_SECRET_KEY", "DATABASE_URL", "FIELD_ENCRYPTION_KEYS", "CELERY_BROKER_URL")


def secret_fragments(*values: str) -> list[str]:
    fragments = []
    for value in values:
        value = value.strip()
        fragments.append(value)
        fragments += [line.strip() for line in value.splitlines() if len(line.strip()) >= 16 and "-----" not in line]
    return fragments


def test_no_secret_in_arguments_environment_events_logs_or_files(
    fake_project: FakeProject, jobs_dir: Path, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    key = ssh_private_key(passphrase=PASSPHRASE)
    credential = make_credential("guarded", private_key=key, passphrase=PASSPHRASE)
    cluster = make_cluster("guarded", servers=1, workers=1, ssh_credential=credential)
    token = reveal(cluster.token)
    fake_project.set(sleep={"initial_master": 3}, echo_token=True)
    job = request(cluster, JobKind.INSTALL)

    thread, box = run_in_thread(job.pk)
    cmdlines: list[str] = []
    environments: list[dict[str, str]] = []
    modes: dict[str, int] = {}
    while thread.is_alive():
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(jobs_dir) in cmdline:
                cmdlines.append(cmdline)
                try:
                    environments.append(proc.environ())
                except psutil.Error:
                    pass
        try:
            for path in jobs_dir.rglob("*"):
                modes[str(path.relative_to(jobs_dir).as_posix().split("/", 1)[-1])] = stat.S_IMODE(path.lstat().st_mode)
        except FileNotFoundError:  # the run removed a folder while it was being listed
            pass
        time.sleep(0.05)
    thread.join()

    assert box["status"] == JobStatus.SUCCESSFUL  # ssh-add got the passphrase from the prompt answer
    assert any("ansible-playbook" in cmdline for cmdline in cmdlines)
    secrets = secret_fragments(token, key, PASSPHRASE)
    for cmdline in cmdlines:
        assert not any(secret in cmdline for secret in secrets), cmdline
    assert environments
    for environment in environments:
        assert not set(WORKER_SECRETS) & set(environment)
        assert not any(secret in value for value in environment.values() for secret in secrets)
    # While it ran: secret files readable by the owner only, inside a private directory.
    assert modes["env/extravars"] == 0o600 and modes["env/settings"] == 0o600
    assert modes["inventory/hosts.json"] == 0o600
    assert not any(name.endswith(("env/ssh_key", "env/passwords")) for name in modes)
    # Afterwards: nothing left on disk, no process (ssh-agent, SSH masters) still using the directory.
    assert list(jobs_dir.iterdir()) == []
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(jobs_dir) in " ".join(p.info["cmdline"] or [])]
    # Stored events and the worker's log never hold a secret.
    events = list(JobEvent.objects.filter(job=job).values_list("stdout", "event_data", "task"))
    assert any("token ********" in stdout for stdout, _data, _task in events)
    for stdout, data, task in events:
        assert not any(secret in stdout or secret in str(data) or secret in task for secret in secrets)
    assert not any(secret in caplog.text for secret in secrets)
