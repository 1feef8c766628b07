"""A host that stops answering in the middle of a task (its link cut: no reply, no reset) ends the run as
unreachable, named, in bounded time: the SSH connection of the run, and its control master, send keepalives.

Real SSH to a namespace test host, through :class:`PlaybookRunner` as a job runs it.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from django.db import connection

from clusters.choices import JobKind, JobStatus
from clusters.engine.events import EventWriter
from clusters.engine.redaction import Redactor
from clusters.engine.runner import JobControl, PlaybookRun, PlaybookRunner, SSHAccess, ssh_liveness_options
from clusters.models import Job, JobEvent
from clusters.tests.factories import make_cluster, make_credential

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

KEEPALIVE_SECONDS = 1
KEEPALIVE_COUNT = 3


def test_ssh_liveness_options_follow_the_settings(settings):
    settings.JOB_SSH_KEEPALIVE_SECONDS = 7
    settings.JOB_SSH_KEEPALIVE_COUNT = 2
    assert ssh_liveness_options() == ["-o", "ServerAliveInterval=7", "-o", "ServerAliveCountMax=2"]
    settings.JOB_SSH_KEEPALIVE_SECONDS = 0  # unset or 0: the built-in default, never "no keepalive"
    assert ssh_liveness_options()[1] == "ServerAliveInterval=15"


def test_a_link_cut_mid_task_ends_the_run_as_unreachable_in_bounded_time(settings, tmp_path, make_hosts, host_network):
    # Short: SSH control sockets live in the job folders (a unix socket path is limited to 107 bytes).
    work_dir = Path(tempfile.mkdtemp(prefix="ju-"))
    settings.JOBS_WORK_DIR = work_dir
    settings.JOB_SSH_KEEPALIVE_SECONDS = KEEPALIVE_SECONDS
    settings.JOB_SSH_KEEPALIVE_COUNT = KEEPALIVE_COUNT
    (host,) = make_hosts(1)
    project = tmp_path / "project"
    project.mkdir()
    # First task: the connection (and its control master) is set up; second: a long silent task on the node.
    play = {
        "name": "A long task",
        "hosts": "all",
        "gather_facts": False,
        "tasks": [
            {"name": "Connect", "ansible.builtin.command": {"argv": ["true"]}, "changed_when": False},
            {"name": "Work silently", "ansible.builtin.command": {"argv": ["sleep", "120"]}, "changed_when": False},
        ],
    }
    (project / "long.yml").write_text(yaml.safe_dump([play], sort_keys=False))
    inventory = host_network.inventory([host])
    inventory["all"]["vars"].pop("ansible_ssh_private_key_file")

    cluster = make_cluster(servers=1, ssh_credential=make_credential())
    job = Job.objects.create(cluster=cluster, kind=JobKind.PREFLIGHT, status=JobStatus.RUNNING)
    redactor = Redactor([host_network.private_key_text])
    writer = EventWriter(job_id=job.pk, redactor=redactor, flush_seconds=0.1).start()
    runner = PlaybookRunner(
        job_id=job.pk,
        writer=writer,
        control=JobControl(job.pk, poll_seconds=0.5, heartbeat_seconds=1),
        redactor=redactor,
        ssh=SSHAccess(private_key=host_network.private_key_text, known_hosts=host_network.known_hosts_text),
        project_dir=project,
    )
    cut_at: list[float] = []

    def cut_when_the_long_task_runs() -> None:
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                if JobEvent.objects.filter(job_id=job.pk, event="runner_on_start", task="Work silently").exists():
                    time.sleep(1)  # the module runs on the node
                    host.cut_link()
                    cut_at.append(time.monotonic())
                    return
                time.sleep(0.2)
        finally:
            connection.close()

    cutter = threading.Thread(target=cut_when_the_long_task_runs)
    cutter.start()
    try:
        outcome = runner.run(PlaybookRun(stage="preflight", playbook="long.yml", inventory=inventory, extravars={}))
        ended_at = time.monotonic()
    finally:
        cutter.join(130)
        host.restore_link()
        writer.close()
        leftovers = list(work_dir.iterdir())
        shutil.rmtree(work_dir, ignore_errors=True)
    assert cut_at, f"the long task never started: {outcome.host_errors}"
    took = ended_at - cut_at[0]
    assert outcome.status == "failed", outcome
    assert outcome.host_failed(host.name)
    assert outcome.host_errors[host.name].startswith("unreachable at task 'Work silently'"), outcome.host_errors
    assert host.name in outcome.explanation
    # Keepalives every second, three unanswered: the run ends within seconds, not when TCP gives up (minutes).
    assert took < KEEPALIVE_SECONDS * KEEPALIVE_COUNT + 20, f"the run ended {took:.0f} s after the cut"
    assert leftovers == []
