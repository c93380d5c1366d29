"""The training hyperparameters (execute/hyperparameters.py): what `autoconf launch` accepts, the worker reads back
unchanged, and both refuse the same values in one line."""

from __future__ import annotations

import math
import shlex

import pytest
from click.testing import CliRunner

from autoconf.cli import main
from autoconf.errors import UserError
from autoconf.execute.hyperparameters import HYPERPARAMETERS
from autoconf.spec.presets import PRESETS
from plan_helpers import even_plan

CHOSEN = {"lr": 1.5e-3, "min_lr_ratio": 0.05, "warmup_steps": 7, "weight_decay": 0.01, "max_grad_norm": 0.5,
          "mtp_loss_scale": 0.3}


def _bad_values(h) -> list:
    """Values out of `h`'s range: below it, above it where bounded, and (floats) not finite."""
    bad = [h.low if h.low_open else h.low - 1]
    if h.high is not None:
        bad.append(h.high + 1)
    if h.kind is float:
        bad += [math.nan, math.inf]
    return bad


@pytest.fixture()
def plan_path(tmp_path):
    path = tmp_path / "plan.json"
    even_plan(PRESETS["tiny-llama"], dp=2).save(path)
    return path


def _worker_args(output: str) -> list[str]:
    """The worker's arguments in a dry run's printed command."""
    words = shlex.split(output.strip().splitlines()[-1])
    return words[words.index("autoconf.execute.train") + 1:]


def test_the_worker_reads_back_every_hyperparameter_launch_was_given(plan_path):
    """A dry run with every hyperparameter set prints a command whose worker arguments parse to those values (and
    into TrainOptions); without them the command carries none and the worker takes the table's defaults."""
    from autoconf.execute.train import parse_args

    assert set(CHOSEN) == {h.field for h in HYPERPARAMETERS}
    flags = [word for h in HYPERPARAMETERS for word in (h.flag, str(CHOSEN[h.field]))]
    result = CliRunner().invoke(main, ["launch", str(plan_path), "--dry-run", "--steps", "40"] + flags)
    assert result.exit_code == 0, result.output
    args = parse_args(_worker_args(result.output))
    for h in HYPERPARAMETERS:
        assert getattr(args, h.field) == CHOSEN[h.field], h.field
    plain = CliRunner().invoke(main, ["launch", str(plan_path), "--dry-run"])
    assert plain.exit_code == 0, plain.output
    assert not any(h.flag in plain.output for h in HYPERPARAMETERS)
    defaults = parse_args(_worker_args(plain.output))
    for h in HYPERPARAMETERS:
        assert getattr(defaults, h.field) == h.default, h.field


@pytest.mark.parametrize("h", HYPERPARAMETERS, ids=lambda h: h.field)
def test_a_value_out_of_range_is_refused_in_one_line_by_launch_and_the_worker(h, plan_path, capsys):
    """`autoconf launch` refuses it before anything starts (one line naming the range, no traceback), as its Python
    API and the worker's own command line do."""
    from autoconf.execute.launch import launch
    from autoconf.execute.train import parse_args

    for value in _bad_values(h):
        result = CliRunner().invoke(main, ["launch", str(plan_path), "--dry-run", h.flag, str(value)])
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("autoconf: error:") and h.flag in lines[0], result.output
        assert "must be" in lines[0], result.output
        with pytest.raises(UserError, match="must be"):
            launch(plan_path, steps=5, dry_run=True, hyperparameters={h.field: value})
        with pytest.raises(SystemExit):
            parse_args(["--plan", "p.json", "--steps", "1", h.flag, str(value)])
        assert "must be" in capsys.readouterr().err


def test_a_learning_rate_past_one_is_refused_before_the_worker_starts(plan_path):
    """`--lr 1e300` was taken, and each worker failed its first optimizer step with a traceback (the rate does not
    fit fp32); the open floor is named as open."""
    from autoconf.execute.train import parse_args

    for value in ("1e300", "1.5"):
        result = CliRunner().invoke(main, ["launch", str(plan_path), "--dry-run", "--lr", value])
        assert result.exit_code == 2 and "--lr" in result.output and "must be in (0, 1]" in result.output, \
            result.output
        with pytest.raises(SystemExit):
            parse_args(["--plan", "p.json", "--steps", "1", "--lr", value])
    assert CliRunner().invoke(main, ["launch", str(plan_path), "--dry-run", "--lr", "1"]).exit_code == 0


def test_a_warm_up_longer_than_the_run_is_refused_by_launch_and_the_worker(plan_path, capsys):
    """`--warmup-steps 100 --steps 20` was taken: the learning rate never reached its peak. Now one line from launch
    and from the worker; a warm-up of every step is taken."""
    from autoconf.execute.train import parse_args

    result = CliRunner().invoke(main, ["launch", str(plan_path), "--dry-run", "--steps", "20", "--warmup-steps",
                                       "100"])
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and "--warmup-steps 100 exceeds --steps 20" in lines[0], \
        result.output
    with pytest.raises(SystemExit):
        parse_args(["--plan", "p.json", "--steps", "20", "--warmup-steps", "21"])
    assert "use at most 20" in capsys.readouterr().err
    assert CliRunner().invoke(main, ["launch", str(plan_path), "--dry-run", "--steps", "20", "--warmup-steps",
                                     "20"]).exit_code == 0


@pytest.mark.parametrize("h", HYPERPARAMETERS, ids=lambda h: h.field)
def test_the_ends_of_each_range_are_taken(h, plan_path):
    """A range's closed end (a floor of 0, the ratio's 1) is a value both launch and the worker take; an open end's
    neighbour above it too."""
    from autoconf.execute.train import parse_args

    ends = [h.low * 1.5 + 1e-6 if h.low_open else h.low] + ([h.high] if h.high is not None else [])
    for value in ends:
        text = str(h.kind(value))
        result = CliRunner().invoke(main, ["launch", str(plan_path), "--dry-run", h.flag, text])
        assert result.exit_code == 0, result.output
        assert getattr(parse_args(_worker_args(result.output)), h.field) == h.kind(value)


def test_the_worker_builds_its_options_from_every_hyperparameter():
    """`train_options` (what the worker's main trains with) carries every hyperparameter its command line read."""
    from autoconf.execute.train import parse_args, train_options

    flags = [word for h in HYPERPARAMETERS for word in (h.flag, str(CHOSEN[h.field]))]
    opts = train_options(parse_args(["--plan", "p.json", "--steps", "40"] + flags))
    assert {h.field: getattr(opts, h.field) for h in HYPERPARAMETERS} == CHOSEN


def test_the_python_api_refuses_what_the_command_line_would(plan_path):
    """launch(hyperparameters=...) refuses a value of the wrong type (a float or a bool for an integer, a string for
    a number, an infinite integer) in one line, as it does one out of range, and an unknown name."""
    from autoconf.execute.launch import launch

    for values in ({"warmup_steps": 2.7}, {"warmup_steps": True}, {"warmup_steps": math.inf}, {"lr": "0.1"},
                   {"learning_rate": 0.1}):
        with pytest.raises(UserError) as refused:
            launch(plan_path, steps=5, dry_run=True, hyperparameters=values)
        assert "\n" not in str(refused.value), values


def test_a_resume_says_which_hyperparameters_changed(tmp_path):
    """A checkpoint records the hyperparameters it was trained with; resuming with others says which, in one
    note, and with the same ones says nothing."""
    from autoconf.execute.train import TrainOptions, check_resumable

    plan = even_plan(PRESETS["tiny-llama"])
    meta = {"seed": 0, "data": None, "model": plan.model.to_dict(), "steps": 5,
            "hyperparameters": {h.field: h.default for h in HYPERPARAMETERS}}
    said: list[str] = []
    check_resumable(tmp_path, meta, plan, TrainOptions(steps=5), said.append)
    assert said == []
    check_resumable(tmp_path, meta, plan, TrainOptions(steps=5, lr=1e-3, weight_decay=0.0), said.append)
    assert len(said) == 1 and "--lr 0.0003 -> 0.001" in said[0] and "--weight-decay 0.1 -> 0.0" in said[0], said
