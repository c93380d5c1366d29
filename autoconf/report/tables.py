"""Terminal tables (rich) for models, one prediction, and ranked plans."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from autoconf.files import gib_figures, plain
from autoconf.spec.frameworks import plan_execution, selective_policy
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import Plan, counts_text

GiB = 1024**3


def human_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def counted(n: int, noun: str) -> str:
    """'1 node', '8 nodes', '1,024 devices'."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def models_table(models: list[ModelSpec]) -> Table:
    """One row per model; params and active without the multi-token-prediction modules, which the mtp column counts
    (modules, and their own parameters)."""
    table = Table(title="Model presets")
    for col in ("name", "arch", "params", "active", "experts", "mtp", "layers", "hidden", "heads", "kv heads", "ffn",
                "vocab", "max seq"):
        table.add_column(col, justify="left" if col in ("name", "arch") else "right")
    for m in models:
        experts = f"{m.moe.num_experts} top-{m.moe.num_experts_per_tok}" if m.moe else "-"
        mtp = f"{m.mtp_num_layers} (+{human_count(m.mtp_params())})" if m.mtp_num_layers else "-"
        table.add_row(m.name, m.arch, human_count(m.total_params()), human_count(m.active_params()), experts, mtp,
                      str(m.num_layers), str(m.hidden_size), str(m.num_heads), str(m.num_kv_heads),
                      str(m.ffn_hidden_size), str(m.vocab_size), str(m.max_seq_len))
    return table


def profiles_table(clusters: list) -> Table:
    """One row per cluster profile: where its numbers come from, its device, shape, memory and price."""
    table = Table(title="Cluster profiles")
    for col in ("name", "source", "device", "nodes x devices", "memory", "measured tables", "$/GPU-hour"):
        table.add_column(col, justify="right" if col in ("memory", "$/GPU-hour") else "left", no_wrap=True)
    for c in clusters:
        measured = [k for k, present in (("compute", bool(c.compute)), ("collectives", bool(c.collectives)))
                    if present]
        shape = f"{c.nodes} x {c.gpus_per_node}" + (f" ({c.nodes_per_domain} per fabric)" if c.nodes_per_domain > 1
                                                      else "")
        table.add_row(c.name, c.source, c.device.name, shape,
                      f"{c.device.memory_bytes / GiB:.0f} GiB", ", ".join(measured) or "-",
                      f"{c.price['usd_per_gpu_hour']:g}" if c.price else "-")
    return table


LIMIT_NAMES = {"seq_len": "longest sequence", "micro_batch_size": "largest micro-batch", "model": "largest model"}


def limits_table(limits: list, title: str) -> Table:
    """One row per limit: its value and the plan that reaches it (layout, step time, peak memory of the limit)."""
    table = Table(title=title)
    for col in ("limit", "value", "model", "seq", "layout", "step s", "peak GiB", "of GiB"):
        table.add_column(col, justify="right" if col in ("value", "seq", "step s", "peak GiB", "of GiB") else "left",
                         no_wrap=True)
    for limit in limits:
        name = LIMIT_NAMES.get(limit.what, limit.what)
        if limit.plan is None:
            table.add_row(name, "none fits", "", "", "even the smallest value has no layout that fits", "", "", "")
            continue
        plan, p = limit.plan, limit.plan.prediction
        value = f"{limit.value:,}" if isinstance(limit.value, int) else str(limit.value)
        table.add_row(name, value, plan.model.name, f"{plan.config.seq_len:,}", layout_label(plan),
                      plain(p['iteration_time_s'], 4), f"{p['peak_memory_bytes'] / GiB:.1f}",
                      f"{p['memory_limit_bytes'] / GiB:.1f}")
    return table


def layout_label(plan: Plan) -> str:
    """The plan's layout in one line (`ParallelConfig.label`), the selective policy read from its framework."""
    return plan.config.label(selective_policy(plan.config, plan_execution(plan.prediction)))


def prediction_table(plan: Plan) -> Table:
    p = plan.prediction
    c = plan.config
    table = Table(title=f"{plan.model.name} on {plan.cluster['name']} ({counted(c.world_size, 'device')}): "
                        f"{layout_label(plan)}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("iteration time", f"{plain(p['iteration_time_s'], 4)} s")
    table.add_row("tokens/s", f"{p['tokens_per_s']:,.0f}")
    table.add_row("model TFLOP/s per device", f"{p['tflops_per_gpu']:.2f}")
    table.add_row("MFU", f"{100 * p['mfu']:.1f}%")
    table.add_row("micro-batches per step", str(c.num_microbatches))
    # the step's idle share over all pipeline ranks: the bubble and the waits for P2P and DP collectives
    # (simulate.Timeline); the breakdown's terms are the busiest rank's
    table.add_row("idle (all ranks)", f"{100 * p['bubble_fraction']:.1f}%")
    for name, seconds in p.get("time_breakdown", {}).items():
        table.add_row(f"  time: {name}", f"{plain(seconds, 4)} s ({100 * seconds / p['iteration_time_s']:.1f}%)")
    fits = "fits" if p["fits"] else "DOES NOT FIT"
    peak, limit = gib_figures(p["peak_memory_bytes"], p["memory_limit_bytes"], least=2)
    table.add_row("peak memory", f"{peak} GiB of {limit} GiB ({fits})")
    rows = bought_rows(plan)
    if "offload" in rows:
        table.add_row("offload", rows["offload"])
    for rank, m in enumerate(p["memory_per_stage"]):
        table.add_row(f"  pipeline rank {rank}",
                      " ".join(f"{k[:5]} {m[k] / GiB:.2f}" for k in ("params", "grads", "optimizer", "activations",
                                                                       "other")) + f" = {m['total'] / GiB:.2f} GiB")
    for label, value in rows.items():
        if label != "offload":  # (after the ranks' memory, as before)
            table.add_row(label, value)
    table.add_row("compute times from", p.get("compute_source", "specification"))
    if "training" in p:
        for label, value in training_rows(p["training"], hours_name(plan)):
            table.add_row(label, value)
    return table


def bought_rows(plan: Plan) -> dict[str, str]:
    """What the plan's offload and per-stage recompute bought against the same layout without them, as the
    prediction table's rows {label: value} (none where the prediction holds neither): the offload row, labelled
    "offload" (cost/estimate.py `offload_effect`), and the recompute row (solve/search.py `recompute_per_stage`)."""
    p, rows = plan.prediction, {}
    effect = p.get("offload_effect")
    if effect:
        where = ", ".join(f"{term} {plain(seconds, 4, sign=True)} s" for term, seconds in
                          (effect.get("time_cost_by_term_s") or {}).items())
        rows["offload"] = (f"saves {effect['memory_saved_bytes'] / GiB:.2f} GiB per device, costs "
                           f"{plain(effect['time_cost_s'], 4)} s per step{f' (in {where})' if where else ''}, holds "
                           f"{effect['host_memory_per_node_bytes'] / GiB:.1f} GiB of host memory per node"
                           + ("" if effect["without_fits"] else " (does not fit without it)"))
    r = p.get("recompute_per_stage")
    if isinstance(r, dict):
        rows[f"recompute {plan.config.recompute}, first layers per stage [{counts_text(r['layers'])}]"] = (
            f"{plain(p['iteration_time_s'], 4)} s, {p['peak_memory_bytes'] / GiB:.1f} GiB vs every layer: "
            f"{plain(r['every_layer_iteration_time_s'], 4)} s, {r['every_layer_peak_memory_bytes'] / GiB:.1f} GiB"
            + (f"; no layer: {plain(r['torch_ring_iteration_time_s'], 4)} s, "
               f"{r['torch_ring_peak_memory_bytes'] / GiB:.1f} GiB (with a recomputed layer the executor runs its "
               f"own context-parallel attention, else torch's ring)" if "torch_ring_iteration_time_s" in r else ""))
    return rows


def above_peak_note(plans: list[Plan]) -> str | None:
    """The note for plans predicted above the device's peak (MFU over 100%: the model FLOPs of a step take less
    than the profile's peak rate allows), which only a profile whose efficiencies or peak overstate the device
    gives; None where none is."""
    over = [p.prediction["mfu"] for p in plans if isinstance(p.prediction.get("mfu"), (int, float))
            and p.prediction["mfu"] > 1]
    if not over:
        return None
    return (f"MFU {max(over) * 100:.1f}% is above the device's peak: the profile's efficiencies (a fraction of a "
            f"peak, at most 1 on a real device) or its peak rates overstate it; measure the device with `autoconf "
            f"profile`, or correct efficiency in the profile")


def money(usd: float) -> str:
    return f"${usd:,.0f}" if usd >= 100 else f"${usd:,.2f}" if usd >= 0.01 else f"${plain(usd, 2)}"


def hours_name(plan: Plan) -> str:
    """What a plan's device-hours are called: GPU-hours on a GPU cluster (NCCL), device-hours on CPU ranks (gloo)."""
    return "GPU-hours" if plan.cluster.get("backend", "nccl") == "nccl" else "device-hours"


def hours(gpu_hours: float) -> str:
    """GPU-hours in whole hours, with three significant digits below 100 (a short run is not "0")."""
    return plain(gpu_hours, 3)


def training_rows(t: dict, hours_label: str = "GPU-hours") -> list[tuple[str, str]]:
    """The time and cost to train (prediction.training) as (label, value) rows, the device-hours called
    `hours_label` (`hours_name`)."""
    from autoconf.solve.sweep import format_days

    rows = [(f"time to train on {human_count(t['tokens'])} tokens", format_days(t["days"])),
            (hours_label, hours(t["gpu_hours"]))]
    if t.get("cost") is None:
        rows.append(("cost", "pass --price USD_PER_GPU_HOUR (the profile states no price)"))
    else:
        rows.append(("cost", f"{money(t['cost'])} at ${t['usd_per_gpu_hour']:g}/GPU-hour"))
        rows.append(("  price from", t.get("price_source", "")))
    return rows


def sweep_table(points, front, chosen, title: str) -> Table:
    """One row per cluster size: its best layout, time (in the unit of the longest) and cost to train; `*` marks the
    Pareto front and `>` the chosen size."""
    from autoconf.solve.sweep import format_days

    table = Table(title=title)
    planned = [point.plan for point in points if point.plan is not None]
    for col in ("", "nodes", "devices", "layout", "step s", "MFU", "tokens/s", "time",
                hours_name(planned[0]) if planned else "GPU-hours", "cost"):
        table.add_column(col, justify="left" if col in ("", "layout") else "right", no_wrap=True)
    on_front = {id(p) for p in front}
    longest = max((point.training["days"] for point in points if point.plan is not None), default=None)
    for point in points:
        mark = (">" if point is chosen else " ") + ("*" if id(point) in on_front else " ")
        if point.plan is None:
            table.add_row(mark, str(point.nodes), str(point.devices), point.reason, "", "", "", "", "", "")
            continue
        p, t = point.plan.prediction, point.training
        table.add_row(mark, str(point.nodes), str(point.devices), layout_label(point.plan),
                      plain(p['iteration_time_s'], 4), f"{100 * p['mfu']:.1f}%", f"{p['tokens_per_s']:,.0f}",
                      format_days(t["days"], like=longest), hours(t["gpu_hours"]),
                      "-" if t.get("cost") is None else money(t["cost"]))
    return table


BREAKDOWN_COLUMNS = ("compute", "bubble", "tp_comm", "pp_comm", "dp_comm")


def ranked_table(plans: list[Plan], title: str, wide: bool = True) -> Table:
    """The top plans, with their time breakdown in seconds when `wide`, and why each runner-up lost to the first."""
    table = Table(title=title)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("layout", no_wrap=True)
    breakdown = BREAKDOWN_COLUMNS if wide else ()
    # (the breakdown in seconds, not degrees: "tp comm s")
    for col in ("step s", "MFU", "GiB") + tuple(f"{c.replace('_', ' ')} s" for c in breakdown):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("why not #1", min_width=12)
    best = plans[0].prediction if plans else None
    for i, plan in enumerate(plans):
        p = plan.prediction
        b = p.get("time_breakdown", {})
        table.add_row(str(i + 1), layout_label(plan), plain(p['iteration_time_s'], 4), f"{100 * p['mfu']:.1f}%",
                      f"{p['peak_memory_bytes'] / GiB:.1f}",
                      *(plain(b.get(k, 0.0), 2) for k in breakdown),
                      "" if i == 0 else why_slower(p, best))
    return table


def why_slower(p: dict, best: dict) -> str:
    """The breakdown term that grew the most against the best plan, with the total gap."""
    gap = p["iteration_time_s"] - best["iteration_time_s"]
    if gap <= 1e-9 * best["iteration_time_s"]:
        return "tie"
    terms = {k: p.get("time_breakdown", {}).get(k, 0.0) - best.get("time_breakdown", {}).get(k, 0.0)
             for k in set(p.get("time_breakdown", {})) | set(best.get("time_breakdown", {}))}
    if not terms:
        return f"{plain(gap, 2, sign=True)} s"
    worst = max(terms, key=terms.get)
    return f"{plain(gap, 2, sign=True)} s: {worst} {plain(terms[worst], 2, sign=True)}"


def table_console(stderr: bool = False) -> Console:
    """A console for tables: the terminal's width on a terminal; piped or redirected, wide enough that no column is
    cut (rich would otherwise assume 80 columns and shorten names to `gpt3...`). Brackets are printed as they are:
    names and paths are the user's, never rich markup."""
    console = Console(stderr=stderr, markup=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=PIPED_WIDTH, markup=False)
    return console


PIPED_WIDTH = 400


def print_table(table: Table, console: Console | None = None) -> None:
    (console or table_console()).print(table)
