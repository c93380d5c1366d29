"""DeepSeek's bidirectional DualPipe (`dualpipe` in the schedule registry): its order, bubble, memory and handling."""

import dataclasses

import pytest

from autoconf.cost.estimate import estimate
from autoconf.cost.memory import stage_params
from autoconf.cost.simulate import StageCosts, paired_seconds, simulate
from autoconf.report.exporters import megatron_flags
from autoconf.solve.search import search
from autoconf.solve.space import candidates
from autoconf.spec.cluster import load_cluster
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
from autoconf.spec.schedules import build_schedule, schedule_spec
from autoconf.spec.support import unsupported_reason


def _uniform(pp: int, forward: float, backward_input: float, weight: float, comm: float) -> StageCosts:
    """Per model stage: every copy of a stage costs the same (the simulation tiles them over both directions)."""
    return StageCosts([forward] * pp, [backward_input] * pp, [weight] * pp, [comm] * pp, [comm] * pp, 0.0)


@pytest.mark.parametrize("pp,m", [(2, 4), (4, 8), (4, 12), (8, 16), (8, 40), (16, 32)])
@pytest.mark.parametrize("comm", [0.0, 0.3, 1.0])
def test_simulated_bubble_is_table_2s_closed_form_at_equal_cells(pp, m, comm):
    """With every forward, input-backward and weight pass of a stage the same length (F = I = W, so B = 2W) and the
    F&B pairs overlapped to any F&B between F + I and F + B, the idlest rank waits exactly the report's Table 2
    bubble (PP/2 - 1)(F&B + B - 3W); pp 16 goes through the wave-at-a-time simulation."""
    f = i = w = 1.0
    timeline = simulate(build_schedule("dualpipe", pp, m), _uniform(pp, f, i, w, comm))
    pair = paired_seconds(f, comm, i + w, comm, 0.0)
    bubble = (pp / 2 - 1) * (pair + (i + w) - 3 * w)
    assert max(timeline.makespan - busy for busy in timeline.compute_time_per_rank) == pytest.approx(bubble)
    assert timeline.overlap_saved_per_rank  # the pairs ran as pairs


@pytest.mark.parametrize("pp,m", [(2, 4), (4, 8), (8, 16), (8, 24)])
def test_each_rank_runs_dualpipev_on_half_the_ranks(pp, m):
    """Rank for rank, DualPipe on pp ranks with m micro-batches runs DualPipeV's order on pp/2 ranks with m/2 (the
    reference implementation's steps), renamed: the same kinds in the same order, pairs at the same places, and
    with uniform stages and no P2P the same step."""
    dual, twin = build_schedule("dualpipe", pp, m), build_schedule("dualpipev", pp // 2, m // 2, 2)
    for r in range(pp):
        h = min(r, pp - 1 - r)
        assert [k for k, _, _ in dual.compiled[r]] == [k for k, _, _ in twin.compiled[h]]
        assert dual.paired[r] == twin.paired[h]
    costs = StageCosts.uniform(pp, 1.0, 1.5, 0.5)
    assert simulate(dual, costs).makespan == simulate(twin, costs).makespan


@pytest.mark.parametrize("pp", [2, 4, 8, 16])
def test_every_rank_keeps_pp_plus_1_stage_micro_batches(pp):
    """Table 2's activation memory: PP + 1 micro-batches of one stage in flight on every rank, counted from the order
    (forward done, input backward not yet)."""
    for m in (2 * pp, 4 * pp):
        assert build_schedule("dualpipe", pp, m).paired  # (the pairs are stated without asking for the overlap)
        timeline = simulate(build_schedule("dualpipe", pp, m), StageCosts.uniform(pp, 1.0, 1.0, 1.0))
        assert timeline.peak_inflight_rank == [pp + 1] * pp


def _memory(schedule: str, vpp: int) -> tuple[list[dict], dict]:
    """The estimate's memory per rank, and what a middle rank holds of the units in use only (the same for a chunk
    of two blocks and a stage of four: the reduction torch's stage defers to after the last backward)."""
    from autoconf.cost.memory import unsharded_buffer_bytes

    model = dataclasses.replace(PRESETS["llama3-8b"], num_layers=16)
    c = ParallelConfig(tp=1, pp=4, dp=2, vpp=vpp, micro_batch_size=1, global_batch_size=32, seq_len=2048,
                       schedule=schedule, zero_stage=0, dtype="bf16")
    cluster = load_cluster("dgx-h100-80g", nodes=1)
    in_use = dict(zip(("params", "grads"), unsharded_buffer_bytes(model, c, "torch", (0.0, 0.0), (0, 2),
                                                                  embedding=False)))
    return estimate(model, cluster, c).prediction["memory_per_stage"], in_use


def test_a_rank_holds_twice_dualpipevs_parameters_gradients_and_optimizer_states():
    """At the same pipeline ranks, a DualPipe rank holds two whole model stages (pp-way split) where a DualPipeV rank
    holds two chunks of a 2pp-way split: twice the weights, gradients and optimizer states on the ranks holding
    blocks only (beside the units in use, which one rank has one of at a time); both end ranks hold the embedding
    and the head besides twice the blocks."""
    (dual, in_use), (twin, _) = _memory("dualpipe", 1), _memory("dualpipev", 2)
    assert in_use["grads"] > 0
    for kind in ("params", "grads", "optimizer"):
        for r in (1, 2):
            held = in_use.get(kind, 0.0)
            assert dual[r][kind] - held == pytest.approx(2 * (twin[r][kind] - held))
        assert dual[0][kind] == pytest.approx(dual[3][kind])
        assert dual[0][kind] - dual[1][kind] == pytest.approx(twin[0][kind] - twin[1][kind])


def test_the_executor_refuses_it_and_megatron_cannot_express_it():
    """One line each: the support rule names dualpipev as what runs; Megatron's export notes the schedule."""
    c = ParallelConfig(tp=1, pp=4, dp=2, micro_batch_size=1, global_batch_size=16, seq_len=2048,
                       schedule="dualpipe", dtype="bf16")
    reason = unsupported_reason(c)
    assert reason == schedule_spec("dualpipe").executor_note and "dualpipev" in reason and "\n" not in reason
    plan = estimate(dataclasses.replace(PRESETS["llama3-8b"], num_layers=8), load_cluster("dgx-h100-80g", nodes=1),
                    c)
    assert plan.prediction["launchable"] is False and plan.prediction["not_launchable_reason"] == reason
    assert schedule_spec("dualpipe").megatron_note in megatron_flags(plan)[1]


def test_the_search_weighs_it_only_where_pinned_and_marks_it_not_launchable():
    """The default candidate space leaves dualpipe out (the executor does not run it); `--fix schedule=dualpipe`
    costs it, one partition entry per model stage, and marks the plan not launchable with the support rule's line."""
    model = PRESETS["tiny-llama"]
    cluster = load_cluster("dgx-h100-80g", nodes=1).resized(gpus_per_node=4)
    assert "dualpipe" not in {c.schedule for c in candidates(model, 4, 4, 16, 128, "bf16")}
    result = search(model, cluster, 16, 128, "bf16", fixed={"schedule": "dualpipe"}, top_k=1,
                    partition_time_s=0.2, placement_time_s=0.2)
    plan = result.plans[0]
    assert plan.config.schedule == "dualpipe" and len(plan.partition) == plan.config.pp
    assert plan.prediction["launchable"] is False
    assert plan.prediction["not_launchable_reason"] == schedule_spec("dualpipe").executor_note


@pytest.mark.parametrize("pp", [2, 4, 8, 16])
def test_mirror_pairs_hold_the_same_two_model_stages_and_cover_each_rank_once(pp):
    """Rank r and rank pp-1-r hold copies of the same two model stages (the gradients they sum)."""
    from autoconf.cost.estimate import mirror_pairs

    schedule = build_schedule("dualpipe", pp, 2 * pp)
    pairs = mirror_pairs(pp)
    assert sorted(r for pair in pairs for r in pair) == list(range(pp))
    for r, mirror in pairs:
        assert sorted(schedule.model_stages_of_rank(r)) == sorted(schedule.model_stages_of_rank(mirror)) == \
            sorted({r, pp - 1 - r})


@pytest.mark.parametrize("zero", [0, 1])
def test_the_step_adds_the_mirror_ranks_gradient_sum_under_dualpipe_only(zero, monkeypatch):
    """Under dualpipe the step grows by exactly the mirror pairs' gradient all-reduce (its bytes: both stages'
    gradients of a rank, sharded over DP under ZeRO); the term is zero for every one-direction schedule."""
    from autoconf.cost import estimate as estimate_module
    from autoconf.cost.memory import reduced_grad_bytes

    model = dataclasses.replace(PRESETS["llama3-8b"], num_layers=8)
    cluster = load_cluster("dgx-h100-80g", nodes=2)
    c = ParallelConfig(tp=1, pp=4, dp=4, micro_batch_size=1, global_batch_size=32, seq_len=2048,
                       schedule="dualpipe", zero_stage=zero, dtype="bf16")
    plan = estimate(model, cluster, c)
    kept = estimate_module.mirror_grad_sum
    seconds = []
    monkeypatch.setattr(estimate_module, "mirror_grad_sum", lambda *a: seconds.append(kept(*a)) or 0.0)
    without = estimate(model, cluster, c)
    assert seconds[0] > 0
    assert plan.prediction["iteration_time_s"] - without.prediction["iteration_time_s"] == pytest.approx(seconds[0])
    both = reduced_grad_bytes(model, c, plan.partition, (1, 2), "torch")
    whole = 4 * sum(stage_params(model, plan.partition, st) for st in (1, 2))
    assert both == pytest.approx(whole / (c.dp if zero else 1))
    seconds.clear()
    estimate(model, cluster, dataclasses.replace(c, schedule="1f1b"))
    assert seconds == [0.0]
