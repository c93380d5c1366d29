"""The per-op selective policy (selective_recompute "alternate_matmuls") on MoE layers at tp or etp > 1, in the
executor on CPU with gloo (the session's shared torchrun jobs, tests/executor_jobs.py): ep2 x tp2, ep2 x tp2 x dp2
with sequence parallelism and ep2 x etp2 over tp2 x dp2 train to the single-process losses and gradient norms, and
every block of every rank keeps what the memory estimate's per-layer term counts (tests/moe_policy_probe.py counts
it in the run): the dense block exactly; the MoE block exactly apart from its token exchange, whose all-to-all
outputs follow the routing on each rank and sum over the ranks to the estimate's balanced share times the ranks."""

from __future__ import annotations

import dataclasses

import pytest

from autoconf.cost.memory import layer_activation_bytes, moe_exchange_saved_bytes
from autoconf.spec.plan import Plan
from autoconf.spec.presets import PRESETS
import executor_jobs
from executor_jobs import Layout, assert_same_records
from plan_helpers import even_plan

OP = "alternate_matmuls"
# tests/test_moe_execute.py's 2-layer model (a dense block, then an MoE block: 8 experts, top-2, a shared expert)
# and its single-process reference run (the same plan, so a full session trains it once).
MOE2 = dataclasses.replace(PRESETS["tiny-moe"], name="tiny-moe2", num_layers=2)
STEPS = 2
OPTIONS = {"steps": STEPS, "probe": "tests/moe_policy_probe.py"}


def _plan(ep: int = 1, etp: int = 1, **layout) -> Plan:
    plan = even_plan(MOE2, **layout)
    plan = Plan(model=plan.model, cluster=plan.cluster, config=dataclasses.replace(plan.config, ep=ep, etp=etp),
                partition=plan.partition, placement=plan.placement)
    plan.validate()
    return plan


# One micro-batch per rank (the reference's global batch of 8): on CPU a layout's cost is per micro-batch.
POLICY = dict(recompute="selective", selective_recompute=OP)
LAYOUTS = {"moe2": Layout(1, _plan()),
           "moe2-ep2-tp2-op": Layout(2, _plan(ep=2, tp=2, micro_batch=8, **POLICY), OPTIONS),
           "moe2-ep2-tp2-dp2-sp-op": Layout(4, _plan(ep=2, tp=2, dp=2, sp=True, micro_batch=4, **POLICY), OPTIONS),
           "moe2-ep2-etp2-tp2-dp2-op": Layout(4, _plan(ep=2, etp=2, tp=2, dp=2, micro_batch=4, **POLICY), OPTIONS)}
executor_jobs.register("moe_policy", LAYOUTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != "moe2"])
def test_moe_at_tp_and_etp_under_the_policy_trains_as_one_process_and_keeps_what_the_estimate_counts(
        name, tmp_path_factory):
    """Losses and gradient norms within 1e-4 of the single process; per rank, the dense block keeps the estimate's
    bytes and the MoE block the estimate's bytes less its exchange; the exchange summed over the ranks is the
    estimate's times the ranks (and present: the all-to-alls are saved, not redone)."""
    out = executor_jobs.results("moe_policy", tmp_path_factory)
    assert_same_records(out["moe2"]["records"], out[name]["records"], name, STEPS)
    config = LAYOUTS[name].plan.config
    dense, moe = (layer_activation_bytes(MOE2, config, "torch", "cpu", selective=OP, moe=m) for m in (False, True))
    exchange = moe_exchange_saved_bytes(MOE2, config)
    ranks = out[name]["probe"]
    assert len(ranks) == config.world_size
    for found in ranks:
        assert [(b["layer"], b["exchange"]) for b in found][:1] == [(0, 0)]
        assert found[0]["bytes"] == dense, (name, found)
        assert found[1]["bytes"] - found[1]["exchange"] == moe - exchange, (name, found)
    assert sum(found[1]["exchange"] for found in ranks) == config.world_size * exchange > 0, (name, ranks)
