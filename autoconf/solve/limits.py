"""What fits a given cluster: the longest sequence, the largest micro-batch, the largest model of a family.

Each limit is found with the planner itself (`search`, top 1): a value fits when some layout of it fits in device
memory. Memory grows with the sequence length, the micro-batch and the model size, so each limit is a search over
one monotone axis: doubling, then bisection between the last value that fits and the first that does not. Probes
skip the CP-SAT refinement (it changes time, not whether a layout fits); the plan reported for the limit is
searched again with it, as `autoconf plan` would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from autoconf.errors import UserError
from autoconf.spec.plan import MAX_SEQ_LEN

SEQ_GRANULARITY = 256  # the longest sequence is reported in multiples of this many tokens


@dataclass
class Limit:
    """One limit: its value (None when not even the smallest fits), the plan that reaches it, and the values
    probed as (value, fits)."""

    what: str  # "seq_len", "micro_batch_size" or "model"
    value: object
    plan: object | None  # spec.plan.Plan
    probes: list = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        return {"value": self.value, "plan": None if self.plan is None else self.plan.to_dict(),
                "probes": [list(p) for p in self.probes], "note": self.note}


@dataclass
class Planner:
    """The search of `autoconf plan` with everything but the probed axis held."""

    cluster: object
    global_batch: int
    dtype: str
    attention: str
    fixed: dict
    execution: object

    refusal: str | None = None  # why the last `best` had no legal layout at all (the search's one line), else None
    progress: Callable[[str], None] | None = None  # told of each probe and of a long probe's search (`search`)

    def best(self, model, seq_len: int, fixed: dict | None = None, refine: bool = False):
        """The best fitting plan, or None when no layout fits (or none is legal: `refusal` then says why)."""
        from autoconf.solve.search import search

        self.refusal = None
        probe = f"{model.name} at seq {seq_len:,}" + "".join(f", {k} {v}" for k, v in (fixed or {}).items())
        if self.progress is not None:
            self.progress(f"trying {probe}")

        def report(line: str) -> None:
            self.progress(f"{probe}: {line}")
        try:
            result = search(model, self.cluster, self.global_batch, seq_len, self.dtype, self.attention,
                            {**self.fixed, **(fixed or {})}, 1, self.execution, refine=refine,
                            progress=report if self.progress is not None else None)
        except UserError as err:
            self.refusal = str(err)
            return None
        return result.plans[0] if result.plans else None

    def refused(self, value) -> None:
        """Raises the search's refusal when even the smallest probe (`value` None) had no legal layout: the input
        is at fault (a pin, the sequence, the dtype), not the memory, and "none fits" would hide it."""
        if value is None and self.refusal:
            raise UserError(self.refusal)


def _largest(values: list, fits, scan: bool = False) -> tuple[object | None, list]:
    """The largest of the ascending `values` for which `fits(v)` holds, assuming it holds from the first value that
    fits up to some point and not beyond: doubling through the list's indices, then bisection. With `scan`, where the
    first value does not fit, the doubling indices are tried until one does (a sequence too short for any
    context-parallel split may fit nowhere where a longer one fits split). Returns (value or None, probes)."""
    probes = []

    def probe(i: int) -> bool:
        ok = bool(fits(values[i]))
        probes.append((values[i], ok))
        return ok

    if not values:
        return None, probes
    good = next((i for i in (_doubling(len(values)) if scan else [0]) if probe(i)), None)
    if good is None:
        return None, probes
    step = 1
    while True:
        nxt = min(good + step, len(values) - 1)
        if nxt == good:
            return values[good], probes
        if not probe(nxt):
            bad = nxt
            break
        good, step = nxt, step * 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if probe(mid):
            good = mid
        else:
            bad = mid
    return values[good], probes


def _doubling(n: int) -> list[int]:
    """0, 1, 3, 7, ... (2^k - 1) below n, and n - 1: the indices `_largest` looks for a first fitting value at."""
    out, i = [], 0
    while i < n - 1:
        out.append(i)
        i = 2 * i + 1
    return out + [n - 1]


def longest_sequence(planner: Planner, model, ceiling: int | None = None) -> Limit:
    """The longest sequence (a multiple of SEQ_GRANULARITY tokens, or the ceiling itself) with a fitting layout,
    up to `ceiling` (default: the model's context, max_seq_len)."""
    ceiling = min(ceiling or model.max_seq_len, MAX_SEQ_LEN)
    if model.context_problem(ceiling):  # (the ceiling is --max-seq-len here)
        raise UserError(model.context_problem(ceiling).replace("--seq-len", "--max-seq-len"))
    values = list(range(SEQ_GRANULARITY, ceiling + 1, SEQ_GRANULARITY))
    if not values or values[-1] != ceiling:
        values.append(ceiling)
    value, probes = _largest(values, lambda s: planner.best(model, s) is not None, scan=True)
    planner.refused(value)
    note = ""
    if value == ceiling:
        note = f"the ceiling: {model.name}'s context is {ceiling} tokens" if ceiling == model.max_seq_len \
            else f"the ceiling asked for ({ceiling} tokens)"
    plan = None if value is None else planner.best(model, value, refine=True)
    return Limit("seq_len", value, plan, probes, note)


def largest_micro_batch(planner: Planner, model, seq_len: int) -> Limit:
    """The largest micro-batch (a divisor of the global batch) with a fitting layout at `seq_len`."""
    values = [m for m in range(1, planner.global_batch + 1) if planner.global_batch % m == 0]
    if "micro_batch_size" in planner.fixed:
        raise UserError("--fix micro_batch_size pins the micro-batch whose limit is asked for; drop it")
    value, probes = _largest(values, lambda m: planner.best(model, seq_len, {"micro_batch_size": m}) is not None)
    planner.refused(value)
    plan = None if value is None else planner.best(model, seq_len, {"micro_batch_size": value}, refine=True)
    note = "the global batch itself" if value == planner.global_batch else ""
    return Limit("micro_batch_size", value, plan, probes, note)


def family_of(name: str) -> str:
    """The family of a preset name: the part before its first size (a '-'-separated piece that starts with a digit:
    llama3-70b -> llama3, qwen3-30b-a3b -> qwen3, mixtral-8x7b -> mixtral); a name without a size drops its last
    piece (deepseek-v3 -> deepseek, tiny-gpt -> tiny)."""
    pieces = name.split("-")
    for i, piece in enumerate(pieces[1:], start=1):
        if piece[:1].isdigit():
            return "-".join(pieces[:i])
    return "-".join(pieces[:-1]) if len(pieces) > 1 else name


def largest_model(planner: Planner, family: str, seq_len: int | None) -> Limit:
    """The preset of `family` with the most parameters that has a fitting layout (at `seq_len`, or each model's
    context up to 8192 tokens)."""
    from autoconf.spec.presets import PRESETS

    members = sorted((m for name, m in PRESETS.items() if family_of(name) == family), key=lambda m: m.total_params())
    if not members:
        families = sorted({family_of(n) for n in PRESETS})
        raise UserError(f"no preset family {family!r}; families: {', '.join(families)}")

    def length(m) -> int:
        return seq_len or m.default_seq_len

    # A preset that no layout honouring the pins can take (--fix ep=2 on a dense one, tp beyond its heads) is left
    # out: the probes read "does not fit" as too big, and it would cut the family short.
    illegal = {m.name: reason for m in members if (reason := _no_layout_reason(planner, m, length(m)))}
    legal = [m for m in members if m.name not in illegal]
    if not legal:
        raise UserError(next(iter(illegal.values())))
    value, probes = _largest(legal, lambda m: planner.best(m, length(m)) is not None)
    planner.refused(value)
    plan = None if value is None else planner.best(value, length(value), refine=True)
    probes = [(m.name, ok) for m, ok in probes]
    note = f"{len(members)} presets in {family}: {', '.join(m.name for m in members)}"
    if illegal:
        note += "; left out, no layout honours the pins: " + "; ".join(f"{n} ({r})" for n, r in illegal.items())
    return Limit("model", None if value is None else value.name, plan, probes, note)


def _no_layout_reason(planner: Planner, model, seq_len: int) -> str | None:
    """Why the search's space holds no layout of `model` at `seq_len` honouring the planner's pins that breaks no
    rule (`search.first_legal_layout`: the space's one line, or the first rule broken; where the space is empty,
    what the search itself says of such pins, the degrees that would divide the devices), or None when it holds
    one."""
    from autoconf.solve.search import first_legal_layout, no_candidate_message
    from autoconf.solve.space import normalise_fixed

    p = planner
    try:
        layout, problem = first_legal_layout(model, p.cluster, p.global_batch, seq_len, p.dtype, p.attention,
                                             normalise_fixed(p.fixed), p.execution)
    except UserError as err:
        return str(err)
    if layout is not None:
        return None
    return problem or no_candidate_message(model, p.cluster, p.global_batch, seq_len, p.fixed, p.dtype,
                                           p.attention, p.execution)
