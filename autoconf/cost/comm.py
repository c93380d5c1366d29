"""Collective and point-to-point times from the cluster's alpha-beta links.

A group is a list of devices. Inside one node a ring runs at the slowest intra-node link of the ring; across nodes the
algorithm is hierarchical (reduce-scatter inside each node, a ring across nodes in which each of the k local ranks
carries 1/k of the data over its own NIC, all-gather inside each node), as NCCL does on multi-NIC nodes. Achieved
bandwidth is the link bandwidth times the profile's `comm_intra` / `comm_inter` efficiency. Where the profile holds
measured collective times for the group's size and scope, those are interpolated instead.

gloo (the CPU backend) implements reduce-scatter as an all-reduce followed by a local chunk, so it costs an all-reduce.

An all-to-all (the MoE token exchange) sends 1/k of each member's buffer to every other member at once: the share
for members on the same node over the intra-node link, the share for other nodes over the member's own NIC
(`all_to_all_time`). A dispatch that sends a token once per node it reaches and forwards it inside the node
(`cost/moe.dispatch_shares`) moves other shares of the two parts (`shares`).
"""

from __future__ import annotations

import functools

import numpy as np

from autoconf.cost.interpolate import EXTRAPOLATE, interpolate
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.profile_checks import COLLECTIVE_OPS

OPS = COLLECTIVE_OPS  # the collectives a profile measures and the model costs (spec/profile_checks.py)


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


def ring_time(op: str, nbytes: float, k: int, latency: float, bandwidth: float) -> float:
    """Ring algorithm on k members whose slowest hop has `latency` and `bandwidth` (achieved): 2(k-1) steps for an
    all-reduce, k-1 otherwise, each paying the latency and moving 1/k of `nbytes`, the full buffer (the all-reduce
    input, the all-gather output). The placement solver weighs its rings with this rule too."""
    if k <= 1 or nbytes <= 0:
        return 0.0
    steps = 2 * (k - 1) if op == "all_reduce" else (k - 1)
    return steps * latency + steps / k * nbytes / bandwidth


def transfer_time(nbytes: float, latency: float, bandwidth: float) -> float:
    """One point-to-point transfer of `nbytes` over a link of `latency` and (achieved) `bandwidth`."""
    return latency + nbytes / bandwidth


def _measured(cluster: ClusterProfile, op: str, scope: str, k: int, nbytes: float) -> float | None:
    """The profile's measured times of `op` on k ranks in `scope`, interpolated in bytes (extrapolated beyond them,
    clipped at zero); None with fewer than two measured sizes (the last entry of a size counts)."""
    by_size = {p["bytes"]: p["time_s"] for p in cluster.collectives.get(op, {}).get(scope, []) if p.get("ranks") == k}
    if len(by_size) < 2:
        return None
    return interpolate(list(by_size.items()), nbytes, EXTRAPOLATE)


def collective_time(cluster: ClusterProfile, op: str, nbytes: float, devices,
                    shares: tuple[float, float] = (1.0, 1.0), synced: bool = False) -> float:
    """Seconds for `op` over `devices` (a sequence or an array of device ids) on a buffer of `nbytes` (all-reduce
    input / all-gather output size), plus the profile's `collective_sync_s` for a group of that size
    (`ClusterProfile.collective_sync`): the wait for every member to be scheduled when CPU ranks share cores and
    compute between collectives. `synced`: every member already waits for it with nothing to compute (the step's
    collectives after the pipeline's flush), so none is waited for; the profile's collective tables were timed so.
    `shares` (all_to_all only): the intra-node and cross-node bytes moved, as multiples of an all-to-all's
    (`all_to_all_time`)."""
    assert op in OPS, op
    k = len(devices)
    if k <= 1 or nbytes <= 0:
        return 0.0
    transfer = _collective_transfer(cluster, op, nbytes, _group_shape(cluster, devices), shares)
    return transfer + (0.0 if synced else cluster.collective_sync(k))


def slowest_collective_time(cluster: ClusterProfile, op: str, nbytes: float, groups, synced: bool = False) -> float:
    """The slowest of concurrent `op`s, one over each row of `groups` (an array of device ids, one group per row):
    `collective_time` of each group whose time can differ (see `distinct_groups`)."""
    return max(collective_time(cluster, op, nbytes, group, synced=synced)
               for group in distinct_groups(cluster, groups))


def distinct_groups(cluster: ClusterProfile, groups) -> list[np.ndarray]:
    """Rows of `groups` (one group of devices per row) that can differ in every collective's time: on a cluster
    without per-link matrices a group's time depends only on how its members fill nodes, so one group for each
    pattern of members per node; otherwise every group."""
    groups = np.asarray(groups, dtype=np.int64)
    groups = groups.reshape(len(groups), -1)
    if not _uniform(cluster) or len(groups) <= 1:
        return list(groups)
    nodes = np.sort(groups // cluster.devices_per_domain, axis=1)
    # Sorted node ids start a new run at each change: the runs are the members per node.
    _, first = np.unique(np.diff(nodes, axis=1) != 0, axis=0, return_index=True)
    return [groups[i] for i in sorted(first)]


def _uniform(cluster: ClusterProfile) -> bool:
    """Every intra-node link alike and every inter-node link alike."""
    return cluster.intra_node_matrix is None and cluster.inter_node_matrix is None


def _group_shape(cluster: ClusterProfile, devices) -> tuple[int, list, tuple[float, float], int]:
    """How a group spans the cluster: (members, [(members, ring latency, ring bandwidth) of each node's ring],
    (latency, bandwidth) of the ring across its nodes, number of nodes). Without an intra-node matrix every node's
    ring has the same link, so nodes with the same number of members are listed once."""
    if cluster.intra_node_matrix is None:
        flat = np.asarray(devices, dtype=np.int64).reshape(-1)
        link = _ring_link(cluster, [])
        if cluster.inter_node_matrix is None:
            fills, n_nodes = _node_fill(flat, cluster.devices_per_domain)
            node_ids = None
        else:
            fills, n_nodes = _counted_fill(flat, cluster.devices_per_domain)
            node_ids = np.unique(flat // cluster.devices_per_domain).tolist()
        rings = [(n, *link) for n in fills]
    else:
        nodes: dict[int, list[int]] = {}
        for d in np.asarray(devices, dtype=np.int64).reshape(-1).tolist():
            nodes.setdefault(cluster.domain_of(d), []).append(d)
        rings = [(len(group), *_ring_link(cluster, group)) for group in nodes.values()]
        node_ids = sorted(nodes)
        n_nodes = len(node_ids)
    if node_ids is None or n_nodes == 1:
        across = (cluster.inter_node.latency_s, cluster.inter_node.bandwidth_Bps)
    else:
        latency, bandwidth = 0.0, float("inf")
        for i, a in enumerate(node_ids):
            lat, bw = cluster.inter(a, node_ids[(i + 1) % len(node_ids)])
            latency, bandwidth = max(latency, lat), min(bandwidth, bw)
        across = (latency, bandwidth)
    return len(devices), rings, across, n_nodes


def _node_fill(devices: np.ndarray, gpus_per_node: int) -> tuple[tuple[int, ...], int]:
    """(the distinct numbers of members per node, ascending; how many nodes) of a group of devices. A group in
    arithmetic progression (every group of the default rank grid) is read from (first device's place in its node,
    step, size) and remembered, so the same group shape on every estimate of a search costs one look-up."""
    if len(devices) >= 2:
        step = int(devices[1] - devices[0])
        if step > 0 and (len(devices) == 2 or bool((np.diff(devices) == step).all())):
            return _progression_fill(int(devices[0]) % gpus_per_node, step, len(devices), gpus_per_node)
    return _counted_fill(devices, gpus_per_node)


@functools.lru_cache(maxsize=4096)
def _progression_fill(offset: int, step: int, size: int, gpus_per_node: int) -> tuple[tuple[int, ...], int]:
    return _counted_fill(offset + step * np.arange(size, dtype=np.int64), gpus_per_node)


def _counted_fill(devices: np.ndarray, gpus_per_node: int) -> tuple[tuple[int, ...], int]:
    ids = devices // gpus_per_node
    counts = np.bincount(ids - ids.min())
    counts = counts[counts > 0]
    return tuple(int(n) for n in np.unique(counts)), len(counts)


def _collective_transfer(cluster: ClusterProfile, op: str, nbytes: float, shape,
                         shares: tuple[float, float] = (1.0, 1.0)) -> float:
    k, rings, across, n_nodes = shape
    if op == "reduce_scatter" and cluster.backend == "gloo":
        op = "all_reduce"
    scope = "intra" if n_nodes == 1 else "inter"
    # a measured all-to-all is NCCL's: it does not describe other shares
    measured = _measured(cluster, op, scope, k, nbytes) if shares == (1.0, 1.0) or n_nodes == 1 else None
    if measured is not None:
        return measured
    if op == "all_to_all":
        return all_to_all_time(cluster, nbytes, k, rings, across, n_nodes, shares)
    if n_nodes == 1:
        _, latency, bandwidth = rings[0]
        return ring_time(op, nbytes, k, latency, bandwidth * cluster.eff("comm_intra"))
    # Hierarchical: the intra-node phases on each node run in parallel; the slowest node bounds them.
    local = max(members for members, _, _ in rings)
    intra_time = 0.0
    if local > 1:
        intra_op = "all_gather" if op == "all_gather" else "reduce_scatter"
        for members, latency, bandwidth in rings:
            t = ring_time(intra_op, nbytes, members, latency, bandwidth * cluster.eff("comm_intra"))
            intra_time = max(intra_time, t * (2 if op == "all_reduce" else 1))
    latency, bandwidth = across
    inter_time = ring_time(op, nbytes / local, n_nodes, latency, bandwidth * cluster.eff("comm_inter"))
    return intra_time + inter_time


def all_to_all_time(cluster: ClusterProfile, nbytes: float, k: int, rings: list, across: tuple[float, float],
                    n_nodes: int, shares: tuple[float, float] = (1.0, 1.0)) -> float:
    """An all-to-all of `nbytes` per member (its whole send buffer, its own share included) over k members, spread
    over `n_nodes` nodes (`_group_shape`'s rings and cross-node link): each member sends (members on its node - 1)/k
    of its buffer over the slowest intra-node link and (k - members on its node)/k over its NIC (each times its
    entry of `shares`), all at once; the two parts are added (they share the member's copy engines), each paying its
    link's latency once."""
    local = max(members for members, _, _ in rings)
    seconds = 0.0
    if local > 1:
        seconds = max(transfer_time(nbytes * (members - 1) / k * shares[0], latency,
                                    bandwidth * cluster.eff("comm_intra"))
                      for members, latency, bandwidth in rings if members > 1)
    if n_nodes > 1:
        latency, bandwidth = across
        seconds += transfer_time(nbytes * (k - local) / k * shares[1], latency, bandwidth * cluster.eff("comm_inter"))
    return seconds


def p2p_time(cluster: ClusterProfile, nbytes: float, pairs) -> float:
    """Seconds for concurrent transfers of `nbytes` over each (src, dst) pair (a sequence of pairs or an array of
    shape (n, 2)): the slowest pair bounds it, plus the wait for the receiver under load: the profile's
    `p2p_sync_s` (one peer), or `collective_sync_s` (every member of a group) from profiles that do not state it."""
    transfer = _p2p_transfer(cluster, nbytes, np.asarray(pairs, dtype=np.int64).reshape(-1, 2))
    if transfer <= 0:
        return 0.0
    sync = "p2p_sync_s" if "p2p_sync_s" in cluster.efficiency else "collective_sync_s"
    return transfer + cluster.overhead(sync)


def distinct_pair_sets(cluster: ClusterProfile, pair_sets) -> np.ndarray:
    """Alternative sets of concurrent (src, dst) pairs (`pair_sets`: an array of shape (sets, n, 2)) that can differ
    in `p2p_time`: on a cluster without per-link matrices a set's time depends only on whether any pair moves data
    and whether any crosses a node boundary, so one set of each kind; otherwise every set."""
    sets = np.asarray(pair_sets, dtype=np.int64)
    sets = sets.reshape(len(sets), -1, 2)
    if not _uniform(cluster) or len(sets) <= 1:
        return sets
    g = cluster.devices_per_domain
    src, dst = sets[..., 0], sets[..., 1]
    moves = src != dst
    signature = np.stack([moves.any(axis=1), (moves & (src // g != dst // g)).any(axis=1)], axis=1)
    _, first = np.unique(signature, axis=0, return_index=True)
    return sets[np.sort(first)]


def _p2p_transfer(cluster: ClusterProfile, nbytes: float, pairs: np.ndarray) -> float:
    worst = 0.0
    if _uniform(cluster):
        g = cluster.devices_per_domain
        src, dst = pairs[:, 0], pairs[:, 1]
        if not (src != dst).any():
            return 0.0
        crossing = bool((src // g != dst // g).any())  # a pair that stays on its device stays in its node
        link = cluster.inter_node if crossing else cluster.intra_node
        scope = "comm_inter" if crossing else "comm_intra"
        return transfer_time(nbytes, link.latency_s, link.bandwidth_Bps * cluster.eff(scope))
    for src, dst in pairs.tolist():
        if src == dst:
            continue
        link = cluster.link(src, dst)
        scope = "comm_intra" if cluster.domain_of(src) == cluster.domain_of(dst) else "comm_inter"
        worst = max(worst, transfer_time(nbytes, link.latency_s, link.bandwidth_Bps * cluster.eff(scope)))
    return worst
