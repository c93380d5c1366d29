"""Pure command builders for the testbed: names, `tc` shaping per node pair, and the per-node exec wrapper.

Nothing here runs a command, so it is all testable on any machine.

Shaping: every node's veth (`eth0` inside its namespace) gets an HTB root on egress. For each other node j whose link
is shaped there is one class 1:(10+j) with the link's rate (rate = ceil, so it never borrows), a netem child for the
delay (when the kernel has netem), and a u32 filter on the destination IP steering traffic to that class. Traffic that
matches no filter (ARP, unshaped pairs) leaves unshaped (HTB `default 0`). Since both ends shape their own egress, a
pair (a, b) is shaped in both directions and the delay is added once per direction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autoconf.testbed.spec import Link, TestbedSpec

IFACE = "eth0"                      # the veth end inside each namespace
UNLIMITED_KBIT = 100_000_000        # 100 Gbit/s: a class that only carries a netem delay
PLACEHOLDERS = ("nnodes", "node_rank", "master_addr", "master_port", "nproc_per_node")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


@dataclass(frozen=True)
class Names:
    """Every kernel object name the testbed uses, derived from a short prefix (interface names are <= 15 chars)."""

    prefix: str = "actb"

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", self.prefix):
            raise ValueError(f"testbed name {self.prefix!r} must be 1-8 lower-case letters/digits, starting "
                             "with a letter")

    def netns(self, i: int) -> str:
        return f"{self.prefix}-node{i}"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    def host_veth(self, i: int) -> str:
        return f"{self.prefix}-v{i}"

    def hostname(self, i: int) -> str:
        return f"testbed-node{i}" if self.prefix == "actb" else f"{self.prefix}-node{i}"

    @property
    def cgroup(self) -> str:
        return f"autoconf-testbed-{self.prefix}"


def rate_kbit(link: Link) -> int:
    return UNLIMITED_KBIT if link.rate_mbit is None else max(int(round(link.rate_mbit * 1000)), 8)


def burst_bytes(kbit: int) -> int:
    """HTB bucket: at least two 64 KiB GSO super-packets (veth sends them), or 1 ms at the rate."""
    return max(2 * 65536 + 3028, kbit * 1000 // 8 // 1000)


def tc_commands(spec: TestbedSpec, node: int, netem: bool = True, dev: str = IFACE) -> list[list[str]]:
    """The tc command lines (to run inside node's namespace) that shape node's egress to every other node."""
    ips = spec.ips()
    cmds = [["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "0"]]
    for j in range(spec.nodes):
        if j == node:
            continue
        link = spec.link(node, j)
        if link is None or not link.shaped or (link.rate_mbit is None and not netem):
            continue
        classid = 10 + j
        kbit = rate_kbit(link)
        burst = burst_bytes(kbit)
        cmds.append(["tc", "class", "add", "dev", dev, "parent", "1:", "classid", f"1:{classid}", "htb",
                     "rate", f"{kbit}kbit", "ceil", f"{kbit}kbit", "burst", str(burst), "cburst", str(burst),
                     "quantum", "60000"])
        if netem and link.delay_ms > 0:
            cmds.append(["tc", "qdisc", "add", "dev", dev, "parent", f"1:{classid}", "handle", f"{classid}:",
                         "netem", "delay", f"{int(round(link.delay_ms * 1000))}us", "limit", "100000"])
        cmds.append(["tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                     "match", "ip", "dst", f"{ips[j]}/32", "flowid", f"1:{classid}"])
    return cmds


def substitute(cmd: list[str], values: dict) -> list[str]:
    """Replaces {nnodes} {node_rank} {master_addr} {master_port} {nproc_per_node}; other braces stay as they are."""
    missing = [p for p in PLACEHOLDERS if p not in values]
    if missing:
        raise ValueError(f"no value for placeholder(s) {', '.join(missing)}")
    return [_PLACEHOLDER_RE.sub(lambda m: str(values[m.group(1)]), arg) for arg in cmd]


def node_values(spec: TestbedSpec, node: int, master_port: int) -> dict:
    return {"nnodes": spec.nodes, "node_rank": node, "master_addr": spec.ips()[0], "master_port": master_port,
            "nproc_per_node": spec.ranks_per_node}


def node_env(values: dict) -> dict:
    """Environment added to the node's command (on top of the caller's)."""
    return {"AUTOCONF_NNODES": str(values["nnodes"]), "AUTOCONF_NODE_RANK": str(values["node_rank"]),
            "AUTOCONF_MASTER_ADDR": str(values["master_addr"]), "AUTOCONF_MASTER_PORT": str(values["master_port"]),
            "AUTOCONF_NPROC_PER_NODE": str(values["nproc_per_node"]),
            "GLOO_SOCKET_IFNAME": IFACE, "TP_SOCKET_IFNAME": IFACE}


def node_argv(names: Names, node: int, cmd: list[str], cgroup_procs: str | None) -> list[str]:
    """Wraps cmd so it runs in node's cgroup (joined on the host, before `ip netns exec` remounts /sys), its network
    namespace, and a fresh UTS namespace whose hostname is the node's (torch and the profiler group ranks by it)."""
    inner = ["ip", "netns", "exec", names.netns(node), "unshare", "--uts", "--",
             "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh", names.hostname(node), *cmd]
    if cgroup_procs is None:
        return inner
    return ["sh", "-c", 'echo $$ > "$1" && shift && exec "$@"', "sh", cgroup_procs, *inner]


def hosts_file(names: Names, ips: list[str]) -> str:
    """/etc/hosts seen inside every node namespace: the node host names map to their testbed addresses."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{ip}\t{names.hostname(i)}" for i, ip in enumerate(ips)]
    # c10d listens on dual-stack sockets and reverse-resolves IPv4-mapped peers
    lines += [f"::ffff:{ip}\t{names.hostname(i)}" for i, ip in enumerate(ips)]
    return "\n".join(lines) + "\n"
