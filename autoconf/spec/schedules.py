"""Pipeline schedules: one registry of what each schedule is, and its per-rank action lists.

Every fact about a schedule lives in its `ScheduleSpec`: the torch class that runs it, how many model chunks a rank
holds and where they sit (loop or V placement), its micro-batch rules, whether it splits the backward, the order it
runs (a builder from `schedule_orders.py`), the closed-form terms the search bounds with (textbook bubble, whether
the pipeline fill and drain transfers are exposed), which ZeRO stages the
executor runs it with, and what Megatron-LM cannot express of it. The CLI choices, the candidate space, the bounds,
the simulator, the exporters, the profiler and the executor-support rule all read this registry; `register` adds a
schedule everywhere at once.

`build_schedule(name, pp, num_microbatches, vpp)` returns every pipeline rank's compute actions in order. The cost
model simulates these lists (`cost/simulate.py`) and the executor runs the torch class, whose order they equal
(tests/test_schedules_torch.py):

    gpipe             ScheduleGPipe                   (runtime order of `_step_microbatches`)
    1f1b              Schedule1F1B                    (runtime order of `_step_microbatches`; torch's own
                                                       `pipeline_order` IR mislabels the last rank's micro-batches;
                                                       with its pairs overlapped and pp 1, Megatron-Core's combined
                                                       1F1B without pipelining)
    interleaved-1f1b  ScheduleInterleaved1F1B         (`pipeline_order`; with its pairs overlapped, Megatron-Core's
                                                       combined 1F1B order, one more warmup forward)
    looped-bfs        ScheduleLoopedBFS               (`pipeline_order`)
    zb-h1             ScheduleInterleavedZeroBubble   (`pipeline_order`; with vpp == 1 this is ZB-H1 of the
                                                       zero-bubble paper, torch accepts one stage per rank there)
    zbv               ScheduleZBVZeroBubble           (`pipeline_order`)
    dualpipev         ScheduleDualPipeV               (`pipeline_order`, OVERLAP_F_B split into its F then B;
                                                       the pairs are `ScheduleSpec.pairs`)
    dualpipe          none: DeepSeek's bidirectional DualPipe (deepseek-ai/DualPipe `DualPipe.step`); the
                                                       executor refuses it (`ScheduleSpec.executor_note`)
    seq1f1b           none: torch's `_PipelineScheduleRuntime` runs this order itself (execute/seq_chunks.py)

seq1f1b (Sun et al., "Seq1F1B", arXiv 2406.03488) splits each micro-batch's sequence into k chunks that flow through
the pipeline as units, in causal order, the later chunks attending to the earlier chunks' keys and values. k is the
config field `ParallelConfig.seq_chunks` (1 for every other schedule, and absent from a plan JSON unless > 1); a
schedule built with k > 1 numbers its units u = i * k + j (micro-batch i, chunk j) and its `num_microbatches` counts
units. Where the chunks' boundaries fall (`ParallelConfig.seq_split`: equal lengths, or the paper's equal work) does
not change the order, only the units' costs (`cost/compute.py::seq_chunk_bounds`).

dualpipe (DeepSeek-V3 technical report, Sec. 3.2.1, Fig. 5, Table 2) feeds micro-batches from both ends of the
pipeline: rank r holds model stage r of the forward direction and model stage pp-1-r of the reverse one, two copies
of the parameters of a model stage on the ranks r and pp-1-r. Its config splits the model into pp stages (vpp 1,
the partition one entry per model stage); its schedule has `directions` 2 and 2 * pp stages, stage d * pp + k being
model stage k in direction d (`Schedule.model_stage`), placed as V placement places them (rank r holds stages r
and 2pp-1-r). The first half of the micro-batches (0 .. m/2-1) run in direction 0, the others in direction 1; each
micro-batch passes the pp stages of its direction only (`Schedule.chain`).

Pure Python: must not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache, partial

from autoconf.spec import schedule_orders as orders
from autoconf.spec.schedule_orders import Action

KINDS = ("F", "B", "I", "W")
# Chunk counts per rank the search tries for schedules that take any number of chunks.
MANY_CHUNKS = (2, 3, 4, 6, 8)


def _bubble_full(pp: int, forward: float, backward: float, weight: float) -> float:
    return (pp - 1) * (forward + backward + weight)


def _bubble_zb_h1(pp: int, forward: float, backward: float, weight: float) -> float:
    return (pp - 1) * max(0.0, forward + backward - weight)


def _bubble_v(pp: int, forward: float, backward: float, weight: float) -> float:
    return (pp - 1) * forward


def _bubble_dual(pp: int, forward: float, backward: float, weight: float) -> float:
    """DualPipe on pp ranks runs, rank for rank, dualpipev's order on pp/2 ranks (`schedule_orders.dualpipe_order`),
    so its bound is dualpipev's there. Table 2's (pp/2 - 1)(F&B + B - 3W) needs the pair's time F&B, which the
    bound does not take (tests/test_schedules.py checks the simulation against Table 2)."""
    return _bubble_v(pp // 2, forward, backward, weight)


# The pipeline runtimes whose rules a schedule's factors must meet (`ScheduleSpec.problem`; a framework's is
# `Execution.pipeline_runtime`): torch.distributed.pipelining's classes, and Megatron-LM's schedules.
RUNTIMES = ("torch", "megatron")


def loop_stage_to_rank(pp: int, vpp: int = 1) -> tuple[int, ...]:
    """Rank of each of pp x vpp stages in a loop: stage s on rank s % pp (Megatron's interleaved order)."""
    return tuple(s % pp for s in range(pp * vpp))


def v_stage_to_rank(pp: int) -> tuple[int, ...]:
    """Rank of each of 2 pp stages in a V: rank r holds stages r and 2 pp - 1 - r (ZB-V, DualPipeV)."""
    return tuple(range(pp)) + tuple(reversed(range(pp)))


@dataclass(frozen=True)
class ScheduleSpec:
    """What a pipeline schedule is, in one place.

    chunks: the chunk counts per rank (vpp) the search tries; the first is the one the profiler times.
    min_vpp / max_vpp: the chunk counts torch accepts (max None: any).
    min_microbatches_per_rank: m must be at least this times pp for the order itself (dualpipev, dualpipe: 2).
    torch_min_microbatches_per_rank: torch's class asks for m at least this times pp on top (torch 2.13's
        Schedule1F1B: 1). Megatron-LM's and nanotron's 1F1B run fewer micro-batches than stages (warm-up
        min(pp - r - 1, m) forwards, the order `one_f_one_b_order` builds), so the rule holds only where a
        framework's pipelines run on torch's runtime (`Execution.pipeline_runtime`, RUNTIMES).
    megatron_whole_groups: Megatron-LM's runtime runs it with m a multiple of pp and at least pp (its interleaved
        schedule takes micro-batches in groups of `microbatch_group_size_per_vp_stage`, pp by default, and
        refuses a group above m or a last group below pp: megatron/core/pipeline_parallel/schedules.py
        `forward_backward_pipelining_with_interleaving`).
    whole_rounds: m must be a multiple of its rounds max(1, m // pp) (torch's interleaved family).
    bubble(pp, f, b, w): the textbook idle time of one rank, in the seconds of the smallest chunk's forward,
        backward-for-inputs and backward-for-weights (a lower bound of what the simulation finds).
    exposed_fill_drain: the first forward and the last backward pay every P2P hop on top of the bubble
        (gpipe, 1f1b); other orders can hide the transfers in idle time.
    fsdp_gather_per_chunk: all micro-batches pass a chunk together, so ZeRO-3 gathers a chunk once per step.
    executor_zero3: the executor trains it under ZeRO-3 with pp > 1 (FSDP resharding after forward).
    fsdp_gathers_chunks: torch's runtime gathers whole chunks under FSDP itself (UNSHARD/RESHARD actions,
        torch 2.13 `_PipelineScheduleRuntime`); False where FSDP's own hooks decide (torch's single-stage schedules).
    megatron_note: why Megatron-LM cannot run it as is, or None.
    torchtitan_note: why torchtitan cannot run it as is, or None (torchtitan names torch's schedule classes).
    sequence_chunks: splits each micro-batch's sequence into `ParallelConfig.seq_chunks` chunks that flow as
        units (the order builder takes `seq_chunks`).
    pairs: (rank, pp, vpp, m) -> the positions in the rank's order of the forwards the schedule runs together with
        the full backward (of another stage and micro-batch) right after them, as one overlapped pair (DualPipe's
        F&B, torch's OVERLAP_F_B action), or None. Whether a pair really overlaps is the framework's
        (`Execution.overlap_paired_chunks`); the simulation then lets each one's communication hide behind the
        other's compute (cost/simulate.py). The positions are in `paired_order`'s list where it is set.
    paired_order: the order the schedule runs when its pairs overlap, where that differs from `order` (Megatron-Core's
        interleaved 1F1B with `overlap_moe_expert_parallel_comm` runs one more warmup forward), or None: the same.
    directions: 1, or 2 where micro-batches enter from both ends (dualpipe; module docstring): its schedule has
        directions x pp x vpp stages, each model stage held twice, and needs an even pp and an even m.
    executor_note: why autoconf's executor cannot run it (one line naming what would), or None. The support rule
        refuses it with this line; the search proposes it only where `--fix schedule=` pins it.
    """

    name: str
    torch_class: str | None  # None: no torch.distributed.pipelining class runs it
    order: Callable[[int, int, int, int], list[orders.Op]]  # (rank, pp, vpp, m) -> (kind code, stage, micro-batch)s
    chunks: tuple[int, ...]
    min_vpp: int
    max_vpp: int | None
    v_placement: bool
    split_backward: bool
    bubble: Callable[[int, float, float, float], float]
    exposed_fill_drain: bool = False
    min_microbatches_per_rank: int = 0
    torch_min_microbatches_per_rank: int = 0
    megatron_whole_groups: bool = False
    whole_rounds: bool = False
    fsdp_gather_per_chunk: bool = False
    executor_zero3: bool = True
    fsdp_gathers_chunks: bool = True
    megatron_note: str | None = None
    torchtitan_note: str | None = None
    sequence_chunks: bool = False
    pairs: Callable[[int, int, int, int], tuple[int, ...]] | None = None
    paired_order: Callable[[int, int, int, int], list[orders.Op]] | None = None
    directions: int = 1
    executor_note: str | None = None

    @property
    def overlaps_paired_chunks(self) -> bool:
        """Its steady state runs a forward chunk and a backward chunk of different micro-batches as one pair."""
        return self.pairs is not None

    @property
    def single_chunk(self) -> bool:
        """Runs with one chunk per rank, so also without a pipeline (pp == 1: plain gradient accumulation)."""
        return self.chunks == (1,) and self.directions == 1

    def problem(self, pp: int, vpp: int, m: int, runtime: str | None = "torch") -> str | None:
        """Why `runtime` (RUNTIMES; torch 2.13's by default) cannot run this schedule with these factors (one line
        naming what would work), or None; with `runtime` None, only what the order itself needs."""
        name = self.name
        if self.directions > 1:
            if vpp != 1:
                return (f"{name} needs vpp == 1 (got {vpp}): each rank holds one model stage and its mirror rank's "
                        f"(pp stages, each twice); use dualpipev for two chunks per rank")
            if pp % 2:
                return (f"{name} needs an even pp (got {pp}): rank r holds the stages of ranks r and pp-1-r; use "
                        f"pp {pp + 1} or dualpipev")
            if m % 2:
                return (f"{name} needs an even num_microbatches (got {m}): half run in each direction; use {m - 1} "
                        f"or {m + 1} micro-batches")
        if self.max_vpp == self.min_vpp and vpp != self.min_vpp:
            hint = ("exactly two stages per rank in V placement" if self.v_placement else
                    "use interleaved-1f1b or looped-bfs for vpp > 1")
            return f"{name} needs vpp == {self.min_vpp} (got {vpp}){':' if self.v_placement else ';'} {hint}"
        if vpp < self.min_vpp:
            return f"{name} needs vpp >= {self.min_vpp} (got {vpp}); use 1f1b for one stage per rank"
        if m < self.min_microbatches_per_rank * pp:
            least = self.min_microbatches_per_rank * pp
            factor = "pp" if self.min_microbatches_per_rank == 1 else f"{self.min_microbatches_per_rank} * pp"
            return (f"{name} needs num_microbatches ({m}) >= {factor} ({least}); use a global batch giving at least "
                    f"{least} micro-batches")
        if runtime == "torch" and m < self.torch_min_microbatches_per_rank * pp:
            least = self.torch_min_microbatches_per_rank * pp
            per_rank = self.torch_min_microbatches_per_rank
            factor = "pp" if per_rank == 1 else f"{per_rank} * pp"
            return (f"{name} needs num_microbatches ({m}) >= {factor} ({least}) in torch's {self.torch_class} "
                    f"(torch.distributed.pipelining); use a global batch giving at least {least} micro-batches or "
                    f"gpipe (which torch runs with any number); Megatron's runtime (frameworks megatron, "
                    f"megatron-core) runs fewer")
        if runtime == "megatron" and self.megatron_whole_groups and (m < pp or m % pp):
            fits = f"{pp}" if m < pp else f"{m - m % pp} or {m - m % pp + pp}"
            return (f"{name} needs num_microbatches ({m}) to be a multiple of pp ({pp}) in Megatron-LM (its "
                    f"interleaved schedule runs groups of pp micro-batches per virtual stage); use {fits} "
                    f"micro-batches, or 1f1b")
        if self.whole_rounds:
            rounds = max(1, m // pp)
            if m % rounds:
                lo = next(k for k in range(m - 1, 0, -1) if k % max(1, k // pp) == 0)
                hi = next(k for k in range(m + 1, 2 * m + pp) if k % max(1, k // pp) == 0)
                return (f"{name} needs num_microbatches ({m}) to be a multiple of the number of rounds m // pp "
                        f"({rounds}); use {lo} or {hi} micro-batches (any multiple of pp={pp} works)")
        return None

    def stage_to_rank(self, pp: int, vpp: int) -> tuple[int, ...]:
        """Rank of each virtual stage: `v_stage_to_rank` or `loop_stage_to_rank`, as torch's
        `generate_stage_to_rank_mapping` does."""
        return v_stage_to_rank(pp) if self.v_placement else loop_stage_to_rank(pp, vpp)

    def num_stages(self, pp: int, vpp: int) -> int:
        """Stages of its schedule: pp * vpp, twice that for two directions (dualpipe)."""
        return pp * vpp * self.directions


_REGISTRY: dict[str, ScheduleSpec] = {}


def register(spec: ScheduleSpec) -> ScheduleSpec:
    """Adds a schedule to every view (CLI choices, search, bounds, simulation, exporters, support rule)."""
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def schedule_spec(name: str) -> ScheduleSpec:
    """The registered spec of `name`; ValueError (one line listing the names) for an unknown one."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(_REGISTRY)}") from None


class _Names(Sequence):
    """The registered schedule names, read at each use (so a schedule registered later appears everywhere)."""

    def __getitem__(self, index):
        return tuple(_REGISTRY)[index]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(_REGISTRY))

    def __contains__(self, name) -> bool:
        return name in _REGISTRY

    def __repr__(self) -> str:
        return repr(tuple(_REGISTRY))


SCHEDULES: Sequence[str] = _Names()

register(ScheduleSpec(
    "gpipe", "GPipe", orders.gpipe_order, chunks=(1,), min_vpp=1, max_vpp=1, v_placement=False,
    split_backward=False, bubble=_bubble_full, exposed_fill_drain=True, fsdp_gathers_chunks=False,
    megatron_note="schedule gpipe cannot be expressed: Megatron-LM always runs 1F1B (same bubble, less memory)"))
register(ScheduleSpec(
    "1f1b", "1F1B", orders.one_f_one_b_order, chunks=(1,), min_vpp=1, max_vpp=1, v_placement=False,
    split_backward=False, bubble=_bubble_full, exposed_fill_drain=True, fsdp_gathers_chunks=False,
    torch_min_microbatches_per_rank=1, pairs=orders.one_f_one_b_combined_pairs,
    paired_order=orders.one_f_one_b_combined_order))
register(ScheduleSpec(
    "interleaved-1f1b", "Interleaved1F1B", orders.interleaved_order, chunks=MANY_CHUNKS, min_vpp=2, max_vpp=None,
    v_placement=False, split_backward=False, bubble=_bubble_full, whole_rounds=True, megatron_whole_groups=True,
    pairs=orders.interleaved_combined_pairs, paired_order=orders.interleaved_combined_order))
register(ScheduleSpec(
    "looped-bfs", "LoopedBFS", orders.looped_bfs_order, chunks=MANY_CHUNKS, min_vpp=1, max_vpp=None,
    v_placement=False, split_backward=False, bubble=_bubble_full,
    fsdp_gather_per_chunk=True,
    megatron_note="schedule looped-bfs cannot be expressed: Megatron-LM runs the interleaved 1F1B schedule"))
register(ScheduleSpec(
    "zb-h1", "InterleavedZeroBubble", orders.zb_h1_order, chunks=(1,), min_vpp=1, max_vpp=None, v_placement=False,
    split_backward=True, bubble=_bubble_zb_h1, whole_rounds=True,
    executor_zero3=False,
    megatron_note="schedule zb-h1 (zero bubble, split backward) is not in Megatron-LM's main schedules; it runs 1F1B "
                  "(or interleaved 1F1B with vpp > 1)"))
register(ScheduleSpec(
    "zbv", "ZBVZeroBubble", orders.zbv_order, chunks=(2,), min_vpp=2, max_vpp=2, v_placement=True,
    split_backward=True, bubble=_bubble_v,
    executor_zero3=False,
    megatron_note="schedule zbv (V-shaped, two chunks per rank) cannot be expressed in Megatron-LM; the closest is "
                  "the interleaved 1F1B schedule below"))
register(ScheduleSpec(
    "dualpipev", "DualPipeV", orders.dualpipev_order, chunks=(2,), min_vpp=2, max_vpp=2, v_placement=True,
    split_backward=True, bubble=_bubble_v,
    min_microbatches_per_rank=2, executor_zero3=False, pairs=orders.dualpipev_pairs,
    megatron_note="schedule dualpipev (V-shaped, two chunks per rank) cannot be expressed in Megatron-LM; the "
                  "closest is the interleaved 1F1B schedule below"))
register(ScheduleSpec(
    "dualpipe", None, orders.dualpipe_order, chunks=(1,), min_vpp=1, max_vpp=1, v_placement=True,
    split_backward=True, bubble=_bubble_dual, min_microbatches_per_rank=2, executor_zero3=False,
    pairs=orders.dualpipe_pairs, directions=2,
    megatron_note="schedule dualpipe (bidirectional, two parameter copies per rank) cannot be expressed in "
                  "Megatron-LM; the 1F1B schedule below runs the same pipeline stages in one direction",
    torchtitan_note="schedule dualpipe (bidirectional, two parameter copies per rank) has no "
                    "torch.distributed.pipelining class, so torchtitan cannot run it; dualpipev is its V twin",
    executor_note="schedule dualpipe is not run by the executor: torch.distributed.pipelining has no class for "
                  "stages whose parameters are duplicated on two ranks in two directions; use dualpipev (its V "
                  "twin: the same bubble, half the parameters per rank)"))


def _bubble_seq1f1b(pp: int, forward: float, backward: float, weight: float) -> float:
    """1F1B's (p-1)(F+B+W) over sequence chunks, in the seconds of the mean chunk's passes: 1F1B's bubble / k when
    every chunk costs the same (the paper's computation-wise split, seq_split "work"; exact then, up to the
    boundaries' rounding), and below what the simulation finds under an even token split, whose later chunks do
    more causal attention (checked over a grid of p, m, k and attention shares in tests/test_seq1f1b.py, not
    proven)."""
    return _bubble_full(pp, forward, backward, weight)


register(ScheduleSpec(
    "seq1f1b", None, orders.seq1f1b_order, chunks=(1,), min_vpp=1, max_vpp=1, v_placement=False,
    split_backward=False, bubble=_bubble_seq1f1b, exposed_fill_drain=True, fsdp_gathers_chunks=True,
    sequence_chunks=True,
    megatron_note="schedule seq1f1b (sequence-level 1F1B) is not in Megatron-LM; its authors' fork "
                  "(github.com/thunlp/Seq1F1B, --pipe-sp-splits) runs it; upstream runs the 1F1B schedule below",
    torchtitan_note="schedule seq1f1b (sequence-level 1F1B) has no torch.distributed.pipelining class, so torchtitan "
                    "cannot run it; the 1F1B schedule below is the closest"))


class RankActions(Sequence):
    """A schedule's actions, per rank in execution order, from the builders' (kind code, stage, micro-batch)
    tuples (`compiled`): each rank's tuple of `Action`s is made when first read (the search reads few of them)."""

    def __init__(self, compiled: tuple[tuple[tuple[int, int, int], ...], ...]):
        self.compiled = compiled
        self._rows: dict[int, tuple[Action, ...]] = {}

    def __len__(self) -> int:
        return len(self.compiled)

    def __getitem__(self, rank):
        if isinstance(rank, slice):
            return tuple(self[r] for r in range(len(self))[rank])
        rank = range(len(self))[rank]  # negative indices, and IndexError past the end
        row = self._rows.get(rank)
        if row is None:
            letter = orders.KINDS
            row = self._rows[rank] = tuple(Action(letter[k], s, i) for k, s, i in self.compiled[rank])
        return row

    def __iter__(self) -> Iterator[tuple[Action, ...]]:
        return (self[r] for r in range(len(self)))

    def __eq__(self, other) -> bool:
        if isinstance(other, RankActions):
            return self.compiled == other.compiled
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


@dataclass(frozen=True)
class Schedule:
    name: str
    pp: int
    vpp: int
    num_microbatches: int
    stage_to_rank: tuple[int, ...]  # rank that holds each virtual stage (len pp*vpp)
    actions: Sequence[tuple[Action, ...]]  # per rank, in execution order (build_schedule gives a RankActions)
    # Chunks of each micro-batch's sequence that flow as units (seq1f1b); num_microbatches then counts the units,
    # unit u being chunk u % seq_chunks of micro-batch u // seq_chunks.
    seq_chunks: int = 1
    # Per rank, the positions of the forwards paired with the backward after them (`ScheduleSpec.pairs`); () none.
    paired: tuple[tuple[int, ...], ...] = ()
    # 2 where micro-batches enter from both ends (dualpipe): stage d * chain + k is model stage k in direction d.
    directions: int = 1

    @property
    def num_stages(self) -> int:
        return self.pp * self.vpp * self.directions

    @property
    def chain(self) -> int:
        """Stages each micro-batch passes, in stage order: all of them, or one direction's (dualpipe)."""
        return self.pp * self.vpp

    def model_stage(self, stage: int) -> int:
        """The model stage (partition entry) that schedule stage `stage` runs: itself, or under two directions the
        same model stage of the other direction's copy."""
        return stage % self.chain

    def model_stages_of_rank(self, rank: int) -> tuple[int, ...]:
        """The model stages (partition entries) whose parameters `rank` holds, one entry per copy."""
        return tuple(self.model_stage(s) for s in self.stages_of_rank(rank))

    def microbatches_of_stage(self, stage: int) -> range:
        """The micro-batches that pass `stage`: all, or its direction's half (dualpipe)."""
        per = self.num_microbatches // self.directions
        d = stage // self.chain
        return range(d * per, (d + 1) * per)

    @property
    def splits_backward(self) -> bool:
        """True if the schedule runs I/W (split backward) actions anywhere."""
        return any(k in (orders.I, orders.W) for acts in self.compiled for k, _, _ in acts)

    def stages_of_rank(self, rank: int) -> tuple[int, ...]:
        return tuple(s for s, r in enumerate(self.stage_to_rank) if r == rank)

    @cached_property
    def compiled(self) -> tuple[tuple[tuple[int, int, int], ...], ...]:
        """Per rank, (kind code, stage, micro-batch) with codes F=0, B=1, I=2, W=3; cached for the simulator."""
        if isinstance(self.actions, RankActions):
            return self.actions.compiled
        return tuple(_compiled(acts) for acts in self.actions)

    @cached_property
    def last_backwards(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per rank, (index in its order, stage) of the action that completes each micro-batch's backward of each of
        its stages (the last B, I or W of it; under sequence chunks the micro-batch's last chunk's), in order."""
        out = []
        for acts in self.compiled:
            last: dict[tuple[int, int], int] = {}
            for i, (kind, stage, unit) in enumerate(acts):
                if kind != orders.F:
                    last[stage, unit // self.seq_chunks] = i
            out.append(tuple(sorted((i, stage) for (stage, _), i in last.items())))
        return tuple(out)

    def __str__(self) -> str:
        return "\n".join(f"rank {r}: " + " ".join(map(str, acts)) for r, acts in enumerate(self.actions))


def stage_to_rank(name: str, pp: int, vpp: int) -> tuple[int, ...]:
    """Rank of each virtual stage of schedule `name` (see `ScheduleSpec.stage_to_rank`)."""
    return schedule_spec(name).stage_to_rank(pp, vpp)


def pipeline_problem(config, runtime: str | None) -> str | None:
    """Why `runtime` (RUNTIMES) cannot run `config`'s pipeline (one line naming what would work), or None: its
    schedule's rules at its pp, vpp and micro-batch count; no pipeline (pp 1) has none. The one reading of a
    runtime's rules for the frameworks' check, the executor's support rule and the exports' notes."""
    if config.pp == 1 or config.schedule not in _REGISTRY:
        return None
    return _REGISTRY[config.schedule].problem(config.pp, config.vpp, config.num_microbatches, runtime)


def check_schedule(name: str, pp: int, vpp: int, num_microbatches: int, seq_chunks: int = 1) -> None:
    """Raise ValueError (one line: the offending factor and what would work) unless the schedule's order is defined
    for these factors (the rules are the spec's: `ScheduleSpec.problem` without torch's own minimum, which
    `Execution.problem` adds where the runtime is torch's), or for seq1f1b unless its order is defined."""
    spec = schedule_spec(name)
    for factor, value in (("pp", pp), ("vpp", vpp), ("num_microbatches", num_microbatches),
                          ("seq_chunks", seq_chunks)):
        if value < 1:
            raise ValueError(f"{factor} must be >= 1 (got {value})")
    if seq_chunks > 1 and not spec.sequence_chunks:
        chunked = ", ".join(n for n in SCHEDULES if schedule_spec(n).sequence_chunks)
        raise ValueError(f"seq_chunks {seq_chunks} needs a schedule that splits sequences ({chunked}); "
                         f"{name} takes seq_chunks 1")
    problem = spec.problem(pp, vpp, num_microbatches, runtime=None)
    if problem:
        raise ValueError(problem)


def _order(spec: ScheduleSpec, seq_chunks: int, overlap: bool = False):
    """The spec's order builder as (rank, pp, vpp, m) -> ops, with the sequence chunks bound; with `overlap`, the
    order it runs when its pairs overlap (`ScheduleSpec.paired_order`)."""
    if overlap and spec.paired_order is not None:
        return spec.paired_order
    return partial(spec.order, seq_chunks=seq_chunks) if spec.sequence_chunks else spec.order


def rank_actions(name: str, pp: int, num_microbatches: int, vpp: int, rank: int,
                 seq_chunks: int = 1, overlap: bool = False) -> tuple[tuple[int, int, int], ...]:
    """`build_schedule(...).compiled[rank]`: one rank's list without building the others'."""
    check_schedule(name, pp, vpp, num_microbatches, seq_chunks)
    return tuple(_order(schedule_spec(name), seq_chunks, overlap)(rank, pp, vpp, num_microbatches))


_CODE = {letter: code for code, letter in enumerate(orders.KINDS)}


def _carries_pairs(spec: ScheduleSpec, overlap: bool) -> bool:
    """Whether the order built for `spec` runs its pairs: with `overlap` (the framework overlaps them, the order is
    `paired_order`), or where that order is the plain one (dualpipev)."""
    return spec.pairs is not None and (overlap or spec.paired_order is None)


@lru_cache(maxsize=4096)
def held_loss_states(name: str, pp: int, vpp: int, num_microbatches: int, rank: int, seq_chunks: int = 1,
                     overlap: bool = False) -> tuple[tuple[int, int], ...]:
    """The distinct (losses, head gradients) pipeline rank `rank` holds for its last stages (of each direction)
    after each action of its order, ((0, 0),) on a rank without one. Losses: units whose forward ran and whose
    backward (B, or I where the backward splits) has not. Head gradients: units past I and before their
    weight-gradient step W, whose W still reads the gradient of the stage's output (the logits): torch's stage
    keeps it in `backward_state` from I to W (tests/test_held_losses.py). A pair run overlapped (`overlap`: the
    order with the framework's pairs) counts its backward first: the backward begins with the loss the forward of
    the pair ends with."""
    spec = schedule_spec(name)
    owner, chain = spec.stage_to_rank(pp, vpp), pp * vpp
    lasts = {s for s in range(len(owner)) if s % chain == chain - 1 and owner[s] == rank}
    if not lasts:
        return ((0, 0),)
    acts = rank_actions(name, pp, num_microbatches, vpp, rank, seq_chunks, overlap)
    pairs = set(spec.pairs(rank, pp, vpp, num_microbatches)) if _carries_pairs(spec, overlap) else set()
    losses = gradients = 0
    states = {(0, 0)}
    j = 0
    while j < len(acts):
        run = (acts[j + 1], acts[j]) if j in pairs else (acts[j],)
        for kind, stage, _ in run:
            if stage not in lasts:
                continue
            losses += 1 if kind == orders.F else -1 if kind in (orders.B, orders.I) else 0
            gradients += 1 if kind == orders.I else -1 if kind == orders.W else 0
            states.add((losses, gradients))
        j += len(run)
    return tuple(sorted(states))


def held_losses(name: str, pp: int, vpp: int, num_microbatches: int, rank: int, seq_chunks: int = 1,
                overlap: bool = False) -> int:
    """The most units (micro-batches; seq1f1b's chunks) whose loss pipeline rank `rank` holds at once
    (`held_loss_states`); 0 on a rank without a last stage. 1 under 1F1B, every unit under gpipe and looped-bfs."""
    return max(losses for losses, _ in held_loss_states(name, pp, vpp, num_microbatches, rank, seq_chunks, overlap))


def _compiled(actions) -> tuple[tuple[int, int, int], ...]:
    return tuple((_CODE[a.kind], a.stage, a.microbatch) for a in actions)


def build_schedule(name: str, pp: int, num_microbatches: int, vpp: int = 1, seq_chunks: int = 1,
                   overlap: bool = False) -> Schedule:
    """Per-rank action lists of schedule `name` (checked with `check_schedule` first); with `seq_chunks` k > 1
    (seq1f1b), of num_microbatches x k units. `paired` holds the pairs of the order built: with `overlap` (the
    framework overlaps them) the order the schedule runs then (`ScheduleSpec.paired_order`) and its pairs; without,
    the pairs only where that order is the plain one (dualpipev), else none."""
    check_schedule(name, pp, vpp, num_microbatches, seq_chunks)
    spec = schedule_spec(name)
    order = _order(spec, seq_chunks, overlap)
    compiled = tuple(tuple(order(rank, pp, vpp, num_microbatches)) for rank in range(pp))
    paired = (tuple(spec.pairs(rank, pp, vpp, num_microbatches) for rank in range(pp))
              if _carries_pairs(spec, overlap) else ())
    return Schedule(name, pp, vpp, num_microbatches * seq_chunks, spec.stage_to_rank(pp, vpp), RankActions(compiled),
                    seq_chunks, paired, spec.directions)
