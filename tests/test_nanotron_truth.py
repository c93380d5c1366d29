"""The Ultra-Scale Playbook comparison (scripts/truth_nanotron.py): its data read as the runs' names state them,
nanotron's pipeline partition, and the ZeRO-1 all-reduce flag it describes nanotron with."""

import pytest

from autoconf.cost.comm import collective_time
from autoconf.cost.estimate import dp_collectives
from autoconf.errors import UserError
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import Execution, execution
from autoconf.spec.plan import ParallelConfig
from plan_helpers import script_module


@pytest.fixture(scope="module")
def truth():
    return script_module("truth_nanotron")


def test_every_run_reads_as_a_layout_of_its_nodes(truth):
    """Each kept run is a Success or an OOM of a known model whose layout fills its nodes' GPUs; a Success has its
    throughput and reserved memory; every layout builds a config of that many ranks."""
    specs = truth.models()
    runs = truth.read_runs()
    assert len(runs) == 3680
    for run in runs:
        assert run["status"] in ("Success", "OOM") and run["model"] in specs
        c = truth.config_of(run)
        assert c.world_size == 8 * int(run["nodes"])
        if run["status"] == "Success":
            assert float(run["tokens_per_s_per_gpu"]) > 0 and float(run["mem_res_gb"]) > 0


def test_nanotron_partition_gives_each_rank_its_share_of_the_cost(truth):
    """nanotron's rule (models/base.py): a rank takes blocks until their cumulative cost passes its share; the 1.34G
    model over 8 ranks puts the head (4 layers' cost) on rank 6, so ranks 6 and 7 keep no layer. Every partition
    covers the layers once, in order."""
    specs = truth.models()
    counts = [end - first for first, end in truth.nanotron_partition(specs["1.34G"], 8)]
    assert counts == [3, 3, 2, 3, 2, 3, 0, 0]
    for model in specs.values():
        for pp in (1, 2, 4, 8, 16, 32):
            parts = truth.nanotron_partition(model, pp)
            assert len(parts) == pp and parts[0][0] == 0 and parts[-1][1] == model.num_layers
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert all(end >= first for first, end in parts)


def test_the_comparison_reports_ranks_regimes_and_fit_verdicts(truth):
    """A few runs of each model and cluster size: every estimate either refused with its reason or counted once in
    the fit verdicts; each regime's errors are of runs that ran."""
    out = truth.compare(limit=2)
    considered = sum(len(v) for v in out["fit"].values()) + len(out["refused"])
    assert considered > 0 and all(reason for _, reason in out["refused"])
    assert sum(r["runs"] for r in out["regimes"]) == sum(out["fit"]["ran"])
    assert {r["regime"] for r in out["regimes"]} <= set(truth.REGIMES)


def test_zero1_all_reduce_reduces_gradients_by_an_all_reduce():
    """nanotron's ZeRO-1 all-reduces the whole gradients (twice a reduce-scatter's bytes) and gathers the updated
    parameters; the flag swaps only the reduction's collective, and only at ZeRO-1."""
    cluster = load_cluster("dgx-h100-80g", nodes=4)
    devices = list(range(32))
    base = execution("megatron")
    flagged = base.replace(zero1_all_reduce=True)
    params = 1e9
    for zero in (0, 1, 2):
        c = ParallelConfig(tp=1, pp=1, dp=32, micro_batch_size=1, global_batch_size=32, seq_len=4096,
                           zero_stage=zero, dtype="bf16")
        plain, nanotron = (dp_collectives(cluster, c, params, devices, execution=e) for e in (base, flagged))
        if zero != 1:
            assert nanotron == plain
            continue
        assert nanotron[1] == plain[1]  # the same parameter all-gather
        grad_bytes = params * base.grad_buffer_bytes
        extra = collective_time(cluster, "all_reduce", grad_bytes, devices) - collective_time(
            cluster, "reduce_scatter", grad_bytes, devices)
        assert extra > 0 and nanotron[2] == pytest.approx(plain[2] + extra)


def test_zero1_all_reduce_needs_the_megatron_layout():
    with pytest.raises(UserError, match="zero1_all_reduce"):
        Execution(zero1_all_reduce=True)


def test_a_megatron_export_of_a_zero1_all_reduce_plan_says_megatron_reduce_scatters():
    """Megatron has no all-reduce ZeRO-1: an export of such a plan keeps the distributed optimizer and says what
    differs; without the flag, no such note."""
    from autoconf.cost.estimate import estimate
    from autoconf.report.exporters import megatron_flags
    from autoconf.spec.presets import PRESETS as MODELS

    cluster = load_cluster("dgx-h100-80g", nodes=1)
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=8, seq_len=2048, zero_stage=1,
                       dtype="bf16")
    for flagged in (False, True):
        plan = estimate(MODELS["llama3-8b"], cluster, c,
                        execution=execution("megatron").replace(zero1_all_reduce=flagged))
        args, notes = megatron_flags(plan)
        assert ("--use-distributed-optimizer", None) in args
        assert any("zero1_all_reduce" in n for n in notes) == flagged
