"""The cost model's CPU-rank terms: core sharing (cpu_share, cpu_share_alone), pass overhead in CPU seconds, the
step's own collectives, and TP layers measured in place."""

import dataclasses
import time

import pytest

from autoconf.cost.comm import collective_time
from autoconf.cost.compute import measured_tp_layer
from autoconf.cost.estimate import estimate, tp_collective
from autoconf.spec.plan import ParallelConfig
from profile_helpers import SEQ, TINY, TP_LAYER, measured_cpu_profile


def cfg(**kw):
    base = dict(tp=1, pp=1, dp=4, micro_batch_size=1, global_batch_size=16, seq_len=SEQ, dtype="fp32")
    base.update(kw)
    return ParallelConfig(**base)


def test_idle_pipeline_ranks_lend_their_core_only_without_a_quota():
    """A deep pipeline with few micro-batches leaves ranks idle; without a quota the busy ones get the idle ones'
    share (faster than at cpu_share), with cpu_share_alone == cpu_share (a quota) they do not."""
    c = cfg(pp=4, dp=1, schedule="gpipe", micro_batch_size=4)
    free = estimate(TINY, measured_cpu_profile(0.5), c).prediction["iteration_time_s"]
    quota = estimate(TINY, measured_cpu_profile(0.5, alone=0.5), c).prediction["iteration_time_s"]
    full = estimate(TINY, measured_cpu_profile(1.0), c).prediction["iteration_time_s"]
    assert full < free < quota


def test_pass_overhead_is_cpu_time_at_the_ranks_share():
    """Under a quota (the share is fixed) each of the 2*m passes costs pass_overhead_s / cpu_share (at tp 4: no
    gradient reduction beside the backward, whose buckets a longer backward would spread)."""
    c = cfg(tp=4, dp=1)
    base = estimate(TINY, measured_cpu_profile(0.5, alone=0.5, pass_overhead=0.0), c).prediction
    slow = estimate(TINY, measured_cpu_profile(0.5, alone=0.5, pass_overhead=1e-3), c).prediction
    m = c.num_microbatches
    assert slow["iteration_time_s"] - base["iteration_time_s"] == pytest.approx(2 * m * 1e-3 / 0.5)
    assert slow["time_breakdown"]["framework"] == pytest.approx(2 * m * 1e-3 / 0.5)


def test_every_step_pays_the_norm_and_loss_all_reduces_and_the_tied_embedding_sum():
    """Two small all-reduces over all ranks (gradient norm, loss); with pp > 1 and tied embeddings also the sum of
    the embedding's gradients between the first and last stage. The ranks wait for them with nothing to compute
    (after the flush), so none pays the loaded wait of a group (collective_sync_s) that collectives between
    computations pay."""
    cluster = measured_cpu_profile()
    everyone = list(range(4))
    flat = estimate(TINY, cluster, cfg()).prediction["time_breakdown"]["step_comm"]
    assert flat == pytest.approx(collective_time(cluster, "all_reduce", 8, everyone, synced=True)
                                 + collective_time(cluster, "all_reduce", 16, everyone, synced=True))
    assert collective_time(cluster, "all_reduce", 8, everyone) == pytest.approx(
        collective_time(cluster, "all_reduce", 8, everyone, synced=True) + cluster.collective_sync(4))
    assert cluster.collective_sync(4) > 0
    piped = estimate(TINY, cluster, cfg(pp=2, dp=2)).prediction["time_breakdown"]["step_comm"]
    untied = estimate(dataclasses.replace(TINY, tied_embeddings=False), cluster,
                      cfg(pp=2, dp=2)).prediction["time_breakdown"]["step_comm"]
    assert piped > untied == pytest.approx(flat)


@pytest.mark.parametrize("sp", [False, True])
def test_measured_tp_layers_replace_the_modelled_collectives(sp):
    """tp2, one stage: each micro-batch pays layers x (forward + backward) of the measured TP layer, plus one
    collective (a quarter of that pair) for the embedding and one for the head."""
    cluster = measured_cpu_profile(1.0)
    c = cfg(tp=2, dp=2, micro_batch_size=2, sequence_parallel=sp)
    f, b = (x * (1.5 if sp else 1) for x in TP_LAYER[2])
    per_microbatch = TINY.num_layers * (f + b) + (f + b) / 2
    tp_comm = estimate(TINY, cluster, c).prediction["time_breakdown"]["tp_comm"]
    assert tp_comm == pytest.approx(c.num_microbatches * per_microbatch)
    modelled = estimate(TINY, measured_cpu_profile(1.0, tp_layers=False), c).prediction["time_breakdown"]["tp_comm"]
    assert modelled != pytest.approx(tp_comm)


def test_tp_layers_beyond_the_largest_measured_micro_batch_grow_with_the_modelled_collective():
    """Read at micro-batch 4 (the largest measured), plus what the modelled collective adds from 4 to 16 tokens."""
    cluster = measured_cpu_profile(1.0)
    c = cfg(tp=2, dp=2, micro_batch_size=4, global_batch_size=32)
    big = dataclasses.replace(c, micro_batch_size=16, global_batch_size=32)
    layer, read_at = measured_tp_layer(TINY, cluster, big)
    assert read_at == 4 and (layer.forward, layer.backward_input) == pytest.approx(TP_LAYER[4])
    grow = tp_collective(TINY, cluster, big, [0, 1]) - tp_collective(TINY, cluster, c, [0, 1])
    assert grow > 0
    per_microbatch = TINY.num_layers * (sum(TP_LAYER[4]) + 4 * grow) + sum(TP_LAYER[4]) / 2 + 2 * grow
    tp_comm = estimate(TINY, cluster, big).prediction["time_breakdown"]["tp_comm"]
    assert tp_comm == pytest.approx(big.num_microbatches * per_microbatch)


# The pruning bounds on a measured CPU profile (TP layers, overheads, core share): tests/test_search.py
# test_search_bounds_never_exceed_the_simulation[measured-cpu] checks every candidate, time and memory.


def test_cpu_work_time_does_not_count_waiting():
    """The profiler's CPU clock: a sleep (what a preempted or throttled rank does) costs no work time."""
    import torch

    from autoconf.profile.timing import work_time

    assert work_time(lambda: time.sleep(0.05), torch.device("cpu")) < 0.01
    a = torch.randn(256, 256)
    assert work_time(lambda: [a @ a for _ in range(20)], torch.device("cpu")) > 0


def test_reference_overheads_are_the_gap_between_the_whole_model_and_its_blocks():
    """A one-layer model measured 2 ms slower per pass than its blocks add up to gives pass_overhead_s 2 ms; the
    optimizer rate is the reference step's time per parameter; medians over ranks."""
    from autoconf.profile.overheads import reference_overheads

    entries = [{"block": b, "tp": 1, "micro_batch": 1, "seq_len": 64, "forward_s": 1e-3, "backward_input_s": 1e-3,
                "backward_weight_s": 5e-4} for b in ("attention", "mlp", "norm", "embedding", "head")]
    parts_f = 6 * 1e-3  # attention, mlp, 2 norms, embedding, head
    parts_b = 6 * 1.5e-3

    def ref(extra):
        return {"layers": 1, "params": 1000, "optimizer_s": 1e-3 + extra,
                "passes": [{"micro_batch": 1, "seq_len": 64, "forward_s": parts_f + 2e-3 + extra,
                            "backward_s": parts_b + 2e-3 + extra}]}

    found = reference_overheads(TINY, {"entries": entries}, [ref(0.0), ref(0.0), ref(5e-3)])
    assert found["pass_overhead_s"] == pytest.approx(2e-3)
    assert found["optimizer_s_per_param"] == pytest.approx(1e-6)
    slower_blocks = reference_overheads(TINY, {"entries": entries}, [ref(-4e-3)])
    assert slower_blocks["pass_overhead_s"] == 0.0
    assert found["model_compute_scale"] == 1.0  # no deep reference


def test_chained_blocks_scale_is_the_deep_models_time_over_its_blocks():
    """A 4-layer model that takes 1.2x its blocks (after two pass overheads per micro-batch) gives scale 1.2;
    a faster one is noise and gives 1."""
    from autoconf.profile.overheads import reference_overheads

    def entries(mb):
        return [{"block": b, "tp": 1, "micro_batch": mb, "seq_len": 64, "forward_s": 1e-3 * mb,
                 "backward_input_s": 1e-3 * mb, "backward_weight_s": 0.0}
                for b in ("attention", "mlp", "norm", "embedding", "head")]

    table = {"entries": entries(1) + entries(2)}
    one_layer = {"layers": 1, "params": 10, "optimizer_s": 1e-6,
                 "passes": [{"micro_batch": 1, "seq_len": 64, "forward_s": 6e-3 + 1e-3, "backward_s": 6e-3 + 1e-3}]}
    parts = {mb: (4 + 4 + 8 + 1 + 1) * 2e-3 * mb for mb in (1, 2)}  # F + B of every block of a 4-layer model

    def deep(factor):
        return {"layers": 4, "params": 10, "optimizer_s": 1e-6,
                "passes": [{"micro_batch": mb, "seq_len": 64, "forward_s": (factor * parts[mb] + 2e-3) / 2,
                            "backward_s": (factor * parts[mb] + 2e-3) / 2} for mb in (1, 2)]}

    found = reference_overheads(TINY, table, [one_layer], [deep(1.2)])
    assert found["pass_overhead_s"] == pytest.approx(1e-3)
    assert found["model_compute_scale"] == pytest.approx(1.2)
    assert reference_overheads(TINY, table, [one_layer], [deep(0.9)])["model_compute_scale"] == 1.0


def test_chained_scale_multiplies_the_measured_block_times():
    """model_compute_scale multiplies every measured block time (the compute term), nothing else."""
    base = measured_cpu_profile(0.5, alone=0.5)
    efficiency = {**base.efficiency, "model_compute_scale": {"value": 1.2, "why": "test"}}
    a = estimate(TINY, base, cfg()).prediction["time_breakdown"]
    b = estimate(TINY, dataclasses.replace(base, efficiency=efficiency), cfg()).prediction["time_breakdown"]
    assert b["compute"] == pytest.approx(1.2 * a["compute"])
    assert b["step_comm"] == pytest.approx(a["step_comm"])


def test_dtensor_parameters_pay_the_measured_dtensor_optimizer_rate():
    """TP or FSDP parameters are DTensors: their optimizer step costs at least the profile's DTensor rate times the
    rank's unsharded parameters (per-tensor dispatch does not shrink with sharding); plain ZeRO-0 DP does not."""
    base = measured_cpu_profile(0.5, alone=0.5)
    compute = {**base.compute, "optimizer_dtensor_s_per_param": 4e-8}
    slow = dataclasses.replace(base, compute=compute)
    params = TINY.total_params()
    for c, dtensor in ((cfg(zero_stage=0), False), (cfg(zero_stage=2), True), (cfg(tp=2, dp=2), True)):
        a = estimate(TINY, base, c).prediction["time_breakdown"]["optimizer"]
        b = estimate(TINY, slow, c).prediction["time_breakdown"]["optimizer"]
        if dtensor:
            assert b == pytest.approx(4e-8 * params / 0.5, rel=0.02) and b > a
        else:
            assert b == pytest.approx(a)


def test_pipelined_stages_pay_the_runtime_per_pass_of_their_schedule():
    """pipeline_action_s[schedule] is added, over the share, to every pass of a pipelined stage (framework term);
    pp == 1 runs without the pipelining runtime and pays nothing."""
    base = measured_cpu_profile(0.5, alone=0.5, pass_overhead=0.0)
    compute = {**base.compute, "pipeline_action_s": {"1f1b": 1e-3, "gpipe": 2e-3}}
    slow = dataclasses.replace(base, compute=compute)
    piped = cfg(pp=2, dp=2, schedule="1f1b")
    m = piped.num_microbatches
    framework = estimate(TINY, slow, piped).prediction["time_breakdown"]["framework"]
    assert framework == pytest.approx(2 * m * 1e-3 / 0.5)  # the busiest rank: m forwards and m backwards
    assert estimate(TINY, slow, cfg()).prediction["iteration_time_s"] == pytest.approx(
        estimate(TINY, base, cfg()).prediction["iteration_time_s"])


def test_fsdp_units_pay_their_hooks_on_every_pass():
    """Under ZeRO >= 1 with dp > 1 every pass of a stage pays fsdp_pass_s_per_unit x (its layers + the root): the
    rank's busy time grows by that much (the step by at most that: the gradient buckets of the longer last backward
    hide more of the reduction); ZeRO-0 and dp == 1 do not."""
    base = measured_cpu_profile(0.5, alone=0.5, pass_overhead=0.0)
    slow = dataclasses.replace(base, compute={**base.compute, "fsdp_pass_s_per_unit": 1e-3})
    c = cfg(zero_stage=2)
    fast_plan, slow_plan = estimate(TINY, base, c), estimate(TINY, slow, c)
    hooks = 2 * c.num_microbatches * 1e-3 * (TINY.num_layers + 1) / 0.5
    busy = slow_plan.timeline.compute_time_per_rank[0] - fast_plan.timeline.compute_time_per_rank[0]
    assert busy == pytest.approx(hooks)
    gained = slow_plan.prediction["iteration_time_s"] - fast_plan.prediction["iteration_time_s"]
    assert 0 < gained <= hooks * (1 + 1e-9)
    for plain in (cfg(zero_stage=0), cfg(tp=4, dp=1, zero_stage=1)):
        assert estimate(TINY, slow, plain).prediction["iteration_time_s"] == pytest.approx(
            estimate(TINY, base, plain).prediction["iteration_time_s"])


def test_unsharded_ranks_pay_their_one_rank_units_hooks():
    """Without ZeRO sharding the executor still wraps each block and the chunk in a one-rank FSDP unit (ZeRO-0, and
    ZeRO >= 1 at dp 1): every pass pays fsdp_solo_pass_s_per_unit x (the stage's layers + the root), counted in the
    breakdown's framework term; sharded layouts pay fsdp_pass_s_per_unit instead."""
    base = measured_cpu_profile(0.5, alone=0.5, pass_overhead=0.0)
    solo = dataclasses.replace(base, compute={**base.compute, "fsdp_solo_pass_s_per_unit": 1e-3})
    for c in (cfg(zero_stage=0), cfg(tp=4, dp=1, zero_stage=1), cfg(pp=2, dp=2, zero_stage=0)):
        before, after = estimate(TINY, base, c), estimate(TINY, solo, c)
        layers = TINY.num_layers // c.pp
        hooks = 2 * c.num_microbatches * 1e-3 * (layers + 1) / 0.5
        busy = after.timeline.compute_time_per_rank[0] - before.timeline.compute_time_per_rank[0]
        assert busy == pytest.approx(hooks)
        framework = after.prediction["time_breakdown"]["framework"] - before.prediction["time_breakdown"]["framework"]
        assert framework == pytest.approx(hooks)
    sharded = cfg(zero_stage=2)
    assert estimate(TINY, solo, sharded).prediction["iteration_time_s"] == pytest.approx(
        estimate(TINY, base, sharded).prediction["iteration_time_s"])


def test_zero0_pays_the_wait_for_its_group_once_per_bucket():
    """The executor's ZeRO-0 reducer all-reduces one bucket per block and end (execute/parallelize.GradReducer):
    each is its own collective, so each pays the CPU profile's collective_sync_s, as FSDP's units do."""
    from autoconf.cost.comm import collective_time
    from autoconf.cost.estimate import dp_collectives, dp_buffer_bytes

    cluster = measured_cpu_profile()
    c = cfg(zero_stage=0)
    devices = [0, 1, 2, 3]
    one = dp_collectives(cluster, c, 1e6, devices, units=1)
    ten = dp_collectives(cluster, c, 1e6, devices, units=10)
    grad_bytes = dp_buffer_bytes(c, 1e6, None)[0]
    assert one == (0.0, 0.0, collective_time(cluster, "all_reduce", grad_bytes, devices))
    assert ten[2] - one[2] == pytest.approx(9 * cluster.overhead("collective_sync_s"))


def test_the_wait_for_a_group_is_read_at_its_size():
    """A CPU profile's collective_sync_s per group size (by_ranks): a collective of k ranks pays the wait measured
    for the smallest size of at least k, the whole node's `value` beyond them; the profile checks refuse sizes that
    are not group sizes."""
    from autoconf.cost.comm import collective_time
    from autoconf.errors import UserError
    from autoconf.spec.cluster import ClusterProfile

    cluster = measured_cpu_profile()
    flat = cluster.efficiency["collective_sync_s"]
    sized = dataclasses.replace(cluster, efficiency={**cluster.efficiency, "collective_sync_s": {
        **flat, "value": 9e-3, "by_ranks": {"2": 3e-3, "4": 9e-3}}})
    assert [sized.collective_sync(k) for k in (2, 3, 4, 8)] == [3e-3, 9e-3, 9e-3, 9e-3]
    assert cluster.collective_sync(2) == flat["value"]
    pair = collective_time(sized, "all_reduce", 4096, [0, 1]) - collective_time(cluster, "all_reduce", 4096, [0, 1])
    assert pair == pytest.approx(3e-3 - flat["value"])
    bad = sized.to_dict()
    bad["efficiency"]["collective_sync_s"]["by_ranks"] = {"one": 1e-3}
    with pytest.raises(UserError, match="by_ranks"):
        ClusterProfile.from_dict(bad)
