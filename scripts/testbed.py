#!/usr/bin/env python
"""Emulate a multi-node cluster on this Linux machine (root needed); see docs/testbed.md.

    python scripts/testbed.py up --spec testbed.json     # namespaces, bridge, tc shaping, cgroups
    python scripts/testbed.py status                     # nodes, IPs, link matrix
    python scripts/testbed.py exec [--timeout S] -- python -m torch.distributed.run --nnodes {nnodes} \\
        --node-rank {node_rank} --nproc-per-node {nproc_per_node} --master-addr {master_addr} \\
        --master-port {master_port} train.py
    python scripts/testbed.py down                       # removes everything `up` made (idempotent)
    python scripts/testbed.py probe                      # what this machine allows
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoconf.errors import UserError  # noqa: E402
from autoconf.testbed import load_spec  # noqa: E402
from autoconf.testbed.runner import exec_nodes  # noqa: E402
from autoconf.testbed.system import down, probe, require_state, status_text, up  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/testbed.py", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", help="where the state file lives (default /tmp/autoconf-testbed, "
                                            "or $AUTOCONF_TESTBED_DIR)")
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("up", help="create the testbed from a JSON spec")
    p.add_argument("--spec", required=True, help="testbed spec JSON (see docs/testbed.md)")
    p.add_argument("--name", default="actb", help="prefix of every namespace/link/cgroup name (default actb)")
    sub.add_parser("down", help="remove everything `up` created (also after a failure; harmless when none)")
    sub.add_parser("status", help="print the nodes, their IPs and the link matrix")
    sub.add_parser("probe", help="print what this machine allows (namespaces, tc, netem, cgroups) as JSON")
    p = sub.add_parser("exec", help="run CMD on every node (placeholders {nnodes} {node_rank} {master_addr} "
                                    "{master_port} {nproc_per_node})")
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--timeout", type=float, help="kill every node after this many seconds (exit 124)")
    p.add_argument("--grace", type=float, default=15.0, help="seconds the other nodes get after one fails")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.verb == "up":
            state = up(load_spec(args.spec), args.state_dir, name=args.name)
            print(status_text(state))
        elif args.verb == "down":
            down(args.state_dir)
        elif args.verb == "status":
            print(status_text(require_state(args.state_dir)))
        elif args.verb == "probe":
            result = probe()
            print(json.dumps(result, indent=2))
            return 0 if result["ok"] else 1
        elif args.verb == "exec":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                raise UserError("exec needs a command after --, e.g. exec -- hostname")
            if not 1 <= args.master_port <= 65535:
                raise UserError(f"--master-port {args.master_port} is not a TCP port (1..65535)")
            return exec_nodes(require_state(args.state_dir), cmd, args.master_port, args.timeout, args.grace)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
