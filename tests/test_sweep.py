"""Time and cost to train, the cluster-size sweep and its Pareto front, and their bad input."""

import json
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from autoconf.cli import main
from autoconf.errors import UserError
from autoconf.solve.sweep import (SweepPoint, cheapest_within, format_days, parse_deadline, parse_nodes, parse_tokens,
                                  pareto_front, training)
from autoconf.spec.cluster import load_cluster

SWEEP = ["plan", "--model", "tiny-gpt", "--cluster", "dgx-h100-80g", "--global-batch", "64", "--seq-len", "128",
         "--tokens", "2T"]


def run_cli(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_time_to_train_is_tokens_over_tokens_per_second_exactly():
    """days * 86400 is tokens / tokens_per_s with no rounding to whole steps; GPU-hours are that time on every
    device; cost is GPU-hours at the price."""
    prediction = {"tokens_per_s": 123_456.7}
    t = training(prediction, 2 * 10**12, 64, price=2.5, price_source="test")
    assert t["days"] * 86400 == pytest.approx(2e12 / 123_456.7, rel=1e-15)
    assert t["days"] == 2e12 / 123_456.7 / 86400
    assert t["gpu_hours"] == 2e12 / 123_456.7 / 3600 * 64
    assert t["cost"] == t["gpu_hours"] * 2.5
    assert training(prediction, 10, 1)["cost"] is None


def test_plan_tokens_adds_training_to_every_plan_with_the_profile_price():
    """`plan --tokens` on the H100 profile: each plan's prediction.training is tokens / its tokens_per_s, priced
    at the profile's published price (which names its source)."""
    result = run_cli(SWEEP + ["--nodes", "1", "--top", "2", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output[result.output.index("{"):])
    price = load_cluster("dgx-h100-80g").price
    assert price["usd_per_gpu_hour"] > 0 and "aws.amazon.com" in price["source"]
    for plan in doc["plans"]:
        t = plan["prediction"]["training"]
        assert t["tokens"] == 2 * 10**12
        assert t["days"] == 2e12 / plan["prediction"]["tokens_per_s"] / 86400
        assert t["cost"] == pytest.approx(t["gpu_hours"] * price["usd_per_gpu_hour"])


def point(nodes, days, gpu_hours):
    plan = SimpleNamespace(prediction={"training": {"days": days, "gpu_hours": gpu_hours, "cost": gpu_hours}})
    return SweepPoint(nodes, nodes * 8, plan)


def test_pareto_front_is_monotone_and_drops_dominated_sizes():
    """Along the front the days grow and the GPU-hours fall strictly; a size slower and dearer than another is
    not on it; the deadline picks the cheapest size that meets it."""
    points = [point(1, 100, 1000), point(2, 50, 1010), point(4, 30, 1200), point(8, 35, 1300), point(16, 10, 1600)]
    front = pareto_front(points)
    assert [p.nodes for p in front] == [16, 4, 2, 1]
    for a, b in zip(front, front[1:]):
        assert a.training["days"] < b.training["days"] and a.training["gpu_hours"] > b.training["gpu_hours"]
    assert cheapest_within(points, 40).nodes == 4
    with pytest.raises(UserError, match="fastest, 16 nodes.*widen --nodes"):
        cheapest_within(points, 5)
    # (a review: where the largest size is no faster, widening --nodes cannot help; the global batch is named)
    plateau = points + [point(32, 12, 3000)]
    with pytest.raises(UserError, match="more nodes did not help .*at global batch 64, so raise --global-batch"):
        cheapest_within(plateau, 5, 64)


def test_the_deadline_and_the_front_at_their_boundaries():
    """A size that takes exactly the deadline meets it; of two sizes equally cheap the fewer nodes win; a size as
    costly as a faster one is not on the front (the GPU-hours fall strictly along it), nor one as fast as a
    cheaper one."""
    points = [point(2, 50, 1000), point(4, 30, 1000), point(8, 30, 1100), point(16, 10, 1600)]
    assert cheapest_within(points, 30).nodes == 4  # 30 days within 30; 4 nodes as cheap as 2 but 2 too slow
    assert cheapest_within(points, 50).nodes == 2  # equally cheap: the fewer nodes
    assert [p.nodes for p in pareto_front(points)] == [16, 4]


def test_node_ranges():
    assert parse_nodes("8:256") == [8, 16, 32, 64, 128, 256]
    assert parse_nodes("8:100") == [8, 16, 32, 64, 100]
    assert parse_nodes("8:32:8") == [8, 16, 24, 32]
    assert parse_nodes("4") == [4]
    assert parse_tokens("2T") == 2 * 10**12 and parse_tokens("1.5e9") == 1_500_000_000
    assert parse_deadline("36h") == 1.5 and parse_deadline("2w") == 14
    assert parse_deadline("1e3") == 1000 and parse_deadline("1.5e1d") == 15  # as --tokens reads 15e12


def test_durations_print_in_the_unit_a_user_gave():
    """A deadline read back is written in hours or days as its size suggests (1h is not '0.0417 days')."""
    assert format_days(parse_deadline("1h")) == "1 hour"
    assert format_days(parse_deadline("36h")) == "36 hours"
    assert format_days(parse_deadline("30d")) == "30 days"
    assert format_days(parse_deadline("12w")) == "84 days" and format_days(parse_deadline("60d")) == "60 days"


def test_token_counts_are_read_exactly_and_short_runs_are_not_zero():
    """999999999999999999 tokens was refused as not below 1e18 (float rounding), 1.5 tokens was rounded to 2, and
    a thousand tokens printed as "0.0 days: 0 GPU-hours"."""
    from autoconf.report.tables import hours, money

    assert parse_tokens("999999999999999999") == 10**18 - 1 and parse_tokens("1.5K") == 1500
    for bad, needle in (("1.5", "not a whole number"), ("1e18", "below 1e18"), ("1e400", "below"),
                        ("1e999999999", "below"), ("0", "least")):
        with pytest.raises(UserError, match=needle):
            parse_tokens(bad)
    assert format_days(30 / 86400) == "30 seconds" and format_days(90 / 86400) == "1.5 minutes"
    assert format_days(1 / 86400) == "1 second"
    assert hours(2.484e-05) == "0.0000248" and hours(49682.4) == "49,682" and money(0.00012) == "$0.00012"
    assert money(1.2e-05) == "$0.000012" and format_days(12345.6) == "12,346 days"  # never an exponent
    # a column of durations in one unit, the longest's (a review: "39.6 hours" above "2.063 days")
    assert [format_days(d, like=2.063) for d in (1.65, 2.063)] == ["1.65 days", "2.063 days"]


def test_a_missed_deadline_suggests_a_range_that_can_meet_it():
    """258.8 days against a 1-day deadline suggested --nodes 1:16, which needs 16 days at best."""
    from autoconf.solve.sweep import nodes_for_deadline

    assert nodes_for_deadline(1, 258.8, 1.0) == 1024 and nodes_for_deadline(8, 40, 30) == 32
    assert nodes_for_deadline(4, 31, 30) == 16


def test_the_deadline_advice_stays_within_the_nodes_autoconf_plans():
    """Sixth fuzz round: a deadline of 3.6e-10 s suggested --nodes 1:72057594037927936, which --nodes refuses (at
    most 1,000,000); a deadline over 1,000,000 days was called "not positive"."""
    from autoconf.errors import UserError
    from autoconf.solve.sweep import MAX_NODES, nodes_for_deadline, parse_deadline

    assert nodes_for_deadline(1, 100.0, 1e-14) is None
    assert nodes_for_deadline(1, 100.0, 1e-4) == MAX_NODES == 1_000_000
    with pytest.raises(UserError, match="must be shorter than 1,000,000 days"):
        parse_deadline("1000000w")
    with pytest.raises(UserError, match="must be a positive duration"):
        parse_deadline("0h")


def test_sweep_json_and_front_from_real_plans(tmp_path):
    """`plan --nodes 1:4` plans 1, 2 and 4 nodes; each sweep entry is the best plan of its size with its training
    time; the sizes on the front have days rising and cost falling; the deadline's choice meets it and no cheaper
    size does; the picture is written. Piped (not a terminal, where rich's status line shows nothing), each size
    says on stderr that it is being planned."""
    result = run_cli(SWEEP + ["--nodes", "1:4", "--deadline", "10000d", "--json", "--explain", tmp_path / "x"])
    assert result.exit_code == 0, result.output
    assert "on 1 node (1/3) ..." in result.output and "on 4 nodes (3/3) ..." in result.output
    doc = json.loads(result.output[result.output.index("{"):])
    assert [e["nodes"] for e in doc["sweep"]] == [1, 2, 4]
    trainings = {e["nodes"]: e["plan"]["prediction"]["training"] for e in doc["sweep"]}
    for e in doc["sweep"]:
        assert e["plan"]["cluster"]["nodes"] == e["nodes"]
        assert trainings[e["nodes"]]["days"] == 2e12 / e["plan"]["prediction"]["tokens_per_s"] / 86400
    chosen = trainings[doc["chosen_nodes"]]
    assert chosen["days"] <= 10000
    assert all(t["cost"] >= chosen["cost"] for t in trainings.values() if t["days"] <= 10000)
    assert doc["plans"][0]["cluster"]["nodes"] == doc["chosen_nodes"]
    assert doc["search"]["sizes"] == 3 and doc["search"]["feasible"] >= 3 and doc["search"]["candidates"] > 0
    assert (tmp_path / "x" / "sweep.png").stat().st_size > 0


@pytest.mark.parametrize("extra, needle", [
    (["--price", "-3"], "--price"),
    (["--price", "nan"], "--price"),
    (["--nodes", "8:4"], "--nodes"),
    (["--nodes", "a:b"], "--nodes"),
    (["--nodes", "0:4"], "--nodes"),
    (["--nodes", "1:100000:1"], "--nodes"),
    (["--tokens", "2X"], "--tokens"),
    (["--tokens", "0"], "--tokens"),
    (["--deadline", "0d"], "--deadline"),
    (["--deadline", "soon"], "--deadline"),
])
def test_bad_prices_ranges_tokens_and_deadlines_get_one_line(extra, needle):
    from tests.test_bad_input import assert_one_clear_error

    args = SWEEP + extra
    if "--tokens" in extra:  # the second --tokens replaces the first
        args = [a for a in SWEEP if a not in ("--tokens", "2T")] + extra
    assert_one_clear_error(run_cli(args), needle)


def test_price_or_deadline_without_tokens_is_refused():
    from tests.test_bad_input import assert_one_clear_error

    base = [a for a in SWEEP if a not in ("--tokens", "2T")]
    assert_one_clear_error(run_cli(base + ["--deadline", "30d"]), "--tokens")
    assert_one_clear_error(run_cli(base + ["--nodes", "1:4"]), "--tokens")


def test_a_range_where_no_size_fits_or_too_many_sizes_is_one_error():
    """No size with a plan: an empty front and a UserError from the deadline pick (not an index error); a step
    range of more than MAX_SWEEP_SIZES sizes is refused before any search."""
    from autoconf.solve.sweep import MAX_SWEEP_SIZES

    empty = [SweepPoint(n, 8 * n, None, "no layout fits in memory") for n in (1, 2)]
    assert pareto_front(empty) == []
    with pytest.raises(UserError, match="no cluster size"):
        cheapest_within(empty, 30)
    with pytest.raises(UserError, match=f"at most {MAX_SWEEP_SIZES}"):
        parse_nodes(f"1:{MAX_SWEEP_SIZES + 1}:1")
    assert len(parse_nodes(f"1:{MAX_SWEEP_SIZES}:1")) == MAX_SWEEP_SIZES
    assert parse_nodes("3:3") == [3] and parse_nodes("3:5") == [3, 5]


@pytest.mark.parametrize("taken,nodes", [("timeline.png", "1:2"), ("torchrun_node0.sh", "1:2"), ("sweep.png", "1:2"),
                                         ("megatron_args.txt", "1")])
def test_a_taken_explain_folder_is_refused_before_the_search(tmp_path, monkeypatch, taken, nodes):
    """A file --explain would overwrite is named before any planning starts (the search is never called), for the
    sweep and for a single size; the user's file is left as it was."""
    from tests.test_bad_input import assert_one_clear_error

    def no_search(*args, **kwargs):
        raise AssertionError("the search ran before the folder was checked")

    monkeypatch.setattr("autoconf.solve.search.search", no_search)
    monkeypatch.setattr("autoconf.solve.sweep.sweep", no_search)
    (tmp_path / taken).write_text("mine")
    result = run_cli(SWEEP + ["--nodes", nodes, "--explain", tmp_path])
    assert_one_clear_error(result, taken)
    assert (tmp_path / taken).read_text() == "mine"


def test_a_deadline_in_m_is_refused_as_ambiguous_and_short_token_counts_are_said():
    """"6m" (minutes or months?) is refused naming both readings; a token count below one step is said to be a
    share of a step, which the time and cost report (none from one step up)."""
    from autoconf.errors import UserError
    from autoconf.solve.sweep import under_one_step

    with pytest.raises(UserError, match="minutes or months.*180d"):
        parse_deadline("6m")
    with pytest.raises(UserError, match="not a duration"):
        parse_deadline("six days")
    assert "0.5 of one step" in under_one_step(2048, 2, 2048) and "4,096 tokens" in under_one_step(2048, 2, 2048)
    assert under_one_step(4096, 2, 2048) is None


def test_a_missed_deadline_still_shows_every_sizes_plan(tmp_path):
    """No size of 1:2 nodes trains 2T tokens within an hour: the table of every size's best plan and time comes
    first (what the sweep found), then the one error line naming the fastest; nothing is written."""
    result = run_cli(SWEEP + ["--nodes", "1:2", "--deadline", "1h", "--out", tmp_path / "p.json"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("autoconf: error:")]
    assert len(errors) == 1 and "no size meets the deadline of 1 hour" in errors[0]
    # (a review at scale: the fastest size being the largest, the line names a range to try, as one size's does)
    assert "try a range, e.g. --nodes 2:" in errors[0], errors[0]
    assert "best plan per cluster size" in result.output and "hours" in result.output.split("autoconf: error:")[0]
    assert not (tmp_path / "p.json").exists()


def test_one_size_that_misses_the_deadline_prints_its_table_before_the_error():
    """Sixth review: `plan --nodes N --tokens T --deadline D` that the size misses exited with the error line alone;
    its table comes first now, as a range's tables do."""
    result = run_cli(SWEEP + ["--nodes", "1", "--deadline", "1h"])
    assert result.exit_code == 2 and "over the deadline of 1 hour" in result.output
    assert result.output.index("step s") < result.output.index("autoconf: error:")


def test_the_hours_of_cpu_ranks_are_not_gpu_hours():
    """A review: a plan on CPU ranks (cpu-local) reported its time to train in "GPU-hours"."""
    args = ["plan", "--model", "tiny-llama", "--global-batch", "8", "--seq-len", "64", "--tokens", "1M", "--top", "1"]
    cpu = run_cli(args + ["--cluster", "cpu-local"])
    assert cpu.exit_code == 0 and "device-hours" in cpu.output and "GPU-hours" not in cpu.output, cpu.output
    gpu = run_cli(args + ["--cluster", "dgx-h100-80g", "--nodes", "1"])
    assert gpu.exit_code == 0 and "GPU-hours" in gpu.output and "device-hours" not in gpu.output, gpu.output
