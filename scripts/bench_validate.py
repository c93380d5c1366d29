"""Validation figures: predicted vs measured step times of tiny-gpt layouts on 4 local CPU ranks, with calibration.

    python scripts/bench_validate.py [--profile PROFILE.json] [--out DIR] [--configs 10] [--steps 8]
                                     [--global-batch 16] [--seq-len 128] [--model tiny-gpt] [--nproc 4]
                                     [--quota CPUS] [--repeats R] [--quick-profile] [--no-refine]

Profiles this host first (--nproc CPU ranks, ~30 s) unless --profile names an existing profile, then runs
`autoconf validate --calibrate` through the library and prints one JSON line with the figures (median |error|,
Spearman, regret, held-out error before/after calibration, fitted factors). The issue's bar: median |error| <= 10%,
Spearman >= 0.8 over at least 8 layouts.

--quota CPUS (root): profile and run every layout in a one-node `scripts/testbed.py` testbed whose ranks each get a
cgroup CPU quota of CPUS cores, so every rank is a device of fixed speed (as GPUs are) instead of a process that
takes the cores its idle peers leave. Without it the ranks share this host's cores freely. Leave headroom: the
quotas together well under the host's cores (0.25 for 4 ranks on 2 cores), or the ranks still time-slice each other,
the launcher and gloo's threads, and a rank's speed depends on how many of its peers are busy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default=None)
    p.add_argument("--out", default="/tmp/autoconf-bench-validate")
    p.add_argument("--configs", type=int, default=10)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--model", default="tiny-gpt")
    p.add_argument("--nproc", type=int, default=4)
    p.add_argument("--quota", type=float, default=None, help="CPU cores per rank (cgroup quota; needs root)")
    p.add_argument("--repeats", type=int, default=1, help="run the layouts this many times in turn (median)")
    p.add_argument("--quick-profile", action="store_true", help="profile with the quick grid (default: full)")
    p.add_argument("--run-timeout", type=float, default=300.0, help="seconds per layout under --quota")
    p.add_argument("--no-refine", action="store_true",
                   help="run the planner's best with the default partition and placement (not CP-SAT's)")
    args = p.parse_args()

    from rich.console import Console

    from autoconf.errors import UserError
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.dtypes import default_dtype
    from autoconf.spec.presets import load_model
    from autoconf.validate.run import local_runner, report_table, validate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    profile = Path(args.profile) if args.profile else out / "profile.json"
    start = time.perf_counter()
    state = None
    if args.quota is not None:
        from autoconf.testbed import parse_spec
        from autoconf.testbed.system import down, up

        down()  # a leftover testbed from an interrupted run
        try:
            state = up(parse_spec({"nodes": 1, "ranks_per_node": args.nproc, "cpu_quota_per_rank": args.quota}))
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        if not profile.exists():
            if state is not None:
                from autoconf.testbed.jobs import profile_testbed

                code = profile_testbed(state, profile, args.model, out / "profile.log", 29500,
                                       quick=args.quick_profile)
            else:
                from autoconf.execute.launch import free_port
                from autoconf.profile.launch import profile as run_profile

                code = run_profile(profile, nproc_per_node=args.nproc, model=args.model, master_port=free_port(),
                                   quick=args.quick_profile)
            if code:
                print(f"profiling failed with exit code {code}", file=sys.stderr)
                return code
        profiled = time.perf_counter()
        if state is not None:
            from autoconf.testbed.jobs import launch_runner

            runner = launch_runner(state, args.run_timeout)
        else:
            runner = local_runner
        console = Console()
        cluster = load_cluster(str(profile))
        result = validate(load_model(args.model), cluster, cluster.name, args.global_batch, args.seq_len,
                          default_dtype(cluster), args.configs, args.steps,
                          out / "validate", calibrate=True, force=True, cluster_path=profile, log=console.print,
                          refine=not args.no_refine, runner=runner, repeats=args.repeats)
        console.print(report_table(result))
        report = result.to_dict()
    finally:
        if state is not None:
            down()
    cal = report.get("calibration") or {}
    ok = [r for r in report["runs"] if r["status"] == "ok"]
    figures = {
        "model": args.model, "ranks": args.nproc, "quota": args.quota, "repeats": args.repeats,
        "layouts": len(report["runs"]),
        "ok": len(ok), "steps": args.steps, "global_batch": args.global_batch, "seq_len": args.seq_len,
        "median_abs_error": report["median_abs_error"], "spearman": report["spearman"], "regret": report["regret"],
        "calibration_scheme": cal.get("scheme"),
        "held_out_before": cal.get("before"), "held_out_after": cal.get("after"), "factors": cal.get("factors"),
        "profile_s": round(profiled - start, 1), "validate_s": round(time.perf_counter() - profiled, 1),
        "report": str(out / "validate" / "report.json"),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
