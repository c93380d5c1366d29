"""Critical-path simulation of a pipeline schedule.

Each rank runs its action list (from `spec/schedules.py`) in order on one compute stream. An action starts when the
rank is free and its input is there:

    F(s, i)      after F(s-1, i) (+ p2p_time(s-1, s) if the stages sit on different ranks); stage 0 has no input
    B/I(s, i)    after B/I(s+1, i) (+ p2p_time(s+1, s) across ranks); the last stage after its own F(s, i)
    W(s, i)      after I(s, i) (same rank)

With FSDP, `allgather_time[s]` (the parameter gather of stage s) runs on the rank's DP comm stream, one gather per
stage in the order the rank first uses its stages, all issued at time 0; no compute of stage s starts before its
gather ends. `reduce_time[s]` (gradient reduction) starts on the same comm stream after the last B or W of stage s.

The simulation is dependency-driven and linear in the number of actions: a rank runs until its next action waits on
an input not yet computed, and parks on that input; computing it wakes the rank. A rank still parked at the end is a
deadlock, reported with an AssertionError naming the rank and the action.
"""

from __future__ import annotations

from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import Callable, Sequence

from autoconf.spec.schedules import Action, Schedule

_F, _B, _I, _W = 0, 1, 2, 3
_KIND = "FBIW"


@dataclass(frozen=True)
class StageCosts:
    """Seconds per virtual stage for one micro-batch. A full "B" costs backward_input + backward_weight."""

    forward: Sequence[float]
    backward_input: Sequence[float]
    backward_weight: Sequence[float]

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
    """

    events: list[list[tuple[Action, float, float]]]
    comm_events: list[list[tuple[str, int, float, float]]]
    makespan: float
    compute_time_per_rank: list[float]
    bubble_fraction: float
    peak_inflight: list[int]
    peak_inflight_weight: list[int]
    peak_inflight_rank: list[int]

    @property
    def compute_end(self) -> float:
        """End of the last compute action."""
        if isinstance(self.events, _Events):
            return max((ends[-1] for ends in self.events.ends if ends), default=0.0)
        return max((ev[-1][2] for ev in self.events if ev), default=0.0)


class _Events(SequenceABC):
    """`Timeline.events` of a simulation, each rank's (action, start, end) list built when first read: the search
    reads only the makespan and the busy times of most timelines."""

    def __init__(self, actions, starts: list[list[float]], ends: list[list[float]]):
        self.actions, self.starts, self.ends = actions, starts, ends
        self._rows: dict[int, list] = {}

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, rank):
        if isinstance(rank, slice):
            return [self[r] for r in range(len(self))[rank]]
        rank = range(len(self))[rank]  # negative indices, and IndexError past the end
        if rank not in self._rows:
            self._rows[rank] = list(zip(self.actions[rank], self.starts[rank], self.ends[rank]))
        return self._rows[rank]


def simulate(
    schedule: Schedule,
    costs: StageCosts,
    p2p_time: Callable[[int, int], float] | float = 0.0,
    allgather_time: Sequence[float] | None = None,
    reduce_time: Sequence[float] | None = None,
) -> Timeline:
    """Simulate one training step of `schedule` with per-stage `costs`; see the module docstring for the rules.

    p2p_time: seconds to move one micro-batch's activation (or its gradient) between two stages on different ranks,
    a constant or a function (from_stage, to_stage) -> seconds.
    """
    S = schedule.num_stages
    R = schedule.pp
    M = schedule.num_microbatches
    s2r = schedule.stage_to_rank
    fwd = [float(x) for x in costs.forward]
    bi = [float(x) for x in costs.backward_input]
    bw = [float(x) for x in costs.backward_weight]
    assert len(fwd) == len(bi) == len(bw) == S, f"costs describe {len(fwd)} stages, the schedule has {S}"
    dur = (fwd, [bi[s] + bw[s] for s in range(S)], bi, bw)

    # p2p delay into stage s: forward from s-1, backward from s+1 (zero when both stages share a rank)
    if callable(p2p_time):
        pf = [p2p_time(s - 1, s) if s > 0 and s2r[s - 1] != s2r[s] else 0.0 for s in range(S)]
        pb = [p2p_time(s + 1, s) if s < S - 1 and s2r[s + 1] != s2r[s] else 0.0 for s in range(S)]
    else:
        c = float(p2p_time)
        pf = [c if s > 0 and s2r[s - 1] != s2r[s] else 0.0 for s in range(S)]
        pb = [c if s < S - 1 and s2r[s + 1] != s2r[s] else 0.0 for s in range(S)]

    compiled = schedule.compiled

    # FSDP gathers: per rank, in first-use order, back to back from time 0
    ready_at = [0.0] * S
    comm_events: list[list[tuple[str, int, float, float]]] = [[] for _ in range(R)]
    comm_free = [0.0] * R
    if allgather_time is not None:
        for r in range(R):
            t = 0.0
            seen = set()
            for _, s, _ in compiled[r]:
                if s not in seen:
                    seen.add(s)
                    g = float(allgather_time[s])
                    comm_events[r].append(("allgather", s, t, t + g))
                    t += g
                    ready_at[s] = t
            comm_free[r] = t

    # end times of F (index s*M+i) and of the input-gradient backward B/I (same index); None until computed
    SM = S * M
    f_end: list = [None] * SM
    b_end: list = [None] * SM
    waiters: dict[int, list[int]] = {}  # key (F: idx, B/I: SM + idx) -> parked ranks
    last = S - 1

    ptr = [0] * R
    clock = [0.0] * R
    busy = [0.0] * R
    starts: list[list[float]] = [[] for _ in range(R)]
    ends: list[list[float]] = [[] for _ in range(R)]
    last_bwd = [0.0] * S
    ready = list(range(R))
    while ready:
        r = ready.pop()
        acts = compiled[r]
        n = len(acts)
        i = ptr[r]
        t = clock[r]
        st = starts[r]
        en = ends[r]
        while i < n:
            k, s, mb = acts[i]
            idx = s * M + mb
            if k == _F:
                if s:
                    d = f_end[idx - M]
                    if d is None:
                        waiters.setdefault(idx - M, []).append(r)
                        break
                    d += pf[s]
                else:
                    d = 0.0
            elif k == _W:
                d = b_end[idx]
                assert d is not None, f"rank {r} runs W{s},{mb} before its I (action {i})"
            else:
                if s == last:
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
            t = d + dur[k][s]
            st.append(d)
            en.append(t)
            busy[r] += dur[k][s]
            if k == _F:
                f_end[idx] = t
                w = waiters.pop(idx, None)
            else:
                if k != _I:
                    last_bwd[s] = t
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

    # gradient reductions: after the last B/W of each stage, in that order, on the rank's comm stream
    if reduce_time is not None:
        for r in range(R):
            t = comm_free[r]
            for s in sorted(schedule.stages_of_rank(r), key=lambda s: last_bwd[s]):
                start = max(t, last_bwd[s])
                t = start + float(reduce_time[s])
                comm_events[r].append(("reduce", s, start, t))
            comm_free[r] = t

    makespan = max(max(clock), max(comm_free)) if R else 0.0
    events = _Events(schedule.actions, starts, ends)
    peak, peak_w, peak_rank = (list(x) for x in order_peaks(schedule))
    total = sum(busy)
    bubble = 1.0 - total / (R * makespan) if makespan > 0 else 0.0
    return Timeline(events, comm_events, makespan, busy, bubble, peak, peak_w, peak_rank)


def order_peaks(schedule: Schedule) -> tuple[list[int], list[int], list[int]]:
    """(peak_inflight, peak_inflight_weight, peak_inflight_rank) as `Timeline` defines them, from the order alone: a
    rank's actions run one at a time, so its counts follow its list whatever the costs. Counted once per schedule
    object (a frozen value; the estimate reuses its schedules) and remembered on it; callers get fresh lists."""
    peaks = schedule.__dict__.get("_order_peaks")
    if peaks is None:
        peaks = tuple(tuple(x) for x in rank_order_peaks(schedule.num_stages, dict(enumerate(schedule.compiled)),
                                                         schedule.pp))
        schedule.__dict__["_order_peaks"] = peaks  # what functools.cached_property does on a frozen dataclass
    return tuple(list(x) for x in peaks)


def rank_order_peaks(num_stages: int, compiled: dict[int, Sequence[tuple[int, int, int]]],
                     pp: int) -> tuple[list[int], list[int], list[int]]:
    """`order_peaks` from the compiled lists of some ranks ({rank: list}): a rank's counts depend on its own list
    only, so these ranks' stages and peaks are exact; the other ranks' read 0."""
    S = num_stages
    live = [0] * S
    wait_w = [0] * S
    peak = [0] * S
    peak_w = [0] * S
    peak_rank = [0] * pp
    for rank, acts in compiled.items():
        cur = best = 0
        for k, s, _ in acts:
            if k == _F:
                live[s] += 1
                cur += 1
                if live[s] > peak[s]:
                    peak[s] = live[s]
                if cur > best:
                    best = cur
            elif k == _W:
                wait_w[s] -= 1
            else:
                live[s] -= 1
                cur -= 1
                if k == _I:
                    wait_w[s] += 1
                    if wait_w[s] > peak_w[s]:
                        peak_w[s] = wait_w[s]
        peak_rank[rank] = best
    return peak, peak_w, peak_rank
