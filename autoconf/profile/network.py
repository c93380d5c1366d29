"""Network profiling: point-to-point alpha-beta links for every ordered pair of ranks, and collective times.

Point-to-point method. The ranks are paired by a round-robin tournament (`round_robin_pairs`): in each round every
rank is in at most one pair and all pairs of the round measure at the same time, so after n-1 rounds (n for odd n)
every two ranks have met exactly once, in O(n) rounds instead of O(n^2) sequential measurements, and concurrent
traffic through shared switches and memory is part of what is measured. Within a pair (a, b) each direction is
timed by a ping-pong from the sender: a sends n bytes, b receives them and answers with a one-element message; a
times the round trip. A tiny ping-pong (one element each way) is timed too, and the one-way time of n bytes is
taken as rtt(n) - rtt(tiny) / 2, i.e. the latency is assumed symmetric while the bandwidth is measured per
direction. Each (direction, size) is warmed up, repeated, and its 10th percentile kept (see QUANTILE for why not
the median). Then `fit_alpha_beta` fits t(n) = alpha + n / beta for each ordered pair: beta from the two largest
sizes (robust to a shaper's burst bucket), alpha from the smallest.

Collectives (all-reduce, all-gather, reduce-scatter) are timed for groups of k ranks inside a node and of k ranks on
k different nodes (one rank per node). Every node (for "intra") or every local rank index (for "inter") runs its own
group concurrently, as data-parallel traffic does in training. A collective's time is the slowest member's 10th percentile;
the recorded time is the median over the concurrent groups. `bytes` is the full buffer: the all-reduce tensor, the
all-gather output, the reduce-scatter input (the convention of nccl-tests).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from autoconf.errors import UserError
from autoconf.profile.timing import median, percentile, sync, time_once
from autoconf.spec.cluster import Link

KiB, MiB = 1024, 1024 * 1024
P2P_SIZES = [4 * KiB, 64 * KiB, 512 * KiB, 4 * MiB, 16 * MiB]
P2P_SIZES_QUICK = [4 * KiB, 256 * KiB, 4 * MiB]
COLLECTIVE_SIZES = [64 * KiB, 1 * MiB, 16 * MiB]
COLLECTIVE_SIZES_QUICK = [64 * KiB, 4 * MiB]
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter")
# The statistic kept of a repeated transfer: a low percentile rather than the median. Host-side delays only ever add
# time (a rank descheduled on an oversubscribed CPU host waits for the next scheduler tick, 4 ms on a 250 Hz kernel, and
# on a loaded 2-core machine that was the median of a 4 KiB ping-pong), so the 10th percentile estimates the
# link's own time; on a quiet GPU cluster it is within a few percent of the median.
QUANTILE = 10

Log = Callable[[str], None]


# ---- pure parts (tested without processes) --------------------------------------------------------------------------
def round_robin_pairs(n: int) -> list[list[tuple[int, int]]]:
    """The circle-method tournament on ranks 0..n-1: rounds of disjoint pairs (a < b), every two ranks meet once.

    Rank 0 stays put while the others rotate one place per round. With an odd n a phantom rank n is added and whoever
    meets it sits the round out (a bye), so there are n-1 rounds for even n and n rounds for odd n (none for n < 2).
    """
    if n < 2:
        return []
    m = n if n % 2 == 0 else n + 1
    ring = list(range(1, m))
    rounds = []
    for _ in range(m - 1):
        order = [0] + ring
        pairs = []
        for i in range(m // 2):
            a, b = order[i], order[m - 1 - i]
            if a < n and b < n:
                pairs.append((min(a, b), max(a, b)))
        rounds.append(sorted(pairs))
        ring = ring[-1:] + ring[:-1]
    return rounds


def fit_alpha_beta(sizes: list[float], times: list[float]) -> Link:
    """Fit of t(n) = alpha + n / beta to (size, time) points: beta from the two largest sizes, alpha from the smallest.

    1/beta is the slope between the two largest message sizes (the median time of each size): the marginal cost of
    a byte where transfer dominates. A least-squares line over all sizes is not used because a rate shaper's burst
    bucket or a socket buffer lets mid-sized messages through faster than the link's rate; the line then bends, and a
    25 Mbit/s HTB link came out at 57 MB/s (intercept negative, slope set by the small messages). Two messages both
    larger than the burst share the same head start, so their difference is the link's rate. alpha is the smallest
    size's time less its transfer time, clamped at zero. A slope that gives the largest message under 5% of its time
    as transfer (no measurable bandwidth term) falls back to that message's size over its time.
    """
    n = np.asarray(sizes, dtype=float)
    t = np.asarray(times, dtype=float)
    distinct = sorted(set(n.tolist()))
    if len(n) < 2 or len(distinct) < 2:
        raise ValueError("fit_alpha_beta needs at least two distinct message sizes")
    per_size = {size: float(np.median(t[n == size])) for size in distinct}
    big, second, small = distinct[-1], distinct[-2], distinct[0]
    inv_beta = (per_size[big] - per_size[second]) / (big - second)
    if inv_beta * big < 0.05 * per_size[big]:
        # The largest message shows no measurable transfer time next to the latency (noise, or sizes too small):
        # take its effective bandwidth, a lower bound on the link's, rather than an arbitrarily large fitted one.
        inv_beta = per_size[big] / big
    alpha = max(per_size[small] - small * inv_beta, 0.0)
    return Link(latency_s=float(alpha), bandwidth_Bps=float(1.0 / inv_beta))


@dataclass(frozen=True)
class HostLayout:
    """Which rank is on which node, recognised from host names (ranks sharing a host name are one node)."""

    hostnames: tuple[str, ...]  # one per node, in order of the lowest rank on each
    node_of: tuple[int, ...]  # rank -> node index
    local_of: tuple[int, ...]  # rank -> index among the ranks of its node (by rank order)
    ranks: tuple[tuple[int, ...], ...]  # [node][local] -> rank

    @property
    def nodes(self) -> int:
        return len(self.hostnames)

    @property
    def gpus_per_node(self) -> int:
        return len(self.ranks[0])


def group_hosts(hostnames: list[str]) -> HostLayout:
    """Groups ranks by host name; every node must run the same number of ranks."""
    if not hostnames:
        raise UserError("no ranks to group into nodes")
    order: dict[str, list[int]] = {}
    for rank, host in enumerate(hostnames):
        order.setdefault(host, []).append(rank)
    counts = {host: len(ranks) for host, ranks in order.items()}
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{host}: {c}" for host, c in counts.items())
        raise UserError(f"nodes run different numbers of ranks ({shown}); start the same --nproc-per-node on "
                        f"every node so the profile describes one uniform node shape")
    hosts = list(order)
    node_of = [0] * len(hostnames)
    local_of = [0] * len(hostnames)
    for node, host in enumerate(hosts):
        for local, rank in enumerate(order[host]):
            node_of[rank], local_of[rank] = node, local
    return HostLayout(tuple(hosts), tuple(node_of), tuple(local_of), tuple(tuple(order[h]) for h in hosts))


def _median_link(links: list[Link]) -> Link:
    return Link(median([x.latency_s for x in links]), median([x.bandwidth_Bps for x in links]))


def summarize_links(layout: HostLayout, fits: dict[tuple[int, int], Link], self_link: Link) -> dict:
    """intra_node / inter_node (median fitted link of each kind) and the per-pair matrices.

    `intra_node_matrix[i][j]` is the median over nodes of the link from local rank i to local rank j;
    `inter_node_matrix[p][q]` the median over all device pairs from node p to node q. Diagonals hold `self_link`
    (intra: a copy within one device) and the median intra-node link (inter). A kind that could not be measured (one
    rank per node, or one node) is None, and so is its matrix; a one-node profile has no inter-node matrix.
    """
    g, nodes = layout.gpus_per_node, layout.nodes
    intra = [link for (a, b), link in fits.items() if layout.node_of[a] == layout.node_of[b]]
    inter = [link for (a, b), link in fits.items() if layout.node_of[a] != layout.node_of[b]]
    intra_link = _median_link(intra) if intra else None
    inter_link = _median_link(inter) if inter else None
    intra_matrix = None
    if g > 1 and intra:
        intra_matrix = tuple(
            tuple(self_link if i == j else _median_link([fits[(layout.ranks[n][i], layout.ranks[n][j])]
                                                         for n in range(nodes)])
                  for j in range(g)) for i in range(g))
    inter_matrix = None
    if nodes > 1 and inter:
        diag = intra_link or self_link
        inter_matrix = tuple(
            tuple(diag if p == q else _median_link([fits[(a, b)] for a in layout.ranks[p] for b in layout.ranks[q]])
                  for q in range(nodes)) for p in range(nodes))
    return {"intra_node": intra_link, "inter_node": inter_link, "intra_node_matrix": intra_matrix,
            "inter_node_matrix": inter_matrix}


def collective_groups(layout: HostLayout) -> list[tuple[str, int, list[list[int]]]]:
    """(kind, k, concurrent groups): k ranks of one node on every node; one rank on each of k nodes, for every local
    index at once; and (several nodes of several ranks) all ranks in one group."""
    def sizes(limit: int) -> list[int]:
        out, k = [], 2
        while k <= limit:
            out.append(k)
            k *= 2
        if limit >= 2 and limit not in out:
            out.append(limit)
        return out

    plan = []
    for k in sizes(layout.gpus_per_node):
        plan.append(("intra", k, [list(layout.ranks[n][:k]) for n in range(layout.nodes)]))
    for k in sizes(layout.nodes):
        plan.append(("inter", k, [[layout.ranks[n][j] for n in range(k)] for j in range(layout.gpus_per_node)]))
    if layout.nodes > 1 and layout.gpus_per_node > 1:  # the whole cluster, as a DP group over every device
        plan.append(("inter", layout.nodes * layout.gpus_per_node, [sorted(r for node in layout.ranks for r in node)]))
    return plan


# ---- measurements (every rank calls these together) ----------------------------------------------------------------
def _pingpong(peer: int, send: torch.Tensor, ack: torch.Tensor, device: torch.device, initiator: bool,
              warmup: int, repeats: int) -> list[float]:
    """Initiator: send `send`, wait for `ack`; responder: the mirror. Returns the initiator's round-trip times."""
    def once():
        if initiator:
            dist.send(send, peer)
            dist.recv(ack, peer)
        else:
            dist.recv(send, peer)
            dist.send(ack, peer)
        sync(device)

    for _ in range(warmup):
        once()
    return [time_once(once, device) for _ in range(repeats)]


def one_way_times(sizes: list[int], rtt0: float, rtts: list[float]) -> list[tuple[int, float]]:
    """(bytes, one-way seconds) of each size from its ping-pong round trip (`rtts`: the message there, a 4-byte
    acknowledgement back), less half the 4-byte round trip `rtt0` (the acknowledgement's way). A round trip of a
    larger message is never shorter than the 4-byte one, so `rtt0` is taken at most the shortest of `rtts`: a 4-byte
    ping-pong delayed by the host's scheduler (a quick profile on a loaded 2-core host) otherwise left nothing of the
    messages' times, clamped at a nanosecond, and one direction of a link was fitted at 4e15 bytes/s."""
    ack_way = min(rtt0, *rtts) / 2
    return [(n, rtt - ack_way) for n, rtt in zip(sizes, rtts)]


def measure_p2p(sizes: list[int], warmup: int, repeats: int, device: torch.device, log: Log) -> dict:
    """Every ordered pair's one-way times (10th percentile) per size, gathered on every rank: {(a, b): [(bytes, seconds)]}."""
    rank, world = dist.get_rank(), dist.get_world_size()
    rounds = round_robin_pairs(world)
    mine: dict[tuple[int, int], list[tuple[int, float]]] = {}
    tiny = torch.zeros(1, dtype=torch.float32, device=device)
    ack = torch.zeros(1, dtype=torch.float32, device=device)
    buffers = {n: torch.zeros(max(n // 4, 1), dtype=torch.float32, device=device) for n in sizes}
    for index, pairs in enumerate(rounds):
        log(f"  p2p round {index + 1}/{len(rounds)}: {len(pairs)} pair(s) concurrently")
        for a, b in pairs:
            if rank not in (a, b):
                continue
            peer = b if rank == a else a
            for sender in (a, b):
                receiver = b if sender == a else a
                initiator = rank == sender
                rtt0 = percentile(_pingpong(peer, tiny, ack, device, initiator, warmup, repeats), QUANTILE)
                rtts = [percentile(_pingpong(peer, buffers[n], ack, device, initiator, warmup, repeats), QUANTILE)
                        for n in sizes]
                if initiator:
                    mine[(sender, receiver)] = one_way_times(sizes, rtt0, rtts)
        dist.barrier()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    return {pair: points for part in gathered for pair, points in part.items()}


def _run_collective(op: str, group, k: int, nbytes: int, device: torch.device):
    elems = max(nbytes // 4 // k, 1) * k
    full = torch.ones(elems, dtype=torch.float32, device=device)
    shard = torch.ones(elems // k, dtype=torch.float32, device=device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

    def once():
        if op == "all_reduce":
            dist.all_reduce(full, group=group)
        elif op == "all_gather":
            gather(full, shard, group=group)
        else:
            scatter(shard, full, group=group)
        sync(device)

    return once, elems * 4


def measure_collectives(layout: HostLayout, sizes: list[int], warmup: int, repeats: int, device: torch.device,
                        log: Log) -> dict:
    """{op: {"intra"|"inter": [{"ranks", "bytes", "time_s"}]}}, identical on every rank."""
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = []  # (kind, k, group index, op, bytes, seconds)
    plan = collective_groups(layout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for kind, k, groups in plan:
            handles = [dist.new_group(members) for members in groups]  # every rank creates every group, in order
            log(f"  collectives {kind}-node, {k} ranks per group, {len(groups)} group(s) concurrently")
            for index, members in enumerate(groups):
                if rank not in members:
                    continue
                group = handles[index]
                for op in COLLECTIVES:
                    for n in sizes:
                        once, actual = _run_collective(op, group, k, n, device)
                        if device.type == "cpu":
                            dist.barrier(group=group)
                        for _ in range(warmup):
                            once()
                        times = [time_once(once, device) for _ in range(repeats)]
                        mine.append((kind, k, index, op, actual, percentile(times, QUANTILE)))
            dist.barrier()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    slowest: dict[tuple, float] = {}
    for part in gathered:
        for kind, k, index, op, nbytes, t in part:
            key = (op, kind, k, nbytes, index)
            slowest[key] = max(slowest.get(key, 0.0), t)
    per_group: dict[tuple, list[float]] = {}
    for (op, kind, k, nbytes, _), t in slowest.items():
        per_group.setdefault((op, kind, k, nbytes), []).append(t)
    out: dict = {op: {"intra": [], "inter": []} for op in COLLECTIVES}
    for (op, kind, k, nbytes), times in sorted(per_group.items()):
        out[op][kind].append({"ranks": k, "bytes": nbytes, "time_s": median(times)})
    return out


def loaded_sync_times(device: torch.device, repeats: int, work_s: float = 0.003) -> dict[int, float]:
    """Median time of a 4 KiB all-reduce when each rank computes for about `work_s` between calls, as in training,
    per group size: {ranks: seconds} for every power of two from 2 that divides the job's ranks, and the whole
    job, each size's groups of consecutive ranks all reducing at once (as a layout's groups do). On CPU ranks that
    share cores this is dominated by waiting for every member to be scheduled, which grows with the members (4
    ranks on 2 cores: about 3 ms in pairs, 9 ms all four); the cost model adds it to every collective of a group of
    that size (profile entry `collective_sync_s`)."""
    import time

    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = sorted({1 << i for i in range(1, world.bit_length()) if world % (1 << i) == 0} | {world})
    buffer = torch.zeros(1024, dtype=torch.float32, device=device)
    out = {}
    for size in sizes:
        groups = [dist.new_group(list(range(first, first + size))) for first in range(0, world, size)]
        mine = groups[rank // size]

        def exchange() -> float:
            t0 = time.perf_counter()
            dist.all_reduce(buffer, group=mine)
            return time.perf_counter() - t0

        out[size] = _median_under_load(device, repeats, work_s, exchange)
    return out


def loaded_p2p_time(device: torch.device, repeats: int, work_s: float = 0.003) -> float:
    """Median one-way time of a 4 KiB message between pipeline neighbours when every rank computes for about
    `work_s` between messages, as in training: ranks pair up (2k with 2k+1; an odd last rank only computes), the
    even one sends and waits for the echo, half the round trip is kept. On CPU ranks that share cores this is the
    wait for the receiver to be scheduled (profile entry `p2p_sync_s`, added to every pipeline transfer); unlike
    `loaded_sync_times` it waits for one peer, not for every member of a group. Returns the median over this rank's
    messages (nan on a rank that times none)."""
    import time

    rank, world = dist.get_rank(), dist.get_world_size()
    partner = rank ^ 1
    buffer = torch.zeros(1024, dtype=torch.float32, device=device)

    def exchange() -> float | None:
        if partner >= world:
            return None
        if rank % 2:
            dist.recv(buffer, partner)
            dist.send(buffer, partner)
            return None
        t0 = time.perf_counter()
        dist.send(buffer, partner)
        dist.recv(buffer, partner)
        return (time.perf_counter() - t0) / 2

    return _median_under_load(device, repeats, work_s, exchange)


def _median_under_load(device: torch.device, repeats: int, work_s: float, exchange) -> float:
    """Median of what `exchange()` times (None: nothing timed on this rank this round) when every rank computes for
    about `work_s` before each call: the same number of small matmuls on every rank, sized once by the slowest
    rank, standing in for a training step's compute between messages. nan when this rank timed nothing."""
    import time

    a = torch.randn(192, 192)
    start = time.perf_counter()
    steps = 0
    while time.perf_counter() - start < work_s:
        a = torch.tanh(a @ a)
        steps += 1
    agreed = torch.tensor([float(steps)], dtype=torch.float64, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    times = []
    dist.barrier()
    for _ in range(repeats):
        for _ in range(int(agreed.item())):
            a = torch.tanh(a @ a)
        t = exchange()
        if t is not None:
            times.append(t)
    dist.barrier()
    return float(np.median(times)) if times else float("nan")
