"""Test data built through the same services the portal uses, and real SSH keys generated on the fly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from django.utils import timezone

from clusters.choices import ClusterStatus, InstallationStage, NodeStatus
from clusters.models import Cluster, SSHCredential
from clusters.services.clusters import cluster_create

__all__ = ["DEFAULT_VERSION", "make_cluster", "make_credential", "mark_installed", "ssh_private_key"]

DEFAULT_VERSION = "v1.31.4+rke2r1"


def ssh_private_key(kind: str = "ed25519", *, passphrase: str = "", fmt: str = "openssh", bits: int = 2048) -> str:
    """A freshly generated private key as text: ``kind`` ed25519 or rsa; ``fmt`` openssh, pkcs8 or traditional
    (PEM); encrypted when ``passphrase`` is given."""
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else rsa.generate_private_key(65537, bits)
    private_format = {
        "openssh": serialization.PrivateFormat.OpenSSH,
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "traditional": serialization.PrivateFormat.TraditionalOpenSSL,
    }[fmt]
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, private_format, encryption).decode("ascii")


def make_credential(
    name: str = "ops", *, private_key: str | None = None, passphrase: str = "", **fields: Any
) -> SSHCredential:
    credential = SSHCredential(
        name=name,
        private_key=private_key if private_key is not None else ssh_private_key(),
        passphrase=passphrase,
        **fields,
    )
    credential.full_clean()
    credential.save()
    return credential


def make_cluster(
    name: str = "alpha",
    *,
    nodes: Sequence[Mapping[str, Any]] | None = None,
    servers: int = 1,
    workers: int = 0,
    subnet: str = "10.0.0",
    **fields: Any,
) -> Cluster:
    """A cluster created with :func:`cluster_create`; without ``nodes``, ``servers`` + ``workers`` nodes named
    ``<name>-s1``…, ``<name>-w1``… on ``<subnet>.11``…"""
    if nodes is None:
        nodes = [
            {"hostname": f"{name}-s{i}", "internal_ip": f"{subnet}.{10 + i}", "role": "server"}
            for i in range(1, servers + 1)
        ] + [
            {"hostname": f"{name}-w{i}", "internal_ip": f"{subnet}.{100 + i}", "role": "agent"}
            for i in range(1, workers + 1)
        ]
    fields.setdefault("rke2_version", DEFAULT_VERSION)
    return cluster_create(name=name, nodes=nodes, **fields)


def mark_installed(cluster: Cluster) -> Cluster:
    """Put a cluster in the state a successful install leaves it in: every live node active, bootstrapped."""
    cluster.cluster_nodes.filter(status=NodeStatus.PENDING).update(
        status=NodeStatus.ACTIVE, installed_version=cluster.rke2_version
    )
    Cluster.objects.filter(pk=cluster.pk).update(
        bootstrapped_at=timezone.now(), status=ClusterStatus.ACTIVE, installation_stage=InstallationStage.COMPLETE
    )
    cluster.refresh_from_db()
    return cluster
