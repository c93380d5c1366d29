"""Extracts the command-line flags of a Megatron-LM release into scripts/data/ (what the exporter's tests check
megatron_args.txt against).

It builds Megatron-LM's own parser (`megatron.training.arguments.add_megatron_arguments`) and records, for every
option string, its destination, the kind of value it takes (int, float, str, a flag, or another parser function),
nargs and choices. It needs a checkout of Megatron-LM at the tag and megatron-core installed:

    git clone --branch core_v0.16.1 https://github.com/NVIDIA/Megatron-LM /tmp/mlm
    pip install megatron-core==0.16.1
    python scripts/megatron_flags.py /tmp/mlm --tag core_v0.16.1 --out scripts/data/megatron_lm_core_v0.16.1_flags.json
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
from pathlib import Path

from upstream_checkout import checkout_args

KINDS = {int: "int", float: "float", str: "str", None: "str"}


def _kind(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "flag"  # store_true / store_false / store_const / count
    return KINDS.get(action.type, "other")


def extract(source: Path) -> dict:
    sys.path.insert(0, str(source))
    from megatron.training.arguments import add_megatron_arguments

    parser = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
    flags = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        entry = {"dest": action.dest, "kind": _kind(action)}
        if action.nargs not in (None, 0):
            entry["nargs"] = action.nargs
        if action.choices is not None:
            # enum choices (e.g. AttnBackend) are given on the command line by name
            entry["choices"] = [c.name if isinstance(c, enum.Enum) else c if isinstance(c, (int, float, str))
                                else str(c) for c in action.choices]
        for name in action.option_strings:
            flags[name] = entry
    return dict(sorted(flags.items()))


def main() -> None:
    args, commit = checkout_args(__doc__.splitlines()[0], "Megatron-LM")
    flags = extract(args.source)
    doc = {"source": "https://github.com/NVIDIA/Megatron-LM/blob/"
                     f"{args.tag}/megatron/training/arguments.py (add_megatron_arguments)",
           "tag": args.tag, "commit": commit, "extracted_by": "scripts/megatron_flags.py",
           "flags": flags}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(flags)} option strings from Megatron-LM {args.tag} -> {args.out}")


if __name__ == "__main__":
    main()
