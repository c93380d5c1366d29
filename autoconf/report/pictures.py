"""Pictures of a plan (matplotlib, Agg, PNG): the schedule timeline, memory per pipeline rank, and the top plans'
time breakdowns side by side.

The timeline is the one `estimate()` simulated for the plan; a plan read from a file does not store it, so it is
estimated again (same model, config, partition and mesh) on the cluster profile the plan was made for.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from autoconf.cost.estimate import estimate  # noqa: E402
from autoconf.cost.simulate import Timeline  # noqa: E402
from autoconf.errors import UserError  # noqa: E402
from autoconf.files import plain  # noqa: E402
from autoconf.solve.sweep import format_days  # noqa: E402
from autoconf.report.current import plan_cluster  # noqa: E402
from autoconf.report.tables import hours_name, human_count, layout_label  # noqa: E402
from autoconf.spec.frameworks import plan_execution  # noqa: E402
from autoconf.spec.plan import Plan  # noqa: E402

GiB = 1024**3
KIND_COLOURS = {"F": "#4C72B0", "B": "#55A868", "I": "#CCB974", "W": "#8172B2"}
KIND_NAMES = {"F": "forward", "B": "backward", "I": "backward (input grad)", "W": "backward (weight grad)"}
COMM_COLOURS = {"allgather": "#DD8452", "reduce": "#C44E52"}
MEMORY_COLOURS = {"params": "#4C72B0", "grads": "#55A868", "optimizer": "#8172B2", "activations": "#DD8452",
                  "other": "#A0A0A0"}
# Every term of the estimate's `time_breakdown` (cost/estimate.py `_breakdown`), in its order.
TERM_COLOURS = {"offload": "#17BECF", "compute": "#4C72B0", "recompute": "#64B5CD", "tp_comm": "#8172B2",
                "ep_comm": "#BCBD22", "cp_comm": "#2CA02C", "bubble": "#CCCCCC", "pp_comm": "#DD8452",
                "dp_comm": "#C44E52", "step_comm": "#DA8BC3", "optimizer": "#55A868", "framework": "#937860"}
MAX_LABELS = 3000  # micro-batch numbers drawn at most (beyond that the picture is a texture anyway)


def plan_timeline(plan: Plan, cluster=None) -> tuple[Timeline, float]:
    """The step `estimate()` simulated for the plan, and the seconds of the step's tail after it (its own
    collectives, the optimizer and the step overhead): together they make the plan's `iteration_time_s`."""
    estimated = plan
    if plan.timeline is None or not plan.timeline.events:
        estimated = estimate(plan.model, plan_cluster(plan, cluster), plan.config, partition=plan.partition,
                             mesh=plan.placement["mesh"], execution=plan_execution(plan.prediction))
    timeline = estimated.timeline
    return timeline, estimated.prediction["iteration_time_s"] - timeline.makespan


def _time_unit(seconds: float) -> tuple[str, float]:
    if seconds < 1e-3:
        return "µs", 1e6
    if seconds < 2.0:
        return "ms", 1e3
    return "s", 1.0


def _shade(colour: str, chunk: int, chunks: int) -> tuple:
    """Later model chunks of a rank in lighter shades of the kind's colour."""
    if chunks <= 1:
        return to_rgb(colour)
    mix = 0.55 * chunk / (chunks - 1)
    return tuple(x + (1.0 - x) * mix for x in to_rgb(colour))


def _luminance(rgb: tuple) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


PHASE_ACTIONS = 24  # actions per rank shown in each phase window of a long step


def phase_windows(timeline: Timeline, span: float, pp: int, chunks: int) -> list[tuple[str, float, float]]:
    """The time windows the timeline shows: the whole step when it has few actions per rank; otherwise three
    windows of one length W: the warm-up [0, W], an excerpt of the steady state around the middle of the step, and
    the drain [span - W, span]. W is the longer of the warm-up until the last rank has run K actions and the drain
    from where every rank has K actions left, K = max(PHASE_ACTIONS, 3 x the stages on a rank x pp). Returned as
    (name, start s, end s)."""
    ranks = [ev for ev in timeline.events if ev]
    k = max(PHASE_ACTIONS, 3 * chunks * pp)
    if not ranks or min(len(ev) for ev in ranks) < 4 * k:
        return [("", 0.0, span)]
    warm_end = ranks[-1][k - 1][2]
    drain_start = min(ev[-k][1] for ev in ranks)
    width = max(warm_end, span - drain_start)
    steady = (span / 2 - width / 2, span / 2 + width / 2)
    if not (width < steady[0] and steady[1] < span - width):
        return [("", 0.0, span)]
    return [("warm-up", 0.0, width), ("steady state (excerpt)", *steady), ("drain", span - width, span)]


def _draw_ranks(ax, timeline: Timeline, c, tail: float, scale: float, window: tuple[float, float],
                pts_per_unit: float, bar_h: float, lane_h: float, lane_gap: float) -> tuple[set, set]:
    """Draws every rank's blocks overlapping `window` (seconds), numbered where the number fits; returns the
    kinds of compute and comm drawn."""
    lo, hi = window
    kinds_seen: set[str] = set()
    comm_seen: set[str] = set()
    labels = 0
    for r in range(c.pp):
        stages = sorted({a.stage for a, _, _ in timeline.events[r]})
        chunk_of = {st: i for i, st in enumerate(stages)}
        shown = [(a, st, en) for a, st, en in timeline.events[r] if en >= lo and st <= hi]
        groups: dict[tuple, list] = {}
        for action, start, end in shown:
            groups.setdefault((action.kind, chunk_of[action.stage]), []).append((start * scale,
                                                                                 (end - start) * scale))
            kinds_seen.add(action.kind)
        for (kind, chunk), spans in groups.items():
            ax.broken_barh(spans, (r - bar_h / 2, bar_h), facecolors=_shade(KIND_COLOURS[kind], chunk, c.vpp),
                           edgecolors="white", linewidth=0.4)
        for action, start, end in shown:
            text = str(action.microbatch)
            if (end - start) * scale * pts_per_unit > 6.5 * len(text) + 2 and labels < MAX_LABELS:
                face = _shade(KIND_COLOURS[action.kind], chunk_of[action.stage], c.vpp)
                ax.text((max(start, lo) + min(end, hi)) / 2 * scale, r, text, ha="center", va="center", fontsize=7,
                        color="white" if _luminance(face) < 0.5 else "black", clip_on=True)
                labels += 1
        lane_y = r + bar_h / 2 + lane_gap
        for kind in ("allgather", "reduce"):
            spans = [(st * scale, (en - st) * scale) for k, _, st, en in timeline.comm_events[r]
                     if k == kind and en > st and en >= lo and st <= hi]
            if spans:
                ax.broken_barh(spans, (lane_y, lane_h), facecolors=COMM_COLOURS[kind], edgecolors="none")
                comm_seen.add(kind)
        if tail > 0 and hi >= timeline.makespan:
            ax.broken_barh([(timeline.makespan * scale, tail * scale)], (r - bar_h / 2, bar_h),
                           facecolors="#D0D0D0", edgecolors="white", hatch="//", linewidth=0.4)
    return kinds_seen, comm_seen


def timeline_png(plan: Plan, path: str | Path, cluster=None) -> Path:
    """The schedule of one step per pipeline rank: F/B/I/W blocks coloured by kind and numbered by micro-batch,
    the DP comm stream (FSDP all-gathers, gradient reductions) as a thin lane under each rank, and the step's tail
    (its own collectives and the optimizer). P2P transfers are not drawn: they are the gaps between dependent
    blocks. A step with many micro-batches is drawn as three windows of equal length (warm-up, an excerpt of the
    steady state, drain; `phase_windows`), so that its blocks stay wide enough to read."""
    timeline, tail = plan_timeline(plan, cluster)
    c = plan.config
    span = timeline.makespan + tail
    unit, scale = _time_unit(span)
    windows = phase_windows(timeline, span, c.pp, c.vpp)
    width = 14.0
    height = 1.6 + min(0.75 * c.pp, 12.0)  # many ranks share a readable figure height
    fig, axes = plt.subplots(1, len(windows), figsize=(width, height), dpi=110, sharey=True, squeeze=False)
    axes = axes[0]
    bar_h, lane_h, lane_gap = 0.56, 0.14, 0.04
    kinds_seen: set[str] = set()
    comm_seen: set[str] = set()
    for ax, (name, lo, hi) in zip(axes, windows):
        pad = 0.02 * (hi - lo) if len(windows) == 1 else 0.0
        # Points per time unit on the axes, to decide which labels fit in their block.
        pts_per_unit = width * 72 * 0.86 / len(windows) / max((hi - lo + pad) * scale, 1e-12)
        kinds, comms = _draw_ranks(ax, timeline, c, tail, scale, (lo, hi), pts_per_unit, bar_h, lane_h, lane_gap)
        kinds_seen |= kinds
        comm_seen |= comms
        ax.set_xlim(lo * scale, (hi + pad) * scale)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if name:
            ax.set_title(name, fontsize=9)
            ax.set_xlabel(f"time ({unit})", fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
        else:
            ax.set_xlabel(f"time ({unit})")
    ax = axes[0]
    ax.set_ylim(c.pp - 0.5 + lane_gap, -0.5 - 0.1)
    ax.set_yticks(range(c.pp))
    ax.set_yticklabels([f"rank {r}\nstages {','.join(map(str, sorted({a.stage for a, _, _ in timeline.events[r]})))}"
                        for r in range(c.pp)], fontsize=8)
    handles = [Patch(facecolor=KIND_COLOURS[k], label=KIND_NAMES[k]) for k in "FBIW" if k in kinds_seen]
    handles += [Patch(facecolor=COMM_COLOURS[k], label=f"DP {k}") for k in ("allgather", "reduce") if k in comm_seen]
    if tail > 0:
        handles.append(Patch(facecolor="#D0D0D0", hatch="//", label="step collectives + optimizer"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    note = "; lighter = later model chunk" if c.vpp > 1 else ""
    if len(windows) > 1:
        note += "\nthree windows of equal length; the time between them is not drawn"
    fig.suptitle(f"{plan.model.name}: {layout_label(plan)}, {c.num_microbatches} micro-batches, "
                 f"step {plain(span * scale)} {unit} (idle {100 * timeline.bubble_fraction:.0f}%){note}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, path)


def memory_png(plan: Plan, path: str | Path) -> Path:
    """Predicted memory of each pipeline rank, stacked by kind, against the device limit (GiB)."""
    p = plan.prediction
    stages = p.get("memory_per_stage") or []
    if not stages:
        raise UserError("the plan has no memory prediction (memory_per_stage); re-run estimate or plan")
    limit = p.get("memory_limit_bytes")
    n = len(stages)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.55 * n), 4.2), dpi=110)
    x = np.arange(n)
    bottom = np.zeros(n)
    for kind, colour in MEMORY_COLOURS.items():
        values = np.array([m.get(kind, 0.0) for m in stages], dtype=float) / GiB
        ax.bar(x, values, bottom=bottom, color=colour, label=kind, width=0.7)
        bottom += values
    top = bottom.max() if n else 0.0
    if limit:
        ax.axhline(limit / GiB, color="black", linestyle="--", linewidth=1.2,
                   label=f"device limit {limit / GiB:.1f} GiB")
        top = max(top, limit / GiB)
    if n <= 32:
        for i, total in enumerate(bottom):
            ax.text(i, total + 0.01 * top, f"{total:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)
    ax.set_xticks(x if n <= 32 else x[:: max(1, n // 16)])
    ax.set_xlabel("pipeline rank")
    ax.set_ylabel("GiB per device")
    fits = "fits" if p.get("fits", True) else "DOES NOT FIT"
    ax.set_title(f"{plan.model.name}: {layout_label(plan)}\npeak {p.get('peak_memory_bytes', top * GiB) / GiB:.2f} "
                 f"GiB ({fits})", fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def compare_png(plans: list[Plan], path: str | Path) -> Path:
    """The plans' iteration times as horizontal bars stacked by breakdown term, best (first) on top."""
    if not plans:
        raise UserError("no plans to compare")
    terms = list(TERM_COLOURS)
    totals = [pl.prediction["iteration_time_s"] for pl in plans]
    unit, scale = _time_unit(max(totals))
    n = len(plans)
    fig, ax = plt.subplots(figsize=(11.0, 1.6 + 0.42 * n), dpi=110)
    y = np.arange(n)
    left = np.zeros(n)
    for term in terms:
        values = np.array([pl.prediction.get("time_breakdown", {}).get(term, 0.0) for pl in plans], dtype=float) * scale
        if values.any():
            ax.barh(y, values, left=left, color=TERM_COLOURS[term], label=term, height=0.65)
        left += values
    rest = np.array(totals, dtype=float) * scale - left
    if (rest > 1e-9 * max(totals) * scale).any():  # plans saved without a breakdown
        ax.barh(y, np.clip(rest, 0, None), left=left, color="#EEEEEE", edgecolor="#999999", label="not broken down",
                height=0.65)
    for i, total in enumerate(totals):
        ax.text(total * scale, i, f" {plain(total * scale)} {unit}", va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels([f"#{i + 1} {layout_label(pl)}" for i, pl in enumerate(plans)], fontsize=8)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0, max(totals) * scale * 1.15)
    ax.set_xlabel(f"iteration time ({unit})")
    which = "time breakdown" if n == 1 else f"time breakdown of the top {n} plans"
    ax.set_title(f"{plans[0].model.name}: {which}", fontsize=10)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, force: bool = True) -> Path:
    """Saves through autoconf.files (a temporary renamed into place, never through a link). The callers refuse
    existing files before drawing anything, hence force by default."""
    from autoconf.files import PNG_SOFTWARE, write_with

    try:  # (the Software text marks it as autoconf's: files.drawn_by_autoconf)
        return write_with(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight",
                                                      metadata={"Software": PNG_SOFTWARE}), force=force)
    finally:
        plt.close(fig)


def sweep_png(points, front, chosen, path: str | Path, deadline_days: float | None = None) -> Path:
    """Time to train against cost (or GPU-hours without a price) of the best plan at each cluster size, the Pareto
    front joined by a line, the chosen size ringed, the deadline as a dashed line."""
    planned = [p for p in points if p.plan is not None]
    if not planned:
        raise UserError("no cluster size in the sweep has a plan to draw")
    priced = all(p.training.get("cost") is not None for p in planned)

    def y(p) -> float:
        return p.training["cost"] if priced else p.training["gpu_hours"]

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    on_front = {id(p) for p in front}
    rest = [p for p in planned if id(p) not in on_front]
    if rest:
        ax.scatter([p.training["days"] for p in rest], [y(p) for p in rest], color="#A0A0A0", s=28, zorder=2,
                   label="dominated size")
    ax.plot([p.training["days"] for p in front], [y(p) for p in front], "-o", color="#4C72B0", markersize=6,
            zorder=3, label="Pareto front (no other size is both faster and cheaper)")
    for p in planned:
        ax.annotate(f"{p.nodes}x{p.devices // p.nodes}", (p.training["days"], y(p)), textcoords="offset points",
                    xytext=(5, 4), fontsize=7)
    if chosen is not None:
        ax.scatter([chosen.training["days"]], [y(chosen)], s=160, facecolors="none", edgecolors="#C44E52",
                   linewidths=1.8, zorder=4, label=f"chosen: {chosen.nodes} nodes")
    if deadline_days is not None:
        ax.axvline(deadline_days, color="#C44E52", linestyle="--", linewidth=1.0,
                   label=f"deadline {format_days(deadline_days)}")
    from matplotlib.ticker import FuncFormatter

    values = [y(p) for p in planned]
    days = [p.training["days"] for p in planned]
    if max(days) > 8 * min(days):
        ax.set_xscale("log")
    if max(values) > 8 * min(values):
        ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.3g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:,.3g}" if str(f"{v:.3g}")[0] in "25" else ""))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel("days to train")
    if priced:
        ax.set_ylabel(f"cost (USD at ${planned[0].training['usd_per_gpu_hour']:g}/GPU-hour)")
    else:
        ax.set_ylabel(f"{hours_name(planned[0].plan)} (no price given)")
    plan = planned[0].plan
    ax.set_title(f"{plan.model.name}: {human_count(planned[0].training['tokens'])} tokens, global batch "
                 f"{plan.config.global_batch_size}, seq {plan.config.seq_len}", fontsize=10)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)



def worst_rank_png(plan: Plan, path: str | Path) -> Path:
    """The memory of the rank that needs the most, as one bar split into weights, gradients, optimizer states,
    activations and the rest (each labelled in GiB and as a share), against the device limit."""
    p = plan.prediction
    stages = p.get("memory_per_stage") or []
    if not stages:
        raise UserError("the plan has no memory prediction (memory_per_stage); re-run estimate or plan")
    worst = max(range(len(stages)), key=lambda r: stages[r]["total"])
    m = stages[worst]
    limit = p.get("memory_limit_bytes") or 0.0
    fig, ax = plt.subplots(figsize=(9.0, 2.6), dpi=110)
    left = 0.0
    for kind, colour in MEMORY_COLOURS.items():
        value = m.get(kind, 0.0) / GiB
        if value <= 0:
            continue
        ax.barh([0], [value], left=left, color=colour, height=0.5, label=f"{kind} {value:.2f} GiB")
        if value > 0.06 * max(m["total"], limit) / GiB:
            ax.text(left + value / 2, 0, f"{kind}\n{value:.1f} GiB\n{100 * value * GiB / m['total']:.0f}%",
                    ha="center", va="center", fontsize=7, color="white" if kind != "other" else "black")
        left += value
    if limit:
        ax.axvline(limit / GiB, color="black", linestyle="--", linewidth=1.2, label=f"device {limit / GiB:.1f} GiB")
    ax.set_xlim(0, max(left, limit / GiB) * 1.08)
    ax.set_yticks([])
    ax.set_xlabel("GiB")
    fits = "fits" if p.get("fits", True) else "DOES NOT FIT"
    ax.set_title(f"{plan.model.name}: {layout_label(plan)}\nworst rank: pipeline rank {worst} of {len(stages)}, "
                 f"{m['total'] / GiB:.2f} GiB of {limit / GiB:.1f} GiB ({fits})", fontsize=9)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)
