"""The memory headroom: a profile field with its reason, a default for profiles without it, a CLI override, and the
fit check and the search reading it (docs/memory.md)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from click.testing import CliRunner

from autoconf.cli import main
from autoconf.cost.estimate import estimate
from autoconf.errors import UserError
from autoconf.spec.cluster import DEFAULT_MEMORY_HEADROOM, PROFILES_DIR, ClusterProfile, load_cluster
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import load_model
from autoconf.spec.profile_checks import profile_problems

GiB = 1024**3
# llama3.1-8b (llama3-8b with RoPE scaling: sequences beyond 8192 are legal), dp 8 ZeRO-3 with a reduce-scatter per
# micro-batch: 77.9 GiB, between 95% and 100% of an 80 GiB H100.
BASE = ParallelConfig(tp=1, pp=1, dp=8, micro_batch_size=1, global_batch_size=64, seq_len=8192, zero_stage=3,
                      grad_reduce="microbatch")


def _near_full() -> ParallelConfig:
    """BASE at the first sequence length (multiples of 512 from 8192) whose llama3.1-8b peak on one DGX H100 lies
    between the usable memory and the device's memory: found, not hard-coded, so that the test keeps its meaning
    when the memory model changes."""
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100-80g", nodes=1)
    for seq in range(8192, 4 * 8192, 512):
        config = dataclasses.replace(BASE, seq_len=seq)
        peak = estimate(model, cluster, config, detail=False).prediction["peak_memory_bytes"]
        if cluster.usable_memory_bytes < peak <= cluster.device.memory_bytes:
            return config
    raise AssertionError("no sequence length puts the layout between the usable and the device memory")


def _profile_json() -> dict:
    return json.loads((PROFILES_DIR / "dgx-h100-80g.json").read_text())


def test_profile_without_headroom_gets_the_stated_default_and_round_trips():
    """An old profile (no memory_headroom) loads with the default fraction and its reason; saving writes them."""
    data = _profile_json()
    data.pop("memory_headroom", None)
    cluster = ClusterProfile.from_dict(data)
    assert cluster.memory_headroom == DEFAULT_MEMORY_HEADROOM and 0 < DEFAULT_MEMORY_HEADROOM["value"] < 0.2
    assert "fragmentation" in cluster.memory_headroom["why"]
    assert cluster.usable_memory_bytes == pytest.approx(cluster.device.memory_bytes * 0.95)
    again = ClusterProfile.from_dict(cluster.to_dict())
    assert again.memory_headroom == cluster.memory_headroom


@pytest.mark.parametrize("entry, needle", [
    ({"value": 1.0, "why": "x"}, "less than 1"),
    ({"value": -0.1}, "memory_headroom.value"),
    ({"value": "5%"}, "memory_headroom.value"),
    ({"value": 0.1, "why": 3}, "memory_headroom.why"),
    ({"value": 0.1, "bytes": 5}, "memory_headroom"),
    (0.1, "memory_headroom"),
])
def test_profile_checks_refuse_a_bad_headroom(entry, needle):
    """profile_checks names a headroom outside [0, 1), not a number, a non-text reason or an unknown key, and the
    loader refuses the profile with one UserError."""
    data = _profile_json()
    data["memory_headroom"] = entry
    problems = profile_problems(data)
    assert problems and any(needle in p for p in problems), problems
    with pytest.raises(UserError):
        ClusterProfile.from_dict(copy.deepcopy(data))


def test_fit_check_leaves_the_headroom_free():
    """A plan between the usable memory and the device's memory does not fit; it fits without headroom."""
    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100-80g", nodes=1)
    near_full = _near_full()
    tight = estimate(model, cluster, near_full, detail=False).prediction
    assert cluster.usable_memory_bytes < tight["peak_memory_bytes"] <= cluster.device.memory_bytes
    assert not tight["fits"] and tight["memory_limit_bytes"] == cluster.usable_memory_bytes
    loose = estimate(model, cluster.with_memory_headroom(0.0), near_full, detail=False).prediction
    assert loose["fits"] and loose["peak_memory_bytes"] == tight["peak_memory_bytes"]


def test_cli_flag_overrides_the_profile():
    """`--memory-headroom` changes the limit of `estimate`; a value outside [0, 1) is one clear error line."""
    args = ["estimate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--tp", "1", "--pp", "1", "--dp", "4",
            "--micro-batch", "1", "--global-batch", "4", "--seq-len", "64", "--json"]
    default = json.loads(CliRunner().invoke(main, args).output)["prediction"]
    half = json.loads(CliRunner().invoke(main, args + ["--memory-headroom", "0.5"]).output)["prediction"]
    device = load_cluster("cpu-local").device.memory_bytes
    assert default["memory_limit_bytes"] == pytest.approx(device * (1 - DEFAULT_MEMORY_HEADROOM["value"]))
    assert half["memory_limit_bytes"] == pytest.approx(device * 0.5)
    bad = CliRunner().invoke(main, args + ["--memory-headroom", "1.5"])
    assert bad.exit_code != 0 and "--memory-headroom" in bad.output and "Traceback" not in bad.output


def test_search_uses_the_usable_memory():
    """The planner's first choice for llama3.1-8b on one DGX H100 node fits in the usable memory, and the same search
    without headroom may choose a plan above it (here it does: dp 8 with a reduce-scatter per micro-batch, at the
    sequence length that puts it between the two limits)."""
    from autoconf.solve.search import search

    model, cluster = load_model("llama3.1-8b"), load_cluster("dgx-h100-80g", nodes=1)
    # Offload off: it would make the pinned layout fit (tests/test_offload.py checks that lever); so would context
    # parallelism, which the search weighs below 16k tokens where nothing fits without it.
    fixed = {"tp": 1, "pp": 1, "cp": 1, "micro_batch_size": 1, "recompute": "none", "zero_stage": 3,
             "offload_activations": False, "offload_optimizer": False}
    seq = _near_full().seq_len
    with_headroom = search(model, cluster, 64, seq, "bf16", fixed=fixed, top_k=1, refine=False)
    assert not with_headroom.plans  # the pins leave only layouts above the usable memory
    without = search(model, cluster.with_memory_headroom(0.0), 64, seq, "bf16", fixed=fixed, top_k=1, refine=False)
    best = without.plans[0].prediction
    assert cluster.usable_memory_bytes < best["peak_memory_bytes"] <= cluster.device.memory_bytes


def test_a_layout_that_misses_only_by_the_headroom_asked_for_names_the_flag():
    """`estimate --memory-headroom 0.999` said only `autoconf plan` or more devices would fit; the flag it was given
    is one more way, and the line names it (a profile's own headroom is not offered)."""
    args = ["estimate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--tp", "1", "--pp", "2", "--dp", "2",
            "--micro-batch", "1", "--global-batch", "8", "--seq-len", "64"]
    result = CliRunner().invoke(main, args + ["--memory-headroom", "0.999"])
    assert result.exit_code != 0 and "or a --memory-headroom below 0.9" in result.output, result.output
    assert CliRunner().invoke(main, args).exit_code == 0


def test_a_plan_that_fits_nowhere_only_by_the_headroom_asked_for_names_the_headroom_that_would():
    """`plan --memory-headroom 0.99999` ended in "use a bigger device"; the line now names the largest headroom the
    closest layout fits with, which, given, fits."""
    args = ["plan", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch", "8", "--seq-len", "64"]
    result = CliRunner().invoke(main, args + ["--memory-headroom", "0.99999"])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    below = float(result.output.split("--memory-headroom below ")[1].split()[0])
    assert 0 < below < 1
    assert CliRunner().invoke(main, args + ["--memory-headroom", f"{below * 0.99:.4f}"]).exit_code == 0


def test_the_headroom_named_is_rounded_down():
    """A layout needing 90.004% of the device fits with no headroom of 0.1 or above: the advice says below 0.099,
    where rounding to three figures said below 0.1, the user's own (a review)."""
    from autoconf.solve.fit import headroom_advice

    cluster = load_cluster("dgx-h100-80g", nodes=1).with_memory_headroom(0.2)
    advice = headroom_advice(cluster, 0.90004 * cluster.device.memory_bytes)
    assert "below 0.099 " in advice, advice
    assert headroom_advice(load_cluster("dgx-h100-80g", nodes=1), 0.5 * cluster.device.memory_bytes) == ""
