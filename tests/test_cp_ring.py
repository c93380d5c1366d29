"""torch's context-parallel ring (`Execution.cp_attention` "torch", and "executor" where autoconf's executor hands
attention to it; autoconf/cost/cp_ring.py): what it adds to the attention core and to the K/V exchange, and where it
adds nothing."""

import dataclasses

import numpy as np
import pytest

from autoconf.cost import cp_ring
from autoconf.cost.comm import collective_time, p2p_time
from autoconf.cost.compute import model_pieces
from autoconf.cost.estimate import cp_attention_comm, estimate
from autoconf.cost.memory import cp_buffer_bytes, cp_kv_bytes
from autoconf.solve.bounds import BoundCache
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import execution
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS

MODEL = PRESETS["llama3.1-8b"]
GT = load_cluster("grand-teton-h100-96g-500w", nodes=1)
TORCH = execution("torchtitan")
KERNEL = TORCH.replace(cp_attention="kernel")
AUTOCONF = execution("autoconf")
RATE = GT.device.memory_bandwidth_Bps * GT.eff("memory")


def _row(cp: int, local: int = 32768, cp_comm: str = "allgather", **kw) -> ParallelConfig:
    """torchtitan's Table 2 layout: 8 ranks, fsdp 8 / cp, 32k tokens per rank."""
    base = dict(tp=1, pp=1, dp=8 // cp, cp=cp, cp_comm=cp_comm, micro_batch_size=1, global_batch_size=8 // cp,
                seq_len=local * cp, zero_stage=3, recompute="full", dtype="bf16")
    return ParallelConfig(**{**base, **kw})


@pytest.mark.parametrize("cp", [2, 4, 8])
def test_ring_core_is_the_causal_share_plus_the_stated_merges(cp):
    """Under torch's ring a rank's attention core is the whole sequence's core / cp (the kernels do exactly the
    causal share) plus `merge_bytes` at the element-wise rate, in the forward and in the backward; the "kernel"
    flag keeps the causal share alone."""
    c = _row(cp)
    whole = model_pieces(MODEL, GT, dataclasses.replace(c, cp=1), execution=TORCH).attention_core
    ring = model_pieces(MODEL, GT, c, execution=TORCH).attention_core
    plain = model_pieces(MODEL, GT, c, execution=KERNEL).attention_core
    f, b = cp_ring.merge_bytes(MODEL, c, TORCH)
    assert f > 0 and b > 0
    assert ring.forward == pytest.approx(whole.forward / cp + f / RATE, rel=1e-12)
    assert ring.backward_input == pytest.approx(whole.backward_input / cp + b / RATE, rel=1e-12)
    assert plain.forward == pytest.approx(whole.forward / cp, rel=1e-12)
    assert plain.backward_input == pytest.approx(whole.backward_input / cp, rel=1e-12)


def test_the_ring_terms_vanish_at_cp_1_and_for_other_frameworks():
    """No merges, no dK/dV ring and the same prediction to the last bit at cp 1 (torchtitan's and the executor's),
    and nothing under the "kernel" flag (Megatron's presets) at any cp."""
    c1 = _row(1)
    assert cp_ring.merge_bytes(MODEL, c1, TORCH) == (0.0, 0.0) and cp_ring.dkv_bytes(MODEL, c1, TORCH) == 0.0
    ring, plain = (estimate(MODEL, GT, c1, execution=ex, detail=False).prediction for ex in (TORCH, KERNEL))
    assert plain.pop("framework_flags") == {"cp_attention": "kernel"} and ring == plain
    ring, plain = (estimate(MODEL, GT, c1, execution=ex, detail=False).prediction
                   for ex in (AUTOCONF, AUTOCONF.replace(cp_attention="kernel")))
    assert plain.pop("framework_flags") == {"cp_attention": "kernel"} and ring == plain
    for name in ("megatron", "megatron-core", "deepseek"):
        assert cp_ring.merge_bytes(MODEL, _row(8), execution(name)) == (0.0, 0.0)
        assert cp_ring.dkv_bytes(MODEL, _row(8), execution(name)) == 0.0


def test_merges_grow_by_the_same_bytes_with_every_ring_step():
    """At a fixed share of tokens per rank every ring step adds the same bytes (one merge, one accumulation, one
    dK/dV hand-off): the bytes are affine in cp, with a positive slope in both passes."""
    f = {cp: cp_ring.merge_bytes(MODEL, _row(cp), TORCH) for cp in (2, 4, 8)}
    for p in (0, 1):
        step = (f[4][p] - f[2][p]) / 2
        assert step > 0
        assert f[8][p] - f[4][p] == pytest.approx(4 * step, rel=1e-12)


def test_repeated_kv_travel_at_every_heads_width():
    """Where K/V are repeated to every query head before SDPA (`repeat_kv`), the ring moves and merges them at the
    query width: 4x the grouped K/V of Llama 3.1 8B (32 heads, 8 K/V heads) in the exchange, more merge bytes."""
    repeated = TORCH.replace(eager_ops=TORCH.eager_ops + ("repeat_kv",))
    c = _row(4)
    assert cp_ring.sdpa_kv_width(MODEL, repeated) == MODEL.q_dim == 4 * MODEL.kv_dim
    assert cp_ring.sdpa_kv_bytes(MODEL, c, repeated, 1.0) == 4.0 and cp_ring.sdpa_kv_bytes(MODEL, c, TORCH, 1.0) == 1.0
    assert cp_ring.dkv_bytes(MODEL, c, repeated) == 4 * cp_ring.dkv_bytes(MODEL, c, TORCH)
    assert all(r > t for r, t in zip(cp_ring.merge_bytes(MODEL, c, repeated), cp_ring.merge_bytes(MODEL, c, TORCH)))


def test_torch_all_gather_hides_behind_the_local_step_and_the_last_dkv_stays_exposed():
    """torch issues the all-gather before the rank's own step: with a core long enough the forward exposes only
    the profile's collective share of it, and the backward exactly one fp32 dK/dV transfer (the last, awaited after
    the loop) and that share of the rest; with no core to hide behind, the whole gather shows in the forward."""
    c = _row(8)
    group = np.arange(8)
    core = model_pieces(MODEL, GT, c, execution=TORCH).attention_core
    exposed = cp_attention_comm(MODEL, GT, c, group, core, TORCH)
    pairs = np.stack([group, np.roll(group, -1)], axis=1)
    last = p2p_time(GT, cp_ring.dkv_bytes(MODEL, c, TORCH), pairs)
    gather = collective_time(GT, "all_gather", cp_ring.sdpa_kv_bytes(MODEL, c, TORCH, cp_kv_bytes(MODEL, c)) * 8,
                             group)
    f = GT.collective_sm_share  # what a hidden transfer takes from the step beside it (simulate.beside)
    assert exposed.forward == pytest.approx(f * gather, rel=1e-12)
    assert exposed.backward_input == pytest.approx(last + f * (gather + 7 * last), rel=1e-12) and last > 0
    bare = cp_attention_comm(MODEL, GT, c, group, dataclasses.replace(core, forward=0.0, backward_input=0.0), TORCH)
    assert bare.forward == pytest.approx(gather, rel=1e-12)


def test_torch_ring_holds_its_fp32_gradients_and_the_gathered_kv():
    """torch's backward holds the K/V the kernels read (the whole sequence's under "allgather", two blocks under
    "ring") and a send buffer at the kernel's width, fp32 dQ and three fp32 dK/dV blocks: more than the "kernel"
    reading's buffer, growing with cp only under "allgather", nothing at cp 1."""
    for cp_comm, blocks in (("allgather", 8), ("ring", 2)):
        c = _row(8, cp_comm=cp_comm)
        kv_block = cp_ring.sdpa_kv_bytes(MODEL, c, TORCH, cp_kv_bytes(MODEL, c))
        q = 32768 * MODEL.q_dim
        assert cp_buffer_bytes(MODEL, c, TORCH) == pytest.approx(
            (blocks + 1) * kv_block + 4 * q + 3 * cp_ring.dkv_bytes(MODEL, c, TORCH), rel=1e-12)
        assert cp_buffer_bytes(MODEL, c, TORCH) > cp_buffer_bytes(MODEL, c, KERNEL) > 0
    assert cp_buffer_bytes(MODEL, _row(8, cp_comm="ring"), TORCH) == cp_buffer_bytes(MODEL, _row(4, cp_comm="ring"),
                                                                                     TORCH)
    assert cp_buffer_bytes(MODEL, _row(1), TORCH) == 0.0


@pytest.mark.parametrize("ex", [TORCH, AUTOCONF], ids=["torchtitan", "autoconf"])
def test_search_bounds_stay_below_the_estimate_with_torchs_ring(ex):
    """The search's time and memory bounds read the same ring terms as the estimate (the execution passed to
    both), for torchtitan's ring and the executor's (each exchange the framework runs: torchtitan all-gathers)."""
    cache = BoundCache(MODEL, GT, ex)
    for cp in (2, 4, 8):
        for cp_comm in ex.cp_comms:
            c = _row(cp, cp_comm=cp_comm)
            p = estimate(MODEL, GT, c, execution=ex, detail=False).prediction
            bound = cache.bounds(c)
            assert bound.time_s <= p["iteration_time_s"] * (1 + 1e-9)
            assert bound.memory_bytes <= p["peak_memory_bytes"] * (1 + 1e-9)


@pytest.mark.parametrize("cp_comm", ["allgather", "ring"])
@pytest.mark.parametrize("cp", [2, 8])
def test_the_autoconf_preset_counts_torchs_ring_at_the_grouped_width(cp, cp_comm):
    """autoconf's executor hands CP attention on CUDA to torch's ring with the grouped K/V where the flash kernel
    takes them (execute/context_parallel.py `torch_ring_kv`): the preset's merges, dK/dV transfers, buffer and
    exposed exchange are the ring's at the grouped width (torchtitan 0.3.0's enable_gqa), a quarter of the dK/dV
    repeated to Llama 3.1 8B's query heads would be, and its step is slower than the "kernel" reading's, which
    counted none of them."""
    c = _row(cp, cp_comm=cp_comm)
    repeated = TORCH.replace(cp_repeat_kv=True)
    assert cp_ring.torch_ring(MODEL, c, AUTOCONF) and cp_ring.torch_ring(MODEL, c, None)
    assert cp_ring.merge_bytes(MODEL, c, AUTOCONF) == cp_ring.merge_bytes(MODEL, c, TORCH)
    assert 4 * cp_ring.dkv_bytes(MODEL, c, AUTOCONF) == cp_ring.dkv_bytes(MODEL, c, repeated) > 0
    assert cp_buffer_bytes(MODEL, c, AUTOCONF) == cp_buffer_bytes(MODEL, c, TORCH) < cp_buffer_bytes(MODEL, c,
                                                                                                    repeated)
    core = model_pieces(MODEL, GT, c, execution=AUTOCONF).attention_core
    group = np.arange(cp)
    assert cp_attention_comm(MODEL, GT, c, group, core, AUTOCONF) == cp_attention_comm(MODEL, GT, c, group, core,
                                                                                       TORCH)
    ring, plain = (estimate(MODEL, GT, c, execution=ex, detail=False).prediction
                   for ex in (AUTOCONF, AUTOCONF.replace(cp_attention="kernel")))
    assert ring["iteration_time_s"] > plain["iteration_time_s"]


def test_the_estimate_counts_torchs_ring_exactly_where_the_executor_hands_it_attention():
    """The executor runs torch's ring on CUDA with SDPA ("flash"), no attention dropout, no sliding window and not
    under the per-op selective policy (whose blocks run autoconf's own op); elsewhere, and always on CPU, its own
    attention. The autoconf preset counts the ring's merges and dK/dV transfers in exactly those configs: one rule
    (`frameworks.executor_torch_cp`) read by both."""
    import autoconf.execute.context_parallel as cpx
    seen = set()
    for attention in ("flash", "standard"):
        for dropout in (0.0, 0.1):
            for window in (None, 64):
                model = dataclasses.replace(MODEL, dropout=dropout, sliding_window=window)
                for recompute, policy in (("none", None), ("full", None), ("selective", "attention_core"),
                                          ("selective", "alternate_matmuls")):
                    c = _row(4, attention=attention, recompute=recompute, selective_recompute=policy)
                    hands = cpx.uses_torch_attention(c, "cuda", model)
                    assert not cpx.uses_torch_attention(c, "cpu", model)
                    assert (cp_ring.merge_bytes(model, c, AUTOCONF)[0] > 0) == hands
                    assert (cp_ring.dkv_bytes(model, c, AUTOCONF) > 0) == hands
                    seen.add((attention, dropout, window, recompute, policy, hands))
    assert ("flash", 0.0, None, "none", None, True) in seen
    assert ("flash", 0.0, None, "selective", "attention_core", True) in seen
    assert sum(hands for *_, hands in seen) == 3  # none, full and attention_core, with flash, no dropout nor window
    # The per-op policy over no layer (recompute_layers all 0) is the plain step: torch's ring, as without recompute
    # (it switched the attention while its label said nothing was recomputed).
    none = _row(4, attention="flash", recompute="none")
    zero = _row(4, attention="flash", recompute="selective", selective_recompute="alternate_matmuls",
                recompute_layers=(0,))
    assert cpx.uses_torch_attention(zero, "cuda", MODEL) and cp_ring.dkv_bytes(MODEL, zero, AUTOCONF) > 0
    assert (estimate(MODEL, GT, zero, execution=AUTOCONF, detail=False).prediction["iteration_time_s"]
            == pytest.approx(estimate(MODEL, GT, none, execution=AUTOCONF, detail=False)
                             .prediction["iteration_time_s"], rel=1e-9))


def test_under_latent_attention_dq_is_at_the_query_width_and_the_merges_at_the_value_width():
    """DeepSeek-V3's queries are 192 wide per head (128 + 64 rotary), its values 128: moving 32 per head from the
    query's non-rotary part to the value keeps K and V as wide together, shrinks the fp32 dQ the ring's backward
    holds by exactly that width, and grows the forward's output merges."""
    from autoconf.cost.cp_ring import buffer_bytes, merge_bytes
    from autoconf.spec.frameworks import execution

    base = PRESETS["deepseek-v3"]
    moved = dataclasses.replace(base, mla=dataclasses.replace(base.mla, qk_nope_head_dim=96, v_head_dim=160))
    assert moved.attention_kv_dim == base.attention_kv_dim
    assert (base.attention_q_dim, base.attention_out_dim) == (128 * 192, 128 * 128)
    c = ParallelConfig(tp=1, pp=1, dp=1, cp=4, cp_comm="ring", micro_batch_size=1, global_batch_size=1,
                       seq_len=32768, dtype="bf16")
    ex = execution("torchtitan")
    assert buffer_bytes(base, c, ex) - buffer_bytes(moved, c, ex) == 4 * c.local_seq_len * 128 * 32
    (forward, backward), (forward_moved, backward_moved) = merge_bytes(base, c, ex), merge_bytes(moved, c, ex)
    assert forward_moved > forward and backward_moved < backward


def test_a_per_op_candidate_bounded_before_its_counts_is_bounded_below_every_count():
    """A review found the search's first plan for llama3.1-8b at 131,072 tokens on 8 H100 6.7 s slower than a layout
    that fits (`tp1 cp8 ring ... rc-selective/op[4] rs-mb off-opt`, 414.8 s): the search bounds a per-stage candidate
    by counts of 0 before it fits them, and counts of 0 run torch's ring (the plain step) while any count above 0
    runs the executor's own CP attention, which is faster there; the bound was the ring's. Counts of 0 are now
    bounded by the lesser of the two attentions: below the estimate of every count, and the search finds the
    layout."""
    from autoconf.solve.search import search

    model, cluster = PRESETS["llama3.1-8b"], load_cluster("dgx-h100-80g")
    base = ParallelConfig(tp=1, pp=1, dp=1, cp=8, cp_comm="ring", micro_batch_size=1, global_batch_size=64,
                          seq_len=131072, zero_stage=3, recompute="selective", selective_recompute="alternate_matmuls",
                          grad_reduce="microbatch", offload_optimizer=True, dtype="bf16")
    cache = BoundCache(model, cluster, AUTOCONF)
    relaxed = cache.time_bound(dataclasses.replace(base, recompute_layers=(0,)))
    for count in (0, 1, 4, 16, 32):
        counted = dataclasses.replace(base, recompute_layers=(count,))
        assert relaxed <= estimate(model, cluster, counted, execution=AUTOCONF).prediction["iteration_time_s"]
    best = search(model, cluster, 64, 131072, "bf16", top_k=1, execution=AUTOCONF).plans[0]
    layout = estimate(model, cluster, dataclasses.replace(base, recompute_layers=(4,)), execution=AUTOCONF)
    assert layout.prediction["fits"]
    assert best.prediction["iteration_time_s"] <= layout.prediction["iteration_time_s"] * (1 + 1e-9)


def test_the_search_weighs_the_switch_to_the_executors_attention_that_one_recomputed_layer_makes():
    """A search audit: under context parallelism the executor's per-op policy runs torch's ring at counts of 0 and
    its own CP attention at any count above 0, so the step is not monotone in the counts (count 1 faster than 0),
    and keeping only the fewest counts that fit (all 0, the layout without recompute) lost the faster switch: one
    layer recomputed is now weighed, and the search's #1 is at least as fast as it."""
    from autoconf.solve.recompute import fewest_recomputed
    from autoconf.solve.search import search
    from autoconf.spec.plan import uniform_partition

    cluster = load_cluster("dgx-h100-80g")
    c = ParallelConfig(tp=1, pp=1, dp=2, cp=4, micro_batch_size=1, global_batch_size=8, seq_len=32768, zero_stage=2,
                       recompute="selective", selective_recompute="alternate_matmuls", grad_reduce="microbatch",
                       dtype="bf16")
    times = {k: estimate(MODEL, cluster, dataclasses.replace(c, recompute_layers=(k,)), execution=AUTOCONF)
             .prediction for k in (0, 1)}
    assert times[0]["fits"] and times[1]["fits"]
    assert times[1]["iteration_time_s"] < times[0]["iteration_time_s"]  # (the switch pays for the recompute)
    assert fewest_recomputed(MODEL, cluster, c, uniform_partition(MODEL.num_layers, 1), AUTOCONF).recompute_layers \
        == (1,)
    best = search(MODEL, cluster, 8, 32768, "bf16", fixed={"micro_batch_size": 1}, execution=AUTOCONF,
                  refine=False).plans[0]
    assert best.prediction["iteration_time_s"] <= times[1]["iteration_time_s"] * (1 + 1e-9)
    # (a third audit: the plan's recompute row read as a memory choice) it says what the switch bought against the
    # same layout recomputing no layer, which runs torch's ring
    from autoconf.report.tables import bought_rows

    assert best.config == dataclasses.replace(c, recompute_layers=(1,))
    bought = best.prediction["recompute_per_stage"]
    assert bought["torch_ring_iteration_time_s"] == pytest.approx(times[0]["iteration_time_s"], rel=1e-9)
    assert bought["torch_ring_peak_memory_bytes"] == pytest.approx(times[0]["peak_memory_bytes"], rel=1e-9)
    (row,) = [value for label, value in bought_rows(best).items() if label.startswith("recompute")]
    assert "no layer:" in row and "torch's ring" in row


def test_the_one_recomputed_layer_goes_where_it_costs_least():
    """A second search audit: the one layer that switches the executor's attention off torch's ring had been put
    in the last stage, while on zb-h1 (pp 2, cp 4) the first rank's stage gives a step 2.3% shorter; the stage is
    now chosen by the estimate, and no other stage is faster."""
    from autoconf.solve.recompute import fewest_recomputed
    from autoconf.spec.plan import uniform_partition

    cluster = load_cluster("dgx-h100-80g")
    c = ParallelConfig(tp=1, pp=2, dp=1, cp=4, micro_batch_size=1, global_batch_size=8, seq_len=32768, zero_stage=2,
                       schedule="zb-h1", recompute="selective", selective_recompute="alternate_matmuls",
                       dtype="bf16")
    partition = uniform_partition(MODEL.num_layers, 2)
    chosen = fewest_recomputed(MODEL, cluster, c, partition, AUTOCONF)
    assert sum(chosen.recompute_layers) == 1

    def step(counts):
        return estimate(MODEL, cluster, dataclasses.replace(c, recompute_layers=counts), partition=partition,
                        execution=AUTOCONF).prediction["iteration_time_s"]

    assert step(chosen.recompute_layers) <= min(step((1, 0)), step((0, 1)))
    assert step((1, 0)) < step((0, 1))
