"""Nothing a playbook prints or reports is stored unmasked: a failing stage whose message and facts carry the join
token leaves no trace of it in any table of the database."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clusters.choices import JobKind, JobStatus, NodeRole
from clusters.engine.redaction import MASK, Redactor
from clusters.engine.service import job_execute
from clusters.fields import reveal
from clusters.models import Job, JobEvent, Node
from clusters.tests.factories import mark_installed
from clusters.tests.secret_scan import scan_database

from .conftest import FakeProject, install_cluster_with, request

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TASK = "Refuse to join"
# Where the engine cuts a host's failure message.
MAX_ERROR_CHARS = 2000


def leaking_playbook(project: Path, stage: str, hosts: str, *, padding: int) -> None:
    """A stage that reports the token as facts (plain, nested, base64) and fails with it in its message, once in
    full and once across the length at which a host's message is cut."""
    play = {
        "name": f"Stage {stage}",
        "hosts": hosts,
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "tasks": [
            {"name": "Show the token", "ansible.builtin.debug": {"msg": "token {{ rke2_token }}"}},
            {
                "name": "Report what was used",
                "ansible.builtin.set_stats": {
                    "data": {
                        "used_token": "{{ rke2_token }}",
                        "details": {"join": ["server said: {{ rke2_token }} is wrong"]},
                        "encoded": "{{ rke2_token | b64encode }}",
                    }
                },
            },
            {
                "name": TASK,
                "ansible.builtin.fail": {
                    "msg": "join refused for {{ rke2_token }}; " + "x" * padding + "{{ rke2_token }} was sent",
                },
            },
        ],
    }
    (project / f"{stage}.yml").write_text(yaml.safe_dump([play], sort_keys=False))


def padding_for(token: str) -> int:
    # The stored message is "failed at task '<task>': <msg>": put the second token across the cut.
    prefix = len(f"failed at task {TASK!r}: ") + len(f"join refused for {token}; ")
    return MAX_ERROR_CHARS - 10 - prefix


def test_a_failing_stage_stores_no_secret_anywhere(fake_project: FakeProject) -> None:
    cluster = install_cluster_with(masters=1, workers=1, name="leaky")
    token = reveal(cluster.token)
    leaking_playbook(fake_project.path, "initial_master", "initial_master", padding=padding_for(token))
    job = request(cluster, JobKind.INSTALL)

    assert job_execute(job_id=job.pk) == JobStatus.FAILED

    job.refresh_from_db()
    master = Node.objects.get(cluster=cluster, role=NodeRole.INITIAL_MASTER)
    # The texts are there, masked.
    assert MASK in job.explanation and "join refused for" in job.explanation
    assert MASK in master.last_error and "join refused for" in master.last_error
    failed_hosts = next(stage for stage in job.result["stages"] if stage["stage"] == "initial_master")["failed_hosts"]
    assert MASK in failed_hosts[master.hostname]
    facts = job.result["facts"]
    assert facts["used_token"] == MASK
    assert facts["details"] == {"join": [f"server said: {MASK} is wrong"]}
    assert facts["encoded"].startswith(MASK)
    assert JobEvent.objects.filter(job=job, stdout__contains=f"token {MASK}").exists()

    report = scan_database([token])
    assert report.findings == [], report.findings
    assert report.rows > 0 and "clusters_job" in report.tables and "clusters_jobevent" in report.tables


def test_an_upgrade_failure_stores_no_secret_in_node_errors(fake_project: FakeProject) -> None:
    cluster = mark_installed(install_cluster_with(masters=1, workers=2, name="checked"))
    token = reveal(cluster.token)
    leaking_playbook(fake_project.path, "upgrade", "initial_master:joining_masters:workers", padding=padding_for(token))
    job = request(cluster, JobKind.UPGRADE, {"target_version": "v1.32.1+rke2r1", "snapshot": False})

    assert job_execute(job_id=job.pk) == JobStatus.FAILED

    errors = list(Node.objects.filter(cluster=cluster).values_list("last_error", flat=True))
    assert len(errors) == 3 and all(MASK in error for error in errors)
    assert MASK in Job.objects.get(pk=job.pk).explanation
    report = scan_database([token])
    assert report.findings == [], report.findings


def test_secrets_learnt_during_a_job_are_masked_from_then_on() -> None:
    # A kubeconfig fetched by a stage: its credentials are masked in whatever the job stores afterwards.
    redactor = Redactor(["a-cluster-token-0123456789"])
    key_data = "TmV3Q2xpZW50S2V5RGF0YTAxMjM0NTY3ODk="
    assert redactor.text(f"key {key_data}") == f"key {key_data}"
    redactor.add([key_data])
    assert redactor.text(f"key {key_data}") == f"key {MASK}"
    assert redactor.data({"facts": [key_data]}) == {"facts": [MASK]}
    assert redactor.text("token a-cluster-token-0123456789") == f"token {MASK}"
