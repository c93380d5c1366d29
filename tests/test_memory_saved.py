"""The memory estimator's activation bytes for the torch layout are what the executor's block really saves for its
backward: counted here with autograd's saved-tensor hooks (distinct storages, parameters left out) on CPU, with the
block and its input in fp32 and in bf16 (the executor's FSDP2 mixed precision runs each block on bf16 compute copies
of its parameters, the residual stream in bf16), for both architectures, both attention kernels and every recompute
mode. (Dropout is off: CPU attention falls back to the unfused kernel with dropout and stores dropout masks in the
input's dtype, where CUDA keeps one byte per element.)"""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from autoconf.cost.memory import (executor_layer_activation_bytes, logits_temporary_bytes,
                                  stage_layer_activation_bytes)
from autoconf.execute.model import Block, OneBlock, build_model
from autoconf.execute.parallelize import apply_recompute
from autoconf.profile.activations import saved_bytes
from autoconf.spec.plan import ParallelConfig, recomputed_layer_indices
from autoconf.spec.presets import PRESETS

# Tokens per micro-batch (3 x 40) differ from every weight dimension, so activations and weights never share a shape.
MB, SEQ = 3, 40




@pytest.mark.parametrize("arch", ["tiny-gpt", "tiny-llama"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("attention", ["flash", "standard"])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_estimated_activation_bytes_match_what_the_block_saves(arch, dtype, attention, recompute):
    spec = dataclasses.replace(PRESETS[arch], dropout=0.0)
    torch.manual_seed(0)
    low = torch.bfloat16 if dtype == "bf16" else torch.float32
    block = Block(spec, attention).train().to(low)
    apply_recompute(OneBlock(block), recompute)
    x = torch.randn(MB, SEQ, spec.hidden_size, dtype=low, requires_grad=True)
    measured = saved_bytes(block, x)
    config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=MB, global_batch_size=MB, seq_len=SEQ, dtype=dtype,
                            attention=attention, recompute=recompute)
    estimated = executor_layer_activation_bytes(spec, config, recompute, "cpu")
    # What is left over: norm statistics and rotary tables, O(tokens) and O(seq x head_dim).
    assert estimated <= measured <= 1.03 * estimated


VARIANTS = {"window in the band": dict(sliding_window=6), "window wider than the band": dict(sliding_window=16),
            "window under one mask": dict(sliding_window=30), "sinks": dict(attention_sinks=True),
            "sinks in the band": dict(attention_sinks=True, sliding_window=6),
            "heads wider than hidden / heads": dict(head_dim=48),
            "wide heads, sinks, band": dict(head_dim=48, attention_sinks=True, sliding_window=6)}


def _saved_and_estimated(spec, dtype: str, recompute: str, micro_batch: int) -> tuple[float, float]:
    torch.manual_seed(0)
    low = torch.bfloat16 if dtype == "bf16" else torch.float32
    block = Block(spec, "flash", 0).train().to(low)
    apply_recompute(OneBlock(block), recompute)
    x = torch.randn(micro_batch, SEQ, spec.hidden_size, dtype=low, requires_grad=True)
    config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=micro_batch, global_batch_size=micro_batch,
                            seq_len=SEQ, dtype=dtype, recompute=recompute)
    return saved_bytes(block, x), executor_layer_activation_bytes(spec, config, recompute, "cpu")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("recompute", ["none", "selective"])
@pytest.mark.parametrize("micro_batch", [1, MB])
def test_windows_sinks_and_wide_heads_save_what_the_estimate_counts(variant, dtype, recompute, micro_batch):
    """GPT-OSS's and Mistral's attention in the executor (execute/window_attention.py, `with_sink_key`): a sliding
    layer's band or mask and the sink key's wider Q, K, V are what `executor_core_bytes` counts (with one sequence
    per micro-batch the band's K/V blocks are views, with more copies): what the block saves beyond the same block
    without window and sinks is exactly what the estimate adds; and at 3 sequences the whole count holds as for
    every block (a query width, heads x head_dim, other than the hidden size is the Q and output width)."""
    spec = dataclasses.replace(PRESETS["tiny-llama"], dropout=0.0, **VARIANTS[variant])
    measured, estimated = _saved_and_estimated(spec, dtype, recompute, micro_batch)
    plain = dataclasses.replace(spec, sliding_window=None, attention_sinks=False)
    plain_measured, plain_estimated = _saved_and_estimated(plain, dtype, recompute, micro_batch)
    assert measured - plain_measured == estimated - plain_estimated
    if micro_batch == MB:  # the norms' statistics and rotary tables left over are O(tokens) and O(seq x head_dim)
        assert estimated <= measured <= 1.03 * estimated


def test_one_layout_for_every_rank_and_selective_recompute_drops_the_silu_output():
    """Unsharded and FSDP-sharded ranks keep the same activations (no fp32 residual stream anywhere); selective
    recompute of a Llama block keeps the attention core's inputs unrepeated and one ffn-sized tensor less."""
    spec = PRESETS["llama3-8b"]
    base = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=2, global_batch_size=16, seq_len=8192, dtype="bf16")
    sharded = dataclasses.replace(base, dp=8, zero_stage=3)
    for recompute in ("none", "selective", "full"):
        assert (executor_layer_activation_bytes(spec, base, recompute)
                == executor_layer_activation_bytes(spec, sharded, recompute))
    s, b, h, f, a = 8192, 2, spec.hidden_size, spec.ffn_hidden_size, spec.num_heads
    none = executor_layer_activation_bytes(spec, base, "none")
    selective = executor_layer_activation_bytes(spec, base, "selective")
    assert none - selective == 2 * s * b * f + 4 * a * s * b  # the silu output, and flash's log-sum-exp
    # bf16: two norm inputs, two linear inputs, Q, K, V (8 of 32 heads each), the attention output, gate, up and
    # their product.
    assert selective == 2 * s * b * (4 * h + h + 2 * h / 4 + h + 3 * f)
    logits = 2 * 8192 * spec.vocab_size
    assert logits_temporary_bytes(spec, base, "megatron") == 10 * logits


def test_with_one_micro_batch_the_gradients_and_the_activations_are_never_all_alive():
    """One micro-batch per step: the gradients come into existence as the activations go, so the estimate counts
    the larger of gradients and activations + loss temporaries there, and both with two or more micro-batches (the
    fp32 sum of every gradient, and the units' gradients while FSDP's one-rank units reduce them)."""
    from autoconf.cost.estimate import estimate
    from autoconf.cost.memory import unsharded_buffer_bytes
    from autoconf.spec.cluster import load_cluster

    model, cluster = PRESETS["gpt3-1.3b"], load_cluster("h100-gpt3-1.3b")
    one = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=16, global_batch_size=16, seq_len=2048, dtype="bf16",
                         recompute="full")
    two = dataclasses.replace(one, micro_batch_size=8)
    m1, m2 = (estimate(model, cluster, c).prediction["memory_per_stage"][0] for c in (one, two))
    assert m1["grads"] == 0.0 and m1["activations"] > 0
    reducing = unsharded_buffer_bytes(model, two, "torch")[1]
    assert 0 < reducing < 0.1 * 4 * model.total_params()
    assert m2["grads"] == pytest.approx(4 * model.total_params() + reducing, rel=1e-3) and m2["activations"] > 0


@pytest.mark.parametrize("arch", ["tiny-gpt", "tiny-llama"])
@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_a_stage_that_recomputes_its_first_layers_saves_what_the_estimate_counts(arch, recompute):
    """A stage of 3 blocks that recomputes only its first (`recompute_layers`: the executor checkpoints the layers
    `recomputed_layer_indices` names) keeps one recomputed block's and two plain blocks' tensors, as
    `stage_layer_activation_bytes` counts, and less than the same stage without recompute."""
    spec = dataclasses.replace(PRESETS[arch], dropout=0.0)
    config = ParallelConfig(tp=1, pp=2, dp=1, micro_batch_size=MB, global_batch_size=2 * MB, seq_len=SEQ,
                            dtype="fp32", recompute=recompute, recompute_layers=(1, 0))
    partition = [[2, 5], [5, spec.num_layers]]
    layers = recomputed_layer_indices(config, partition)
    assert layers == {2}
    torch.manual_seed(0)
    stage = build_model(spec, 2, 5, embed=False, head=False, device="cpu").train()
    x = torch.randn(MB, SEQ, spec.hidden_size, requires_grad=True)
    plain = saved_bytes(stage, x)
    apply_recompute(stage, recompute, layers)
    assert [b.recompute_full or b.attention.recompute_core for b in stage.layers.values()] == [True, False, False]
    measured = saved_bytes(stage, x)
    estimated = stage_layer_activation_bytes(spec, config, 3, 1, "torch", "cpu")
    assert measured < plain
    assert estimated <= measured <= 1.03 * estimated


def test_a_blocks_activations_read_only_the_fields_they_are_remembered_by():
    """`layer_activation_bytes` remembers its count by `LAYER_ACTIVATION_FIELDS` of the config: over every layout,
    framework, recompute mode and policy, precision, attention kernel and degree that shapes a block, the count
    reads no other field of the config (a field read but left out of the key would hand one config's count to
    another)."""
    import itertools

    from autoconf.cost import memory
    from autoconf.spec import frameworks
    from autoconf.spec.plan import ParallelConfig

    read: set[str] = set()
    recording = [False]

    @dataclasses.dataclass(frozen=True)
    class Spy(ParallelConfig):
        def __getattribute__(self, name):
            if recording[0] and not name.startswith("__"):
                read.add(name)
            return object.__getattribute__(self, name)

        __hash__ = object.__hash__

    policies = ("attention_core", "alternate_matmuls", "norms_mla_swiglu", "mla_up_proj_mlp")
    for name, fw in itertools.product(("llama3-8b", "gpt3-1.3b", "deepseek-v3", "qwen3-30b-a3b"), frameworks.PRESETS):
        model, execution = PRESETS[name], frameworks.execution(fw)
        for recompute, policy, dtype, sp, cp, chunks, attention in itertools.product(
                ("none", "selective", "full"), policies, ("bf16", "fp8"), (False, True), (1, 2), (1, 2),
                ("flash", "standard")):
            c = Spy(tp=2, pp=2, dp=2, micro_batch_size=1, global_batch_size=8, seq_len=4096, recompute=recompute,
                    dtype=dtype, sequence_parallel=sp, cp=cp, ep=2 if model.moe else 1, seq_chunks=chunks,
                    schedule="seq1f1b" if chunks > 1 else "1f1b", attention=attention)
            for layout, kind, moe in itertools.product(memory.LAYOUTS, ("gpu", "cpu"),
                                                       (False, True) if model.moe else (False,)):
                recording[0] = True
                try:
                    memory._layer_activation_bytes(model, c, layout, kind, None, policy, moe, execution)
                finally:
                    recording[0] = False
    # Properties and methods read fields through the spy too: the fields are what must be remembered.
    derived = {n for n in read if isinstance(getattr(ParallelConfig, n, None), (property, types.FunctionType))}
    assert read - derived <= set(memory.LAYER_ACTIVATION_FIELDS), read - derived
    assert {"tp", "cp", "seq_len", "micro_batch_size", "recompute"} <= read  # the spy sees the reads
