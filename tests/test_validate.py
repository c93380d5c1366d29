"""autoconf validate: statistics, layout selection, the report's schema, calibration, and one real end-to-end run."""

from __future__ import annotations

import json

import pytest

from autoconf.cost.estimate import estimate
from autoconf.errors import UserError
from autoconf.spec.support import unsupported_reason
from autoconf.spec.cluster import load_cluster
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import load_model
from autoconf.validate.calibrate import calibrated_profile, cross_validate, fit, folds, predict_time
from autoconf.validate.run import Report, Run, load_report, read_metrics, validate
from autoconf.validate.select import select_layouts
from autoconf.validate.stats import median_abs_error, rank_average, regret, spearman


# ---- statistics ---------------------------------------------------------------------------------------------------
def test_spearman_is_one_for_any_increasing_map_and_minus_one_reversed():
    """Spearman depends on order only: a monotone map gives 1, a reversed order -1."""
    x = [0.3, 0.1, 0.7, 0.2, 1.5]
    assert spearman(x, [v ** 3 + 10 for v in x]) == pytest.approx(1.0)
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0)


def test_spearman_matches_the_textbook_formula_without_ties():
    """rho = 1 - 6 sum d^2 / (n (n^2 - 1)) when no values tie."""
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0]
    d = rank_average(a) - rank_average(b)
    n = len(a)
    assert spearman(a, b) == pytest.approx(1 - 6 * (d ** 2).sum() / (n * (n * n - 1)))


def test_ties_share_their_average_rank_and_degenerate_samples_give_none():
    assert rank_average([5.0, 1.0, 5.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1.0], [2.0]) is None
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None


def test_regret_is_relative_excess_over_best_measured():
    """regret = (chosen - best) / best; zero when the planner's choice was the fastest."""
    assert regret([1.2, 1.0, 1.5], 0) == pytest.approx(0.2)
    assert regret([1.0, 1.2], 0) == 0.0
    assert regret([1.0, 1.2], None) is None


def test_median_abs_error_is_relative():
    assert median_abs_error([1.1, 0.8, 2.0], [1.0, 1.0, 2.0]) == pytest.approx(0.1)


# ---- layout selection ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt"), load_cluster("cpu-local")


@pytest.fixture(scope="module")
def layouts(tiny):
    model, cluster = tiny
    return select_layouts(model, cluster, 16, 128, "fp32", 10)


def test_selection_starts_with_the_planners_choice_and_is_deterministic(tiny, layouts):
    from autoconf.solve.search import search

    model, cluster = tiny
    best = search(model, cluster, 16, 128, "fp32", top_k=1).plans[0]
    assert layouts[0].config == best.config
    again = select_layouts(model, cluster, 16, 128, "fp32", 10)
    assert [p.config for p in again] == [p.config for p in layouts]


def test_selection_is_diverse_distinct_launchable_and_fits(tiny, layouts):
    """Every (tp, pp, dp) combination the 4 ranks allow appears, several schedules, no layout twice, and each is
    one the executor runs and the estimate says fits."""
    model, cluster = tiny
    configs = [p.config for p in layouts]
    assert len(set(configs)) == len(configs) == 10
    degrees = {(c.tp, c.pp, c.dp) for c in configs}
    assert degrees == {(1, 1, 4), (1, 2, 2), (1, 4, 1), (2, 1, 2), (2, 2, 1), (4, 1, 1)}
    assert len({c.schedule for c in configs if c.pp > 1}) >= 4
    assert len({c.micro_batch_size for c in configs}) >= 3
    for c in configs:
        assert unsupported_reason(c) is None
        assert estimate(model, cluster, c, detail=False).prediction["fits"]


def test_fixed_fields_are_honoured(tiny):
    model, cluster = tiny
    plans = select_layouts(model, cluster, 16, 128, "fp32", 4, fixed={"pp": 2})
    assert all(p.config.pp == 2 for p in plans) and len(plans) == 4


def test_the_spread_keeps_tp_x_cp_blocks_within_a_node_as_the_search_does():
    """On 2 x dgx-a100-80g (slow links across nodes, solve/placement.py tp_cp_domain) no layout in the spread has a
    TP x CP block larger than a node, though cp 16 would fit; the list holds every fitting layout that is left."""
    from autoconf.spec.presets import PRESETS
    from autoconf.solve.placement import tp_cp_domain

    spec, a100 = PRESETS["llama3.1-8b"], load_cluster("dgx-a100-80g", nodes=2)
    fixed = {"tp": 1, "pp": 1, "recompute": "full", "zero_stage": 3, "micro_batch_size": 1, "cp_comm": "ring",
             "grad_reduce": "step"}
    plans = select_layouts(spec, a100, 16, 32768, "bf16", 50, fixed=fixed, refine=False)
    assert tp_cp_domain(a100)[0] == 8
    assert {p.config.cp for p in plans} == {2, 4, 8}  # (the pinned cp_comm asks for cp > 1)
    cp16 = ParallelConfig(tp=1, pp=1, dp=1, cp=16, micro_batch_size=1, global_batch_size=16, seq_len=32768,
                          dtype="bf16", zero_stage=3, recompute="full")
    assert estimate(spec, a100, cp16, detail=False).prediction["fits"]  # left out by the rule, not by memory


# ---- report -------------------------------------------------------------------------------------------------------
def test_report_round_trips_through_json(tmp_path):
    runs = [Run(0, "a", {"tp": 1}, 0.10, 0.11, chosen=True, status="ok", step_times_s=[0.2, 0.11, 0.11]),
            Run(1, "b", {"tp": 2}, 0.20, 0.19, status="ok"),
            Run(2, "c", {"tp": 4}, 0.30, None, status="failed", failure="exit code 1")]
    report = Report("tiny-gpt", "cpu", 16, 128, 3, runs).summarise()
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report.to_dict()))
    data = json.loads(path.read_text())
    for key in ("runs", "median_abs_error", "spearman", "regret"):
        assert key in data
    assert {"config", "predicted_s", "measured_s"} <= set(data["runs"][0])
    back = load_report(path)
    assert back.to_dict() == report.to_dict()
    assert report.regret == pytest.approx(0.0)  # 0.11 vs 0.19: the chosen run was fastest
    assert report.spearman == pytest.approx(1.0)
    assert back.runs[2].status == "failed" and back.runs[2].error is None


@pytest.mark.parametrize("version", [True, 1.0, "1", 2, None])
def test_a_report_of_another_version_is_refused_in_one_line(tmp_path, version):
    """A report's version is the integer REPORT_VERSION (JSON's true and 1.0 equal 1 in Python and are not it)."""
    data = Report("tiny-gpt", "cpu", 16, 128, 3, [Run(0, "a", {"tp": 1}, 0.1, 0.1, status="ok")]).summarise().to_dict()
    path = tmp_path / "report.json"
    path.write_text(json.dumps({**data, "version": version}))
    with pytest.raises(UserError, match="not a validation report"):
        load_report(path)


def test_read_metrics_takes_the_summary_median_and_explains_a_missing_one(tmp_path):
    path = tmp_path / "m.jsonl"
    assert read_metrics(path)[2] == "no metrics file was written"
    path.write_text(json.dumps({"step": 1, "step_time_s": 0.5}) + "\n")
    assert read_metrics(path)[0] is None and "no summary" in read_metrics(path)[2]
    with path.open("a") as f:
        f.write(json.dumps({"summary": {"measured_iteration_time_s": 0.25}}) + "\n")
    assert read_metrics(path)[:2] == (0.25, [0.5])


def test_peak_memory_is_compared_only_where_the_device_memory_was_measured(tmp_path):
    """A GPU run's summary gives its max_memory_allocated, which the report compares with the prediction; a CPU run's
    RSS growth is not device memory and is left out."""
    from autoconf.validate.run import device_peak_memory

    gpu, cpu = tmp_path / "gpu.jsonl", tmp_path / "cpu.jsonl"
    assert device_peak_memory(gpu) is None
    gpu.write_text(json.dumps({"summary": {"measured_peak_memory_bytes": 8 << 30,
                                           "peak_memory_kind": "cuda max_memory_allocated, max over ranks"}}) + "\n")
    cpu.write_text(json.dumps({"summary": {"measured_peak_memory_bytes": 1 << 20, "peak_memory_kind": "CPU: RSS"}}))
    assert device_peak_memory(gpu) == 8 << 30 and device_peak_memory(cpu) is None
    runs = [Run(0, "a", {}, 0.1, 0.1, chosen=True, status="ok", predicted_peak_bytes=9 << 30,
                measured_peak_bytes=8 << 30),
            Run(1, "b", {}, 0.2, 0.2, status="ok", predicted_peak_bytes=6 << 30, measured_peak_bytes=8 << 30),
            Run(2, "c", {}, 0.3, 0.3, status="ok", predicted_peak_bytes=5 << 30)]
    report = Report("m", "gpu", 8, 128, 3, runs).summarise()
    assert runs[0].memory_error == pytest.approx(0.125) and runs[2].memory_error is None
    assert report.memory_median_abs_error == pytest.approx((0.125 + 0.25) / 2)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report.to_dict()))
    assert load_report(path).to_dict() == report.to_dict()


def test_repeats_run_the_list_in_turn_and_keep_the_median(tmp_path, layouts):
    """With repeats the whole list runs again in the same order; each layout's time is the median of its successful
    repeats, a repeat that fails is recorded but does not sink the layout, one that never succeeds is failed."""
    from autoconf.validate.run import run_plans

    order, times = [], {0: [0.3, 0.1, 0.2], 1: [0.5, 0.5, 0.5], 2: [None, None, None], 3: [0.4, None, 0.6]}

    def runner(plan, metrics, log, steps):
        index = int(plan.parent.name)
        order.append(index)
        value = times[index][sum(1 for i in order if i == index) - 1]
        if value is None:
            return 1
        metrics.write_text(json.dumps({"step": 3, "step_time_s": value}) + "\n" +
                           json.dumps({"summary": {"measured_iteration_time_s": value}}) + "\n")
        return 0

    runs = run_plans(layouts[:4], tmp_path, 3, runner, log=lambda _: None, repeats=3)
    assert order == [0, 1, 2, 3] * 3
    assert [r.measured_s for r in runs] == [0.2, 0.5, None, 0.5]
    assert [r.status for r in runs] == ["ok", "ok", "failed", "ok"]
    assert runs[0].repeats_s == [0.3, 0.1, 0.2] and runs[3].failure
    assert (tmp_path / "runs" / "0" / "metrics.2.jsonl").exists()


def test_validate_fails_when_a_layout_failed_or_nothing_was_ranked(tmp_path, monkeypatch):
    """`validate` exited 0 after layouts failed to run, or when fewer than two ran; now it prints the table and
    the files, then one error line naming the failed layouts."""
    from click.testing import CliRunner

    from autoconf import cli
    from autoconf.validate import run as validate_run
    from tests.test_bad_input import assert_one_clear_error

    runs = [Run(0, "tp1 dp2", {"tp": 1}, 0.10, 0.11, chosen=True, status="ok"),
            Run(1, "tp2 dp1", {"tp": 2}, 0.20, None, status="failed", failure="exit code 1: out of memory")]
    monkeypatch.setattr(validate_run, "validate",
                        lambda *a, **k: Report("tiny-gpt", "cpu-local", 8, 64, 3, runs).summarise())
    args = ["validate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--out", tmp_path]
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert_one_clear_error(result, "1 of 2 layouts failed", "#1 tp2 dp1: exit code 1: out of memory")
    assert "predicted vs measured" in result.output
    runs[1:] = []
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert_one_clear_error(result, "only 1 layout could be chosen")
    runs.append(Run(1, "tp2 dp1", {"tp": 2}, 0.20, 0.19, status="ok"))
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert result.exit_code == 0, result.output


# ---- calibration --------------------------------------------------------------------------------------------------
def test_calibrated_prediction_is_homogeneous_of_degree_one_in_the_factors():
    """The fit's premise: on a profile without overheads of its own, multiplying every factor (compute_scale,
    comm_scale, pass_overhead_s, step_overhead_s) by k multiplies the predicted time by k, for a plan with TP, PP,
    DP and FSDP communication. A cost the calibrated profile forgot to scale (a link latency, the optimizer's
    memory rate, a collective) breaks it."""
    model = load_model("gpt3-1.3b")
    cluster = load_cluster("dgx-a100-80g", nodes=2)
    config = ParallelConfig(tp=2, pp=4, dp=2, micro_batch_size=1, global_batch_size=32, seq_len=2048,
                            schedule="1f1b", zero_stage=1, recompute="selective")
    plan = estimate(model, cluster, config, detail=False)
    base = {"compute_scale": 1.3, "comm_scale": 0.7, "pass_overhead_s": 1e-4, "step_overhead_s": 2e-3}
    t1 = predict_time(model, calibrated_profile(cluster, base), plan)
    for k in (0.5, 3.0):
        scaled = {name: k * value for name, value in base.items()}
        assert predict_time(model, calibrated_profile(cluster, scaled), plan) == pytest.approx(k * t1, rel=1e-9)


def test_compute_scale_scales_a_single_device_run_and_comm_scale_leaves_it_alone():
    """One device has no communication: compute_scale k multiplies its predicted time by exactly k (compute and the
    optimizer alike), comm_scale changes nothing, and each added pass overhead costs 2 per micro-batch."""
    model = load_model("gpt3-1.3b")
    one = load_cluster("dgx-a100-80g", nodes=1, gpus_per_node=1)
    config = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=1, global_batch_size=4, seq_len=2048)
    plan = estimate(model, one, config, detail=False)
    t = predict_time(model, one, plan)
    assert predict_time(model, calibrated_profile(one, {"compute_scale": 2.5}), plan) == pytest.approx(2.5 * t,
                                                                                                      rel=1e-9)
    assert predict_time(model, calibrated_profile(one, {"comm_scale": 4.0}), plan) == pytest.approx(t, rel=1e-12)
    slower = calibrated_profile(one, {"pass_overhead_s": 1e-3, "step_overhead_s": 5e-3})
    assert predict_time(model, slower, plan) == pytest.approx(t + 2 * 4 * 1e-3 + 5e-3, rel=1e-9)


def test_neutral_calibration_changes_nothing_and_overheads_add_time(tiny, layouts):
    model, cluster = tiny
    assert calibrated_profile(cluster, {}).to_dict() == cluster.to_dict()
    slower = calibrated_profile(cluster, {"pass_overhead_s": 1e-3, "step_overhead_s": 2e-3})
    for plan in layouts:
        c = plan.config
        base = plan.prediction["iteration_time_s"]
        # At least one F and one B per micro-batch on the busiest rank, plus the step overhead.
        assert predict_time(model, slower, plan) >= base + 2e-3 + 2 * c.num_microbatches * 1e-3 - 1e-12


def test_fit_recovers_known_factors_and_cross_validation_predicts_held_out_runs(tiny, layouts):
    """Times made by a profile with known factors are fitted back, and held-out runs are predicted within 1%."""
    model, cluster = tiny
    truth = {"compute_scale": 1.6, "comm_scale": 1.0, "pass_overhead_s": 2e-3, "step_overhead_s": 5e-3}
    measured = [predict_time(model, calibrated_profile(cluster, truth), p) for p in layouts]
    factors = fit(model, cluster, layouts, measured)
    assert factors["compute_scale"] == pytest.approx(1.6, rel=0.05)
    assert factors["pass_overhead_s"] == pytest.approx(2e-3, rel=0.1)
    cv = cross_validate(model, cluster, layouts, measured)
    assert cv["scheme"] == "leave-one-out"
    assert cv["after"]["median_abs_error"] < 0.01 < cv["before"]["median_abs_error"]


def test_folds_cover_every_run_once():
    for n in (3, 12, 30):
        held = [i for fold in folds(n) for i in fold]
        assert sorted(held) == list(range(n))


# ---- end to end ---------------------------------------------------------------------------------------------------
SMALL = ModelSpec(name="validate-gpt", arch="gpt", num_layers=4, hidden_size=32, num_heads=2, num_kv_heads=2,
                  ffn_hidden_size=64, vocab_size=128, max_seq_len=32, tied_embeddings=True)


@pytest.mark.slow
def test_validate_end_to_end_two_layouts_on_two_ranks(tmp_path):
    """Two layouts x 3 steps on 2 CPU ranks: both run, the report, scatter and table come out, and the input
    profile is left alone."""
    from autoconf.validate.run import report_table

    cluster = load_cluster("cpu-local", gpus_per_node=2)
    out = tmp_path / "val"
    report = validate(SMALL, cluster, "cpu-local", 8, 32, "fp32", configs=2, steps=3, out_dir=out, log=lambda m: None)
    assert [r.status for r in report.runs] == ["ok", "ok"], [r.failure for r in report.runs]
    data = json.loads((out / "report.json").read_text())
    assert len(data["runs"]) == 2 and data["runs"][0]["chosen"]
    assert all(r["measured_s"] > 0 for r in data["runs"])
    assert data["regret"] is not None and data["regret"] >= 0
    assert (out / "scatter.png").stat().st_size > 1000
    for i in range(2):
        assert (out / "runs" / str(i) / "plan.json").exists() and (out / "runs" / str(i) / "metrics.jsonl").exists()
    assert report_table(report).row_count == 2
    with pytest.raises(Exception, match="already exists"):
        validate(SMALL, cluster, "cpu-local", 8, 32, "fp32", configs=2, steps=3, out_dir=out, log=lambda m: None)


def test_validate_refuses_what_would_fail_after_its_runs_before_the_first(tmp_path):
    """Third fuzz round: `--calibrate` with fewer runs than it needs ran every layout (31 s) before saying so, and a
    folder where scatter.png goes failed after all the runs (25 s); both are refused before any layout runs."""
    from autoconf.validate.calibrate import FACTORS

    cluster = load_cluster("cpu-local", gpus_per_node=2)
    with pytest.raises(UserError, match=f"needs --configs {len(FACTORS) + 1} or more"):
        validate(SMALL, cluster, "cpu-local", 8, 32, "fp32", configs=2, steps=3, out_dir=tmp_path / "a",
                 calibrate=True, log=lambda m: None)
    (tmp_path / "b" / "scatter.png").mkdir(parents=True)
    with pytest.raises(UserError, match="is a folder"):
        validate(SMALL, cluster, "cpu-local", 8, 32, "fp32", configs=2, steps=3, out_dir=tmp_path / "b",
                 force=True, log=lambda m: None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b" / "runs").exists()


def test_pins_that_leave_one_layout_are_refused_before_it_runs(tmp_path):
    """Third fuzz round: `validate --fix ...` pinning every field ran the one layout left (15 s), then failed with
    "give a larger --global-batch", which was not the cause; it is refused now before anything runs, naming the
    pins."""
    from autoconf.spec.presets import PRESETS

    pins = {"tp": 2, "pp": 1, "dp": 2, "micro_batch_size": 4, "zero_stage": 0, "recompute": "none",
            "sequence_parallel": False, "grad_reduce": "step"}

    def runner(*args):
        raise AssertionError("a layout ran")

    with pytest.raises(UserError, match="only 1 layout could be chosen .* with --fix tp=2 .* --fix "
                                        "sequence_parallel=false .*pin fewer fields"):
        validate(PRESETS["tiny-llama"], load_cluster("cpu-local"), "cpu-local", 8, 64, "fp32", configs=3, steps=3,
                 out_dir=tmp_path / "v", fixed=pins, runner=runner, log=lambda m: None)
    assert not (tmp_path / "v").exists()


def test_the_layout_count_is_bounded_and_the_log_says_the_time_left(tmp_path):
    """Third fuzz round: `validate --configs 1000` wrote 1000 plans and set out on about 4 hours of runs without a
    word on how long; the count stops at MAX_CONFIGS (said in the help and in one line), and each run's line after
    the first says about how long the rest will take at the mean time per run so far."""
    from click.testing import CliRunner

    from autoconf.cli import main
    from autoconf.validate.run import MAX_CONFIGS, time_left
    from tests.test_bad_input import assert_one_clear_error

    args = ["validate", "--model", "tiny-llama", "--cluster", "cpu-local", "--global-batch", "8", "--seq-len", "64",
            "--out", str(tmp_path / "v")]
    result = CliRunner().invoke(main, [*args, "--configs", "1000"])
    assert_one_clear_error(result, "--configs 1000", f"at most {MAX_CONFIGS} layouts")
    assert not (tmp_path / "v").exists()
    assert f"2 to {MAX_CONFIGS}" in " ".join(CliRunner().invoke(main, ["validate", "--help"]).output.split())
    assert time_left(30.0, 0, 8) == "" and time_left(30.0, 8, 8) == ""
    assert time_left(30.0, 3, 8) == ", about 50 s left" and time_left(30.0, 2, 8) == ", about 2 min left"
    assert time_left(15.0, 1, 64) == ", about 16 min left" and time_left(900.0, 1, 20) == ", about 4.8 h left"


def test_force_removes_the_runs_of_an_earlier_validation_that_this_one_does_not_redo(tmp_path):
    """Third fuzz round: `validate --force` with fewer --configs (or --repeats) than the run before left the old
    runs/<K> folders (and metrics.<r>.jsonl) beside a report.json that does not list them; they are removed before
    the first layout runs, and only the names validate writes: a user's file in runs/ or runs/<K>/ stays."""
    from autoconf.spec.presets import PRESETS

    def runner(plan, metrics, log, steps):
        log.write_text("ran\n")
        metrics.write_text(json.dumps({"step": 3, "step_time_s": 0.1}) + "\n" +
                           json.dumps({"summary": {"measured_iteration_time_s": 0.1}}) + "\n")
        return 0

    out = tmp_path / "v"
    args = (PRESETS["tiny-llama"], load_cluster("cpu-local"), "cpu-local", 8, 64, "fp32")
    validate(*args, configs=4, steps=3, out_dir=out, runner=runner, log=lambda m: None, repeats=2)
    assert (out / "runs" / "3" / "metrics.1.jsonl").exists() and (out / "runs" / "0" / "log.1.txt").exists()
    (out / "runs" / "3" / "notes.txt").write_text("mine")
    (out / "runs" / "mine.txt").write_text("mine")
    validate(*args, configs=2, steps=3, out_dir=out, runner=runner, log=lambda m: None, force=True)
    report = json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["0", "1", "3", "mine.txt"]
    assert [p.name for p in (out / "runs" / "3").iterdir()] == ["notes.txt"] and not (out / "runs" / "2").exists()
    assert sorted(p.name for p in (out / "runs" / "0").iterdir()) == ["log.txt", "metrics.jsonl", "plan.json"]
    assert [r["dir"] for r in report["runs"]] == ["runs/0", "runs/1"]
