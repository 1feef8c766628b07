"""Query-string filters of the list endpoints."""

from __future__ import annotations

import django_filters
from django import forms

from ..choices import ClusterStatus, JobKind, JobStatus, NodeRole, NodeStatus
from ..models import Cluster, Job, Node

__all__ = ["ClusterFilter", "JobFilter", "NodeFilter"]

MAX_ID = 2**63 - 1


class IdFilter(django_filters.Filter):
    """A primary key: a positive integer (anything else is a 400, a missing object an empty list)."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(*args, **kwargs)


class ClusterFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(max_length=63, help_text="Exact cluster name.")
    status = django_filters.ChoiceFilter(choices=ClusterStatus.choices)

    class Meta:
        model = Cluster
        fields = ("name", "status")


class NodeFilter(django_filters.FilterSet):
    role = django_filters.ChoiceFilter(choices=NodeRole.choices)
    status = django_filters.ChoiceFilter(choices=NodeStatus.choices)

    class Meta:
        model = Node
        fields = ("role", "status")


class JobFilter(django_filters.FilterSet):
    cluster = IdFilter(field_name="cluster_id", help_text="Cluster id.")
    kind = django_filters.ChoiceFilter(choices=JobKind.choices)
    status = django_filters.ChoiceFilter(choices=JobStatus.choices)

    class Meta:
        model = Job
        fields = ("cluster", "kind", "status")
