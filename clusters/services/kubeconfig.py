"""Handing out a cluster's kubeconfig."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from ..exceptions import InvalidState
from ..fields import reveal
from ..models import Cluster
from .audit import audit_record

__all__ = ["KubeconfigUnavailable", "kubeconfig_download"]


class KubeconfigUnavailable(InvalidState):
    """The cluster has no kubeconfig stored yet."""

    code = "kubeconfig_unavailable"


@transaction.atomic
def kubeconfig_download(*, cluster: Cluster, actor: Any = None) -> str:
    """The cluster's kubeconfig (plain text), recorded in the audit trail as downloaded by ``actor``.

    Raises :class:`KubeconfigUnavailable` when none is stored: it is fetched at the end of an install, or by a
    fetch-kubeconfig job.
    """
    text = reveal(Cluster.objects.only("pk", "kubeconfig").get(pk=cluster.pk).kubeconfig)
    if not text.strip():
        raise KubeconfigUnavailable(
            "The cluster has no kubeconfig yet: it is fetched at the end of an install, or by a fetch-kubeconfig job."
        )
    audit_record(action="cluster.kubeconfig.download", actor=actor, cluster=cluster)
    return text
