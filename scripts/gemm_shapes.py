"""Checks the dgx-h100-80g profile's GEMM size curve against OpenXLA's measured H100 GEMM table, on the block GEMMs of
the Megatron-LM README's weak-scaling rows.

The profile prices a GEMM by its FLOPs alone (`matmul_size_curve`, Calculon's curve). OpenXLA measured isolated
bf16 GEMMs on H100 over m, n, k in 256..4096 and batches 1, 2, 4 (scripts/data/xla_h100_gemm_bf16.csv cites it).
For each weight GEMM of a block (QKV, output projection, FC1, FC2 on one TP rank, 4096 tokens) this reads the table
for its three passes (forward: tokens x in x out; input gradient: tokens x out x in; weight gradient: in x tokens x
out, as m x k x n) relative to the table's 4096^3 entry, and prints it beside the profile's factor.

Reading the table: log-linear in each of log2 m, n, k between grid points; a dimension beyond 4096 is held at 4096,
except rows (m) beyond 4096, read as batches of 4096 rows (up to 4, the table's largest batch); below 256 held at 256.

Usage: python scripts/gemm_shapes.py
"""

from __future__ import annotations

import csv
import itertools
import math
import sys
from pathlib import Path

from autoconf.cost.compute import matmul_size_factor
from autoconf.spec.cluster import load_cluster

DATA = Path(__file__).resolve().parent / "data" / "xla_h100_gemm_bf16.csv"
GRID = (256, 512, 1024, 2048, 4096)


def read_table(path: Path = DATA) -> dict[tuple[int, int, int, int], float]:
    """(b, m, n, k) -> FLOP/s of the data file."""
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {(int(r["b"]), int(r["m"]), int(r["n"]), int(r["k"])): float(r["flop_per_s"])
            for r in csv.DictReader(lines)}


def _bracket(x: float) -> tuple[int, int, float]:
    """The grid points around x (held at the ends) and x's share of the way between them in log2."""
    x = min(max(x, GRID[0]), GRID[-1])
    i = min(int(math.log2(x)) - int(math.log2(GRID[0])), len(GRID) - 2)
    return GRID[i], GRID[i + 1], math.log2(x) - math.log2(GRID[i])


def rate(table: dict, m: float, n: float, k: float) -> float:
    """FLOP/s of an (m x k) x (k x n) GEMM read from the table (the module docstring's rule)."""
    b = 1
    while m > GRID[-1] and b < 4:
        m, b = m / 2, b * 2
    log_rate = 0.0
    for (mm, wm), (nn, wn), (kk, wk) in itertools.product(*(((lo, 1 - f), (hi, f)) for lo, hi, f in
                                                             (_bracket(m), _bracket(n), _bracket(k)))):
        if wm * wn * wk:
            log_rate += wm * wn * wk * math.log(table[(b, mm, nn, kk)])
    return math.exp(log_rate)


def block_gemms(hidden: int, tp: int, tokens: int = 4096) -> list[tuple[str, int, int]]:
    """(name, in, out) of a GPT block's weight GEMMs on one TP rank (4h MLP)."""
    return [("qkv", hidden, 3 * hidden // tp), ("proj", hidden // tp, hidden), ("fc1", hidden, 4 * hidden // tp),
            ("fc2", 4 * hidden // tp, hidden)]


def compare(tokens: int = 4096) -> list[dict]:
    """Per weak-scaling row: each block GEMM's forward GFLOP, the profile's size factor, and the table's rate of its
    forward, input-gradient and weight-gradient pass relative to the 4096^3 GEMM; and the block's FLOP-weighted
    relative rate under each (the time-weighted harmonic mean)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from truth_megatron_core import read_rows

    table = read_table()
    plateau = table[(1, 4096, 4096, 4096)]
    cluster = load_cluster("dgx-h100-80g")
    out = []
    for row in read_rows():
        gemms, xla_time, curve_time, flops = [], 0.0, 0.0, 0.0
        for name, i, o in block_gemms(int(row["hidden"]), int(row["tp"]), tokens):
            f = 2.0 * tokens * i * o
            passes = [rate(table, tokens, o, i), rate(table, tokens, i, o), rate(table, i, o, tokens)]
            factor = matmul_size_factor(cluster, f)
            gemms.append({"gemm": name, "gflop": f / 1e9, "curve": factor, "xla": [r / plateau for r in passes]})
            xla_time += sum(f / (r / plateau) for r in passes)
            curve_time += 3 * f / factor
            flops += 3 * f
        out.append({"model": row["model"], "tp": int(row["tp"]), "gemms": gemms,
                    "curve_block": flops / curve_time, "xla_block": flops / xla_time})
    return out


def main() -> int:
    print("Block GEMMs of the Megatron-Core weak-scaling rows (4096 tokens per TP rank): the profile's size factor "
          "against OpenXLA's measured H100 rate (forward / input grad / weight grad) relative to its 4096^3 GEMM")
    for r in compare():
        cells = "  ".join(f"{g['gemm']} {g['gflop']:.0f}G {g['curve']:.2f} vs "
                          + "/".join(f"{x:.2f}" for x in g["xla"]) for g in r["gemms"])
        print(f"{r['model']:5s} tp{r['tp']}  {cells}  block: curve {r['curve_block']:.3f}, XLA {r['xla_block']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
