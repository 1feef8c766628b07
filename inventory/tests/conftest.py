"""Fixtures for the rendering tests: clusters built through the domain services."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from clusters.models import Cluster, SSHCredential
from clusters.services.clusters import cluster_create


@pytest.fixture
def credential(db) -> SSHCredential:
    # Rendering never reads the key material, so a placeholder key is enough here.
    return SSHCredential.objects.create(name="deploy", username="deploy", port=2222, become=True, private_key="unused")


@pytest.fixture
def make_cluster(db, credential) -> Callable[..., Cluster]:
    counter = iter(range(1, 1000))

    def make(nodes: Sequence[dict[str, Any]] | None = None, **fields: Any) -> Cluster:
        index = next(counter)
        fields.setdefault("name", f"c{index}")
        fields.setdefault("rke2_version", "v1.31.4+rke2r1")
        fields.setdefault("ssh_credential", credential)
        if nodes is None:
            nodes = [
                {"hostname": "m1", "internal_ip": "10.0.0.1", "role": "initial_master"},
                {"hostname": "m2", "internal_ip": "10.0.0.2", "role": "master"},
                {"hostname": "m3", "internal_ip": "10.0.0.3", "role": "master"},
                {"hostname": "w1", "internal_ip": "10.0.1.1", "role": "worker"},
                {"hostname": "w2", "internal_ip": "10.0.1.2", "role": "worker"},
            ]
        # Fresh from the database, as the job engine and the views load it.
        return Cluster.objects.get(pk=cluster_create(nodes=nodes, **fields).pk)

    return make
