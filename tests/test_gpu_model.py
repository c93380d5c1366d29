"""The cost model's GPU-profile terms, on synthetic numbers: the chain scales the profiler derives from the executor's
model at two depths, and how the cost model applies them to the block table."""

import dataclasses

import pytest

from autoconf.cost.compute import chain_scale
from autoconf.cost.estimate import estimate
from autoconf.profile.overheads import chain_scales
from autoconf.spec.plan import ParallelConfig
from profile_helpers import SEQ, TINY, measured_cpu_profile

BLOCKS = ("attention", "mlp", "norm", "embedding", "head")


def _table(mbs=(1, 4)):
    return {"entries": [{"block": b, "tp": 1, "micro_batch": mb, "seq_len": 64, "forward_s": 1e-3 * mb,
                         "backward_input_s": 1e-3 * mb, "backward_weight_s": 0.0} for b in BLOCKS for mb in mbs]}


def _reference(layers, layer_s, ends_s, mbs=(1, 4)):
    """A model whose every layer takes layer_s[mb] and whose ends take ends_s[mb] (forward + backward, split evenly)."""
    return {"layers": layers, "params": 1,
            "passes": [{"micro_batch": mb, "seq_len": 64, "forward_s": (layers * layer_s[mb] + ends_s[mb]) / 2,
                        "backward_s": (layers * layer_s[mb] + ends_s[mb]) / 2} for mb in mbs]}


def test_chain_scales_split_one_layer_in_place_from_the_models_ends():
    """Blocks of a layer sum to 4 x 2 ms x mb (attention, MLP, two norms), the ends to 2 x 2 ms x mb: a layer that
    takes 0.75x that at micro-batch 1 and 1.1x at 4, and ends at 1.0x and 1.3x, are recovered exactly from two
    depths."""
    layer = {1: 0.75 * 8e-3, 4: 1.1 * 32e-3}
    ends = {1: 1.0 * 4e-3, 4: 1.3 * 16e-3}
    rows = chain_scales(TINY, _table(), _reference(1, layer, ends), _reference(5, layer, ends))
    assert [r["micro_batch"] for r in rows] == [1, 4]
    assert [r["layer_scale"] for r in rows] == pytest.approx([0.75, 1.1])
    assert [r["ends_scale"] for r in rows] == pytest.approx([1.0, 1.3])
    wild = chain_scales(TINY, _table(), _reference(1, layer, {1: -1.0, 4: 1.0}), _reference(5, layer, ends))
    assert wild[0]["ends_scale"] == 0.25  # noise beyond [0.25, 4] is clamped
    assert chain_scales(TINY, _table(mbs=(1,)), _reference(1, layer, ends), _reference(5, layer, ends)) == [
        pytest.approx({"micro_batch": 1, "seq_len": 64, "layer_scale": 0.75, "ends_scale": 1.0})]


def test_chain_scale_is_read_at_tokens_per_tp_rank_and_held_beyond_the_measured_sizes():
    table = {"chain_scales": [{"micro_batch": 1, "seq_len": 64, "layer_scale": 0.8, "ends_scale": 1.0},
                              {"micro_batch": 4, "seq_len": 64, "layer_scale": 1.1, "ends_scale": 1.3}]}

    def at(block, mb, tp=1):
        return chain_scale(table, {"block": block, "micro_batch": mb, "seq_len": 64, "tp": tp})

    assert at("mlp", 1) == pytest.approx(0.8) and at("attention", 4) == pytest.approx(1.1)
    assert at("norm", 2) == pytest.approx(0.9)  # a third of the way from 64 to 256 tokens
    assert at("head", 4) == pytest.approx(1.3) and at("embedding", 1) == pytest.approx(1.0)
    assert at("mlp", 8) == pytest.approx(1.1)  # held at the largest measured size
    assert at("mlp", 4, tp=4) == pytest.approx(0.8)  # a quarter shard's kernels are as small as micro-batch 1's
    assert chain_scale({}, {"block": "mlp", "micro_batch": 1, "seq_len": 64}) == 1.0


def test_chain_scales_multiply_the_block_times_in_the_estimate():
    """With a layer scale of 1.5 and ends scale of 1 everywhere, the compute term grows by exactly the layers' share
    of it."""
    base = measured_cpu_profile(1.0, alone=1.0)
    config = ParallelConfig(tp=1, pp=1, dp=4, micro_batch_size=1, global_batch_size=16, seq_len=SEQ, dtype="fp32")
    rows = [{"micro_batch": mb, "seq_len": SEQ, "layer_scale": 1.5, "ends_scale": 1.0} for mb in (1, 4)]
    scaled = dataclasses.replace(base, compute={**base.compute, "chain_scales": rows})
    neutral = dataclasses.replace(base, compute={**base.compute, "chain_scales": [
        {**r, "layer_scale": 1.0} for r in rows]})
    a = estimate(TINY, neutral, config).prediction["time_breakdown"]["compute"]
    b = estimate(TINY, scaled, config).prediction["time_breakdown"]["compute"]
    assert a == pytest.approx(estimate(TINY, base, config).prediction["time_breakdown"]["compute"])
    per_token = {"attention": 4e-6, "mlp": 5e-6, "norm": 2e-7, "embedding": 3e-7, "head": 2e-6}  # profile_helpers
    layers = TINY.num_layers * (per_token["attention"] + per_token["mlp"] + 2 * per_token["norm"])
    ends = per_token["embedding"] * 2 / 3 + per_token["head"]  # the embedding has no backward-input pass
    assert (b - a) / a == pytest.approx(0.5 * layers / (layers + ends), rel=1e-6)
