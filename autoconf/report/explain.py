"""`explain`: a folder that shows why a plan was chosen and how to run it.

    timeline.png   the best plan's schedule, per pipeline rank            (pictures.timeline_png)
    memory.png     the best plan's memory per pipeline rank vs the limit  (pictures.memory_png)
    compare.png    the time breakdown of every plan given, side by side   (pictures.compare_png)
    launch.sh, torchrun_node*.sh, slurm.sbatch, pytorchjob.yaml, megatron_args.txt, torchtitan_config.py
                   the exports, each naming the upstream version it targets (exporters.write_exports,
                   docs/exports.md)
    plan.json      only when no plan file was given, so that the scripts have a plan to run
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from autoconf.errors import UserError
from autoconf.files import drawn_by_autoconf, input_files
from autoconf.spec.plan import Plan, load_plan

PICTURES = ("timeline.png", "memory.png", "compare.png")
SWEEP_PICTURE = "sweep.png"  # `plan --nodes A:B --explain DIR` draws it beside the best size's explanation


def _refuse_as_folder(out_dir: Path, plan_path: str | Path | None) -> None:
    """Refuses (UserError) an explanation folder that is an existing file, or the plan's own path (--out)."""
    if plan_path is not None and Path(plan_path).resolve() == out_dir.resolve():
        raise UserError(f"--out and --explain both name {out_dir}; the plan is a file and the explanation a folder: "
                        f"give them two paths (e.g. --out {out_dir / 'plan.json'})")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file; --explain/--out needs a folder")


def refuse_taken_folder(out_dir: str | Path, force: bool, plan_path: str | Path | None = None,
                        extra: tuple[str, ...] = (), inputs: dict | None = None) -> None:
    """Refuses (UserError) an --explain folder that already holds a file `explain` could write (or one of `extra`),
    before a plan exists: a user learns it before the search, not after. `explain` checks the exact names again.
    Even with `force` it refuses a plan path (--out) that one of those files would replace, and a folder where one
    of them is an input of the run (`inputs`: what the user calls it -> a --model or --cluster argument)."""
    from autoconf.report.exporters import EXPORT_GLOBS

    out_dir = Path(out_dir)
    _refuse_as_folder(out_dir, plan_path)
    globs = PICTURES + EXPORT_GLOBS + extra + (("plan.json",) if plan_path is None else ())
    if plan_path is not None and Path(plan_path).resolve().parent == out_dir.resolve():
        name = Path(plan_path).name
        if any(fnmatch.fnmatch(name, g) for g in globs if g != "plan.json"):
            raise UserError(f"the plan {plan_path} is a file the explanation in {out_dir} writes; name the plan "
                            f"another way (e.g. {out_dir / 'plan.json'}) or choose another folder")
    for what, source in (inputs or {}).items():
        for path in (p.resolve() for p in input_files(source)):
            if path.parent == out_dir.resolve() and any(fnmatch.fnmatch(path.name, g) for g in globs):
                raise UserError(f"{out_dir} holds {path.name}, {what} this run reads, which the explanation would "
                                f"replace; choose another folder")
    if force or not out_dir.is_dir():
        return
    existing = sorted({p.name for g in globs for p in out_dir.glob(g)})
    if existing:
        raise UserError(f"{out_dir} already holds {', '.join(existing)}; pass --force to overwrite them or "
                        f"choose another folder")


def explain(plans: list[Plan], out_dir: str | Path, cluster=None, plan_path: str | Path | None = None,
            force: bool = False, sweep: bool = False) -> list[Path]:
    """Writes the pictures and exports for `plans` (best first) into `out_dir`; returns the files written.

    `cluster` is the ClusterProfile the plans were made on (default: the profile named in the plan). `plan_path` is
    the saved plan file the scripts should run; without one the best plan is saved as out_dir/plan.json. Refuses
    (UserError, before writing anything) to replace existing files unless `force`; with `force` an earlier sweep's
    picture (SWEEP_PICTURE) that this explanation does not redraw (`sweep` says the caller draws one) is removed
    when autoconf drew it (`files.drawn_by_autoconf`), as it would describe another run beside this one.
    """
    from autoconf.report.exporters import write_exports
    from autoconf.report.pictures import compare_png, memory_png, timeline_png

    if not plans:
        raise UserError("nothing to explain: no plans")
    out_dir = Path(out_dir)
    _refuse_as_folder(out_dir, plan_path)
    best = plans[0]
    if not force:
        existing = taken_names(best, out_dir, plan_path)
        if existing:
            raise UserError(f"{out_dir} already holds {', '.join(existing)}; pass --force to overwrite them or "
                            f"choose another folder")
    written: list[Path] = []
    if plan_path is None:
        plan_path = out_dir / "plan.json"
        best.save(plan_path, force=force)
        written.append(plan_path)
    written.append(timeline_png(best, out_dir / "timeline.png", cluster))
    written.append(memory_png(best, out_dir / "memory.png"))
    written.append(compare_png(plans, out_dir / "compare.png"))
    written += write_exports(best, plan_path, out_dir, force=True)
    if force and not sweep and drawn_by_autoconf(out_dir / SWEEP_PICTURE):
        (out_dir / SWEEP_PICTURE).unlink()
    return written


def taken_names(best: Plan, out_dir: str | Path, plan_path: str | Path | None = None) -> list[str]:
    """The files `explain` would write for `best` (its pictures, exports and, without a plan file, plan.json) that
    `out_dir` already holds."""
    from autoconf.report.exporters import export_texts

    names = list(PICTURES) + list(export_texts(best, plan_path)) + (["plan.json"] if plan_path is None else [])
    return [n for n in names if (Path(out_dir) / n).exists()]


def default_show_folder(plan_path: str | Path) -> Path:
    """Where `show` draws a plan without --out: next to it, named after it (plan.json -> plan_explain/)."""
    plan_path = Path(plan_path)
    return plan_path.with_name(f"{plan_path.stem}_explain")


def show(plan_path: str | Path, out_dir: str | Path | None = None, force: bool = False, cluster=None,
         plan: Plan | None = None) -> list[Path]:
    """`autoconf show PLAN.json [--out DIR]`: redraws the pictures and exports of a saved plan (default folder:
    `default_show_folder`); `plan`: the plan as read from it already (and estimated again where it was edited:
    report/current.py)."""
    plan_path = Path(plan_path)
    plan = load_plan(plan_path) if plan is None else plan
    if out_dir is None:
        out_dir = default_show_folder(plan_path)
    return explain([plan], out_dir, cluster=cluster, plan_path=plan_path, force=force)
