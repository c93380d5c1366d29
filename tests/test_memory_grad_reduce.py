"""grad_reduce, the plan choice of when FSDP reduce-scatters: its memory (cost/memory.py), its time
(cost/estimate.py), where the search offers it (solve/space.py) and where the executor refuses it (spec/support.py).
The bytes themselves are measured by tests/test_memory_fsdp.py."""

from __future__ import annotations

import dataclasses

import pytest

from autoconf.cost.estimate import estimate
from autoconf.cost.memory import holds_unsharded_grads, holds_unsharded_params, state_bytes_per_param
from autoconf.errors import UserError
from autoconf.solve.space import candidates, parse_fix_value
from autoconf.spec.cluster import Link, load_cluster
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import load_model
from autoconf.spec.support import unsupported_reason

GiB = 1024**3


def _config(**changes) -> ParallelConfig:
    base = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=64, seq_len=8192, zero_stage=3)
    return dataclasses.replace(base, **changes)


def test_accumulating_once_per_step_holds_the_whole_unsharded_gradient():
    """Sharded and accumulating over micro-batches (or pipelined), grad_reduce step holds 4 bytes of gradient per
    parameter, microbatch 4/dp; one micro-batch without a pipeline reduces during its backward either way."""
    for pp, gb in ((1, 64), (2, 64), (2, 8)):
        c = _config(pp=pp, dp=4, global_batch_size=gb)
        assert state_bytes_per_param(c, "torch")[1] == 4.0
        assert state_bytes_per_param(dataclasses.replace(c, grad_reduce="microbatch"), "torch")[1] == 1.0
    single = _config(global_batch_size=8)
    assert single.num_microbatches == 1 and not holds_unsharded_grads(single)
    assert not holds_unsharded_grads(_config(zero_stage=0))


def test_zero3_under_a_pipeline_holds_the_whole_parameter_copy_unless_it_reduces_every_microbatch():
    """torch's pipelining stage keeps ZeRO-3 parameters gathered after each backward; the executor's reducing
    stage reshards them."""
    assert not holds_unsharded_params(_config())
    assert holds_unsharded_params(_config(pp=2, dp=4))
    assert not holds_unsharded_params(_config(pp=2, dp=4, grad_reduce="microbatch"))
    assert holds_unsharded_params(_config(zero_stage=2, grad_reduce="microbatch"))


def test_megatron_distributed_optimizer_shards_only_the_optimizer():
    """Megatron-LM's distributed optimizer: 6 + 12/d bytes per parameter (bf16 weights, fp32 gradient buffer)."""
    for dp in (2, 8, 64):
        c = _config(dp=dp, zero_stage=1, global_batch_size=dp * 8)
        assert sum(state_bytes_per_param(c, "megatron")) == pytest.approx(6 + 12 / dp)
    assert sum(state_bytes_per_param(_config(zero_stage=0), "megatron")) == 18


def test_reducing_every_microbatch_trades_time_for_memory():
    """llama3-8b dp 8 ZeRO-3, 8 micro-batches: the per-micro-batch reduce-scatter lowers the peak by the unsharded
    gradient (4 - 4/8 bytes per parameter, less the buffers of the units in flight); on one node's NVLink, where its
    reduce-scatters hide behind the backward, it also shortens the step, skipping the fp32 accumulation of every
    micro-batch's unsharded gradient (`compute.grad_accumulation_bytes`); on a slow DP link (1 GB/s between nodes,
    dp across 8 nodes, ZeRO-2 so that the per-pass gathers do not hide it) its 8 reduce-scatters lengthen it."""
    model = load_model("llama3-8b")
    cluster = load_cluster("dgx-h100-80g", nodes=1)
    once = estimate(model, cluster, _config(), detail=False).prediction
    every = estimate(model, cluster, _config(grad_reduce="microbatch"), detail=False).prediction
    saved = once["peak_memory_bytes"] - every["peak_memory_bytes"]
    assert 3.0 * model.total_params() < saved < 3.5 * model.total_params()
    assert every["iteration_time_s"] < once["iteration_time_s"]
    slow = dataclasses.replace(load_cluster("dgx-h100-80g", nodes=8, gpus_per_node=1),
                               inter_node=Link(latency_s=1e-5, bandwidth_Bps=1e9))
    once = estimate(model, slow, _config(zero_stage=2), detail=True).prediction
    every = estimate(model, slow, _config(zero_stage=2, grad_reduce="microbatch"), detail=True).prediction
    assert every["iteration_time_s"] > 1.5 * once["iteration_time_s"]
    assert every["time_breakdown"]["dp_comm"] > once["time_breakdown"]["dp_comm"]


def test_search_offers_microbatch_reduction_only_where_it_differs_and_runs():
    """Candidates get grad_reduce microbatch only with FSDP sharding, gradients held over several micro-batches or
    a pipeline, and a schedule that does not split the backward; the executor refuses it under a split one."""
    model = load_model("tiny-llama")
    seen = {(c.zero_stage, c.pp, c.schedule, c.num_microbatches, c.grad_reduce)
            for c in candidates(model, 4, 4, 8, 64, "fp32", fixed={"tp": 1, "recompute": "none"})}
    micro = {s for s in seen if s[-1] == "microbatch"}
    assert micro and all(z >= 1 for z, *_ in micro)
    assert not any(sched in ("zb-h1", "zbv", "dualpipev") for _, pp, sched, _, _ in micro if pp > 1)
    assert not any(pp == 1 and m == 1 for _, pp, _, m, _ in micro)
    assert all((z, pp, sched, m, "step") in seen for z, pp, sched, m, _ in micro)
    zbv = ParallelConfig(tp=1, pp=2, dp=2, vpp=2, micro_batch_size=1, global_batch_size=8, seq_len=64,
                         schedule="zbv", zero_stage=2, grad_reduce="microbatch")
    assert "grad_reduce microbatch" in unsupported_reason(zbv)
    assert unsupported_reason(dataclasses.replace(zbv, schedule="interleaved-1f1b")) is None


def test_grad_reduce_is_fixable_and_old_plans_load():
    """`--fix grad_reduce=...` takes step or microbatch; a config without the field is "step"."""
    assert parse_fix_value("grad_reduce", "microbatch") == "microbatch"
    with pytest.raises(UserError, match="grad_reduce"):
        parse_fix_value("grad_reduce", "sometimes")
    data = _config().to_dict()
    data.pop("grad_reduce")
    assert ParallelConfig.from_dict(data).grad_reduce == "step"
    assert any("grad_reduce" in p for p in _config(grad_reduce="never").problems(load_model("llama3-8b")))
