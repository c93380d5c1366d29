"""Map the [pp][dp][cp][tp] rank grid (spec/grid.py AXES) onto physical devices using the measured links.

Cost of a placement (a sum of named terms, each the slowest group of its dimension), with cost/comm.py's rules::

    ring(group, bytes) = comm.ring_time("all_reduce", bytes, n, largest alpha, smallest bandwidth along the ring)
                       = 2(n-1) * alpha + 2(n-1)/n * bytes / bandwidth
    tp = max over TP groups (mesh[p, d, c, :]) of ring(group, tp_bytes)
    cp = max over CP groups (mesh[p, d, :, t]) of ring(group, cp_bytes)
    dp = max over DP groups (mesh[p, :, c, t]) of ring(group, dp_bytes)
    pp = max over neighbouring pipeline pairs (mesh[p, d, c, t], mesh[p+1, d, c, t]) of
         comm.transfer_time(pp_bytes, alpha, bandwidth)
    total = w_tp * tp + w_pp * pp + w_dp * dp + w_cp * cp  (weights default to 1; the caller may pass others)

A ring visits its group in mesh order and closes (a two-rank ring crosses its one link twice). On a cluster profile
a link's bandwidth is what comm.py achieves on it (times the profile's comm_intra / comm_inter efficiency).

Solvers, by size:

- uniform cluster (every intra-node link alike and every inter-node link alike): the default order is returned
  at once (TP fills a node first, then CP, then DP, then PP);
- N <= EXACT_MAX_DEVICES: exact CP-SAT over rank -> device booleans with pair indicators per ring edge, hinted by
  the swap search below (and that search's mesh where CP-SAT proves nothing better in its time);
- larger: TP groups stay inside a node, chunks of g/tp TP groups (in default order) are assigned to nodes by a
  deterministic swap local search on the exact cost, time-limited (deterministic unless the wall-clock limit
  cuts it short); where the links inside a host differ, two devices of one host may swap too.
  When tp does not divide the node size the default order is kept.

Every solver keeps each block of gpus_per_node consecutive grid positions on one host (`launch_block`): torchrun
gives a node rank consecutive global ranks (spec/plan.py `node_blocks`), so no other mesh can be launched.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from autoconf.cost.comm import ring_time, transfer_time
from autoconf.spec.grid import ParallelDims, RankGrid

EXACT_MAX_DEVICES = 16
# TP x CP blocks. The rank grid puts TP innermost and CP next (spec/grid.py AXES [pp][dp][cp][tp]), as Megatron-Core
# orders its process groups (`initialize_model_parallel`'s default order "tp-cp-ep-dp-pp") and torchtitan its device
# mesh ([pp, dp_replicate, dp_shard, cp, tp], parallel_dims.py): a TP x CP block fills consecutive devices, and
# the launchable meshes keep each node's devices consecutive (`spec.plan.node_blocks`). Neither framework stops the
# block from outgrowing a node (its CP groups then cross nodes, TP stays inside); autoconf's search keeps it within
# the devices that share fast links, a node, unless the profile's links join the nodes fast enough: the slowest
# intra-node link at most CROSS_NODE_CP_RATIO times the slowest inter-node link's bandwidth. 9: 450 GB/s NVLink per
# direction against 400 Gb/s RoCE per H100, the fabric Llama 3 405B trained TP8 x CP16 on, its CP groups across
# nodes (Llama 3 paper, arXiv 2407.21783, Sec. 3.3.1-3.3.2). `estimate` predicts any block.
CROSS_NODE_CP_RATIO = 9
COST_QUANTA = 1 << 20  # the default placement's cost is split into this many integer steps in CP-SAT
WEIGHT_SCALE = 1000


def tp_cp_domain(cluster) -> tuple[int | None, str]:
    """(the devices a TP x CP block must stay within, None for any; why, in words) of a cluster profile, by the rule
    of CROSS_NODE_CP_RATIO above. Read by the search's candidate space (`space.candidates`)."""
    if cluster.num_domains == 1:
        return None, "one node" if cluster.nodes == 1 else "one scale-up domain"
    intra = min(_bandwidths(cluster.intra_node_matrix, cluster.intra_node))
    inter = min(_bandwidths(cluster.inter_node_matrix, cluster.inter_node))
    if intra <= CROSS_NODE_CP_RATIO * inter:
        return None, f"{cluster.name}'s inter-node links are fast"
    where = "a node" if cluster.nodes_per_domain == 1 else "a scale-up domain"
    return cluster.devices_per_domain, (f"{where} of {cluster.name}: its inter-node links, {inter / 1e9:g} GB/s, "
                                        f"are slower than 1/{CROSS_NODE_CP_RATIO} of the intra-node "
                                        f"{intra / 1e9:g} GB/s")


def _bandwidths(matrix, link) -> list[float]:
    if matrix is None:
        return [link.bandwidth_Bps]
    return [row[j].bandwidth_Bps for i, row in enumerate(matrix) for j in range(len(row)) if i != j] or [
        link.bandwidth_Bps]


class LinkModel(Protocol):
    """The links placement reads. A "node" here is a link domain: the devices one fast fabric joins, every pair of
    them on `intra` links (a host, or a rack of hosts on one NVLink fabric: `ClusterProfile.domain_of`)."""
    num_devices: int
    devices_per_domain: int

    def domain_of(self, device: int) -> int: ...

    def intra(self, i: int, j: int) -> tuple[float, float]:
        """(alpha seconds, bandwidth bytes/s) between two devices of the same node."""

    def inter(self, node_a: int, node_b: int) -> tuple[float, float]:
        """(alpha seconds, bandwidth bytes/s) between two nodes."""


@dataclass
class DenseLinks:
    """Links from dense N x N matrices (small clusters); devices 0..g-1 are node 0 and so on."""
    alpha: np.ndarray
    bandwidth: np.ndarray
    devices_per_domain: int

    @property
    def num_devices(self) -> int:
        return len(self.alpha)

    def domain_of(self, device: int) -> int:
        return device // self.devices_per_domain

    def intra(self, i: int, j: int) -> tuple[float, float]:
        return float(self.alpha[i][j]), float(self.bandwidth[i][j])

    def inter(self, node_a: int, node_b: int) -> tuple[float, float]:
        # Representative link between two nodes: their first devices.
        g = self.devices_per_domain
        return float(self.alpha[node_a * g][node_b * g]), float(self.bandwidth[node_a * g][node_b * g])

    def link(self, i: int, j: int) -> tuple[float, float]:
        return float(self.alpha[i][j]), float(self.bandwidth[i][j])

    def is_uniform(self) -> bool:
        n, g = self.num_devices, self.devices_per_domain
        same = np.equal.outer(np.arange(n) // g, np.arange(n) // g)
        off = ~np.eye(n, dtype=bool)
        return all(len(np.unique(m[mask])) <= 1 for m in (self.alpha, self.bandwidth)
                   for mask in (same & off, ~same))


@dataclass
class HierarchicalLinks:
    """One intra-node link for every device pair in a node; inter-node links as a scalar or a node matrix."""
    num_nodes: int
    devices_per_domain: int
    intra_alpha: float
    intra_bandwidth: float
    inter_alpha: float | np.ndarray
    inter_bandwidth: float | np.ndarray

    @property
    def num_devices(self) -> int:
        return self.num_nodes * self.devices_per_domain

    def domain_of(self, device: int) -> int:
        return device // self.devices_per_domain

    def intra(self, i: int, j: int) -> tuple[float, float]:
        return self.intra_alpha, self.intra_bandwidth

    def inter(self, node_a: int, node_b: int) -> tuple[float, float]:
        a = self.inter_alpha if np.isscalar(self.inter_alpha) else self.inter_alpha[node_a][node_b]
        b = self.inter_bandwidth if np.isscalar(self.inter_bandwidth) else self.inter_bandwidth[node_a][node_b]
        return float(a), float(b)

    def is_uniform(self) -> bool:
        def flat(m):
            if np.isscalar(m):
                return True
            off = ~np.eye(self.num_nodes, dtype=bool)
            return len(np.unique(np.asarray(m)[off])) <= 1
        return flat(self.inter_alpha) and flat(self.inter_bandwidth)


def link(links: LinkModel, i: int, j: int) -> tuple[float, float]:
    """(alpha, bandwidth) between two devices, whichever kind of link joins them."""
    if hasattr(links, "link"):
        found = links.link(i, j)
        if not hasattr(found, "latency_s"):  # the small link models here answer with a tuple
            return found
        # A ClusterProfile answers with a Link object: the bandwidth comm.py achieves on it.
        scope = "comm_intra" if links.domain_of(i) == links.domain_of(j) else "comm_inter"
        return found.latency_s, found.bandwidth_Bps * links.eff(scope)
    a, b = links.domain_of(i), links.domain_of(j)
    return links.intra(i, j) if a == b else links.inter(a, b)


def _is_uniform(links: LinkModel) -> bool:
    if hasattr(links, "is_uniform"):
        return links.is_uniform()
    # Generic check over every pair: fine for the node counts where a generic model is used.
    n, g = links.num_devices, links.devices_per_domain
    nodes = range(n // g)
    intra = {links.intra(i, j) for node in nodes for i in range(node * g, node * g + g)
             for j in range(node * g, node * g + g) if i != j}
    inter = {links.inter(a, b) for a in nodes for b in nodes if a != b}
    return len(intra) <= 1 and len(inter) <= 1


RING_AXES = ("tp", "cp", "dp")
DIMS = ("tp", "pp", "dp", "cp")  # the order of `weights` (a 3-tuple leaves cp at weight 1)


def default_mesh(pp: int, dp: int, tp: int, cp: int = 1) -> np.ndarray:
    return RankGrid.logical(ParallelDims(pp=pp, dp=dp, cp=cp, tp=tp)).devices


def _weights(weights) -> dict[str, float]:
    return dict(zip(DIMS, (*weights, 1.0) if len(weights) == 3 else weights))


def _volumes(tp_bytes: float, pp_bytes: float, dp_bytes: float, cp_bytes: float) -> dict[str, float]:
    return {"tp": tp_bytes, "pp": pp_bytes, "dp": dp_bytes, "cp": cp_bytes}


def _ring_edges(group) -> list[tuple[int, int]]:
    n = len(group)
    return [] if n == 1 else [(group[k], group[(k + 1) % n]) for k in range(n)]


def _groups(mesh: np.ndarray):
    """(dimension, group) for every ring group and every pair of neighbouring pipeline ranks, in a fixed order."""
    grid = RankGrid(mesh)
    for axis in RING_AXES:
        for group in grid.groups(axis):
            yield axis, list(group)
    chains = grid.groups("pp")
    for p in range(grid.size("pp") - 1):
        for chain in chains:
            yield "pp", [chain[p], chain[p + 1]]


def _ring_steps(n: int) -> int:
    """Steps of a ring all-reduce on n members (comm.ring_time): each pays the ring's largest alpha."""
    return 2 * (n - 1)


def _ring_factor(n: int) -> float:
    """Share of the buffer a ring all-reduce moves over its slowest link (comm.ring_time)."""
    return 2 * (n - 1) / n


def placement_cost_breakdown(mesh, links: LinkModel, tp_bytes: float, pp_bytes: float, dp_bytes: float,
                             weights: tuple[float, ...] = (1.0, 1.0, 1.0), cp_bytes: float = 0.0) -> dict[str, float]:
    """{"tp", "pp", "dp", "cp", "total"} in seconds per step (see the module docstring)."""
    return _mesh_sums(mesh, links, (tp_bytes, pp_bytes, dp_bytes, cp_bytes), weights)[0]


def placement_cost(mesh, links: LinkModel, tp_bytes: float, pp_bytes: float, dp_bytes: float,
                   weights: tuple[float, ...] = (1.0, 1.0, 1.0), cp_bytes: float = 0.0) -> float:
    return placement_cost_breakdown(mesh, links, tp_bytes, pp_bytes, dp_bytes, weights, cp_bytes)["total"]


def brute_force_placement(pp, dp, tp, links, tp_bytes, pp_bytes, dp_bytes, weights=(1.0, 1.0, 1.0), cp=1,
                          cp_bytes=0.0):
    """Best launchable mesh (each host's block of positions on one host: `launch_block`) over all N! device orders
    (first in lexicographic order on ties). Tests and N <= 8 only."""
    n = pp * dp * cp * tp
    alpha = np.array([[link(links, i, j)[0] if i != j else 0.0 for j in range(n)] for i in range(n)])
    inv_bw = np.array([[1.0 / link(links, i, j)[1] if i != j else 0.0 for j in range(n)] for i in range(n)])
    perms = np.array(list(itertools.permutations(range(n))))
    block = launch_block(links)
    hosts = perms.reshape(len(perms), -1, min(block, n)) // block
    perms = perms[(hosts == hosts[:, :, :1]).all(axis=(1, 2))]
    volume = _volumes(tp_bytes, pp_bytes, dp_bytes, cp_bytes)
    cost = {d: np.zeros(len(perms)) for d in DIMS}
    for dim, group in _groups(default_mesh(pp, dp, tp, cp)):  # groups of flat positions
        ends = [tuple(group)] if dim == "pp" else _ring_edges(group)
        if not ends:
            continue
        if dim == "pp":
            steps, factor = 1, 1.0
        elif volume[dim] > 0:
            steps, factor = _ring_steps(len(group)), _ring_factor(len(group))
        else:
            continue  # comm.ring_time: no buffer, no time
        a = np.max([alpha[perms[:, i], perms[:, j]] for i, j in ends], axis=0)
        slow = np.max([inv_bw[perms[:, i], perms[:, j]] for i, j in ends], axis=0)
        cost[dim] = np.maximum(cost[dim], steps * a + factor * volume[dim] * slow)
    w = _weights(weights)
    total = sum(w[d] * cost[d] for d in DIMS)
    return perms[int(np.argmin(total))].reshape(pp, dp, cp, tp)


def solve_placement(pp: int, dp: int, tp: int, links: LinkModel, tp_bytes: float, pp_bytes: float,
                    dp_bytes: float, time_limit_s: float = 10.0, seed: int = 0,
                    weights: tuple[float, ...] = (1.0, 1.0, 1.0), cp: int = 1, cp_bytes: float = 0.0) -> np.ndarray:
    """Mesh of device ids [pp][dp][cp][tp] that minimises ``placement_cost`` (exactly for small N)."""
    dims = ParallelDims(pp=pp, dp=dp, cp=cp, tp=tp)
    if links.num_devices != dims.world_size:
        raise ValueError(f"{dims.product()} = {dims.world_size} ranks but the cluster has {links.num_devices} "
                         f"devices")
    volumes = (tp_bytes, pp_bytes, dp_bytes, cp_bytes)
    if _is_uniform(links):
        return default_mesh(pp, dp, tp, cp)
    if dims.world_size <= EXACT_MAX_DEVICES:
        return _solve_exact(dims, links, volumes, weights, time_limit_s, seed)
    return _solve_by_nodes(dims, links, volumes, weights, time_limit_s)


def _solve_exact(dims: ParallelDims, links, volumes, weights, time_limit_s, seed) -> np.ndarray:
    # ortools loads only when a model is solved (its import, pandas included, takes about half a CPU second).
    from ortools.sat.python import cp_model

    from autoconf.solve import cpsat

    # Data: every rank is a cell of the grid, ring edges and pipeline pairs connect cells.
    n = dims.world_size
    cells = start = default_mesh(dims.pp, dims.dp, dims.tp, dims.cp)
    volume_of = _volumes(*volumes)
    quantum = max(_cost(start, links, volumes, weights)["total"], 1e-30) / COST_QUANTA
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    lat = {(i, j): link(links, i, j)[0] for i, j in pairs}
    bw = {(i, j): link(links, i, j)[1] for i, j in pairs}
    groups = list(_groups(cells))

    model = cp_model.CpModel()
    # Variables: x[r, i] <=> rank r runs on device i; y[e, i, j] <=> edge e joins devices i and j.
    x = {(r, i): model.new_bool_var(f"x_{r}_{i}") for r in range(n) for i in range(n)}
    edges = []  # (group index, rank a, rank b)
    for g, (dim, group) in enumerate(groups):
        ends = [tuple(group)] if dim == "pp" else _ring_edges(group)
        edges += [(g, int(a), int(b)) for a, b in ends]
    y = {(e, i, j): model.new_bool_var(f"y_{e}_{i}_{j}") for e in range(len(edges)) for i, j in pairs}

    # Each rank on one device, each device holds one rank.
    for r in range(n):
        model.add_exactly_one(x[r, i] for i in range(n))
    for i in range(n):
        model.add_exactly_one(x[r, i] for r in range(n))
    # Launchable: each block of `block` consecutive ranks on one host (z[k, h] <=> block k runs on host h).
    block = launch_block(links)
    if n > block:
        hosts = n // block
        z = {(k, h): model.new_bool_var(f"z_{k}_{h}") for k in range(hosts) for h in range(hosts)}
        for k in range(hosts):
            model.add_exactly_one(z[k, h] for h in range(hosts))
        for h in range(hosts):
            model.add_exactly_one(z[k, h] for k in range(hosts))
        for r in range(n):
            for i in range(n):
                model.add_implication(x[r, i], z[r // block, i // block])
    # Each edge uses exactly one device pair, and only the pair its two ranks sit on.
    for e, (_, a, b) in enumerate(edges):
        model.add_exactly_one(y[e, i, j] for i, j in pairs)
        for i, j in pairs:
            model.add_implication(y[e, i, j], x[a, i])
            model.add_implication(y[e, i, j], x[b, j])

    # Each group's time (comm.ring_time, comm.transfer_time): its steps times the largest alpha on its ring plus its
    # volume over every edge's bandwidth (the slowest binds).
    dim_cost = {dim: model.new_int_var(0, 1 << 50, f"cost_{dim}") for dim in DIMS}
    by_group = {}
    for e, (g, _, _) in enumerate(edges):
        by_group.setdefault(g, []).append(e)
    for g, members in by_group.items():
        dim, group = groups[g]
        raw = volume_of[dim]
        if dim != "pp" and raw <= 0:
            continue
        steps = 1 if dim == "pp" else _ring_steps(len(group))
        volume = raw * (1 if dim == "pp" else _ring_factor(len(group)))
        alpha = model.new_int_var(0, 1 << 50, f"alpha_{g}")
        for e in members:
            model.add(alpha >= sum(round(lat[i, j] / quantum) * y[e, i, j] for i, j in pairs))
        for e in members:
            model.add(dim_cost[dim] >= steps * alpha + sum(round(volume / bw[i, j] / quantum) * y[e, i, j]
                                                           for i, j in pairs))

    # Objective: weighted sum of the dimensions' slowest groups.
    model.minimize(sum(round(w * WEIGHT_SCALE) * dim_cost[d] for d, w in _weights(weights).items()))

    # Hint: the local-search placement from the default order.
    hint = _local_search(start, links, volumes, weights, time.monotonic() + time_limit_s / 4, _swaps(n, block))
    position = {int(dev): r for r, dev in enumerate(hint.reshape(-1))}
    hints = [(var, position[i] == r) for (r, i), var in x.items()]

    # Solve: seeded, one worker, limited in CP-SAT's deterministic time so a search cut short stops at the same mesh
    # everywhere (solve/cpsat.py).
    solver, status = cpsat.solve(model, time_limit_s, seed, "placement", hints)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return hint
    flat = [next(i for i in range(n) if solver.value(x[r, i])) for r in range(n)]
    mesh = np.array(flat).reshape(dims.shape)
    # Rounding to integer quanta can tie different meshes: keep whichever is better in seconds.
    if _cost(hint, links, volumes, weights)["total"] < _cost(mesh, links, volumes, weights)["total"]:
        return hint
    return mesh


def launch_block(links: LinkModel) -> int:
    """Devices of one host (`ClusterProfile.gpus_per_node`; a link domain where the model names no hosts): a
    launchable mesh keeps each block of that many consecutive grid positions on one host (spec/plan.py
    `node_blocks`), so the solvers search only such meshes."""
    return getattr(links, "gpus_per_node", None) or links.devices_per_domain


def _swaps(n: int, block: int, blocks_whole: int | None = None, within: bool = True) -> list[tuple[list, list]]:
    """The moves of the swap search over `n` grid positions that keep each host's block of `block` positions on one
    host: two positions of the same block (with `within`), and two whole chunks of `blocks_whole` positions (a
    multiple of `block`; default `block`) where there are several. On one host, any two positions."""
    if n <= block:
        return [([a], [b]) for a, b in itertools.combinations(range(n), 2)]
    size = blocks_whole or block
    chunks = [list(range(k, k + size)) for k in range(0, n, size)]
    moves = [(chunks[a], chunks[b]) for a, b in itertools.combinations(range(len(chunks)), 2)]
    if within:
        moves += [([k + a], [k + b]) for k in range(0, n, block) for a, b in itertools.combinations(range(block), 2)]
    return moves


def _local_search(mesh, links, volumes, weights, deadline, moves) -> np.ndarray:
    """Deterministic first-improvement swap search on the cost, from `mesh` and from `mesh` with each host's devices
    chained along their fastest links (`_fast_chains`), each directly and after a first search on a smooth sum
    (every group's time, every edge's: `_mesh_sums`): the cost is a maximum over groups,
    which one swap rarely lowers while the other groups stay as slow (a ring crosses its slowest link whatever its
    others are), so from the default order on a node whose links pair its devices in fast islands no single swap
    lowers it, while the sums fall with each slow link a group gives up. Ties of the cost are broken by the sum of
    the dimensions' slowest groups, then by the edges' sum. The end of least cost is returned.

    `moves` are the pairs of flat mesh positions' lists the search may swap (`_swaps`).
    """
    shape = np.asarray(mesh).shape

    def exact(arr):
        br, _, edges = _mesh_sums(arr.reshape(shape), links, volumes, weights)
        return br["total"], br["tp"] + br["pp"] + br["dp"] + br["cp"], edges

    def by_groups(arr):
        return _mesh_sums(arr.reshape(shape), links, volumes, weights)[1:]

    def by_edges(arr):
        return _mesh_sums(arr.reshape(shape), links, volumes, weights)[2:]

    start = np.asarray(mesh).reshape(-1).copy()
    chained = _fast_chains(start, links)
    ends = []
    for begin in (start, chained) if not np.array_equal(chained, start) else (start,):
        ends.append(_swap_search(begin, exact, deadline, moves))
        for smooth in (by_groups, by_edges):
            ends.append(_swap_search(_swap_search(begin, smooth, deadline, moves), exact, deadline, moves))
    return min(ends, key=lambda arr: _rounded(exact(arr))).reshape(shape)


def _fast_chains(flat: np.ndarray, links: LinkModel) -> np.ndarray:
    """`flat` with each host's devices (each `launch_block` of positions) reordered as a chain along its fastest
    links: from the block's first device, each next one the unvisited device joined fastest to the last (ties to
    the lowest id). On a host whose links form islands the chain runs through one island before the next, so the
    default order's consecutive groups lie in islands; on a uniform host it is the order itself."""
    block = min(launch_block(links), len(flat))
    out = flat.copy()
    for k in range(0, len(flat), block):
        out[k:k + block] = _chain([int(d) for d in flat[k:k + block]], links)
    return out


def _chain(devices: list[int], links: LinkModel) -> list[int]:
    """`devices` from the first as a chain along the fastest links: each next one the unvisited device joined
    fastest to the last (ties to the lowest id)."""
    chain, left = [devices[0]], sorted(devices[1:])
    while left:
        nxt = max(left, key=lambda d: (link(links, chain[-1], d)[1], -d))
        chain.append(nxt)
        left.remove(nxt)
    return chain


def host_chain_order(cluster) -> tuple[int, ...] | None:
    """The order of a node's local devices along its fastest links (`_chain` from device 0) where the profile's
    per-pair intra-node matrix makes it differ from 0..g-1, else None. The search plans on the cluster renumbered
    in this order (`ClusterProfile.with_local_order`): its default rank order, which every candidate's estimate
    and bound reads, then fills the fast islands of a node first, as it does on a node whose links are alike."""
    if cluster.intra_node_matrix is None:
        return None
    order = tuple(_chain(list(range(cluster.gpus_per_node)), cluster))
    return None if order == tuple(range(cluster.gpus_per_node)) else order


def _rounded(score: tuple[float, ...]) -> tuple[float, ...]:
    """A score compared to 12 significant digits (the sums' rounding does not tell meshes apart)."""
    return tuple(float(f"{x:.12g}") for x in score)


def _swap_search(flat: np.ndarray, score, deadline, moves) -> np.ndarray:
    """First-improvement search over `moves` (pairs of position lists of `flat` swapped) that lower `score` (a
    tuple, compared in order to 12 significant digits) until none does or `deadline` passes."""
    best = _rounded(score(flat))
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for a, b in moves:
            if time.monotonic() > deadline:
                break
            trial = flat.copy()
            trial[a], trial[b] = flat[b], flat[a]
            s = _rounded(score(trial))
            if s < best:
                flat, best, improved = trial, s, True
    return flat


def _mesh_sums(mesh, links, volumes, weights) -> tuple[dict[str, float], float, float]:
    """In one pass over the groups of the mesh: `placement_cost_breakdown` (each dimension's slowest group), the
    weighted sum of every group's time (where the cost takes the slowest), and the weighted sum over every ring edge
    and pipeline pair of its alpha plus its share of its group's volume over its bandwidth: how slow the links the
    groups use are, where a group's time reads only its slowest (a ring of four straddling two islands has two slow
    edges, or four)."""
    volume, w = _volumes(*volumes), _weights(weights)
    cost = {"tp": 0.0, "pp": 0.0, "dp": 0.0, "cp": 0.0}
    group_sum = edge_sum = 0.0
    for dim, group in _groups(np.asarray(mesh)):
        ends = [tuple(group)] if dim == "pp" else _ring_edges(group)
        edges = [link(links, int(i), int(j)) for i, j in ends]
        time = _group_time(dim, group, edges, volume[dim])
        cost[dim] = max(cost[dim], time)
        group_sum += w[dim] * time
        share = volume[dim] * (1.0 if dim == "pp" else _ring_factor(len(group)))
        for alpha, bandwidth in edges:
            edge_sum += w[dim] * (alpha + share / bandwidth)
    cost["total"] = w["tp"] * cost["tp"] + w["pp"] * cost["pp"] + w["dp"] * cost["dp"] + w["cp"] * cost["cp"]
    return cost, group_sum, edge_sum


def _group_time(dim: str, group, edges: list[tuple[float, float]], volume: float) -> float:
    """Seconds of one group over its `edges` ((alpha, bandwidth) of its ring's links, or its pipeline pair's): a
    pipeline pair's transfer, or a ring all-reduce at its largest alpha and smallest bandwidth (comm.py's rules; 0
    for a one-rank ring)."""
    if dim == "pp":
        return transfer_time(volume, *edges[0])
    if not edges:
        return 0.0
    return ring_time("all_reduce", volume, len(group), max(a for a, _ in edges), min(bw for _, bw in edges))


def _cost(mesh, links, volumes, weights) -> dict[str, float]:
    tp_bytes, pp_bytes, dp_bytes, cp_bytes = volumes
    return placement_cost_breakdown(mesh, links, tp_bytes, pp_bytes, dp_bytes, weights, cp_bytes)


def _solve_by_nodes(dims: ParallelDims, links, volumes, weights, time_limit_s) -> np.ndarray:
    """TP groups inside a node; whole nodes' chunks of the default order swapped to lower the cost, and where the
    links inside a host differ, two positions of one host's block."""
    g = links.devices_per_domain
    start = default_mesh(dims.pp, dims.dp, dims.tp, dims.cp)
    if dims.tp > g or g % dims.tp:
        return start  # a TP group would straddle nodes differently per chunk: keep the default order
    block = launch_block(links)
    moves = _swaps(dims.world_size, block, g, within=not _uniform_hosts(links, block))
    return _local_search(start, links, volumes, weights, time.monotonic() + time_limit_s, moves)


def _uniform_hosts(links: LinkModel, block: int) -> bool:
    """Whether every pair of devices on one host is joined alike (then no swap inside a host changes a cost)."""
    n = links.num_devices
    return len({link(links, i, j) for k in range(0, n, block) for i in range(k, k + block)
                for j in range(k, k + block) if i != j}) <= 1
