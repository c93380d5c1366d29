"""The order each pipeline schedule runs its compute actions in, one builder per schedule.

A builder takes (rank, pp, vpp, m) and returns that rank's actions in execution order, each a plain tuple (kind,
virtual stage, micro-batch) with kind one of the codes F (forward), B (full backward), I (backward for inputs only)
and W (backward for weights only) below: a 1T model's pipeline runs hundreds of thousands of actions, and the
search builds them faster as tuples (`Action` is their readable form, made when a schedule's actions are read).
Each equals the order torch.distributed.pipelining 2.13 runs for its class (tests/test_schedules_torch.py), except
`interleaved_combined_order` and `one_f_one_b_combined_order`, Megatron-Core's orders when it overlaps the pairs
(no torch class runs them). Idle
steps (torch's `None`) and communication actions are left out: a rank simply waits for its inputs. The registry in
`spec/schedules.py` names which builder serves which schedule. Pure Python.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass


F, B, I, W = 0, 1, 2, 3  # action kind codes; KINDS[code] is the kind's letter
KINDS = "FBIW"
Op = tuple[int, int, int]  # (kind code, stage, micro-batch)


@dataclass(frozen=True)
class Action:
    kind: str  # "F" forward, "B" full backward, "I" backward for inputs only, "W" backward for weights only
    stage: int  # virtual stage index 0..num_stages-1 in model order
    microbatch: int

    def __str__(self) -> str:  # torch's notation: stage, kind, micro-batch ("3F0")
        return f"{self.stage}{self.kind}{self.microbatch}"


# ---------------------------------------------------------------------------------------------------------------
# Single stage per rank (ScheduleGPipe, Schedule1F1B `_step_microbatches`)


def gpipe_order(rank: int, pp: int, vpp: int, m: int) -> list[Op]:
    return [(F, rank, i) for i in range(m)] + [(B, rank, i) for i in range(m)]


def one_f_one_b_order(rank: int, pp: int, vpp: int, m: int, extra_warmup: int = 0) -> list[Op]:
    warmup = min(m, pp - rank + extra_warmup)  # rank r runs pp - r forwards before its first backward
    ops = [(F, rank, i) for i in range(warmup)]
    fwd, bwd = warmup, 0
    while True:
        ops.append((B, rank, bwd))
        bwd += 1
        if fwd == m:
            break
        ops.append((F, rank, fwd))
        fwd += 1
    ops.extend((B, rank, i) for i in range(bwd, m))
    return ops


def one_f_one_b_combined_order(rank: int, pp: int, vpp: int, m: int) -> list[Op]:
    """Megatron-Core's `combined_1f1b_schedule_for_no_pipelining` (core_v0.14.0 pipeline_parallel/combined_1f1b.py,
    with `overlap_moe_expert_parallel_comm` and pp == 1): the first forward alone, then each next forward together
    with the previous micro-batch's backward, then the last backward alone: 1F1B with one more warmup forward.
    Megatron refuses the flag with pp > 1 without a virtual pipeline, so there the order is the plain one."""
    return one_f_one_b_order(rank, pp, vpp, m, extra_warmup=1 if pp == 1 else 0)


def one_f_one_b_combined_pairs(rank: int, pp: int, vpp: int, m: int) -> tuple[int, ...]:
    """The positions in `one_f_one_b_combined_order` of the forwards run together with the backward after them:
    every forward followed by another micro-batch's backward with pp == 1 (one micro-batch: none), none otherwise."""
    if pp != 1:
        return ()
    ops = one_f_one_b_combined_order(rank, pp, vpp, m)
    return tuple(j for j in range(len(ops) - 1) if ops[j][0] == F and ops[j + 1][0] == B and ops[j + 1][2] != ops[j][2])


# ---------------------------------------------------------------------------------------------------------------
# Multi-stage schedules: ports of torch's `_calculate_single_rank_operations` with the None steps dropped.


def looped_bfs_order(rank: int, pp: int, vpp: int, m: int) -> list[Op]:
    stages = range(rank, pp * vpp, pp)
    ops = [(F, s, i) for s in stages for i in range(m)]
    ops += [(B, s, i) for s in reversed(stages) for i in reversed(range(m))]
    return ops


# Megatron's combined 1F1B runs one more warmup forward than its interleaved order (`interleaved_combined_order`).
COMBINED_EXTRA_WARMUP = 1


def _round_size(pp: int, m: int) -> int:
    """Micro-batches per round of `interleaved_order` (each chunk runs a round's before the next chunk's)."""
    return m // max(1, m // pp)


def _interleaved_warmup(rank: int, pp: int, vpp: int, m: int, zero_bubble: bool, extra_warmup: int) -> int:
    """The forwards `interleaved_order` runs on `rank` before its first backward (warmup), at most all vpp x m."""
    return min((vpp - 1) * _round_size(pp, m) + (1 if zero_bubble else 2) * (pp - 1 - rank) + extra_warmup, m * vpp)


def interleaved_order(rank: int, pp: int, vpp: int, m: int, zero_bubble: bool = False,
                      extra_warmup: int = 0) -> list[Op]:
    """torch's `_get_1f1b_rank_ops` for ScheduleInterleaved1F1B (zero_bubble=False) and
    ScheduleInterleavedZeroBubble (zero_bubble=True: I instead of B, W deferred by `rank` steps); `extra_warmup`
    more forwards before the first backward (Megatron's combined 1F1B: `interleaved_combined_order`)."""
    per_round = _round_size(pp, m)
    warmup = _interleaved_warmup(rank, pp, vpp, m, zero_bubble, extra_warmup)
    forwards = vpp * m
    # Step k runs a forward while k < vpp*m, in chunk (k // per_round) % vpp, and from k = warmup on a backward, in
    # the chunks in reverse; each chunk's micro-batches go in order.
    fwd_mb = [0] * (pp * vpp)
    bwd_mb = [0] * (pp * vpp)
    bkind = I if zero_bubble else B
    ops: list[Op] = []
    append = ops.append
    weights: list[Op] = []  # the W of each backward, in the backwards' order (torch runs them in that order)
    n_w = 0
    for step in range(forwards + warmup):
        if step < forwards:  # warmup and steady phases run a forward
            s = ((step // per_round) % vpp) * pp + rank
            append((F, s, fwd_mb[s]))
            fwd_mb[s] += 1
        if step >= warmup:  # steady and cooldown phases run a backward
            s = (vpp - 1 - ((step - warmup) // per_round) % vpp) * pp + rank
            i = bwd_mb[s]
            bwd_mb[s] = i + 1
            append((bkind, s, i))
            if zero_bubble:
                weights.append((W, s, i))
                if step - warmup >= rank:  # W trails its backward by `rank` steps
                    append(weights[n_w])
                    n_w += 1
    ops.extend(weights[n_w:])
    return ops


def interleaved_combined_order(rank: int, pp: int, vpp: int, m: int) -> list[Op]:
    """Megatron-Core's interleaved 1F1B with `overlap_moe_expert_parallel_comm` (core_v0.14.0
    pipeline_parallel/schedules.py `get_pp_rank_microbatches`): Megatron's own interleaved order (the same as
    torch's for whole rounds of pp micro-batches, microbatch_group_size_per_vp_stage = pp) with one more warmup
    forward, so that each steady step's forward and backward are of different micro-batches and independent; each
    steady step then runs as one combined forward-backward (`interleaved_combined_pairs`)."""
    return interleaved_order(rank, pp, vpp, m, extra_warmup=COMBINED_EXTRA_WARMUP)


def interleaved_combined_pairs(rank: int, pp: int, vpp: int, m: int) -> tuple[int, ...]:
    """The positions in `interleaved_combined_order(rank, ...)` of the forwards Megatron-Core runs together with the
    backward right after them (`combined_1f1b_schedule_for_interleaved_pipelining`, called for every steady-state
    step of `forward_backward_pipelining_with_interleaving`, core_v0.14.0): each steady step is a forward then a
    backward, warmup runs forwards only and cooldown backwards only, so every steady forward (the ones past the
    warmup). Where the warmup takes every forward (vpp x m at most its count: m = pp at pp 2) there is no steady
    step and no pair: the last warmup forward and the first cooldown backward depend on each other through the
    other ranks (pairing them deadlocked the simulation)."""
    ops = interleaved_combined_order(rank, pp, vpp, m)
    warmup = _interleaved_warmup(rank, pp, vpp, m, False, COMBINED_EXTRA_WARMUP)
    pairs, forwards = [], 0
    for j, (kind, _, _) in enumerate(ops[:-1]):
        if kind == F:
            if forwards >= warmup and ops[j + 1][0] == B:
                pairs.append(j)
            forwards += 1
    return tuple(pairs)


def zb_h1_order(rank: int, pp: int, vpp: int, m: int) -> list[Op]:
    return interleaved_order(rank, pp, vpp, m, zero_bubble=True)


def zbv_order(rank: int, pp: int, vpp: int, m: int) -> list[Op]:
    n = max(2 * pp - 1, m)  # torch pads to 2pp-1 micro-batches, then drops actions of the padding ones
    s0, s1 = rank, 2 * pp - 1 - rank
    ops: list[Op] = []
    f0 = f1 = b0 = b1 = 0
    for _ in range(2 * (pp - rank) - 1):
        ops.append((F, s0, f0))
        f0 += 1
    for _ in range(rank):
        ops += [(F, s1, f1), (F, s0, f0)]
        f1 += 1
        f0 += 1
    for _ in range(pp - rank):
        ops += [(F, s1, f1), (I, s1, b1), (W, s1, b1)]
        f1 += 1
        b1 += 1
    while f1 < f0 or f0 < n:
        if f0 < n:
            ops.append((F, s0, f0))
            f0 += 1
        ops += [(I, s0, b0), (W, s0, b0), (F, s1, f1), (I, s1, b1), (W, s1, b1)]
        b0 += 1
        f1 += 1
        b1 += 1
    w0, w1 = b0, b1
    for _ in range(rank):
        ops += [(I, s0, b0), (I, s1, b1)]
        b0 += 1
        b1 += 1
    for _ in range(pp - rank):
        ops += [(I, s0, b0), (W, s0, w0)]
        b0 += 1
        w0 += 1
    ops += [(W, s1, i) for i in range(w1, b1)]
    ops += [(W, s0, i) for i in range(w0, b0)]
    return [op for op in ops if op[2] < m]


def dualpipev_order(rank: int, pp: int, vpp: int, m: int) -> list[Op]:
    """torch's ScheduleDualPipeV order. Its OVERLAP_F_B actions (a forward of one stage overlapped with a full
    backward of the other) appear here as the two separate actions F then B, the order torch's runtime runs them
    without a user-registered OVERLAP_F_B function; `dualpipev_pairs` says which they are."""
    return list(_dualpipev(rank, pp, m)[0])


def dualpipev_pairs(rank: int, pp: int, vpp: int, m: int) -> tuple[int, ...]:
    """The positions in `dualpipev_order(rank, ...)` of the forwards that torch's ScheduleDualPipeV pairs with the
    full backward right after them in one OVERLAP_F_B action: every F-then-B of its main and fifth steps but the
    last rank's first (torch leaves that one unpaired to shorten the bubble)."""
    return _dualpipev(rank, pp, m)[1]


@functools.lru_cache(maxsize=256)
def _dualpipev(rank: int, pp: int, m: int) -> tuple[tuple[Op, ...], tuple[int, ...]]:
    """(order, pair positions) of one rank, remembered: a schedule's build reads every rank's order, then its
    pairs, from the same walk. Stage s0 = rank and s1 = 2pp-1-rank each count their next forward (f0, f1) and next
    backward, B or I (b0, b1); an I leaves its W pending, and the oldest pending W runs where torch's order places
    one (`weight`)."""
    s0, s1 = rank, 2 * pp - 1 - rank
    pairs: list[int] = []
    ops: list[Op] = []
    append = ops.append
    weights: collections.deque[Op] = collections.deque()  # pending W after I, oldest first

    def weight() -> None:
        if weights:
            append(weights.popleft())

    warm = (pp - rank - 1) * 2
    ops.extend((F, s0, i) for i in range(warm))
    f0, f1, b0, b1 = warm, 0, 0, 0
    for _ in range(rank + 1):
        append((F, s0, f0))
        append((F, s1, f1))
        f0, f1 = f0 + 1, f1 + 1
    for _ in range(pp - rank - 1):
        append((I, s1, b1))
        weights.append((W, s1, b1))
        b1 += 1
        weight()
        append((F, s1, f1))
        f1 += 1
    for i in range(m - 2 * pp + rank + 1):
        if i or rank != pp - 1:  # torch does not overlap the last rank's first pair
            pairs.append(len(ops))
        append((F, s0, f0))
        append((B, s1, b1))
        pairs.append(len(ops))
        append((F, s1, f1))
        append((B, s0, b0))
        f0, b1, f1, b0 = f0 + 1, b1 + 1, f1 + 1, b0 + 1
    for _ in range(pp - rank - 1):
        append((B, s1, b1))
        pairs.append(len(ops))
        append((F, s1, f1))
        append((B, s0, b0))
        b1, f1, b0 = b1 + 1, f1 + 1, b0 + 1
    steps = rank + 1
    zb = False
    for i in range(steps):
        if i == steps // 2 and rank % 2 == 1:
            zb = True
        append((I if zb else B, s1, b1))
        if zb:
            weights.append((W, s1, b1))
        b1 += 1
        if i == steps // 2 and rank % 2 == 0:
            zb = True
        append((I if zb else B, s0, b0))
        if zb:
            weights.append((W, s0, b0))
        b0 += 1
    for _ in range(pp - rank - 1):
        weight()
        append((I if zb else B, s0, b0))
        if zb:
            weights.append((W, s0, b0))
        b0 += 1
    for _ in range(rank + 1):
        weight()
    return tuple(ops), tuple(pairs)


def dualpipe_order(rank: int, pp: int, vpp: int, m: int) -> list[Op]:
    """DeepSeek's bidirectional DualPipe (deepseek-ai/DualPipe `DualPipe.step`, the eight steps of the report's
    Fig. 5), its F&B pairs written as F then B (`dualpipe_pairs` says which). Stage d * pp + k is model stage k in
    direction d; micro-batches 0 .. m/2-1 run in direction 0 (entering at rank 0), m/2 .. m-1 in direction 1
    (entering at rank pp-1).

    `DualPipe.step` runs on rank r, with h = min(r, pp-1-r), the steps of `DualPipeV.step` on rank h of pp/2 ranks
    with m/2 micro-batches (`_dualpipev`): the same counts per step, the same zero-bubble switch and the same
    unpaired first F&B on the middle ranks (h = pp/2 - 1; dualpipev's last rank). Its phase 0 is the shallower of
    the rank's two stages (direction 0 on the first half of the ranks, direction 1 on the second), dualpipev's
    first chunk; its phase 1 the deeper one, dualpipev's second chunk. So each rank's order is dualpipev's with the
    stages and micro-batches renamed, and each direction passes the ranks as dualpipev's V passes its chunks."""
    return list(_dualpipe(rank, pp, m)[0])


def dualpipe_pairs(rank: int, pp: int, vpp: int, m: int) -> tuple[int, ...]:
    """The positions in `dualpipe_order(rank, ...)` of the forwards run as one overlapped F&B with the full backward
    right after them (`DualPipe._forward_backward_chunk`): those of dualpipev's order it renames."""
    return _dualpipe(rank, pp, m)[1]


@functools.lru_cache(maxsize=256)
def _dualpipe(rank: int, pp: int, m: int) -> tuple[tuple[Op, ...], tuple[int, ...]]:
    half = pp // 2
    h = min(rank, pp - 1 - rank)
    ops, pairs = _dualpipev(h, half, m // 2)
    own, mirror = rank, 2 * pp - 1 - rank  # direction 0's stage on this rank, direction 1's
    shallow, deep = (own, mirror) if rank < half else (mirror, own)
    stage = {h: shallow, 2 * half - 1 - h: deep}
    offset = {own: 0, mirror: m // 2}
    renamed = []
    for k, s, i in ops:
        s = stage[s]
        renamed.append((k, s, i + offset[s]))
    return tuple(renamed), pairs


# ---------------------------------------------------------------------------------------------------------------
# Sequence-level 1F1B (Seq1F1B, Sun et al., arXiv 2406.03488): no torch class runs it.


def seq1f1b_order(rank: int, pp: int, vpp: int, m: int, seq_chunks: int = 1) -> list[Op]:
    """1F1B over the k = `seq_chunks` chunks of each of the m micro-batches' sequences. The units that flow are
    numbered u = i * k + j (micro-batch i, chunk j); forwards run in that order, each micro-batch's chunks in causal
    order. Rank r runs (pp - r - 1) + (k - 1) forwards first, then one forward and one backward in turn, then the
    remaining backwards, as the authors' Megatron-LM schedule does (MayDomine/Seq1F1B,
    `forward_backward_pipelining_without_interleaving`); the backwards take the oldest micro-batch's chunks last
    chunk first (its "partially ordered queue"), since chunk j's backward produces the key/value gradients of the
    chunks before it. With k == 1 this is `one_f_one_b_order`."""
    k = seq_chunks
    units = m * k
    warmup = min(units, pp - rank - 1 + k - 1)
    backward = [(B, rank, i * k + j) for i in range(m) for j in reversed(range(k))]
    ops = [(F, rank, u) for u in range(warmup)]
    for step in range(units - warmup):
        ops.append((F, rank, warmup + step))
        ops.append(backward[step])
    ops.extend(backward[units - warmup:])
    return ops
