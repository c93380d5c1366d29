"""Critical-path simulation of a pipeline schedule.

Each rank runs its action list (from `spec/schedules.py`) in order on one compute stream. An action starts when the
rank is free and its input is there:

    F(s, i)      after F(s-1, i) (+ p2p_time(s-1, s) if the stages sit on different ranks); stage 0 has no input
    B/I(s, i)    after B/I(s+1, i) (+ p2p_time(s+1, s) across ranks); the last stage after its own F(s, i)
    W(s, i)      after I(s, i) (same rank)

Under two directions (dualpipe, `Schedule.directions`) each micro-batch passes its direction's chain of stages
only (`Schedule.chain`): the first and last stage above are its chain's, and the costs may be given per model stage
(`Schedule.model_stage`), each copy of a model stage costing the same.

With FSDP, `allgather_time[s]` (the parameter gather of stage s) runs on the rank's DP comm stream, one gather per
stage in the order the rank first uses its stages, all issued at time 0; no compute of stage s starts before its
gather ends. `reduce_time[s]` (gradient reduction) starts on the same comm stream after the last B or W of stage s.

Overlap in buckets: with `gather_buckets[s] = n`, the gather of stage s is n equal buckets and its first forward
starts once the first bucket is there, each bucket prefetched while the layers of the one before compute: that
forward ends no earlier than the whole gather's end plus the compute of the last bucket's share (1/n of it). With
`reduce_buckets[s] = n`, the reduction of stage s is n equal buckets, bucket j ready when the stage's last B or W is
(j+1)/n done, so only the last bucket's reduction (and whatever the stream still has queued) follows the
backward. With `reduce_every_microbatch` every micro-batch's backward of a stage starts a reduction of
`reduce_time[s]` the same way (FSDP reduce-scattering each micro-batch's gradients), all on the rank's stream in the
order their backwards end. The buckets are even shares of the stage.

Contention: a collective running beside compute takes a share f of the device from it (`contention`, the profile's
`collective_sm_share`: the SMs and memory bandwidth its kernels hold), so a phase of compute C beside a collective of
M seconds lasts `beside(C, M, f)` = max(M, C + f * M). On the DP comm stream this is charged after the simulation: a
rank's compute ends f x (the seconds its stream's gathers and reduction buckets ran while the rank computed) later,
the time added to its last action, not passed on to the ranks it feeds. `reduce_contending[s]` is the share of
stage s's reduction time to charge (the rest is charged in the stage's own costs, such as ZeRO-3's re-gathers that
share the stream; default all of it).

Overlapped pairs: a schedule that pairs a forward with the full backward right after it (`Schedule.paired`,
DualPipe's F&B) runs each pair as one action when the costs state the communication inside each pass
(`StageCosts.forward_comm` / `backward_comm`, the token exchange; None: nothing overlaps, the pair runs as its F then
its B). The pair starts once the rank is free and both inputs are there, and both end together after

    max(Fm, Bc + f * Fm) + max(Bm, Fc + f * Bm)

where Fc, Bc are the forward's and backward's seconds less their communication Fm, Bm, and f is
`StageCosts.comm_sm_share`: each one's communication runs during the other's compute, and while it runs it takes f of
the device from that compute (`beside`). What the
compute cannot cover stays exposed; compute never hides compute, so a pair lasts at least Fc + Bc and at most F + B.

The simulation is dependency-driven and linear in the number of actions: a rank runs until its next action waits on
an input not yet computed, and parks on that input; computing it wakes the rank. A rank still parked at the end is a
deadlock, reported with an AssertionError naming the rank and the action. Wide pipelines (a 1T model's 128 stages
run hundreds of thousands of actions) are computed a wave of independent actions at a time with numpy instead, on
a dependency graph worked out once per schedule (`_Graph`); every time is the same to the last bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, chain
from typing import Callable, Sequence

import numpy as np

from autoconf.spec.schedule_orders import B as _B, F as _F, I as _I, KINDS as _KIND, W as _W
from autoconf.spec.schedules import Action, Schedule


@dataclass(frozen=True)
class StageCosts:
    """Seconds per virtual stage for one micro-batch. A full "B" costs backward_input + backward_weight. For a schedule
    whose units are sequence chunks (`Schedule.seq_chunks` k > 1, seq1f1b) the lists may instead hold one entry per
    stage and chunk, chunk j of stage s at s * k + j (chunks of one sequence differ in attention work)."""

    forward: Sequence[float]
    backward_input: Sequence[float]
    backward_weight: Sequence[float]
    # Per stage, the seconds of its forward and of its input backward that are communication an overlapped pair can
    # hide (module docstring), and the share of the device that communication takes from compute beside it.
    forward_comm: Sequence[float] | None = None
    backward_comm: Sequence[float] | None = None
    comm_sm_share: float = 0.0

    @classmethod
    def uniform(cls, num_stages: int, forward: float, backward_input: float, backward_weight: float) -> "StageCosts":
        return cls([forward] * num_stages, [backward_input] * num_stages, [backward_weight] * num_stages)


@dataclass
class Timeline:
    """Result of `simulate`.

    events: per rank, (action, start, end) of each compute action, in the rank's order.
    comm_events: per rank, (kind "allgather"/"reduce", stage, start, end) on the rank's DP comm stream.
    makespan: end of the last compute or DP comm event (the step starts at 0).
    compute_time_per_rank: busy compute seconds of each rank.
    bubble_fraction: idle share of the ranks' time, 1 - sum(compute_time_per_rank) / (pp * makespan).
        With uniform stages and no communication this is the textbook number: GPipe and 1F1B
        (p-1)/(m+p-1), interleaved 1F1B (p-1)/(v*m+p-1).
    peak_inflight: per virtual stage, the most micro-batches whose forward ran but whose activations are not yet
        freed (freed at B, or at I for split backward).
    peak_inflight_weight: per virtual stage, the most micro-batches whose I ran but whose W has not (the inputs and
        output gradients the weight gradient still needs). Zero for schedules without split backward.
    peak_inflight_rank: per rank, the most stage-micro-batches its stages hold at once (forward done, B or I not yet;
        in units of one stage's activations for one micro-batch, summed over the rank's stages).
    peak_inflight_joint: per rank, the most it holds at once counting also those waiting for W, each as
        WEIGHT_GRAD_ACTIVATION_SHARE of one, at the same instant of its order; peak_inflight_rank without W.
    overlap_saved_per_rank: per rank, the seconds its overlapped pairs saved against running each F then its B
        (empty when no pair overlapped). compute_time_per_rank counts the pairs as they ran.
    contention_per_rank: per rank, the compute seconds its DP collectives took from it (`contention`), which its
        last action's end and compute_time_per_rank include (empty without contention).
    """

    events: list[list[tuple[Action, float, float]]]
    comm_events: list[list[tuple[str, int, float, float]]]
    makespan: float
    compute_time_per_rank: list[float]
    bubble_fraction: float
    peak_inflight: list[int]
    peak_inflight_weight: list[int]
    peak_inflight_rank: list[int]
    overlap_saved_per_rank: list[float] = dataclasses.field(default_factory=list)
    peak_inflight_joint: list[float] = dataclasses.field(default_factory=list)
    contention_per_rank: list[float] = dataclasses.field(default_factory=list)

    @property
    def compute_end(self) -> float:
        """End of the last compute action."""
        return max(self.compute_end_per_rank, default=0.0)

    @property
    def compute_end_per_rank(self) -> list[float]:
        """End of each rank's last compute action (0 for a rank without any)."""
        if isinstance(self.events, _Events):
            return self.events.rank_ends()
        return [ev[-1][2] if ev else 0.0 for ev in self.events]


class _Events(SequenceABC):
    """`Timeline.events` of a simulation, each rank's (action, start, end) list built when first read: the search
    reads only the makespan and the busy times of most timelines. `starts` and `ends` (lists or arrays) hold every
    action's times, rank by rank (`offsets[r]` is rank r's first)."""

    def __init__(self, actions, starts, ends, offsets: list[int]):
        self.actions, self.starts, self.ends, self.offsets = actions, starts, ends, offsets
        self._rows: dict[int, list] = {}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, rank):
        if isinstance(rank, slice):
            return [self[r] for r in range(len(self))[rank]]
        rank = range(len(self))[rank]  # negative indices, and IndexError past the end
        if rank not in self._rows:
            a, b = self.offsets[rank], self.offsets[rank + 1]
            starts, ends = self.starts[a:b], self.ends[a:b]
            if isinstance(starts, np.ndarray):
                starts, ends = starts.tolist(), ends.tolist()
            self._rows[rank] = list(zip(self.actions[rank], starts, ends))
        return self._rows[rank]

    def rank_ends(self) -> list[float]:
        """End of each rank's last action (a rank's actions end in order; 0 for a rank without actions)."""
        return [float(self.ends[b - 1]) if b > a else 0.0 for a, b in zip(self.offsets, self.offsets[1:])]


# Pipelines of at least this many ranks are simulated a wave at a time (`_Graph`); narrower ones, whose waves hold
# too few actions to repay numpy's per-call cost, one action at a time (`_run_in_order`). Both give the same times.
WAVES_FROM_RANKS = 16
# Share of a block's activations that the weight-gradient pass (W) still needs after I: the inputs of the linear
# layers (QKV, output projection, both MLP matrices) -- 14 of the 34 s*b*h units of a GPT block.
WEIGHT_GRAD_ACTIVATION_SHARE = 14 / 34


def simulate(
    schedule: Schedule,
    costs: StageCosts,
    p2p_time: Callable[[int, int], float] | float = 0.0,
    allgather_time: Sequence[float] | None = None,
    reduce_time: Sequence[float] | None = None,
    gather_buckets: Sequence[int] | None = None,
    reduce_buckets: Sequence[int] | None = None,
    reduce_every_microbatch: bool = False,
    contention: float = 0.0,
    reduce_contending: Sequence[float] | None = None,
) -> Timeline:
    """Simulate one training step of `schedule` with per-stage `costs`; see the module docstring for the rules.

    p2p_time: seconds to move one micro-batch's activation (or its gradient) between two stages on different ranks,
    a constant or a function (from_stage, to_stage) -> seconds.
    """
    S = schedule.num_stages
    R = schedule.pp
    s2r = schedule.stage_to_rank
    if schedule.directions > 1 and len(costs.forward) == schedule.chain:
        costs, allgather_time, reduce_time, gather_buckets, reduce_buckets, reduce_contending = _per_schedule_stage(
            schedule, costs, allgather_time, reduce_time, gather_buckets, reduce_buckets, reduce_contending)
    head, tail = _chain_ends(schedule)
    fwd = [float(x) for x in costs.forward]
    bi = [float(x) for x in costs.backward_input]
    bw = [float(x) for x in costs.backward_weight]
    # Costs per stage, or per stage and sequence chunk (StageCosts): action (s, u) reads entry s * chunks + u % chunks.
    chunks = schedule.seq_chunks if len(fwd) != S else 1
    assert len(fwd) == len(bi) == len(bw) == S * chunks, f"costs describe {len(fwd)} stages, the schedule has {S}"
    dur = (fwd, [bi[s] + bw[s] for s in range(len(fwd))], bi, bw)
    pairs = _pair_seconds(schedule, costs, dur) if costs.forward_comm is not None and schedule.paired else None

    # p2p delay into stage s: forward from s-1, backward from s+1 (zero when both stages share a rank)
    if callable(p2p_time):
        pf = [p2p_time(s - 1, s) if not head[s] and s2r[s - 1] != s2r[s] else 0.0 for s in range(S)]
        pb = [p2p_time(s + 1, s) if not tail[s] and s2r[s + 1] != s2r[s] else 0.0 for s in range(S)]
    else:
        c = float(p2p_time)
        pf = [c if not head[s] and s2r[s - 1] != s2r[s] else 0.0 for s in range(S)]
        pb = [c if not tail[s] and s2r[s + 1] != s2r[s] else 0.0 for s in range(S)]

    graph = _graph(schedule) if R >= WAVES_FROM_RANKS else None

    # FSDP gathers: per rank, in first-use order, back to back from time 0
    ready_at = None
    floor = {}  # stage -> earliest end of its first forward: with gather buckets the last one arrives during it
    comm_events: list[list[tuple[str, int, float, float]]] = [[] for _ in range(R)]
    comm_busy: list[list[tuple[float, float, float]]] = [[] for _ in range(R)]  # (start, end, share charged)
    comm_free = [0.0] * R
    if allgather_time is not None:
        ready_at = [0.0] * S
        first_use = graph.first_use if graph is not None else _first_use(schedule)
        for r in range(R):
            t = 0.0
            for s in first_use[r]:
                g = float(allgather_time[s])
                comm_events[r].append(("allgather", s, t, t + g))
                comm_busy[r].append((t, t + g, 1.0))
                n = gather_buckets[s] if gather_buckets is not None else 1
                ready_at[s] = t + g / n
                t += g
                if n > 1:
                    floor[s] = t + (1.0 / n) * fwd[s * chunks]
            comm_free[r] = t

    run = graph.run if graph is not None else partial(_run_in_order, schedule)
    starts, ends, offsets, busy, last_bwd = run(dur, pf, pb, ready_at, floor, chunks, pairs)
    clock = [float(ends[b - 1]) if b > a else 0.0 for a, b in zip(offsets, offsets[1:])]
    last_bwd_start = [float(starts[i]) if i >= 0 else 0.0 for i in last_bwd]
    last_bwd = [float(ends[i]) if i >= 0 else 0.0 for i in last_bwd]

    # gradient reductions: after the last B/W of each stage (bucket by bucket during it), or after every micro-batch's,
    # in the order those backwards end, on the rank's comm stream
    if reduce_time is not None:
        for r in range(R):
            t = comm_free[r]
            windows = (_backward_windows(schedule, r, starts, ends, offsets) if reduce_every_microbatch else
                       sorted((last_bwd[s], last_bwd_start[s], s) for s in schedule.stages_of_rank(r)))
            for end, begin, s in windows:
                n = reduce_buckets[s] if reduce_buckets is not None else 1
                share = float(reduce_time[s]) / n
                charged = 1.0 if reduce_contending is None else float(reduce_contending[s])
                first = None
                for j in range(n):
                    start = max(t, begin + (end - begin) * (j + 1) / n)
                    first = start if first is None else first
                    t = start + share
                    comm_busy[r].append((start, t, charged))
                comm_events[r].append(("reduce", s, first, t))
            comm_free[r] = t

    lost = [0.0] * R if contention > 0.0 else []
    for r in range(len(lost)):
        a, b = offsets[r], offsets[r + 1]
        if b > a and comm_busy[r]:
            lost[r] = contention * _computing_during(starts[a:b], ends[a:b], comm_busy[r])
            ends[b - 1] += lost[r]
            clock[r] += lost[r]
            busy[r] += lost[r]
    makespan = max(max(clock), max(comm_free)) if R else 0.0
    events = _Events(schedule.actions, starts, ends, offsets)
    peak, peak_w, peak_rank, joint = order_peaks(schedule)
    total = sum(busy)
    bubble = 1.0 - total / (R * makespan) if makespan > 0 else 0.0
    saved = []
    if pairs:
        saved = [sum(dur[_F][acts[j][1]] + dur[_B][acts[j + 1][1]] - pairs[acts[j][1], acts[j + 1][1]]
                     for j in schedule.paired[r]) for r, acts in enumerate(schedule.compiled)]
    return Timeline(events, comm_events, makespan, busy, bubble, peak, peak_w, peak_rank, saved, joint, lost)


def busy_per_rank(schedule: Schedule, costs: StageCosts, num_microbatches: int) -> list[float]:
    """Each rank's compute seconds over a step of `num_microbatches` micro-batches of `schedule`'s kind (built at any
    count): each of its stages runs every unit that passes it (`Schedule.microbatches_of_stage`; each sequence chunk
    of each micro-batch) once forward and once backward, whole (B) or split (I and W). That is what `simulate` counts
    in compute_time_per_rank at that count, less the compute its collectives take (`contention`); `costs` must not
    overlap pairs (forward_comm None: a pair runs shorter than its parts)."""
    whole = [f + bi + bw for f, bi, bw in zip(costs.forward, costs.backward_input, costs.backward_weight)]
    # entries per schedule stage, or per model stage (two directions), each one or one per sequence chunk
    stages = schedule.chain if schedule.directions > 1 and len(whole) == schedule.chain else schedule.num_stages
    chunks = len(whole) // stages
    per_unit = [sum(whole[s * chunks:(s + 1) * chunks]) / chunks for s in range(stages)]  # a micro-batch's mean chunk
    units = num_microbatches * schedule.seq_chunks / schedule.directions
    return [units * sum(per_unit[s % stages] for s in schedule.stages_of_rank(r)) for r in range(schedule.pp)]


def beside(compute: float, comm: float, share: float) -> float:
    """Seconds of `compute` seconds of work run beside a collective of `comm` seconds that takes `share` of the
    device while it runs: max(comm, compute + share * comm). At least both and at most their sum (share <= 1)."""
    return max(comm, compute + share * comm)


def _computing_during(starts, ends, intervals) -> float:
    """Sum over `intervals` [(start, end, weight)] of weight x the seconds within [start, end] during which a rank
    computes, its actions running from `starts` to `ends` in its order (a paired backward repeats its forward's
    span: the spans' union is counted once)."""
    s = np.asarray(starts, dtype=np.float64)
    e = np.asarray(ends, dtype=np.float64)
    reach = np.maximum.accumulate(np.concatenate(([-np.inf], e[:-1])))
    s = np.maximum(s, reach)  # each span less what the spans before it covered
    length = np.maximum(e - s, 0.0)
    done = np.concatenate(([0.0], np.cumsum(length)))

    def computed_by(t: np.ndarray) -> np.ndarray:
        i = np.searchsorted(s, t, side="right") - 1
        inside = np.clip(t - s[np.maximum(i, 0)], 0.0, length[np.maximum(i, 0)])
        return np.where(i >= 0, done[np.maximum(i, 0)] + inside, 0.0)

    lo, hi, weight = np.array(intervals, dtype=np.float64).reshape(-1, 3).T  # (one conversion: the hot line)
    return float(np.sum(weight * (computed_by(hi) - computed_by(lo))))


def _chain_ends(schedule: Schedule) -> tuple[list[bool], list[bool]]:
    """Per stage, whether it is the first and whether it is the last stage of its micro-batches' chain."""
    n = schedule.chain
    S = schedule.num_stages
    return [s % n == 0 for s in range(S)], [s % n == n - 1 for s in range(S)]


def _backward_windows(schedule: Schedule, rank: int, starts, ends, offsets) -> list[tuple[float, float, int]]:
    """(end, start, stage) of the backward that completes each micro-batch of each of `rank`'s stages
    (`Schedule.last_backwards`), in the order they end."""
    base = offsets[rank]
    return sorted((float(ends[base + i]), float(starts[base + i]), s) for i, s in schedule.last_backwards[rank])


def _per_schedule_stage(schedule: Schedule, costs: StageCosts, *per_stage):
    """`costs` and the other per-stage lists (None stays None) given per model stage, per schedule stage: each
    copy of a model stage (two directions) costs what the model stage costs."""
    model = [schedule.model_stage(s) for s in range(schedule.num_stages)]

    def tiled(xs):
        return None if xs is None else [xs[k] for k in model]

    costs = dataclasses.replace(costs, forward=tiled(costs.forward), backward_input=tiled(costs.backward_input),
                                backward_weight=tiled(costs.backward_weight), forward_comm=tiled(costs.forward_comm),
                                backward_comm=tiled(costs.backward_comm))
    return (costs, *(tiled(xs) for xs in per_stage))


def paired_seconds(forward: float, forward_comm: float, backward: float, backward_comm: float,
                   sm_share: float) -> float:
    """Seconds of a forward and a full backward run as one overlapped pair (module docstring): between
    forward + backward - both communications (compute never hides compute) and forward + backward."""
    forward_compute, backward_compute = forward - forward_comm, backward - backward_comm
    return beside(backward_compute, forward_comm, sm_share) + beside(forward_compute, backward_comm, sm_share)


def _pair_seconds(schedule: Schedule, costs: StageCosts, dur) -> dict[tuple[int, int], float]:
    """{(forward stage, backward stage): seconds of the pair} for every kind of pair the schedule runs."""
    assert len(costs.forward_comm) == len(dur[_F]) == schedule.num_stages, "pairs take costs per stage"
    out = {}
    for r, acts in enumerate(schedule.compiled):
        for j in schedule.paired[r]:
            (kf, sf, _), (kb, sb, _) = acts[j], acts[j + 1]
            assert kf == _F and kb == _B, f"rank {r} pairs {_KIND[kf]} at {j} with {_KIND[kb]}, not F with B"
            if (sf, sb) not in out:
                out[sf, sb] = paired_seconds(dur[_F][sf], float(costs.forward_comm[sf]), dur[_B][sb],
                                             float(costs.backward_comm[sb]), float(costs.comm_sm_share))
    return out


def _first_use(schedule: Schedule) -> list[list[int]]:
    """Per rank, its stages in the order its list first uses them."""
    out = []
    for acts in schedule.compiled:
        seen: dict[int, None] = {}
        for _, s, _ in acts:
            if s not in seen:
                seen[s] = None
        out.append(list(seen))
    return out


def _run_in_order(schedule: Schedule, dur, pf, pb, ready_at, floor, chunks: int = 1, pairs=None):
    """The compute actions' times one action at a time (the module docstring's rules): a rank runs until its next
    action waits on an input not yet computed and parks on that input; computing it wakes the rank. With `pairs`
    ({(forward stage, backward stage): seconds}), the schedule's paired F and B run together. Returns what
    `_Graph.run` returns."""
    S = schedule.num_stages
    R = schedule.pp
    M = schedule.num_microbatches
    compiled = schedule.compiled
    ready_at = ready_at or [0.0] * S
    first_forward = [True] * S
    # end times of F (index s*M+i) and of the input-gradient backward B/I (same index); None until computed
    SM = S * M
    f_end: list = [None] * SM
    b_end: list = [None] * SM
    waiters: dict[int, list[int]] = {}  # key (F: idx, B/I: SM + idx) -> parked ranks
    head, tail = _chain_ends(schedule)
    ptr = [0] * R
    clock = [0.0] * R
    busy = [0.0] * R
    starts: list[list[float]] = [[] for _ in range(R)]
    ends: list[list[float]] = [[] for _ in range(R)]
    last_bwd = [(-1, -1)] * S  # (rank, index in its list) of each stage's last B or W
    paired_at = [frozenset(p) for p in schedule.paired] if pairs else [frozenset()] * R
    ready = list(range(R))
    while ready:
        r = ready.pop()
        acts = compiled[r]
        n = len(acts)
        i = ptr[r]
        t = clock[r]
        st = starts[r]
        en = ends[r]
        paired = paired_at[r]
        while i < n:
            k, s, mb = acts[i]
            idx = s * M + mb
            pair = None
            if k == _F:
                if not head[s]:
                    d = f_end[idx - M]
                    if d is None:
                        waiters.setdefault(idx - M, []).append(r)
                        break
                    d += pf[s]
                else:
                    d = 0.0
                if i in paired:  # and the backward after it: the pair starts once both inputs are there
                    _, s2, mb2 = acts[i + 1]
                    pair = s2 * M + mb2
                    if tail[s2]:
                        d2 = f_end[pair]
                        assert d2 is not None, f"rank {r} pairs B{s2},{mb2} before its F (action {i + 1})"
                    else:
                        d2 = b_end[pair + M]
                        if d2 is None:
                            waiters.setdefault(SM + pair + M, []).append(r)
                            break
                        d2 += pb[s2]
                    if d2 > d:
                        d = d2
            elif k == _W:
                d = b_end[idx]
                assert d is not None, f"rank {r} runs W{s},{mb} before its I (action {i})"
            else:
                if tail[s]:
                    d = f_end[idx]
                    assert d is not None, f"rank {r} runs {_KIND[k]}{s},{mb} before its F (action {i})"
                else:
                    d = b_end[idx + M]
                    if d is None:
                        waiters.setdefault(SM + idx + M, []).append(r)
                        break
                    d += pb[s]
            if d < t:
                d = t
            g = ready_at[s]
            if g > d:
                d = g
            c = s if chunks == 1 else s * chunks + mb % chunks
            length = dur[k][c] if pair is None else pairs[s, s2]
            t = d + length
            if k == _F and first_forward[s]:
                first_forward[s] = False
                if s in floor and floor[s] > t:
                    t = floor[s]
            st.append(d)
            en.append(t)
            busy[r] += length
            if k == _F:
                f_end[idx] = t
                w = waiters.pop(idx, None)
                if pair is not None:  # the paired backward ran beside it: same start and end, no time of its own
                    st.append(d)
                    en.append(t)
                    busy[r] += 0.0
                    b_end[pair] = t
                    last_bwd[s2] = (r, i + 1)
                    w = (w or []) + waiters.pop(SM + pair, [])
                    i += 1
            else:
                if k != _I:
                    last_bwd[s] = (r, i)
                if k == _W:
                    w = None
                else:
                    b_end[idx] = t
                    w = waiters.pop(SM + idx, None)
            if w:
                ready.extend(w)
            i += 1
        ptr[r] = i
        clock[r] = t

    for r in range(R):
        if ptr[r] < len(compiled[r]):
            k, s, mb = compiled[r][ptr[r]]
            raise AssertionError(
                f"deadlock: rank {r} waits forever at action {ptr[r]} "
                f"({_KIND[k]} stage {s} micro-batch {mb}) of schedule {schedule.name}"
            )
    offsets = [0] + list(accumulate(len(acts) for acts in compiled))
    last_bwd = [offsets[r] + i if r >= 0 else -1 for r, i in last_bwd]
    return list(chain.from_iterable(starts)), list(chain.from_iterable(ends)), offsets, busy, last_bwd


class _Graph:
    """What a simulation of a schedule needs that does not depend on the costs, worked out once per schedule
    object (a frozen value that the estimate reuses).

    The actions are numbered rank by rank in list order (`offsets[r]` is rank r's first). Each action waits for
    its rank's previous action and for one input (`simulate`'s rules: F(s-1, i), B/I(s+1, i), the last stage's
    own F(s, i), W's own I), or for none. Every action gets a wave, one more than the later of the waves of the two
    actions it waits for: the actions of one wave wait only on earlier waves, and a rank has at most one action
    in each. `run` then computes a wave at a time with numpy, each action by the same operations on the same
    operands as one at a time, so the times are the same to the last bit.
    """

    def __init__(self, schedule: Schedule):
        S, M, R = schedule.num_stages, schedule.num_microbatches, schedule.pp
        kind, stage, mb, offsets = _arrays(schedule)
        N = len(kind)
        lengths = np.diff(offsets)
        self.offsets = offsets
        key = stage * M + mb
        ids = np.arange(N)
        is_f = kind == _F
        is_bi = (kind == _B) | (kind == _I)
        f_id = np.full(S * M + 1, N + 1)  # N: no input (ready at 0); N + 1: an input that never comes
        b_id = np.full(S * M + 1, N + 1)
        f_id[key[is_f]] = ids[is_f]
        b_id[key[is_bi]] = ids[is_bi]
        heads, tails = (np.array(x, dtype=bool) for x in _chain_ends(schedule))
        at_head, at_tail = heads[stage], tails[stage]
        dep = np.full(N, N)
        sel = is_f & ~at_head
        dep[sel] = f_id[key[sel] - M]
        sel = is_bi & ~at_tail
        dep[sel] = b_id[key[sel] + M]
        sel = is_bi & at_tail
        dep[sel] = f_id[key[sel]]
        sel = kind == _W
        dep[sel] = b_id[key[sel]]
        # which p2p delay the input adds: 1 forward (pf[s]), 2 backward (pb[s]), 0 none
        via = np.where(is_f & ~at_head, 1, np.where(is_bi & ~at_tail, 2, 0))
        # A paired forward also waits for its backward's input (used only when the pairs overlap; an extra wait
        # only moves waves later, which changes no time).
        pair_f = np.fromiter((offsets[r] + j for r, js in enumerate(schedule.paired) for j in js), dtype=np.int64)
        dep2 = np.full(N, N)
        dep2[pair_f] = dep[pair_f + 1]
        via2 = np.zeros(N, dtype=np.int64)
        via2[pair_f] = via[pair_f + 1]
        stage2 = stage.copy()
        stage2[pair_f] = stage[pair_f + 1]

        wave = self._waves(schedule, dep, offsets, dep2)
        order = np.argsort(wave, kind="stable")
        self.bounds = np.searchsorted(wave[order], np.arange(1, int(wave.max(initial=0)) + 2)).tolist()
        pos = np.empty(N + 1, dtype=np.int64)
        pos[order] = ids
        pos[N] = N
        prev = ids - 1
        prev[np.asarray(offsets[:-1])[lengths > 0]] = N
        self.position = pos[:N]  # wave position of each action
        self.dep = pos[dep[order]]
        self.prev = pos[prev[order]]
        self.kind, self.stage, self.via, self.mb = kind[order], stage[order], via[order], mb[order]
        self.dep2, self.via2, self.stage2 = pos[dep2[order]], via2[order], stage2[order]
        self.pair_f, self.pair_b = pos[pair_f], pos[pair_f + 1]  # wave positions of each pair's F and B
        self.pair_stages = list(zip(stage[pair_f].tolist(), stage[pair_f + 1].tolist()))
        self.kind_rm, self.stage_rm = kind, stage
        first_f = np.full(S, -1)
        f_stages = stage[is_f]
        uniq, first = np.unique(f_stages, return_index=True)
        first_f[uniq] = pos[ids[is_f][first]]
        self.first_f = first_f.tolist()
        last_b = np.full(S, -1)
        sel = (kind == _B) | (kind == _W)
        np.maximum.at(last_b, stage[sel], ids[sel])
        self.last_bwd = last_b.tolist()  # per stage, its last B or W (numbered rank by rank), or -1
        # Each rank's stages in the order of their first action: the first action of each (rank, stage), taken in
        # action order (rank by rank, so each rank's stages come together).
        uniq, first = np.unique(np.repeat(np.arange(R), lengths) * S + stage, return_index=True)
        used = uniq[np.argsort(first)]
        self.first_use = [x.tolist() for x in np.split(used % S, np.cumsum(np.bincount(used // S, minlength=R))[:-1])]

    @staticmethod
    def _waves(schedule: Schedule, dep: np.ndarray, offsets: list[int], dep2: np.ndarray) -> np.ndarray:
        """Each action's wave (see the class docstring), found a wave at a time: in wave k every rank runs its next
        action if that action's inputs (`dep`, and `dep2` for a paired forward) came in an earlier wave.
        AssertionError naming the rank and the action on a deadlock (some rank's next action never gets its input)."""
        N, R = len(dep), len(offsets) - 1
        # Each rank's actions followed by a stopper that never runs; G: no input (wave 0), G + 1: never.
        G = N + R
        rank_of = np.repeat(np.arange(R), np.diff(offsets))
        slot = np.arange(N) + rank_of
        to_slot = np.concatenate([slot, [G, G + 1]])
        dep_slot = np.full(G + 2, G + 1)
        dep_slot[slot] = to_slot[dep]
        dep2_slot = np.full(G + 2, G + 1)
        dep2_slot[slot] = to_slot[dep2]
        wave = np.full(G + 2, -1)
        wave[G] = 0
        ptr = np.asarray(offsets[:-1]) + np.arange(R)
        k = 1
        while True:
            ready = (wave[dep_slot[ptr]] >= 0) & (wave[dep2_slot[ptr]] >= 0)
            if not ready.any():
                break
            wave[ptr[ready]] = k
            ptr += ready
            k += 1
        stuck = ptr - np.arange(R) < np.asarray(offsets[1:])
        if stuck.any():
            r = int(np.argmax(stuck))
            i = int(ptr[r]) - r - offsets[r]
            k_, s, mb = schedule.compiled[r][i]
            raise AssertionError(f"deadlock: rank {r} waits forever at action {i} ({_KIND[k_]} stage {s} "
                                 f"micro-batch {mb}) of schedule {schedule.name}")
        return wave[slot]

    def run(self, dur, pf, pb, ready_at, floor, chunks: int = 1,
            pairs=None) -> tuple[np.ndarray, np.ndarray, list[int], list[float], list[int]]:
        """(starts, ends, offsets, busy, last_bwd): the start and end of every action, numbered rank by rank (rank r's
        from offsets[r]), each rank's busy seconds (summed in its list order) and each stage's last B or W (its
        number, -1 for none), for durations `dur[kind][stage]`, p2p delays into each stage `pf`/`pb`, the stages'
        gather ends `ready_at` (None: all at 0) and the earliest ends of first forwards `floor` ({stage: seconds});
        with `chunks` > 1 the durations are per stage and sequence chunk (`simulate`); with `pairs` ({(forward
        stage, backward stage): seconds}) each pair runs as one action of those seconds (`_run_in_order`)."""
        N = len(self.kind)
        table = np.array(dur, dtype=np.float64).reshape(4, -1)
        length = table[self.kind, self.stage if chunks == 1 else self.stage * chunks + self.mb % chunks]
        S = len(pf)
        delays = np.array([[0.0] * S, pf, pb], dtype=np.float64)
        delay = delays[self.via, self.stage]
        pair_wait = None
        if pairs and len(self.pair_f):
            length[self.pair_f] = [pairs[k] for k in self.pair_stages]
            length[self.pair_b] = 0.0
            pair_wait = (self.dep2, delays[self.via2, self.stage2])
        ready = np.array(ready_at, dtype=np.float64)[self.stage] if ready_at is not None else None
        low = None
        if floor:
            low = np.full(N, -np.inf)
            for s, t in floor.items():
                if self.first_f[s] >= 0:
                    low[self.first_f[s]] = t
        end = np.zeros(N + 1)
        start = np.empty(N)
        dep, prev, bounds = self.dep, self.prev, self.bounds
        maximum = np.maximum
        for lo, hi in zip(bounds, bounds[1:]):
            d = end[dep[lo:hi]]
            d += delay[lo:hi]
            if pair_wait is not None:
                maximum(d, end[pair_wait[0][lo:hi]] + pair_wait[1][lo:hi], out=d)
            maximum(d, end[prev[lo:hi]], out=d)
            if ready is not None:
                maximum(d, ready[lo:hi], out=d)
            start[lo:hi] = d
            d += length[lo:hi]
            if low is not None:
                maximum(d, low[lo:hi], out=d)
            end[lo:hi] = d
        if pair_wait is not None:  # a pair's backward ran beside its forward
            start[self.pair_b] = start[self.pair_f]
        pos = self.position
        length_rm = length[pos]
        busy = [float(np.add.accumulate(length_rm[a:b])[-1]) if b > a else 0.0
                for a, b in zip(self.offsets, self.offsets[1:])]
        return start[pos], end[:N][pos], self.offsets, busy, self.last_bwd


def _graph(schedule: Schedule) -> _Graph:
    graph = schedule.__dict__.get("_graph")
    if graph is None:
        graph = schedule.__dict__["_graph"] = _Graph(schedule)  # as functools.cached_property does
    return graph


def _arrays(schedule: Schedule) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """(kind codes, stages, micro-batches, offsets): every action of the schedule rank by rank, rank r's from
    offsets[r]; made once per schedule object."""
    arrays = schedule.__dict__.get("_arrays")
    if arrays is None:
        compiled = schedule.compiled
        offsets = [0] + list(accumulate(len(acts) for acts in compiled))
        N = offsets[-1]
        flat = np.fromiter(chain.from_iterable(chain.from_iterable(compiled)), dtype=np.int64, count=3 * N)
        kind, stage, mb = flat.reshape(N, 3).T if N else (flat,) * 3
        arrays = schedule.__dict__["_arrays"] = (kind, stage, mb, offsets)
    return arrays


def order_peaks(schedule: Schedule) -> tuple[list[int], list[int], list[int], list[float]]:
    """(peak_inflight, peak_inflight_weight, peak_inflight_rank, peak_inflight_joint) as `Timeline` defines them,
    from the order alone: a rank's actions run one at a time, so its counts follow its list whatever the costs.
    Counted once per schedule object (a frozen value; the estimate reuses its schedules) and remembered on it;
    callers get fresh lists."""
    peaks = schedule.__dict__.get("_order_peaks")
    if peaks is None:
        if schedule.pp >= WAVES_FROM_RANKS:
            peaks = _array_peaks(schedule)
        else:
            peaks = rank_order_peaks(schedule.num_stages, dict(enumerate(schedule.compiled)), schedule.pp)
        peaks = tuple(tuple(x) for x in peaks)
        schedule.__dict__["_order_peaks"] = peaks  # what functools.cached_property does on a frozen dataclass
    return tuple(list(x) for x in peaks)


def _array_peaks(schedule: Schedule) -> tuple[list[int], list[int], list[int], list[float]]:
    """`rank_order_peaks` of every rank with numpy, for wide pipelines: each count is a running sum over the
    actions in order (a stage's over its own, in its rank's order; a rank's over its list), its peak the largest
    prefix sum and at least 0."""
    S = schedule.num_stages
    kind, stage, _, offsets = _arrays(schedule)
    live = np.where(kind == _F, 1, np.where(kind == _W, 0, -1))  # F holds a micro-batch, B or I frees it
    waiting = np.where(kind == _I, 1, np.where(kind == _W, -1, 0))  # I leaves work for W
    by_stage = np.argsort(stage, kind="stable")

    def running(delta: np.ndarray, counts: np.ndarray) -> np.ndarray:
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        total = np.cumsum(delta)
        return total - np.repeat(np.concatenate([[0], total])[first], counts)  # each segment from 0

    def peaks(values: np.ndarray, counts: np.ndarray) -> list:
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out = np.zeros(len(counts), dtype=values.dtype)
        held = counts > 0
        if held.any():
            out[held] = np.maximum.reduceat(values, first[held])
        return np.maximum(out, 0).tolist()

    per_stage = np.bincount(stage, minlength=S)
    per_rank = np.diff(offsets)
    held = running(live, per_rank)
    joint = held + WEIGHT_GRAD_ACTIVATION_SHARE * running(waiting, per_rank)
    stage_live = running(live[by_stage], per_stage)
    stage_waiting = running(waiting[by_stage], per_stage)
    return (peaks(stage_live, per_stage), peaks(stage_waiting, per_stage), peaks(held, per_rank),
            peaks(joint, per_rank))


def rank_order_peaks(num_stages: int, compiled: dict[int, Sequence[tuple[int, int, int]]],
                     pp: int) -> tuple[list[int], list[int], list[int], list[float]]:
    """`order_peaks` from the compiled lists of some ranks ({rank: list}): a rank's counts depend on its own list
    only, so these ranks' stages and peaks are exact; the other ranks' read 0."""
    S = num_stages
    live = [0] * S
    wait_w = [0] * S
    peak = [0] * S
    peak_w = [0] * S
    peak_rank = [0] * pp
    peak_joint = [0.0] * pp
    for rank, acts in compiled.items():
        cur = best = waiting = 0
        joint = 0.0  # only an F raises live + share x waiting: I trades one live for one waiting, W frees
        for k, s, _ in acts:
            if k == _F:
                live[s] += 1
                cur += 1
                if live[s] > peak[s]:
                    peak[s] = live[s]
                if cur > best:
                    best = cur
                joint = max(joint, cur + WEIGHT_GRAD_ACTIVATION_SHARE * waiting)
            elif k == _W:
                wait_w[s] -= 1
                waiting -= 1
            else:
                live[s] -= 1
                cur -= 1
                if k == _I:
                    wait_w[s] += 1
                    waiting += 1
                    if wait_w[s] > peak_w[s]:
                        peak_w[s] = wait_w[s]
        peak_rank[rank] = best
        peak_joint[rank] = joint
    return peak, peak_w, peak_rank, peak_joint
