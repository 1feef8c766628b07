"""SSH host keys over real SSH, through a real worker: the keys a host presents to its first job are stored; a host
whose key changed (the test host is rebuilt with a new key) fails the next job with both fingerprints before Ansible
starts; once an operator clears the stored key through the API, the job passes and the new key is stored."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from rest_framework.test import APIClient

from clusters.choices import JobKind, JobStatus
from clusters.models import AuditLog, Cluster, HostKey, Job, JobEvent, Node
from clusters.services.clusters import cluster_create
from clusters.services.credentials import credential_create
from clusters.services.hostkeys import fingerprint
from clusters.services.jobs import job_request
from clusters.services.tokens import api_token_create
from tests.testhosts.fixtures import MakeHosts
from tests.testhosts.harness import Host, HostNetwork
from tests.worker import WorkerFactory

from .conftest import VERSION, wait_finished

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def host_fingerprint(host: Host) -> str:
    return fingerprint(host.host_public_key.split()[1])


def make_cluster(network: HostNetwork, host: Host, *, name: str, known_hosts: str = "") -> Cluster:
    credential = credential_create(
        name=f"{name}-root", username="root", private_key=network.private_key_text, known_hosts=known_hosts
    )
    return cluster_create(
        name=name,
        rke2_version=VERSION,
        ssh_credential=credential,
        nodes=[{"hostname": host.name, "internal_ip": host.ip, "role": "server"}],
    )


def preflight(cluster: Cluster) -> Job:
    return wait_finished(job_request(cluster=Cluster.objects.get(pk=cluster.pk), kind=JobKind.PREFLIGHT), timeout=300)


@pytest.fixture
def worker(worker_factory: WorkerFactory, work_dir: Path) -> Any:
    return worker_factory({"JOBS_WORK_DIR": str(work_dir), "JOB_HEARTBEAT_SECONDS": "1"}, concurrency=1)


def operators_group() -> Group:
    """The `operators` group as the migrations define it: a transactional test before this one may have flushed the
    database, which recreates permissions but not the groups that data migrations created."""
    codenames: set[str] = set()
    for module in ("0002_default_groups", "0004_host_key_permissions"):
        codenames |= set(import_module(f"clusters.migrations.{module}").GROUP_PERMISSIONS["operators"])
    group, _ = Group.objects.get_or_create(name="operators")
    group.permissions.add(*Permission.objects.filter(content_type__app_label="clusters", codename__in=codenames))
    return group


@pytest.fixture
def operator_api(transactional_db: None) -> APIClient:
    user = get_user_model().objects.create_user(username="olivia", password="pw-olivia")
    user.groups.add(operators_group())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=user, name='e2e')[1]}")
    return client


def test_a_changed_host_key_fails_the_job_until_an_operator_clears_it(
    host_network: HostNetwork, make_hosts: MakeHosts, worker: Any, operator_api: APIClient, work_dir: Path
) -> None:
    [host] = make_hosts(1)
    old_fingerprint = host_fingerprint(host)
    cluster = make_cluster(host_network, host, name="hostkeys")

    first = preflight(cluster)

    assert first.status == JobStatus.SUCCESSFUL, first.explanation
    stored = HostKey.objects.get(address=host.ip, port=22)
    assert stored.hostname == host.name and stored.cluster_id == cluster.pk and stored.accepted_by_job_id == first.pk
    assert ("ssh-ed25519", host.host_public_key.split()[1]) in stored.keys
    accepted = AuditLog.objects.get(action="host_key.accepted")
    assert f"ssh-ed25519 {old_fingerprint}" in accepted.detail["fingerprints"]
    assert JobEvent.objects.filter(job=first, stdout__contains=old_fingerprint).exists()

    # The host is rebuilt: same name and address, a new host key.
    host = host_network.recreate_host(host)
    new_fingerprint = host_fingerprint(host)
    assert new_fingerprint != old_fingerprint

    second = preflight(cluster)

    assert second.status == JobStatus.FAILED
    for text in (second.explanation, Node.objects.get(cluster=cluster).last_error):
        assert host.name in text and host.ip in text
        assert old_fingerprint in text and new_fingerprint in text
    # Refused before Ansible started: no playbook ran against the impostor.
    assert not JobEvent.objects.filter(job=second, event="playbook_on_start").exists()
    assert JobEvent.objects.filter(job=second, event="portal_host_key_changed").count() == 1
    assert HostKey.objects.get(pk=stored.pk).public_keys == stored.public_keys  # the stored key was kept
    assert list(work_dir.iterdir()) == []

    listed = operator_api.get("/api/host-keys/", {"cluster": cluster.pk}).json()["results"]
    assert [key["fingerprint"] for key in listed[0]["keys"] if key["type"] == "ssh-ed25519"] == [old_fingerprint]
    assert operator_api.delete(f"/api/host-keys/{stored.pk}/").status_code == 204
    assert AuditLog.objects.filter(action="host_key.cleared", actor__username="olivia").exists()

    third = preflight(cluster)

    assert third.status == JobStatus.SUCCESSFUL, third.explanation
    renewed = HostKey.objects.get(address=host.ip, port=22)
    assert ("ssh-ed25519", host.host_public_key.split()[1]) in renewed.keys
    assert renewed.accepted_by_job_id == third.pk


def test_keys_pinned_in_the_credential_are_enforced_with_both_fingerprints(
    host_network: HostNetwork, make_hosts: MakeHosts, worker: Any
) -> None:
    [host] = make_hosts(1)
    old_fingerprint = host_fingerprint(host)
    cluster = make_cluster(host_network, host, name="pinned", known_hosts=f"{host.known_hosts_line}\n")

    assert preflight(cluster).status == JobStatus.SUCCESSFUL
    assert not HostKey.objects.exists()  # pinned keys replace the ones learned on first contact

    host = host_network.recreate_host(host)
    job = preflight(cluster)

    assert job.status == JobStatus.FAILED
    assert old_fingerprint in job.explanation and host_fingerprint(host) in job.explanation
    assert not JobEvent.objects.filter(job=job, event="playbook_on_start").exists()
