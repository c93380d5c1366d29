"""The executor's mixed precision on CPU (one process, gloo): every rank, unsharded ones included, runs its blocks on
bf16 compute copies of fp32 master weights through FSDP2 (no autocast, no fp32 residual stream), keeps fp32
gradients, and lands within bf16 rounding of the fp32 loss."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from autoconf.execute.mesh import build_mesh
from autoconf.execute.model import build_model
from autoconf.execute.parallelize import (apply_data_parallel, apply_recompute, compiles, compute_dtype, materialize,
                                          precision_policy)
from autoconf.spec.grid import RankGrid
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig

LLAMA = ModelSpec(name="test-llama", arch="llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                  ffn_hidden_size=176, vocab_size=256, max_seq_len=64)


def _loss(config: ParallelConfig, dtype: torch.dtype, seen: list) -> tuple[float, torch.nn.Module]:
    mesh = build_mesh(RankGrid.logical(config.dims), "cpu")
    model = build_model(LLAMA)
    materialize(model, torch.device("cpu"), seed=0)
    apply_recompute(model, config.recompute)
    apply_data_parallel(model, mesh, config, precision_policy(dtype))
    attention = model.layers["0"].attention  # inside the FSDP unit: it sees the unit's compute copies
    attention.register_forward_hook(lambda m, args, out: seen.append((m.wq.weight.dtype, out.dtype)))
    tokens = torch.randint(0, LLAMA.vocab_size, (2, 33), generator=torch.Generator().manual_seed(1))
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()
    return loss.item(), model


def test_unsharded_rank_computes_in_bf16_on_fp32_master_weights(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=2, global_batch_size=2, seq_len=32,
                                recompute="selective")
        assert compute_dtype(config, "cpu") == torch.float32 and compute_dtype(config, "cuda") == torch.bfloat16
        assert compiles(config, "cuda") and not compiles(config, "cpu")
        seen: list = []
        reference, _ = _loss(config, torch.float32, seen)
        assert seen == [(torch.float32, torch.float32)]
        seen.clear()
        mixed, model = _loss(config, torch.bfloat16, seen)
        assert seen == [(torch.bfloat16, torch.bfloat16)]  # weights and the residual branch's output
        for name, p in model.named_parameters():
            assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, name
        # Without a pipeline the one-rank units free their compute copies after the forward and backward.
        assert model.layers["0"].attention.wq.weight.dtype == torch.float32
        assert abs(mixed - reference) <= 0.02 * reference
    finally:
        dist.destroy_process_group()


def test_fsdp_view_warning_is_silenced_by_the_trainer(tmp_path):
    """Every rank of a tp2 x dp2 ZeRO-3 launch printed FSDP2's "returned a view tensor" warning (the head's local
    view of its all-gathered logits, which the loss reads out of place). The trainer silences exactly it."""
    import warnings

    from torch.distributed.fsdp import fully_shard

    from autoconf.execute.train import quiet_known_warnings

    class Viewing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.linear(x).view(-1)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = fully_shard(Viewing())
        for quiet in (False, True):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if quiet:
                    quiet_known_warnings()
                warnings.warn("another warning", UserWarning)
                model(torch.ones(2, 4)).sum().backward()
            messages = [str(w.message) for w in caught]
            assert "another warning" in messages
            assert any("returned a view tensor" in m for m in messages) != quiet, messages
    finally:
        dist.destroy_process_group()
