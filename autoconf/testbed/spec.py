"""The testbed spec: how many emulated nodes, ranks per node, the private subnet and the link matrix.

A spec is JSON:

    {"nodes": 2, "ranks_per_node": 2, "subnet": "10.77.0.0/24",
     "default_link": {"rate_mbit": 1000, "delay_ms": 0.1},
     "links": [{"a": 0, "b": 1, "rate_mbit": 100, "delay_ms": 1}],
     "cpu_quota_per_rank": 0.5}

`default_link` shapes every pair not named in `links`; leave it out (or null) for unshaped pairs. A link is
symmetric: both directions get its rate, and `delay_ms` is the one-way delay added on each direction's egress.
`rate_mbit` null means "no rate limit" (only the delay is added). `cpu_quota_per_rank` is in CPUs (0.5 = half a
core); leave it out for no quota. The subnet must be private IPv4: it only exists inside the namespaces the testbed
creates (the host gets no address on it). Pure Python, no torch.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

from autoconf.errors import UserError

MAX_NODES = 8
MAX_RANKS_PER_NODE = 8
MAX_RATE_MBIT = 100_000.0
MAX_DELAY_MS = 10_000.0
SPEC_KEYS = ("nodes", "ranks_per_node", "subnet", "default_link", "links", "cpu_quota_per_rank")
LINK_KEYS = ("rate_mbit", "delay_ms")


@dataclass(frozen=True)
class Link:
    rate_mbit: float | None = None   # None: no rate limit
    delay_ms: float = 0.0            # one-way, per direction

    @property
    def shaped(self) -> bool:
        return self.rate_mbit is not None or self.delay_ms > 0

    def to_dict(self) -> dict:
        return {"rate_mbit": self.rate_mbit, "delay_ms": self.delay_ms}

    def describe(self) -> str:
        rate = "unlimited" if self.rate_mbit is None else f"{self.rate_mbit:g} Mbit/s"
        return f"{rate}, {self.delay_ms:g} ms"


@dataclass(frozen=True)
class TestbedSpec:
    __test__ = False  # not a pytest class

    nodes: int
    ranks_per_node: int = 1
    subnet: str = "10.77.0.0/24"
    default_link: Link | None = None
    links: dict = field(default_factory=dict)   # (a, b) with a < b -> Link
    cpu_quota_per_rank: float | None = None

    def link(self, a: int, b: int) -> Link | None:
        """The link between nodes a and b (either order); None when the pair is unshaped."""
        if a == b:
            raise ValueError("a node has no link to itself")
        return self.links.get((min(a, b), max(a, b)), self.default_link)

    def ips(self) -> list[str]:
        """Node i gets the (i+1)-th host address of the subnet."""
        net = ipaddress.ip_network(self.subnet)
        hosts = net.hosts()
        return [str(next(hosts)) for _ in range(self.nodes)]

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    def to_dict(self) -> dict:
        return {"nodes": self.nodes, "ranks_per_node": self.ranks_per_node, "subnet": self.subnet,
                "default_link": self.default_link.to_dict() if self.default_link else None,
                "links": [{"a": a, "b": b, **link.to_dict()} for (a, b), link in sorted(self.links.items())],
                "cpu_quota_per_rank": self.cpu_quota_per_rank}


def _number(value, what: str, low: float, high: float, *, integer: bool = False, low_open: bool = False):
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise UserError(f"{what} must be {kind} (got {value!r})")
    if (value <= low if low_open else value < low) or value > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise UserError(f"{what} must be {bound} and <= {high:g} (got {value!r})")
    return int(value) if integer else float(value)


def _link(data, what: str) -> Link:
    if not isinstance(data, dict):
        raise UserError(f"{what} must be an object like {{\"rate_mbit\": 100, \"delay_ms\": 1}} (got {data!r})")
    rate = data.get("rate_mbit")
    if rate is not None:
        rate = _number(rate, f"{what}.rate_mbit", 0, MAX_RATE_MBIT, low_open=True)
    delay = _number(data.get("delay_ms", 0.0), f"{what}.delay_ms", 0, MAX_DELAY_MS)
    return Link(rate, delay)


def parse_spec(data) -> TestbedSpec:
    """Validates a spec dict; every problem is one UserError line that says what would fit."""
    if not isinstance(data, dict):
        raise UserError(f"a testbed spec is a JSON object with keys {', '.join(SPEC_KEYS)} (got {type(data).__name__})")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise UserError(f"unknown spec key(s) {', '.join(unknown)}; allowed: {', '.join(SPEC_KEYS)}")
    if "nodes" not in data:
        raise UserError("the spec needs \"nodes\" (1 to 8 emulated nodes)")
    nodes = _number(data["nodes"], "nodes", 1, MAX_NODES, integer=True)
    ranks = _number(data.get("ranks_per_node", 1), "ranks_per_node", 1, MAX_RANKS_PER_NODE, integer=True)

    subnet = data.get("subnet", "10.77.0.0/24")
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except (TypeError, ValueError) as err:
        raise UserError(f"subnet {subnet!r} is not an IPv4 network such as 10.77.0.0/24 ({err})") from None
    if net.version != 4:
        raise UserError(f"subnet {subnet} must be IPv4 (e.g. 10.77.0.0/24)")
    if not net.is_private or net.is_loopback or net.is_link_local or net.is_multicast:
        raise UserError(f"subnet {subnet} must be a private range (10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16); "
                        "its addresses exist only inside the testbed's namespaces")
    if net.num_addresses - 2 < nodes:
        raise UserError(f"subnet {subnet} has {max(net.num_addresses - 2, 0)} host address(es) for {nodes} nodes; "
                        "use a larger one such as 10.77.0.0/24")

    default = data.get("default_link")
    default_link = None if default is None else _link(default, "default_link")

    links_data = data.get("links", [])
    if not isinstance(links_data, list):
        raise UserError('links must be a list of {"a", "b", "rate_mbit", "delay_ms"} objects')
    links: dict = {}
    for k, item in enumerate(links_data):
        what = f"links[{k}]"
        if not isinstance(item, dict):
            raise UserError(f"{what} must be an object with a, b, rate_mbit, delay_ms (got {item!r})")
        extra = sorted(set(item) - {"a", "b", *LINK_KEYS})
        if extra:
            raise UserError(f"{what} has unknown key(s) {', '.join(extra)}; allowed: a, b, rate_mbit, delay_ms")
        if "a" not in item or "b" not in item:
            raise UserError(f"{what} needs the two node numbers \"a\" and \"b\"")
        a = _number(item["a"], f"{what}.a", 0, nodes - 1, integer=True)
        b = _number(item["b"], f"{what}.b", 0, nodes - 1, integer=True)
        if a == b:
            raise UserError(f"{what} links node {a} to itself; a and b must differ")
        key = (min(a, b), max(a, b))
        if key in links:
            raise UserError(f"{what} repeats the pair {key[0]}-{key[1]} (a link is symmetric; give it once)")
        links[key] = _link(item, what)

    quota = data.get("cpu_quota_per_rank")
    if quota is not None:
        quota = _number(quota, "cpu_quota_per_rank", 0.01, 64, low_open=False)
    return TestbedSpec(nodes, ranks, str(net), default_link, links, quota)


def load_spec(path) -> TestbedSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"cannot read spec {path}: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"spec {path} is not valid JSON: {err}") from None
    return parse_spec(data)
