"""What a compiled block keeps for its backward against the estimate's compiled count (cost/memory.py
`compiled_block_delta_bytes`).

On CUDA the executor compiles each dense block; inductor partitions the joint forward and backward graph by a min
cut and keeps less than the eager block. The `aot_eager_decomp_partition` backend runs inductor's decompositions and
partitioner with eager kernels, so the saved set is counted here on CPU with autograd's saved-tensor hooks, in bf16
(as FSDP2's mixed precision runs the block), beside the eager block's count for the same shapes.
"""

import dataclasses

import pytest
import torch

from autoconf.cost.memory import executor_layer_activation_bytes, layer_activation_bytes
from autoconf.execute.model import Block, OneBlock
from autoconf.execute.parallelize import apply_recompute
from autoconf.profile.activations import saved_bytes
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import load_model


def _spec(name: str, **changes):
    spec = load_model(name)
    if name == "llama3-8b":  # an eighth of the width: grouped heads and the FFN ratio kept
        spec = dataclasses.replace(spec, hidden_size=512, ffn_hidden_size=1792, num_heads=4, num_kv_heads=1)
    return dataclasses.replace(spec, **changes)


def _compiled_saved_bytes(spec, recompute: str, mb: int, seq: int, policy: str = "attention_core") -> int:
    torch.manual_seed(0)
    torch._dynamo.reset()
    block = Block(spec, "flash").to(dtype=torch.bfloat16).train()
    if recompute != "none":
        apply_recompute(OneBlock(block), recompute, None, policy)
    x = torch.randn(mb, seq, spec.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    compiled = torch.compile(block, backend="aot_eager_decomp_partition", fullgraph=True)
    compiled(x)  # traced and partitioned before the count
    return saved_bytes(compiled, x)


@pytest.mark.slow
@pytest.mark.parametrize("name,changes", [("tiny-llama", {}), ("llama3-8b", {}), ("llama3-8b", {"qk_norm": True})])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_estimate_is_what_the_compiled_block_keeps(name, changes, recompute):
    """Per token, exactly: the saved bytes at 480 tokens less those at 240 (which leaves out what does not grow
    with the tokens: the generator state the checkpoint keeps) against the estimate's difference. The token counts
    are unlike every weight dimension (saved_bytes leaves weight-shaped tensors out)."""
    spec = _spec(name, **changes)
    measured, estimated = [], []
    for seq in (160, 80):
        config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=3, global_batch_size=3, seq_len=seq,
                                dtype="bf16", recompute=recompute)
        measured.append(_compiled_saved_bytes(spec, recompute, 3, seq))
        estimated.append(executor_layer_activation_bytes(spec, config, recompute, "gpu", compiled=True))
    assert measured[0] - measured[1] == estimated[0] - estimated[1], (measured, estimated)


@pytest.mark.slow
@pytest.mark.parametrize("changes", [{}, {"qk_norm": True}])
def test_the_per_op_policy_is_counted_as_the_eager_block_keeps_it(changes):
    """Under torchtitan's per-op policy the estimate counts the eager block (op_policy_layer_activation_bytes); a
    compiled llama block keeps one hidden-wide bf16 tensor per token fewer: the estimate is over by exactly that."""
    spec = _spec("llama3-8b", **changes)
    measured, estimated = [], []
    for seq in (160, 80):
        config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=3, global_batch_size=3, seq_len=seq,
                                dtype="bf16", recompute="selective", selective_recompute="alternate_matmuls")
        measured.append(_compiled_saved_bytes(spec, "selective", 3, seq, "alternate_matmuls"))
        estimated.append(layer_activation_bytes(spec, config, "torch", "gpu", selective="alternate_matmuls"))
    tokens = 3 * (160 - 80)
    assert estimated[0] - estimated[1] - (measured[0] - measured[1]) == 2 * spec.hidden_size * tokens


def test_compiled_keeps_less_only_where_the_partition_recomputes():
    """The compiled count is below the eager one for the llama block without recompute and with the attention core
    recomputed, equal under full recompute and where the partition is not modelled (dropout)."""
    spec = load_model("llama3-8b")
    for recompute, fewer in (("none", True), ("selective", True), ("full", False)):
        c = ParallelConfig(tp=2, pp=1, dp=1, micro_batch_size=2, global_batch_size=2, seq_len=4096, dtype="bf16",
                           recompute=recompute, sequence_parallel=True)
        eager = executor_layer_activation_bytes(spec, c, recompute, "gpu")
        compiled = executor_layer_activation_bytes(spec, c, recompute, "gpu", compiled=True)
        assert (compiled < eager) == fewer and compiled > 0
    dropped = dataclasses.replace(spec, dropout=0.1)
    assert (executor_layer_activation_bytes(dropped, c, "none", "gpu", compiled=True)
            == executor_layer_activation_bytes(dropped, c, "none", "gpu"))
