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
from autoconf.report.tables import layout_label  # noqa: E402
from autoconf.spec.frameworks import plan_execution  # noqa: E402
from autoconf.spec.plan import Plan  # noqa: E402

GiB = 1024**3
KIND_COLOURS = {"F": "#4C72B0", "B": "#55A868", "I": "#CCB974", "W": "#8172B2"}
KIND_NAMES = {"F": "forward", "B": "backward", "I": "backward (input grad)", "W": "backward (weight grad)"}
COMM_COLOURS = {"allgather": "#DD8452", "reduce": "#C44E52"}
MEMORY_COLOURS = {"params": "#4C72B0", "grads": "#55A868", "optimizer": "#8172B2", "activations": "#DD8452",
                  "other": "#A0A0A0"}
TERM_COLOURS = {"compute": "#4C72B0", "recompute": "#64B5CD", "tp_comm": "#8172B2", "bubble": "#CCCCCC",
                "pp_comm": "#DD8452", "dp_comm": "#C44E52", "step_comm": "#DA8BC3", "optimizer": "#55A868",
                "framework": "#937860"}
MAX_LABELS = 3000  # micro-batch numbers drawn at most (beyond that the picture is a texture anyway)


def plan_cluster(plan: Plan, cluster=None):
    """The cluster profile to re-simulate `plan` on: `cluster` if given, else the bundled/path profile it names."""
    if cluster is not None:
        return cluster
    from autoconf.spec.cluster import load_cluster

    name = plan.cluster.get("name")
    try:
        return load_cluster(str(name), int(plan.cluster.get("nodes", 1)), int(plan.cluster.get("gpus_per_node", 1)))
    except UserError as err:
        raise UserError(f"cannot redraw the timeline: the plan's cluster {name!r} is not available ({err}); "
                        f"pass the cluster profile it was planned on") from None


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


def timeline_png(plan: Plan, path: str | Path, cluster=None) -> Path:
    """The schedule of one step per pipeline rank: F/B/I/W blocks coloured by kind and numbered by micro-batch,
    the DP comm stream (FSDP all-gathers, gradient reductions) as a thin lane under each rank, and the step's tail
    (its own collectives and the optimizer). P2P transfers are not drawn: they are the gaps between dependent
    blocks."""
    timeline, tail = plan_timeline(plan, cluster)
    c = plan.config
    schedule_chunks = c.vpp
    span = timeline.makespan + tail
    unit, scale = _time_unit(span)
    width = 14.0
    height = 1.6 + min(0.75 * c.pp, 12.0)  # many ranks share a readable figure height
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    bar_h, lane_h, lane_gap = 0.56, 0.14, 0.04
    # Points per time unit on the axes, to decide which labels fit in their block.
    axes_pts = width * 72 * 0.86
    pts_per_unit = axes_pts / max(span * scale * 1.02, 1e-12)
    labels = 0
    kinds_seen: set[str] = set()
    comm_seen: set[str] = set()
    for r in range(c.pp):
        y = r
        stages = sorted({a.stage for a, _, _ in timeline.events[r]})
        chunk_of = {s: i for i, s in enumerate(stages)}
        groups: dict[tuple, list] = {}
        for action, start, end in timeline.events[r]:
            groups.setdefault((action.kind, chunk_of[action.stage]), []).append(
                ((start * scale), (end - start) * scale))
            kinds_seen.add(action.kind)
        for (kind, chunk), spans in groups.items():
            ax.broken_barh(spans, (y - bar_h / 2, bar_h), facecolors=_shade(KIND_COLOURS[kind], chunk,
                                                                            schedule_chunks),
                           edgecolors="white", linewidth=0.4)
        for action, start, end in timeline.events[r]:
            text = str(action.microbatch)
            if (end - start) * scale * pts_per_unit > 6.5 * len(text) + 2 and labels < MAX_LABELS:
                face = _shade(KIND_COLOURS[action.kind], chunk_of[action.stage], schedule_chunks)
                ax.text((start + end) / 2 * scale, y, text, ha="center", va="center", fontsize=7,
                        color="white" if _luminance(face) < 0.5 else "black")
                labels += 1
        lane_y = y + bar_h / 2 + lane_gap
        for kind in ("allgather", "reduce"):
            spans = [(s * scale, (e - s) * scale) for k, _, s, e in timeline.comm_events[r] if k == kind and e > s]
            if spans:
                ax.broken_barh(spans, (lane_y, lane_h), facecolors=COMM_COLOURS[kind], edgecolors="none")
                comm_seen.add(kind)
        if tail > 0:
            ax.broken_barh([(timeline.makespan * scale, tail * scale)], (y - bar_h / 2, bar_h),
                           facecolors="#D0D0D0", edgecolors="white", hatch="//", linewidth=0.4)
    ax.set_ylim(c.pp - 0.5 + lane_gap, -0.5 - 0.1)
    ax.set_yticks(range(c.pp))
    ax.set_yticklabels([f"rank {r}\nstages {','.join(map(str, sorted({a.stage for a, _, _ in timeline.events[r]})))}"
                        for r in range(c.pp)], fontsize=8)
    ax.set_xlim(0, span * scale * 1.02)
    ax.set_xlabel(f"time ({unit})")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    handles = [Patch(facecolor=KIND_COLOURS[k], label=KIND_NAMES[k]) for k in "FBIW" if k in kinds_seen]
    handles += [Patch(facecolor=COMM_COLOURS[k], label=f"DP {k}") for k in ("allgather", "reduce") if k in comm_seen]
    if tail > 0:
        handles.append(Patch(facecolor="#D0D0D0", hatch="//", label="step collectives + optimizer"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.5 / (height - 1.2)), ncol=len(handles),
              fontsize=8, frameon=False)
    note = "; lighter = later model chunk" if schedule_chunks > 1 else ""
    ax.set_title(f"{plan.model.name}: {layout_label(plan)}, {c.num_microbatches} micro-batches, "
                 f"step {span * scale:.3g} {unit} (bubble {100 * timeline.bubble_fraction:.0f}%){note}",
                 fontsize=10)
    fig.tight_layout()
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
        values = np.array([m.get(kind, 0.0) for m in stages]) / GiB
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
        values = np.array([pl.prediction.get("time_breakdown", {}).get(term, 0.0) for pl in plans]) * scale
        if values.any():
            ax.barh(y, values, left=left, color=TERM_COLOURS[term], label=term, height=0.65)
        left += values
    rest = np.array(totals) * scale - left
    if (rest > 1e-9 * max(totals) * scale).any():  # plans saved without a breakdown
        ax.barh(y, np.clip(rest, 0, None), left=left, color="#EEEEEE", edgecolor="#999999", label="not broken down",
                height=0.65)
    for i, total in enumerate(totals):
        ax.text(total * scale, i, f" {total * scale:.3g} {unit}", va="center", fontsize=7)
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
    from autoconf.files import write_with

    try:
        return write_with(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"), force=force)
    finally:
        plt.close(fig)
