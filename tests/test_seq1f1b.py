"""Sequence-level pipelining (seq1f1b, Sun et al. arXiv 2406.03488): its order, simulation, cost, memory, the
executor-support rule, the search (when pinned) and the exporters. The executor's pp2 runs against one process are
layouts of tests/test_execute.py's two-rank job; the uneven split's, of this module's (the same shared job)."""

import dataclasses
import functools
import json

import pytest

import executor_jobs
from autoconf.cost.compute import (causal_chunk_share, causal_span_share, equal_work_bounds, model_pieces,
                                   seq_chunk_bounds)
from autoconf.cost.estimate import estimate, p2p_bytes, seq_chunk_costs
from autoconf.cost.simulate import StageCosts, simulate
from autoconf.errors import UserError
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import Execution
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig, Plan
from autoconf.spec.presets import PRESETS
from autoconf.spec.schedules import build_schedule, schedule_spec
from autoconf.spec.support import unsupported_reason
from plan_helpers import even_plan

H100 = load_cluster("dgx-h100-80g", nodes=2)
LLAMA = PRESETS["llama3.1-8b"]
GRID = [(p, m, k) for p in (2, 4, 8) for m in (1, 2, 3, 8) for k in (1, 2, 3, 4)]


def _config(schedule="seq1f1b", k=4, pp=8, seq=32768, batch=16, **kw):
    return ParallelConfig(tp=2, pp=pp, dp=1, micro_batch_size=1, global_batch_size=batch, seq_len=seq,
                          schedule=schedule, seq_chunks=k, sequence_parallel=True, **kw)


@pytest.mark.parametrize("p,m", [(2, 2), (4, 4), (4, 9), (8, 16)])
def test_one_chunk_is_the_1f1b_order(p, m):
    """With k = 1 the sequence-level order is torch's 1F1B on every rank."""
    assert build_schedule("seq1f1b", p, m, 1, 1).compiled == build_schedule("1f1b", p, m).compiled


@pytest.mark.parametrize("p,m,k", GRID)
def test_chunks_go_forward_in_causal_order_and_backward_last_chunk_first(p, m, k):
    """Every unit (micro-batch i, chunk j) runs one F then one B on its rank; on every rank a micro-batch's chunks go
    forward in order 0..k-1 and backward k-1..0 (chunk j's backward makes the earlier chunks' K/V gradients), and
    rank r runs (p - r - 1) + (k - 1) + 1 forwards before its first backward (the authors' warm-up), or all of them."""
    sch = build_schedule("seq1f1b", p, m, 1, k)
    assert sch.num_microbatches == m * k and sch.seq_chunks == k
    for r, acts in enumerate(sch.actions):
        forwards = [a.microbatch for a in acts if a.kind == "F"]
        backwards = [a.microbatch for a in acts if a.kind == "B"]
        assert forwards == list(range(m * k))
        assert backwards == [i * k + j for i in range(m) for j in reversed(range(k))]
        kinds = "".join(a.kind for a in acts)
        assert kinds.index("B") == min(m * k, p - r + k - 1)
        assert {a.stage for a in acts} == {r}


@pytest.mark.parametrize("p,m,k", GRID)
def test_equal_chunks_bubble_is_the_spec_formula_exactly(p, m, k):
    """With every chunk costing 1/k of a micro-batch (the paper's computation-wise split) the busiest rank idles
    exactly the spec's bubble of one chunk's passes, (p-1)(F+B+W)/k in micro-batch terms: 1F1B's bubble / k."""
    f, b, w = 1.0, 1.5, 0.5
    tl = simulate(build_schedule("seq1f1b", p, m, 1, k), StageCosts.uniform(p, f / k, b / k, w / k))
    idle = tl.makespan - max(tl.compute_time_per_rank)
    assert idle == pytest.approx(schedule_spec("seq1f1b").bubble(p, f / k, b / k, w / k), rel=1e-12)
    assert idle == pytest.approx((p - 1) * (f + b + w) / k, rel=1e-12)


@pytest.mark.parametrize("p,m,k", GRID)
def test_causal_even_split_bubble_is_at_least_the_spec_formula(p, m, k):
    """Under an even token split chunk j does (2j+1)/k of the mean chunk's attention: the simulated idle time of the
    busiest rank is at least the spec's bubble of the mean chunk's passes (what the search's bound feeds it), for
    attention shares from a tenth to nearly all of a chunk's work; the per-chunk costs average to the mean's."""
    for share in (0.1, 0.5, 0.99):
        mean = StageCosts.uniform(p, 1.0, 2.0, 1.0)
        core = type("Core", (), {"forward": share, "backward_input": 2 * share, "backward_weight": 0.0})()
        costs = seq_chunk_costs(mean, core, [1] * p, [0] * p, k)
        for s in range(p):
            assert sum(costs.forward[s * k:(s + 1) * k]) == pytest.approx(k * 1.0)
        tl = simulate(build_schedule("seq1f1b", p, m, 1, k), costs)
        idle = tl.makespan - max(tl.compute_time_per_rank)
        assert idle >= schedule_spec("seq1f1b").bubble(p, 1.0, 2.0, 1.0) - 1e-12


def test_causal_chunk_shares_average_to_one_and_grow_with_the_chunk():
    """Chunk j of k attends to j earlier chunks in full and its own causally: (2j+1)/k of the mean chunk."""
    for k in (1, 2, 4, 8):
        shares = [causal_chunk_share(j, k) for j in range(k)]
        assert sum(shares) == pytest.approx(k) and shares == sorted(shares)
    assert causal_chunk_share(0, 4) == 0.25 and causal_chunk_share(3, 4) == 1.75


def test_first_rank_holds_pp_plus_k_minus_1_chunks():
    """In-flight units of rank r: p - r + k - 1 chunks (1F1B: p - r micro-batches)."""
    for p, k in ((4, 2), (8, 4), (16, 4)):
        tl = simulate(build_schedule("seq1f1b", p, 2 * p, 1, k), StageCosts.uniform(p, 1.0, 2.0, 0.0))
        assert tl.peak_inflight_rank == [p - r + k - 1 for r in range(p)]


@pytest.mark.parametrize("pp,k", [(8, 2), (8, 4), (16, 4)])
def test_first_stage_activations_drop_by_about_k_against_1f1b(pp, k):
    """The first stage keeps p + k - 1 chunks of seq/k tokens against 1F1B's p sequences: its activations are
    1F1B's x (p + k - 1) / (p k), plus the earlier chunks' K/V each chunk in flight keeps per layer; for k small
    against p that is about 1/k."""
    from autoconf.cost.memory import seq_chunk_kv_bytes

    cluster = load_cluster("dgx-h100-80g", nodes=2 * pp // 8)
    seq, one = (estimate(LLAMA, cluster, _config(schedule=s, k=n, pp=pp, batch=2 * pp)).prediction[
        "memory_per_stage"][0] for s, n in (("seq1f1b", k), ("1f1b", 1)))
    layers = LLAMA.num_layers // pp
    cache = (pp + k - 1) * layers * seq_chunk_kv_bytes(LLAMA, _config(k=k, pp=pp))[0]
    assert seq["activations"] == pytest.approx(one["activations"] * (pp + k - 1) / (pp * k) + cache, rel=1e-9)
    assert seq["activations"] < one["activations"] / (0.6 * k)


def test_one_chunk_predicts_what_1f1b_predicts():
    """seq1f1b with k = 1 is 1F1B: the same step time and memory."""
    seq, one = (estimate(LLAMA, H100, _config(schedule=s, k=1)).prediction for s in ("seq1f1b", "1f1b"))
    assert seq["iteration_time_s"] == one["iteration_time_s"]
    assert seq["memory_per_stage"] == one["memory_per_stage"]


def test_chunks_shrink_the_bubble_and_send_k_times_smaller_messages():
    """More chunks: a smaller bubble term and a faster step here (pp 8, 32k tokens), each P2P message 1/k of a
    micro-batch's activation."""
    bubbles = [estimate(LLAMA, H100, _config(k=k)).prediction["time_breakdown"]["bubble"] for k in (1, 2, 4)]
    assert bubbles[0] > bubbles[1] > bubbles[2]
    assert p2p_bytes(LLAMA, _config(k=4), Execution()) == pytest.approx(
        p2p_bytes(LLAMA, _config(k=1), Execution()) / 4)


def test_the_executor_runs_the_tested_layouts_and_estimate_marks_the_others():
    """The support rule lets the executor run seq1f1b on the layouts its tests check (pp > 1 with tp, SP, dp, ZeRO,
    recompute and offload: tests/test_execute.py's seq1f1b layouts) and
    names what it refuses in one line; `estimate` predicts a refused layout and marks it not launchable with the
    reason."""
    runs = _config()  # tp 2 with SP, pp 8
    for changes in ({}, dict(tp=1, sequence_parallel=False, pp=16), dict(dp=2, pp=4, zero_stage=3),
                    dict(dp=2, pp=4, zero_stage=1), dict(recompute="full"),
                    dict(recompute="selective", selective_recompute="alternate_matmuls"),
                    dict(offload_activations=True)):
        config = dataclasses.replace(runs, **changes)
        assert unsupported_reason(config, LLAMA) is None, changes
        assert "launchable" not in estimate(LLAMA, H100, config).prediction
    for changes, named in ((dict(cp=2, pp=4), "cp 2"), (dict(pp=1, dp=16), "pp 1")):
        reason = unsupported_reason(dataclasses.replace(runs, **changes), LLAMA)
        assert reason and named in reason and "1f1b" in reason and "\n" not in reason
    assert "mixture-of-experts" in unsupported_reason(runs, PRESETS["mixtral-8x7b"])
    refused = dataclasses.replace(runs, pp=1, dp=8)
    prediction = estimate(LLAMA, H100, refused).prediction
    assert prediction["launchable"] is False
    assert prediction["not_launchable_reason"] == unsupported_reason(refused, LLAMA)


@functools.lru_cache(maxsize=1)
def _pinned_space() -> tuple[ParallelConfig, ...]:
    """The tiny Llama's candidates on 8 ranks, batch 8 x 96 tokens, with --fix schedule=seq1f1b (both splits)."""
    from autoconf.solve.space import candidates

    return tuple(candidates(PRESETS["tiny-llama"], 8, 8, 8, 96, "bf16", fixed={"schedule": "seq1f1b"}))


def test_the_search_weighs_it_when_pinned_only():
    """The default space holds no seq1f1b layout (its statistics unchanged); pinned, every candidate is seq1f1b
    with a chunk count of SEQ_CHUNKS that divides the sequence, and the best plan is one the executor runs. The
    search runs with the split pinned to one, on half the candidates (the pinned space, shared with
    test_the_search_weighs_both_splits_..., holds both)."""
    from autoconf.solve.search import search
    from autoconf.solve.space import SEQ_CHUNKS, candidates

    model = PRESETS["tiny-llama"]
    assert all(c.schedule != "seq1f1b" for c in candidates(model, 8, 8, 8, 96, "bf16"))
    fixed = {"schedule": "seq1f1b", "seq_split": "even"}
    pinned = _pinned_space()
    assert pinned and all(c.schedule == "seq1f1b" for c in pinned)
    assert {c.seq_chunks for c in pinned} == {k for k in SEQ_CHUNKS if 96 % k == 0}
    best = search(model, load_cluster("dgx-h100-80g", nodes=1), 8, 96, "bf16", fixed=fixed, top_k=1,
                  refine=False).plans[0]
    assert best.config.schedule == "seq1f1b" and best.config.seq_chunks > 1
    assert best.prediction["launchable"] is True
    with pytest.raises(UserError, match="--fix seq_chunks=4 needs a schedule that splits sequences: add --fix "
                                        "schedule=seq1f1b"):
        list(candidates(model, 8, 8, 8, 96, "bf16", fixed={"seq_chunks": 4}))


def test_to_units_lays_out_each_micro_batchs_chunks_in_causal_order():
    """Rows (i * k + j) * b .. + b of the unit batch are micro-batch i's chunk j, whose tokens are s/k apart."""
    import torch

    from autoconf.execute.seq_chunks import to_units

    m, b, k, s = 3, 2, 4, 8
    batch = torch.arange(m * b * s).reshape(m * b, s)
    units = to_units(batch, b, [0, 2, 4, 6, 8])
    assert units.shape == (m * k * b, s // k)
    for i in range(m):
        for j in range(k):
            rows = units[(i * k + j) * b:(i * k + j + 1) * b]
            assert torch.equal(rows, batch[i * b:(i + 1) * b, j * (s // k):(j + 1) * (s // k)])
    # An uneven split: each chunk's tokens, then the pad value up to the longest chunk's length.
    bounds = [0, 4, 7, 8]
    units = to_units(batch, b, bounds, pad=-100)
    assert units.shape == (m * 3 * b, 4)
    for i in range(m):
        for j, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            rows = units[(i * 3 + j) * b:(i * 3 + j + 1) * b]
            assert torch.equal(rows[:, :hi - lo], batch[i * b:(i + 1) * b, lo:hi])
            assert (rows[:, hi - lo:] == -100).all()
    # The MTP modules' tokens ahead, [rows, depth + 1, s]: every depth split along its places like the labels.
    future = torch.stack([batch, batch + 1000], dim=1)
    units = to_units(future, b, bounds, pad=-100)
    assert units.shape == (m * 3 * b, 2, 4)
    for depth in range(2):
        assert torch.equal(units[:, depth], to_units(future[:, depth], b, bounds, pad=-100))


def test_exporters_say_megatron_and_torchtitan_cannot_run_it():
    """Megatron's flags carry the spec's note; torchtitan's config notes it and names 1F1B, torch's closest class.
    Every view that names the chunks names the split (the plan table's layout label, the exports' headers), and the
    Megatron notes give the authors' fork's flags for it, said to be the fork's: --pipe-sp-strategy uniform_comp for
    the work split, average for the even one; no such flag among the Megatron-LM flags."""
    from autoconf.report import exporters
    from autoconf.report.exporters import megatron_flags
    from autoconf.report.tables import layout_label
    from autoconf.report.torchtitan_export import torchtitan_config

    even = estimate(LLAMA, H100, _config())
    flags, notes = megatron_flags(even)
    assert schedule_spec("seq1f1b").megatron_note in notes
    text = torchtitan_config(even, "test")
    assert schedule_spec("seq1f1b").torchtitan_note in text
    assert 'pipeline_parallel_schedule = "1F1B"' in text
    for split, strategy in (("even", "average"), ("work", "uniform_comp")):
        plan = even if split == "even" else estimate(LLAMA, H100, _config(seq_split=split, batch=8))
        assert f"seq1f1b k4 {split}" in layout_label(plan)
        megatron = exporters.megatron_args(plan)
        assert f"seq1f1b k4 {split}" in megatron and f"seq1f1b k4 {split}" in exporters.torchtitan_config(plan)
        flags, notes = megatron_flags(plan)
        fork = [n for n in notes if "--pipe-sp-splits 4" in n]
        assert len(fork) == 1 and f"--pipe-sp-strategy {strategy}" in fork[0]
        assert "not upstream Megatron-LM" in fork[0] and f"--pipe-sp-strategy {strategy}" in megatron
        assert not any(str(flag).startswith("--pipe-sp") for flag, _ in flags)
    assert "seq1f1b" not in layout_label(dataclasses.replace(even, config=_config("1f1b", 1)))


def test_a_plan_without_seq_chunks_loads_and_one_with_them_round_trips():
    """seq_chunks is written only when > 1, so old plans load with 1; a seq1f1b plan reads back equal."""
    old = estimate(LLAMA, H100, _config("1f1b", 1)).to_dict()
    assert "seq_chunks" not in old["config"]
    assert Plan.from_dict(json.loads(json.dumps(old))).config.seq_chunks == 1
    new = estimate(LLAMA, H100, _config()).to_dict()
    assert new["config"]["seq_chunks"] == 4
    assert Plan.from_dict(json.loads(json.dumps(new))).config == _config()


@pytest.mark.parametrize("changes,needle", [
    (dict(schedule="1f1b"), "needs a schedule that splits sequences (seq1f1b)"),
    (dict(seq_len=32770), "does not divide seq_len"),
    (dict(attention="standard"), "needs attention flash"),
    (dict(seq_chunks=0), "seq_chunks must be a positive integer"),
])
def test_bad_sequence_chunks_are_named_in_one_line(changes, needle):
    """A chunk count that cannot split the sequence, or chunks under a schedule without them, is one clear line."""
    c = dataclasses.replace(_config(), **changes)
    with pytest.raises(UserError) as err:
        c.check(LLAMA, H100.world_size)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_search_bounds_never_exceed_the_estimate_of_a_seq1f1b_layout():
    """The search's time and memory bounds of pinned seq1f1b layouts (chunk counts 2, 4, 8; the cache shared with
    1f1b layouts of the same degrees) stay at or below the estimate."""
    from autoconf.solve.space import candidates
    from test_search import assert_bounds_below_estimate

    configs = [c for schedule in ("1f1b", "seq1f1b")
               for c in candidates(LLAMA, 16, 8, 16, 32768, "bf16", fixed={"schedule": schedule, "micro_batch_size": 1,
                                                                             "zero_stage": 0, "recompute": "none"})
               if c.pp in (4, 16) and c.tp <= 2]
    checked = assert_bounds_below_estimate(LLAMA, H100, configs)
    assert sum(c.schedule == "seq1f1b" for c in checked) >= 6


# ---------------------------------------------------------------------------------------------------------------
# The equal-work split (Seq1F1B's computation-wise partition): config seq_split "work", compute.seq_chunk_bounds.


def _chunk_forwards(linear: float, core: float, bounds) -> list[float]:
    """One layer's forward per chunk as the estimate costs it (`seq_chunk_costs`): the mean chunk's linear part x
    tokens / (seq_len / k) plus its attention core x `causal_span_share`."""
    k, seq = len(bounds) - 1, bounds[-1]
    return [linear * (b - a) * k / seq + core * causal_span_share(a, b, seq, k) for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("model,seq,k", [("llama3.1-8b", 32768, 4), ("llama3.1-8b", 131072, 8),
                                         ("llama3.1-70b", 65536, 2), ("llama3.1-8b", 16384, 8)])
def test_equal_work_chunks_cost_the_same_within_the_rounding(model, seq, k):
    """The work split's chunks (earlier ones longer) cost the same forward within one rounding step of the last
    token's marginal cost on each of their two boundaries, on multiples of `seq_split_multiple`; the even split's
    chunks differ by at least five times more."""
    spec, c = PRESETS[model], _config(k=k, seq=seq, seq_split="work")
    pieces = model_pieces(spec, H100, c)
    linear, core = pieces.block_rest.forward, pieces.attention_core.forward
    bounds = seq_chunk_bounds(spec, H100, c)
    step = c.seq_split_multiple
    assert bounds[0] == 0 and bounds[-1] == seq and all(b % step == 0 for b in bounds)
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
    work = _chunk_forwards(linear, core, bounds)
    mean = sum(work) / k
    marginal = linear * k / seq + core * 2 * k / seq  # the last token's cost, the largest of any token
    assert max(abs(w - mean) for w in work) <= 2 * step * marginal
    even = _chunk_forwards(linear, core, seq_chunk_bounds(spec, H100, dataclasses.replace(c, seq_split="even")))
    # 33-2643x at 32k-128k; 8x at 16k tokens and K 8, where the rounding step (256 tokens under tp 2 + SP) is an
    # eighth of a 2,048-token chunk (dgx-h100-80g with FlashAttention-2's rate, attention 26% of a layer).
    assert max(even) - min(even) > 5 * (max(work) - min(work))


@pytest.mark.parametrize("p,m,k", [(p, m, k) for p in (2, 4, 8) for m in (1, 3, 8) for k in (2, 3, 4)])
def test_equal_work_bubble_is_the_spec_formula(p, m, k):
    """Stage costs per chunk of the equal-work split (`seq_chunk_costs` at `equal_work_bounds`, rounded to one token
    of 2^24) are equal, so the busiest rank idles the spec's bubble of the mean chunk, as under a uniform split;
    the even split of the same costs idles more."""
    seq, share = 1 << 24, 0.6
    mean = StageCosts.uniform(p, 1.0, 2.0, 1.0)
    core = type("Core", (), {"forward": share, "backward_input": 2 * share, "backward_weight": share})()
    bubble = schedule_spec("seq1f1b").bubble(p, 1.0, 2.0, 1.0)
    idles = []
    for bounds in (equal_work_bounds(1.0 - share, share, seq, k, 1), None):
        costs = seq_chunk_costs(mean, core, [1] * p, [0] * p, k, bounds)
        tl = simulate(build_schedule("seq1f1b", p, m, 1, k), costs)
        idles.append(tl.makespan - max(tl.compute_time_per_rank))
    assert idles[0] == pytest.approx(bubble, rel=1e-5)
    assert idles[1] > idles[0] * (1 + 1e-3)


def test_the_plan_stores_the_estimates_split_and_old_plans_predict_the_same():
    """`estimate` writes the boundaries its costs read (`Plan.sequence_split`), which the executor reads back; a
    plan JSON without seq_split (the even split) loads and predicts exactly as before; the work split here (pp 8,
    k 4, 32k tokens) shrinks the bubble and the step."""
    even, work = (estimate(LLAMA, H100, _config(seq_split=x)) for x in ("even", "work"))
    assert work.sequence_split == list(seq_chunk_bounds(LLAMA, H100, work.config)) != even.sequence_split
    old = even.to_dict()
    assert "seq_split" not in old["config"]
    del old["sequence_split"]
    loaded = Plan.from_dict(json.loads(json.dumps(old)))
    assert loaded.config == even.config and loaded.chunk_bounds == even.sequence_split
    assert estimate(LLAMA, H100, loaded.config).prediction["iteration_time_s"] == even.prediction["iteration_time_s"]
    back = Plan.from_dict(json.loads(json.dumps(work.to_dict())))
    assert back.config.seq_split == "work" and back.chunk_bounds == work.sequence_split
    assert work.prediction["time_breakdown"]["bubble"] < 0.7 * even.prediction["time_breakdown"]["bubble"]
    assert work.prediction["iteration_time_s"] < even.prediction["iteration_time_s"]


def test_uneven_chunks_memory_reads_the_longest_chunk_or_the_tokens_in_flight():
    """The executor pads every chunk to the longest (torch's runtime keeps one buffer shape per stage): its units
    and temporaries weigh longest / mean chunk. The authors' layout holds each chunk at its own length: the first
    rank's peak of tokens in flight, at least its warm-up's p + k - 1 chunks' and at most the longest's per unit."""
    from autoconf.cost.memory import seq_chunk_scales

    c = _config(seq_split="work")
    bounds = seq_chunk_bounds(LLAMA, H100, c)
    lengths = [b - a for a, b in zip(bounds, bounds[1:])]
    mean, longest = c.seq_len / c.seq_chunks, max(lengths) / (c.seq_len / c.seq_chunks)
    assert seq_chunk_scales(c, bounds, "torch", 0) == (longest, longest)
    act, temp = seq_chunk_scales(c, bounds, "megatron", 0)
    warmup = c.pp + c.seq_chunks - 1
    assert temp == longest
    assert sum(lengths[u % c.seq_chunks] for u in range(warmup)) / warmup / mean <= act <= longest
    assert seq_chunk_scales(_config(), seq_chunk_bounds(LLAMA, H100, _config()), "megatron", 0) == (1.0, 1.0)
    even, work = (estimate(LLAMA, H100, _config(seq_split=x)).prediction["memory_per_stage"][0] for x in ("even",
                                                                                                           "work"))
    assert work["activations"] > even["activations"]


def test_the_search_weighs_both_splits_and_a_bad_one_is_one_line():
    """Pinned to seq1f1b the space holds each chunked layout under both splits (`--fix seq_split` pins one);
    seq_split without a splitting schedule, or a stored split that is not one, is one clear line."""
    from autoconf.solve.space import candidates, parse_fix_value

    model = PRESETS["tiny-llama"]
    pinned = _pinned_space()
    assert {c.seq_split for c in pinned} == {"even", "work"}
    assert sum(c.seq_split == "work" for c in pinned) == sum(c.seq_split == "even" for c in pinned)
    assert {c.seq_split for c in candidates(model, 8, 8, 8, 96, "bf16",
                                           fixed={"schedule": "seq1f1b", "seq_split": "work"})} == {"work"}
    with pytest.raises(UserError, match="--fix seq_split=work needs a schedule that splits sequences"):
        list(candidates(model, 8, 8, 8, 96, "bf16", fixed={"seq_split": "work"}))
    with pytest.raises(UserError, match="choose even or work"):
        parse_fix_value("seq_split", "uneven")
    data = estimate(LLAMA, H100, _config(seq_split="work")).to_dict()
    data["sequence_split"] = [0, 100, 32768, 32768, 32768]
    with pytest.raises(UserError) as err:
        Plan.from_dict(data)
    assert "is not a work split of 32768 tokens" in str(err.value) and "\n" not in str(err.value)


# The executor on an uneven split (execute/seq_chunks.py pads each chunk to the longest): a pp2 run of the test GPT
# (learned positions, tied embedding) in chunks of 11, 9, 7 and 5 tokens, two micro-batches of two rows, in the
# session's two-rank job, against one process (tests/executor_jobs.py).
SMALL_GPT = ModelSpec(name="test-gpt", arch="gpt", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=4,
                      ffn_hidden_size=256, vocab_size=256, max_seq_len=64, tied_embeddings=True)


def _uneven_plan() -> Plan:
    plan = even_plan(SMALL_GPT, pp=2, schedule="seq1f1b", global_batch=4, micro_batch=2)
    plan.config = dataclasses.replace(plan.config, seq_chunks=4, seq_split="work")
    plan.sequence_split = [0, 11, 20, 27, 32]
    plan.validate()
    return plan


executor_jobs.register("seq1f1b", {"gpt": executor_jobs.Layout(1, even_plan(SMALL_GPT, global_batch=4)),
                                   "gpt-pp2-seq1f1b-k4-uneven": executor_jobs.Layout(2, _uneven_plan())})


@pytest.mark.slow
def test_an_uneven_split_trains_as_one_process(tmp_path_factory):
    """Every step's loss equals the single-process run's within 1e-6 relative (gradient norms within 1e-4), with
    chunks of 11, 9, 7 and 5 tokens padded to 11."""
    out = executor_jobs.results("seq1f1b", tmp_path_factory)
    reference = executor_jobs.assert_matches_reference(out, "gpt-pp2-seq1f1b-k4-uneven")
    for ref, rec in zip(reference, out["gpt-pp2-seq1f1b-k4-uneven"]["records"]):
        assert executor_jobs.close(rec["loss"], ref["loss"], rel=1e-6), (rec, ref)


def test_estimate_takes_the_split_on_the_command_line():
    """`estimate --seq-split work` writes the config's split and its boundaries; without chunks it is one line."""
    from click.testing import CliRunner

    from autoconf.cli import main

    args = ["estimate", "--model", "llama3.1-8b", "--cluster", "dgx-h100-80g", "--nodes", "2", "--tp", "2", "--pp", "8",
            "--dp", "1", "--micro-batch", "1", "--global-batch", "16", "--seq-len", "32768", "--sequence-parallel",
            "--seq-split", "work"]
    result = CliRunner().invoke(main, args + ["--schedule", "seq1f1b", "--seq-chunks", "4", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["config"]["seq_split"] == "work"
    assert plan["sequence_split"] == list(seq_chunk_bounds(LLAMA, H100, _config(seq_split="work")))
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0 and "--seq-split work splits sequences into chunks" in refused.output
    assert "Traceback" not in refused.output


def _executor_kv_tokens(bounds, recompute: str, policy: str) -> tuple[float, float]:
    """Tokens' K and V one executor layer holds for a micro-batch: (kept with all its chunks in flight beyond what
    the same layer keeps for the same chunks without sequence chunks (no earlier K/V): the storages of the tensors
    saved for the backward and of the earlier chunks' leaves, counted once each, head-dim tensors only, the CPU math
    kernel's score matrices not being what the estimate describes; the gradients in the earlier chunks' leaves once
    the last chunk's backward has run)."""
    import torch

    from autoconf.execute import seq_chunks
    from autoconf.execute.model import Block, OneBlock
    from autoconf.execute.parallelize import apply_recompute

    spec = _PROBE
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))

    def held(context: bool) -> tuple[int, int]:
        torch.manual_seed(0)
        block = Block(spec, 0, "flash")
        if recompute != "none":
            apply_recompute(OneBlock(block), recompute, policy=policy)
        chunks = seq_chunks.SequenceChunks(list(bounds), torch.device("cpu"))
        layer = chunks.layer()
        block.attention.context = layer if context else None
        params = {p.untyped_storage().data_ptr() for p in block.parameters()}
        storages = {}

        def pack(t):
            if t.dim() >= 3 and spec.head_dim in t.shape[-2:] and t.untyped_storage().data_ptr() not in params:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        outputs = []
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            for j in range(len(bounds) - 1):
                chunks.start(j if context else None)
                outputs.append(block(torch.randn(1, longest, spec.hidden_size, requires_grad=True)))
        leaves = [t for pairs in layer.kv.values() for pair in pairs for t in pair]
        storages.update({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in leaves})
        chunks.start(len(bounds) - 2 if context else None)
        outputs[-1].sum().backward()
        return sum(storages.values()), sum(t.grad.nbytes for t in leaves if t.grad is not None)

    (kept, grads), (plain, _) = held(True), held(False)
    token = 2 * spec.kv_dim * 4
    return (kept - plain) / token, grads / token
# Every query head its own K/V head: with grouped K/V the CPU math kernel (the one that takes the lower-right bias
# on CPU) keeps them repeated to the query width, which CUDA's fused kernels do not.
_PROBE = ModelSpec(name="probe", arch="llama", num_layers=1, hidden_size=64, num_heads=4, num_kv_heads=4,
                   ffn_hidden_size=128, vocab_size=64, max_seq_len=4096)


@pytest.mark.parametrize("bounds", [(0, 64, 128), (0, 32, 64, 96, 128), (0, 44, 80, 108, 128)])
@pytest.mark.parametrize("recompute,policy", [("none", "attention_core"), ("selective", "attention_core"),
                                              ("selective", "alternate_matmuls"), ("full", "attention_core")])
def test_the_executor_holds_the_earlier_chunks_kv_and_gradients_counted(bounds, recompute, policy):
    """Per layer and micro-batch, the executor keeps the earlier chunks' K/V `seq_chunk_kv_bytes` counts (k chunks in
    flight), and holds the K/V gradients it counts once the last chunk's backward has run, under each recompute mode
    and selective policy it runs, on even and uneven splits: counted on a one-layer block on CPU."""
    from autoconf.cost.memory import cp_kv_bytes, seq_chunk_kv_bytes

    k = len(bounds) - 1
    c = ParallelConfig(tp=1, pp=2, dp=1, micro_batch_size=1, global_batch_size=2, seq_len=bounds[-1],
                       schedule="seq1f1b", seq_chunks=k, recompute=recompute)
    per_chunk, grads = seq_chunk_kv_bytes(_PROBE, c, "torch", bounds, recompute != "none", policy)
    tokens = bounds[-1] / k / cp_kv_bytes(_PROBE, c)  # tokens of K and V per byte counted
    kept, held_grads = _executor_kv_tokens(bounds, recompute, policy)
    assert kept == pytest.approx(per_chunk * k * tokens, abs=1e-9)
    assert held_grads == pytest.approx(grads * tokens, abs=1e-9)
