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

EXIT_USER_ERROR = 2


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
    from autoconf.solve.space import FIXABLE, parse_fix_value

    fixed = {}
    for item in values:
        if "=" not in item:
            raise UserError(f"--fix {item!r} must look like KEY=VALUE, e.g. --fix tp=8 (keys: {', '.join(FIXABLE)})")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        fixed[key] = parse_fix_value(key, value.strip())
    return fixed


model_option = click.option("--model", "model_arg", required=True,
                            help="preset name (autoconf models), HF config.json, or autoconf model JSON")
cluster_option = click.option("--cluster", "cluster_arg", required=True,
                              help="bundled profile (dgx-a100-80g, dgx-h100-80g, cpu-local) or a profile path")
nodes_option = click.option("--nodes", type=int, default=None, help="resize a uniform profile to N nodes")
gpn_option = click.option("--gpus-per-node", type=int, default=None, help="resize a uniform profile's nodes")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--micro-batch", type=int, required=True)
@click.option("--global-batch", type=int, required=True)
@click.option("--seq-len", type=int, default=None, help="default: the model's context, at most 8192")
@click.option("--schedule", default="1f1b", show_default=True,
              type=click.Choice(["gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zb-h1", "zbv", "dualpipev"]))
@click.option("--zero", type=click.IntRange(0, 3), default=0, show_default=True)
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default="none", show_default=True)
@click.option("--sequence-parallel", is_flag=True)
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="default: bf16 on GPUs, fp32 on CPU")
@click.option("--attention", type=click.Choice(["flash", "standard"]), default="flash", show_default=True)
@click.option("--framework", type=click.Choice(["autoconf", "megatron"]), default="autoconf", show_default=True,
              help="whose memory layout and P2P scheme to predict")
@click.option("--json", "as_json", is_flag=True, help="print the plan object as JSON")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="write the plan here")
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
    config = ParallelConfig(tp=tp, pp=pp, dp=dp, vpp=vpp, micro_batch_size=micro_batch,
                            global_batch_size=global_batch, seq_len=seq_len or default_seq_len(model),
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


def run() -> None:
    main(prog_name="autoconf")


if __name__ == "__main__":
    run()
