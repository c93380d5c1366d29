"""Pipeline schedules as per-rank action lists: the one source of truth for schedule order.

`build_schedule(name, pp, num_microbatches, vpp)` returns, for every pipeline rank, the compute actions it runs in
order: F (forward), B (full backward), I (backward for inputs only) and W (backward for weights only) of one virtual
stage and one micro-batch. The cost model simulates these lists (`cost/simulate.py`) and the executor runs them, so
each list equals the order torch.distributed.pipelining 2.13 runs for the matching class (checked in
tests/test_schedules_torch.py):

    gpipe             ScheduleGPipe                   (runtime order of `_step_microbatches`)
    1f1b              Schedule1F1B                    (runtime order of `_step_microbatches`; torch's own
                                                       `pipeline_order` IR mislabels the last rank's micro-batches)
    interleaved-1f1b  ScheduleInterleaved1F1B         (`pipeline_order`)
    looped-bfs        ScheduleLoopedBFS               (`pipeline_order`)
    zb-h1             ScheduleInterleavedZeroBubble   (`pipeline_order`; with vpp == 1 this is ZB-H1 of the
                                                       zero-bubble paper, torch accepts one stage per rank there)
    zbv               ScheduleZBVZeroBubble           (`pipeline_order`)
    dualpipev         ScheduleDualPipeV               (`pipeline_order`, OVERLAP_F_B split into its F then B)

Idle steps (torch's `None`) and communication actions are not part of the lists: a rank simply waits for its
inputs. This module is pure Python and must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zb-h1", "zbv", "dualpipev")

# torch.distributed.pipelining class name of each schedule (for `get_schedule_class`).
TORCH_CLASS = {
    "gpipe": "GPipe",
    "1f1b": "1F1B",
    "interleaved-1f1b": "Interleaved1F1B",
    "looped-bfs": "LoopedBFS",
    "zb-h1": "InterleavedZeroBubble",
    "zbv": "ZBVZeroBubble",
    "dualpipev": "DualPipeV",
}

V_SHAPED = ("zbv", "dualpipev")
KINDS = ("F", "B", "I", "W")


@dataclass(frozen=True)
class Action:
    kind: str  # "F" forward, "B" full backward, "I" backward for inputs only, "W" backward for weights only
    stage: int  # virtual stage index 0..num_stages-1 in model order
    microbatch: int

    def __str__(self) -> str:  # torch's notation: stage, kind, micro-batch ("3F0")
        return f"{self.stage}{self.kind}{self.microbatch}"


@dataclass(frozen=True)
class Schedule:
    name: str
    pp: int
    vpp: int
    num_microbatches: int
    stage_to_rank: tuple[int, ...]  # rank that holds each virtual stage (len pp*vpp)
    actions: tuple[tuple[Action, ...], ...]  # per rank, in execution order

    @property
    def num_stages(self) -> int:
        return self.pp * self.vpp

    @property
    def splits_backward(self) -> bool:
        """True if the schedule runs I/W (split backward) actions anywhere."""
        return any(a.kind in ("I", "W") for acts in self.actions for a in acts)

    def stages_of_rank(self, rank: int) -> tuple[int, ...]:
        return tuple(s for s, r in enumerate(self.stage_to_rank) if r == rank)

    @cached_property
    def compiled(self) -> tuple[tuple[tuple[int, int, int], ...], ...]:
        """Per rank, (kind code, stage, micro-batch) with codes F=0, B=1, I=2, W=3; cached for the simulator."""
        code = {"F": 0, "B": 1, "I": 2, "W": 3}
        return tuple(tuple((code[a.kind], a.stage, a.microbatch) for a in acts) for acts in self.actions)

    def __str__(self) -> str:
        return "\n".join(f"rank {r}: " + " ".join(map(str, acts)) for r, acts in enumerate(self.actions))


def stage_to_rank(name: str, pp: int, vpp: int) -> tuple[int, ...]:
    """Rank of each virtual stage: loop placement (stage s on rank s % pp), or V placement for zbv/dualpipev
    (rank r holds stages r and 2*pp-1-r), as torch's `generate_stage_to_rank_mapping` does."""
    if name in V_SHAPED:
        return tuple(s if s < pp else 2 * pp - 1 - s for s in range(2 * pp))
    return tuple(s % pp for s in range(pp * vpp))


def check_schedule(name: str, pp: int, vpp: int, num_microbatches: int) -> None:
    """Raise ValueError (one line: the offending factor and what would work) unless torch 2.13 runs this schedule.

    Rules, from torch's constructors plus what keeps the order deadlock-free:
    - gpipe, 1f1b: vpp == 1 (single stage per rank); 1f1b needs m >= pp.
    - interleaved-1f1b: vpp >= 2; with rounds = max(1, m // pp), m % rounds == 0 (torch; m < pp is allowed).
    - looped-bfs: vpp >= 1, any m >= 1.
    - zb-h1 (torch's InterleavedZeroBubble): vpp >= 1, m % rounds == 0 as above.
    - zbv: vpp == 2; any m >= 1 (torch pads to 2*pp-1 micro-batches and drops the extra actions).
    - dualpipev: vpp == 2 and m >= 2*pp (torch: at least as many micro-batches as stages).
    """
    m = num_microbatches
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if pp < 1:
        raise ValueError(f"pp must be >= 1 (got {pp})")
    if vpp < 1:
        raise ValueError(f"vpp must be >= 1 (got {vpp})")
    if m < 1:
        raise ValueError(f"num_microbatches must be >= 1 (got {m})")
    if name in ("gpipe", "1f1b") and vpp != 1:
        raise ValueError(f"{name} needs vpp == 1 (got {vpp}); use interleaved-1f1b or looped-bfs for vpp > 1")
    if name == "interleaved-1f1b" and vpp < 2:
        raise ValueError(f"interleaved-1f1b needs vpp >= 2 (got {vpp}); use 1f1b for one stage per rank")
    if name in V_SHAPED and vpp != 2:
        raise ValueError(f"{name} needs vpp == 2 (got {vpp}): exactly two stages per rank in V placement")
    if name == "1f1b" and m < pp:
        raise ValueError(
            f"1f1b needs num_microbatches ({m}) >= pp ({pp}); use a global batch giving at least {pp} micro-batches"
        )
    if name in ("interleaved-1f1b", "zb-h1"):
        rounds = max(1, m // pp)
        if m % rounds:
            lo = next(k for k in range(m - 1, 0, -1) if k % max(1, k // pp) == 0)
            hi = next(k for k in range(m + 1, 2 * m + pp) if k % max(1, k // pp) == 0)
            raise ValueError(
                f"{name} needs num_microbatches ({m}) to be a multiple of the number of rounds m // pp ({rounds}); "
                f"use {lo} or {hi} micro-batches (any multiple of pp={pp} works)"
            )
    if name == "dualpipev" and m < 2 * pp:
        raise ValueError(
            f"dualpipev needs num_microbatches ({m}) >= 2 * pp ({2 * pp}); "
            f"use a global batch giving at least {2 * pp} micro-batches"
        )


def build_schedule(name: str, pp: int, num_microbatches: int, vpp: int = 1) -> Schedule:
    """Per-rank action lists of schedule `name` (checked with `check_schedule` first)."""
    check_schedule(name, pp, vpp, num_microbatches)
    m = num_microbatches
    builder = _BUILDERS[name]
    actions = tuple(tuple(builder(rank, pp, vpp, m)) for rank in range(pp))
    return Schedule(name, pp, vpp, m, stage_to_rank(name, pp, vpp), actions)


# ---------------------------------------------------------------------------------------------------------------
# Single stage per rank (ScheduleGPipe, Schedule1F1B `_step_microbatches`)


def _gpipe(rank: int, pp: int, vpp: int, m: int) -> list[Action]:
    return [Action("F", rank, i) for i in range(m)] + [Action("B", rank, i) for i in range(m)]


def _1f1b(rank: int, pp: int, vpp: int, m: int) -> list[Action]:
    warmup = min(m, pp - rank)  # rank r runs pp - r forwards before its first backward
    ops = [Action("F", rank, i) for i in range(warmup)]
    fwd, bwd = warmup, 0
    while True:
        ops.append(Action("B", rank, bwd))
        bwd += 1
        if fwd == m:
            break
        ops.append(Action("F", rank, fwd))
        fwd += 1
    ops.extend(Action("B", rank, i) for i in range(bwd, m))
    return ops


# ---------------------------------------------------------------------------------------------------------------
# Multi-stage schedules: ports of torch's `_calculate_single_rank_operations` with the None steps dropped.


def _looped_bfs(rank: int, pp: int, vpp: int, m: int) -> list[Action]:
    stages = range(rank, pp * vpp, pp)
    ops = [Action("F", s, i) for s in stages for i in range(m)]
    ops += [Action("B", s, i) for s in reversed(stages) for i in reversed(range(m))]
    return ops


def _interleaved(rank: int, pp: int, vpp: int, m: int, zero_bubble: bool = False) -> list[Action]:
    """torch's `_get_1f1b_rank_ops` for ScheduleInterleaved1F1B (zero_bubble=False) and
    ScheduleInterleavedZeroBubble (zero_bubble=True: I instead of B, W deferred by `rank` steps)."""
    rounds = max(1, m // pp)
    per_round = m // rounds
    warmup = min((vpp - 1) * per_round + (1 if zero_bubble else 2) * (pp - 1 - rank), m * vpp)
    total = vpp * m + warmup  # warmup + (vpp*m - warmup) steady + warmup cooldown

    def fwd_stage(step: int) -> int:
        return ((step // per_round) % vpp) * pp + rank

    def bwd_stage(step: int) -> int:
        return (vpp - 1 - ((step - warmup) // per_round) % vpp) * pp + rank

    fwd_mb = [0] * (pp * vpp)
    bwd_mb = [0] * (pp * vpp)
    w_mb = [0] * (pp * vpp)
    bkind = "I" if zero_bubble else "B"
    ops: list[Action] = []
    bwd_steps: list[int] = []
    n_w = 0

    def weight() -> None:
        nonlocal n_w
        s = bwd_stage(bwd_steps[n_w])
        ops.append(Action("W", s, w_mb[s]))
        w_mb[s] += 1
        n_w += 1

    for step in range(total):
        if step < vpp * m:  # warmup and steady phases run a forward
            s = fwd_stage(step)
            ops.append(Action("F", s, fwd_mb[s]))
            fwd_mb[s] += 1
        if step >= warmup:  # steady and cooldown phases run a backward
            s = bwd_stage(step)
            ops.append(Action(bkind, s, bwd_mb[s]))
            bwd_mb[s] += 1
            bwd_steps.append(step)
            if zero_bubble and step - warmup >= rank:
                weight()
    while zero_bubble and n_w < len(bwd_steps):
        weight()
    return ops


def _zb_h1(rank: int, pp: int, vpp: int, m: int) -> list[Action]:
    return _interleaved(rank, pp, vpp, m, zero_bubble=True)


def _zbv(rank: int, pp: int, vpp: int, m: int) -> list[Action]:
    n = max(2 * pp - 1, m)  # torch pads to 2pp-1 micro-batches, then drops actions of the padding ones
    s0, s1 = rank, 2 * pp - 1 - rank
    ops: list[tuple[str, int, int]] = []
    f0 = f1 = b0 = b1 = 0
    for _ in range(2 * (pp - rank) - 1):
        ops.append(("F", s0, f0))
        f0 += 1
    for _ in range(rank):
        ops += [("F", s1, f1), ("F", s0, f0)]
        f1 += 1
        f0 += 1
    for _ in range(pp - rank):
        ops += [("F", s1, f1), ("I", s1, b1), ("W", s1, b1)]
        f1 += 1
        b1 += 1
    while f1 < f0 or f0 < n:
        if f0 < n:
            ops.append(("F", s0, f0))
            f0 += 1
        ops += [("I", s0, b0), ("W", s0, b0), ("F", s1, f1), ("I", s1, b1), ("W", s1, b1)]
        b0 += 1
        f1 += 1
        b1 += 1
    w0, w1 = b0, b1
    for _ in range(rank):
        ops += [("I", s0, b0), ("I", s1, b1)]
        b0 += 1
        b1 += 1
    for _ in range(pp - rank):
        ops += [("I", s0, b0), ("W", s0, w0)]
        b0 += 1
        w0 += 1
    ops += [("W", s1, i) for i in range(w1, b1)]
    ops += [("W", s0, i) for i in range(w0, b0)]
    return [Action(k, s, i) for k, s, i in ops if i < m]


def _dualpipev(rank: int, pp: int, vpp: int, m: int) -> list[Action]:
    """torch's ScheduleDualPipeV order. Its OVERLAP_F_B actions (a forward of one stage overlapped with a full
    backward of the other) appear here as the two separate actions F then B, the order torch's runtime runs them."""
    s0, s1 = rank, 2 * pp - 1 - rank
    nf = {s0: 0, s1: 0}  # next forward micro-batch
    nb = {s0: 0, s1: 0}  # next backward (B or I) micro-batch
    weights: list[tuple[int, int]] = []  # pending W after I, oldest first
    ops: list[Action] = []

    def add(kind: str, s: int) -> None:
        if kind == "F":
            ops.append(Action("F", s, nf[s]))
            nf[s] += 1
        else:
            ops.append(Action(kind, s, nb[s]))
            if kind == "I":
                weights.append((s, nb[s]))
            nb[s] += 1

    def weight() -> None:
        if weights:
            s, i = weights.pop(0)
            ops.append(Action("W", s, i))

    for _ in range((pp - rank - 1) * 2):
        add("F", s0)
    for _ in range(rank + 1):
        add("F", s0)
        add("F", s1)
    for _ in range(pp - rank - 1):
        add("I", s1)
        weight()
        add("F", s1)
    for i in range(m - 2 * pp + rank + 1):
        add("F", s0)  # the last rank's first pair is not overlapped in torch; same order either way
        add("B", s1)
        add("F", s1)
        add("B", s0)
    for _ in range(pp - rank - 1):
        add("B", s1)
        add("F", s1)
        add("B", s0)
    steps = rank + 1
    zb = False
    for i in range(steps):
        if i == steps // 2 and rank % 2 == 1:
            zb = True
        add("I" if zb else "B", s1)
        if i == steps // 2 and rank % 2 == 0:
            zb = True
        add("I" if zb else "B", s0)
    for _ in range(pp - rank - 1):
        weight()
        add("I" if zb else "B", s0)
    for _ in range(rank + 1):
        weight()
    return ops


_BUILDERS = {
    "gpipe": _gpipe,
    "1f1b": _1f1b,
    "interleaved-1f1b": _interleaved,
    "looped-bfs": _looped_bfs,
    "zb-h1": _zb_h1,
    "zbv": _zbv,
    "dualpipev": _dualpipev,
}
