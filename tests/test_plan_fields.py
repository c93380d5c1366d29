"""A plan file is read field by field: what nothing would read, or what the executor would run other than predicted,
is refused in one line before anything starts (the second CLI fuzz round found each of these accepted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_bad_input import assert_one_clear_error, run_cli, tiny_plan_dict  # noqa: E402

from autoconf.cost.estimate import estimate  # noqa: E402
from autoconf.report.exporters import export_texts  # noqa: E402
from autoconf.spec.cluster import load_cluster  # noqa: E402
from autoconf.spec.frameworks import execution  # noqa: E402
from autoconf.spec.plan import PLAN_FIELDS, PREDICTION_FIELDS, ParallelConfig, Plan  # noqa: E402
from autoconf.spec.presets import PRESETS  # noqa: E402


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(placment={}), "unknown plan field(s) 'placment'"),
    (lambda d: d["cluster"].update(gpus_per_nod=4), "unknown cluster field(s) 'gpus_per_nod'"),
    (lambda d: d["placement"].update(mesh_order="tp"), "unknown placement field(s) 'mesh_order'"),
    (lambda d: d["prediction"].update(fit=True), "unknown prediction field(s) 'fit'"),
    (lambda d: d["config"].update(zero_stage=True), "zero_stage must be 0, 1, 2 or 3 (got True)"),
    (lambda d: d.update(version=True), "plan version True is not supported"),
    (lambda d: d["cluster"].update(backend="mpi"), "cluster backend must be nccl or gloo"),
    (lambda d: d["config"].update(selective_recompute="attention_core"),
     "selective_recompute 'attention_core' qualifies recompute selective, but recompute is 'none'"),
    (lambda d: d["config"].update(seq_split="work"), "seq_split 'work' places the boundaries"),
    (lambda d: d["prediction"].update(framework="megatron-lm"), "prediction.framework must be one of"),
    # (a review: the derived count, edited, was ignored and the run trained the fields' count)
    (lambda d: d["config"].update(num_microbatches=d["config"]["num_microbatches"] + 2),
     "is not global_batch_size / (micro_batch_size x dp)"),
    # (an audit: a batch that dp does not divide was reported as a wrong count, "63 / (1 x 4) = 15")
    (lambda d: d["config"].update(micro_batch_size=2, global_batch_size=5), "is not divisible by"),
])
def test_a_hand_edited_plan_is_refused_in_one_line(tmp_path, edit, needle):
    """Each edit was read as if absent (a typo'd key, a selective policy under no recompute, a split without chunks),
    as a number (true for zero_stage 1, for version 1) or as a cluster the launcher has no rule for."""
    doc = tiny_plan_dict()
    edit(doc)
    plan = _write(tmp_path, doc)
    for command in (["launch", plan, "--dry-run"], ["show", plan, "--out", tmp_path / "out"]):
        assert_one_clear_error(run_cli(command), needle)
    assert not (tmp_path / "out").exists()


def test_many_unknown_fields_make_one_short_line(tmp_path):
    doc = tiny_plan_dict()
    doc["cluster"].update({f"{'x' * 5000}{i}": i for i in range(1000)})
    result = run_cli(["launch", _write(tmp_path, doc), "--dry-run"])
    assert_one_clear_error(result, "unknown cluster field(s)", "and 995 more")
    assert len(result.output) < 1000


def test_every_field_a_plan_writes_is_one_it_reads(tmp_path):
    """What `estimate`, the search and `plan --tokens --price` write, top level and prediction, is what the reader
    takes: the lists are not a second, narrower copy."""
    plan_path = tmp_path / "p.json"
    args = ["plan", "--model", "tiny-llama", "--cluster", "cpu-local", "--global-batch", "8", "--seq-len", "64",
            "--tokens", "1e6", "--price", "2", "--out", plan_path]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    doc = json.loads(plan_path.read_text())
    assert set(doc) <= set(PLAN_FIELDS)
    assert {"training", "launchable"} <= set(doc["prediction"]) <= set(PREDICTION_FIELDS)
    Plan.from_dict(doc)


def _cpu_plan(framework: str = "autoconf") -> Plan:
    """tiny-llama tp1 x pp2 x dp2 on cpu-local, predicted for `framework`."""
    config = ParallelConfig(tp=1, pp=2, dp=2, micro_batch_size=1, global_batch_size=4, seq_len=64, dtype="fp32")
    return estimate(PRESETS["tiny-llama"], load_cluster("cpu-local"), config, execution=execution(framework))


def test_a_plan_predicted_for_another_framework_is_not_launched(tmp_path):
    """Its fit and times describe Megatron-Core's run, not the executor's: launch says so, the prediction marks it,
    and `show` writes the Megatron-LM and torchtitan exports but no script that runs `autoconf launch`."""
    plan = _cpu_plan("megatron-core")
    assert plan.prediction["launchable"] is False
    assert "megatron-core" in plan.prediction["not_launchable_reason"]
    assert "launch.sh" not in export_texts(plan, None) and "megatron_args.txt" in export_texts(plan, None)
    assert_one_clear_error(run_cli(["launch", _write(tmp_path, plan.to_dict()), "--dry-run"]),
                           "predicted for framework megatron-core", "--framework autoconf")


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_a_cpu_plan_edited_to_a_low_precision_is_not_launched(tmp_path, dtype):
    """On CPU ranks the executor trains in fp32: a cpu-local plan edited to bf16 or fp8 passed the dry run and would
    have trained in fp32 under a bf16 prediction."""
    doc = _cpu_plan().to_dict()
    doc["config"]["dtype"] = dtype
    assert_one_clear_error(run_cli(["launch", _write(tmp_path, doc), "--dry-run"]), "trains in fp32",
                           f"dtype is {dtype}")
