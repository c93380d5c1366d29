"""The profiler's MoE blocks (profile/moe_blocks.py) and the cost model's reading of them (cost/compute.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from autoconf.cost.compute import PassTimes, model_pieces
from autoconf.profile.moe_blocks import (ExpertsBlock, RoutingBlock, even_counts, expert_block_bytes, expert_degrees,
                                         fitting_degrees)
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
from profile_helpers import SEQ, measured_cpu_profile

MOE = PRESETS["tiny-moe"]  # 4 layers, the first dense; 8 experts top-2 of width 64, one shared expert of 64


def test_expert_degrees_are_the_powers_of_two_that_divide_the_experts_and_their_width():
    assert expert_degrees(MOE, (1, 2)) == ((1, 1), (2, 1), (4, 1), (8, 1), (1, 2), (2, 2), (4, 2), (8, 2))
    odd = dataclasses.replace(MOE, moe=dataclasses.replace(MOE.moe, num_experts=6, moe_intermediate_size=96))
    assert expert_degrees(odd, (1, 2, 4)) == ((1, 1), (2, 1), (1, 2), (2, 2), (1, 4), (2, 4))  # 4 divides 96
    assert expert_degrees(PRESETS["tiny-gpt"], (1, 2)) == ()
    assert even_counts(10, 4) == [3, 3, 2, 2] and sum(even_counts(7, 7)) == 7


def test_expert_entries_that_would_not_fit_half_a_rank_are_left_out():
    """8 experts x 3 x 64 x 64 fp32 weights and gradients: 786,432 bytes at ep 1, halved per doubling of ep."""
    assert expert_block_bytes(MOE, 1, 1, 4) == 2 * 8 * 3 * 64 * 64 * 4
    kept, left = fitting_degrees(MOE, expert_degrees(MOE, (1,)), 4, 2 * expert_block_bytes(MOE, 2, 1, 4))
    assert kept == ((2, 1), (4, 1), (8, 1)) and left == ((1, 1),)


def test_the_experts_block_computes_every_dispatched_row_once_per_etp_rank():
    """One rank's experts at (ep 2, etp 1) equal the same experts run one by one on balanced row blocks; at etp 2
    each row passes the width slice once per ETP rank (the gathered copies), so the output is twice it."""
    torch.manual_seed(0)
    rows = torch.randn(32, MOE.hidden_size)
    for etp in (1, 2):
        block = ExpertsBlock(MOE, 2, etp)
        w1, w3, w2 = block.experts.w1, block.experts.w3, block.experts.w2
        assert w1.shape == (4, 64, 64 // etp)
        # balanced: 32 rows from 2 source ranks, 4 rows per local expert from each
        expert_of_row = torch.arange(4).repeat_interleave(4).repeat(2)
        expected = torch.stack([torch.nn.functional.silu(r @ w1[e]) * (r @ w3[e]) @ w2[e]
                                for r, e in zip(rows, expert_of_row)])
        assert torch.allclose(block(rows), etp * expected, atol=1e-5)


def test_the_routing_block_is_the_moe_layer_without_its_experts():
    """No routed expert weights are held; the shared experts are split over TP; the output has the input's shape,
    and the layer routes 1/tp of the tokens (the router's gradient comes from that share alone)."""
    for tp in (1, 2):
        block = RoutingBlock(MOE, tp)
        assert not hasattr(block, "experts")
        assert block.shared.w1.weight.shape == (64 // tp, MOE.hidden_size)
        x = torch.randn(2, 16, MOE.hidden_size, requires_grad=True)
        out = block(x)
        assert out.shape == x.shape
        out.sum().backward()
        assert block.router.weight.grad is not None and x.grad.shape == x.shape


def _moe_profile(imbalance: float | None = None, ep_degrees=((1, 1), (2, 1), (4, 1))):
    """measured_cpu_profile with tables for tiny-moe: the dense tables of profile_helpers, a "moe" block at 1 us per
    token and TP rank, and experts at 2 us x ep per dispatched row's token."""
    cluster = measured_cpu_profile(tp_layers=False)
    compute = dict(cluster.compute)
    entries = list(compute["entries"])
    for tp in (1, 2, 4):
        for mb in (1, 2, 4):
            t = 1e-6 * mb * SEQ / tp
            entries.append({"block": "moe", "tp": tp, "micro_batch": mb, "seq_len": SEQ, "forward_s": t,
                            "backward_input_s": t, "backward_weight_s": t})
    for ep, etp in ep_degrees:
        for mb in (1, 2, 4):
            t = 2e-6 * ep * mb * SEQ
            entries.append({"block": "experts", "tp": 1, "ep": ep, "etp": etp, "micro_batch": mb, "seq_len": SEQ,
                            "forward_s": t, "backward_input_s": t, "backward_weight_s": t})
    compute.update(entries=entries, model=MOE.to_dict())  # (the dense blocks' synthetic times stand for tiny-moe's)
    efficiency = dict(cluster.efficiency)
    if imbalance is not None:
        efficiency["moe_load_imbalance"] = {"value": imbalance, "why": "test"}
    return MOE, dataclasses.replace(cluster, compute=compute, efficiency=efficiency)


def _config(**kw) -> ParallelConfig:
    base = dict(tp=1, pp=1, dp=4, micro_batch_size=2, global_batch_size=16, seq_len=SEQ, dtype="fp32")
    return ParallelConfig(**{**base, **kw})


def test_an_moe_layer_is_read_from_its_moe_and_experts_entries():
    """An MoE layer costs what a dense one does less its MLP, plus the "moe" block at the config's TP width and
    the experts of its ep read at the tokens one TP rank routes, times the profile's load imbalance."""
    model, cluster = _moe_profile(imbalance=1.5)
    share = 0.5  # measured_cpu_profile's cpu_share: every measured time is divided by it
    for tp, ep in ((1, 1), (2, 2), (4, 4)):
        c = _config(tp=tp, dp=4 // tp, ep=ep)
        pieces = model_pieces(model, cluster, c)
        assert pieces.source == "measured"
        mlp = 5e-6 * 2 * SEQ / tp / share
        moe = 1e-6 * 2 * SEQ / tp / share
        experts = 1.5 * 2e-6 * ep * (2 * SEQ / tp) / share
        assert pieces.moe_rest.forward - (pieces.block_rest.forward - mlp) == pytest.approx(moe + experts)
        assert pieces.moe_rest.backward_weight - (pieces.block_rest.backward_weight - mlp) == pytest.approx(
            moe + experts)


def test_without_experts_timed_at_the_layout_the_specification_model_costs_it():
    model, cluster = _moe_profile(ep_degrees=((1, 1), (2, 1)))
    assert model_pieces(model, cluster, _config(ep=2)).source == "measured"
    assert model_pieces(model, cluster, _config(ep=4)).source == "specification"
    assert model_pieces(model, cluster, _config(ep=2, etp=2, tp=2, dp=2)).source == "specification"


def test_moe_tables_describe_only_a_model_with_the_same_experts():
    """A profile timed before the MoE blocks were (its model without experts) is not read for an MoE model, nor
    one of other experts; a dense model of the same shape keys reads the dense blocks of an MoE profile."""
    model, cluster = _moe_profile()
    other = dataclasses.replace(model, moe=dataclasses.replace(model.moe, num_experts_per_tok=1))
    assert model_pieces(other, cluster, _config()).source == "specification"
    old = dataclasses.replace(cluster, compute={**cluster.compute, "model": dataclasses.replace(
        model, moe=None).to_dict()})
    assert model_pieces(model, old, _config()).source == "specification"
    dense = dataclasses.replace(model, moe=None)
    assert model_pieces(dense, cluster, _config()).source == "measured"
    capped = dataclasses.replace(model, moe=dataclasses.replace(model.moe, capacity_factor=1.25))
    assert model_pieces(capped, cluster, _config()).source == "measured"  # timed dropless: the cap bounds imbalance


def test_reference_gaps_sum_each_layer_as_what_it_is():
    """tiny-moe's one-layer reference is its dense first layer; its four-layer one adds three MoE layers, each the
    "moe" block and the experts at ep 1 (whole experts on one rank, as the unsharded model holds them)."""
    from autoconf.profile.overheads import reference_overheads

    times = {"attention": 4e-3, "mlp": 3e-3, "norm": 1e-3, "embedding": 1e-3, "head": 2e-3, "moe": 2e-3,
             "experts": 5e-3}
    entries = [{"block": b, "tp": 1, "micro_batch": 1, "seq_len": SEQ, "forward_s": t, "backward_input_s": 0.0,
                "backward_weight_s": 0.0, **({"ep": 1, "etp": 1} if b == "experts" else {})}
               for b, t in times.items()]
    entries.append({**entries[-1], "ep": 2, "forward_s": 1.0})  # not what the unsharded reference holds
    dense_layer = 4e-3 + 2e-3 + 3e-3
    moe_layer = 4e-3 + 2e-3 + 2e-3 + 5e-3
    ends = 3e-3

    def ref(layers, whole):
        return {"layers": layers, "params": 1000, "optimizer_s": 1e-3,
                "passes": [{"micro_batch": 1, "seq_len": SEQ, "forward_s": whole, "backward_s": 0.0}]}

    one = ref(1, dense_layer + ends + 2e-3)  # two pass overheads of 1 ms
    deep = ref(4, 1.2 * (dense_layer + 3 * moe_layer + ends) + 2e-3)
    found = reference_overheads(MOE, {"entries": entries}, [one], [deep])
    assert found["pass_overhead_s"] == pytest.approx(1e-3)
    assert found["model_compute_scale"] == pytest.approx(1.2)


def test_an_moe_profile_times_its_layer_and_plans_on_it(tmp_path, monkeypatch):
    """A real 2-rank profile of tiny-moe (tiny grid) holds the "moe" block at each TP width and the experts at
    every (ep, etp) and FSDP's hooks on sharded and on one-rank units, loads and round-trips, and a plan for tiny-moe
    on it is costed from its tables."""
    from autoconf.profile.launch import profile
    from autoconf.solve.search import search
    from autoconf.spec.cluster import load_cluster

    monkeypatch.setenv("AUTOCONF_PROFILE_TINY", "1")
    out = tmp_path / "moe.json"
    assert profile(out, nproc_per_node=2, quick=True, model="tiny-moe") == 0
    data = json.loads(out.read_text())
    compute = data["compute"]
    assert compute["model"]["moe"]["num_experts"] == 8
    tps = sorted({e["tp"] for e in compute["entries"] if e["block"] == "moe"})
    assert tps == [1, 2]
    degrees = {(e["ep"], e["etp"]) for e in compute["entries"] if e["block"] == "experts"}
    assert degrees == set(expert_degrees(MOE, (1, 2)))
    assert {e["ep"] for e in compute["ep_layers"]} == {2}  # the exchange in place over both ranks
    assert compute["fsdp_pass_s_per_unit"] >= 0 and compute["fsdp_solo_pass_s_per_unit"] >= 0  # sharded, one-rank
    cluster = load_cluster(str(out))
    assert cluster.to_dict() == data
    result = search(MOE, cluster, 2, compute["entries"][0]["seq_len"], "fp32", top_k=2)
    assert result.plans and all(p.prediction["compute_source"] == "measured" for p in result.plans)
    assert isinstance(model_pieces(MOE, cluster, _config(dp=2, micro_batch_size=1, global_batch_size=2,
                                                         seq_len=compute["entries"][0]["seq_len"])).moe_rest,
                      PassTimes)


def test_fsdp_hooks_run_on_every_moe_layers_experts_unit_too():
    """Under ZeRO >= 1 the executor makes each MoE layer's routed experts an FSDP unit of their own besides each
    block and the root (execute/parallelize.apply_data_parallel): tiny-moe's 4 blocks, root and 3 experts units
    each pay the profile's per-pass hook time in each of the 2 x m passes."""
    from autoconf.cost.estimate import stage_plan
    from autoconf.spec.frameworks import Execution
    from autoconf.spec.grid import RankGrid

    model, cluster = _moe_profile()
    c = _config(zero_stage=1)
    hooked = dataclasses.replace(cluster, compute={**cluster.compute, "fsdp_pass_s_per_unit": 1e-3})
    grid = RankGrid([[[r] for r in range(4)]])  # one pipeline rank of four data-parallel ranks
    base, more = (stage_plan(model, cl, c, [[0, 4]], (0,), grid, Execution()).costs for cl in (cluster, hooked))
    units = 4 + 1 + 3
    assert more.forward[0] - base.forward[0] == pytest.approx(units * 1e-3 / 0.5)
    assert more.backward_input[0] - base.backward_input[0] == pytest.approx(units * 1e-3 / 0.5)


def test_the_exchange_measured_in_place_replaces_the_modelled_all_to_alls_where_it_was_run():
    """A profile's `ep_layers` at the layout's ep give an MoE layer's exchange per pass (read in tokens, the
    layout's sequence first), for the executor, every view that calls `ep_comm_passes` alike; layouts with TP or
    expert TP, other ep degrees and other frameworks keep the modelled all-to-alls."""
    from autoconf.cost.moe import ep_comm_passes
    from autoconf.spec.frameworks import PRESETS as FRAMEWORKS

    model, cluster = _moe_profile(ep_degrees=((1, 1), (2, 1), (4, 1), (2, 2)))
    rows = [{"ep": 2, "micro_batch": mb, "seq_len": SEQ, "forward_s": 1e-3 * mb, "backward_s": 5e-4 * mb}
            for mb in (1, 4)]
    measured = dataclasses.replace(cluster, compute={**cluster.compute, "ep_layers": rows})
    c = _config(ep=2)
    assert ep_comm_passes(model, measured, c, [0, 1], [0]) == pytest.approx((2e-3, 1e-3))  # mb 2, between
    modelled = ep_comm_passes(model, cluster, c, [0, 1], [0])
    assert modelled != pytest.approx((2e-3, 1e-3))
    for other in (_config(ep=4), _config(ep=2, tp=2, dp=2), _config(ep=2, etp=2)):
        assert ep_comm_passes(model, measured, other, [0, 1], [0, 1]) == ep_comm_passes(
            model, cluster, other, [0, 1], [0, 1])
    megatron = FRAMEWORKS["megatron-core"]
    assert ep_comm_passes(model, measured, c, [0, 1], [0], megatron) == ep_comm_passes(
        model, cluster, c, [0, 1], [0], megatron)


def test_the_exchange_is_measured_at_the_ep_degrees_the_experts_were_timed_at_without_expert_tp():
    from autoconf.profile.ep_layers import ep_degrees

    timed = expert_degrees(MOE, (1, 2))
    assert ep_degrees(timed, 4) == (2, 4) and ep_degrees(timed, 8) == (2, 4, 8) and ep_degrees(timed, 2) == (2,)
    assert ep_degrees(((1, 1), (4, 1), (2, 2)), 4) == (4,)  # (2, 1) left out for memory: not measured in place
