"""Sequence-level pipelining (seq1f1b, Sun et al. arXiv 2406.03488): its order, simulation, cost, memory, the
executor-support rule, the search (when pinned) and the exporters. The executor's pp2 runs against one process are
layouts of tests/test_execute.py's two-rank job."""

import dataclasses
import json

import pytest

from autoconf.cost.compute import causal_chunk_share
from autoconf.cost.estimate import estimate, p2p_bytes, seq_chunk_costs
from autoconf.cost.simulate import StageCosts, simulate
from autoconf.errors import UserError
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import Execution
from autoconf.spec.plan import ParallelConfig, Plan
from autoconf.spec.presets import PRESETS
from autoconf.spec.schedules import build_schedule, schedule_spec
from autoconf.spec.support import unsupported_reason

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


def test_the_executor_runs_one_layout_and_estimate_marks_the_others():
    """The support rule lets the executor run seq1f1b on the layout its test checks (pp > 1, tp 1, dp 1) and names
    what it refuses in one line; `estimate` predicts a refused layout and marks it not launchable with the reason
    (the pp2 runs themselves: tests/test_execute.py, llama-pp2-seq1f1b-k2 and gpt-pp2-seq1f1b-k4-mb2)."""
    runs = dataclasses.replace(_config(), tp=1, sequence_parallel=False, pp=16)
    assert unsupported_reason(runs, LLAMA) is None
    assert "launchable" not in estimate(LLAMA, H100, runs).prediction
    for changes, named in ((dict(tp=2, sequence_parallel=True, pp=8), "tp 2"), (dict(dp=2, pp=8), "dp 2"),
                           (dict(recompute="full"), "recompute full"), (dict(pp=1, dp=16), "pp 1")):
        reason = unsupported_reason(dataclasses.replace(runs, **changes), LLAMA)
        assert reason and named in reason and "1f1b" in reason and "\n" not in reason
    prediction = estimate(LLAMA, H100, _config()).prediction  # tp 2
    assert prediction["launchable"] is False
    assert prediction["not_launchable_reason"] == unsupported_reason(_config(), LLAMA)


def test_the_search_weighs_it_when_pinned_only():
    """The default space holds no seq1f1b layout (its statistics unchanged); pinned, every candidate is seq1f1b
    with a chunk count of SEQ_CHUNKS that divides the sequence, and the best plan is one the executor runs."""
    from autoconf.solve.search import search
    from autoconf.solve.space import SEQ_CHUNKS, candidates

    model = PRESETS["tiny-llama"]
    assert all(c.schedule != "seq1f1b" for c in candidates(model, 8, 8, 8, 96, "bf16"))
    pinned = list(candidates(model, 8, 8, 8, 96, "bf16", fixed={"schedule": "seq1f1b"}))
    assert pinned and {c.seq_chunks for c in pinned} == {k for k in SEQ_CHUNKS if 96 % k == 0}
    best = search(model, load_cluster("dgx-h100-80g", nodes=1), 8, 96, "bf16", fixed={"schedule": "seq1f1b"},
                  top_k=1, refine=False).plans[0]
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
    units = to_units(batch, b, k)
    assert units.shape == (m * k * b, s // k)
    for i in range(m):
        for j in range(k):
            rows = units[(i * k + j) * b:(i * k + j + 1) * b]
            assert torch.equal(rows, batch[i * b:(i + 1) * b, j * (s // k):(j + 1) * (s // k)])


def test_exporters_say_megatron_and_torchtitan_cannot_run_it():
    """Megatron's flags carry the spec's note; torchtitan's config notes it and names 1F1B, torch's closest class."""
    from autoconf.report.exporters import megatron_flags
    from autoconf.report.torchtitan_export import torchtitan_config

    plan = estimate(LLAMA, H100, _config())
    notes = megatron_flags(plan)[1]
    assert schedule_spec("seq1f1b").megatron_note in notes
    text = torchtitan_config(plan, "test")
    assert schedule_spec("seq1f1b").torchtitan_note in text
    assert 'pipeline_parallel_schedule = "1F1B"' in text


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
