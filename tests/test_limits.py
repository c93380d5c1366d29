"""`autoconf limits`: the longest sequence, the largest micro-batch and the largest model that fit, each with its
plan; and the worst rank's memory picture of `estimate`."""

import dataclasses
import json
import random

import pytest
from click.testing import CliRunner

from autoconf.cli import main
from autoconf.cost.estimate import Execution
from autoconf.solve.limits import (SEQ_GRANULARITY, Planner, _doubling, _largest, largest_micro_batch,
                                   longest_sequence)
from autoconf.spec.cluster import load_cluster
from autoconf.spec.presets import PRESETS


def test_largest_finds_the_threshold_of_a_monotone_test():
    """Doubling then bisection returns exactly the last value that passes, for every threshold, with few probes."""
    rng = random.Random(0)
    for n in (1, 2, 3, 7, 8, 64, 513):
        values = sorted(rng.sample(range(10 * n), n))
        for cut in range(-1, n):
            found, probes = _largest(values, lambda v: v <= (values[cut] if cut >= 0 else -1))
            assert found == (values[cut] if cut >= 0 else None)
            assert len(probes) <= 2 * n.bit_length() + 2


def test_largest_with_a_scan_finds_a_window_that_starts_late():
    """With `scan` a test that fails at the smallest values and holds from some later one up to a threshold (a
    sequence too short for any context-parallel split: none fits below it) gives the window's last value, for every
    window; without a scan the first value decides; a test that holds nowhere is None after a handful of probes."""
    rng = random.Random(1)
    for n in (1, 2, 3, 8, 64, 513):
        values = sorted(rng.sample(range(10 * n), n))
        for start in range(n):
            for end in range(start, n, max(1, n // 7)):
                found, probes = _largest(values, lambda v: values[start] <= v <= values[end], scan=True)
                # the scan lands in the window where one of its indices does; else it reports none
                landed = any(start <= i <= end for i in _doubling(n))
                assert found == (values[end] if landed else None), (n, start, end)
                assert len(probes) <= 3 * n.bit_length() + 3
            assert _largest(values, lambda v: v >= values[start], scan=False)[0] == (values[-1] if start == 0
                                                                                    else None)
        assert _largest(values, lambda v: False, scan=True) == (None, [(values[i], False) for i in _doubling(n)])


@pytest.mark.slow
def test_a_model_that_fits_only_split_over_context_parallel_ranks_is_planned_below_16k():
    """llama3.1-70b on one node of 8 H100 at global batch 1: without cp nothing fits at 8,192 tokens (one replica, so
    no ZeRO shards it) and the search's first pass leaves cp out below CP_MIN_SEQ_LEN; its second pass weighs cp and
    finds a layout split over cp ranks, and the sequence limit scans past the lengths no cp can split."""
    from autoconf.solve.search import search
    from autoconf.spec.frameworks import execution

    model, cluster = PRESETS["llama3.1-70b"], load_cluster("dgx-h100-80g", nodes=1)
    result = search(model, cluster, 1, 8192, "bf16", top_k=1, execution=execution("autoconf"))
    assert result.plans and result.plans[0].config.cp > 1 and result.stats["short_cp"]
    assert result.plans[0].prediction["fits"]
    assert search(model, cluster, 1, 8192, "bf16", top_k=1, fixed={"cp": 1},
                  execution=execution("autoconf")).plans == []


# tiny-llama with RoPE scaling, so that sequences beyond its 128-token context are legal (ModelSpec.context_problem)
SCALED = dataclasses.replace(PRESETS["tiny-llama"], rope_scaling_factor=8.0)


def test_a_ceiling_beyond_the_context_of_a_model_without_rope_scaling_is_one_line(planner):
    from autoconf.errors import UserError

    with pytest.raises(UserError, match="context of 128 tokens") as err:
        longest_sequence(planner, PRESETS["tiny-llama"], ceiling=1 << 17)
    assert "use --max-seq-len 128 or less" in str(err.value)  # the flag that set the ceiling (it said --seq-len)


@pytest.fixture(scope="module")
def planner():
    """tiny-llama on 2 CPU ranks of 4 GiB, standard attention (whose s^2 scores make memory bind)."""
    return Planner(load_cluster("cpu-local", 1, 2), 8, "fp32", "standard", {}, Execution())


@pytest.fixture(scope="module")
def longest(planner):
    return longest_sequence(planner, SCALED, ceiling=1 << 17)


def test_longest_sequence_fits_and_one_step_longer_does_not(planner, longest):
    model = SCALED
    limit = longest
    assert limit.value is not None and limit.value % SEQ_GRANULARITY == 0 and limit.value < 1 << 17
    assert limit.plan.config.seq_len == limit.value and limit.plan.prediction["fits"]
    assert planner.best(model, limit.value + SEQ_GRANULARITY) is None
    assert all(ok == (v <= limit.value) for v, ok in limit.probes)


def test_largest_micro_batch_fits_and_the_next_divisor_does_not(planner, longest):
    model = SCALED
    seq = longest.value // 2 // SEQ_GRANULARITY * SEQ_GRANULARITY  # micro-batch 1 fits; 8 cannot
    limit = largest_micro_batch(planner, model, seq)
    assert limit.plan.config.micro_batch_size == limit.value and limit.plan.prediction["fits"]
    bigger = [m for m in range(limit.value + 1, 9) if 8 % m == 0]
    assert bigger, "the case should bind below the global batch"
    assert planner.best(model, seq, {"micro_batch_size": bigger[0]}) is None


def test_limits_verb_json_and_largest_model_of_a_family():
    """The gpt3 family on one 80 GB A100 node at seq 2048: the largest preset that fits has a fitting plan, and
    every larger preset of the family was probed and refused (a global batch of 8: fewer layouts per probe than 64,
    the same largest model)."""
    result = CliRunner().invoke(main, ["limits", "--family", "gpt3", "--only", "model", "--cluster", "dgx-a100-80g",
                                       "--global-batch", "8", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output[result.output.index("{"):])["model"]
    best = PRESETS[doc["value"]]
    assert doc["plan"]["prediction"]["fits"] and doc["plan"]["model"]["name"] == best.name
    larger = {n for n, m in PRESETS.items() if n.startswith("gpt3-") and m.total_params() > best.total_params()}
    assert larger, "the case should bind below the family's largest"
    assert not any(ok for name, ok in doc["probes"] if name in larger)


@pytest.mark.parametrize("pin, left_out", [("ep=2", {"tiny-llama", "tiny-gpt"}),
                                            ("tp=4", {"tiny-moe", "tiny-llama"})])
def test_the_largest_model_leaves_out_presets_the_pins_rule_out(pin, left_out):
    """A preset no layout honouring --fix can take (ep on a dense model, tp beyond its KV heads) is left out and
    named, not read as too big: with ep=2 the search stopped at tiny-moe, the smallest, and never tried tiny-gpt;
    with tp=4 it failed on tiny-moe's heads though tiny-gpt takes tp 4."""
    result = CliRunner().invoke(main, ["limits", "--family", "tiny", "--only", "model", "--cluster", "cpu-local",
                                       "--global-batch", "8", "--seq-len", "64", "--fix", pin, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output[result.output.index("{"):])["model"]
    expected = max((m for n, m in PRESETS.items() if n.startswith("tiny-") and n not in left_out),
                   key=lambda m: m.total_params())
    assert doc["value"] == expected.name
    assert all(name in doc["note"] for name in left_out) and "no layout honours the pins" in doc["note"]
    assert not {name for name, _ in doc["probes"]} & left_out


def test_estimate_draws_the_worst_rank(tmp_path):
    """`estimate --memory-picture` writes the breakdown of the rank with the most memory."""
    out = tmp_path / "worst.png"
    result = CliRunner().invoke(main, ["estimate", "--model", "llama3-8b", "--cluster", "dgx-h100-80g", "--tp", "2",
                                       "--pp", "4", "--dp", "1", "--micro-batch", "1", "--global-batch", "8",
                                       "--seq-len", "2048", "--memory-picture", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in " ".join(result.output.split())


@pytest.mark.parametrize("args", [["--only", "model"], ["--family", "llama3", "--only", "seq"],
                                  ["--family", "llama3", "--only", "micro-batch", "--only", "model"]])
def test_limits_refuses_a_limit_it_has_nothing_to_find_with(args):
    """A limit asked for with --only but lacking what it needs (a family for the largest model, a model for the
    sequence and micro-batch) is one error line, not an empty table or a different limit."""
    result = CliRunner().invoke(main, ["limits", "--cluster", "dgx-h100-80g", "--global-batch", "8", *args])
    assert result.exit_code != 0 and "give --model" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args, needle", [(["--only", "micro-batch", "--seq-len", "256"], "exceeds tiny-gpt's 128"),
                                          (["--only", "seq", "--fix", "tp=3"], "tp must divide the 4 devices"),
                                          (["--only", "model", "--fix", "tp=3"], "(use tp in 1, 2, 4)"),
                                          (["--dtype", "fp8"], "no FP8 rate")])
def test_limits_refuses_the_input_plan_refuses(args, needle):
    """Input `plan` refuses in one line (a sequence beyond the context, a pin the devices cannot take, a dtype the
    device has no rate for) is refused by `limits` the same way: it printed "none fits" and exited 0; the largest
    model's check of the pins said only "no legal layout on 4 devices", not the degrees that would do."""
    result = CliRunner().invoke(main, ["limits", "--model", "tiny-gpt", "--cluster", "cpu-local", "--global-batch",
                                       "8", *args])
    assert result.exit_code == 2 and needle in result.output and "none fits" not in result.output, result.output


def test_limits_only_model_of_a_file_model_asks_for_a_family(tmp_path):
    """--only model with a model from a file (no preset family) names the missing --family."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps(PRESETS["tiny-llama"].to_dict() | {"name": "my-model"}))
    result = CliRunner().invoke(main, ["limits", "--cluster", "dgx-h100-80g", "--global-batch", "8", "--model",
                                       str(path), "--only", "model"])
    assert result.exit_code != 0 and "give --family" in result.output, result.output


def test_limits_of_an_moe_model_count_all_its_experts():
    """Mixtral (46.7B parameters, 12.9B active) cannot train on one node of 8 H100s from device memory alone: its
    experts' training state (at least 16 bytes each, sharded at most 8 ways by EP or ZeRO) outgrows 80 GB. A model
    costed by its active parameters only would fit; with the optimizer state offloaded to the host it does: the
    planner turns offload on by itself (shown without a pipeline, the cheapest search to find one; the refusal
    searches every layout). A 256-token ceiling, the smallest value probed: one probe each."""
    base = ["limits", "--cluster", "dgx-h100-80g", "--global-batch", "8", "--model", "mixtral-8x7b", "--only", "seq",
            "--max-seq-len", "256"]
    result = CliRunner().invoke(main, base + ["--fix", "offload_optimizer=false"])
    assert "none fits" in result.output, result.output
    result = CliRunner().invoke(main, base + ["--fix", "pp=1", "--json"])
    assert result.exit_code == 0, result.output
    assert "\"offload_optimizer\": true" in result.output


def test_preset_families_group_every_size_of_one_model_line():
    """A family is the name before its first size, so both Qwen3 MoE presets are one family and no family holds a
    single size by accident of a suffix (qwen3-30b-a3b is not the family 'qwen3-30b')."""
    from autoconf.solve.limits import family_of

    assert family_of("qwen3-30b-a3b") == family_of("qwen3-235b-a22b") == "qwen3"
    assert family_of("mixtral-8x7b") == "mixtral" and family_of("llama3.1-405b") == "llama3.1"
    assert family_of("gpt3-1.3b") == "gpt3" and family_of("deepseek-v3") == "deepseek"
