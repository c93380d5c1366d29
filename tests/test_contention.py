"""The compute a collective takes while it runs beside it (`collective_sm_share`, cost/simulate.py `beside`): stated by
the GPU data sheets, absent from CPU profiles, validated on load, and charged by the estimate wherever it hides a
collective behind compute (FSDP's per-block gathers, the DP stream's buckets, the CP ring, MoE pairs)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from autoconf.cost.estimate import estimate, exchange_sm_share
from autoconf.errors import UserError
from autoconf.spec.cluster import PROFILES_DIR, load_cluster
from autoconf.spec.frameworks import execution
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS


def _without_share(cluster):
    return cluster.with_collective_sm_share(0.0)


def test_gpu_data_sheets_state_the_share_and_cpu_profiles_do_not():
    for name in ("dgx-a100-80g", "dgx-h100-80g", "dgx-h200-141g", "dgx-h800-80g", "grand-teton-h100-96g-500w"):
        share = load_cluster(name).collective_sm_share
        assert share == pytest.approx(0.189 / 1.189, abs=1e-4), name
        assert "2507.03114" in load_cluster(name).efficiency["collective_sm_share"]["why"]
    assert load_cluster("cpu-local").collective_sm_share == 0.0


@pytest.mark.parametrize("value", [1.0, 1.5])
def test_a_share_of_the_whole_device_or_more_is_one_clear_line(tmp_path, value):
    data = json.loads((PROFILES_DIR / "dgx-h100-80g.json").read_text())
    data["efficiency"]["collective_sm_share"] = {"value": value, "why": "test"}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"collective_sm_share.*must be in \[0, 1\)"):
        load_cluster(str(path))
    run = subprocess.run([sys.executable, "-m", "autoconf", "estimate", "--model", "llama3-8b", "--cluster",
                          str(path), "--nodes", "1", "--tp", "1", "--pp", "1", "--dp", "8", "--micro-batch", "1",
                          "--global-batch", "8", "--seq-len", "1024"], capture_output=True, text=True)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert len([line for line in (run.stdout + run.stderr).splitlines() if "collective_sm_share" in line]) == 1


def _fsdp(dp: int = 8, **kw) -> ParallelConfig:
    return ParallelConfig(tp=1, pp=1, dp=dp, micro_batch_size=2, global_batch_size=2 * dp, seq_len=8192,
                          zero_stage=3, recompute="selective", dtype="bf16", attention="flash", **kw)


def test_fsdp_steps_slow_by_at_most_the_share_of_their_collectives():
    """ZeRO-3 on 8 and 64 GPUs: without the share the estimate is the old one (each gather hidden whole behind its
    block's compute); with it the step is longer, by at most the share of the step (every collective fully
    beside compute), and the memory is the same."""
    model = PRESETS["llama3-8b"]
    for nodes in (1, 8):
        cluster = load_cluster("dgx-h100-80g", nodes=nodes)
        c = _fsdp(8 * nodes)
        with_share = estimate(model, cluster, c, execution=execution("torchtitan")).prediction
        without = estimate(model, _without_share(cluster), c, execution=execution("torchtitan")).prediction
        slower = with_share["iteration_time_s"] - without["iteration_time_s"]
        assert 0 < slower <= cluster.collective_sm_share * without["iteration_time_s"]
        assert with_share["peak_memory_bytes"] == without["peak_memory_bytes"]


def test_no_collective_no_charge():
    """One rank, no data parallelism: nothing runs beside the compute, so the share changes nothing."""
    model = PRESETS["llama3-8b"]
    cluster = load_cluster("dgx-h100-80g", nodes=1, gpus_per_node=1)
    c = dataclasses.replace(_fsdp(1), zero_stage=0)
    assert (estimate(model, cluster, c).prediction["iteration_time_s"]
            == estimate(model, _without_share(cluster), c).prediction["iteration_time_s"])


def test_the_megatron_2022_preset_reduces_after_the_flush_and_pays_nothing():
    """Megatron 2022 reduces its gradients after the pipeline flush, beside no compute: its estimates (the
    Korthikanti table's) do not move."""
    model = PRESETS["gpt3-175b"]
    cluster = load_cluster("dgx-a100-80g", nodes=64)
    c = ParallelConfig(tp=8, pp=8, dp=8, micro_batch_size=1, global_batch_size=64, seq_len=2048, zero_stage=0,
                       recompute="full", dtype="bf16", attention="flash")
    ex = execution("megatron")
    assert (estimate(model, cluster, c, execution=ex).prediction["iteration_time_s"]
            == estimate(model, _without_share(cluster), c, execution=ex).prediction["iteration_time_s"])


def test_an_exchange_takes_the_framework_s_own_sms_else_an_nccl_collective_s():
    cluster = load_cluster("dgx-h100-80g")
    assert exchange_sm_share(cluster, execution("megatron-core")) == cluster.collective_sm_share
    assert exchange_sm_share(cluster, execution("deepseek")) == pytest.approx(20 / 132)
    assert exchange_sm_share(load_cluster("cpu-local"), execution("autoconf")) == 0.0


def test_a_measured_gpu_profile_keeps_its_base_profile_s_share():
    """`autoconf profile` on a GPU copies the base data sheet's efficiency entries it does not measure
    (profile/hardware.py `gpu_efficiency`): the share among them (it is not measured; a single GPU cannot)."""
    from autoconf.profile.hardware import gpu_efficiency

    base = load_cluster("dgx-h100-80g").efficiency
    rates = {"peak_flops": {"bf16": 700e12}, "attention_flops": 400e12}
    measured = gpu_efficiency(base, rates, 989e12, "bf16")
    assert measured["collective_sm_share"] == base["collective_sm_share"]


@pytest.mark.slow
def test_the_contention_script_measures_a_share_on_two_gloo_ranks():
    """scripts/collective_contention.py (run by gpu_check.sh on two GPUs or more) as a CPU dry run: both
    collectives timed beside the GEMM loop on both ranks, every share a fraction of the device."""
    from executor_jobs import torchrun

    proc = torchrun(2, ["scripts/collective_contention.py", "--tiny", "--seconds", "0.02"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert (report["world"], report["backend"], report["profile_states"]) == (2, "gloo", None)
    for op in ("all_gather", "reduce_scatter"):
        row = report["ops"][op]
        assert row["repeats"] == 10 and row["bytes"] > 0 and row["alone_s_median"] > 0
        if row["outlasted"]:
            assert 0.0 <= row["share_median"] < 1.0
        else:
            assert row["share_median"] is None


def test_the_command_line_sets_the_share_for_estimate_and_plan():
    """--collective-sm-share replaces the profile's value (0: none) in `estimate` and in every size `plan` weighs;
    out of [0, 1) it is one line naming the range."""
    from click.testing import CliRunner

    from autoconf.cli import main

    base = ["--model", "llama3-8b", "--cluster", "dgx-h100-80g", "--nodes", "1", "--tp", "1", "--pp", "1", "--dp",
            "8", "--micro-batch", "2", "--global-batch", "16", "--seq-len", "8192", "--zero", "3", "--recompute",
            "selective", "--json"]
    runner = CliRunner()

    def step(*extra) -> float:
        result = runner.invoke(main, ["estimate", *base, *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["prediction"]["iteration_time_s"]

    profile, none, half = step(), step("--collective-sm-share", "0"), step("--collective-sm-share", "0.5")
    model, cluster = PRESETS["llama3-8b"], load_cluster("dgx-h100-80g", nodes=1)
    c = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=2, global_batch_size=16, seq_len=8192, zero_stage=3,
                       recompute="selective")
    assert none == pytest.approx(estimate(model, _without_share(cluster), c).prediction["iteration_time_s"])
    assert none < profile < half
    bad = runner.invoke(main, ["estimate", *base, "--collective-sm-share", "1"])
    assert bad.exit_code == 2 and "--collective-sm-share" in bad.output and "Traceback" not in bad.output
    sweeps = []
    for share in ("0", "0.5"):
        planned = runner.invoke(main, ["plan", "--model", "tiny-llama", "--cluster", "dgx-h100-80g", "--nodes", "1:2",
                                       "--global-batch", "64", "--seq-len", "128", "--tokens", "1B",
                                       "--collective-sm-share", share, "--json"])
        assert planned.exit_code == 0, planned.output
        sweeps.append({row["nodes"]: row["plan"]["prediction"]["iteration_time_s"]
                       for row in json.loads(planned.stdout)["sweep"]})
    assert sweeps[0].keys() == sweeps[1].keys() == {1, 2}
    assert all(sweeps[1][n] >= sweeps[0][n] for n in (1, 2)) and sweeps[1][2] > sweeps[0][2]
