"""The `autoconf` command line: thin click commands over the library.

Every user error (`UserError`, a bad file, an impossible layout) is printed as one line `autoconf: error: ...` with a
non-zero exit code; a traceback only ever means a bug in autoconf.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import shlex
import sys
import time
from pathlib import Path

import click
from rich.text import Text

from autoconf.cli_numbers import ASCII_FLOAT, ASCII_INT, AsciiFloatRange, AsciiIntRange
from autoconf.errors import UserError
from autoconf.files import ascii_number, shown
from autoconf.spec import frameworks
from autoconf.spec.dtypes import DTYPES, PROFILED_DTYPES, check_dtype, check_trainable_dtype, default_dtype
from autoconf.spec.frameworks import SELECTIVE_RECOMPUTE
from autoconf.spec.model import DEFAULT_SEQ_LEN
from autoconf.spec.plan import (CP_COMM, GRAD_REDUCE, MAX_GLOBAL_BATCH, MAX_SEQ_LEN, SEQ_SPLITS, partition_of,
                                 partition_problem, uniform_partition)
from autoconf.spec.schedules import SCHEDULES
from autoconf.validate.run import MAX_CONFIGS

FRAMEWORK_NAMES = list(frameworks.PRESETS)

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


# An error line longer than this keeps its start (what is wrong) and its end (what would work) and says how much of
# its middle it leaves out: an input echoed in full (a 900k-entry list) made a line of megabytes.
MAX_ERROR_LINE = 2000


def error_line(message: str) -> str:
    """`message` as one line of at most about MAX_ERROR_LINE characters."""
    if len(message) <= MAX_ERROR_LINE:
        return message
    head, tail = message[:MAX_ERROR_LINE * 2 // 3], message[-MAX_ERROR_LINE // 4:]
    return f"{head} ... [{len(message) - len(head) - len(tail):,} characters left out] ... {tail}"


def user_errors(fn):
    """Turns UserError (and unreadable-input errors) into one clear line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            click.echo(f"autoconf: error: {error_line(str(err))}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("autoconf: interrupted", err=True)
            sys.exit(130)

    return wrapper


SEQ_LEN_DEFAULT = f"default: the model's context, at most {DEFAULT_SEQ_LEN} tokens"


def default_seq_len(model) -> int:
    """The sequence length planned without --seq-len (ModelSpec.default_seq_len)."""
    return model.default_seq_len


def search_summary(s: dict) -> str:
    """The search's counts in one line; each candidate and offloading twin it weighed is in exactly one of them."""
    twins = f" and {s['offload_weighed']} offloading twins" if s.get("offload_weighed") else ""
    same = f", {s['same_as_another']} the same as another" if s.get("same_as_another") else ""
    refused = f", {s['unlaunchable']} not launchable" if s.get("unlaunchable") else ""
    from autoconf.solve.space import CP_MIN_SEQ_LEN

    again = (f" (a second pass, context parallelism weighed below {CP_MIN_SEQ_LEN:,} tokens: nothing fit without "
             f"it)") if s.get("short_cp") else ""
    return (f"searched {s['candidates']} candidates{twins}{again}: {s['pruned_memory']} pruned by memory, "
            f"{s['pruned_time']} by time bound, {s['simulated']} simulated{refused}{same}; {s['seconds']:.2f} s")


def chosen_dtype(fixed: dict, dtype: str | None, cluster) -> str:
    """The dtype a search plans in: --dtype or --fix dtype (taken out of `fixed`; one line when the two disagree),
    else the cluster's default."""
    pinned = fixed.pop("dtype", None)
    if dtype and pinned and pinned != dtype:
        raise UserError(f"--dtype {dtype} and --fix dtype={pinned} disagree; give one of them")
    return pinned or dtype or default_dtype(cluster)


def parse_fix(values: tuple[str, ...]) -> dict:
    """--fix KEY=VALUE pairs into typed config fields."""
    from autoconf.solve.space import ALIASES, FIXABLE, parse_fix_value

    fixed = {}
    for item in values:
        if "=" not in item:
            raise UserError(f"--fix {item!r} must look like KEY=VALUE, e.g. --fix tp=8 (keys: {', '.join(FIXABLE)})")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        name, parsed = ALIASES.get(key, key), parse_fix_value(key, value.strip())
        if name in fixed and fixed[name] != parsed:
            raise UserError(f"--fix {name} is given twice ({fixed[name]} and {parsed}); give it once")
        fixed[name] = parsed
    return fixed


def framework_execution(name: str, flags: tuple[str, ...]):
    """The --framework preset with its --framework-flag changes (checked: one line on a combination it cannot run)."""
    return frameworks.with_flags(frameworks.execution(name), frameworks.parse_flags(flags))


def flags_without_effect(execution, prediction: dict, predict) -> list[str]:
    """The --framework-flag changes of `execution` that its layout never reads: each flag whose preset value gives
    the same step time, terms and per-stage memory (`predict(execution)`) as `prediction`, execution's own."""
    def outcome(p: dict) -> tuple:
        return p["iteration_time_s"], p.get("time_breakdown"), p["memory_per_stage"]

    preset, idle = frameworks.execution(execution.name), []
    for key in frameworks.changed_flags(execution):
        try:
            back = frameworks.with_flags(execution, {key: getattr(preset, key)})
            if outcome(predict(back)) == outcome(prediction):
                idle.append(key)
        except UserError:  # (the others, or the layout, need it changed: it is read)
            continue
    return idle


model_option = click.option("--model", "model_arg", required=True,
                            help="preset name (autoconf models), HF config.json (or its folder), or autoconf model "
                                 "JSON")


def hyperparameter_options(fn):
    """`launch`'s training hyperparameters (execute/hyperparameters.py), each checked as the worker checks it; a
    value left out is the worker's default."""
    from autoconf.execute.hyperparameters import HYPERPARAMETERS

    def check(h):
        def callback(ctx, param, value):
            problem = None if value is None else h.problem(value)
            if problem:
                raise click.BadParameter(problem.removeprefix(f"{h.flag} "))
            return value

        return callback

    for h in reversed(HYPERPARAMETERS):
        default = "" if h.default is None else f" [default: {h.default:g}]"
        fn = click.option(h.flag, h.field, type=ASCII_INT if h.kind is int else ASCII_FLOAT, default=None,
                          callback=check(h), help=h.help + default)(fn)
    return fn


def _cluster_help() -> str:
    from autoconf.spec.cluster import bundled_profiles

    return f"bundled profile ({', '.join(bundled_profiles())}; see `autoconf profiles`) or a profile path"


cluster_option = click.option("--cluster", "cluster_arg", required=True, help=_cluster_help())
nodes_option = click.option("--nodes", type=ASCII_INT, default=None, help="resize a uniform profile to N nodes")
gpn_option = click.option("--gpus-per-node", type=ASCII_INT, default=None, help="resize a uniform profile's nodes")
headroom_option = click.option("--memory-headroom", type=AsciiFloatRange(0, 1, max_open=True), default=None,
                               help="fraction of device memory a plan must leave free (default: the profile's "
                                    "memory_headroom, 0.05 when it states none)")
share_option = click.option("--collective-sm-share", type=AsciiFloatRange(0, 1, max_open=True), default=None,
                            help="share of a device a collective takes from the compute it overlaps (default: the "
                                 "profile's collective_sm_share, 0.159 on the GPU data sheets, 0 where it states "
                                 "none; scripts/collective_contention.py measures it)")


def search_progress(console, status, planning: str):
    """What a long search reports its progress to (`search`'s `progress`, the limits' probes): the status line on a
    terminal (rich shows it only there), else a line on stderr at most every PROGRESS_EVERY_S seconds from the
    first, so that a search of minutes is never silent and a short one prints nothing."""
    from autoconf.solve.search import PROGRESS_EVERY_S

    if console.is_terminal:
        return lambda line: status.update(Text(f"{planning}: {line}"))
    last = [time.perf_counter()]

    def report(line: str) -> None:
        now = time.perf_counter()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            click.echo(f"autoconf: {planning}: {line}", err=True)
    return report


def with_overrides(cluster, memory_headroom: float | None, collective_sm_share: float | None):
    """The profile with what the command line sets in place of its own values."""
    return cluster.with_overrides({"memory_headroom": memory_headroom, "collective_sm_share": collective_sm_share})


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
        except click.exceptions.NoArgsIsHelpError as err:  # a bare `autoconf`: its help, as `--help` prints it
            click.echo(err.ctx.get_help())
            sys.exit(0)
        except OSError as err:  # a system call failed (a full disk, a closed pipe): one line, not a traceback
            _drop_stdout()
            if not isinstance(err, BrokenPipeError):
                where = f": {shown(err.filename)}" if err.filename else " (writing the output)"
                if err.errno == errno.ENAMETOOLONG:  # the user's path, not the system, is at fault
                    click.echo(f"autoconf: error: {err.strerror}{where}; use a shorter path (at most 255 bytes a "
                               f"name)", err=True)
                    sys.exit(2)
                click.echo(f"autoconf: error: {err.strerror or err}{where}", err=True)
            sys.exit(1)
        except click.ClickException as err:
            message = " ".join(err.format_message().split())
            ctx = getattr(err, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            pinned = _fix_hint(err, ctx)
            if pinned:
                message, hint = f"No such option '{err.option_name}': {pinned}", ""
            click.echo(f"autoconf: error: {message}{hint}", err=True)
            sys.exit(err.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def _fix_hint(err: click.ClickException, ctx) -> str | None:
    """For an option a command lacks that names a layout choice its --fix pins (`plan --tp 2`): how to pin it."""
    from autoconf.solve.space import ALIASES, FIXABLE

    if not isinstance(err, click.NoSuchOption) or ctx is None:
        return None
    if not any("--fix" in param.opts for param in ctx.command.params):
        return None
    key = err.option_name.lstrip("-").replace("-", "_")
    if ALIASES.get(key, key) not in FIXABLE:
        return None
    return f"{ctx.command_path} chooses {key} itself; pin it with --fix {key}=VALUE"


def _drop_stdout() -> None:
    """Points stdout at the null device, so the interpreter's last flush of output that could not be written does
    not fail again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def output_path(ctx, param, value):
    """An --out given as an empty string or "." is refused by name (click reads both as the current folder, which
    outputs would be strewn into, among the user's files)."""
    if value is not None and str(value).strip() in ("", "."):
        flag = param.opts[0] if param is not None and param.opts else "--out"
        raise click.BadParameter("must name a file or a folder of its own, got the current folder (\".\" or an empty "
                                 f"path); e.g. {flag} out", ctx=ctx, param=param)
    return value


def output_file(ctx, param, value):
    """A file output as a Path: empty paths and paths that end in a separator (a folder the user meant to write
    into, which Path would turn into a file of the folder's name) are refused by name."""
    value = output_path(ctx, param, value)
    if value is None:
        return None
    if value.endswith(("/", os.sep)):
        example = "memory.png" if param.name == "memory_picture" else f"{ctx.info_name}.json"
        raise click.BadParameter(f"{value!r} names a folder; give a file in it, e.g. "
                                 f"{str(Path(value) / example)!r}", ctx=ctx, param=param)
    return Path(value)


def png_file(ctx, param, value):
    """`output_file` for a PNG picture: a name with another extension is refused (the file would hold PNG bytes
    under a name that says otherwise)."""
    path = output_file(ctx, param, value)
    if path is not None and path.suffix.lower() != ".png":
        raise click.BadParameter(f"{str(path)!r}: the picture is a PNG; give a name ending in .png, e.g. "
                                 f"{str(path.with_suffix('.png'))!r}", ctx=ctx, param=param)
    return path


def layer_counts(ctx, param, value):
    """--recompute-layers 3,1: one non-negative count per virtual stage."""
    if value is None:
        return None
    parts = str(value).split(",")
    counts = [int(v) for v in parts] if all(ascii_number(v) for v in parts) else [-1]
    if any(n < 0 for n in counts):
        raise click.BadParameter(f"expected comma-separated layer counts >= 0, one per stage (e.g. 3,1), got "
                                 f"{value!r}", ctx=ctx, param=param)
    return counts


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
@click.option("--json", "as_json", is_flag=True, help="print the profiles as JSON")
@user_errors
def profiles(as_json: bool) -> None:
    """List the bundled cluster profiles (data-sheet and measured)."""
    from autoconf.report.tables import print_table, profiles_table
    from autoconf.spec.cluster import bundled_profiles, load_cluster

    clusters = [load_cluster(name) for name in bundled_profiles()]
    if as_json:
        click.echo(json.dumps([{"name": c.name, "source": c.source, "device": c.device.name, "nodes": c.nodes,
                                "gpus_per_node": c.gpus_per_node, "memory_bytes": c.device.memory_bytes,
                                "price": c.price, "description": c.description} for c in clusters], indent=2))
    else:
        print_table(profiles_table(clusters))
        click.echo("a profile you measured (`autoconf profile --out FILE`) is used by its path: --cluster FILE")


@main.command()
@model_option
@cluster_option
@nodes_option
@gpn_option
@click.option("--tp", type=ASCII_INT, required=True)
@click.option("--pp", type=ASCII_INT, required=True)
@click.option("--dp", type=ASCII_INT, required=True)
@click.option("--cp", type=ASCII_INT, default=1, show_default=True,
              help="context parallelism: each sequence split over this many ranks")
@click.option("--vpp", type=ASCII_INT, default=1, show_default=True, help="model chunks (virtual stages) per rank")
@click.option("--ep", type=ASCII_INT, default=1, show_default=True, help="expert-parallel degree (MoE models)")
@click.option("--etp", type=ASCII_INT, default=1, show_default=True, help="expert tensor-parallel degree (MoE models)")
@click.option("--micro-batch", type=AsciiIntRange(1, MAX_GLOBAL_BATCH), required=True)
@click.option("--global-batch", type=AsciiIntRange(1, MAX_GLOBAL_BATCH), required=True)
@click.option("--seq-len", type=AsciiIntRange(1, MAX_SEQ_LEN), default=None,
              help=SEQ_LEN_DEFAULT)
@click.option("--schedule", default="1f1b", show_default=True,
              type=ScheduleChoice())
@click.option("--seq-chunks", type=AsciiIntRange(1, MAX_SEQ_LEN), default=1, show_default=True,
              help="schedule seq1f1b: chunks of each micro-batch's sequence that flow through the pipeline as units")
@click.option("--seq-split", type=click.Choice(SEQ_SPLITS), default="even", show_default=True,
              help="schedule seq1f1b: chunks of equal length, or of equal work (Seq1F1B's computation-wise split)")
@click.option("--zero", type=AsciiIntRange(0, 3), default=0, show_default=True)
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default="none", show_default=True)
@click.option("--recompute-layers", default=None, metavar="N,N,...", callback=layer_counts,
              help="recompute only the first N layers of each virtual stage (one count per stage; default: all)")
@click.option("--stage-layers", default=None, metavar="N,N,...", callback=layer_counts,
              help="transformer layers of each virtual stage in stage order, as a plan's partition holds them "
                   "(default: autoconf's default split, even but for room for MTP modules)")
@click.option("--selective-recompute", type=click.Choice(SELECTIVE_RECOMPUTE), default=None,
              help="what --recompute selective redoes: the attention core or torchtitan's per-op policy "
                   "(default: the framework's)")
@click.option("--sequence-parallel", is_flag=True)
@click.option("--cp-comm", type=click.Choice(CP_COMM), default=None,
              help="how context parallelism exchanges K/V: a ring of blocks or one all-gather (default: ring, or "
                   "allgather where the framework runs no ring)")
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="default: bf16 on GPUs, fp32 on CPU")
@click.option("--attention", type=click.Choice(["flash", "standard"]), default="flash", show_default=True)
@click.option("--offload-activations", is_flag=True,
              help="keep the blocks' saved activations in host memory (torch save_on_cpu)")
@click.option("--offload-optimizer", is_flag=True,
              help="keep parameters, gradients and optimizer states in host memory, optimizer step on the CPU "
                   "(FSDP2 CPUOffloadPolicy; needs --zero >= 1 and dp x cp > 1)")
@click.option("--grad-reduce", type=click.Choice(GRAD_REDUCE), default=None,
              help="sharded gradients (ZeRO >= 1): held unsharded until the step's last micro-batch, or "
                   "reduce-scattered every micro-batch (the layout label's rs-mb) [default: step where the "
                   "framework runs it, else microbatch]")
@click.option("--framework", type=click.Choice(FRAMEWORK_NAMES), default="autoconf", show_default=True,
              help="whose behaviour to predict: memory layout, DP/TP overlap, P2P scheme (autoconf/spec/frameworks.py)")
@click.option("--framework-flag", "framework_flags", multiple=True, metavar="KEY=VALUE",
              help="change one flag of the framework, e.g. param_gather_overlap=false (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print the plan object as JSON")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="write the plan here",
              callback=output_file)
@click.option("--force", is_flag=True, help="overwrite --out if it exists")
@click.option("--memory-picture", type=click.Path(dir_okay=False), default=None,
              callback=png_file, help="draw the memory breakdown of the rank that needs the most (a .png file)")
@headroom_option
@share_option
@user_errors
def estimate(model_arg, cluster_arg, nodes, gpus_per_node, tp, pp, dp, cp, vpp, ep, etp, micro_batch, global_batch,
             seq_len, schedule, seq_chunks, seq_split, zero, recompute, recompute_layers, stage_layers,
             selective_recompute, sequence_parallel, cp_comm, dtype, attention, offload_activations, offload_optimizer,
             grad_reduce, framework, framework_flags, as_json, out, force, memory_picture, memory_headroom,
             collective_sm_share) -> None:
    """Predict time and memory of one layout."""
    from autoconf.cost.estimate import estimate as run_estimate
    from autoconf.report.tables import prediction_table, print_table
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.plan import ParallelConfig
    from autoconf.spec.presets import load_model

    model = load_model(model_arg)
    written = load_cluster(cluster_arg)
    cluster = with_overrides(written.resized(nodes, gpus_per_node), memory_headroom, collective_sm_share)
    _unmeasured_links(written, cluster.nodes, cluster.gpus_per_node)
    if dtype:
        check_dtype(dtype, cluster.device.peak_flops, cluster.device.name)
    if selective_recompute is not None and recompute != "selective":
        raise UserError(f"--selective-recompute {selective_recompute} needs --recompute selective (got {recompute})")
    if seq_split != "even" and seq_chunks == 1:
        raise UserError(f"--seq-split {seq_split} splits sequences into chunks: add --schedule seq1f1b and "
                        f"--seq-chunks K (K > 1)")
    if cp_comm is not None and cp == 1:
        raise UserError(f"--cp-comm {cp_comm} says how context parallelism exchanges K/V: it needs --cp > 1")
    config = ParallelConfig(tp=tp, pp=pp, dp=dp, cp=cp, vpp=vpp, micro_batch_size=micro_batch,
                            global_batch_size=global_batch,
                            seq_len=default_seq_len(model) if seq_len is None else seq_len,
                            schedule=schedule, zero_stage=zero, recompute=recompute,
                            sequence_parallel=sequence_parallel, dtype=dtype or default_dtype(cluster),
                            attention=attention, ep=ep, etp=etp, offload_activations=offload_activations,
                            offload_optimizer=offload_optimizer, recompute_layers=recompute_layers,
                            selective_recompute=selective_recompute, seq_chunks=seq_chunks, seq_split=seq_split,
                            grad_reduce=grad_reduce or "step", cp_comm=cp_comm or "ring")
    partition = None
    if stage_layers is not None:
        partition = partition_of(stage_layers)
        checked = config.check(model, cluster.world_size)
        problem = partition_problem(model, checked, partition)
        if problem:
            even = ",".join(str(end - first) for first, end in uniform_partition(model.num_layers,
                                                                                 checked.num_stages))
            raise UserError(f"--stage-layers {','.join(map(str, stage_layers))}: {problem}; give pp x vpp = "
                            f"{checked.num_stages} counts adding up to the {model.num_layers} layers, e.g. "
                            f"--stage-layers {even}")
    execution = framework_execution(framework, framework_flags)
    if cp_comm is None and config.cp_comm not in execution.cp_comms:  # (the framework's own exchange)
        config = dataclasses.replace(config, cp_comm=execution.cp_comms[0])
    if grad_reduce is None and config.zero_sharded:  # the framework's own reduction where it runs only one
        runs = execution.grad_reductions(zero, pp)
        if "step" not in runs:
            config = dataclasses.replace(config, grad_reduce=runs[0])
    if grad_reduce == "microbatch" and not config.zero_sharded:
        raise UserError(f"--grad-reduce microbatch reduce-scatters sharded gradients: it needs --zero 1, 2 or 3 "
                        f"over dp x cp > 1 (got --zero {zero}, dp x cp {config.dp_cp})")
    if model.context_problem(config.seq_len):
        raise UserError(model.context_problem(config.seq_len))
    from autoconf.files import check_new, refuse_overwriting_inputs

    refuse_overwriting_inputs({"--out": out, "--memory-picture": memory_picture},
                              {"the model config": model_arg, "the cluster profile": cluster_arg})
    if memory_picture is not None:
        check_new(memory_picture, force)
    plan = run_estimate(model, cluster, config, partition=partition, execution=execution)
    for key in flags_without_effect(execution, plan.prediction, lambda ex: run_estimate(
            model, cluster, config, partition=partition, execution=ex).prediction):
        click.echo(f"autoconf: note: --framework-flag {key} changes nothing in this layout's prediction (the layout "
                   f"never reads it)", err=True)
    if out is not None:
        plan.save(out, force=force)
    if memory_picture is not None:
        from autoconf.report.pictures import worst_rank_png

        worst_rank_png(plan, memory_picture)
    if as_json:
        click.echo(plan.to_json(), nl=False)
    else:
        print_table(prediction_table(plan))
        _above_peak([plan])
        if plan.prediction.get("launchable") is False:
            click.echo(f"not launchable: {plan.prediction['not_launchable_reason']}")
        for path in (out, memory_picture):
            if path is not None:
                click.echo(f"wrote {path}")
    if not plan.prediction["fits"]:  # the prediction is printed, and the exit code says it cannot run
        from autoconf.solve.fit import does_not_fit_message

        raise UserError(does_not_fit_message(plan, model, cluster, execution))


def _plan_title(model, cluster, global_batch: int, seq_len: int) -> str:
    """The title of `plan`'s table of one cluster size."""
    from autoconf.report.tables import counted

    return (f"{model.name} on {cluster.name} ({counted(cluster.world_size, 'device')}), global batch {global_batch}, "
            f"seq {seq_len}")


@main.command()
@model_option
@cluster_option
@click.option("--nodes", "nodes_arg", default=None, metavar="N|A:B|A:B:STEP",
              help="resize a uniform profile to N nodes; a range A:B plans every power of two times A up to B (and "
                   "B itself), A:B:STEP every STEP-th size, and shows time against cost (a range needs --tokens)")
@gpn_option
@click.option("--global-batch", type=AsciiIntRange(1, MAX_GLOBAL_BATCH), required=True)
@click.option("--seq-len", type=AsciiIntRange(1, MAX_SEQ_LEN), default=None,
              help=SEQ_LEN_DEFAULT)
@click.option("--tokens", "tokens_arg", default=None, metavar="COUNT",
              help="tokens to train on, e.g. 2T or 300B: adds days, GPU-hours and cost to train")
@click.option("--price", type=ASCII_FLOAT, default=None, metavar="USD_PER_GPU_HOUR",
              help="price per GPU-hour (default: the profile's published price, if it states one)")
@click.option("--deadline", "deadline_arg", default=None, metavar="DURATION",
              help="e.g. 30d, 36h, 6w (a bare number is days): with a --nodes range, the cheapest size that "
                   "trains within it")
@click.option("--fix", "fix", multiple=True, metavar="KEY=VALUE",
              help="pin a config field, e.g. --fix tp=8 --fix schedule=1f1b (repeatable)")
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="default: bf16 on GPUs, fp32 on CPU")
@click.option("--attention", type=click.Choice(["flash", "standard"]), default="flash", show_default=True)
@click.option("--framework", type=click.Choice(FRAMEWORK_NAMES), default="autoconf", show_default=True,
              help="whose behaviour to plan for (autoconf/spec/frameworks.py)")
@click.option("--framework-flag", "framework_flags", multiple=True, metavar="KEY=VALUE",
              help="change one flag of the framework, e.g. param_gather_overlap=false (repeatable)")
@click.option("--top", "top_k", type=AsciiIntRange(1, 100), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help='print {"plans": [...], "search": {...}} as JSON')
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="write the best plan",
              callback=output_file)
@click.option("--explain", "explain_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write pictures and launch scripts here", callback=output_path)
@click.option("--force", is_flag=True, help="overwrite existing output files")
@headroom_option
@share_option
@user_errors
def plan(model_arg, cluster_arg, nodes_arg, gpus_per_node, global_batch, seq_len, tokens_arg, price, deadline_arg,
         fix, dtype, attention, framework, framework_flags, top_k, as_json, out, explain_dir, force,
         memory_headroom, collective_sm_share) -> None:
    """Search every sensible layout and write the best plan (with --tokens: time and cost to train; with a --nodes
    range: the best plan of every cluster size)."""
    from autoconf.report.tables import (bought_rows, counted, hours, hours_name, money, print_table, ranked_table,
                                        table_console)
    from autoconf.solve import sweep as sizes
    from autoconf.solve.search import explain_infeasible, search
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.presets import load_model

    node_counts = None if nodes_arg is None else sizes.parse_nodes(nodes_arg)
    tokens = None if tokens_arg is None else sizes.parse_tokens(tokens_arg)
    deadline = None if deadline_arg is None else sizes.parse_deadline(deadline_arg)
    if price is not None:
        sizes.check_price(price)
    if tokens is None and (price is not None or deadline is not None or (node_counts and len(node_counts) > 1)):
        raise UserError("--price, --deadline and a --nodes range need --tokens (how many tokens to train on, e.g. "
                        "--tokens 2T)")
    model = load_model(model_arg)
    written = load_cluster(cluster_arg)
    cluster = with_overrides(written.resized(node_counts[0] if node_counts else None, gpus_per_node),
                             memory_headroom, collective_sm_share)
    _unmeasured_links(written, max(node_counts or [cluster.nodes]), cluster.gpus_per_node)
    odd = [n for n in node_counts or () if not cluster.takes_nodes(n)]
    if odd and len(node_counts) > 1:  # (a size the range made, which the user never typed)
        domain = cluster.nodes_per_domain
        raise UserError(f"--nodes {nodes_arg} includes {odd[0]} nodes, which {cluster.name}'s scale-up domains of "
                        f"{domain} nodes do not take (at most {domain} or a multiple of it); give a range of such "
                        f"sizes, e.g. {domain}:{max(node_counts[-1] // domain, 2) * domain}:{domain}")
    fixed = parse_fix(fix)
    seq_len = default_seq_len(model) if seq_len is None else seq_len
    if seq_len < 1:
        raise UserError(f"--seq-len must be >= 1 (got {seq_len})")
    dtype = chosen_dtype(fixed, dtype, cluster)
    check_trainable_dtype(dtype, cluster)
    if global_batch < 1:
        raise UserError(f"--global-batch must be >= 1 (got {global_batch})")
    inputs = {"the model config": model_arg, "the cluster profile": cluster_arg}
    if out is not None:
        from autoconf.files import check_new, refuse_overwriting_inputs

        refuse_overwriting_inputs({"--out": out}, inputs)  # (first: --force would not help)
        check_new(out, force)  # before the search, which can take a while
    if explain_dir is not None:
        from autoconf.report.explain import SWEEP_PICTURE, refuse_taken_folder

        sweeping = node_counts is not None and len(node_counts) > 1
        refuse_taken_folder(explain_dir, force, out, extra=(SWEEP_PICTURE,) if sweeping else (), inputs=inputs)
    execution = framework_execution(framework, framework_flags)
    console = table_console(stderr=as_json)
    usd, price_source = sizes.price_of(cluster, price) if tokens is not None else (None, None)
    if node_counts is not None and len(node_counts) > 1:
        return plan_sweep(model, cluster, node_counts, global_batch, seq_len, dtype, attention, fixed, execution,
                          tokens, usd, price_source, deadline, as_json, out, explain_dir, force, console)
    planning = f"planning {model.name} on {counted(cluster.world_size, 'device')}"
    with console.status(Text(f"{planning} ...")) as status:
        result = search(model, cluster, global_batch, seq_len, dtype, attention, fixed, top_k, execution,
                        progress=search_progress(console, status, planning))
    if not result.plans:
        raise UserError(explain_infeasible(model, cluster, result, global_batch, seq_len, dtype, attention, fixed,
                                           execution))
    if tokens is not None:
        for candidate in result.plans:
            candidate.prediction["training"] = sizes.training(candidate.prediction, tokens, cluster.world_size, usd,
                                                              price_source)
        days = result.plans[0].prediction["training"]["days"]
        if deadline is not None and days > deadline:
            if not as_json:  # what the size would take, before the line saying it misses the deadline
                print_table(ranked_table(result.plans, _plan_title(model, cluster, global_batch, seq_len),
                                         wide=console.width >= 130), console)
            advice = sizes.beyond_deadline_advice(cluster.nodes, cluster.gpus_per_node, days, deadline, global_batch)
            raise UserError(f"the best plan on {counted(cluster.nodes, 'node')} needs {sizes.format_days(days)}, "
                            f"over the deadline of {sizes.format_days(deadline)}; {advice}")
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
    print_table(ranked_table(result.plans, _plan_title(model, cluster, global_batch, seq_len),
                             wide=console.width >= 130), console)
    console.print(search_summary(s))
    for label, value in bought_rows(best).items():
        console.print(f"#1 {label}: {value}", highlight=False)
    _above_peak(result.plans)
    if not execution.is_executor:  # (planned for another framework: its plans are exported, never launched here)
        console.print(f"planned for {execution.name}: `autoconf show PLAN --out DIR` (or --explain) writes #1's "
                      f"Megatron-LM arguments and torchtitan config; `launch` runs only plans made for autoconf's "
                      f"executor")
    elif best.prediction.get("launchable") is False:
        console.print(f"#1 is not launchable by autoconf's executor: {best.prediction['not_launchable_reason']} "
                      f"(--explain writes the Megatron-LM and torchtitan exports, not autoconf's launch scripts)")
    if tokens is not None:
        t = best.prediction["training"]
        cost = "" if t["cost"] is None else f", {money(t['cost'])} at ${t['usd_per_gpu_hour']:g}/GPU-hour"
        console.print(f"#1 trains on {t['tokens']:,} tokens in {sizes.format_days(t['days'])}: "
                      f"{hours(t['gpu_hours'])} {hours_name(best)}"
                      + (cost or " (no price: pass --price USD_PER_GPU_HOUR)"))
        short = sizes.under_one_step(t["tokens"], global_batch, seq_len)
        if short:
            console.print(f"note: {short}")
    if out is not None:
        console.print(f"wrote {out}")
    for path in written:
        console.print(f"wrote {path}")


def plan_sweep(model, cluster, node_counts, global_batch, seq_len, dtype, attention, fixed, execution, tokens, usd,
               price_source, deadline, as_json, out, explain_dir, force, console) -> None:
    """`plan --nodes A:B`: the best plan of every size, the Pareto front of time against cost, and the chosen size
    (the cheapest within --deadline, else the fastest)."""
    from autoconf.report.tables import counted, hours_name, print_table, sweep_table
    from autoconf.solve import sweep as sizes

    def line(n: int) -> str:
        return f"planning {model.name} on {counted(n, 'node')} ({node_counts.index(n) + 1}/{len(node_counts)}) ..."

    with console.status("") as status:
        # (rich's status line shows only on a terminal: piped, each size is a line on stderr, so a long sweep is
        # never silent)
        progress = ((lambda n: status.update(Text(line(n)))) if console.is_terminal
                    else (lambda n: click.echo(f"autoconf: {line(n)}", err=True)))
        told = search_progress(console, status, f"planning {model.name}")

        def searching(nodes: int, text: str) -> None:
            told(f"{counted(nodes, 'node')}: {text}")
        points = sizes.sweep(model, cluster, node_counts, global_batch, seq_len, dtype, attention, fixed, execution,
                             tokens, usd, price_source, progress=progress, search_progress=searching)
    front = sizes.pareto_front(points)
    if not front:
        reasons = "; ".join(f"{counted(p.nodes, 'node')}: {p.reason}" for p in points[:3])
        raise UserError(f"no cluster size from {node_counts[0]} to {node_counts[-1]} nodes has a layout ({reasons})")
    title = (f"{model.name} on {cluster.name}, {tokens:,} tokens, global batch {global_batch}, seq {seq_len}: "
             f"best plan per cluster size")
    try:
        chosen = sizes.cheapest_within(points, deadline, global_batch) if deadline is not None else front[0]
    except UserError:
        if not as_json:  # what each size would take, before the line saying none meets the deadline
            print_table(sweep_table(points, front, None, title), console)
        raise
    written = []
    if explain_dir is not None:
        from autoconf.report.explain import SWEEP_PICTURE, explain
        from autoconf.report.pictures import sweep_png

        written = explain([chosen.plan], explain_dir, cluster=cluster.resized(nodes=chosen.nodes), plan_path=out,
                          force=force, sweep=True)
        written.append(sweep_png(points, front, chosen, explain_dir / SWEEP_PICTURE, deadline))
    if out is not None:
        chosen.plan.save(out, force=force)
    if as_json:
        click.echo(json.dumps({"plans": [chosen.plan.to_dict()], "sweep": [p.to_dict() for p in points],
                               "chosen_nodes": chosen.nodes, "search": sizes.search_stats(points)}, indent=2))
        return
    print_table(sweep_table(points, front, chosen, title), console)
    _above_peak([point.plan for point in points if point.plan is not None])
    why = (f"the cheapest size within {sizes.format_days(deadline)}" if deadline is not None
           else "the fastest size (pass --deadline to pick the cheapest that meets it)")
    console.print(f"* Pareto front (no other size is both faster and cheaper); > chosen: "
                  f"{counted(chosen.nodes, 'node')}, {why}")
    if usd is None:
        console.print(f"no price: cost is in {hours_name(chosen.plan)}; pass --price USD_PER_GPU_HOUR")
    else:
        console.print(f"price: {usd:g} USD per GPU-hour ({price_source})")
    short = sizes.under_one_step(tokens, global_batch, seq_len)
    if short:
        console.print(f"note: {short}")
    if explain_dir is None:
        console.print("add --explain DIR for the picture of time against cost (sweep.png)")
    if out is not None:
        console.print(f"wrote {out}")
    for path in written:
        console.print(f"wrote {path}")


LIMITS = ("seq", "micro-batch", "model")


@main.command()
@click.option("--model", "model_arg", default=None,
              help="preset name, HF config.json or model JSON (for the sequence and micro-batch limits)")
@cluster_option
@nodes_option
@gpn_option
@click.option("--global-batch", type=AsciiIntRange(1, MAX_GLOBAL_BATCH), required=True)
@click.option("--seq-len", type=AsciiIntRange(1, MAX_SEQ_LEN), default=None,
              help=f"for the micro-batch and model limits ({SEQ_LEN_DEFAULT})")
@click.option("--max-seq-len", type=AsciiIntRange(1, MAX_SEQ_LEN), default=None,
              help="the longest sequence to try (default: the model's context)")
@click.option("--family", default=None,
              help="preset family for the largest model, e.g. llama3, gpt3 (default: the --model preset's family)")
@click.option("--only", "only", multiple=True, type=click.Choice(LIMITS),
              help="find only these limits (repeatable; default: every one that applies)")
@click.option("--fix", "fix", multiple=True, metavar="KEY=VALUE", help="pin a config field in every layout tried")
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="default: bf16 on GPUs, fp32 on CPU")
@click.option("--attention", type=click.Choice(["flash", "standard"]), default="flash", show_default=True)
@click.option("--framework", type=click.Choice(FRAMEWORK_NAMES), default="autoconf", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the limits, each with its plan, as JSON")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              callback=output_path, help="write the plan of each limit here (limit_seq.json, ...)")
@click.option("--force", is_flag=True, help="overwrite existing plan files in --out")
@user_errors
def limits(model_arg, cluster_arg, nodes, gpus_per_node, global_batch, seq_len, max_seq_len, family, only, fix,
           dtype, attention, framework, as_json, out_dir, force) -> None:
    """What fits this cluster: the longest sequence, the largest micro-batch, the largest model of a family."""
    from autoconf.report.tables import limits_table, print_table, table_console
    from autoconf.solve import limits as lim
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.presets import PRESETS, load_model

    wanted = set(only or LIMITS)
    if model_arg is None:
        if not family or (only and wanted - {"model"}):
            raise UserError("give --model (for the sequence and micro-batch limits) or --family with --only model")
        wanted = {"model"}
    if family and "model" not in wanted:
        raise UserError(f"--family names the family of the largest-model limit, which --only "
                        f"{' '.join(sorted(wanted))} leaves out; add --only model or drop --family")
    if max_seq_len is not None and "seq" not in wanted:
        raise UserError(f"--max-seq-len bounds the longest-sequence limit, which --only {' '.join(sorted(wanted))} "
                        f"leaves out; add --only seq or drop --max-seq-len")
    if seq_len is not None and not wanted & {"micro-batch", "model"}:
        raise UserError("--seq-len is the sequence length of the micro-batch and model limits, which --only seq "
                        "leaves out (the sequence limit searches lengths itself); drop --seq-len or use --max-seq-len")
    model = load_model(model_arg) if model_arg is not None else None
    if "model" in wanted and family is None:
        if model.name not in PRESETS:  # a model from a file has no family of presets
            if only:
                raise UserError(f"--only model: {model.name} is not a preset, so it has no family; give --family")
            wanted.discard("model")
        else:
            family = lim.family_of(model.name)
    cluster = load_cluster(cluster_arg, nodes, gpus_per_node)
    fixed = parse_fix(fix)
    dtype = chosen_dtype(fixed, dtype, cluster)
    check_trainable_dtype(dtype, cluster)
    planner = lim.Planner(cluster, global_batch, dtype, attention, fixed, frameworks.execution(framework))
    if out_dir is not None:
        from autoconf.files import check_new, refuse_overwriting_inputs

        for key in wanted:
            path = out_dir / f"limit_{key.replace('-', '_')}.json"
            refuse_overwriting_inputs({"--out": path}, {"the model config": model_arg,
                                                        "the cluster profile": cluster_arg})
            check_new(path, force)
    console = table_console(stderr=as_json)
    found = {}
    with console.status("") as status:
        if "seq" in wanted:
            status.update(Text(f"longest sequence of {model.name} on {cluster.world_size} devices ..."))
            planner.progress = search_progress(console, status, f"longest sequence of {model.name} on "
                                                                f"{cluster.world_size} devices")
            found["seq"] = lim.longest_sequence(planner, model, max_seq_len)
        if "micro-batch" in wanted:
            status.update(Text(f"largest micro-batch of {model.name} on {cluster.world_size} devices ..."))
            planner.progress = search_progress(console, status, f"largest micro-batch of {model.name} on "
                                                                f"{cluster.world_size} devices")
            found["micro-batch"] = lim.largest_micro_batch(planner, model, seq_len or default_seq_len(model))
        if "model" in wanted:
            status.update(Text(f"largest {family} model on {cluster.world_size} devices ..."))
            planner.progress = search_progress(console, status, f"largest {family} model on "
                                                                f"{cluster.world_size} devices")
            found["model"] = lim.largest_model(planner, family, seq_len)
    written = []
    if out_dir is not None:
        for key, limit in found.items():
            if limit.plan is not None:
                path = out_dir / f"limit_{key.replace('-', '_')}.json"
                limit.plan.save(path, force=force)  # (which makes the folder, or says in one line why it cannot)
                written.append(path)
    if as_json:
        click.echo(json.dumps({key.replace("-", "_"): limit.to_dict() for key, limit in found.items()}, indent=2))
        return
    title = f"What fits {cluster.name} ({cluster.nodes} x {cluster.gpus_per_node} devices), global batch {global_batch}"
    print_table(limits_table(list(found.values()), title), console)
    for limit in found.values():
        tried = ", ".join(f"{v}{'' if ok else ' (no)'}" for v, ok in limit.probes)
        console.print(f"{limit.what}: tried {tried}" + (f"; {limit.note}" if limit.note else ""))
    for path in written:
        console.print(f"wrote {path}")
    if out_dir is not None:
        for limit in found.values():
            if limit.plan is None:
                console.print(f"{limit.what}: nothing fits, so no plan was written for it")


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
    from autoconf.report.current import current, plan_cluster

    if cluster is None and (plan_obj.timeline is None or not plan_obj.timeline.events):
        cluster = plan_cluster(plan_obj)  # the timeline is simulated again on it: refused before anything is printed
    plan_obj, note = current(plan_obj, cluster, source=str(plan_path))  # (an edited plan's prediction made again)
    needed = {"iteration_time_s", "tokens_per_s", "tflops_per_gpu", "mfu", "bubble_fraction", "peak_memory_bytes",
              "memory_limit_bytes", "fits", "memory_per_stage"}
    if not needed <= set(plan_obj.prediction):  # (its pictures are drawn from the prediction: before writing any)
        raise UserError(f"{plan_path}: no complete prediction in the plan (missing "
                        f"{', '.join(sorted(needed - set(plan_obj.prediction)))}); run `autoconf estimate` with its "
                        f"layout to make one")
    from autoconf.report.explain import default_show_folder, refuse_taken_folder

    # (the default folder, named after the plan, cannot hold the plan; it may hold the profile, and what it holds
    # already is kept there without --force, below)
    refuse_taken_folder(out_dir if out_dir is not None else default_show_folder(plan_path),
                        force or out_dir is None, plan_path if out_dir is not None else None,
                        inputs={"the cluster profile": cluster_arg})
    if note:
        click.echo(f"autoconf: note: {note}", err=True)
    print_table(prediction_table(plan_obj))
    _above_peak([plan_obj])
    if out_dir is None and not force:
        from autoconf.files import listed
        from autoconf.report.explain import taken_names

        folder = default_show_folder(plan_path)
        taken = taken_names(plan_obj, folder, plan_path)
        if taken:  # (an earlier show's, or the user's: kept either way, and named, as either may be there)
            kept = "it" if len(taken) == 1 else "them"
            click.echo(f"autoconf: note: {folder} already holds {listed(taken)}; kept {kept} and drew nothing "
                       f"(--force redraws the pictures and scripts there, --out DIR elsewhere)", err=True)
            return
    for path in show_plan(plan_path, out_dir, force=force, cluster=cluster, plan=plan_obj):
        click.echo(f"wrote {path}")


def _unmeasured_links(written, nodes: int, devices_per_node: int) -> None:
    """Prints `ClusterProfile.unmeasured_links_note` of profile `written` (as its file has it, not resized) for
    plans on `nodes` nodes of `devices_per_node` devices to stderr where there is one."""
    note = written.unmeasured_links_note(nodes, devices_per_node)
    if note:
        click.echo(f"autoconf: note: {note}", err=True)


def _above_peak(plans) -> None:
    """Prints `above_peak_note` of `plans` to stderr where there is one."""
    from autoconf.report.tables import above_peak_note

    note = above_peak_note(plans)
    if note:
        click.echo(f"autoconf: note: {note}", err=True)


@main.command()
@click.option("--out", type=click.Path(dir_okay=False), required=True, callback=output_file)
@click.option("--nproc-per-node", type=ASCII_INT, default=None, help="default: GPUs, or 2 (quick) / 4 CPU ranks")
@click.option("--nnodes", type=AsciiIntRange(1, 100_000), default=1, show_default=True)
@click.option("--node-rank", type=AsciiIntRange(min=0), default=0, show_default=True)
@click.option("--master-addr", default="127.0.0.1", show_default=True)
@click.option("--master-port", type=AsciiIntRange(1, 65535), default=None,
              help="default: a free port on one node, 29500 on more")
@click.option("--model", "model_arg", default=None, help="model whose blocks to time (default tiny-gpt on CPU)")
@click.option("--quick", is_flag=True, help="small grid: 2 CPU ranks, a tiny model, under 3 minutes")
@click.option("--base-profile", default=None,
              help="a profile of this host's kind of device (GPU: dgx-h100-80g, ...; CPU: cpu-local) supplying what "
                   "is not measured: the links a one-node or one-rank run cannot time, and on GPUs the efficiencies")
@click.option("--memory-per-rank", default=None, help="CPU memory limit per rank, e.g. 4GiB")
@click.option("--dtype", type=click.Choice(PROFILED_DTYPES), default=None)
@click.option("--max-tp", type=AsciiIntRange(min=1), default=None,
              help="time the model's blocks at TP widths up to this (default: the ranks per node), e.g. 8 on one GPU "
                   "of an 8-GPU node")
@click.option("--seq-len", "seq_lens", type=ASCII_INT, multiple=True,
              help="a sequence length to plan for (repeatable): attention is also timed there")
@click.option("--force", is_flag=True, help="overwrite --out if it exists")
@user_errors
def profile(out, nproc_per_node, nnodes, node_rank, master_addr, master_port, model_arg, quick, base_profile,
            memory_per_rank, dtype, max_tp, seq_lens, force) -> None:
    """Measure this cluster (compute, links, collectives, memory) into a profile."""
    from autoconf.files import refuse_overwriting_inputs
    from autoconf.profile.launch import profile as run_profile

    refuse_overwriting_inputs({"--out": out}, {"the model config": model_arg, "the base profile": base_profile})

    code = run_profile(out, nproc_per_node=nproc_per_node, nnodes=nnodes, node_rank=node_rank,
                       master_addr=master_addr, master_port=master_port, model=model_arg, quick=quick, force=force,
                       base_profile=base_profile, memory_per_rank=memory_per_rank, dtype=dtype, max_tp=max_tp,
                       seq_lens=seq_lens)
    if code > 128:  # stopped by a signal, which the launcher has reported
        sys.exit(code)
    if code != 0:
        raise UserError(f"profiling failed (torchrun exit code {code}); see the worker output above")
    if node_rank == 0:
        click.echo(f"profile: {out} (next: autoconf plan --model MODEL --cluster {shlex.quote(str(out))} "
                   f"--global-batch B)")


@main.command()
@click.argument("plan_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--steps", type=AsciiIntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=ASCII_INT, default=0, show_default=True)
@click.option("--data", type=click.Path(dir_okay=False), default=None,
              help="token file (.bin: uint16 ids up to a 65,536-token vocabulary, else uint32; a sidecar PATH.json "
                   "{\"dtype\": \"uint32\"} says otherwise) or text file; default: synthetic tokens")
@click.option("--metrics", type=click.Path(dir_okay=False), default=None,
              help="JSON lines, one per step (a run that resumes from --checkpoint-dir continues an existing file)")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None)
@click.option("--checkpoint-every", type=AsciiIntRange(min=0), default=0, show_default=True)
@click.option("--max-restarts", type=AsciiIntRange(min=0), default=0, show_default=True,
              help="torchrun's restarts of a failed worker group (none after a diverged run, which a restart "
                   "would repeat)")
@click.option("--dry-run", is_flag=True, help="print the command each node would run")
@click.option("--nnodes", type=AsciiIntRange(1, 100_000), default=None,
              help="nodes to run on (default: the plan's own node count)")
@click.option("--node-rank", type=AsciiIntRange(min=0), default=0, show_default=True)
@click.option("--master-addr", default="127.0.0.1", show_default=True,
              help="the address of the node that starts as rank 0, on several nodes (one node meets on 127.0.0.1)")
@click.option("--master-port", type=AsciiIntRange(1, 65535), default=None,
              help="default: a free port on one node, 29500 on more")
@click.option("--collective-timeout", type=AsciiFloatRange(1, 7 * 86400), default=None,
              help="seconds before a stuck collective ends the job (default 600)")
@click.option("--rendezvous-timeout", type=AsciiFloatRange(1, 7 * 86400), default=None,
              help="seconds to wait for every node to join (default 600)")
@click.option("--force", is_flag=True, help="overwrite an existing metrics file (of a run that does not resume)")
@click.option("--allow-cpu", is_flag=True, help="run a GPU plan on this host's CPU ranks (a rehearsal of the layout)")
@click.option("--allow-unfit", is_flag=True, help="launch a plan predicted not to fit in device memory")
@hyperparameter_options
@user_errors
def launch(plan_path, steps, seed, data, metrics, checkpoint_dir, checkpoint_every, max_restarts, dry_run, nnodes,
           node_rank, master_addr, master_port, collective_timeout, rendezvous_timeout, force, allow_cpu,
           allow_unfit, **hyperparameters) -> None:
    """Train a plan with the bundled torch executor under torchrun."""
    from autoconf.execute.launch import launch as run_launch

    code = run_launch(plan_path, steps=steps, seed=seed, data=data, metrics=metrics, checkpoint_dir=checkpoint_dir,
                      checkpoint_every=checkpoint_every, max_restarts=max_restarts, dry_run=dry_run, nnodes=nnodes,
                      node_rank=node_rank, master_addr=master_addr, master_port=master_port, force=force,
                      timeout_s=collective_timeout, rendezvous_timeout_s=rendezvous_timeout, allow_cpu=allow_cpu,
                      allow_unfit=allow_unfit, hyperparameters=hyperparameters)
    if code > 128:  # stopped by a signal, which the launcher has reported
        sys.exit(code)
    if code != 0:
        how = (f"torchrun was stopped by signal {-code}" if code < 0
               else f"torchrun exit code {code}; see the worker output above")
        resume = (f"; the same command resumes from the latest checkpoint in {shlex.quote(str(checkpoint_dir))}"
                  if checkpoint_dir is not None else "")
        raise UserError(f"training failed ({how}){resume}")


@main.command()
@model_option
@click.option("--cluster", "cluster_arg", required=True, help="the profile of the cluster the runs execute on")
@click.option("--global-batch", type=AsciiIntRange(1, MAX_GLOBAL_BATCH), required=True)
@click.option("--seq-len", type=AsciiIntRange(1, MAX_SEQ_LEN), default=None,
              help=SEQ_LEN_DEFAULT)
@click.option("--configs", type=AsciiIntRange(min=2), default=8, show_default=True,
              help=f"layouts to run, 2 to {MAX_CONFIGS}: each is a torchrun start and --steps steps, one after the "
                   f"other (about 15 s on a CPU host, minutes on GPUs); the log says the time left as runs finish")
@click.option("--steps", type=AsciiIntRange(min=3), default=8, show_default=True, help="steps per layout")
@click.option("--repeats", type=AsciiIntRange(min=1, max=20), default=1, show_default=True,
              help="run the layouts this many times in turn; each layout's measured time is the median")
@click.option("--fix", "fix", multiple=True, metavar="KEY=VALUE", help="pin a config field in every layout")
@click.option("--calibrate", is_flag=True, help="fit the profile's factors; report held-out error before/after")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              callback=output_path)
@click.option("--force", is_flag=True,
              help="overwrite report.json, scatter.png, calibrated_profile.json and runs/ in --out")
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
