"""The legal candidate layouts for a model on a cluster with a fixed global batch, and `--fix` parsing.

A candidate is a `ParallelConfig`. The space: TP dividing the attention and KV heads and (unless fixed) no wider
than a node; PP up to the layer count; DP the rest of the devices, dividing the global batch; micro-batch sizes
dividing the per-replica batch; every schedule with the chunk counts it accepts; ZeRO 0-3 (only 0 without DP);
recompute none/selective/full (selective under each policy the caller weighs, `selective_policies`); sequence
parallelism where TP > 1; where FSDP shards (ZeRO >= 1, DP > 1) and gradients accumulate (several micro-batches or a
pipeline), the gradient reduce-scatter once per step or after every micro-batch (`grad_reduce`; not under the
split-backward schedules); context parallelism (`cp_choices`) for long sequences, with both K/V exchanges
(`cp_comm`), each TP x CP block within the devices that share fast links where the caller passes them
(`placement.tp_cp_domain`). On a mixture-of-experts model, every expert-parallel degree ep dividing the experts and
the ranks of a pipeline rank, with expert TP etp of 1 or tp (`expert_choices`); a dense model keeps ep = etp = 1, so
its space is as before. Every candidate is legal by construction (the schedule's own micro-batch rules are checked
here); `search` checks what holds for all of them (sequence length).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterator

from autoconf.errors import UserError
from autoconf.spec.dtypes import DTYPES
from autoconf.spec.frameworks import SELECTIVE_RECOMPUTE
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import (CP_COMM, GRAD_REDUCE, OFFLOADS, SEQ_SPLITS, ParallelConfig, cp_splits,
                                 max_pipeline_stages, sequence_parallel_problem)
from autoconf.spec.schedules import SCHEDULES, schedule_spec

FIXABLE = ("tp", "pp", "dp", "cp", "vpp", "micro_batch_size", "schedule", "zero_stage", "recompute",
           "selective_recompute", "sequence_parallel", "dtype", "grad_reduce", "cp_comm", "ep", "etp", "seq_chunks",
           "seq_split", *OFFLOADS)
ALIASES = {"mb": "micro_batch_size", "micro_batch": "micro_batch_size", "zero": "zero_stage",
           "sp": "sequence_parallel"}
INT_FIELDS = ("tp", "pp", "dp", "cp", "vpp", "micro_batch_size", "zero_stage", "ep", "etp", "seq_chunks")
# Chunks per sequence tried for a schedule that splits sequences (seq1f1b), each under both splits (SEQ_SPLITS:
# equal lengths or equal work; `--fix seq_split` pins one). Such a schedule is searched only when
# pinned (--fix schedule=seq1f1b): where sequences are long enough for it to pay, context parallelism splits them for
# less (docs/long-context.md: llama3.1-70b at 32k and 128k tokens on 64 and 32 H100s, cp8 14% faster in both than
# the best seq1f1b layout), and weighing it would multiply the pipelined candidates by 7. So is a schedule the
# executor does not run at all (`ScheduleSpec.executor_note`: dualpipe), which the search then costs and marks not
# launchable.
SEQ_CHUNKS = (2, 4, 8)
MAX_MICRO_BATCH = 16
# Context parallelism is searched from this sequence length up (Megatron-Core's and torchtitan's long-context recipes
# start CP at 16k-32k tokens; below it a rank's share of the attention is short beside the K/V exchange, and TP, PP
# and recompute fit the activations). NVIDIA's 8k pre-training recipes run cp 2 for Llama 3 8B, 70B and 405B, which
# this leaves out (docs/accuracy.md, "The planner's pick"). A pinned --fix cp is honoured at any length, and where
# nothing fits without it the search weighs cp at any length in a second pass (`search.search`, `short_cp`).
CP_MIN_SEQ_LEN = 16_384
# Nor are the sequence's chunks cut shorter than this many tokens per rank (CP's blockwise kernels on short blocks).
CP_MIN_LOCAL_TOKENS = 1_024


def pin_text(key: str, value) -> str:
    """`key=value` as --fix takes it back (booleans as true and false)."""
    return f"{key}={str(value).lower() if isinstance(value, bool) else value}"


def parse_fix_value(key: str, value: str):
    """Typed value of `--fix key=value`, or a UserError naming the fixable keys."""
    key = ALIASES.get(key, key)
    if key not in FIXABLE:
        raise UserError(f"--fix {key}: unknown key; fixable: {', '.join(FIXABLE)}")
    if key in INT_FIELDS:
        if not re.fullmatch(r"[+-]?[0-9]+", value):  # (int() also reads "1_0" and other scripts' digits)
            raise UserError(f"--fix {key}={value}: expected an integer in ASCII digits")
        number = int(value)
        least = 0 if key == "zero_stage" else 1
        if number < least or (key == "zero_stage" and number > 3):
            raise UserError(f"--fix {key}={value}: expected " + ("0, 1, 2 or 3" if key == "zero_stage"
                                                                  else "a positive integer"))
        return number
    if key in ("sequence_parallel", *OFFLOADS):
        lowered = value.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise UserError(f"--fix {key}={value}: expected true or false")
        return lowered in ("true", "1", "yes")
    if key == "schedule" and value not in SCHEDULES:
        raise UserError(f"--fix schedule={value}: unknown schedule; choose from {', '.join(SCHEDULES)}")
    if key == "recompute" and value not in ("none", "selective", "full"):
        raise UserError(f"--fix recompute={value}: choose none, selective or full")
    if key == "selective_recompute" and value not in SELECTIVE_RECOMPUTE:
        raise UserError(f"--fix selective_recompute={value}: choose {' or '.join(SELECTIVE_RECOMPUTE)}")
    if key == "cp_comm" and value not in CP_COMM:
        raise UserError(f"--fix cp_comm={value}: choose {' or '.join(CP_COMM)}")
    if key == "seq_split" and value not in SEQ_SPLITS:
        raise UserError(f"--fix seq_split={value}: choose {' or '.join(SEQ_SPLITS)}")
    if key == "grad_reduce" and value not in GRAD_REDUCE:
        raise UserError(f"--fix grad_reduce={value}: choose {' or '.join(GRAD_REDUCE)}")
    if key == "dtype" and value not in DTYPES:
        raise UserError(f"--fix dtype={value}: choose one of {', '.join(DTYPES)}")
    return value


def normalise_fixed(fixed: dict) -> dict:
    """The pins under their field names; a pinned selective_recompute pins recompute to selective (it is read only
    there)."""
    out = {ALIASES.get(k, k): v for k, v in fixed.items()}
    if "selective_recompute" in out and "recompute" not in out:
        out["recompute"] = "selective"
    return out


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def candidates(model: ModelSpec, world_size: int, devices_per_domain: int, global_batch: int, seq_len: int,
               dtype: str, attention: str = "flash", fixed: dict | None = None,
               zero_stages: tuple[int, ...] = (0, 1, 2, 3),
               selective_policies: tuple[str | None, ...] = (None,),
               tp_cp_domain: tuple[int | None, str] = (None, ""),
               reductions: Callable[[int, int], tuple[str, ...]] | None = None,
               runtime: str = "torch", schedules: tuple[str, ...] = (),
               expert_tp_biases: bool = True, short_cp: bool = False) -> Iterator[ParallelConfig]:
    """Every legal layout honouring `fixed`, TP within `devices_per_domain` (the devices one scale-up fabric
    joins); deterministic order. `zero_stages` lists the stages worth telling
    apart (a pinned --fix zero_stage is always honoured); `selective_policies` the `selective_recompute` values of
    the selective candidates (None: the framework's own; a pinned --fix selective_recompute is honoured, and pins
    recompute to selective; a pinned cp_comm likewise asks for cp > 1). `tp_cp_domain`: (devices, why) that a
    TP x CP block stays within (`placement.tp_cp_domain` of the cluster; None devices: any); a pinned --fix cp that
    no TP fits in is one line naming what would. `reductions`: the gradient reductions the framework runs at a
    sharded ZeRO stage and pipeline size (`Execution.grad_reductions`; None: both). `runtime`: whose runtime the
    framework's pipelines run on, whose rules on the micro-batch count then hold (`Execution.pipeline_runtime`).
    `schedules`: the ones the framework runs, weighed unless --fix pins another (`Execution.schedules`; empty: those
    the executor runs). `expert_tp_biases`: whether the framework splits experts with biases over expert TP
    (`Execution.expert_tp_biases`; otherwise such a model's candidates keep etp 1 unless pinned). `short_cp`: cp > 1
    also below CP_MIN_SEQ_LEN tokens (`cp_choices`)."""
    fixed = normalise_fixed(fixed or {})
    if "ep" in fixed or "etp" in fixed:
        # The rules that do not depend on the other degrees, as one line before any search.
        probe = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=1, global_batch_size=1, seq_len=1,
                               ep=fixed.get("ep", 1), etp=fixed.get("etp", 1))
        problems = [p for p in probe.expert_problems(model) if "ranks of a pipeline rank" not in p]
        if problems:
            raise UserError("--fix ep/etp: " + "; ".join(problems))

    def choices(key, default):
        return [fixed[key]] if key in fixed else default

    if "selective_recompute" in fixed and fixed["recompute"] != "selective":  # (normalise_fixed pinned it)
        raise UserError(f"--fix selective_recompute={fixed['selective_recompute']} needs recompute selective "
                        f"(got --fix recompute={fixed['recompute']})")

    if "cp_comm" in fixed:  # (it is read only under context parallelism, so a pin asks for it)
        if fixed.get("cp", 2) == 1:
            raise UserError(f"--fix cp_comm={fixed['cp_comm']} is read only under context parallelism, but --fix "
                            f"cp=1 turns it off; drop one of them")
        if attention != "flash":
            raise UserError(f"--fix cp_comm={fixed['cp_comm']}: context parallelism runs with flash attention, not "
                            f"--attention {attention}")
        tp = fixed.get("tp", 1)
        devices = world_size // tp if world_size % tp == 0 else world_size
        if not any(cp_splits(seq_len, d) for d in _divisors(devices) if d > 1):
            raise UserError(f"--fix cp_comm={fixed['cp_comm']} asks for context parallelism, but no cp > 1 dividing "
                            f"the {devices} devices {'left by tp ' + str(tp) + ' ' if tp > 1 else ''}splits "
                            f"{seq_len} tokens into 2 x cp equal chunks")

    if fixed.get("grad_reduce") == "microbatch" and fixed.get("zero_stage", 1) == 0:
        raise UserError("--fix grad_reduce=microbatch reduce-scatters sharded gradients, but --fix zero_stage=0 "
                        "keeps them whole; pin zero_stage 1, 2 or 3, or drop one of them")
    # (seq_split is read only where sequences are chunked, so any pin of it asks for such a schedule)
    for key, plain in (("seq_chunks", 1), ("seq_split", None)):
        splitting = [n for n in SCHEDULES if schedule_spec(n).sequence_chunks]
        if key in fixed and fixed[key] != plain and fixed.get("schedule") not in splitting:
            raise UserError(f"--fix {key}={fixed[key]} needs a schedule that splits sequences: add "
                            f"--fix schedule={' or '.join(splitting)}")

    def policies(recompute: str) -> list[str | None]:
        """The selective policies of a candidate: the per-op one only with the fused attention kernel."""
        if recompute != "selective":
            return [None]
        chosen = choices("selective_recompute", list(selective_policies))
        return [p for p in chosen if p != "alternate_matmuls" or attention == "flash"]

    head_divisors = [d for d in _divisors(model.num_kv_heads) if model.num_heads % d == 0]
    tps = choices("tp", [t for t in head_divisors if t <= devices_per_domain and world_size % t == 0])
    def cps(tp: int) -> list[int]:
        if "cp_comm" in fixed:  # every cp that splits the sequence, as a pinned cp is taken
            return choices("cp", [d for d in _divisors(world_size // tp) if d > 1])
        return choices("cp", cp_choices(world_size // tp, seq_len, short_cp) if attention == "flash" else [1])

    domain, why = tp_cp_domain
    if domain and "cp" in fixed and tps and min(tps) * fixed["cp"] > domain:
        cp, tp = fixed["cp"], min(tps)
        fits = f"tp {tp} with cp <= {domain // tp}" + (f", or tp <= {domain // cp} with cp {cp}" if cp <= domain
                                                       else "")
        raise UserError(f"--fix cp={cp}: a TP x CP block of tp {tp} x cp {cp} = {tp * cp} devices would leave the "
                        f"{domain} that share fast links ({why}); use {fits}")
    for tp, cp in ((tp, cp) for tp in tps for cp in cps(tp)):
        if world_size % (tp * cp) or not cp_splits(seq_len, cp) or domain and tp * cp > domain:
            continue
        pps = choices("pp", [p for p in _divisors(world_size // (tp * cp))
                             if p <= max_pipeline_stages(model.num_layers)])
        for pp in pps:
            if world_size % (tp * cp * pp):
                continue
            dp = world_size // (tp * cp * pp)
            if "dp" in fixed and fixed["dp"] != dp:
                continue
            experts = expert_choices(model, world_size // pp, tp, fixed, expert_tp_biases)
            if not experts:
                continue
            if global_batch % dp:
                continue
            per_replica = global_batch // dp
            mbs = choices("micro_batch_size", [b for b in _divisors(per_replica) if b <= MAX_MICRO_BATCH])
            for mb in mbs:
                if per_replica % mb:
                    continue
                for schedule, vpp, chunks, split in ((s, v, k, x) for s, v in _schedule_choices(
                                                         model, pp, per_replica // mb, fixed, runtime,
                                                         schedules)
                                                     for k in _seq_chunk_choices(s, seq_len, cp, attention, fixed)
                                                     for x in _seq_split_choices(k, fixed)):
                    # (Without data parallelism the stage is moot: one candidate, at a stage the framework runs.)
                    moot = [0] if 0 in zero_stages else [min(zero_stages)]
                    for zero in choices("zero_stage", list(zero_stages) if dp * cp > 1 else moot):
                        if fixed.get("offload_optimizer") is True and not (zero >= 1 and dp * cp > 1):
                            continue  # CPUOffloadPolicy needs FSDP
                        for recompute, policy in ((r, p) for r in choices("recompute", ["none", "selective", "full"])
                                                  for p in policies(r)):
                            for sp in choices("sequence_parallel", [False, True] if tp > 1 else [False]):
                                if sp and (tp == 1 or sequence_parallel_problem(seq_len, tp, cp, chunks)):
                                    continue  # (pinned) needs TP, and a rank's tokens (of each chunk) split over it
                                for reduce, cp_comm, (ep, etp) in itertools.product(
                                        _grad_reduce_choices(
                                            pp, dp * cp, per_replica // mb, schedule, zero,
                                            reductions(zero, pp) if reductions else GRAD_REDUCE,
                                            fixed.get("grad_reduce")),
                                        choices("cp_comm", list(CP_COMM) if cp > 1 else ["ring"]), experts):
                                    yield _config(
                                        tp=tp, pp=pp, dp=dp, cp=cp, vpp=vpp, micro_batch_size=mb,
                                        global_batch_size=global_batch, seq_len=seq_len, schedule=schedule,
                                        zero_stage=zero, recompute=recompute, sequence_parallel=sp,
                                        dtype=fixed.get("dtype", dtype), attention=attention, grad_reduce=reduce,
                                        cp_comm=cp_comm, ep=ep, etp=etp, seq_chunks=chunks, seq_split=split,
                                        offload_activations=fixed.get("offload_activations", False),
                                        offload_optimizer=fixed.get("offload_optimizer", False),
                                        selective_recompute=policy)


# A ParallelConfig with every field at its default (the required ones at 1): `_config` copies its fields.
_DEFAULTS = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=1, global_batch_size=1, seq_len=1).__dict__


def _config(**fields) -> ParallelConfig:
    """`ParallelConfig(**fields)` built without the dataclass constructor's per-field calls (the space yields
    tens of thousands): the defaults' fields updated with `fields`, then the same `__post_init__`."""
    config = object.__new__(ParallelConfig)
    config.__dict__.update(_DEFAULTS, **fields)
    config.__post_init__()
    return config


def expert_choices(model: ModelSpec, ranks: int, tp: int, fixed: dict,
                   expert_tp_biases: bool = True) -> list[tuple[int, int]]:
    """(ep, etp) pairs for a pipeline rank of `ranks` ranks and attention TP `tp`: ep dividing the experts, etp 1
    or tp dividing the expert width (1 only for experts with biases unless `expert_tp_biases`), ep x etp dividing
    the ranks (the rules of `ParallelConfig.expert_problems`); (1, 1) alone on a dense model. A pinned --fix ep /
    etp is honoured (and filtered by the same rules)."""
    if model.moe is None:
        return [(fixed.get("ep", 1), fixed.get("etp", 1))]
    m = model.moe
    eps = [fixed["ep"]] if "ep" in fixed else _divisors(m.num_experts)
    etps = [fixed["etp"]] if "etp" in fixed else [1] if m.expert_bias and not expert_tp_biases else sorted({1, tp})
    return [(ep, etp) for ep in eps for etp in etps
            if m.num_experts % ep == 0 and m.moe_intermediate_size % etp == 0 and ranks % (ep * etp) == 0]


def cp_choices(devices: int, seq_len: int, short: bool = False) -> list[int]:
    """The context-parallel degrees searched on `devices` ranks (after TP): 1, and from CP_MIN_SEQ_LEN tokens on (at
    any length with `short`: the search's second pass where nothing fits without) every divisor cp of the ranks that
    splits the sequence into 2 x cp equal chunks of at least CP_MIN_LOCAL_TOKENS / 2 tokens (the load-balanced
    causal layout)."""
    if seq_len < CP_MIN_SEQ_LEN and not short:
        return [1]
    return [d for d in _divisors(devices)
            if d == 1 or (cp_splits(seq_len, d) and seq_len // d >= CP_MIN_LOCAL_TOKENS)]


def _grad_reduce_choices(pp: int, dp: int, m: int, schedule: str, zero: int,
                         allowed: tuple[str, ...] = GRAD_REDUCE, pinned: str | None = None) -> list[str]:
    """The gradient reductions of a layout: without sharding once per step; else those of `allowed` (the
    framework's) that the executor runs (no reduction every micro-batch under a pipeline of a split backward), and
    of two that act alike (one micro-batch, no pipeline) once per step only. A `pinned` reduction: itself where
    the layout runs it, else none (the layout is left out)."""
    if dp == 1 or zero == 0:
        runs = ["step"]
    else:
        runs = [r for r in allowed if r == "step" or not (pp > 1 and schedule_spec(schedule).split_backward)]
    if pinned is not None:
        return [pinned] if pinned in runs else []
    if len(runs) == 2 and m == 1 and pp == 1:
        return ["step"]
    return runs


def _schedule_choices(model: ModelSpec, pp: int, m: int, fixed: dict, runtime: str = "torch",
                      schedules: tuple[str, ...] = ()) -> list[tuple[str, int]]:
    """(schedule, chunks per rank) pairs the registry and the pipeline `runtime` allow for pp ranks and m
    micro-batches, among `schedules` where given, unless one is pinned. With one pipeline stage
    only a single-chunk schedule is kept (the schedule is moot: plain gradient accumulation runs)."""
    if pp == 1:
        name = fixed.get("schedule", "1f1b")
        return [(name, 1)] if schedule_spec(name).single_chunk and fixed.get("vpp", 1) == 1 else []
    names = [fixed["schedule"]] if "schedule" in fixed else [
        n for n in SCHEDULES if not schedule_spec(n).sequence_chunks
        and (n in schedules if schedules else not schedule_spec(n).executor_note)]
    out = []
    for name in names:
        spec = schedule_spec(name)
        vpps = [v for v in spec.chunks if pp * v <= max_pipeline_stages(model.num_layers) and fixed.get("vpp", v) == v]
        out.extend((name, v) for v in vpps if spec.problem(pp, v, m, runtime) is None)
    return out


def _seq_chunk_choices(schedule: str, seq_len: int, cp: int, attention: str, fixed: dict) -> list[int]:
    """Chunks per sequence for `schedule`: 1 unless it splits sequences, then SEQ_CHUNKS (or the pinned count)
    that divide the sequence, with flash attention and without context parallelism (`seq_chunk_problems`)."""
    if not schedule_spec(schedule).sequence_chunks:
        return [1] if fixed.get("seq_chunks", 1) == 1 else []
    if cp > 1 or attention != "flash":
        return []
    return [k for k in ([fixed["seq_chunks"]] if "seq_chunks" in fixed else SEQ_CHUNKS) if seq_len % k == 0]


def _seq_split_choices(chunks: int, fixed: dict) -> list[str]:
    """Where the chunks' boundaries fall (SEQ_SPLITS; the pinned one): both splits when a sequence is chunked."""
    if chunks == 1:
        return ["even"]
    return [fixed["seq_split"]] if "seq_split" in fixed else list(SEQ_SPLITS)


def with_changes(config: ParallelConfig, **changes) -> ParallelConfig:
    return dataclasses.replace(config, **changes)


def replaced(config: ParallelConfig, **changes) -> ParallelConfig:
    """`dataclasses.replace(config, **changes)` without the constructor (five times cheaper: the search makes tens
    of thousands): for changes that `ParallelConfig.__post_init__` would keep as they are (a tuple or None of
    recompute_layers; neither recompute nor selective_recompute, which it normalises together)."""
    assert not {"recompute", "selective_recompute"} & changes.keys() and not isinstance(
        changes.get("recompute_layers"), list), changes
    new = object.__new__(ParallelConfig)
    new.__dict__.update(config.__dict__, **changes)
    return new

