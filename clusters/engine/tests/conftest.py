"""Fixtures of the job engine tests: a project of small local playbooks standing in for ``ansible/``.

The playbooks run every host with ``connection: local`` (no SSH), print what they were given, and behave as
``behaviour.json`` in the project says: sleep in a stage, fail on some hosts, report node readiness. They use
the same groups, variables and ``set_stats`` facts as the real playbooks, so the engine cannot tell them apart.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from clusters.services.jobs import job_request
from clusters.tests.factories import make_cluster, make_credential
from tests.worker import job_worker, worker_factory  # noqa: F401  (fixtures)

KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- cluster:
    server: https://10.0.0.11:6443
  name: default
users:
- name: default
  user:
    client-key-data: U0VDUkVUQ0xJRU5US0VZREFUQTEyMzQ1Njc4OTA=
"""

STAGE_HOSTS = {
    "preflight": "initial_master:joining_masters:workers",
    "reachability": "initial_master:joining_masters:workers",
    "initial_master": "initial_master",
    "joining_masters": "joining_masters",
    "workers": "workers",
    "all": "initial_master:joining_masters:workers",
    "upgrade": "initial_master:joining_masters:workers",
    "uninstall": "initial_master:joining_masters:workers",
    "scale_remove": "remove",
    "etcd_snapshot": "initial_master:joining_masters",
}
PLAYBOOK_FILES = {
    "preflight": "preflight.yml",
    "reachability": "reachability.yml",
    "initial_master": "initial_master.yml",
    "joining_masters": "joining_masters.yml",
    "workers": "workers.yml",
    "all": "all.yml",
    "upgrade": "upgrade.yml",
    "uninstall": "uninstall.yml",
    "scale_remove": "scale_remove.yml",
    "health": "health.yml",
    "fetch_kubeconfig": "kubeconfig.yml",
    "etcd_snapshot": "etcd_snapshot.yml",
}
REPORTS_VERSION = {"initial_master", "joining_masters", "workers", "all", "upgrade"}


def _play(stage: str, hosts: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": f"Stage {stage}",
        "hosts": hosts,
        "connection": "local",
        "gather_facts": False,
        "vars": {
            "stage": stage,
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            "behaviour": "{{ lookup('ansible.builtin.file', playbook_dir ~ '/behaviour.json') | from_json }}",
        },
        "tasks": tasks,
    }


def _stage_tasks(stage: str) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = [
        {
            "name": "Show what the host is given",
            "ansible.builtin.debug": {
                "msg": "{{ inventory_hostname }} ({{ rke2_role | default('') }}) version {{ rke2_version }}"
                " {{ ('token ' ~ (rke2_token | default('not given'))) if behaviour.echo_token else '' }}"
                " prepared before: {{ rke2_prepared_hosts | default([]) | join(',') or 'none' }}",
            },
        },
        {
            "name": "Take some time",
            "ansible.builtin.command": {"argv": ["sleep", "{{ behaviour.sleep[stage] | default(0) }}"]},
            "changed_when": False,
            "when": "(behaviour.sleep[stage] | default(0) | float) > 0",
        },
        {
            "name": "Emit events",
            "ansible.builtin.debug": {"msg": "event {{ item }}"},
            "loop": "{{ range(behaviour.events[stage] | default(0) | int) | list }}",
        },
        {
            "name": "Fail when told to",
            "ansible.builtin.fail": {"msg": "{{ stage }} failed on {{ inventory_hostname }} as told"},
            "when": "inventory_hostname in (behaviour.fail[stage] | default([]))",
        },
    ]
    if stage in REPORTS_VERSION:
        tasks.append(
            {
                "name": "Report the installed version",
                "ansible.builtin.set_stats": {
                    "data": {"rke2_installed_versions": "{{ {inventory_hostname: rke2_version} }}"}
                },
            }
        )
    return tasks


def _readiness_tasks(hosts_expr: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "Report node readiness",
            "ansible.builtin.set_stats": {
                "data": {
                    "rke2_node_ready": "{{ dict(" + hosts_expr + " | product([true])) | combine(behaviour.ready) }}",
                }
            },
        },
        {
            "name": "Fail when told to",
            "ansible.builtin.fail": {"msg": "{{ stage }} failed as told"},
            "when": "behaviour.fail[stage] | default([]) | length > 0",
        },
    ]


_WRITE_KUBECONFIG = {
    "name": "Write the kubeconfig",
    "ansible.builtin.copy": {
        "content": "{{ behaviour.kubeconfig }}",
        "dest": "{{ rke2_kubeconfig_dest }}",
        "mode": "0600",
    },
    "when": "rke2_kubeconfig_dest is defined",
    "no_log": True,
}


def fake_playbooks() -> dict[str, list[dict[str, Any]]]:
    books: dict[str, list[dict[str, Any]]] = {}
    for stage, hosts in STAGE_HOSTS.items():
        books[PLAYBOOK_FILES[stage]] = [_play(stage, hosts, _stage_tasks(stage))]
    stage_hosts = "(groups['initial_master'] + groups['joining_masters'] + groups['workers'])"
    books["all.yml"].append(_play("all", "api_host", [*_readiness_tasks(stage_hosts), _WRITE_KUBECONFIG]))
    books["health.yml"] = [
        _play("health", "api_host", _readiness_tasks("(groups['rke2_servers'] + groups['rke2_agents'])"))
    ]
    books["kubeconfig.yml"] = [_play("fetch_kubeconfig", "api_host", [_WRITE_KUBECONFIG])]
    books["scale_remove.yml"][0]["tasks"].append(
        {
            "name": "Report the removed nodes",
            "ansible.builtin.set_stats": {"data": {"rke2_removed_nodes": "{{ groups['remove'] }}"}},
            "run_once": True,
        }
    )
    return books


class FakeProject:
    """The fake ``ansible/`` folder of a test and its behaviour file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.behaviour: dict[str, Any] = {
            "fail": {},
            "sleep": {},
            "events": {},
            "ready": {},
            "echo_token": False,
            "kubeconfig": KUBECONFIG,
        }
        for name, plays in fake_playbooks().items():
            (path / name).write_text(yaml.safe_dump(plays, sort_keys=False))
        self.save()

    def set(self, **changes: Any) -> None:
        self.behaviour.update(changes)
        self.save()

    def save(self) -> None:
        (self.path / "behaviour.json").write_text(json.dumps(self.behaviour))


@pytest.fixture
def jobs_dir() -> Iterator[Path]:
    """A short work directory for private data dirs (SSH control sockets live inside: 107-byte path limit)."""
    path = Path(tempfile.mkdtemp(prefix="je-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_project(settings: Any, jobs_dir: Path, tmp_path: Path) -> FakeProject:
    project_dir = tmp_path / "ansible"
    project_dir.mkdir()
    settings.ANSIBLE_DIR = project_dir
    settings.JOBS_WORK_DIR = jobs_dir
    settings.JOB_CANCEL_POLL_SECONDS = 0.2
    settings.JOB_PEXPECT_TIMEOUT_SECONDS = 0.2
    settings.JOB_EVENT_FLUSH_SECONDS = 0.2
    settings.RKE2_INSTALL_METHOD = "script"
    # The fake playbooks never connect over SSH, and their hosts' addresses are not on any test network: nothing
    # may be sent to them, not even a host key scan.
    settings.SSH_HOST_KEY_TRUST_ON_FIRST_USE = False
    return FakeProject(project_dir)


def install_cluster_with(*, masters: int = 1, workers: int = 2, name: str = "alpha", **fields: Any) -> Any:
    credential = make_credential(f"{name}-key")
    return make_cluster(name, servers=masters, workers=workers, ssh_credential=credential, **fields)


def request(cluster: Any, kind: str, params: Mapping[str, Any] | None = None) -> Any:
    """A job requested through the service, as the API does. Its task message goes to the test broker, where no
    worker of this test consumes it: the tests run the job in-process with ``job_execute``."""
    return job_request(cluster=cluster, kind=kind, params=dict(params or {}))
