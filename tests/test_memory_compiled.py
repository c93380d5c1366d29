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
from tests.rank_helpers import run_ranks


def _spec(name: str, **changes):
    spec = load_model(name)
    if name == "llama3-8b":  # an eighth of the width: grouped heads and the FFN ratio kept
        spec = dataclasses.replace(spec, hidden_size=512, ffn_hidden_size=1792, num_heads=4, num_kv_heads=1)
    return dataclasses.replace(spec, **changes)


def _per_token(count) -> float:
    """Bytes per token of `count(seq)`, the bytes one block keeps at micro-batch 3: its value at 160 tokens per
    sequence less its value at 80, over the 240 tokens between (what does not grow with the tokens drops out)."""
    return (count(160) - count(80)) / (3 * 80)


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


OP_POLICY = dict(recompute="selective", selective_recompute="alternate_matmuls")


def _op_policy_spec(name: str, **changes):
    return _spec(name, dropout=0.0, **changes)  # tiny-gpt's dropout is 0.1: the rule covers dropout-free blocks


def _estimated_per_token(spec, tp: int, sequence_parallel: bool, compile: bool) -> float:
    """The estimate's bytes per token of one block under the per-op policy (micro-batch 3, 160 and 80 tokens)."""
    return _per_token(lambda seq: layer_activation_bytes(spec, ParallelConfig(
        tp=tp, pp=1, dp=1, micro_batch_size=3, global_batch_size=3, seq_len=seq, dtype="bf16",
        sequence_parallel=sequence_parallel, compile=compile, **OP_POLICY), "torch", "gpu",
        selective="alternate_matmuls"))


@pytest.mark.slow
@pytest.mark.parametrize("name,changes", [("tiny-llama", {}), ("llama3-8b", {}), ("llama3-8b", {"qk_norm": True}),
                                          ("tiny-gpt", {})])
def test_estimate_is_what_the_compiled_block_keeps_under_the_per_op_policy(name, changes):
    """Per token, exactly, at tp 1: Llama's compiled block keeps its down projection's output no more (the policy
    marks it, the backward reads it nowhere), GPT's (whose down projection the policy does not mark) the same as
    the eager block."""
    spec = _op_policy_spec(name, **changes)
    measured = _per_token(lambda seq: _compiled_saved_bytes(spec, "selective", 3, seq, "alternate_matmuls"))
    assert measured == _estimated_per_token(spec, 1, False, compile=True)
    fewer = spec.hidden_size * 2 if spec.arch == "llama" else 0
    assert _estimated_per_token(spec, 1, False, compile=False) - _estimated_per_token(spec, 1, False, True) == fewer


def _tp_block_saved_bytes(spec, mesh, seq: int, sequence_parallel: bool, policy: str | None, compile: bool,
                          fsdp: bool) -> int:
    """Bytes this TP rank's block of `spec` keeps for micro-batch 3 of `seq` tokens (its 1/tp share under sequence
    parallelism) on the ("dp", "tp") `mesh`: in bf16, selective recompute by `policy` (None: none), compiled with
    inductor's partitioner (`compile`), and with `fsdp` under FSDP2's mixed precision on the one-rank dp mesh as the
    executor runs it (plain DTensor parameters compile only under the per-op policy here), else cast to bf16."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from autoconf.execute.model import build_model
    from autoconf.execute.parallelize import apply_tp

    torch.manual_seed(0)
    torch._dynamo.reset()
    model = build_model(spec, embed=False, head=False, device="cpu")
    if not fsdp:
        model = model.to(torch.bfloat16)
    apply_tp(model, mesh["tp"], sequence_parallel)
    if policy is not None:
        apply_recompute(model, "selective", None, policy)
    block = model.layers["0"]
    if compile:
        block.compile(backend="aot_eager_decomp_partition", fullgraph=True)
    if fsdp:
        fully_shard(block, mesh=mesh["dp"],
                    mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
    tp = mesh["tp"].size()
    x = torch.randn(3, seq // tp if sequence_parallel else seq, spec.hidden_size, dtype=torch.bfloat16,
                    requires_grad=True)
    block(x).sum().backward()  # traced and partitioned before the count
    return saved_bytes(block, x)


def _tp_mesh(rank: int, world: int):
    """A ("dp", "tp") mesh of one data-parallel rank and `world` TP ranks over gloo (this process is `rank`)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", rank=rank, world_size=world)
    return init_device_mesh("cpu", (1, world), mesh_dim_names=("dp", "tp"))


def _tp_rank(rank, world, queue):
    """One TP rank: bytes per token its block keeps under the per-op policy, eager and compiled, for each case."""
    import torch.distributed as dist

    mesh = _tp_mesh(rank, world)
    out = {}
    for name, changes, sequence_parallel in TP_CASES:
        spec = dataclasses.replace(_op_policy_spec(name, **changes), num_layers=1)
        for compile in (False, True):
            out[(name, str(changes), sequence_parallel, compile)] = _per_token(lambda seq: _tp_block_saved_bytes(
                spec, mesh, seq, sequence_parallel, "alternate_matmuls", compile, fsdp=False))
    queue.put((rank, out))
    dist.destroy_process_group()


TP_CASES = [("llama3-8b", {"num_kv_heads": 2}, False), ("llama3-8b", {"num_kv_heads": 2}, True),
            ("llama3-8b", {"num_kv_heads": 2, "qk_norm": True}, True), ("tiny-gpt", {}, True)]


@pytest.mark.slow
def test_estimate_is_what_compiled_tp_blocks_keep_under_the_per_op_policy():
    """On 2 gloo ranks, per token, exactly, eager and compiled: with sequence parallelism the compiled block also
    keeps its MLP's reduce-scatter output no more; without it, what the eager block keeps."""
    seen = run_ranks(_tp_rank, 2, timeout=600)
    for _, measured in seen:
        for name, changes, sequence_parallel in TP_CASES:
            spec = dataclasses.replace(_op_policy_spec(name, **changes), num_layers=1)
            for compile in (False, True):
                got = measured[(name, str(changes), sequence_parallel, compile)]
                assert got == _estimated_per_token(spec, 2, sequence_parallel, compile), (name, changes, compile)
        assert measured[("tiny-gpt", "{}", True, True)] < measured[("tiny-gpt", "{}", True, False)]


def _fsdp_tp_rank(rank, world, queue):
    """One TP rank: bytes per token its compiled block keeps without recompute, with and without sequence
    parallelism, the block under FSDP2 as the executor runs it."""
    import torch.distributed as dist

    mesh = _tp_mesh(rank, world)
    spec = dataclasses.replace(_spec("llama3-8b", num_heads=4, num_kv_heads=4), num_layers=1)
    queue.put({sequence_parallel: _per_token(lambda seq: _tp_block_saved_bytes(
        spec, mesh, seq, sequence_parallel, None, compile=True, fsdp=True)) for sequence_parallel in (False, True)})
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("tp", [2, 4])
def test_estimate_is_what_compiled_tp_blocks_keep_without_recompute(tp):
    """On tp gloo ranks, per token, exactly: with sequence parallelism the compiled block's norms save h/tp of the
    residual, and without it also only h/tp (the partition keeps the attention's all-reduced output instead: it
    does not recompute a collective), where the block without TP saves h."""
    spec = dataclasses.replace(_spec("llama3-8b", num_heads=4, num_kv_heads=4), num_layers=1)
    for measured in run_ranks(_fsdp_tp_rank, tp, timeout=600):
        for sequence_parallel, got in measured.items():
            assert got == _per_token(lambda seq: executor_layer_activation_bytes(spec, ParallelConfig(
                tp=tp, pp=1, dp=1, micro_batch_size=3, global_batch_size=3, seq_len=seq, dtype="bf16",
                sequence_parallel=sequence_parallel), "none", "gpu", compiled=True)), (tp, sequence_parallel)


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
