"""The command line of the scripts that extract a data file from an upstream checkout at a tag
(scripts/megatron_flags.py, scripts/pytorchjob_schema.py): the checkout, its tag, the output file, and the commit
the data file cites."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path


def checkout_args(description: str, what: str) -> tuple[argparse.Namespace, str]:
    """(arguments, commit): `source` (a checkout of `what` at the tag), `tag`, `out`; the commit is `--commit` or,
    by default, the checkout's HEAD."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("source", type=Path, help=f"a {what} checkout at the tag")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--commit", help="the tag's commit (default: the checkout's HEAD)")
    args = ap.parse_args()
    commit = args.commit or subprocess.run(["git", "-C", str(args.source), "rev-parse", "HEAD"],
                                           capture_output=True, text=True).stdout.strip()
    return args, commit
