"""Time and cost to train, and the cluster-size sweep: how many nodes, how long, what it costs.

Plain functions over plans (no torch). One rule for the time to train: `tokens / prediction["tokens_per_s"]`
seconds; GPU-hours are that time on every device of the plan; the cost is GPU-hours at a price per GPU-hour.
The sweep plans each cluster size with the same search as `autoconf plan` and keeps the best plan of each; the
Pareto front holds the sizes that no other size beats in both time and GPU-hours (and so in cost at one price).
"""

from __future__ import annotations

import decimal
import functools
import math
import re
from dataclasses import dataclass

from autoconf.errors import UserError
from autoconf.files import ascii_number, plain
from autoconf.spec.profile_checks import MAX_NODES, MAX_USD_PER_GPU_HOUR

SECONDS_PER_DAY = 86400.0
_COUNT_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12, "P": 10**15}
MAX_TOKENS = 10**18
_DAYS_PER_UNIT = {"d": 1.0, "h": 1 / 24, "w": 7.0}
MAX_SWEEP_SIZES = 64


def parse_tokens(text: str) -> int:
    """'2T', '300B', '1.5e12' or '2000000000000' -> a positive whole number of tokens, read exactly (no float
    rounding) and below MAX_TOKENS."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGTPkmbgtp]?)\s*", str(text))
    if not match:
        raise UserError(f"--tokens {text!r} is not a token count; write e.g. 2T, 300B, 15e12 (K, M, B, T suffixes)")
    try:
        tokens = decimal.Decimal(match.group(1)) * _COUNT_SUFFIX[match.group(2).upper()]
    except decimal.DecimalException:  # an exponent too large to hold (Overflow)
        tokens = decimal.Decimal(MAX_TOKENS)
    if tokens != tokens.to_integral_value():
        raise UserError(f"--tokens {text!r} is not a whole number of tokens; write e.g. 2T, 300B or 15e12")
    if not 1 <= tokens < MAX_TOKENS:
        raise UserError(f"--tokens {text!r} must be at least 1 token and below 1e{round(math.log10(MAX_TOKENS))}")
    return int(tokens)


def nodes_for_deadline(nodes: int, days: float, deadline: float) -> int | None:
    """An upper end for a --nodes range that may meet `deadline`: the nodes that would train in half of it if the
    time fell in proportion to them, at least twice `nodes`, a power-of-two multiple of `nodes` (what a range
    A:B tries) or MAX_NODES where that is fewer; None where even MAX_NODES would not train within the whole
    deadline at that pace."""
    if nodes >= MAX_NODES or days * nodes / MAX_NODES > deadline:
        return None
    factor = 2 ** max(1, math.ceil(math.log2(2 * days / deadline)))
    return min(nodes * factor, MAX_NODES)


def beyond_deadline_advice(nodes: int, gpus_per_node: int, days: float, deadline: float,
                           global_batch: int) -> str:
    """What to try when the best plan on `nodes` needs `days`, over `deadline`: a --nodes range up to
    `nodes_for_deadline`, noting where its devices would outnumber the global batch's sequences; or, where even the
    most nodes would not do, fewer tokens or more time."""
    upper = nodes_for_deadline(nodes, days, deadline)
    if not upper:
        return ("not even the most nodes autoconf plans would train in time at this pace: train fewer tokens or "
                "allow longer")
    advice = f"try a range, e.g. --nodes {nodes}:{upper}"
    if upper * gpus_per_node > global_batch:
        advice += (f" (beyond {global_batch} devices, the global batch, only tensor, pipeline and context "
                   f"parallelism split a step further, at falling efficiency: a larger --global-batch may be needed)")
    return advice


# The longest --deadline read (about 2,700 years: beyond any training run, and finite arithmetic).
MAX_DEADLINE_DAYS = 1e6


def parse_deadline(text: str) -> float:
    """'30d', '36h', '6w', '1e3' (a bare number is days) -> days, > 0. No minutes: "6m" would read as six minutes
    where a user may mean months."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([dhwDHW]?)\s*", str(text))
    if not match and re.fullmatch(r"\s*[0-9.eE+-]+\s*[mM]\s*", str(text)):
        raise UserError(f"--deadline {text!r}: m could mean minutes or months, so it is not read; write days, hours "
                        f"or weeks, e.g. 180d for six months or 0.1h for six minutes")
    if not match:
        raise UserError(f"--deadline {text!r} is not a duration; write e.g. 30d, 36h or 6w (a bare number is days)")
    days = float(match.group(1)) * _DAYS_PER_UNIT[(match.group(2) or "d").lower()]
    if not 0 < days:
        raise UserError(f"--deadline {text!r} must be a positive duration")
    if not days < MAX_DEADLINE_DAYS:
        raise UserError(f"--deadline {text!r} must be shorter than {MAX_DEADLINE_DAYS:,.0f} days")
    return days


# Units of a duration, each with its count per day and the duration in days below which it is used.
DURATION_UNITS = (("second", 86400, 1 / 1440), ("minute", 1440, 1 / 24), ("hour", 24, 2), ("day", 1, math.inf))


def format_days(days: float, like: float | None = None) -> str:
    """A duration in days written the way a user would: seconds below a minute, minutes below an hour, hours below
    two days, else days; with `like`, in the unit `like` days would take (a column of durations in one unit)."""
    unit, per_day, _ = next(u for u in DURATION_UNITS if (days if like is None else like) < u[2])
    value = days * per_day
    digits = 4 if unit == "day" else 3
    return f"{plain(value, digits)} {unit}{'' if plain(value, digits) == '1' else 's'}"


def check_price(price: float) -> float:
    """A price per GPU-hour in US dollars: finite and > 0."""
    if not (isinstance(price, (int, float)) and math.isfinite(price) and 0 < price < MAX_USD_PER_GPU_HOUR):
        raise UserError(f"--price must be a positive number of US dollars per GPU-hour below "
                        f"{MAX_USD_PER_GPU_HOUR:,.0f}, e.g. 2.5 (got {price})")
    return float(price)


def parse_nodes(text: str) -> list[int]:
    """The node counts of `--nodes`: 'N' is one size; 'A:B' every power of two times A from A up to B, plus B
    (8:256 -> 8, 16, 32, 64, 128, 256; 8:100 -> 8, 16, 32, 64, 100); 'A:B:S' every S-th size from A up to B
    (8:64:8 -> 8, 16, ..., 64)."""
    parts = str(text).strip().split(":")
    try:
        if not all(ascii_number(p) for p in parts):
            raise ValueError
        numbers = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--nodes {text!r} must be N, A:B (powers of two from A to B) or A:B:STEP, whole numbers "
                        f"of nodes, e.g. 8:256") from None
    if len(numbers) > 3 or any(n < 1 for n in numbers):
        raise UserError(f"--nodes {text!r} must be N, A:B or A:B:STEP with every number >= 1, e.g. 8:256")
    if any(n > MAX_NODES for n in numbers[:2]):
        raise UserError(f"--nodes {text!r}: at most {MAX_NODES:,} nodes")
    if len(numbers) == 1:
        return numbers
    first, last = numbers[0], numbers[1]
    if last < first:
        raise UserError(f"--nodes {text!r}: the range must go up (A <= B), e.g. 8:256")
    if len(numbers) == 3:
        sizes = range(first, last + 1, numbers[2])  # (counted before it is listed)
    else:
        sizes = [first * 2**k for k in range(int(math.log2(last / first)) + 2) if first * 2**k <= last]
    tail = [last] if sizes[-1] != last else []
    if len(sizes) + len(tail) > MAX_SWEEP_SIZES:
        raise UserError(f"--nodes {text!r} asks for {len(sizes) + len(tail)} cluster sizes; at most "
                        f"{MAX_SWEEP_SIZES} (use a larger step or the power-of-two range A:B)")
    return list(sizes) + tail


def training(prediction: dict, tokens: int, devices: int, price: float | None = None,
             price_source: str | None = None) -> dict:
    """Days, GPU-hours and cost to train on `tokens` tokens at the plan's predicted throughput:
    seconds = tokens / tokens_per_s exactly (the last step is not rounded up); cost is None without a price."""
    seconds = tokens / prediction["tokens_per_s"]
    gpu_hours = seconds / 3600.0 * devices
    out = {"tokens": tokens, "days": seconds / SECONDS_PER_DAY, "gpu_hours": gpu_hours,
           "cost": None if price is None else gpu_hours * price}
    if price is not None:
        out["usd_per_gpu_hour"] = price
        out["price_source"] = price_source or "--price"
    return out


def under_one_step(tokens: int, global_batch: int, seq_len: int) -> str | None:
    """The sentence saying that `tokens` fall short of one training step (global_batch x seq_len tokens), whose
    share `training` reports as the time; None from one step up."""
    per_step = global_batch * seq_len
    if tokens >= per_step:
        return None
    return (f"{tokens:,} tokens are {tokens / per_step:.2g} of one step ({global_batch} x {seq_len} = {per_step:,} "
            f"tokens): the time and cost are that share of one step's")


def price_of(cluster, price: float | None) -> tuple[float | None, str | None]:
    """--price if given, else the profile's published price (with its source), else (None, None)."""
    if price is not None:
        return check_price(price), "--price"
    if cluster.price:
        return float(cluster.price["usd_per_gpu_hour"]), str(cluster.price.get("source", cluster.name))
    return None, None


@dataclass
class SweepPoint:
    """One cluster size: its best plan, or why none fits."""

    nodes: int
    devices: int
    plan: object | None  # spec.plan.Plan
    reason: str = ""
    stats: dict | None = None  # the search's statistics at this size (None when it refused the size)

    @property
    def training(self) -> dict | None:
        return None if self.plan is None else self.plan.prediction.get("training")

    def to_dict(self) -> dict:
        out = {"nodes": self.nodes, "plan": None if self.plan is None else self.plan.to_dict()}
        if self.plan is None:
            out["reason"] = self.reason
        return out


def sweep(model, cluster, node_counts: list[int], global_batch: int, seq_len: int, dtype: str, attention: str,
          fixed: dict, execution, tokens: int, price: float | None, price_source: str | None,
          progress=None, search_progress=None) -> list[SweepPoint]:
    """The best plan at each node count (the search of `autoconf plan`, top 1), each with `prediction.training`.
    `progress(nodes)` is called before each size, `search_progress(nodes, line)` where its search says how far it
    has gone (`search`'s `progress`)."""
    from autoconf.solve.search import search
    points = []
    for nodes in node_counts:
        if progress is not None:
            progress(nodes)
        sized = cluster.resized(nodes=nodes)
        told = None if search_progress is None else functools.partial(search_progress, nodes)
        try:
            result = search(model, sized, global_batch, seq_len, dtype, attention, dict(fixed), 1, execution,
                            progress=told)
        except UserError as err:
            points.append(SweepPoint(nodes, sized.world_size, None, str(err)))
            continue
        if not result.plans:
            why = "no layout fits in memory" if result.closest else "no legal layout for this batch"
            points.append(SweepPoint(nodes, sized.world_size, None, why, result.stats))
            continue
        plan = result.plans[0]
        plan.prediction["training"] = training(plan.prediction, tokens, sized.world_size, price, price_source)
        points.append(SweepPoint(nodes, sized.world_size, plan, stats=result.stats))
    return points


def search_stats(points: list[SweepPoint]) -> dict:
    """The `search` object of `plan --json` summed over the sizes searched: candidates, feasible plans, seconds."""
    searched = [p.stats for p in points if p.stats is not None]
    return {"sizes": len(points), "candidates": sum(s["candidates"] for s in searched),
            "feasible": sum(s["feasible"] for s in searched),
            "seconds": round(sum(s["seconds"] for s in searched), 3)}


def pareto_front(points: list[SweepPoint]) -> list[SweepPoint]:
    """The sizes no other size beats in both days and GPU-hours, fastest first: along it the days grow and the
    GPU-hours (and the cost) fall strictly."""
    planned = sorted((p for p in points if p.plan is not None),
                     key=lambda p: (p.training["days"], p.training["gpu_hours"], p.nodes))
    front: list[SweepPoint] = []
    for point in planned:
        if not front or point.training["gpu_hours"] < front[-1].training["gpu_hours"]:
            front.append(point)
    return front


def cheapest_within(points: list[SweepPoint], deadline_days: float, global_batch: int | None = None) -> SweepPoint:
    """The size with the fewest GPU-hours (the lowest cost) among those that train within the deadline (fewest
    nodes on a tie); UserError naming the fastest size when none does, and where a larger size planned was no
    faster, that more nodes do not help at `global_batch` (which caps the data-parallel ranks splitting a step),
    else the range of sizes to try (`beyond_deadline_advice`)."""
    planned = [p for p in points if p.plan is not None]
    if not planned:
        raise UserError("no cluster size in the range has a layout that fits; try more nodes or a smaller batch")
    meeting = [p for p in planned if p.training["days"] <= deadline_days]
    if not meeting:
        fastest = min(planned, key=lambda p: p.training["days"])
        nodes = f"{fastest.nodes} node{'' if fastest.nodes == 1 else 's'}"
        largest = max(p.nodes for p in planned)
        if fastest.nodes < largest:
            batch = f" at global batch {global_batch}" if global_batch else ""
            advice = (f"more nodes did not help (up to {largest} planned): the step stops shrinking{batch}, so "
                      f"raise --global-batch, train fewer tokens or relax --deadline")
        elif global_batch:
            advice = beyond_deadline_advice(fastest.nodes, fastest.devices // fastest.nodes,
                                            fastest.training["days"], deadline_days, global_batch)
        else:
            advice = "widen --nodes or relax --deadline"
        raise UserError(f"no size meets the deadline of {format_days(deadline_days)}: the fastest, {nodes} "
                        f"({fastest.devices} devices), needs {format_days(fastest.training['days'])}; {advice}")
    return min(meeting, key=lambda p: (p.training["gpu_hours"], p.nodes))
