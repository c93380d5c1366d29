"""What torch's context-parallel attention costs beyond its attention kernels (`Execution.cp_attention` "torch", and
"executor" where `frameworks.executor_torch_cp` hands the attention to torch).

torch's `context_parallel` (torch/distributed/tensor/experimental/_attention.py: `_templated_ring_attention`, its
backward `_templated_ring_attention_backward` and `_SDPAMerger`; read in the stored pytorch/pytorch version
0123248a and again in torch 2.13.0's _context_parallel/_attention.py, the same code in every line counted here;
torchtitan's December 2024 runs used torch 1963fc8, whose copy could not be read here) runs a causal,
load-balanced layer on each of the cp ranks as cp SDPA calls: the rank's own two chunks causally, then one call
per K/V block received, each of half a block's causal work (all queries against half the block, or half the
queries against all of it), so the kernels do the causal share exactly (`compute.model_pieces`). Around them:

- forward: every partial output is cast to fp32 and merged into the running output by log-sum-exp (`_SDPAMerger`:
  out - sigmoid(lse_block - lse) * (out - block_out), four eager kernels), the merged output cast back at the end;
  before every step but the last the K and V it holds are concatenated into one send buffer (also under the
  all-gather, which sends only the first);
- backward: dQ, dK, dV accumulate in fp32 buffers (zero-filled), each step's bf16 results added in; on the last
  rank of the group (every step after the first takes all its queries against the first half of the block) the
  block's dK/dV are added into the first half of the travelling fp32 dK/dV and the halves concatenated again
  (`_partial_update`); before every step the fp32 dK and dV are concatenated and sent to the next rank by
  all-to-all (`dkv_rotater` is all-to-all for either rotate method), and the K/V are gathered (or received) again
  as in the forward.

In torch 2.13 the fp32 merges and accumulations are `_cp_options.convert_to_f32` (True, never changed by autoconf
or torchtitan), the head-tail load balancing `enable_load_balance` (on whenever seq_len divides by 2 cp, which the
layout requires), the rotate method `set_rotate_method` ("allgather" by default, "alltoall" for the plan's "ring").
What the frameworks hand it differs only in the K/V width: autoconf's executor repeats the grouped K/V to every
query head before SDPA (`Execution.cp_repeat_kv`), torchtitan 0.3.0 passes them grouped with enable_gqa, and the
torchtitan of the December 2024 runs repeated them in every block (eager op "repeat_kv").

The bytes below are those eager kernels' reads and writes on the group's last rank (the busiest: its merges are
all full-size), per layer, for the K/V width the kernel sees: every query head's when K and V are repeated to the
heads before SDPA (`sdpa_kv_width`), else the grouped K/V. The log-sum-exp terms (1/head_dim of an output) are
not counted, nor the executor's copies that repeat K/V before torch's ring (a specification profile counts only
`Execution.eager_ops`, and a measured profile times attention without CP, where the executor passes grouped K/V
to SDPA). They are eager kernels as the dispatcher
issues them; under torch.compile they are counted the same (whether a compiled block traces through the dispatcher
is not stated in the sources read). No traffic counted where `torch_ring` is False (cp 1, cp_attention "kernel",
the executor's own attention)."""

from __future__ import annotations

import dataclasses

from autoconf.spec.dtypes import DTYPE_BYTES
from autoconf.spec.frameworks import Execution, executor_torch_cp
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig

FP32 = 4


def torch_ring(model: ModelSpec, config: ParallelConfig, execution: Execution | None) -> bool:
    """Whether `config`'s attention runs torch's context-parallel ring: cp > 1 under cp_attention "torch", or under
    "executor" where `frameworks.executor_torch_cp` says (`execution` None: autoconf's executor)."""
    ex = execution or Execution()
    if config.cp == 1 or ex.cp_attention == "kernel":
        return False
    return ex.cp_attention == "torch" or executor_torch_cp(config, model)


def recompute_leaves_ring(model: ModelSpec, config: ParallelConfig, execution: Execution | None) -> bool:
    """Whether `config`'s recompute takes its attention off torch's ring, which the same layout recomputing nothing
    runs (`torch_ring`: the executor's per-op policy under context parallelism runs its own CP attention in every
    block once a layer recomputes, `frameworks.executor_torch_cp`)."""
    without = dataclasses.replace(config, recompute="none")
    return torch_ring(model, without, execution) != torch_ring(model, config, execution)


def sdpa_kv_width(model: ModelSpec, execution: Execution | None) -> float:
    """Width of K (and of V) per token as the attention kernel receives them under torch's ring: every query head's
    when the execution repeats grouped K/V before SDPA (`cp_repeat_kv`, or the eager op `repeat_kv` in every
    block), else the model's K/V heads. Under latent attention K and V differ in width; every term below moves K and
    V alike, so this is their mean (`ModelSpec.attention_kv_dim` / 2)."""
    ex = execution or Execution()
    repeats = ex.cp_repeat_kv or "repeat_kv" in ex.eager_ops
    return model.attention_kv_dim / 2 * (model.num_heads // model.num_kv_heads if repeats else 1)


def merge_bytes(model: ModelSpec, config: ParallelConfig, execution: Execution | None) -> tuple[float, float]:
    """(forward, backward) bytes per layer that torch's ring attention moves in eager kernels on one rank beyond
    the attention kernels (module docstring). Linear in cp: a fixed part and one per ring step. (0, 0) unless
    `torch_ring`."""
    c = config
    if not torch_ring(model, c, execution):
        return 0.0, 0.0
    e = DTYPE_BYTES[c.dtype]
    tokens = c.local_seq_len * c.micro_batch_size
    out = tokens * model.attention_out_dim / c.tp  # elements of the attention output
    q = tokens * model.attention_q_dim / c.tp  # elements of Q (and dQ)
    kv = tokens * sdpa_kv_width(model, execution) / c.tp  # elements of K (and of V)
    later = c.cp - 1
    # Forward: first output to fp32 (e + 4); per later step its output to fp32 (e + 4), out - block (12), times the
    # sigmoid (8), out - that (12); the result back to the compute dtype (4 + e); the K/V send buffer (2e each).
    forward = out * ((e + FP32) + later * (e + FP32 + 32) + (FP32 + e)) + later * 2 * (2 * e) * kv
    # Backward: fp32 zeros (4 each for dQ, dK, dV); dQ += per step (8 + e); dK, dV += at step 0 (8 + e each), per
    # later step a half-block add (8 + e) / 2 and the re-concatenation (8) each; the fp32 dK/dV send buffer every
    # step (8 each); the K/V send buffer again (2e each, every step but the last); the casts back (4 + e each).
    backward = (q * (FP32 + c.cp * (8 + e) + (FP32 + e))
                + kv * (2 * FP32 + 2 * (8 + e) + later * 2 * ((8 + e) / 2 + 8) + c.cp * 2 * 8
                        + later * 2 * (2 * e) + 2 * (FP32 + e)))
    return forward, backward


def dkv_bytes(model: ModelSpec, config: ParallelConfig, execution: Execution | None) -> float:
    """Bytes of one dK/dV transfer of torch's ring backward (fp32 gradients of the rank's K and V at the kernel's
    width); 0 unless `torch_ring`."""
    c = config
    if not torch_ring(model, c, execution):
        return 0.0
    return 2 * c.local_seq_len * c.micro_batch_size * sdpa_kv_width(model, execution) / c.tp * FP32


def sdpa_kv_bytes(model: ModelSpec, config: ParallelConfig, execution: Execution | None, kv_bytes: float) -> float:
    """`kv_bytes` (one rank's K/V block at the model's K/V width, `memory.cp_kv_bytes`) at the width the attention
    kernel receives under torch's ring (repeated K/V are sent repeated); unchanged otherwise."""
    if not torch_ring(model, config, execution):
        return kv_bytes
    return kv_bytes * sdpa_kv_width(model, execution) / (model.attention_kv_dim / 2)


def buffer_bytes(model: ModelSpec, config: ParallelConfig, execution: Execution | None) -> float:
    """The temporary torch's ring backward holds while one layer computes (its forward holds less), on one rank:
    the K/V the kernels read at the kernel's width (under "allgather" the whole sequence's, cp blocks; under "ring"
    the block computed on and the one arriving) plus the concatenated send buffer of one block; dQ accumulating in
    fp32; the fp32 dK/dV accumulated, concatenated for sending and arriving (three `dkv_bytes`). 0 unless
    `torch_ring`."""
    c = config
    if not torch_ring(model, c, execution):
        return 0.0
    tokens = c.local_seq_len * c.micro_batch_size
    kv_block = 2 * tokens * sdpa_kv_width(model, execution) / c.tp * DTYPE_BYTES[c.dtype]
    blocks = c.cp if c.cp_comm == "allgather" else 2
    return (blocks + 1) * kv_block + FP32 * tokens * model.attention_q_dim / c.tp + 3 * dkv_bytes(model, c, execution)


def transfers(cp: int, cp_comm: str) -> dict[str, dict[str, int]]:
    """Collectives one layer of torch's ring issues on each rank (torch 2.13, `_templated_ring_attention` and its
    backward), per pass ("forward", "backward") and kind: "kv_gather" (the K/V all-gather of "allgather", once per
    pass), "kv_rotate" (one-hop all-to-all of a K/V block: under "ring" cp - 1 per pass), "dkv_rotate" (the fp32
    dK/dV, by one-hop all-to-all in every method: cp in the backward, the last one returning each block's gradient to
    its owner). `estimate.cp_attention_comm` times exactly these; tests/test_cp_ring_probe.py counts them on a gloo
    group."""
    if cp == 1:
        return {p: {"kv_gather": 0, "kv_rotate": 0, "dkv_rotate": 0} for p in ("forward", "backward")}
    gathers, rotations = (1, 0) if cp_comm == "allgather" else (0, cp - 1)
    return {"forward": {"kv_gather": gathers, "kv_rotate": rotations, "dkv_rotate": 0},
            "backward": {"kv_gather": gathers, "kv_rotate": rotations, "dkv_rotate": cp}}
