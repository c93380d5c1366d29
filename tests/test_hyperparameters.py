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
