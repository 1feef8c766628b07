"""Lists cost a constant number of queries, whatever their length (pinned for 1 and for 20 objects).

Every request costs 4 queries before the view runs: the token (with its user), the user's other tokens (knox
deletes the expired ones) and the user's permissions (direct and through groups).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from clusters.choices import JobStatus
from clusters.models import Cluster, Job, Node
from clusters.services.credentials import credential_create

from .conftest import add_events, make_job, mark_installed

pytestmark = pytest.mark.django_db

AUTH = 4  # token + user, the user's tokens, user permissions, group permissions


@pytest.fixture
def client(client_for: Callable[[Any], Any], operator: Any) -> Any:
    return client_for(operator)


def fill_clusters(make_cluster: Callable[..., Cluster], count: int) -> list[Cluster]:
    clusters = [make_cluster(f"c{index:02d}", nodes=3) for index in range(count)]
    for cluster in clusters:
        mark_installed(cluster)
        make_job(cluster, status=JobStatus.RUNNING)
    return clusters


@pytest.mark.parametrize("count", [1, 20])
def test_cluster_list(client, make_cluster, django_assert_num_queries, count):
    fill_clusters(make_cluster, count)

    with django_assert_num_queries(AUTH + 2):  # count, page
        response = client.get("/api/clusters/", {"page_size": 50})

    assert len(response.json()["results"]) == count


@pytest.mark.parametrize("count", [1, 20])
def test_cluster_detail(client, make_cluster, django_assert_num_queries, count):
    cluster = make_cluster("big", nodes=count)

    with django_assert_num_queries(AUTH + 2):  # cluster, its nodes
        response = client.get(f"/api/clusters/{cluster.pk}/")

    assert len(response.json()["nodes"]) == count


@pytest.mark.parametrize("count", [1, 20])
def test_node_list(client, make_cluster, django_assert_num_queries, count):
    cluster = make_cluster("big", nodes=count)
    Node.objects.filter(cluster=cluster).update(last_job=make_job(cluster))

    with django_assert_num_queries(AUTH + 3):  # cluster, count, page
        response = client.get(f"/api/clusters/{cluster.pk}/nodes/", {"page_size": 50})

    assert len(response.json()["results"]) == count


@pytest.mark.parametrize("count", [1, 20])
def test_job_list(client, make_cluster, operator, django_assert_num_queries, count):
    clusters = [make_cluster(f"c{index:02d}", nodes=1) for index in range(min(count, 5))]
    for index in range(count):
        make_job(clusters[index % len(clusters)], requested_by=operator, resume_of=None)
    Job.objects.update(resume_of=Job.objects.first())

    with django_assert_num_queries(AUTH + 3):  # count, page, the page's clusters
        response = client.get("/api/jobs/", {"page_size": 50})

    assert len(response.json()["results"]) == count


@pytest.mark.parametrize("count", [1, 20])
def test_credential_list(client, private_key, make_cluster, django_assert_num_queries, count):
    for index in range(count):
        credential_create(name=f"key{index:02d}", private_key=private_key)
    make_cluster("user-of-key")

    with django_assert_num_queries(AUTH + 2):  # count, page
        response = client.get("/api/credentials/", {"page_size": 50})

    assert len(response.json()["results"]) == count + 1


@pytest.mark.parametrize("count", [1, 20])
def test_job_events(client, installed_cluster, django_assert_num_queries, count):
    job = make_job(installed_cluster, status=JobStatus.SUCCESSFUL, emitted_events=count)
    add_events(job, count)

    with django_assert_num_queries(AUTH + 4):  # job, events, host counts, stored-event count
        response = client.get(f"/api/jobs/{job.pk}/events/")

    assert len(response.json()["results"]) == count
