"""Inventory rendering time for 10 to 5,000 nodes, against a bare ``yaml.safe_dump`` of the same inventory.

Measured: rendering the ``all`` stage inventory of a cluster (reading its nodes, building the mapping) and
serializing it to the text the job engine writes. Baseline: ``yaml.safe_dump`` of that final mapping, in the same
run. Both are CPU time of this process (SQLite runs in-process), best of several runs, so that other load on the
machine does not skew them. Targets: ratio <= 3 at 1,000 nodes, and linear growth (time per node at 5,000 within
1.5x of that at 1,000).
"""

from __future__ import annotations

import time

from . import best_time, setup_django

SIZES = (10, 100, 1000, 5000)
MAX_RATIO_AT_1000 = 3.0
MAX_PER_NODE_GROWTH = 1.5
RENDER_ROUNDS = 11
BASELINE_ROUNDS = 3


def build_cluster(size: int):  # type: ignore[no-untyped-def]
    """A cluster of ``size`` nodes (3 masters, the rest workers) with labels, taints and extra config."""
    from clusters.models import Cluster, Node, SSHCredential

    credential, _ = SSHCredential.objects.get_or_create(
        name="bench", defaults={"username": "deploy", "private_key": "unused"}
    )
    cluster = Cluster.objects.create(
        name=f"bench-{size}",
        rke2_version="v1.31.4+rke2r1",
        ssh_credential=credential,
        tls_san=["api.example.com"],
        cluster_vars={"kubelet-arg": ["max-pods=110"], "write-kubeconfig-mode": "0600"},
    )
    Node.objects.bulk_create(
        (
            Node(
                cluster=cluster,
                hostname=f"node-{index:05d}.example.com",
                internal_ip=f"10.{index // 65536}.{index // 256 % 256}.{index % 256}",
                role="initial_master" if index == 0 else "master" if index < 3 else "worker",
                status="active",
                labels=["topology.kubernetes.io/zone=zone-a", f"rack=r{index % 40}"],
                taints=["dedicated=cp:NoSchedule"] if index < 3 else [],
                node_vars={"node-name-prefix": "x"} if index % 10 == 0 else {},
            )
            for index in range(size)
        ),
        batch_size=500,
    )
    return Cluster.objects.get(pk=cluster.pk)


def main() -> bool:
    setup_django()
    import yaml

    from inventory.renderers import InventoryRenderer

    clusters = {size: build_cluster(size) for size in SIZES}
    finals = {size: InventoryRenderer.render_for_stage(cluster, "all").inventory for size, cluster in clusters.items()}

    # Rounds interleave the sizes, so that every size sees the same machine load; the best round counts.
    render_times = {size: float("inf") for size in SIZES}
    for _ in range(RENDER_ROUNDS):
        for size, cluster in clusters.items():
            elapsed = best_time(
                lambda cluster=cluster: InventoryRenderer.render_for_stage(cluster, "all").inventory_text(),
                repeat=1,
                clock=time.process_time,
            )
            render_times[size] = min(render_times[size], elapsed)
    baselines = {size: float("inf") for size in SIZES}
    for _ in range(BASELINE_ROUNDS):
        for size, final in finals.items():
            elapsed = best_time(lambda final=final: yaml.safe_dump(final), repeat=1, clock=time.process_time)
            baselines[size] = min(baselines[size], elapsed)

    print(f"{'nodes':>6} {'render ms':>10} {'us/node':>8} {'safe_dump ms':>13} {'ratio':>6}")
    for size in SIZES:
        render_time, baseline = render_times[size], baselines[size]
        print(
            f"{size:>6} {render_time * 1000:>10.2f} {render_time / size * 1e6:>8.1f} "
            f"{baseline * 1000:>13.2f} {render_time / baseline:>6.2f}"
        )
    ratio = render_times[1000] / baselines[1000]
    growth = (render_times[5000] / 5000) / (render_times[1000] / 1000)
    ok = ratio <= MAX_RATIO_AT_1000 and growth <= MAX_PER_NODE_GROWTH
    print(f"ratio at 1,000 nodes: {ratio:.2f} (target <= {MAX_RATIO_AT_1000})")
    print(f"time per node at 5,000 / at 1,000: {growth:.2f} (target <= {MAX_PER_NODE_GROWTH}, linear growth)")
    print("render targets met" if ok else "render targets MISSED")
    return ok
