from __future__ import annotations

import pytest
import yaml
from django.core.exceptions import ValidationError

from clusters.choices import NodeStatus
from clusters.fields import MASK, reveal
from clusters.models import Node
from clusters.services.previews import cluster_previews, node_config_preview
from inventory.renderers import STAGES, InventoryRenderer

pytestmark = pytest.mark.django_db


def test_cluster_previews_cover_every_stage_and_live_node(make_cluster):
    cluster = make_cluster()
    Node.objects.filter(cluster=cluster, hostname="w2").update(status=NodeStatus.DRAINING)
    preview = cluster_previews(cluster)
    assert list(preview.inventories) == list(STAGES)
    assert preview.stage_hosts == {
        "initial_master": ["m1"],
        "joining_masters": ["m2", "m3"],
        "workers": ["w1"],
        "all": ["m1", "m2", "m3", "w1"],
    }
    assert set(preview.configs) == {"m1", "m2", "m3", "w1"}
    token = reveal(cluster.token)
    for text in [*preview.inventories.values(), *preview.configs.values()]:
        assert token not in text
    assert yaml.safe_load(preview.configs["w1"])["token"] == MASK
    workers = yaml.safe_load(preview.inventories["workers"])
    assert workers == InventoryRenderer.render_for_stage(cluster, "workers").inventory


def test_cluster_previews_of_one_stage(make_cluster):
    preview = cluster_previews(make_cluster(), stage="joining_masters")
    assert list(preview.inventories) == ["joining_masters"]
    assert set(preview.configs) == {"m2", "m3"}
    assert "server: https://10.0.0.1:9345" in preview.configs["m2"]


def test_unknown_stage_names_the_field(make_cluster):
    with pytest.raises(ValidationError) as error:
        cluster_previews(make_cluster(), stage="complete")
    assert "stage" in error.value.message_dict


def test_node_config_preview(make_cluster):
    cluster = make_cluster()
    text = node_config_preview(cluster, "m1")
    assert reveal(cluster.token) not in text and "server" not in yaml.safe_load(text)
    with pytest.raises(ValidationError) as error:
        node_config_preview(cluster, "nope")
    assert "hostname" in error.value.message_dict


def test_previews_take_constant_queries(make_cluster, django_assert_num_queries):
    cluster = make_cluster(nodes=[{"hostname": "m1", "internal_ip": "10.0.0.1", "role": "initial_master"}])
    Node.objects.bulk_create(
        Node(cluster=cluster, hostname=f"n{index}", internal_ip=f"10.1.0.{index + 1}", role="worker")
        for index in range(200)
    )
    with django_assert_num_queries(3):  # nodes, credential, registries
        preview = cluster_previews(cluster)
    assert len(preview.configs) == 201
