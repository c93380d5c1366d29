"""scripts/cuda_attention_check.py, the GPU check of seq1f1b's lower-right bias and of torch's CP ring on grouped
K/V, runs its comparisons on CPU too (what gpu_check.sh will run on a lent GPU) and refuses bad arguments in one
line."""

import json
import subprocess
import sys

import pytest

SCRIPT = "scripts/cuda_attention_check.py"


@pytest.mark.slow
def test_the_dry_run_on_cpu_compares_both_paths_and_passes():
    proc = subprocess.run([sys.executable, SCRIPT, "--seq", "128", "--chunks", "4"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["device"] == "cpu"
    assert report["seq1f1b"]["ok"] and report["seq1f1b"]["max_relative_difference"] < 1e-4
    assert report["cp_ring"]["ok"] and report["cp_ring"]["max_relative_difference"] < 1e-4
    assert report["cp_op"]["ok"] and max(report["cp_op"]["max_relative_difference"].values()) < 1e-4
    masked = report["masked_attention"]  # a measurement on a GPU; on CPU only that all four ways ran
    assert set(masked["ratio_to_causal"]) == {"causal", "causal_sinks", "window", "window_sinks"}


@pytest.mark.parametrize("args", [["--seq", "100", "--chunks", "3"], ["--chunks", "1"]])
def test_bad_arguments_are_one_line(args):
    proc = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--chunks" in proc.stderr
