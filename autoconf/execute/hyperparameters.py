"""The training hyperparameters of a run: AdamW's learning-rate schedule (linear warm-up, cosine decay), its weight
decay, the gradient clip and the weight of the multi-token-prediction losses.

One table (`HYPERPARAMETERS`) that the worker's `TrainOptions` defaults, its command line
(`python -m autoconf.execute.train`), `autoconf launch`'s options and their checks all read, so a value `launch`
accepts is one the worker takes, and both refuse the same values in one line naming what would work.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

# Megatron-Core's default mtp_loss_scaling_factor (DeepSeek-V3 trained with 0.3, then 0.1).
DEFAULT_MTP_LOSS_SCALE = 0.1


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: its `TrainOptions` field, type, default (None: derived, see `help`), the range it must lie
    in (`low`, above it when `low_open`, else at least it; at most `high` when given) and what it means."""

    field: str
    kind: type
    default: float | int | None
    low: float
    low_open: bool
    high: float | None
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def takes(self) -> str:
        """What the hyperparameter takes, for messages: "an integer" or "a number"."""
        return "an integer" if self.kind is int else "a number"

    def problem(self, value) -> str | None:
        """Why `value` is not allowed (one line naming its type or the allowed range), or None."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.kind is int else numbers.Real):
            return f"{self.flag} takes {self.takes} (got {value!r})"
        if self.kind is float and not math.isfinite(value):
            return f"{self.flag} must be a finite number (got {value})"
        low_ok = value > self.low if self.low_open else value >= self.low
        if low_ok and (self.high is None or value <= self.high):
            return None
        allowed = (f"above {self.low:g}" if self.low_open else f"at least {self.low:g}")
        if self.high is not None:
            allowed = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        return f"{self.flag} must be {allowed} (got {value:g})"


HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    # (AdamW moves each weight by about the learning rate a step, above 1 far beyond a weight's scale; a rate past
    # fp32's range failed the worker's optimizer step with a traceback)
    Hyperparameter("lr", float, 3e-4, 0.0, True, 1.0, "peak learning rate of AdamW (linear warm-up, then cosine "
                   "decay)"),
    Hyperparameter("min_lr_ratio", float, 0.1, 0.0, False, 1.0, "learning rate at the last step, as a share of the "
                   "peak"),
    Hyperparameter("warmup_steps", int, None, 0, False, None, "steps of linear warm-up (default: a tenth of the "
                   "steps, at least 1)"),
    Hyperparameter("weight_decay", float, 0.1, 0.0, False, None, "AdamW's decoupled weight decay (matrices only)"),
    Hyperparameter("max_grad_norm", float, 1.0, 0.0, False, None, "clip the global gradient norm to this (0: no "
                   "clipping)"),
    Hyperparameter("mtp_loss_scale", float, DEFAULT_MTP_LOSS_SCALE, 0.0, False, None, "weight of the "
                   "multi-token-prediction losses (models with MTP modules; default Megatron-Core's)"),
)
BY_FIELD = {h.field: h for h in HYPERPARAMETERS}


def default_of(field: str):
    """The default value of hyperparameter `field` (None where it is derived)."""
    return BY_FIELD[field].default


def hyperparameter_args(values: dict) -> list[str]:
    """The worker's command-line arguments for `values` (field -> value; None: the worker's default), in the table's
    order. Raises ValueError (one line) for an unknown field or a value of the wrong type or out of its range."""
    unknown = sorted(set(values) - set(BY_FIELD))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(BY_FIELD)}")
    args = []
    for h in HYPERPARAMETERS:
        value = values.get(h.field)
        if value is None:
            continue
        problem = h.problem(value)
        if problem:
            raise ValueError(problem)
        args += [h.flag, repr(h.kind(value))]
    return args


def schedule_problem(steps: int, warmup_steps: int | None) -> str | None:
    """Why a run of `steps` steps cannot take `warmup_steps` of warm-up (one line), or None: a warm-up past the
    run's last step never reaches the peak learning rate."""
    if warmup_steps is not None and warmup_steps > steps:
        return (f"--warmup-steps {warmup_steps} exceeds --steps {steps}: the learning rate would still be warming up "
                f"when the run ends; use at most {steps} (default: a tenth of the steps)")
    return None


def parse_hyperparameter(h: Hyperparameter, text: str):
    """`text` (a command-line word) as hyperparameter `h`'s value. Raises ValueError (one line) unless it is a
    number in ASCII digits (an integer where `h` takes one) inside `h`'s range: what `autoconf launch` accepts."""
    from autoconf.files import ascii_number

    if not ascii_number(text, integer=h.kind is int):
        raise ValueError(f"{h.flag} takes {h.takes} in ASCII digits (got {text!r})")
    value = h.kind(text)
    problem = h.problem(value)
    if problem:
        raise ValueError(problem)
    return value
