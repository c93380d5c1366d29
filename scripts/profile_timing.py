"""Times `autoconf profile` on this machine: --quick with 2 CPU ranks and the full profile with 4, and prints the
headline measurements of each (p2p latency and bandwidth, matmul rate per rank, copy bandwidth, an all-reduce).

    python scripts/profile_timing.py [--out-dir DIR] [--only quick|full]

The load average is printed too: on a shared host other work inflates every number.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoconf.profile.launch import profile  # noqa: E402
from autoconf.spec.cluster import load_cluster  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(kind: str, ranks: int, out_dir: Path) -> None:
    out = out_dir / f"profile-{kind}-{ranks}.json"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    rc = profile(out, nproc_per_node=ranks, quick=kind == "quick", force=True, master_port=_free_port())
    wall = time.perf_counter() - start
    if rc != 0:
        print(f"{kind}: torchrun exited with {rc}")
        return
    c = load_cluster(str(out))
    link = c.intra_node
    print(f"\n== {kind}, {ranks} CPU ranks: {wall:.1f} s wall (load average before: {load:.1f})")
    print(f"   p2p (gloo, loopback): latency {link.latency_s * 1e6:.1f} us, bandwidth {link.bandwidth_Bps / 1e9:.2f} GB/s")
    print("   matmul per rank: " + ", ".join(f"{d} {v / 1e9:.1f} GFLOP/s" for d, v in c.device.peak_flops.items()))
    print(f"   copy bandwidth per rank: {c.device.memory_bandwidth_Bps / 1e9:.1f} GB/s; attention efficiency "
          f"{c.eff('attention'):.2f}")
    for point in c.collectives.get("all_reduce", {}).get("intra", []):
        print(f"   all_reduce {point['ranks']} ranks {point['bytes'] / 2 ** 20:.2f} MiB: {point['time_s'] * 1e3:.2f} ms")
    print(f"   compute entries: {len(c.compute['entries'])}, AdamW {c.compute['optimizer_s_per_param'] * 1e9:.2f} ns/param")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default="/tmp/autoconf-profile-timing")
    parser.add_argument("--only", choices=["quick", "full"])
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "quick"):
        run("quick", 2, out_dir)
    if args.only in (None, "full"):
        run("full", 4, out_dir)


if __name__ == "__main__":
    main()
