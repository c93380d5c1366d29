"""`autoconf validate`: run K layouts for N steps each, compare measured with predicted step times, calibrate.

    DIR/runs/<i>/plan.json        the layout (the planner's best is run 0)
    DIR/runs/<i>/metrics.jsonl    the executor's metrics; the summary's median step time after warm-up is "measured"
    DIR/runs/<i>/log.txt          torchrun's output
    DIR/report.json               {"runs": [{"config", "predicted_s", "measured_s", "predicted_peak_bytes" (the
                                   plan's peak_memory_bytes less the device's memory_overhead_bytes, which the
                                   allocator's peak does not count), "measured_peak_bytes" (GPU runs: allocator
                                   peaks), ...}], "median_abs_error", "spearman", "regret", "calibration",
                                   "memory_median_abs_error"}
    DIR/scatter.png               predicted vs measured
    DIR/calibrated_profile.json   with --calibrate: the profile with the fitted factors (never the input file)

A run that fails is recorded with its error and the others go on. Runs are started through a `runner` (default: the
bundled executor under torchrun on this host, `autoconf.execute.launch.build_commands`), so an environment that
starts ranks elsewhere (a multi-node testbed) passes its own.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoconf.errors import UserError
from autoconf.spec.cluster import ClusterProfile, load_cluster
from autoconf.spec.dtypes import check_trainable_dtype, default_dtype
from autoconf.spec.model import ModelSpec
from autoconf.files import check_new, is_version, write_file
from autoconf.solve.space import pin_text
from autoconf.spec.plan import Plan
from autoconf.validate.stats import median_abs_error, regret, spearman

REPORT_VERSION = 1
RUN_TIMEOUT_S = 900.0
# The most layouts one validation runs: each is a torchrun start and --steps steps, one after the other (about 15 s on
# a CPU host, minutes on GPUs), so 64 already take a quarter of an hour to hours; --configs 1000 had no bound.
MAX_CONFIGS = 64
# (plan_path, metrics_path, log_path, steps) -> exit code
Runner = Callable[[Path, Path, Path, int], int]


def local_runner(plan_path: Path, metrics_path: Path, log_path: Path, steps: int,
                 timeout_s: float = RUN_TIMEOUT_S) -> int:
    """The plan under torchrun on this host (all ranks local), output to `log_path`; 124 on timeout. Supervised as
    `launch` runs it (`run_supervised`): a signal to validate ends torchrun and its workers, then validate itself."""
    from autoconf.execute.launch import build_commands, run_supervised, worker_environment

    command = build_commands(plan_path, steps, metrics=str(metrics_path), force=True)[0]
    if metrics_path.exists():
        metrics_path.unlink()
    env = worker_environment()
    with open(log_path, "w") as log:
        code = run_supervised(command, env, output=log, timeout_s=timeout_s, exit_on_signal=True)
        if code == 124:
            log.write(f"\nautoconf validate: run exceeded {timeout_s:.0f} s and was stopped\n")
        return code


@dataclass
class Run:
    index: int
    label: str
    config: dict
    predicted_s: float
    measured_s: float | None = None
    chosen: bool = False
    status: str = "pending"  # "ok" or "failed"
    failure: str | None = None
    step_times_s: list = field(default_factory=list)
    wall_s: float | None = None
    dir: str = ""
    repeats_s: list | None = None  # each repeat's measured time, when the layouts ran more than once
    predicted_peak_bytes: float | None = None
    measured_peak_bytes: float | None = None  # device memory (GPU runs only: a CPU rank's RSS is not comparable)

    @property
    def memory_error(self) -> float | None:
        if self.measured_peak_bytes is None or self.predicted_peak_bytes is None:
            return None
        return (self.predicted_peak_bytes - self.measured_peak_bytes) / self.measured_peak_bytes

    @property
    def error(self) -> float | None:
        if self.measured_s is None:
            return None
        return (self.predicted_s - self.measured_s) / self.measured_s


@dataclass
class Report:
    model: str
    cluster: str
    global_batch: int
    seq_len: int
    steps: int
    runs: list[Run]
    median_abs_error: float | None = None
    spearman: float | None = None
    regret: float | None = None
    calibration: dict | None = None
    memory_median_abs_error: float | None = None  # peak device memory, over the runs that measured it (GPU)

    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.status == "ok"]

    def summarise(self) -> "Report":
        ok = self.ok_runs()
        predicted, measured = [r.predicted_s for r in ok], [r.measured_s for r in ok]
        self.median_abs_error = median_abs_error(predicted, measured)
        self.spearman = spearman(predicted, measured)
        chosen = next((i for i, r in enumerate(ok) if r.chosen), None)
        self.regret = regret(measured, chosen) if chosen is not None else None
        memory = [r for r in ok if r.memory_error is not None]
        self.memory_median_abs_error = (median_abs_error([r.predicted_peak_bytes for r in memory],
                                                         [r.measured_peak_bytes for r in memory]) if memory else None)
        return self

    def to_dict(self) -> dict:
        runs = []
        for r in self.runs:
            d = asdict(r)
            d["error"] = r.error
            d["memory_error"] = r.memory_error
            runs.append(d)
        return {"version": REPORT_VERSION, "kind": "validation", "model": self.model, "cluster": self.cluster,
                "global_batch": self.global_batch, "seq_len": self.seq_len, "steps": self.steps, "runs": runs,
                "median_abs_error": self.median_abs_error, "spearman": self.spearman, "regret": self.regret,
                "calibration": self.calibration, "memory_median_abs_error": self.memory_median_abs_error}

    @classmethod
    def from_dict(cls, data: dict, source: str = "report") -> "Report":
        if (not isinstance(data, dict) or data.get("kind") != "validation"
                or not is_version(data.get("version"), REPORT_VERSION)):
            raise UserError(f"{source}: not a validation report (version {REPORT_VERSION})")
        fields = set(Run.__dataclass_fields__)
        runs = [Run(**{k: v for k, v in r.items() if k in fields}) for r in data["runs"]]
        return cls(model=data["model"], cluster=data["cluster"], global_batch=data["global_batch"],
                   seq_len=data["seq_len"], steps=data["steps"], runs=runs,
                   median_abs_error=data.get("median_abs_error"), spearman=data.get("spearman"),
                   regret=data.get("regret"), calibration=data.get("calibration"),
                   memory_median_abs_error=data.get("memory_median_abs_error"))


def load_report(path: str | Path) -> Report:
    path = Path(path)
    try:
        return Report.from_dict(json.loads(path.read_text()), source=str(path))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"cannot read validation report {path}: {err}") from None


def read_metrics(path: Path) -> tuple[float | None, list[float], str | None]:
    """(measured median step time, every step time, why there is none) from a metrics file."""
    if not path.exists():
        return None, [], "no metrics file was written"
    times, summary = [], None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "summary" in record:
            summary = record["summary"]
        elif "step_time_s" in record:
            times.append(float(record["step_time_s"]))
    if summary is None or summary.get("measured_iteration_time_s") is None:
        return None, times, "the metrics file has no summary (the run did not finish)"
    return float(summary["measured_iteration_time_s"]), times, None


def device_peak_memory(path: Path) -> float | None:
    """The measured peak device memory (bytes, max over ranks) from a metrics file's summary; None when the run
    was on CPU (its RSS growth is not the device memory the estimator predicts) or did not finish."""
    if not path.exists():
        return None
    for line in reversed(path.read_text().splitlines()):
        try:
            summary = json.loads(line).get("summary")
        except (json.JSONDecodeError, AttributeError):
            continue
        if summary is not None:
            if str(summary.get("peak_memory_kind", "")).startswith("cuda"):
                value = summary.get("measured_peak_memory_bytes")
                return float(value) if value is not None else None
            return None
    return None


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def run_plans(plans: list[Plan], out_dir: Path, steps: int, runner: Runner = local_runner, force: bool = False,
              log: Callable[[str], None] = print, repeats: int = 1, runtime_memory_bytes: float = 0.0) -> list[Run]:
    """Writes and runs each plan; plans[0] is the planner's choice. With `repeats` > 1 the whole list is run that
    many times in turn (so a slow spell of the host touches every layout alike) and a layout's measured time is the
    median over its successful repeats; repeat r > 0 writes `metrics.<r>.jsonl` / `log.<r>.txt` beside the first.
    A run's predicted peak memory is the plan's less `runtime_memory_bytes` (the profile's CUDA context and runtime,
    which torch's allocator, whose peak the executor reports, does not count)."""
    from autoconf.report.tables import layout_label

    runs = []
    for i, plan in enumerate(plans):
        predicted_peak = plan.prediction.get("peak_memory_bytes")
        runs.append(Run(index=i, label=layout_label(plan), config=plan.config.to_dict(),
                        predicted_s=float(plan.prediction["iteration_time_s"]), chosen=(i == 0), dir=f"runs/{i}",
                        predicted_peak_bytes=(float(predicted_peak) - runtime_memory_bytes
                                              if predicted_peak is not None else None)))
        plan.save(out_dir / "runs" / str(i) / "plan.json", force=force)
    measured: list[list[float]] = [[] for _ in plans]
    started = time.perf_counter()
    for r in range(repeats):
        for i, run in enumerate(runs):
            run_dir = out_dir / "runs" / str(i)
            suffix = f".{r}" if r else ""
            metrics_path, log_path = run_dir / f"metrics{suffix}.jsonl", run_dir / f"log{suffix}.txt"
            again = f" (repeat {r + 1}/{repeats})" if repeats > 1 else ""
            log(f"[{i + 1}/{len(plans)}] {run.label}: predicted {run.predicted_s:.4g} s, running {steps} steps"
                f"{again}{time_left(time.perf_counter() - started, r * len(runs) + i, repeats * len(runs))} ...")
            start = time.perf_counter()
            failure = None
            try:
                code = runner(run_dir / "plan.json", metrics_path, log_path, steps)
            except UserError as err:
                code, failure = -1, str(err)
            run.wall_s = round((run.wall_s or 0.0) + time.perf_counter() - start, 2)
            value, times, why = read_metrics(metrics_path)
            if code == 0 and value is not None:
                measured[i].append(value)
                run.step_times_s = run.step_times_s + times
                peak = device_peak_memory(metrics_path)
                if peak is not None:
                    run.measured_peak_bytes = max(run.measured_peak_bytes or 0.0, peak)
                log(f"    measured {value:.4g} s ({100 * (run.predicted_s - value) / value:+.1f}%)" +
                    (f", peak memory {peak / 2 ** 30:.2f} GiB ({100 * run.memory_error:+.1f}%)"
                     if run.memory_error is not None else ""))
            else:
                run.failure = failure or f"exit code {code}: {why or ''} {_tail(log_path)}".strip()
                log(f"    failed: {run.failure}")
    for run, values in zip(runs, measured):
        if values:
            run.status, run.measured_s = "ok", float(statistics.median(values))
            if repeats > 1:
                run.repeats_s = values
        else:
            run.status = "failed"
    return runs


_RUN_FILE = re.compile(r"(?:metrics(?:\.([1-9][0-9]*))?\.jsonl|log(?:\.([1-9][0-9]*))?\.txt|plan\.json)")


def stale_run_files(out_dir: Path, count: int, repeats: int) -> list[Path]:
    """The files an earlier validation wrote under out_dir/runs that one of `count` layouts run `repeats` times does
    not write again (`run_plans`' names: runs/<i>/plan.json, metrics[.<r>].jsonl, log[.<r>].txt for a layout i >=
    count or a repeat r >= repeats), which report.json would not list; a user's other files, links and folders are
    not among them."""
    out = []
    runs = out_dir / "runs"
    for folder in sorted(runs.iterdir()) if runs.is_dir() and not runs.is_symlink() else ():
        if not folder.name.isdigit() or str(int(folder.name)) != folder.name or folder.is_symlink():
            continue
        for path in sorted(folder.iterdir()) if folder.is_dir() else ():
            match = _RUN_FILE.fullmatch(path.name)
            if match is None or path.is_symlink() or not path.is_file():
                continue
            repeat = int(match.group(1) or match.group(2) or 0)
            if int(folder.name) >= count or repeat >= repeats:
                out.append(path)
    return out


def remove_stale_runs(out_dir: Path, count: int, repeats: int) -> None:
    """Removes `stale_run_files`, and each runs/<i> folder of a layout i >= count left empty by it."""
    for path in stale_run_files(out_dir, count, repeats):
        path.unlink()
        folder = path.parent
        if int(folder.name) >= count and not any(folder.iterdir()):
            folder.rmdir()


def time_left(elapsed_s: float, done: int, total: int) -> str:
    """", about 12 min left" for `total` runs of which `done` took `elapsed_s` (their mean for each run to come);
    "" before the first has finished."""
    if done < 1 or total <= done:
        return ""
    left = elapsed_s / done * (total - done)
    amount = (f"{left:.0f} s" if left < 90 else f"{left / 60:.0f} min" if left < 5400
              else f"{left / 3600:.1f} h")
    return f", about {amount} left"


def calibrate_report(report: Report, model: ModelSpec, cluster: ClusterProfile, plans: list[Plan]) -> dict:
    """Cross-validated before/after errors, and the factors fitted on every successful run."""
    from autoconf.validate.calibrate import MIN_CALIBRATION_RUNS, cross_validate, fit

    ok = [i for i, r in enumerate(report.runs) if r.status == "ok"]
    if len(ok) < MIN_CALIBRATION_RUNS:
        return {"skipped": f"calibration needs at least {MIN_CALIBRATION_RUNS} successful runs, got {len(ok)}"}
    ok_plans = [plans[i] for i in ok]
    measured = [report.runs[i].measured_s for i in ok]
    cv = cross_validate(model, cluster, ok_plans, measured)
    for item in cv["held_out"]:
        item["run"] = ok[item["run"]]
    factors = fit(model, cluster, ok_plans, measured)
    return {"factors": factors, **cv}


def scatter_png(report: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autoconf.report.pictures import save_figure

    ok = report.ok_runs()
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    if ok:
        xs, ys = [r.predicted_s * 1e3 for r in ok], [r.measured_s * 1e3 for r in ok]
        values = xs + ys
        held = {h["run"]: h["predicted_after_s"] * 1e3
                for h in (report.calibration or {}).get("held_out", [])}
        values += list(held.values())
        lo, hi = min(values) * 0.8, max(values) * 1.25
        ax.plot([lo, hi], [lo, hi], color="#555555", lw=1, label="predicted = measured")
        ax.fill_between([lo, hi], [lo / 1.1, hi / 1.1], [lo / 0.9, hi / 0.9], color="#DDDDDD", alpha=0.6,
                        label="±10%")
        ax.scatter(xs, ys, color="#1f77b4", zorder=3, label="profile as measured")
        for r, x, y in zip(ok, xs, ys):
            ax.annotate(str(r.index), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
            if r.chosen:
                ax.scatter([x], [y], s=160, facecolors="none", edgecolors="#d62728", zorder=4,
                           label="planner's choice")
        if held:
            hx = [held[r.index] for r in ok if r.index in held]
            hy = [r.measured_s * 1e3 for r in ok if r.index in held]
            ax.scatter(hx, hy, color="#2ca02c", marker="^", zorder=3, label="calibrated (held out)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted step time (ms)")
    ax.set_ylabel("measured step time (ms, median after warm-up)")
    ax.set_title(f"{report.model} on {report.cluster}: " + ", ".join(_summary_parts(report, "regret")), fontsize=9)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    return save_figure(fig, path)


def _summary_parts(report: Report, regret_label: str) -> list[str]:
    """The report's median |error|, Spearman and regret, as far as they are known."""
    parts = []
    if report.median_abs_error is not None:
        parts.append(f"median |error| {100 * report.median_abs_error:.1f}%")
    if report.spearman is not None:
        parts.append(f"Spearman {report.spearman:.2f}")
    if report.regret is not None:
        parts.append(f"{regret_label} {100 * report.regret:.1f}%")
    return parts


def report_table(report: Report):
    from rich.table import Table

    held = {h["run"]: h["predicted_after_s"] for h in (report.calibration or {}).get("held_out", [])}
    table = Table(title=f"{report.model} on {report.cluster}: predicted vs measured step time "
                        f"(global batch {report.global_batch}, seq {report.seq_len}, {report.steps} steps)")
    for col in ("#", "layout", "predicted", "measured", "error"):
        table.add_column(col, justify="left" if col == "layout" else "right")
    if held:
        table.add_column("calibrated (held out)", justify="right")
    with_memory = any(r.measured_peak_bytes is not None for r in report.runs)
    if with_memory:
        table.add_column("peak memory predicted / measured", justify="right")
    for r in report.runs:
        row = [str(r.index) + ("*" if r.chosen else ""), r.label, f"{r.predicted_s * 1e3:.1f} ms",
               f"{r.measured_s * 1e3:.1f} ms" if r.measured_s is not None else "failed",
               f"{100 * r.error:+.1f}%" if r.error is not None else (r.failure or "")[:60]]
        if held:
            after = held.get(r.index)
            row.append(f"{after * 1e3:.1f} ms ({100 * (after - r.measured_s) / r.measured_s:+.1f}%)"
                       if after is not None else "")
        if with_memory:
            row.append(f"{r.predicted_peak_bytes / 2 ** 30:.2f} / {r.measured_peak_bytes / 2 ** 30:.2f} GiB "
                       f"({100 * r.memory_error:+.1f}%)" if r.memory_error is not None else "")
        table.add_row(*row)
    caption = _summary_parts(report, "regret of the planner's choice (*)")
    cal = report.calibration or {}
    if cal.get("after"):
        b, a = cal["before"], cal["after"]
        caption.append(f"calibration ({cal['scheme']}, held out): median |error| "
                       f"{100 * b['median_abs_error']:.1f}% -> {100 * a['median_abs_error']:.1f}%")
    if report.memory_median_abs_error is not None:
        caption.append(f"peak memory median |error| {100 * report.memory_median_abs_error:.1f}%")
    table.caption = "; ".join(caption)
    return table


def validate(model: ModelSpec, cluster: ClusterProfile, cluster_label: str, global_batch: int, seq_len: int,
             dtype: str, configs: int, steps: int, out_dir: Path, calibrate: bool = False, force: bool = False,
             fixed: dict | None = None, runner: Runner = local_runner, cluster_path: Path | None = None,
             log: Callable[[str], None] = print, refine: bool = True, repeats: int = 1) -> Report:
    """Selects, runs and compares; writes report.json, scatter.png (and calibrated_profile.json)."""
    from autoconf.validate.select import select_layouts

    out_dir = Path(out_dir)
    if configs < 1 or steps < 1:
        raise UserError(f"--configs and --steps must be >= 1 (got {configs} and {steps})")
    if configs > MAX_CONFIGS:
        raise UserError(f"--configs {configs}: validate runs at most {MAX_CONFIGS} layouts, one after the other "
                        f"(each a torchrun start and --steps steps); give --configs {MAX_CONFIGS} or fewer")
    report_path, scatter_path, calibrated_path = (out_dir / "report.json", out_dir / "scatter.png",
                                                  out_dir / "calibrated_profile.json")
    if cluster_path is not None and calibrate and calibrated_path.resolve() == Path(cluster_path).resolve():
        raise UserError(f"--out {out_dir} would overwrite the input profile {cluster_path}; choose another folder")
    existing = [p for p in (report_path, scatter_path, calibrated_path, out_dir / "runs") if p.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} already exists; pass --force to overwrite it or choose another --out")
    for path in (report_path, scatter_path, calibrated_path):  # (a folder or a pipe there: said before any run)
        check_new(path, force=True)
    if calibrate:
        from autoconf.validate.calibrate import FACTORS, MIN_CALIBRATION_RUNS

        if configs < MIN_CALIBRATION_RUNS:
            raise UserError(f"--calibrate fits {len(FACTORS)} factors and checks them on held-out runs: it needs "
                            f"--configs {MIN_CALIBRATION_RUNS} or more (got {configs})")
    if cluster.world_size > 64:
        raise UserError(f"validate starts every rank on this host; {cluster.world_size} ranks is too many")
    if cluster.device.kind != "cpu" and not _has_cuda():
        raise UserError(f"validate measures each layout on this host's devices, but {cluster.name} describes GPUs "
                        f"and this host has no CUDA device: its CPU times would be compared with GPU predictions; "
                        f"use a CPU profile (cpu-local, or one `autoconf profile` measured here) or run it on the GPUs")
    plans = select_layouts(model, cluster, global_batch, seq_len, dtype, configs, fixed, refine=refine)
    problem = too_few_layouts(len(plans), fixed)
    if problem:
        raise UserError(problem)
    remove_stale_runs(out_dir, len(plans), repeats)
    log(f"validating {len(plans)} layouts of {model.name} on {cluster_label} ({cluster.world_size} ranks), "
        f"{steps} steps each")
    runs = run_plans(plans, out_dir, steps, runner, force=True, log=log, repeats=repeats,
                     runtime_memory_bytes=cluster.device.memory_overhead_bytes)
    report = Report(model.name, cluster_label, global_batch, seq_len, steps, runs).summarise()
    if calibrate:
        log("calibrating ...")
        report.calibration = calibrate_report(report, model, cluster, plans)
        if "skipped" in report.calibration:
            log(f"calibration skipped: {report.calibration['skipped']}")
        if "factors" in report.calibration:
            from autoconf.validate.calibrate import calibrated_profile

            note = f"fitted to {len(report.ok_runs())} runs of {model.name} by autoconf validate"
            calibrated = calibrated_profile(cluster, report.calibration["factors"], note)
            calibrated = _renamed(calibrated, note)
            write_file(calibrated_path, json.dumps(calibrated.to_dict(), indent=2) + "\n", force=True)
            report.calibration["profile"] = str(calibrated_path)
    write_file(report_path, json.dumps(report.to_dict(), indent=2) + "\n", force=True)
    if report.ok_runs():
        scatter_png(report, scatter_path)
    return report


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _renamed(cluster: ClusterProfile, note: str) -> ClusterProfile:
    import dataclasses

    return dataclasses.replace(cluster, name=f"{cluster.name}-calibrated", path=None,  # (not the file read)
                               description=(cluster.description + " " if cluster.description else "") + note + ".")


def refuse_inputs_under(out_dir: Path, inputs: dict) -> None:
    """Refuses (UserError) an input file (`inputs`: what the user calls it -> a --model or --cluster argument) that
    validate would replace: under OUT/runs/, whose run folders it writes afresh, or one of its reports."""
    from autoconf.files import input_files

    runs = (out_dir / "runs").resolve()
    written = {(out_dir / name).resolve() for name in ("report.json", "scatter.png", "calibrated_profile.json")}
    for what, source in inputs.items():
        for path in (p.resolve() for p in input_files(source)):
            if runs in path.parents or path in written:
                raise UserError(f"{path} is {what} this run reads, and validate writes {out_dir / 'runs'} and its "
                                f"reports afresh; move it out of {out_dir} or choose another --out")


def validate_command(model: str, cluster_path: str, global_batch: int, seq_len: int | None, configs: int,
                     steps: int, out_dir: str | Path, calibrate: bool, force: bool,
                     fixed: dict | None = None, repeats: int = 1) -> dict:
    """The `autoconf validate` verb: loads the model and profile, validates, prints the table; returns report.json's
    content. `fixed`: typed config fields as `cli.parse_fix` returns them (dtype among them picks the dtype)."""
    from rich.console import Console

    from autoconf.spec.presets import load_model

    model_spec = load_model(model)
    cluster = load_cluster(cluster_path)
    fixed = dict(fixed or {})
    dtype = fixed.pop("dtype", None) or default_dtype(cluster)
    check_trainable_dtype(dtype, cluster)
    seq_len = seq_len or model_spec.default_seq_len
    if global_batch < 1:
        raise UserError(f"--global-batch must be >= 1 (got {global_batch})")
    refuse_inputs_under(Path(out_dir), {"the model config": model, "the cluster profile": cluster_path})
    bundled = Path(cluster_path)
    from autoconf.report.progress import Follow

    console = Console(markup=False)
    with Follow(console, f"validating {model_spec.name}", done_offset=1) as follow:
        log = follow.line if follow.live else console.print
        report = validate(model_spec, cluster, cluster.name, global_batch, seq_len, dtype, configs, steps,
                          Path(out_dir), calibrate, force, fixed,
                          cluster_path=bundled if bundled.exists() else None, log=log, repeats=repeats)
    console.print(report_table(report))
    out = Path(out_dir)
    written = ["report.json"] + (["scatter.png"] if report.ok_runs() else []) + (
        ["calibrated_profile.json"] if (report.calibration or {}).get("profile") else [])
    for name in written:  # (a stale file of an earlier run under --force is not this run's)
        console.print(f"wrote {out / name}")
    problem = incomplete(report)
    if problem:
        raise UserError(f"{problem} (report: {out / 'report.json'})")
    return report.to_dict()


def incomplete(report: Report) -> str | None:
    """Why the report does not validate the planner (a layout failed, or fewer than two ran, so there is no
    ranking to compare); None when every layout ran and there were at least two."""
    failed = [r for r in report.runs if r.status != "ok"]
    if failed:
        return (f"{len(failed)} of {len(report.runs)} layouts failed to run ("
                + "; ".join(f"#{r.index} {r.label}: {(r.failure or r.status)[:80]}" for r in failed[:3])
                + ("; ..." if len(failed) > 3 else "") + "): their logs are under runs/<#>/")
    return too_few_layouts(len(report.runs))


def too_few_layouts(count: int, fixed: dict | None = None) -> str | None:
    """Why `count` layouts validate nothing (fewer than two: no ranking to compare), naming the --fix pins `fixed`
    that narrowed the choice when there are any; None for two or more."""
    if count >= 2:
        return None
    pins = " ".join(f"--fix {pin_text(k, v)}" for k, v in (fixed or {}).items())
    fewer = "pin fewer fields (every pin leaves out the layouts that differ in it), or " if pins else ""
    return (f"only {count} layout could be chosen for this model, cluster and batch{' with ' + pins if pins else ''}, "
            f"so nothing would be ranked; {fewer}give a larger --global-batch or a profile with more ranks")
