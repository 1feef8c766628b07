"""Input and output of the day-2 actions of the API: labels and taints of a running node."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from .serializers import MAX_LIST_ITEMS, JobOutput, NodeOutput, StrictCharField

__all__ = ["NodeLabelsInput", "NodeLabelsOutput"]


@extend_schema_serializer(component_name="NodeLabels")
class NodeLabelsInput(serializers.Serializer):
    hostname = StrictCharField(max_length=253, help_text="The node whose labels and taints change.")
    labels = serializers.ListField(
        child=StrictCharField(max_length=400),
        required=False,
        max_length=MAX_LIST_ITEMS,
        help_text="The node's labels (key=value), all of them; absent: unchanged.",
    )
    taints = serializers.ListField(
        child=StrictCharField(max_length=400),
        required=False,
        max_length=MAX_LIST_ITEMS,
        help_text="The node's taints (key[=value]:Effect), all of them; absent: unchanged.",
    )


@extend_schema_serializer(component_name="NodeLabelsResult")
class NodeLabelsOutput(serializers.Serializer):
    node = NodeOutput()
    job = JobOutput(allow_null=True, help_text="The job applying the change on the running node; null when none.")
