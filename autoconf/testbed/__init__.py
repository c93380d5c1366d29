"""Emulated multi-node cluster on one Linux machine (network namespaces, tc shaping, cgroup CPU quotas).

`scripts/testbed.py` is the command line; see docs/testbed.md. Torch-free.
"""

from autoconf.testbed.commands import Names, node_argv, substitute, tc_commands
from autoconf.testbed.spec import Link, TestbedSpec, load_spec, parse_spec

__all__ = ["Link", "Names", "TestbedSpec", "load_spec", "node_argv", "parse_spec", "substitute", "tc_commands"]
