"""Fixtures of the API tests: users in each default group with API tokens, a credential, clusters and jobs.

Data is created through the services, as the product does; only state that a worker would write (an installed
cluster, a job's events) is written directly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone
from rest_framework.test import APIClient

from clusters.choices import ClusterStatus, InstallationStage, JobKind, JobStatus, NodeStatus
from clusters.fields import reveal
from clusters.models import Cluster, Job, JobEvent, JobHostSummary
from clusters.services.clusters import cluster_create
from clusters.services.credentials import credential_create
from clusters.services.tokens import api_token_create

KEY_PASSPHRASE = "correct horse battery staple"
KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: TESTCADATA0123456789abcdef
    server: https://10.0.0.10:6443
  name: default
users:
- name: default
  user:
    client-key-data: TESTCLIENTKEYDATA9876543210zyxw
"""


def make_private_key(passphrase: str = "") -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption).decode()


@pytest.fixture(scope="session")
def private_key() -> str:
    return make_private_key()


@pytest.fixture(scope="session")
def encrypted_private_key() -> str:
    return make_private_key(KEY_PASSPHRASE)


@pytest.fixture
def make_user(db: Any) -> Callable[..., Any]:
    def make(username: str, *groups: str, superuser: bool = False) -> Any:
        user = get_user_model().objects.create_user(username=username, password="pw-" + username)
        if superuser:
            user.is_superuser = True
            user.is_staff = True
            user.save()
        for name in groups:
            user.groups.add(Group.objects.get(name=name))
        return user

    return make


@pytest.fixture
def client_for() -> Callable[[Any], APIClient]:
    """An API client authenticating as ``user`` with a token (``None``: anonymous)."""

    def make(user: Any) -> APIClient:
        client = APIClient()
        if user is not None:
            _, plaintext = api_token_create(user=user, name="tests")
            client.credentials(HTTP_AUTHORIZATION=f"Token {plaintext}")
        return client

    return make


@pytest.fixture
def operator(make_user: Callable[..., Any]) -> Any:
    return make_user("olivia", "operators")


@pytest.fixture
def viewer(make_user: Callable[..., Any]) -> Any:
    return make_user("victor", "viewers")


@pytest.fixture
def downloader(make_user: Callable[..., Any]) -> Any:
    return make_user("kim", "viewers", "kubeconfig-downloaders")


@pytest.fixture
def api(client_for: Callable[[Any], APIClient], operator: Any) -> APIClient:
    """A client authenticated as an operator."""
    return client_for(operator)


@pytest.fixture
def credential(db: Any, private_key: str) -> Any:
    return credential_create(name="ops-key", username="deploy", private_key=private_key, become=True)


def node_specs(count: int, *, servers: int = 1, start: int = 1) -> list[dict[str, Any]]:
    specs = []
    for index in range(start, start + count):
        role = "server" if index - start < servers else "agent"
        specs.append({"hostname": f"node{index}", "internal_ip": f"10.0.0.{index}", "role": role})
    return specs


@pytest.fixture
def make_cluster(db: Any, credential: Any) -> Callable[..., Cluster]:
    def make(name: str = "alpha", *, nodes: int = 3, servers: int = 1, **fields: Any) -> Cluster:
        fields.setdefault("rke2_version", "v1.31.4+rke2r1")
        fields.setdefault("ssh_credential", credential)
        return cluster_create(name=name, nodes=node_specs(nodes, servers=servers), **fields)

    return make


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster()


def mark_installed(cluster: Cluster, *, kubeconfig: str = KUBECONFIG) -> Cluster:
    """The state a successful install leaves behind (written by the job engine in production)."""
    now = timezone.now()
    cluster.cluster_nodes.update(status=NodeStatus.ACTIVE, installed_version=cluster.rke2_version)
    Cluster.objects.filter(pk=cluster.pk).update(
        status=ClusterStatus.ACTIVE,
        installation_stage=InstallationStage.COMPLETE,
        bootstrapped_at=now,
        kubeconfig=kubeconfig,
    )
    cluster.refresh_from_db()
    return cluster


@pytest.fixture
def installed_cluster(cluster: Cluster) -> Cluster:
    return mark_installed(cluster)


def make_job(
    cluster: Cluster, *, kind: str = JobKind.INSTALL, status: str = JobStatus.SUCCESSFUL, **fields: Any
) -> Job:
    fields.setdefault("stages", ["initial_master", "joining_masters", "workers", "all"])
    return Job.objects.create(cluster=cluster, kind=kind, status=status, **fields)


def add_events(job: Job, count: int, *, start: int = 1, stage: str = "initial_master") -> list[JobEvent]:
    base = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
    events = [
        JobEvent(
            job=job,
            counter=counter,
            stage=stage,
            event="runner_on_ok",
            host_name=f"node{counter % 3 + 1}",
            task=f"task {counter}",
            stdout=f"\x1b[0;32mok: [node{counter % 3 + 1}] line {counter}\x1b[0m",
            changed=counter % 2 == 0,
            created=base + dt.timedelta(seconds=counter),
        )
        for counter in range(start, start + count)
    ]
    return JobEvent.objects.bulk_create(events)


@pytest.fixture
def finished_job(installed_cluster: Cluster) -> Job:
    job = make_job(installed_cluster, stage="all", stages_completed=4, emitted_events=5, explanation="")
    add_events(job, 5)
    JobHostSummary.objects.bulk_create(
        [
            JobHostSummary(job=job, host_name="node1", ok=5, changed=2),
            JobHostSummary(job=job, host_name="node2", ok=5, changed=0),
            JobHostSummary(job=job, host_name="node3", ok=1, failures=1),
        ]
    )
    return job


@pytest.fixture
def secrets_of(db: Any) -> Callable[..., list[str]]:
    """Every secret value stored for the given clusters and credentials (to search responses for)."""

    def collect(*objects: Any) -> list[str]:
        values = []
        for obj in objects:
            obj.refresh_from_db()
            if isinstance(obj, Cluster):
                values += [reveal(obj.token), reveal(obj.kubeconfig)]
            else:
                values += [reveal(obj.private_key), reveal(obj.passphrase)]
        found = []
        for value in values:
            value = value.strip()
            if not value:
                continue
            found.append(value)
            # A key or kubeconfig could leak one line at a time.
            found += [line.strip() for line in value.splitlines() if len(line.strip()) >= 16]
        return found

    return collect


def assert_no_secret(body: bytes | str, secrets: list[str]) -> None:
    text = body.decode() if isinstance(body, bytes) else body
    for secret in secrets:
        assert secret not in text, "a secret value appears in the response"
