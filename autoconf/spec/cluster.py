"""The cluster profile: devices, nodes, the alpha-beta link matrix, efficiency assumptions and measured tables.

A link is latency (alpha, seconds) plus bandwidth (beta, bytes per second per direction). Every pair of devices is
described: pairs inside a node by `intra_node` (or the per-pair `intra_node_matrix`), pairs on different nodes by
`inter_node` (or the per-node-pair `inter_node_matrix`), so a heterogeneous fabric is a matrix while a uniform
16k-GPU cluster stays a few numbers. Where one scale-up fabric joins several nodes (`scale_up_domain`: a GB200 NVL72
rack's 18 trays), "inside a node" reads "inside a domain" for every link. Every efficiency the cost model applies
is a named, explained entry of `efficiency`: a property of the hardware, never of a model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources

from autoconf.errors import UserError
from autoconf.files import did_you_mean, gib_figures, is_version, json_sha256, shown


COMMAND_LINE = "set on the command line"  # the reason a headroom from --memory-headroom states
COMMAND_LINE_OVERRIDES = ("memory_headroom", "collective_sm_share")  # `ClusterProfile.command_line_overrides`


@dataclass(frozen=True)
class Link:
    """One direction of a point-to-point path: time(n) = latency_s + n / bandwidth_Bps."""

    latency_s: float
    bandwidth_Bps: float

    def time(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth_Bps

    def to_dict(self) -> dict:
        return {"latency_s": self.latency_s, "bandwidth_Bps": self.bandwidth_Bps}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "Link":
        try:
            link = cls(float(data["latency_s"]), float(data["bandwidth_Bps"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: a link needs numbers latency_s and bandwidth_Bps, got {data!r}") from None
        if not (0 <= link.latency_s < math.inf and 0 < link.bandwidth_Bps < math.inf):
            raise UserError(f"{where}: latency must be >= 0 and bandwidth > 0, got {data!r}")
        return link


@dataclass(frozen=True)
class Device:
    """One accelerator (or one CPU rank): peak FLOP/s per dtype, memory capacity and memory bandwidth."""

    name: str
    kind: str  # "gpu" or "cpu"
    memory_bytes: float
    memory_bandwidth_Bps: float
    peak_flops: dict  # dtype -> FLOP/s (dense)
    memory_overhead_bytes: float = 0.0  # taken by the runtime before any tensor (CUDA context, comm buffers)

    def peak(self, dtype: str) -> float:
        if dtype not in self.peak_flops:
            raise UserError(f"device {self.name} has no peak for dtype {dtype}; it has {', '.join(self.peak_flops)}")
        return float(self.peak_flops[dtype])


# Device memory a plan must leave free, as a fraction of the device's memory_bytes (the profile's "memory_headroom";
# this default when a profile does not state one). On top of `memory_overhead_bytes` (the CUDA context and the
# runtime's buffers before any tensor): the caching allocator's fragmentation, reserved but not allocated. On one
# H100 the executor's six layouts reserved 0.6-2.6 GiB beyond their peak allocation, at most 3.2% of the device
# (docs/gpu.md); the rest is for NCCL's communicator buffers, which a one-GPU run does not create.
DEFAULT_MEMORY_HEADROOM = {
    "value": 0.05,
    "why": "caching-allocator fragmentation (reserved minus allocated reached 2.6 GiB, 3.2% of an H100 80GB, on the "
           "executor's one-GPU layouts: docs/gpu.md) and NCCL communicator buffers of multi-GPU runs",
}


# The profile's "host" object: the host side of each node, what offload to host memory (cost/offload.py) reads. A
# profile without it (older files) plans no offload; a plan asking for offload on it is refused in one line.
HOST_FIELDS = {
    "memory_bytes": "host memory (RAM) of one node, bytes",
    "h2d_Bps": "host-to-device copy rate of one device from pinned host memory, bytes/s, every device of the node "
               "copying at once",
    "d2h_Bps": "device-to-host copy rate of one device into pinned host memory, bytes/s, every device at once",
    "adam_s_per_param": "seconds per parameter of torch's AdamW step on the host CPU, every rank of the node "
                        "stepping at once (the CPU optimizer step of offload_optimizer)",
}


def host_problems(host) -> list[str]:
    """What is wrong with a profile's "host" object (None is allowed: no host facts): every HOST_FIELDS number
    present, positive and finite, a copy rate (bytes/s) at least `profile_checks.MIN_RATE`, and a "source" text
    saying where they come from."""
    from autoconf.spec.profile_checks import MIN_RATE

    if host is None:
        return []
    if not isinstance(host, dict):
        return [f"host must be a JSON object of {', '.join(HOST_FIELDS)} and source"]
    out = []
    for key in HOST_FIELDS:
        value = host.get(key)
        least = MIN_RATE if key.endswith("_Bps") else 0.0
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not least < value < math.inf:
            out.append(f"host.{key} ({HOST_FIELDS[key]}) must be a finite number above {least:g}, got {value!r}")
    if not isinstance(host.get("source"), str) or not host["source"]:
        out.append("host.source must say where the host numbers come from")
    return out


@dataclass(frozen=True)
class ClusterProfile:
    name: str
    nodes: int
    gpus_per_node: int
    device: Device
    intra_node: Link
    inter_node: Link
    efficiency: dict  # name -> {"value": float, "why": str}
    backend: str = "nccl"
    description: str = ""
    intra_node_matrix: tuple | None = None  # gpus_per_node x gpus_per_node of Link (diagonal unused)
    inter_node_matrix: tuple | None = None  # nodes x nodes of Link (diagonal unused)
    collectives: dict = field(default_factory=dict)  # measured: {op: {"intra"|"inter": [{"ranks", "bytes", "time_s"}]}}
    compute: dict | None = None  # measured compute tables (see cost/compute.py)
    hostnames: tuple | None = None  # one per node, from a measured profile
    source: str = "specification"  # "specification" or "measured"
    # GEMM efficiency against size, as a fraction of efficiency["matmul"]: {"points": [[GFLOP, fraction], ...],
    # "source": text}; read by cost/compute.py's `matmul_rate`. None: every GEMM at efficiency["matmul"].
    matmul_size_curve: dict | None = None
    # Flash attention's speed over sequence length per kernel and pass, as fractions of the peak:
    # {"kernels": {kernel: {"forward"|"backward": {head_dim: [[seq_len, fraction], ...]}}}, "source": text}; read by
    # cost/compute.py's `attention_efficiency`. None: every flash kernel at its flat efficiency entry.
    attention_curves: dict | None = None
    # {"usd_per_gpu_hour": float, "source": text}: a published price of the device, for training time and cost
    price: dict | None = None
    memory_headroom: dict = field(default_factory=lambda: dict(DEFAULT_MEMORY_HEADROOM))  # {"value": fraction, "why"}
    host: dict | None = None  # HOST_FIELDS and "source"; None: not known, no offload planned
    # {"nodes": int, "why": text}: how many consecutive nodes (hosts) one scale-up fabric joins, so that every pair
    # of their devices talks over `intra_node` (a GB200 NVL72 rack: 18 trays of 4 GPUs on one NVLink switch
    # fabric). None: the fabric ends at the node. The cost model and placement read links by `domain_of`; launch,
    # host memory and hostnames stay per node.
    scale_up_domain: dict | None = None
    # The absolute path of the profile file it was loaded from, when not a bundled one: plans record it so that
    # `show` finds the profile again. Not part of the profile's content (neither written nor compared).
    path: str | None = field(default=None, compare=False)
    # The SHA-256 of the profile's content as read (`files.json_sha256`), whatever it was resized to: plans record
    # it, so that a plan made on another version of the profile is estimated again (report/current.py).
    content_sha256: str | None = field(default=None, compare=False)

    @functools.cached_property
    def matmul_size_points(self) -> tuple[tuple[float, float], ...]:
        """`matmul_size_curve`'s points as (GFLOP, fraction) pairs; () without a curve."""
        curve = self.matmul_size_curve
        return tuple((float(x), float(y)) for x, y in curve["points"]) if curve else ()

    @property
    def usable_memory_bytes(self) -> float:
        """Device memory a plan may fill: memory_bytes less the stated headroom (the fit check's limit)."""
        return self.device.memory_bytes * (1.0 - float(self.memory_headroom["value"]))

    @property
    def headroom_from_command_line(self) -> bool:
        """Whether the memory headroom is --memory-headroom's (`with_memory_headroom`), not the profile's."""
        return self.memory_headroom.get("why") == COMMAND_LINE

    @property
    def headroom_phrase(self) -> str:
        """Whose the memory headroom is, for one-line messages: "--memory-headroom's 10%" or "the profile's 5%"."""
        whose = "--memory-headroom's" if self.headroom_from_command_line else "the profile's"
        return f"{whose} {100 * self.memory_headroom['value']:g}%"

    def memory_limit_phrase(self, shown: str | None = None) -> str:
        """The fit check's limit for one-line messages: "71.9 GiB per device (the memory less the profile's 10%
        headroom)"; `shown`: the limit in GiB as the message writes its other figures (`files.gib_figures`)."""
        shown = gib_figures(self.usable_memory_bytes)[0] if shown is None else shown
        return f"{shown} GiB per device (the memory less {self.headroom_phrase} headroom)"

    def with_local_order(self, order: tuple[int, ...]) -> "ClusterProfile":
        """The same profile with each node's devices renumbered: local device k here is local device `order[k]`
        of this one (its per-pair intra-node matrix permuted; nothing else reads a device's number)."""
        m = self.intra_node_matrix
        if m is None or sorted(order) != list(range(self.gpus_per_node)):
            raise ValueError(f"a renumbering of {self.gpus_per_node} devices with a per-pair matrix, not {order}")
        return dataclasses.replace(self, intra_node_matrix=tuple(tuple(m[a][b] for b in order) for a in order))

    def with_memory_headroom(self, fraction: float, why: str = COMMAND_LINE) -> "ClusterProfile":
        """The same profile holding back `fraction` of each device's memory instead."""
        if not 0 <= fraction < 1:
            raise UserError(f"memory headroom must be a fraction in [0, 1), got {fraction}")
        return dataclasses.replace(self, memory_headroom={"value": float(fraction), "why": why})

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise UserError(f"cluster {self.name}: nodes and gpus_per_node must be >= 1 "
                            f"(got {self.nodes} x {self.gpus_per_node})")
        for key, size, what in (("intra_node_matrix", self.gpus_per_node, "gpus_per_node"),
                                ("inter_node_matrix", self.nodes, "nodes")):
            matrix = getattr(self, key)
            if matrix is not None and (len(matrix) != size or any(len(row) != size for row in matrix)):
                raise UserError(f"cluster {self.name}: {key} must be {size} x {size} ({what} is {size})")
        if self.backend not in ("nccl", "gloo"):
            raise UserError(f"cluster {self.name}: backend must be nccl or gloo, got {self.backend!r}")
        k = self.nodes_per_domain
        if not self.takes_nodes(self.nodes):
            below, above = self.nodes // k * k, -(-self.nodes // k) * k
            raise UserError(f"cluster {self.name}: its nodes come in scale-up domains of {k} (one fabric each); give "
                            f"at most {k} nodes or a multiple of {k} ({below} or {above}), not {self.nodes}; a job "
                            f"holding fewer nodes of each fabric states that number as the profile's "
                            f"scale_up_domain.nodes")
        if k > 1 and (self.intra_node_matrix is not None or self.inter_node_matrix is not None):
            raise UserError(f"cluster {self.name}: a scale-up domain of {self.nodes_per_domain} nodes describes its "
                            f"links by intra_node and inter_node alone; drop the link matrices or the domain")

    # ---- the shape and the LinkModel protocol used by placement ---------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def nodes_per_domain(self) -> int:
        """Nodes (hosts) one scale-up fabric joins (`scale_up_domain`); 1 where the fabric ends at the node."""
        return int(self.scale_up_domain["nodes"]) if self.scale_up_domain else 1

    def takes_nodes(self, nodes: int) -> bool:
        """Whether a job of `nodes` nodes fits the scale-up domains: at most one domain, or whole domains."""
        k = self.nodes_per_domain
        return k <= 1 or nodes <= k or nodes % k == 0

    @property
    def devices_per_domain(self) -> int:
        """Devices one scale-up fabric joins: every pair of them talks over `intra_node` (a cluster of fewer nodes
        is one partial domain)."""
        return self.gpus_per_node * self.nodes_per_domain

    @property
    def num_domains(self) -> int:
        return -(-self.nodes // self.nodes_per_domain)

    def domain_of(self, device: int) -> int:
        """The scale-up domain of a device: pairs in one domain use `intra_node`, pairs across domains
        `inter_node`."""
        return device // self.devices_per_domain

    def eff(self, name: str) -> float:
        """The named efficiency assumption (a fraction of a peak)."""
        try:
            return float(self.efficiency[name]["value"])
        except KeyError:
            raise UserError(f"cluster {self.name} does not state efficiency {name!r}") from None

    @property
    def collective_sm_share(self) -> float:
        """The share of the device's compute a collective running beside it takes (`efficiency`
        "collective_sm_share": SMs and memory bandwidth the communication kernels hold); 0 when the profile does not
        state it. `cost/simulate.beside` applies it wherever the cost model hides a collective behind compute."""
        return self._stated("collective_sm_share")

    def with_collective_sm_share(self, share: float, why: str = COMMAND_LINE) -> "ClusterProfile":
        """The same profile with a collective taking `share` of the device from the compute beside it (0: none)."""
        if not 0 <= share < 1:
            raise UserError(f"collective SM share must be a fraction in [0, 1), got {share}")
        efficiency = {k: v for k, v in self.efficiency.items() if k != "collective_sm_share"}
        if share > 0 or why == COMMAND_LINE:  # (the command line's 0 is kept, so a plan records it)
            efficiency["collective_sm_share"] = {"value": float(share), "why": why}
        return dataclasses.replace(self, efficiency=efficiency)

    @property
    def command_line_overrides(self) -> dict[str, float]:
        """What the command line set in place of the profile's values ({--memory-headroom's and
        --collective-sm-share's field: value}), as a plan's `cluster` object records them (COMMAND_LINE_OVERRIDES)."""
        stated = {"memory_headroom": self.memory_headroom,
                  "collective_sm_share": self.efficiency.get("collective_sm_share") or {}}
        return {key: float(stated[key]["value"]) for key in COMMAND_LINE_OVERRIDES
                if stated[key].get("why") == COMMAND_LINE}

    def with_overrides(self, overrides: dict) -> "ClusterProfile":
        """The profile with `overrides` (`command_line_overrides`' form; a plan's `cluster` object, whose other
        keys are ignored) in place of its own values."""
        cluster = self
        if overrides.get("memory_headroom") is not None:
            cluster = cluster.with_memory_headroom(overrides["memory_headroom"])
        if overrides.get("collective_sm_share") is not None:
            cluster = cluster.with_collective_sm_share(overrides["collective_sm_share"])
        return cluster

    def collective_sync(self, ranks: int) -> float:
        """The wait for every member of a group of `ranks` to be scheduled, added to each of its collectives
        (efficiency `collective_sync_s`, CPU ranks that share cores): the wait measured for the smallest group size
        of at least `ranks` (its `by_ranks`), else for the profile's whole node (`value`); 0 when not stated."""
        entry = self.efficiency.get("collective_sync_s")
        if not entry:
            return 0.0
        sizes = sorted((int(k), float(v)) for k, v in (entry.get("by_ranks") or {}).items())
        return next((seconds for size, seconds in sizes if size >= ranks), float(entry["value"]))

    def overhead(self, name: str) -> float:
        """A named framework overhead in seconds (`pass_overhead_s`, `step_overhead_s`); 0 when not stated."""
        return self._stated(name)

    def _stated(self, name: str) -> float:
        """The value of the `efficiency` entry `name`, 0 when the profile does not state it."""
        entry = self.efficiency.get(name)
        return float(entry["value"]) if entry else 0.0

    def link(self, a: int, b: int) -> Link:
        """The link from device a to device b."""
        na, nb = self.domain_of(a), self.domain_of(b)
        if na == nb:
            if self.intra_node_matrix is None:
                return self.intra_node
            return self.intra_node_matrix[a % self.gpus_per_node][b % self.gpus_per_node]
        if self.inter_node_matrix is None:
            return self.inter_node
        return self.inter_node_matrix[na][nb]

    def intra(self, a: int, b: int) -> tuple[float, float]:
        link = self.link(a, b)
        return link.latency_s, link.bandwidth_Bps

    def inter(self, domain_a: int, domain_b: int) -> tuple[float, float]:
        """(latency, bandwidth) between two scale-up domains (nodes where the fabric ends at the node: only then
        may a profile hold an `inter_node_matrix`)."""
        link = self.inter_node if self.inter_node_matrix is None else self.inter_node_matrix[domain_a][domain_b]
        return link.latency_s, link.bandwidth_Bps

    @property
    def num_devices(self) -> int:
        return self.world_size

    def is_uniform(self) -> bool:
        """True when every inter-node pair and every intra-node pair looks the same."""
        def flat(matrix) -> bool:
            if matrix is None:
                return True
            cells = {(link.latency_s, link.bandwidth_Bps) for i, row in enumerate(matrix)
                     for j, link in enumerate(row) if i != j}
            return len(cells) <= 1
        return flat(self.intra_node_matrix) and flat(self.inter_node_matrix)

    def unmeasured_links_note(self, nodes: int, devices_per_node: int | None = None) -> str | None:
        """The note for plans on `nodes` nodes of `devices_per_node` devices (default: this profile's) of a profile
        `autoconf profile` measured on one node (this one, before resizing): measured on one rank, no link was
        measured (its description, as the profiler writes it, says what stands in for them), so every transfer rests
        on a stand-in; measured on one node of several ranks, its inter-node link was not, so every time across
        nodes rests on it. None where the profile is a specification, measured several nodes, or is planned where
        no unmeasured link is used."""
        if self.source != "measured" or self.nodes != 1:
            return None
        devices = self.gpus_per_node if devices_per_node is None else devices_per_node
        origin = re.search(r"no links measured \(one rank\): ([^.;]*)", self.description)
        if origin and nodes * devices > 1:
            return (f"{self.name} was measured on one rank: no link was measured ({origin.group(1)}), and every "
                    f"transfer between the {nodes * devices} devices rests on that; profile as many ranks as the "
                    f"plan uses (`autoconf profile --nproc-per-node N`) to measure them")
        if nodes <= 1:
            return None
        origin = re.search(r"inter-node link not measured \(one node\): ([^.]*)", self.description)
        link = self.inter_node
        return (f"{self.name} was measured on one node: its inter-node link ({link.latency_s * 1e6:.3g} us, "
                f"{link.bandwidth_Bps / 1e9:.3g} GB/s) was not measured"
                + (f" ({origin.group(1)})" if origin else "")
                + f", and every time across the {nodes} nodes rests on it; profile several nodes (`autoconf "
                  f"profile --nnodes N` under torchrun on each) to measure it")

    def resized(self, nodes: int | None = None, gpus_per_node: int | None = None) -> "ClusterProfile":
        """The same kind of node, `nodes` of them with `gpus_per_node` each; only for a uniform profile."""
        nodes = self.nodes if nodes is None else nodes
        gpus = self.gpus_per_node if gpus_per_node is None else gpus_per_node
        if (nodes, gpus) == (self.nodes, self.gpus_per_node):
            return self
        from autoconf.spec.profile_checks import MAX_GPUS_PER_NODE, MAX_NODES

        if not (1 <= nodes <= MAX_NODES and 1 <= gpus <= MAX_GPUS_PER_NODE):
            raise UserError(f"--nodes must be 1 to {MAX_NODES:,} and --gpus-per-node 1 to {MAX_GPUS_PER_NODE} (got "
                            f"{nodes} and {gpus})")
        if gpus != self.gpus_per_node and self.intra_node_matrix is not None:
            raise UserError(f"cluster {self.name} has a measured {self.gpus_per_node}-device intra-node matrix; "
                            f"it cannot be resized to {gpus} devices per node (profile the new shape instead)")
        if nodes != self.nodes and self.inter_node_matrix is not None:
            raise UserError(f"cluster {self.name} has a measured {self.nodes}-node link matrix; it cannot be "
                            f"resized to {nodes} nodes (profile the new shape, or drop the matrix)")
        return dataclasses.replace(self, nodes=nodes, gpus_per_node=gpus, hostnames=None)

    # ---- JSON -----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def matrix(m):
            return None if m is None else [[link.to_dict() for link in row] for row in m]

        return {
            "version": 1, "kind": "cluster", "name": self.name, "description": self.description,
            "source": self.source, "backend": self.backend, "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node, "device": dataclasses.asdict(self.device),
            "intra_node": self.intra_node.to_dict(), "inter_node": self.inter_node.to_dict(),
            "intra_node_matrix": matrix(self.intra_node_matrix), "inter_node_matrix": matrix(self.inter_node_matrix),
            "efficiency": self.efficiency, "collectives": self.collectives, "compute": self.compute,
            "hostnames": None if self.hostnames is None else list(self.hostnames),
            "matmul_size_curve": self.matmul_size_curve,
            **({} if self.attention_curves is None else {"attention_curves": self.attention_curves}),
            **({} if self.price is None else {"price": self.price}),
            "memory_headroom": dict(self.memory_headroom),
            **({} if self.host is None else {"host": dict(self.host)}),
            **({} if self.scale_up_domain is None else {"scale_up_domain": dict(self.scale_up_domain)}),
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "cluster") -> "ClusterProfile":
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a JSON object describing a cluster")
        if data.get("kind") != "cluster":
            kind = ("it has no \"kind\"" if "kind" not in data
                    else f"its \"kind\" is {shown(json.dumps(data['kind']), 40)}")
            looks = " (it looks like a Hugging Face model config: give it to --model)" if "model_type" in data else ""
            raise UserError(f"{source}: not a cluster profile ({kind}, expected \"cluster\"){looks}; give a bundled "
                            f"profile (`autoconf profiles`) or one `autoconf profile` wrote")
        if not is_version(data.get("version"), 1):
            raise UserError(f"{source}: cluster profile version {json.dumps(data.get('version'))} is not supported "
                            f"(expected 1)")
        from autoconf.spec.profile_checks import profile_problems

        problems = profile_problems(data) + host_problems(data.get("host"))
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise UserError(f"{source}: invalid cluster profile: {'; '.join(problems[:3])}{more}")
        try:
            dev = data["device"]
            device = Device(name=str(dev["name"]), kind=str(dev["kind"]), memory_bytes=float(dev["memory_bytes"]),
                            memory_bandwidth_Bps=float(dev["memory_bandwidth_Bps"]),
                            peak_flops={str(k): float(v) for k, v in dict(dev["peak_flops"]).items()},
                            memory_overhead_bytes=float(dev.get("memory_overhead_bytes", 0.0)))

            numbers = [device.memory_bytes, device.memory_bandwidth_Bps, *device.peak_flops.values()]
            if not all(0 < x < math.inf for x in numbers) or not 0 <= device.memory_overhead_bytes < math.inf:
                raise UserError(f"{source}: device memory, bandwidth and peak FLOP/s must be positive finite "
                                f"numbers, got {dev!r}")

            def matrix(key):
                rows = data.get(key)
                if rows is None:
                    return None
                return tuple(tuple(Link.from_dict(cell, f"{source}: {key}[{i}][{j}]") for j, cell in enumerate(row))
                             for i, row in enumerate(rows))

            efficiency = dict(data["efficiency"])
            for key, entry in efficiency.items():
                value = entry.get("value") if isinstance(entry, dict) else None
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    raise UserError(f"{source}: efficiency {key!r} must be {{\"value\": number, \"why\": text}}")
                if key.endswith("_s") and value < 0:
                    raise UserError(f"{source}: efficiency {key!r} is a time in seconds and must be >= 0")
                if key == "collective_sm_share":
                    if not 0 <= value < 1:
                        raise UserError(f"{source}: efficiency 'collective_sm_share' is a share of the device and "
                                        f"must be in [0, 1), got {value}")
                elif not key.endswith("_s") and value <= 0:
                    raise UserError(f"{source}: efficiency {key!r} must be a positive fraction of a peak, got {value}")
            collectives = dict(data.get("collectives") or {})
            for op, scopes in collectives.items():
                for scope, points in dict(scopes).items():
                    for point in points:
                        if not all(isinstance(point.get(k), (int, float)) and point.get(k) > 0
                                   for k in ("ranks", "bytes", "time_s")):
                            raise UserError(f"{source}: collectives {op}/{scope} entries need positive numbers "
                                            f"ranks, bytes and time_s, got {point!r}")
            return cls(
                name=str(data["name"]), nodes=int(data["nodes"]), gpus_per_node=int(data["gpus_per_node"]),
                device=device, intra_node=Link.from_dict(data["intra_node"], f"{source}: intra_node"),
                inter_node=Link.from_dict(data["inter_node"], f"{source}: inter_node"), efficiency=efficiency,
                backend=str(data.get("backend", "nccl")), description=str(data.get("description", "")),
                intra_node_matrix=matrix("intra_node_matrix"), inter_node_matrix=matrix("inter_node_matrix"),
                collectives=collectives, compute=data.get("compute"),
                hostnames=None if data.get("hostnames") is None else tuple(data["hostnames"]),
                source=str(data.get("source", "specification")),
                matmul_size_curve=data.get("matmul_size_curve"),
                attention_curves=data.get("attention_curves"),
                price=None if data.get("price") is None else dict(data["price"]),
                memory_headroom=dict(data.get("memory_headroom") or DEFAULT_MEMORY_HEADROOM),
                host=None if data.get("host") is None else dict(data["host"]),
                scale_up_domain=None if data.get("scale_up_domain") is None else dict(data["scale_up_domain"]))
        except KeyError as missing:
            raise UserError(f"{source}: cluster profile lacks field {missing}") from None
        except (TypeError, ValueError, AttributeError, OverflowError, RecursionError) as err:
            if isinstance(err, UserError):
                raise
            raise UserError(f"{source}: malformed cluster profile ({str(err)[:200]})") from None


# The bundled profiles ship inside the package (package data), so an installed wheel finds them as well as a checkout.
PROFILES_DIR = resources.files("autoconf") / "profiles"


def bundled_profiles() -> list[str]:
    return sorted(p.name[:-len(".json")] for p in PROFILES_DIR.iterdir() if p.name.endswith(".json"))


def load_cluster(arg: str, nodes: int | None = None, gpus_per_node: int | None = None) -> ClusterProfile:
    """A bundled profile name or a profile path, optionally resized to `nodes` x `gpus_per_node`."""
    from autoconf.files import named_input, shown
    from autoconf.spec.presets import read_json

    bundled = PROFILES_DIR / f"{arg}.json"
    if "/" not in arg and arg in bundled_profiles():
        path = bundled
    else:
        path = named_input(arg, "--cluster")
        if path is None:
            raise UserError(f"unknown cluster {shown(arg)!r}: not a bundled profile ({', '.join(bundled_profiles())})"
                            f" and no such file{did_you_mean(arg, bundled_profiles())}")
    data = read_json(path, "cluster profile")
    profile = ClusterProfile.from_dict(data, source=str(path))
    profile = dataclasses.replace(profile, content_sha256=json_sha256(data),
                                  path=None if path == bundled else str(path.resolve()))
    return profile.resized(nodes, gpus_per_node)
