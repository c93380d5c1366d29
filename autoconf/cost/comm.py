"""Collective and point-to-point times from the cluster's alpha-beta links.

A group is a list of devices. Inside one node a ring runs at the slowest intra-node link of the ring; across nodes the
algorithm is hierarchical (reduce-scatter inside each node, a ring across nodes in which each of the k local ranks
carries 1/k of the data over its own NIC, all-gather inside each node), as NCCL does on multi-NIC nodes. Achieved
bandwidth is the link bandwidth times the profile's `comm_intra` / `comm_inter` efficiency. Where the profile holds
measured collective times for the group's size and scope, those are interpolated instead.

gloo (the CPU backend) implements reduce-scatter as an all-reduce followed by a local chunk, so it costs an all-reduce.
"""

from __future__ import annotations

from autoconf.cost.interpolate import EXTRAPOLATE, interpolate
from autoconf.spec.cluster import ClusterProfile

OPS = ("all_reduce", "all_gather", "reduce_scatter")


def _ring_link(cluster: ClusterProfile, devices: list[int]) -> tuple[float, float]:
    """Worst latency and lowest bandwidth along the ring devices[0] -> devices[1] -> ... -> devices[0] (devices of
    one node)."""
    if cluster.intra_node_matrix is None:
        return cluster.intra_node.latency_s, cluster.intra_node.bandwidth_Bps
    latency, bandwidth = 0.0, float("inf")
    n = len(devices)
    for i in range(n):
        link = cluster.link(devices[i], devices[(i + 1) % n])
        latency = max(latency, link.latency_s)
        bandwidth = min(bandwidth, link.bandwidth_Bps)
    return latency, bandwidth


def _ring_time(op: str, nbytes: float, k: int, latency: float, bandwidth: float) -> float:
    """Ring algorithm on k members; `nbytes` is the full buffer (the all-reduce input, the all-gather output)."""
    if k <= 1 or nbytes <= 0:
        return 0.0
    steps = 2 * (k - 1) if op == "all_reduce" else (k - 1)
    return steps * latency + steps / k * nbytes / bandwidth


def _measured(cluster: ClusterProfile, op: str, scope: str, k: int, nbytes: float) -> float | None:
    """The profile's measured times of `op` on k ranks in `scope`, interpolated in bytes (extrapolated beyond them,
    clipped at zero); None with fewer than two measured sizes (the last entry of a size counts)."""
    by_size = {p["bytes"]: p["time_s"] for p in cluster.collectives.get(op, {}).get(scope, []) if p.get("ranks") == k}
    if len(by_size) < 2:
        return None
    return interpolate(list(by_size.items()), nbytes, EXTRAPOLATE)


def collective_time(cluster: ClusterProfile, op: str, nbytes: float, devices: list[int]) -> float:
    """Seconds for `op` over `devices` on a buffer of `nbytes` (all-reduce input / all-gather output size), plus the
    profile's `collective_sync_s`: the wait for every member to be scheduled when CPU ranks share cores."""
    assert op in OPS, op
    k = len(devices)
    if k <= 1 or nbytes <= 0:
        return 0.0
    return _collective_transfer(cluster, op, nbytes, devices) + cluster.overhead("collective_sync_s")


def _collective_transfer(cluster: ClusterProfile, op: str, nbytes: float, devices: list[int]) -> float:
    k = len(devices)
    if op == "reduce_scatter" and cluster.backend == "gloo":
        op = "all_reduce"
    nodes: dict[int, list[int]] = {}
    for d in devices:
        nodes.setdefault(cluster.node_of(d), []).append(d)
    scope = "intra" if len(nodes) == 1 else "inter"
    measured = _measured(cluster, op, scope, k, nbytes)
    if measured is not None:
        return measured
    if len(nodes) == 1:
        latency, bandwidth = _ring_link(cluster, devices)
        return _ring_time(op, nbytes, k, latency, bandwidth * cluster.eff("comm_intra"))
    # Hierarchical: the intra-node phases on each node run in parallel; the slowest node bounds them.
    local = max(len(group) for group in nodes.values())
    intra_time = 0.0
    if local > 1:
        intra_op = "all_gather" if op == "all_gather" else "reduce_scatter"
        for group in nodes.values():
            latency, bandwidth = _ring_link(cluster, group)
            t = _ring_time(intra_op, nbytes, len(group), latency, bandwidth * cluster.eff("comm_intra"))
            intra_time = max(intra_time, t * (2 if op == "all_reduce" else 1))
    node_ids = sorted(nodes)
    latency, bandwidth = 0.0, float("inf")
    if cluster.inter_node_matrix is None:
        latency, bandwidth = cluster.inter_node.latency_s, cluster.inter_node.bandwidth_Bps
        node_ids_ring = []
    else:
        node_ids_ring = node_ids
    for i, a in enumerate(node_ids_ring):
        b = node_ids[(i + 1) % len(node_ids)]
        lat, bw = cluster.inter(a, b)
        latency, bandwidth = max(latency, lat), min(bandwidth, bw)
    inter_time = _ring_time(op, nbytes / local, len(node_ids), latency, bandwidth * cluster.eff("comm_inter"))
    return intra_time + inter_time


def p2p_time(cluster: ClusterProfile, nbytes: float, pairs: list[tuple[int, int]]) -> float:
    """Seconds for concurrent transfers of `nbytes` over each (src, dst) pair: the slowest pair bounds it, plus the
    wait for the receiver under load: the profile's `p2p_sync_s` (one peer), or `collective_sync_s` (every member
    of a group) from profiles that do not state it."""
    transfer = _p2p_transfer(cluster, nbytes, pairs)
    if transfer <= 0:
        return 0.0
    sync = "p2p_sync_s" if "p2p_sync_s" in cluster.efficiency else "collective_sync_s"
    return transfer + cluster.overhead(sync)


def _p2p_transfer(cluster: ClusterProfile, nbytes: float, pairs: list[tuple[int, int]]) -> float:
    worst = 0.0
    if cluster.intra_node_matrix is None and cluster.inter_node_matrix is None:
        g = cluster.gpus_per_node
        crossing = [src // g != dst // g for src, dst in pairs if src != dst]
        if not crossing:
            return 0.0
        link = cluster.inter_node if any(crossing) else cluster.intra_node
        scope = "comm_inter" if any(crossing) else "comm_intra"
        return link.latency_s + nbytes / (link.bandwidth_Bps * cluster.eff(scope))
    for src, dst in pairs:
        if src == dst:
            continue
        link = cluster.link(src, dst)
        scope = "comm_intra" if cluster.node_of(src) == cluster.node_of(dst) else "comm_inter"
        worst = max(worst, link.latency_s + nbytes / (link.bandwidth_Bps * cluster.eff(scope)))
    return worst
