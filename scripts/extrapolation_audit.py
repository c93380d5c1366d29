"""How far the search's extrapolated step times lie from the full simulation, over random layouts.

The search ranks candidates with `predict(..., extrapolate=True)`: a step of many micro-batches is simulated at two
smaller counts and extended linearly (`cost/estimate.py` `_extrapolated_step`). Its exactness rests on that never
lying below the full simulation nor more than EXTRAPOLATION_MARGIN above it. This script draws random layouts
(dense and MoE models, A100 and H100 nodes, every framework preset, every schedule, ZeRO stages, both gradient
reductions, recompute modes, some with context parallelism), predicts each both ways and prints every layout
outside those limits (or whose peak memory differs by more than rounding, 1e-9), then the extremes and how many
layouts were extrapolated (the others are simulated in full: too few micro-batches, or a step that had not settled
below m). It checks the partition polish's floor (`step_floor`) the same way: never above either prediction.

Usage: python scripts/extrapolation_audit.py [--seed N] [--layouts N]
"""

from __future__ import annotations

import argparse
import random

from autoconf.cost.estimate import EXTRAPOLATION_MARGIN, predict, step_floor
from autoconf.errors import UserError
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import PRESETS as FRAMEWORKS, execution
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS

MODELS = ("llama3-8b", "qwen3-30b-a3b", "gpt3-6.7b", "llama3-70b")
PROFILES = ("dgx-h100-80g", "dgx-a100-80g")
SCHEDULES = (("1f1b", 1), ("interleaved-1f1b", 2), ("interleaved-1f1b", 4), ("looped-bfs", 2), ("zb-h1", 1),
             ("zbv", 2), ("gpipe", 1), ("dualpipev", 2), ("seq1f1b", 1))


def random_layout(rng: random.Random):
    """(model name, cluster, framework, config) of one random layout; the config may be one its framework or model
    refuses (predict says so)."""
    name = rng.choice(MODELS)
    cluster = load_cluster(rng.choice(PROFILES), nodes=rng.choice([1, 2]))
    framework = rng.choice(sorted(FRAMEWORKS))
    schedule, vpp = rng.choice(SCHEDULES)
    pp, tp = rng.choice([2, 4, 8]), rng.choice([1, 2, 4])
    replicas = cluster.world_size // (pp * tp)
    if not replicas or cluster.world_size % (pp * tp):
        raise UserError("pp x tp does not divide the cluster")
    seq = rng.choice([1024, 4096])
    cp = 2 if seq == 4096 and replicas % 2 == 0 and rng.random() < 0.25 else 1
    dp = replicas // cp
    m = rng.choice([4 * pp + 1, 5 * pp, 7 * pp + 3, 12 * pp, 33, 64])
    config = ParallelConfig(
        tp=tp, pp=pp, dp=dp, cp=cp, vpp=vpp, micro_batch_size=1, global_batch_size=m * dp, seq_len=seq,
        schedule=schedule, seq_chunks=2 if schedule == "seq1f1b" else 1,
        zero_stage=rng.choice(execution(framework).zero_stages), grad_reduce=rng.choice(["step", "microbatch"]),
        recompute=rng.choice(["none", "selective", "full"]), sequence_parallel=tp > 1,
        ep=rng.choice([1, 2, 4, 8]) if PRESETS[name].moe is not None else 1)
    return name, cluster, framework, config


def audit(seed: int, layouts: int) -> dict:
    """`layouts` random layouts of `seed` predicted both ways: how many were extrapolated, the lowest and highest
    ratio of the extrapolated time to the full one, the highest ratio of the step floor to the lower of the two
    (`floor_highest`; 0 where no floor applies), and a line for each layout outside the limits (time in
    [1, 1 + EXTRAPOLATION_MARGIN], peak memory within rounding, the floor at most 1)."""
    rng = random.Random(seed)
    predicted = extrapolated = 0
    highest, lowest, floor_highest = 1.0, 1.0, 0.0
    outside = []
    while predicted < layouts:
        try:
            name, cluster, framework, c = random_layout(rng)
            fast = predict(PRESETS[name], cluster, c, execution=execution(framework), detail=False,
                           extrapolate=True)[3]
            full = predict(PRESETS[name], cluster, c, execution=execution(framework), detail=False)[3]
            floor = step_floor(PRESETS[name], cluster, c, execution=execution(framework))
        except UserError:
            continue
        predicted += 1
        below = floor / min(fast["iteration_time_s"], full["iteration_time_s"])
        floor_highest = max(floor_highest, below)
        if below > 1:
            outside.append(f"{name} on {cluster.name}, {framework}: {c.label()} m={c.num_microbatches}: "
                           f"step floor x{below:.12f} of the prediction")
        if not fast.get("extrapolated"):
            continue
        extrapolated += 1
        ratio = fast["iteration_time_s"] / full["iteration_time_s"]
        memory = fast["peak_memory_bytes"] / full["peak_memory_bytes"]
        highest, lowest = max(highest, ratio), min(lowest, ratio)
        if not 1 - 1e-12 <= ratio <= 1 + EXTRAPOLATION_MARGIN or abs(memory - 1) > 1e-9:
            outside.append(f"{name} on {cluster.name}, {framework}: {c.label()} m={c.num_microbatches}: "
                           f"time x{ratio:.12f}, peak memory x{memory:.15f}")
    return {"predicted": predicted, "extrapolated": extrapolated, "lowest": lowest, "highest": highest,
            "floor_highest": floor_highest, "outside": outside}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layouts", type=int, default=400, help="layouts predicted (refused ones not counted)")
    args = parser.parse_args()
    result = audit(args.seed, args.layouts)
    for line in result["outside"]:
        print(line)
    print(f"seed {args.seed}: {result['predicted']} layouts, {result['extrapolated']} extrapolated; extrapolated / "
          f"full time {result['lowest']:.12f} to {result['highest']:.12f} (limits 1 and 1 + {EXTRAPOLATION_MARGIN}); "
          f"step floor at most {result['floor_highest']:.9f} of the lower prediction (limit 1)")


if __name__ == "__main__":
    main()
