"""The `autoconf` command line: thin click commands over the library.

Every user error (`UserError`, a bad file, an impossible layout) is printed as one line `autoconf: error: ...` with a
non-zero exit code; a traceback only ever means a bug in autoconf.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from autoconf.errors import UserError
from autoconf.spec.dtypes import DTYPES, PROFILED_DTYPES, check_dtype
from autoconf.spec.plan import MAX_GLOBAL_BATCH, MAX_SEQ_LEN
from autoconf.spec.schedules import SCHEDULES

EXIT_USER_ERROR = 2


class ScheduleChoice(click.Choice):
    """The registered schedules when the command runs (click copies a choice list when it is declared)."""

    def __init__(self):
        super().__init__(SCHEDULES)

    @property
    def choices(self):
        return tuple(SCHEDULES)

    @choices.setter
    def choices(self, value):
        pass


def user_errors(fn):
    """Turns UserError (and unreadable-input errors) into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            click.echo(f"autoconf: error: {err}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("autoconf: interrupted", err=True)
            sys.exit(130)

    return wrapper


def default_seq_len(model) -> int:
    """The model's context length, capped at 8192 tokens (long-context runs pass --seq-len)."""
    return min(model.max_seq_len, 8192)


def default_dtype(cluster) -> str:
    return "fp32" if cluster.device.kind == "cpu" else "bf16"


def parse_fix(values: tuple[str, ...]) -> dict:
    """--fix KEY=VALUE pairs into typed config fields."""
    from autoconf.solve.space import ALIASES, FIXABLE, parse_fix_value

    fixed = {}
    for item in values:
        if "=" not in item:
            raise UserError(f"--fix {item!r} must look like KEY=VALUE, e.g. --fix tp=8 (keys: {', '.join(FIXABLE)})")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        fixed[ALIASES.get(key, key)] = parse_fix_value(key, value.strip())
    return fixed


model_option = click.option("--model", "model_arg", required=True,
                            help="preset name (autoconf models), HF config.json, or autoconf model JSON")
cluster_option = click.option("--cluster", "cluster_arg", required=True,
                              help="bundled profile (dgx-a100-80g, dgx-h100-80g, cpu-local) or a profile path")
nodes_option = click.option("--nodes", type=int, default=None, help="resize a uniform profile to N nodes")
gpn_option = click.option("--gpus-per-node", type=int, default=None, help="resize a uniform profile's nodes")


class AutoconfGroup(click.Group):
    """click's own usage errors (a missing option, `Invalid value for '--tp'`) in the same one-line form as every
    other error: `autoconf: error: ...`, exit code 2."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("autoconf: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as err:
            message = " ".join(err.format_message().split())
            ctx = getattr(err, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            click.echo(f"autoconf: error: {message}{hint}", err=True)
            sys.exit(err.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def output_path(ctx, param, value):
    """An --out given as an empty string is refused by name (Path('') would be the current folder)."""
    if value is not None and str(value).strip() in ("", "."):
        raise click.BadParameter("must name a file or folder, got an empty path", ctx=ctx, param=param)
    return value


@click.group(cls=AutoconfGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autoconf")
def main() -> None:
    """autoconf: measure the cluster, predict every sensible 3D-parallel layout, pick the best, and run it."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the presets as JSON")
@user_errors
def models(as_json: bool) -> None:
    """List the model presets."""
    from autoconf.report.tables import models_table, print_table
    from autoconf.spec.presets import PRESETS

    if as_json:
        click.echo(json.dumps([m.to_dict() for m in PRESETS.values()], indent=2))
    else:
        print_table(models_table(list(PRESETS.values())))


@main.command()
@model_option
@cluster_option
@nodes_option
@gpn_option
@click.option("--tp", type=int, required=True)
@click.option("--pp", type=int, required=True)
@click.option("--dp", type=int, required=True)
@click.option("--vpp", type=int, default=1, show_default=True, help="model chunks (virtual stages) per rank")
@click.option("--micro-batch", type=click.IntRange(1, MAX_GLOBAL_BATCH), required=True)
@click.option("--global-batch", type=click.IntRange(1, MAX_GLOBAL_BATCH), required=True)
@click.option("--seq-len", type=click.IntRange(1, MAX_SEQ_LEN), default=None,
              help="default: the model's context, at most 8192")
@click.option("--schedule", default="1f1b", show_default=True,
              type=ScheduleChoice())
@click.option("--zero", type=click.IntRange(0, 3), default=0, show_default=True)
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default="none", show_default=True)
@click.option("--sequence-parallel", is_flag=True)
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="default: bf16 on GPUs, fp32 on CPU")
@click.option("--attention", type=click.Choice(["flash", "standard"]), default="flash", show_default=True)
@click.option("--framework", type=click.Choice(["autoconf", "megatron"]), default="autoconf", show_default=True,
              help="whose memory layout and P2P scheme to predict")
@click.option("--json", "as_json", is_flag=True, help="print the plan object as JSON")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the plan here",
              callback=output_path)
@click.option("--force", is_flag=True, help="overwrite --out if it exists")
@user_errors
def estimate(model_arg, cluster_arg, nodes, gpus_per_node, tp, pp, dp, vpp, micro_batch, global_batch, seq_len,
             schedule, zero, recompute, sequence_parallel, dtype, attention, framework, as_json, out, force) -> None:
    """Predict time and memory of one layout."""
    from autoconf.cost.estimate import Execution
    from autoconf.cost.estimate import estimate as run_estimate
    from autoconf.report.tables import prediction_table, print_table
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.plan import ParallelConfig
    from autoconf.spec.presets import load_model

    model = load_model(model_arg)
    cluster = load_cluster(cluster_arg, nodes, gpus_per_node)
    if dtype:
        check_dtype(dtype, cluster.device.peak_flops, cluster.device.name)
    config = ParallelConfig(tp=tp, pp=pp, dp=dp, vpp=vpp, micro_batch_size=micro_batch,
                            global_batch_size=global_batch,
                            seq_len=default_seq_len(model) if seq_len is None else seq_len,
                            schedule=schedule, zero_stage=zero, recompute=recompute,
                            sequence_parallel=sequence_parallel, dtype=dtype or default_dtype(cluster),
                            attention=attention)
    plan = run_estimate(model, cluster, config, execution=Execution(framework))
    if out is not None:
        plan.save(out, force=force)
    if as_json:
        click.echo(plan.to_json(), nl=False)
    else:
        print_table(prediction_table(plan))
        if out is not None:
            click.echo(f"wrote {out}")


@main.command()
@model_option
@cluster_option
@nodes_option
@gpn_option
@click.option("--global-batch", type=click.IntRange(1, MAX_GLOBAL_BATCH), required=True)
@click.option("--seq-len", type=click.IntRange(1, MAX_SEQ_LEN), default=None,
              help="default: the model's context, at most 8192")
@click.option("--fix", "fix", multiple=True, metavar="KEY=VALUE",
              help="pin a config field, e.g. --fix tp=8 --fix schedule=1f1b (repeatable)")
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="default: bf16 on GPUs, fp32 on CPU")
@click.option("--attention", type=click.Choice(["flash", "standard"]), default="flash", show_default=True)
@click.option("--framework", type=click.Choice(["autoconf", "megatron"]), default="autoconf", show_default=True)
@click.option("--top", "top_k", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help='print {"plans": [...], "search": {...}} as JSON')
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the best plan",
              callback=output_path)
@click.option("--explain", "explain_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write pictures and launch scripts here", callback=output_path)
@click.option("--force", is_flag=True, help="overwrite existing output files")
@user_errors
def plan(model_arg, cluster_arg, nodes, gpus_per_node, global_batch, seq_len, fix, dtype, attention, framework,
         top_k, as_json, out, explain_dir, force) -> None:
    """Search every sensible layout and write the best plan."""
    from rich.console import Console

    from autoconf.cost.estimate import Execution
    from autoconf.report.tables import print_table, ranked_table
    from autoconf.solve.search import explain_infeasible, search
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.presets import load_model

    model = load_model(model_arg)
    cluster = load_cluster(cluster_arg, nodes, gpus_per_node)
    fixed = parse_fix(fix)
    seq_len = default_seq_len(model) if seq_len is None else seq_len
    if seq_len < 1:
        raise UserError(f"--seq-len must be >= 1 (got {seq_len})")
    dtype = fixed.pop("dtype", None) or dtype or default_dtype(cluster)
    check_dtype(dtype, cluster.device.peak_flops, cluster.device.name)  # fp8 only where asked and where it runs
    if cluster.device.kind == "cpu" and dtype != "fp32":
        raise UserError(f"the bundled executor trains in fp32 on CPU ranks, so a {dtype} plan for {cluster.name} could "
                        f"not run as planned; drop --dtype / --fix dtype (fp32) or use `estimate` for what-if numbers")
    if global_batch < 1:
        raise UserError(f"--global-batch must be >= 1 (got {global_batch})")
    if out is not None:
        from autoconf.files import check_new

        check_new(out, force)  # before the search, which can take a while
    execution = Execution(framework)
    console = Console(stderr=as_json)
    with console.status(f"planning {model.name} on {cluster.world_size} devices ..."):
        result = search(model, cluster, global_batch, seq_len, dtype, attention, fixed, top_k, execution)
    if not result.plans:
        raise UserError(explain_infeasible(model, cluster, result, global_batch, seq_len, dtype, attention, fixed,
                                           execution))
    best = result.plans[0]
    written = []
    if explain_dir is not None:  # first: it refuses existing files before writing any, and so leaves --out alone
        from autoconf.report.explain import explain

        written = explain(result.plans, explain_dir, cluster=cluster, plan_path=out, force=force)
    if out is not None:
        best.save(out, force=force)
    if as_json:
        click.echo(json.dumps({"plans": [p.to_dict() for p in result.plans], "search": result.stats}, indent=2))
        return
    s = result.stats
    title = f"{model.name} on {cluster.name} ({cluster.world_size} devices), global batch {global_batch}, seq {seq_len}"
    print_table(ranked_table(result.plans, title, wide=console.width >= 130), console)
    console.print(f"searched {s['candidates']} candidates: {s['pruned_memory']} pruned by memory, "
                  f"{s['pruned_time']} by time bound, {s['simulated']} simulated, {s['unlaunchable']} not "
                  f"launchable; {s['seconds']:.2f} s")
    if out is not None:
        console.print(f"wrote {out}")
    for path in written:
        console.print(f"wrote {path}")


@main.command()
@click.argument("plan_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="default: <plan>_explain/ beside the plan", callback=output_path)
@click.option("--cluster", "cluster_arg", default=None, help="the profile the plan was made on, if not bundled")
@click.option("--force", is_flag=True, help="overwrite existing pictures and scripts")
@user_errors
def show(plan_path, out_dir, cluster_arg, force) -> None:
    """Print a plan's prediction and redraw its pictures and launch scripts."""
    from autoconf.report.explain import show as show_plan
    from autoconf.report.tables import prediction_table, print_table
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.plan import load_plan

    plan_obj = load_plan(plan_path)
    cluster = None
    if cluster_arg:
        cluster = load_cluster(cluster_arg, plan_obj.cluster.get("nodes"), plan_obj.cluster.get("gpus_per_node"))
        planned_on = plan_obj.cluster.get("name")
        if planned_on and cluster.name != planned_on:
            raise UserError(f"{plan_path} was planned for cluster {planned_on!r}, but --cluster {cluster_arg} is "
                            f"{cluster.name!r}; pass the profile the plan was made with, or re-plan on this one")
    needed = {"iteration_time_s", "tokens_per_s", "tflops_per_gpu", "mfu", "bubble_fraction", "peak_memory_bytes",
              "memory_limit_bytes", "fits", "memory_per_stage"}
    if needed <= set(plan_obj.prediction):
        print_table(prediction_table(plan_obj))
    else:
        click.echo(f"{plan_path}: no complete prediction in the plan (run `autoconf estimate` to make one)")
    for path in show_plan(plan_path, out_dir, force=force, cluster=cluster):
        click.echo(f"wrote {path}")


@main.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, callback=output_path)
@click.option("--nproc-per-node", type=int, default=None, help="default: GPUs, or 2 (quick) / 4 CPU ranks")
@click.option("--nnodes", type=click.IntRange(1, 100_000), default=1, show_default=True)
@click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--master-addr", default="127.0.0.1", show_default=True)
@click.option("--master-port", type=click.IntRange(1, 65535), default=29500, show_default=True)
@click.option("--model", "model_arg", default=None, help="model whose blocks to time (default tiny-gpt on CPU)")
@click.option("--quick", is_flag=True, help="small grid: 2 CPU ranks, a tiny model, under 3 minutes")
@click.option("--base-profile", default=None, help="bundled profile supplying what is not measured (GPU)")
@click.option("--memory-per-rank", default=None, help="CPU memory limit per rank, e.g. 4GiB")
@click.option("--dtype", type=click.Choice(PROFILED_DTYPES), default=None)
@click.option("--max-tp", type=click.IntRange(min=1), default=None,
              help="time the model's blocks at TP widths up to this (default: the ranks per node), e.g. 8 on one GPU "
                   "of an 8-GPU node")
@click.option("--force", is_flag=True, help="overwrite --out if it exists")
@user_errors
def profile(out, nproc_per_node, nnodes, node_rank, master_addr, master_port, model_arg, quick, base_profile,
            memory_per_rank, dtype, max_tp, force) -> None:
    """Measure this cluster (compute, links, collectives, memory) into a profile."""
    from autoconf.profile.launch import profile as run_profile

    code = run_profile(out, nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                       master_addr=master_addr, master_port=master_port, model=model_arg, quick=quick, force=force,
                       base_profile=base_profile, memory_per_rank=memory_per_rank, dtype=dtype, max_tp=max_tp)
    if code != 0:
        raise UserError(f"profiling failed (torchrun exit code {code}); see the worker output above")


@main.command()
@click.argument("plan_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="token file (.bin uint16/uint32) or text file; default: synthetic tokens")
@click.option("--metrics", type=click.Path(dir_okay=False), default=None, help="JSON lines, one per step")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None)
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max-restarts", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--dry-run", is_flag=True, help="print the command each node would run")
@click.option("--nnodes", type=click.IntRange(1, 100_000), default=1, show_default=True)
@click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--master-addr", default="127.0.0.1", show_default=True)
@click.option("--master-port", type=click.IntRange(1, 65535), default=29500, show_default=True)
@click.option("--collective-timeout", type=click.FloatRange(min=1), default=None,
              help="seconds before a stuck collective ends the job (default 600)")
@click.option("--rendezvous-timeout", type=click.FloatRange(min=1), default=None,
              help="seconds to wait for every node to join (default 600)")
@click.option("--force", is_flag=True, help="overwrite an existing metrics file")
@user_errors
def launch(plan_path, steps, seed, data, metrics, checkpoint_dir, checkpoint_every, max_restarts, dry_run, nnodes,
           node_rank, master_addr, master_port, collective_timeout, rendezvous_timeout, force) -> None:
    """Train a plan with the bundled torch executor under torchrun."""
    from autoconf.execute.launch import launch as run_launch

    code = run_launch(plan_path, steps=steps, seed=seed, data=data, metrics=metrics, checkpoint_dir=checkpoint_dir,
                      checkpoint_every=checkpoint_every, max_restarts=max_restarts, dry_run=dry_run, nnodes=nnodes,
                      node_rank=node_rank, master_addr=master_addr, master_port=master_port, force=force,
                      timeout_s=collective_timeout, rendezvous_timeout_s=rendezvous_timeout)
    if code > 128:  # stopped by a signal, which the launcher has reported
        sys.exit(code)
    if code != 0:
        raise UserError(f"training failed (torchrun exit code {code}); see the worker output above")


@main.command()
@model_option
@click.option("--cluster", "cluster_arg", required=True, help="the profile of the cluster the runs execute on")
@click.option("--global-batch", type=click.IntRange(1, MAX_GLOBAL_BATCH), required=True)
@click.option("--seq-len", type=click.IntRange(1, MAX_SEQ_LEN), default=None,
              help="default: the model's context, at most 8192")
@click.option("--configs", type=click.IntRange(min=2), default=8, show_default=True, help="layouts to run")
@click.option("--steps", type=click.IntRange(min=3), default=8, show_default=True, help="steps per layout")
@click.option("--repeats", type=click.IntRange(min=1, max=20), default=1, show_default=True,
              help="run the layouts this many times in turn; each layout's measured time is the median")
@click.option("--fix", "fix", multiple=True, metavar="KEY=VALUE", help="pin a config field in every layout")
@click.option("--calibrate", is_flag=True, help="fit the profile's factors; report held-out error before/after")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              callback=output_path)
@click.option("--force", is_flag=True, help="reuse a non-empty --out folder")
@user_errors
def validate(model_arg, cluster_arg, global_batch, seq_len, configs, steps, repeats, fix, calibrate, out_dir,
             force) -> None:
    """Run K layouts, compare measured and predicted step times (report.json, scatter.png)."""
    from autoconf.validate import validate_command

    validate_command(model_arg, cluster_arg, global_batch, seq_len, configs, steps, out_dir, calibrate, force,
                     fixed=parse_fix(fix), repeats=repeats)


def run() -> None:
    main(prog_name="autoconf")


if __name__ == "__main__":
    run()
