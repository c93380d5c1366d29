"""The memory estimator's activation bytes for the torch layout are what the executor's block really saves for its
backward: counted here with autograd's saved-tensor hooks (distinct storages, parameters and their casts left out) on
CPU, in fp32 and under bf16 autocast as the executor trains on GPUs, for both architectures and both attention
kernels. (Dropout is off: CPU attention falls back to the unfused kernel with dropout and stores dropout masks in the
input's dtype, where CUDA keeps one byte per element.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autoconf.cost.memory import executor_layer_activation_bytes, logits_temporary_bytes
from autoconf.execute.model import Block
from autoconf.profile.activations import saved_bytes
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS

# Tokens per micro-batch (3 x 40) differ from every weight dimension, so activations and weight casts never share
# a shape.
MB, SEQ = 3, 40


@pytest.mark.parametrize("arch", ["tiny-gpt", "tiny-llama"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("attention", ["flash", "standard"])
def test_estimated_activation_bytes_match_what_the_block_saves(arch, dtype, attention):
    spec = dataclasses.replace(PRESETS[arch], dropout=0.0)
    torch.manual_seed(0)
    block = Block(spec, attention).train()
    x = torch.randn(MB, SEQ, spec.hidden_size, requires_grad=True)
    measured = saved_bytes(block, x, torch.bfloat16 if dtype == "bf16" else None)
    config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=MB, global_batch_size=MB, seq_len=SEQ, dtype=dtype,
                            attention=attention)
    estimated = executor_layer_activation_bytes(spec, config, "none", "cpu")
    # What is left over: norm statistics and rotary tables, O(tokens) and O(seq x head_dim).
    assert estimated <= measured <= 1.03 * estimated


def test_autocast_keeps_more_than_megatron_accounting_and_the_loss_temporaries_follow_the_layout():
    spec = PRESETS["gpt3-1.3b"]
    config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=8, global_batch_size=16, seq_len=2048, dtype="bf16")
    sbh = 8 * 2048 * spec.hidden_size
    torch_layout = executor_layer_activation_bytes(spec, config, "none")
    megatron = spec.layer_activation_bytes(2048, 8, 1, False, "none", "flash", 2)
    # fp32 residual stream and norms (+4 sbh), one cast per linear (+3 sbh), the attention output (+1 sbh).
    assert torch_layout - megatron == pytest.approx(8 * sbh, rel=1e-3)
    logits = 8 * 2048 * spec.vocab_size
    assert logits_temporary_bytes(spec, config, "torch") == 12 * logits
    assert logits_temporary_bytes(spec, config, "megatron") == 10 * logits
    sharded = dataclasses.replace(config, dp=2, zero_stage=1, global_batch_size=32)
    assert executor_layer_activation_bytes(spec, sharded, "none") < torch_layout  # FSDP computes all in bf16


def test_with_one_micro_batch_the_gradients_and_the_activations_are_never_all_alive():
    """The H100 run's mb16 full-recompute step (one micro-batch) peaked with no gradients yet: the estimate counts the
    larger of gradients and activations + loss temporaries there, and both with two or more micro-batches."""
    from autoconf.cost.estimate import estimate
    from autoconf.spec.cluster import load_cluster

    model, cluster = PRESETS["gpt3-1.3b"], load_cluster("h100-gpt3-1.3b")
    one = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=16, global_batch_size=16, seq_len=2048, dtype="bf16",
                         recompute="full")
    two = dataclasses.replace(one, micro_batch_size=8)
    m1, m2 = (estimate(model, cluster, c).prediction["memory_per_stage"][0] for c in (one, two))
    assert m1["grads"] == 0.0 and m1["activations"] > 0
    assert m2["grads"] == pytest.approx(4 * model.total_params(), rel=1e-3) and m2["activations"] > 0
    measured_peak = 42.05 * 2 ** 30  # allocator peak on the H100 (docs/gpu.md)
    predicted = m1["total"] - cluster.device.memory_overhead_bytes
    assert abs(predicted - measured_peak) / measured_peak < 0.02
