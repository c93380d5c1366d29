"""The plan: a parallel configuration, its stage partition and GPU placement, and the prediction for it.

`ParallelConfig` is the one value object for the parallel degrees. `ParallelConfig.check(model, world_size)` explains
every violated rule at once, naming each factor, so a user sees all that is wrong with a layout in one line.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from autoconf.errors import UserError
from autoconf.files import is_version, json_sha256, listed, quoted, shown
from autoconf.spec.cluster import COMMAND_LINE_OVERRIDES
from autoconf.spec.dtypes import DTYPES
from autoconf.spec.frameworks import CP_COMM, GRAD_REDUCE, PRESETS, SELECTIVE_RECOMPUTE
from autoconf.spec.grid import AXES, ParallelDims, RankGrid, world_size_of
from autoconf.spec.model import ATTENTION, RECOMPUTE, ModelSpec, is_printable_name
from autoconf.spec.schedules import SCHEDULES, schedule_spec

PLAN_VERSION = 1
# Every field a plan file holds (`Plan.to_dict` writes them), and those of its cluster and placement objects; any
# other is a typo or an edit that nothing would read, refused.
# "content_sha256": the SHA-256 of the plan as autoconf wrote it (`content_sha256`): a plan changed since (a config
# field edited by hand) no longer matches it, and its prediction is estimated again before it is shown or launched;
# so is a plan without it where its cluster is at hand (the edit may have removed it too, or autoconf before
# 2026-12-06 wrote it).
PLAN_FIELDS = ("version", "kind", "model", "cluster", "config", "partition", "placement", "prediction",
               "sequence_split", "content_sha256")
# The last two only where the command line set them in place of the profile's (`spec/cluster.py`
# `command_line_overrides`): every estimate of the plan again applies them.
CLUSTER_FIELDS = ("name", "nodes", "gpus_per_node", "backend", "device", "profile", "profile_sha256",
                  *COMMAND_LINE_OVERRIDES)
PLACEMENT_FIELDS = ("mesh",)
BACKENDS = ("nccl", "gloo")
# Bounds on the work one step's simulation does, and sanity ranges of the inputs (far beyond any real run).
MAX_MICROBATCHES = 65_536  # micro-batches (times seq1f1b's sequence chunks) per pipeline per step
MAX_GLOBAL_BATCH = 1 << 24  # sequences per step
MAX_SEQ_LEN = 1 << 22  # tokens per sequence
# The offload levers, each a boolean config field (default off, so old plans load); cost/offload.py says what each
# moves to host memory and what it costs, execute/parallelize.py applies them:
#   offload_activations  every tensor a transformer block saves for its backward (its activations and the compute
#                        copies of the weights its linears save) is copied to host memory in the forward and back
#                        in the backward: `torch.autograd.graph.save_on_cpu` around each block;
#   offload_optimizer    FSDP2's `CPUOffloadPolicy`: the sharded fp32 parameters, their gradients and the AdamW
#                        states live in host memory and the optimizer step runs on the CPU (needs FSDP: ZeRO >= 1
#                        over dp > 1).
OFFLOADS = ("offload_activations", "offload_optimizer")

# How seq1f1b cuts each sequence into its `seq_chunks` chunks: "even" (equal token counts, the chunks' causal
# attention growing as 2j + 1) or "work" (Seq1F1B's computation-wise split: chunk boundaries that give every chunk
# the same forward time, later chunks shorter; `cost/compute.py::seq_chunk_bounds` solves for them and is the one
# source: the plan stores its answer as `Plan.sequence_split`, which the executor reads).
SEQ_SPLITS = ("even", "work")
# Equal-work chunk boundaries fall on multiples of this many tokens: FlashAttention's query tile, so no chunk ends
# in a partial tile (`seq_split_multiple` makes it finer for short sequences).
SEQ_SPLIT_TILE = 128


# Counts lists longer than this are written with runs (a pipeline of 128 virtual stages otherwise fills a table row).
COUNTS_SHOWN_WHOLE = 8


def counts_text(counts) -> str:
    """Per-stage counts as a label writes them: "4,4,2,0" whole up to COUNTS_SHOWN_WHOLE entries; beyond, each run of
    three or more equal counts as "value*length" ("0,1*62,0,1*18,0*46")."""
    counts = list(counts)
    if len(counts) <= COUNTS_SHOWN_WHOLE:
        return ",".join(map(str, counts))
    runs = []
    for value in counts:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return ",".join(f"{v}*{n}" if n >= 3 else ",".join([str(v)] * n) for v, n in runs)


@dataclass(frozen=True)
class ParallelConfig:
    tp: int
    pp: int
    dp: int
    micro_batch_size: int
    global_batch_size: int
    seq_len: int
    vpp: int = 1
    schedule: str = "1f1b"
    zero_stage: int = 0
    recompute: str = "none"
    sequence_parallel: bool = False
    dtype: str = "bf16"
    attention: str = "flash"
    grad_reduce: str = "step"
    compile: bool = True  # torch.compile each transformer block where the device supports it (CUDA)
    cp: int = 1  # context parallelism: each sequence split over cp ranks (load-balanced causal chunks)
    cp_comm: str = "ring"  # one of CP_COMM; read only when cp > 1
    # Expert parallelism ("MoE parallel folding", spec/grid.py `expert_grid`): the ranks of one pipeline rank, which
    # attention splits as dp x tp, the MoE layers split as edp x ep x etp (experts over ep, each expert's FFN width
    # over etp, expert-data-parallel edp the rest). 1 and 1 on dense models.
    ep: int = 1
    etp: int = 1
    offload_activations: bool = False  # see OFFLOADS
    offload_optimizer: bool = False  # see OFFLOADS
    # How many transformer layers of each virtual stage (in stage order) run the `recompute` mode: the first ones
    # of the stage, as Megatron's --recompute-method block; the others keep their activations. None: every layer.
    # `recomputed_layers` is the one reading of it.
    recompute_layers: tuple[int, ...] | None = None
    # What `recompute` "selective" redoes (spec/frameworks.py SELECTIVE_RECOMPUTE): "attention_core" or torchtitan's
    # per-op "alternate_matmuls". None: the framework's own (`selective_policy` is the one reading). It qualifies
    # selective recompute only: a config with another recompute mode holds None.
    selective_recompute: str | None = None
    # Sequence-level pipelining (schedule seq1f1b): each micro-batch's sequence is split into this many equal chunks
    # that flow through the pipeline as units (spec/schedules.py); 1 for every other schedule. Written to a plan
    # JSON only when > 1, so a plan without it reads as before.
    seq_chunks: int = 1
    # Where the chunks' boundaries fall (one of SEQ_SPLITS); written to a plan JSON only when not "even".
    seq_split: str = "even"

    def __post_init__(self) -> None:
        if isinstance(self.recompute_layers, list):
            object.__setattr__(self, "recompute_layers", tuple(self.recompute_layers))
        if self.recompute != "selective" and self.selective_recompute is not None:
            object.__setattr__(self, "selective_recompute", None)
        if self.seq_chunks == 1 and self.seq_split == "work":
            object.__setattr__(self, "seq_split", "even")  # one chunk has one split

    def label(self, selective: str | None = None) -> str:
        """The layout in one line, every degree and choice that differs from the plain default ("tp2 pp4 dp8 cp2
        ring vpp2 mb1 interleaved-1f1b zero1 rc-selective sp"; "rs-mb": the sharded gradients reduce-scattered
        every micro-batch, grad_reduce "microbatch"; per-stage recompute counts as `counts_text` writes them): what
        tables, pictures and one-line messages name a layout by. `selective`: what selective recompute redoes
        (`frameworks.selective_policy`), marked "/op" when it is the per-op policy."""
        parts = [f"tp{self.tp} pp{self.pp} dp{self.dp}"]
        if self.cp > 1:
            parts.append(f"cp{self.cp} {self.cp_comm}")
        if self.ep > 1 or self.etp > 1:
            parts.append(f"ep{self.ep}" + (f" etp{self.etp}" if self.etp > 1 else ""))
        if self.vpp > 1:
            parts.append(f"vpp{self.vpp}")
        parts.append(f"mb{self.micro_batch_size}")
        parts.append(self.schedule + (f" k{self.seq_chunks} {self.seq_split}" if self.seq_chunks > 1 else ""))
        parts.append(f"zero{self.zero_stage}")
        if self.recompute != "none":
            counts = "" if self.recompute_layers is None else f"[{counts_text(self.recompute_layers)}]"
            op = self.recompute == "selective" and (selective or self.selective_recompute) == "alternate_matmuls"
            parts.append(f"rc-{self.recompute}{'/op' if op else ''}{counts}")
        for flag, name in ((self.sequence_parallel, "sp"), (self.reduces_every_microbatch, "rs-mb"),
                           (self.offload_activations, "off-act"), (self.offload_optimizer, "off-opt")):
            if flag:
                parts.append(name)
        return " ".join(parts)

    @property
    def dims(self) -> ParallelDims:
        return ParallelDims.of(self)

    @property
    def world_size(self) -> int:
        return world_size_of(self)

    @property
    def num_microbatches(self) -> int:
        """Micro-batches per pipeline per step: global batch / (micro-batch x DP)."""
        return self.global_batch_size // (self.micro_batch_size * self.dp)

    @property
    def num_stages(self) -> int:
        return self.pp * self.vpp

    @property
    def ranks_per_stage(self) -> int:
        """Ranks of one pipeline rank: the ranks attention splits over its non-pipeline axes, and the MoE layers
        over edp x ep x etp."""
        return self.world_size // self.pp

    @property
    def edp(self) -> int:
        """Expert-data-parallel degree: the replicas of each expert shard within a pipeline rank."""
        return self.ranks_per_stage // (self.ep * self.etp)

    @property
    def local_seq_len(self) -> int:
        """Tokens of each sequence one rank holds in one pipeline unit: seq_len / cp (two chunks of seq_len / (2 cp)
        under context parallelism, the i-th and the (2 cp - 1 - i)-th, so every rank does the same causal attention
        work), and of those one of the seq_chunks chunks under seq1f1b."""
        return self.seq_len // (self.cp * self.seq_chunks)

    @property
    def dp_cp(self) -> int:
        """Ranks holding the same weights: every data-parallel replica's CP ranks. They reduce their gradients
        together and ZeRO shards over them (Megatron's data-parallel group with CP, torchtitan's dp_shard x cp)."""
        return self.dp * self.cp

    @property
    def zero_sharded(self) -> bool:
        """Whether ZeRO sharding takes effect: zero_stage >= 1 over more than one rank holding the same weights
        (`dp_cp`; with dp == cp == 1 there is nothing to shard; the executor runs such a plan as ZeRO-0, without
        FSDP)."""
        return self.zero_stage >= 1 and self.dp_cp > 1

    @property
    def reduces_every_microbatch(self) -> bool:
        """Whether FSDP reduce-scatters each micro-batch's gradients during its backward (grad_reduce "microbatch"
        on a sharded plan); otherwise a sharded plan accumulates unsharded gradients until its last micro-batch."""
        return self.grad_reduce == "microbatch" and self.zero_sharded

    @property
    def reshard_after_forward(self) -> bool:
        """Whether the executor frees a block's gathered low-precision parameters after its forward and gathers them
        again for its backward: under ZeRO-3, and on unsharded ranks (one-rank FSDP units, a cast) without a
        pipeline, whose micro-batches do not overlap (torchtitan's default). Otherwise the gathered copy of every
        parameter lives through the step."""
        if self.zero_sharded:
            return self.zero_stage == 3
        return self.pp == 1

    @property
    def offloads(self) -> bool:
        """Whether any offload lever is on."""
        return any(getattr(self, name) is True for name in OFFLOADS)

    @property
    def offload_levers(self) -> tuple[str, ...]:
        """The OFFLOADS names of the levers that are on."""
        return tuple(name for name in OFFLOADS if getattr(self, name) is True)

    def compiles_blocks(self, device_kind: str) -> bool:
        """Whether the executor compiles this plan's dense blocks (torch.compile, execute/parallelize.py) on a
        `device_kind` ("gpu", "cpu") device: when the plan asks for it, on GPUs (torch.compile's Triton kernels; on
        CPU inductor needs a C++ toolchain and gains little), and not under offload_activations (its saved-tensor
        hooks are module hooks around each block, which compile would trace). MoE blocks stay eager."""
        return bool(self.compile) and device_kind == "gpu" and not self.offload_activations

    def problems(self, model: ModelSpec, world_size: int | None = None) -> list[str]:
        """Every rule this configuration breaks, each naming the offending factors and what would work."""
        out = ParallelDims.of(self).problems()
        for name in ("vpp", "micro_batch_size", "global_batch_size", "seq_len", "ep", "etp", "seq_chunks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                out.append(f"{name} must be a positive integer (got {value!r})")
        if out:
            return out
        if self.global_batch_size > MAX_GLOBAL_BATCH:
            out.append(f"global batch {self.global_batch_size} is more than {MAX_GLOBAL_BATCH:,} sequences")
        if self.seq_len > MAX_SEQ_LEN:
            out.append(f"seq_len {self.seq_len} is more than {MAX_SEQ_LEN:,} tokens")
        if self.num_microbatches * self.seq_chunks > MAX_MICROBATCHES:
            chunks = f" of {self.seq_chunks} sequence chunks each" if self.seq_chunks > 1 else ""
            out.append(f"{self.num_microbatches} micro-batches{chunks} per pipeline per step (global batch / "
                       f"(micro-batch x dp)) is more than the {MAX_MICROBATCHES:,} a step simulation handles; raise "
                       f"the micro-batch or dp, or lower the global batch{' or seq_chunks' if chunks else ''}")
        out += self.dims.problems(world_size)
        if model.num_heads % self.tp:
            out.append(f"tp {self.tp} does not divide the {model.num_heads} attention heads")
        if model.num_kv_heads % self.tp:
            out.append(f"tp {self.tp} does not divide the {model.num_kv_heads} KV heads "
                       f"(use tp in {_divisors(model.num_kv_heads)})")
        out += self.expert_problems(model)
        if self.num_stages > max_pipeline_stages(model.num_layers):
            out.append(f"pp*vpp = {self.pp}*{self.vpp} = {self.num_stages} stages but the model has only "
                       f"{model.num_layers} layers (at most layers + 2 = {max_pipeline_stages(model.num_layers)} "
                       f"stages: one layer each, the embedding and the head alone on the end stages)")
        if self.global_batch_size % (self.micro_batch_size * self.dp):
            out.append(f"global batch {self.global_batch_size} is not divisible by micro-batch "
                       f"{self.micro_batch_size} x dp {self.dp} = {self.micro_batch_size * self.dp}")
        if self.seq_len > model.max_seq_len and model.arch == "gpt":
            out.append(f"seq_len {self.seq_len} exceeds the model's {model.max_seq_len} learned positions")
        if self.schedule not in SCHEDULES:
            out.append(f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not _is_int(self.zero_stage) or self.zero_stage not in (0, 1, 2, 3):
            out.append(f"zero_stage must be 0, 1, 2 or 3 (got {self.zero_stage!r})")
        if self.recompute not in RECOMPUTE:
            out.append(f"recompute {self.recompute!r} is not one of {', '.join(RECOMPUTE)}")
        if self.recompute_layers is not None:
            counts = self.recompute_layers
            if not isinstance(counts, tuple) or not all(_is_int(n) and n >= 0 for n in counts):
                out.append(f"recompute_layers must be a list of layer counts >= 0, one per virtual stage, or null "
                           f"(got {counts!r})")
            elif len(counts) != self.num_stages:
                out.append(f"recompute_layers has {len(counts)} entries but pp*vpp = {self.num_stages} stages")
            elif self.recompute == "none":
                out.append("recompute_layers needs recompute selective or full (it counts the layers of each "
                           "stage that recompute)")
        if self.selective_recompute is not None:
            if self.selective_recompute not in SELECTIVE_RECOMPUTE:
                out.append(f"selective_recompute {self.selective_recompute!r} is not one of "
                           f"{', '.join(SELECTIVE_RECOMPUTE)}")
            elif self.selective_recompute == "alternate_matmuls" and self.attention != "flash":
                out.append("selective_recompute alternate_matmuls saves the fused attention kernel's output: it needs "
                           f"attention flash (got {self.attention})")
        if self.dtype not in DTYPES:
            out.append(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        for name in ("compile", "sequence_parallel", *OFFLOADS):
            if not isinstance(getattr(self, name), bool):
                out.append(f"{name} must be true or false (got {getattr(self, name)!r})")
        if self.offload_optimizer is True and not self.zero_sharded:
            out.append(f"offload_optimizer (FSDP2 CPUOffloadPolicy) needs FSDP sharding: zero_stage >= 1 and dp x cp "
                       f"> 1 (got zero_stage {self.zero_stage}, dp x cp {self.dp_cp})")
        if self.attention not in ATTENTION:
            out.append(f"attention {self.attention!r} is not one of {', '.join(ATTENTION)}")
        if self.grad_reduce not in GRAD_REDUCE:
            out.append(f"grad_reduce {self.grad_reduce!r} is not one of {', '.join(GRAD_REDUCE)}")
        if self.sequence_parallel and self.tp == 1:
            out.append("sequence_parallel needs tp > 1")
        if self.cp_comm not in CP_COMM:
            out.append(f"cp_comm {self.cp_comm!r} is not one of {', '.join(CP_COMM)}")
        if self.cp > 1 and self.attention != "flash":
            out.append(f"cp {self.cp} needs attention flash (context-parallel attention is blockwise); use cp 1 for "
                       f"attention {self.attention}")
        split = cp_split_problem(self.seq_len, self.cp, world_size)
        if split:
            out.append(split)
        chunks = self.seq_chunks if self.seq_len % self.seq_chunks == 0 else 1  # (else a seq_chunks problem)
        sp_split = self.sequence_parallel and sequence_parallel_problem(self.seq_len, self.tp, self.cp, chunks)
        if sp_split:
            out.append(sp_split)
        out += self.seq_chunk_problems()
        if not out and self.schedule in SCHEDULES:
            problem = schedule_spec(self.schedule).problem(self.pp, self.vpp, self.num_microbatches,
                                                           runtime=None)  # (a runtime's own: Execution.problem)
            if problem:
                out.append(problem)
        return out

    def seq_chunk_problems(self) -> list[str]:
        """The sequence-chunk rules: seq_chunks > 1 only under a schedule that splits sequences (seq1f1b), with
        seq_len divisible by seq_chunks (the mean chunk the costs are read at; a chunk's tokens over tp under
        sequence parallelism is `sequence_parallel_problem`'s), a known `seq_split`, with flash attention
        (a chunk's scores against the earlier chunks' keys are not modelled for standard attention) and without
        context parallelism (not modelled together)."""
        k = self.seq_chunks
        if k == 1:
            return []
        if self.schedule in SCHEDULES and not schedule_spec(self.schedule).sequence_chunks:
            chunked = ", ".join(n for n in SCHEDULES if schedule_spec(n).sequence_chunks)
            return [f"seq_chunks {k} needs a schedule that splits sequences ({chunked}); schedule {self.schedule} "
                    f"takes seq_chunks 1"]
        out = []
        if self.seq_len % k:
            out.append(f"seq_chunks {k} does not divide seq_len {self.seq_len} (use seq_chunks in "
                       f"{_divisors(self.seq_len, 64)})")
        if self.attention != "flash":
            out.append(f"seq_chunks {k} needs attention flash (the chunks' attention to earlier chunks' keys is "
                       f"modelled for flash attention only)")
        if self.cp > 1:
            out.append(f"seq_chunks {k} with cp {self.cp} is not modelled; use one of them")
        if self.seq_split not in SEQ_SPLITS:
            out.append(f"seq_split {self.seq_split!r} is not one of {', '.join(SEQ_SPLITS)}")
        return out

    @property
    def seq_split_multiple(self) -> int:
        """The token multiple every chunk boundary falls on: for the even split the chunk length itself; for the
        equal-work split the largest divisor of SEQ_SPLIT_TILE (FlashAttention's 128-token query tile) that divides
        seq_len / (8 k), so a chunk can move in at least 8 steps on short test sequences, times tp under sequence
        parallelism (each chunk's tokens split over the TP ranks). Divides seq_len."""
        k = self.seq_chunks
        if self.seq_split == "even" or k == 1:
            return self.seq_len // k
        step = math.gcd(SEQ_SPLIT_TILE, max(1, self.seq_len // (8 * k)))
        if self.sequence_parallel:
            step = math.lcm(step, self.tp)
        return step if self.seq_len % step == 0 else self.seq_len // k

    def expert_problems(self, model: ModelSpec) -> list[str]:
        """The expert-parallel rules: ep and etp only on MoE models; ep divides the routed experts; etp divides
        an expert's FFN width; ep x etp divides the ranks of one pipeline rank (edp the rest). Top-k above the
        expert count is refused when the model is read (spec/model.py MoESpec)."""
        if model.moe is None:
            if self.ep > 1 or self.etp > 1:
                return [f"ep {self.ep} and etp {self.etp} need a mixture-of-experts model; {model.name} is dense "
                        f"(use ep=1 etp=1)"]
            return []
        out = []
        experts, width = model.moe.num_experts, model.moe.moe_intermediate_size
        if experts % self.ep:
            out.append(f"ep {self.ep} does not divide the {experts} experts (use ep in {_divisors(experts)})")
        if width % self.etp:
            out.append(f"etp {self.etp} does not divide the expert FFN width {width} (use etp in "
                       f"{_divisors(width, 64)})")
        ranks = self.ranks_per_stage
        if ranks % (self.ep * self.etp):
            out.append(f"ep*etp = {self.ep}*{self.etp} = {self.ep * self.etp} does not divide the {ranks} ranks of a "
                       f"pipeline rank (world / pp; use ep*etp in {_divisors(ranks)})")
        return out

    def check(self, model: ModelSpec, world_size: int | None = None) -> "ParallelConfig":
        problems = self.problems(model, world_size)
        if problems:
            raise UserError("impossible layout: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict:
        """The config JSON; `recompute_layers` and `selective_recompute` only when set, so a plan without them
        reads as before."""
        d = dataclasses.asdict(self)
        if self.selective_recompute is None:
            del d["selective_recompute"]
        if self.seq_chunks == 1:
            del d["seq_chunks"]
        if self.seq_split == "even":
            del d["seq_split"]
        if self.recompute_layers is None:
            del d["recompute_layers"]
        else:
            d["recompute_layers"] = list(self.recompute_layers)
        d["num_microbatches"] = self.num_microbatches
        return d

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "ParallelConfig":
        """The config a plan file holds. Besides `problems` (checked by `check`), refuses what the dataclass would
        quietly drop: unknown fields, a `selective_recompute` under another recompute mode, a `seq_split` without
        sequence chunks."""
        fields = {f.name for f in dataclasses.fields(cls)}
        _refuse_unknown(data, (*sorted(fields), "num_microbatches"), source, "config")
        for name in ("schedule", "recompute", "dtype", "attention", "grad_reduce", "cp_comm", "seq_split",
                     "selective_recompute"):
            if name in data and not isinstance(data[name], str) and not (name == "selective_recompute"
                                                                         and data[name] is None):
                example = cls.__dataclass_fields__[name].default
                raise UserError(f"{source}: field {name} must be a name"
                                + (f" such as {quoted(example)}" if isinstance(example, str) else "")
                                + f" (got {quoted(data[name])})")
        policy, mode = data.get("selective_recompute"), data.get("recompute", "none")
        if policy is not None and mode != "selective":
            raise UserError(f"{source}: selective_recompute {quoted(policy)} qualifies recompute selective, "
                            f"but recompute is {quoted(mode)}; drop selective_recompute or set recompute to "
                            f"\"selective\"")
        split = data.get("seq_split", "even")
        if split != "even" and data.get("seq_chunks", 1) == 1:
            raise UserError(f"{source}: seq_split {quoted(split)} places the boundaries of seq1f1b's "
                            f"sequence chunks, but seq_chunks is 1; drop seq_split or set seq_chunks > 1")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in data]
        if missing:
            raise UserError(f"{source}: missing config field(s) {', '.join(missing)}")
        try:
            config = cls(**{k: v for k, v in data.items() if k in fields})
        except TypeError as err:
            raise UserError(f"{source}: {err}") from None
        stated = data.get("num_microbatches")
        sizes = (config.global_batch_size, config.micro_batch_size, config.dp)
        if (stated is not None and all(type(n) is int and n > 0 for n in sizes)
                and config.global_batch_size % (config.micro_batch_size * config.dp) == 0
                and stated != config.num_microbatches):
            # (derived, written for the reader: a different value was edited in, and would be ignored; a batch that
            # does not divide is the config's own problem, which names it)
            raise UserError(f"{source}: num_microbatches {quoted(stated)} is not global_batch_size / "
                            f"(micro_batch_size x dp) = {config.global_batch_size} / ({config.micro_batch_size} x "
                            f"{config.dp}) = {config.num_microbatches}; change global_batch_size or micro_batch_size "
                            f"instead, or drop num_microbatches")
        return config


def _divisors(n: int, at_most: int | None = None) -> str:
    return ", ".join(str(d) for d in range(1, min(n, at_most or n) + 1) if n % d == 0)


def cp_splits(seq_len: int, cp: int) -> bool:
    """Whether `cp` ranks can split sequences of `seq_len` tokens into their load-balanced causal chunks: 2 x cp
    equal ones, a head and a tail per rank (always at cp 1)."""
    return cp == 1 or seq_len % (2 * cp) == 0


def cp_split_problem(seq_len: int, cp: int, devices: int | None = None) -> str | None:
    """Why `cp` cannot split sequences of `seq_len` tokens into its load-balanced causal chunks (2 x cp equal ones,
    a head and a tail per rank), naming the degrees that can (of those dividing `devices`, when given); None when
    it can."""
    if not cp_splits(seq_len, cp):
        return (f"cp {cp} needs seq_len {seq_len} divisible by 2 x cp = {2 * cp} (each rank holds one head and one "
                f"tail chunk of the causal sequence; use cp in {_cp_divisors(seq_len, devices)})")
    return None


def sequence_parallel_problem(seq_len: int, tp: int, cp: int = 1, chunks: int = 1) -> str | None:
    """Why sequence parallelism cannot split a rank's tokens of each sequence over its `tp` ranks: the seq_len / cp
    tokens of its share, and of each of seq1f1b's `chunks` chunks; None when it can. The one rule the config's
    problems and the search's candidates read."""
    if seq_len % cp or (seq_len // cp) % tp:
        problem = f"the {seq_len} / cp {cp} tokens of each rank's sequence share"
    elif chunks > 1 and (seq_len // chunks) % tp:
        problem = f"each of the seq_chunks {chunks} chunks' {seq_len // chunks} tokens"
    else:
        return None
    step = tp * cp * chunks // math.gcd(cp, chunks)  # (the smallest seq_len both splits take)
    return (f"sequence_parallel needs tp {tp} to divide {problem}; use a seq_len divisible by {step} (e.g. "
            f"{seq_len + step - seq_len % step}), or drop sequence_parallel (with tp {tp})")


def _cp_divisors(seq_len: int, devices: int | None = None, at_most: int = 64) -> str:
    """The context-parallel degrees up to `at_most` (and dividing `devices`, when given) that split `seq_len` into
    2 x cp equal chunks."""
    return ", ".join(str(c) for c in range(1, at_most + 1)
                     if cp_splits(seq_len, c) and (devices is None or devices % c == 0))


@dataclass
class Plan:
    """Everything `launch` needs: the model, the cluster shape, the config, partition, placement, prediction."""

    model: ModelSpec
    # {"name", "nodes", "gpus_per_node", "backend", "device"}, and "profile" (the file's path) when not bundled
    cluster: dict
    config: ParallelConfig
    partition: list  # [[first_layer, end_layer], ...] per virtual stage in stage order
    placement: dict  # {"mesh": nested [pp][dp][cp][tp] of global ranks (spec/grid.py AXES)}
    prediction: dict = field(default_factory=dict)
    # seq1f1b: the token boundaries of each sequence's chunks, [0, b_1, ..., seq_len] (`cost/compute.py
    # seq_chunk_bounds` of the config's `seq_split`; the executor cuts sequences there). None: the even split.
    sequence_split: list | None = None
    # The simulated step the prediction was read from (cost.simulate.Timeline; not saved): what pictures draw.
    timeline: object = field(default=None, repr=False, compare=False)
    # Read from a file whose content differs from what autoconf wrote (its "content_sha256"): the prediction may
    # not be the config's (report/current.py estimates it again).
    edited: bool = field(default=False, repr=False, compare=False)
    # Read from a file without a "content_sha256" (autoconf before 2026-12-06, or an edit that removed it): the
    # prediction may not be the config's either; it is estimated again where its cluster is at hand.
    unchecked: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self):
        self.placement = _with_cp_axis(self.placement)

    @property
    def as_written(self) -> bool:
        """Its file is as autoconf wrote it (the checksum present and matching), so its prediction is its config's;
        otherwise (`edited`, `unchecked`) report/current.py estimates it again."""
        return not (self.edited or self.unchecked)

    def to_dict(self) -> dict:
        data = {"version": PLAN_VERSION, "kind": "plan", "model": self.model.to_dict(), "cluster": self.cluster,
                "config": self.config.to_dict(), "partition": [list(p) for p in self.partition],
                "placement": self.placement, "prediction": self.prediction,
                **({"sequence_split": list(self.sequence_split)} if self.sequence_split is not None else {})}
        return {**data, "content_sha256": content_sha256(data)}

    @property
    def chunk_bounds(self) -> list[int]:
        """The sequence chunks' token boundaries the executor uses: `sequence_split`, else the even split."""
        if self.sequence_split is not None:
            return list(self.sequence_split)
        c = self.config
        return [j * c.seq_len // c.seq_chunks for j in range(c.seq_chunks + 1)]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> "Plan":
        plan_like = isinstance(data, dict) and ("kind" in data or "config" in data)
        if not plan_like or data.get("kind", "plan") != "plan":
            what = " (a Hugging Face model config)" if isinstance(data, dict) and "model_type" in data else ""
            raise UserError(f"{source}: not a plan file{what}; expected a JSON object with \"kind\": \"plan\", as "
                            f"`autoconf plan --out` or `estimate --out` writes")
        if not is_version(data.get("version"), PLAN_VERSION):
            raise UserError(f"{source}: plan version {quoted(data.get('version'))} is not supported "
                            f"(expected {PLAN_VERSION})")
        _refuse_unknown(data, PLAN_FIELDS, source, "plan")
        for key in ("model", "cluster", "config", "partition", "placement"):
            if key not in data:
                raise UserError(f"{source}: plan lacks field {key!r}")
        model = ModelSpec.from_dict(data["model"], source=f"{source}: model")
        for key, kind in (("config", dict), ("cluster", dict), ("placement", dict), ("partition", list)):
            if not isinstance(data[key], kind):
                raise UserError(f"{source}: {key} must be a JSON {'object' if kind is dict else 'array'}")
        _refuse_unknown(data["cluster"], CLUSTER_FIELDS, source, "cluster")
        _refuse_unknown(data["placement"], PLACEMENT_FIELDS, source, "placement")
        if not isinstance(data.get("prediction") or {}, dict):
            raise UserError(f"{source}: prediction must be a JSON object")
        problems = prediction_problems(data.get("prediction") or {})
        if problems:
            raise UserError(f"{source}: malformed prediction: {'; '.join(problems[:3])}")
        config = ParallelConfig.from_dict(data["config"], source=f"{source}: config")
        try:
            checksum = data.get("content_sha256")
            if checksum is not None and not (isinstance(checksum, str) and len(checksum) == 64):
                raise UserError(f"{source}: content_sha256 must be the 64 hex digits autoconf wrote (or absent)")
            plan = cls(model=model, cluster=dict(data["cluster"]), config=config,
                       partition=[list(p) if isinstance(p, list) else p for p in data["partition"]],
                       placement=dict(data["placement"]), prediction=dict(data.get("prediction") or {}),
                       sequence_split=data.get("sequence_split"),
                       edited=checksum is not None and checksum != content_sha256(data),
                       unchecked=checksum is None)
            plan.validate(source)
        except (TypeError, ValueError, OverflowError, AttributeError, KeyError, IndexError, RecursionError) as err:
            if isinstance(err, UserError):
                raise
            if isinstance(err, RecursionError):
                raise UserError(f"{source}: malformed plan: a value is nested too deeply to read; each field "
                                f"holds what autoconf writes (the mesh a grid of device ids pp x dp x cp x tp "
                                f"deep)") from None
            raise UserError(f"{source}: malformed plan ({type(err).__name__}: {str(err)[:200]})") from None
        return plan

    def validate(self, source: str = "plan") -> None:
        """Checks the config, that the partition covers every layer in order, and that the mesh is a permutation."""
        nodes, gpus = self.cluster.get("nodes", 1), self.cluster.get("gpus_per_node", 1)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (nodes, gpus)):
            raise UserError(f"{source}: cluster nodes and gpus_per_node must be positive integers "
                            f"(got {nodes!r} and {gpus!r})")
        for key in ("name", "backend", "device"):
            if key in self.cluster and not is_printable_name(self.cluster[key]):
                raise UserError(f"{source}: cluster {key} must be printable text without newlines or control "
                                f"characters (got {quoted(self.cluster[key])})")
        if self.cluster.get("backend", BACKENDS[0]) not in BACKENDS:
            raise UserError(f"{source}: cluster backend must be {' or '.join(BACKENDS)} (the profile's), got "
                            f"{quoted(self.cluster['backend'])}")
        profile = self.cluster.get("profile")
        if profile is not None and (not isinstance(profile, str) or not profile or "\0" in profile):
            raise UserError(f"{source}: cluster profile must be the path of a profile file (got {profile!r})")
        digest = self.cluster.get("profile_sha256")
        if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise UserError(f"{source}: cluster profile_sha256 must be the 64 hex digits autoconf wrote (or absent)")
        for key in COMMAND_LINE_OVERRIDES:
            value = self.cluster.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise UserError(f"{source}: cluster {key} must be a fraction in [0, 1) (got {quoted(value)})")
        world = nodes * gpus
        self.config.check(self.model, world)
        c = self.config
        problem = partition_problem(self.model, c, self.partition) or recompute_layers_problem(c, self.partition)
        if problem:
            raise UserError(f"{source}: {problem}")
        problem = self.sequence_split_problem()
        if problem:
            raise UserError(f"{source}: {problem}")
        mesh = self.placement.get("mesh")
        flat = _flatten(mesh)
        if (flat is None or len(flat) != c.world_size or sorted(flat) != list(range(c.world_size))
                or _shape(mesh) != list(c.dims.shape)):
            axes = "".join(f"[{a}]" for a in AXES)
            sizes = "".join(f"[{n}]" for n in c.dims.shape)
            raise UserError(f"{source}: placement mesh must be a {axes} = {sizes} arrangement of ranks "
                            f"0..{c.world_size - 1}")
        gpus = int(self.cluster.get("gpus_per_node", c.world_size))
        if gpus > 0 and c.world_size % gpus == 0 and node_blocks(flat, gpus) is None:
            raise UserError(f"{source}: placement mesh cannot be launched: each run of {gpus} consecutive grid "
                            f"positions ([pp][dp][tp] order) must sit on the devices of one node")

    def sequence_split_problem(self) -> str | None:
        """Why `sequence_split` is not a split of this config's sequences (one line), or None: seq_chunks + 1
        increasing boundaries from 0 to seq_len on multiples of `seq_split_multiple`, the even ones under
        seq_split "even"."""
        c, bounds = self.config, self.sequence_split
        if bounds is None:
            return None
        even = [j * c.seq_len // c.seq_chunks for j in range(c.seq_chunks + 1)]
        step = c.seq_split_multiple
        if (not isinstance(bounds, list) or len(bounds) != c.seq_chunks + 1 or not all(_is_int(b) for b in bounds)
                or bounds[0] != 0 or bounds[-1] != c.seq_len or any(b <= a for a, b in zip(bounds, bounds[1:]))
                or any(b % step for b in bounds) or (c.seq_split == "even" and bounds != even)):
            article = "an" if c.seq_split[:1] in tuple("aeiou") else "a"
            return (f"sequence_split {bounds!r} is not {article} {c.seq_split} split of {c.seq_len} tokens into "
                    f"seq_chunks {c.seq_chunks}: {c.seq_chunks + 1} increasing multiples of {step} from 0 to "
                    f"{c.seq_len}"
                    + (f" ({even})" if c.seq_split == "even" else ""))
        return None

    def device_of(self) -> list[int]:
        """The device (node * gpus_per_node + local index) of each grid position, in grid order."""
        return self.grid().flat()

    def grid(self) -> RankGrid:
        """The placement as a rank grid: the device of each grid position."""
        return RankGrid(self.placement["mesh"])

    def save(self, path: Path, force: bool = False) -> None:
        from autoconf.files import write_file

        write_file(path, self.to_json(), force)


# Every field of a plan's prediction: what `cost/estimate.py predict` and `estimate` write, and what the search
# (`recompute_per_stage`) and `plan --tokens` (`training`) add.
PREDICTION_FIELDS = ("iteration_time_s", "tokens_per_s", "tflops_per_gpu", "mfu", "hfu", "peak_memory_bytes",
                     "memory_limit_bytes", "fits", "memory_per_stage", "host_memory_per_node_bytes",
                     "host_memory_limit_bytes", "bubble_fraction", "compute_source", "framework", "framework_flags",
                     "extrapolated", "time_breakdown", "offload_effect", "launchable", "not_launchable_reason",
                     "recompute_per_stage", "training")
_PREDICTION_NUMBERS = ("iteration_time_s", "tokens_per_s", "tflops_per_gpu", "mfu", "hfu", "peak_memory_bytes",
                       "memory_limit_bytes", "bubble_fraction", "host_memory_per_node_bytes", "host_memory_limit_bytes")
_MEMORY_KINDS = ("params", "grads", "optimizer", "activations", "other", "total")


def content_sha256(data: dict) -> str:
    """The SHA-256 (hex) of a plan's JSON object without its own "content_sha256": keys sorted, no spaces, so the
    same content gives the same digest however the file was indented."""
    return json_sha256({k: v for k, v in data.items() if k != "content_sha256"})


def prediction_problems(pred: dict) -> list[str]:
    """What is malformed in a plan's prediction (the fields `show`, the pictures and the launcher's summary
    read): each number finite and >= 0 (the step time > 0), `fits` a boolean, the memory and time breakdowns and
    the time and cost to train of the right shapes."""
    out = []
    unknown = sorted((k for k in pred if k not in PREDICTION_FIELDS), key=str)
    if unknown:
        out.append(f"unknown prediction field(s) {unknown_names(unknown)}")

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")

    for key in _PREDICTION_NUMBERS:
        if key in pred and not number(pred[key]):
            out.append(f"prediction.{key} must be a finite number >= 0, got {quoted(pred[key])}")
    if "iteration_time_s" in pred and number(pred["iteration_time_s"]) and pred["iteration_time_s"] <= 0:
        out.append("prediction.iteration_time_s must be > 0")
    if "fits" in pred and not isinstance(pred["fits"], bool):
        out.append(f"prediction.fits must be true or false, got {quoted(pred['fits'])}")
    for key in ("framework", "compute_source"):
        if key in pred and not is_printable_name(pred[key]):
            out.append(f"prediction.{key} must be a printable string, got {quoted(pred[key])}")
    if is_printable_name(pred.get("framework", "autoconf")) and pred.get("framework", "autoconf") not in PRESETS:
        out.append(f"prediction.framework must be one of {', '.join(PRESETS)}, got "
                   f"{quoted(pred['framework'])}")
    if "memory_per_stage" in pred:
        stages = pred["memory_per_stage"]
        if not isinstance(stages, list) or not all(
                isinstance(m, dict) and all(number(m.get(k)) for k in _MEMORY_KINDS) for m in stages):
            out.append(f"prediction.memory_per_stage must be a list of {{{', '.join(_MEMORY_KINDS)}: bytes >= 0}} "
                       f"objects")
    if "time_breakdown" in pred:
        terms = pred["time_breakdown"]
        if not isinstance(terms, dict) or not all(isinstance(k, str) and number(v) for k, v in terms.items()):
            out.append("prediction.time_breakdown must be an object of term name -> seconds >= 0")
    training = pred.get("training")
    if training is not None:
        priced = isinstance(training, dict) and training.get("cost") is not None
        fields = ("tokens", "days", "gpu_hours") + (("cost", "usd_per_gpu_hour") if priced else ())
        if not isinstance(training, dict) or not all(number(training.get(k)) for k in fields) or (
                priced and not is_printable_name(training.get("price_source", "--price"))):
            out.append(f"prediction.training must be an object of {', '.join(fields)}: numbers >= 0 (and a "
                       f"printable price_source), as `plan --tokens` writes it")
    return out


def recomputed_layers(config: ParallelConfig, partition) -> list[int]:
    """How many transformer layers of each virtual stage of `partition` run `config.recompute` (the first ones of
    the stage; the others keep their activations): none without recompute, every layer when
    `config.recompute_layers` is None, else its counts. The one rule the memory estimate, the stage times, the
    search, the executor and the exporters read."""
    if config.recompute == "none":
        return [0] * len(partition)
    if config.recompute_layers is None:
        return [end - first for first, end in partition]
    return list(config.recompute_layers)


def partition_problem(model: ModelSpec, c: ParallelConfig, partition) -> str | None:
    """What is wrong with `partition` (one [first, end) range of transformer layers per virtual stage) for `model`
    under `c`, in one line, or None: pp x vpp stages covering layers 0..L in order, each non-empty but that the
    first may hold only the embedding and the last only the head (`min_stage_layers`)."""
    if len(partition) != c.num_stages:
        return f"partition has {len(partition)} stages, config needs pp*vpp = {c.num_stages}"
    expected_start = 0
    for i, stage in enumerate(partition):
        if (not isinstance(stage, list) or len(stage) != 2 or not all(_is_int(x) for x in stage)
                or stage[0] != expected_start or stage[1] - stage[0] < min_stage_layers(i, c.num_stages)):
            return (f"partition stage {i} is {shown(stage, 60)}; stages must be [first, end) ranges that cover layers "
                    f"0..{model.num_layers} in order, each non-empty except that the first may hold only the "
                    f"embedding and the last only the head")
        expected_start = stage[1]
    if expected_start != model.num_layers:
        return f"partition ends at layer {expected_start}, model has {model.num_layers}"
    return None


def recompute_layers_problem(config: ParallelConfig, partition) -> str | None:
    """What is wrong with `config.recompute_layers` on `partition` (a count above its stage's layers), or None."""
    if config.recompute_layers is None:
        return None
    over = [s for s, (n, (first, end)) in enumerate(zip(config.recompute_layers, partition)) if n > end - first]
    if over:
        return (f"recompute_layers {list(config.recompute_layers)} exceeds the layers of stage(s) "
                f"{', '.join(map(str, over))} (partition {[list(p) for p in partition]}); give at most "
                f"{','.join(str(end - first) for first, end in partition)}, each stage's layers")
    return None


def recomputed_layer_indices(config: ParallelConfig, partition) -> set[int]:
    """The transformer layers (global indices) that run `config.recompute`: the first `recomputed_layers` of each
    stage. What the executor checkpoints, whatever chunks it builds."""
    counts = recomputed_layers(config, partition)
    return {i for (first, _), k in zip(partition, counts) for i in range(first, first + k)}


def max_pipeline_stages(num_layers: int) -> int:
    """The most virtual pipeline stages (pp * vpp) a model of `num_layers` transformer layers splits into: one
    layer each, plus a first stage holding only the embedding and a last holding only the head (Megatron's
    `--pipeline-model-parallel-layout` chunks `E` and `L`; Llama 3 405B's PP16 with one layer per chunk)."""
    return num_layers + 2


def min_stage_layers(stage: int, num_stages: int) -> int:
    """The fewest transformer layers virtual stage `stage` of `num_stages` may hold: 0 for the first stage (it
    still holds the embedding) and the last (it holds the final norm, LM head and loss) of a pipeline of more
    than one stage, 1 for every other stage. The one partition rule every solver and check reads."""
    return 0 if num_stages > 1 and stage in (0, num_stages - 1) else 1


def uniform_partition(num_layers: int, num_stages: int) -> list[list[int]]:
    """Even split of layers into [first, end) ranges.

    Each stage gets floor(L/S) layers; the remainder r goes one layer each to the r stages in the middle, because
    the first and last stages already carry the embedding and the head. With more stages than layers (up to
    `max_pipeline_stages`) every middle stage gets one layer, the last stage holds only the head and, at L + 2
    stages, the first only the embedding.
    """
    if num_stages > max_pipeline_stages(num_layers):
        raise ValueError(f"{num_layers} layers cannot fill {num_stages} stages (at most layers + 2: one layer "
                         f"each, the embedding and the head alone on the end stages)")
    if num_stages > num_layers:
        first = num_stages - num_layers - 1  # 1 when the first stage holds only the embedding
        return [[0, 0]] * first + [[i, i + 1] for i in range(num_layers)] + [[num_layers, num_layers]]
    base, extra = divmod(num_layers, num_stages)
    first_extra = (num_stages - extra) // 2
    return partition_of([base + (first_extra <= s < first_extra + extra) for s in range(num_stages)])


def partition_of(stage_layers) -> list[list[int]]:
    """The partition ([first, end) layer ranges in stage order) whose stages hold `stage_layers` layers each."""
    bounds = list(itertools.accumulate(stage_layers, initial=0))
    return [[bounds[s], bounds[s + 1]] for s in range(len(stage_layers))]


def node_blocks(devices: list[int], gpus_per_node: int) -> list[int] | None:
    """For a placement given as the device of each grid position (flat, in grid order: spec/grid.py AXES): the node
    hosting each block of `gpus_per_node` consecutive positions, or None when a block spans nodes.

    The executor runs grid position i as global rank i, and torchrun gives node rank k the global ranks of block k;
    so a placement is launchable when every block lies on one node, and the launcher then starts the physical node
    hosting block k with node rank k, each rank on the local device the placement names.
    """
    blocks = []
    for k in range(len(devices) // gpus_per_node):
        nodes = {d // gpus_per_node for d in devices[k * gpus_per_node:(k + 1) * gpus_per_node]}
        if len(nodes) != 1:
            return None
        blocks.append(nodes.pop())
    return blocks if len(set(blocks)) == len(blocks) else None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def unknown_names(names: list) -> str:
    """`names` for a one-line list of typos: the first few, each as its repr shortened, and how many more."""
    return listed([quoted(n, 40) for n in names])


def _refuse_unknown(obj: dict, allowed: tuple, source: str, what: str) -> None:
    """One line naming the keys of `obj` (a plan's `what` object) that are not in `allowed`, and those that are."""
    unknown = sorted((k for k in obj if k not in allowed), key=str)
    if unknown:
        raise UserError(f"{source}: unknown {what} field(s) {unknown_names(unknown)}; a {what} holds "
                        f"{', '.join(allowed)}")


def _flatten(mesh) -> list | None:
    if isinstance(mesh, int) and not isinstance(mesh, bool):
        return [mesh]
    if not isinstance(mesh, list):
        return None
    out = []
    for item in mesh:
        sub = _flatten(item)
        if sub is None:
            return None
        out.extend(sub)
    return out


def _with_cp_axis(placement: dict) -> dict:
    """A placement written before the cp axis existed ([pp][dp][tp]) as the grid's [pp][dp][cp][tp] with cp = 1."""
    mesh = placement.get("mesh") if isinstance(placement, dict) else None
    if len(_shape(mesh) or ()) == len(AXES) - 1 and _flatten(mesh) is not None:
        return {**placement, "mesh": [[[row] for row in replica] for replica in mesh]}
    return placement


def _shape(mesh) -> list | None:
    """The sizes of a nested list's levels, outermost first, where every list at each level has the same length
    and the leaves (not lists) all lie at the same depth; else None (a ragged mesh). A leaf has shape []."""
    if not isinstance(mesh, list):
        return []
    shapes = [_shape(item) for item in mesh]
    if not shapes:
        return [0]
    if shapes[0] is None or any(s != shapes[0] for s in shapes[1:]):
        return None
    return [len(mesh), *shapes[0]]


def load_plan(path: str | Path) -> Plan:
    from autoconf.spec.presets import read_json

    path = Path(path)
    return Plan.from_dict(read_json(path, "plan"), source=str(path))

