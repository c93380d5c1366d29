"""Field-by-field checks of a cluster profile document, each with its physical range.

`profile_problems(data)` returns every problem found in a profile JSON object, each naming the field by its path
(`compute.entries[3].forward_s must be a finite number >= 0, got nan`); `ClusterProfile.from_dict` refuses a
document with any. A measured time that is NaN, negative or absurd would silently predict a different step time
still labelled measured, so every number is checked, not just the top level. Likewise every object's keys: one a
reader does not know (`device.memroy_bytes`) is a typo whose value would be silently ignored, so it is refused by its
path, with the keys that object holds (the *_FIELDS tuples below). Pure Python.
"""

from __future__ import annotations

import math
import re

from autoconf.errors import UserError
from autoconf.files import listed, quoted
from autoconf.spec.cluster import HOST_FIELDS
from autoconf.spec.dtypes import PROFILED_DTYPES
from autoconf.spec.frameworks import ATTENTION_KERNELS
from autoconf.spec.model import ModelSpec, is_printable_name
from autoconf.spec.schedules import SCHEDULES

MAX_NODES = 1_000_000
MAX_GPUS_PER_NODE = 4096
MAX_BYTES = 1e18  # memory, per device
MIN_DEVICE_BYTES = 1 << 26  # 64 MiB: less holds no model worth planning (and prints as 0.0 GiB)
MAX_RATE = 1e21  # FLOP/s or bytes/s
# The least rate and the least fraction of a peak (or scale, or share of a core) a profile may state: far below
# any real device or link, and above what would turn a step's time into infinity.
MIN_RATE = 1e3
MIN_FRACTION = 1e-6
MAX_SECONDS = 3600.0  # a latency, a measured pass, an overhead
MAX_USD_PER_GPU_HOUR = 1e6  # a price per GPU-hour (a profile's or --price)
MAX_EFFICIENCY = 4.0  # a fraction of a peak; calibration may divide by a factor < 1, so a little above 1 is fine
MAX_SCALE = 100.0
BLOCKS = ("attention", "mlp", "norm", "embedding", "head")  # timed for every model at every TP width
MOE_BLOCKS = ("moe", "experts")  # an MoE model's, besides (profile/moe_blocks.py)
EXPERT_DEGREE_FIELDS = ("ep", "etp")  # what an "experts" entry states beyond the other entries' fields


def timed_at(entry: dict, tp: int, ep: int = 1, etp: int = 1) -> bool:
    """Whether compute entry `entry` was timed for a layout of these degrees: an "experts" entry at its ep and etp
    (timed with a micro-batch's every token, whatever the TP width), every other block at its TP width."""
    if entry.get("block") == "experts":
        return (entry.get("ep"), entry.get("etp")) == (ep, etp)
    return entry.get("tp") == tp
# Every top-level field a profile may hold (ClusterProfile.to_dict writes them); any other is a typo, refused.
PROFILE_FIELDS = ("version", "kind", "name", "description", "source", "backend", "nodes", "gpus_per_node", "device",
                  "intra_node", "inter_node", "intra_node_matrix", "inter_node_matrix", "efficiency", "collectives",
                  "compute", "hostnames", "matmul_size_curve", "attention_curves", "price", "memory_headroom", "host",
                  "scale_up_domain")
# The keys of each object below the top level: what the writers write (ClusterProfile.to_dict, `autoconf profile`,
# scripts/bundled_profiles.py) and the readers read; any other is a typo, refused (tests/test_profile_fields.py
# holds each writer to them).
DEVICE_FIELDS = ("name", "kind", "memory_bytes", "memory_bandwidth_Bps", "peak_flops", "memory_overhead_bytes")
# device.peak_flops: the dtypes a GEMM or an element-wise pass runs at (autoconf.spec.dtypes PRECISIONS' gemm and
# element) and tf32, the matmul mode of fp32 a data sheet states.
PEAK_DTYPES = ("bf16", "fp16", "fp32", "fp8", "tf32")
LINK_FIELDS = ("latency_s", "bandwidth_Bps")  # intra_node, inter_node and every matrix cell
ENTRY_FIELDS = ("value", "why")  # an efficiency entry, memory_headroom
# collective_sync_s may also state the wait per group size measured (`autoconf profile` on CPU ranks).
SYNC_FIELDS = (*ENTRY_FIELDS, "by_ranks")
SCALE_UP_FIELDS = ("nodes", "why")  # scale_up_domain
# The efficiency entries some part of autoconf reads (ClusterProfile.eff / overhead, cost/, solve/, validate/).
EFFICIENCY_NAMES = ("matmul", "attention", "attention_fa2", "memory", "comm_intra", "comm_inter",
                    "collective_sm_share", "collective_sync_s", "p2p_sync_s", "cpu_share", "cpu_share_alone",
                    "model_compute_scale", "moe_load_imbalance", "pass_overhead_s", "step_overhead_s")
# Those every writer states and the cost model reads without a fallback (ClusterProfile.eff raises without them).
REQUIRED_EFFICIENCIES = ("matmul", "attention", "memory", "comm_intra", "comm_inter")
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")  # what cost/comm.py costs (its OPS)
COLLECTIVE_SCOPES = ("intra", "inter")  # inside one node, across nodes
COLLECTIVE_POINT_FIELDS = ("ranks", "bytes", "time_s")
COMPUTE_FIELDS = ("dtype", "device", "model", "entries", "optimizer_s_per_param", "optimizer_dtensor_s_per_param",
                  "pipeline_action_s", "fsdp_pass_s_per_unit", "fsdp_solo_pass_s_per_unit", "chain_scales",
                  "tp_layers", "ep_layers")
COMPUTE_ENTRY_FIELDS = ("block", "tp", "micro_batch", "seq_len", "forward_s", "backward_input_s", "backward_weight_s",
                        "p10_forward_s", "p90_forward_s", "repeats", *EXPERT_DEGREE_FIELDS)
CHAIN_SCALE_FIELDS = ("micro_batch", "seq_len", "layer_scale", "ends_scale")
TP_LAYER_FIELDS = ("tp", "micro_batch", "seq_len", "sequence_parallel", "forward_s", "backward_s")
EP_LAYER_FIELDS = ("ep", "micro_batch", "seq_len", "forward_s", "backward_s")
CURVE_FIELDS = ("points", "source")  # matmul_size_curve
ATTENTION_CURVES_FIELDS = ("kernels", "source")
ATTENTION_CURVE_PASSES = ("forward", "backward")  # what cost/compute.py reads (its ATTENTION_PASSES)
PRICE_FIELDS = ("usd_per_gpu_hour", "source")
HOST_KEYS = (*HOST_FIELDS, "source")


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, where: str, what: str, value) -> None:
        self.problems.append(f"{where} must be {what}, got {quoted(value, 80)}")

    def number(self, value, where: str, lo: float, hi: float, lo_open: bool = False) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                value < lo or value > hi or (lo_open and value == lo):
            self.bad(where, f"a finite number {'>' if lo_open else '>='} {lo:g} and <= {hi:g}", value)
            return False
        return True

    def integer(self, value, where: str, lo: int, hi: int) -> bool:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.bad(where, f"an integer in {lo}..{hi}", value)
            return False
        return True

    def kind(self, value, kind: type, where: str) -> bool:
        if not isinstance(value, kind):
            self.bad(where, "a JSON object" if kind is dict else "a JSON array" if kind is list else
                     f"a {kind.__name__}", value)
            return False
        return True

    def name(self, value, where: str) -> None:
        if not is_printable_name(value):
            self.bad(where, "printable text (1-200 characters, no newline or other control character)", value)

    def text(self, value, where: str) -> None:
        if not isinstance(value, str):
            self.bad(where, "a string", value)

    def fields(self, obj: dict, allowed: tuple, where: str, note: str = "") -> None:
        """One problem naming the keys of `obj` (the object at `where`) that are not in `allowed` by their paths, the
        first few and how many more, and the keys `where` may hold (then `note`)."""
        unknown = [key for key in obj if key not in allowed]
        if unknown:
            self.problems.append(f"unknown field(s) {listed([f'{where}.{_key(key)}' for key in unknown])}; {where} "
                                 f"holds {', '.join(allowed)}{note}")


def _key(key) -> str:
    """A key as a step of a path: itself when a plain name (1-40 letters, digits, "_", "-" or "+"), else its
    shortened repr."""
    return key if isinstance(key, str) and re.fullmatch(r"[\w+-]{1,40}", key, re.ASCII) else quoted(key)


def profile_problems(data: dict) -> list[str]:
    """Every problem of a cluster profile document (already known to be a dict of kind "cluster", version 1)."""
    c = _Checker()
    unknown = sorted(set(data) - set(PROFILE_FIELDS))
    if unknown:
        c.problems.append(f"unknown field(s) {listed(list(map(quoted, unknown)))}; a profile holds "
                          f"{', '.join(PROFILE_FIELDS)}")
    c.name(data.get("name"), "name")
    c.integer(data.get("nodes"), "nodes", 1, MAX_NODES)
    c.integer(data.get("gpus_per_node"), "gpus_per_node", 1, MAX_GPUS_PER_NODE)
    for key in ("description", "source"):
        if key in data:
            c.text(data[key], key)
    if data.get("backend", "nccl") not in ("nccl", "gloo"):
        c.bad("backend", '"nccl" or "gloo"', data.get("backend"))
    _device(c, data.get("device"))
    for key in ("intra_node", "inter_node"):
        _link(c, data.get(key), key)
    for key, size_key in (("intra_node_matrix", "gpus_per_node"), ("inter_node_matrix", "nodes")):
        _matrix(c, data.get(key), key, data.get(size_key))
    _efficiency(c, data.get("efficiency"))
    _headroom(c, data.get("memory_headroom"))
    _scale_up_domain(c, data.get("scale_up_domain"))
    _collectives(c, data.get("collectives"))
    _compute(c, data.get("compute"))
    _matmul_size_curve(c, data.get("matmul_size_curve"))
    _attention_curves(c, data.get("attention_curves"))
    _price(c, data.get("price"))
    _hostnames(c, data.get("hostnames"), data.get("nodes"))
    host = data.get("host")
    if isinstance(host, dict):  # its values: spec/cluster.py host_problems
        c.fields(host, HOST_KEYS, "host")
    return c.problems


def _hostnames(c: _Checker, hosts, nodes) -> None:
    """hostnames (optional; a measured profile's, one per node in node order): distinct printable names, no more of
    them than nodes (fewer is allowed: a profile whose `nodes` was raised by hand plans the same, and nothing reads
    them)."""
    if hosts is None or not c.kind(hosts, list, "hostnames"):
        return
    if isinstance(nodes, int) and not isinstance(nodes, bool) and len(hosts) > nodes:
        c.bad("hostnames", f"at most one name per node ({nodes} nodes)", len(hosts))
    for i, host in enumerate(hosts):
        c.name(host, f"hostnames[{i}]")
    names = [h for h in hosts if isinstance(h, str)]
    twice = sorted({h for h in names if names.count(h) > 1})
    if twice:
        c.problems.append(f"hostnames must be one distinct name per node, got {listed([quoted(h, 40) for h in twice])} "
                          f"more than once")


def _price(c: _Checker, price) -> None:
    """An optional published price: {"usd_per_gpu_hour": > 0, "source": where and when it was published}."""
    if price is None or not c.kind(price, dict, "price"):
        return
    c.fields(price, PRICE_FIELDS, "price")
    c.number(price.get("usd_per_gpu_hour"), "price.usd_per_gpu_hour", 0, MAX_USD_PER_GPU_HOUR, lo_open=True)
    c.name(price.get("source"), "price.source")


def _device(c: _Checker, dev) -> None:
    if not c.kind(dev, dict, "device"):
        return
    c.fields(dev, DEVICE_FIELDS, "device")
    c.name(dev.get("name"), "device.name")
    if dev.get("kind") not in ("gpu", "cpu"):
        c.bad("device.kind", '"gpu" or "cpu"', dev.get("kind"))
    c.number(dev.get("memory_bytes"), "device.memory_bytes", MIN_DEVICE_BYTES, MAX_BYTES)
    c.number(dev.get("memory_bandwidth_Bps"), "device.memory_bandwidth_Bps", MIN_RATE, MAX_RATE)
    overhead = dev.get("memory_overhead_bytes", 0.0)
    if c.number(overhead, "device.memory_overhead_bytes", 0, MAX_BYTES):
        memory = dev.get("memory_bytes")
        if isinstance(memory, (int, float)) and not isinstance(memory, bool) and overhead >= memory:
            c.bad("device.memory_overhead_bytes", f"less than device.memory_bytes ({memory:g})", overhead)
    peaks = dev.get("peak_flops")
    if c.kind(peaks, dict, "device.peak_flops"):
        if not peaks:
            c.bad("device.peak_flops", "a non-empty object of dtype -> FLOP/s", peaks)
        c.fields(peaks, PEAK_DTYPES, "device.peak_flops")
        for dtype, value in peaks.items():
            c.number(value, f"device.peak_flops.{_key(dtype)}", MIN_RATE, MAX_RATE)
        # fp8 (optional; FP8 tensor cores): `--dtype fp8` runs only the linears' GEMMs at it, the rest at bf16
        if "fp8" in peaks and "bf16" not in peaks:
            c.bad("device.peak_flops", "an object that states bf16 beside fp8 (FP8 training keeps the rest in bf16)",
                  sorted(peaks))


def _headroom(c: _Checker, entry) -> None:
    """memory_headroom (optional): {"value": fraction of device memory held back, in [0, 1), "why": text}."""
    if entry is None or not c.kind(entry, dict, "memory_headroom"):
        return
    value = entry.get("value")
    if c.number(value, "memory_headroom.value (a fraction of device memory)", 0, 1) and value >= 1:
        c.bad("memory_headroom.value (a fraction of device memory)", "less than 1", value)
    if "why" in entry:
        c.text(entry["why"], "memory_headroom.why")
    c.fields(entry, ENTRY_FIELDS, "memory_headroom")


def _scale_up_domain(c: _Checker, entry) -> None:
    """scale_up_domain (optional): {"nodes": consecutive nodes one scale-up fabric joins, >= 2, "why": where the
    number comes from}."""
    if entry is None or not c.kind(entry, dict, "scale_up_domain"):
        return
    c.integer(entry.get("nodes"), "scale_up_domain.nodes (nodes one fabric joins)", 2, MAX_NODES)
    why = entry.get("why")
    if not isinstance(why, str) or not why.strip():
        c.bad("scale_up_domain.why", "text saying where the domain's size comes from", why)
    c.fields(entry, SCALE_UP_FIELDS, "scale_up_domain")


def _link(c: _Checker, link, where: str, fields: bool = True) -> None:
    """A link {"latency_s", "bandwidth_Bps"} at `where`; its keys checked unless not `fields` (a matrix checks its
    cells' keys once for all)."""
    if not c.kind(link, dict, where):
        return
    if fields:
        c.fields(link, LINK_FIELDS, where)
    c.number(link.get("latency_s"), f"{where}.latency_s", 0, MAX_SECONDS)
    c.number(link.get("bandwidth_Bps"), f"{where}.bandwidth_Bps", MIN_RATE, MAX_RATE)


def _matrix(c: _Checker, rows, where: str, size) -> None:
    if rows is None or not c.kind(rows, list, where):
        return
    if isinstance(size, int) and len(rows) != size:
        c.bad(where, f"{size} rows (one per device or node)", f"{len(rows)} rows")
        return
    for i, row in enumerate(rows):
        if not c.kind(row, list, f"{where}[{i}]"):
            return
        if len(row) != len(rows):
            c.bad(f"{where}[{i}]", f"{len(rows)} links", f"{len(row)} links")
            return
        for j, cell in enumerate(row):
            _link(c, cell, f"{where}[{i}][{j}]", fields=False)
            if len(c.problems) > 20:
                return
    odd = [(i, j) for i, row in enumerate(rows) for j, cell in enumerate(row)
           if isinstance(cell, dict) and any(key not in LINK_FIELDS for key in cell)]
    if odd:
        (i, j), more = odd[0], len(odd) - 1
        c.fields(rows[i][j], LINK_FIELDS, f"{where}[{i}][{j}]",
                 f" ({more} more cells have unknown fields too)" if more else "")


def _efficiency(c: _Checker, eff) -> None:
    """efficiency: {name: {"value": number, "why": text}}, names among EFFICIENCY_NAMES, every one of
    REQUIRED_EFFICIENCIES present, each value in the range its name's kind allows."""
    if not c.kind(eff, dict, "efficiency"):
        return
    c.fields(eff, EFFICIENCY_NAMES, "efficiency")
    missing = [name for name in REQUIRED_EFFICIENCIES if name not in eff]
    if missing:
        c.problems.append(f"efficiency lacks {', '.join(missing)}: a profile states "
                          f"{', '.join(REQUIRED_EFFICIENCIES)}, each {{\"value\": a fraction of the device's or the "
                          f"link's peak, \"why\": text}} (copy them from a bundled profile such as dgx-h100-80g and "
                          f"adjust)")
    for key, entry in eff.items():
        where = f"efficiency.{_key(key)}"
        if not c.kind(entry, dict, where):
            continue
        c.fields(entry, SYNC_FIELDS if key == "collective_sync_s" else ENTRY_FIELDS, where)
        if "why" in entry:
            c.text(entry["why"], f"{where}.why")
        by_ranks = entry.get("by_ranks")
        if by_ranks is not None and c.kind(by_ranks, dict, f"{where}.by_ranks"):
            for ranks, seconds in by_ranks.items():
                if not (isinstance(ranks, str) and ranks.isdigit() and ranks.isascii() and 2 <= int(ranks)
                        <= MAX_NODES * MAX_GPUS_PER_NODE):
                    c.bad(f"{where}.by_ranks", "keys that are group sizes of 2 ranks or more, e.g. \"2\"", ranks)
                c.number(seconds, f"{where}.by_ranks.{_key(ranks)}", 0, MAX_SECONDS)
        value = entry.get("value")
        if key.endswith("_s"):
            c.number(value, f"{where}.value (seconds)", 0, MAX_SECONDS)
        elif key.startswith("cpu_share"):
            c.number(value, f"{where}.value (a share of a core)", MIN_FRACTION, 1)
        elif key.endswith("_scale"):
            c.number(value, f"{where}.value (a scale)", MIN_FRACTION, MAX_SCALE)
        else:
            c.number(value, f"{where}.value (a fraction of a peak)", MIN_FRACTION, MAX_EFFICIENCY)


def _collectives(c: _Checker, coll) -> None:
    """collectives (measured): {op: {scope: [{"ranks", "bytes", "time_s"}, ...]}}, ops among COLLECTIVE_OPS, scopes
    among COLLECTIVE_SCOPES."""
    if coll is None or not c.kind(coll, dict, "collectives"):
        return
    c.fields(coll, COLLECTIVE_OPS, "collectives")
    for op, scopes in coll.items():
        if not c.kind(scopes, dict, f"collectives.{_key(op)}"):
            continue
        c.fields(scopes, COLLECTIVE_SCOPES, f"collectives.{_key(op)}")
        for scope, points in scopes.items():
            where = f"collectives.{_key(op)}.{_key(scope)}"
            if not c.kind(points, list, where):
                continue
            for i, point in enumerate(points):
                if c.kind(point, dict, f"{where}[{i}]"):
                    c.fields(point, COLLECTIVE_POINT_FIELDS, f"{where}[{i}]")
                    c.integer(point.get("ranks"), f"{where}[{i}].ranks", 1, MAX_NODES * MAX_GPUS_PER_NODE)
                    c.number(point.get("bytes"), f"{where}[{i}].bytes", 1, MAX_BYTES)  # (at least a byte moved)
                    c.number(point.get("time_s"), f"{where}[{i}].time_s", 0, MAX_SECONDS, lo_open=True)


def _shape(c: _Checker, entry: dict, where: str, tp: bool = True) -> None:
    """The shape a table row was timed at: micro_batch, seq_len and (`tp`: rows that state one) the TP width."""
    if tp:
        c.integer(entry.get("tp", 1), f"{where}.tp", 1, MAX_GPUS_PER_NODE * 64)
    c.integer(entry.get("micro_batch"), f"{where}.micro_batch", 1, 1 << 30)
    c.integer(entry.get("seq_len"), f"{where}.seq_len", 1, 1 << 30)


def _compute(c: _Checker, table) -> None:
    if table is None or not c.kind(table, dict, "compute"):
        return
    c.fields(table, COMPUTE_FIELDS, "compute")
    if table.get("model") is not None and c.kind(table["model"], dict, "compute.model"):
        try:  # (the model the tables were timed on: a typo in it would silently keep them from ever matching)
            ModelSpec.from_dict(table["model"], source="compute.model")
        except UserError as err:
            c.problems.append(str(err))
    for key in ("dtype", "device"):
        if key in table:
            c.text(table[key], f"compute.{key}")
    if isinstance(table.get("dtype"), str) and table["dtype"] not in PROFILED_DTYPES:
        # (a table in another dtype never matches a plan's: it would be dropped without a word)
        c.problems.append(f"compute.dtype {quoted(table['dtype'])} is not one the profiler times "
                          f"({', '.join(PROFILED_DTYPES)})")
    if "model" in table and table["model"] is not None:
        c.kind(table["model"], dict, "compute.model")
    for key in ("optimizer_s_per_param", "optimizer_dtensor_s_per_param"):
        if table.get(key) is not None:
            c.number(table[key], f"compute.{key}", 0, 1.0)
    for key in ("fsdp_pass_s_per_unit", "fsdp_solo_pass_s_per_unit"):
        if table.get(key) is not None:
            c.number(table[key], f"compute.{key}", 0, MAX_SECONDS)
    actions = table.get("pipeline_action_s")
    if actions is not None and c.kind(actions, dict, "compute.pipeline_action_s"):
        c.fields(actions, tuple(SCHEDULES), "compute.pipeline_action_s")
        for name, seconds in actions.items():
            c.number(seconds, f"compute.pipeline_action_s.{_key(name)}", 0, MAX_SECONDS)
    entries = table.get("entries", [])
    if c.kind(entries, list, "compute.entries"):
        blocks_by_tp: dict = {}
        for i, entry in enumerate(entries):
            where = f"compute.entries[{i}]"
            if not c.kind(entry, dict, where):
                continue
            c.fields(entry, COMPUTE_ENTRY_FIELDS, where)
            if entry.get("block") not in BLOCKS + MOE_BLOCKS:
                c.bad(f"{where}.block", f"one of {', '.join(BLOCKS + MOE_BLOCKS)}", entry.get("block"))
            _shape(c, entry, where)
            for key in EXPERT_DEGREE_FIELDS:
                if key in entry or entry.get("block") == "experts":
                    c.integer(entry.get(key), f"{where}.{key}", 1, MAX_NODES * MAX_GPUS_PER_NODE)
            c.number(entry.get("forward_s"), f"{where}.forward_s", 0, MAX_SECONDS, lo_open=True)  # a kernel ran
            for key in ("backward_input_s", "backward_weight_s"):
                c.number(entry.get(key), f"{where}.{key}", 0, MAX_SECONDS)
            for key in ("p10_forward_s", "p90_forward_s"):
                if entry.get(key) is not None:
                    c.number(entry[key], f"{where}.{key}", 0, MAX_SECONDS)
            if entry.get("repeats") is not None:
                c.integer(entry["repeats"], f"{where}.repeats", 1, 1 << 30)
            if isinstance(entry.get("tp", 1), int) and entry.get("block") in BLOCKS:
                blocks_by_tp.setdefault(entry.get("tp", 1), set()).add(entry.get("block"))
            if len(c.problems) > 20:
                return
        for tp, blocks in blocks_by_tp.items():
            missing = [b for b in BLOCKS if b not in blocks]
            if missing:
                c.bad(f"compute.entries at tp {quoted(tp)}", f"timed for every block ({', '.join(BLOCKS)})",
                      f"none for {', '.join(missing)}")
    scales = table.get("chain_scales")
    if scales is not None and c.kind(scales, list, "compute.chain_scales"):
        for i, row in enumerate(scales):
            where = f"compute.chain_scales[{i}]"
            if c.kind(row, dict, where):
                c.fields(row, CHAIN_SCALE_FIELDS, where)
                _shape(c, row, where, tp=False)
                for key in ("layer_scale", "ends_scale"):
                    c.number(row.get(key), f"{where}.{key}", MIN_FRACTION, MAX_SCALE)
    for row, where in _in_place_rows(c, table, "tp_layers", TP_LAYER_FIELDS):
        _shape(c, row, where)
        if not isinstance(row.get("sequence_parallel", False), bool):
            c.bad(f"{where}.sequence_parallel", "true or false", row.get("sequence_parallel"))
    for row, where in _in_place_rows(c, table, "ep_layers", EP_LAYER_FIELDS):
        _shape(c, row, where, tp=False)
        c.integer(row.get("ep"), f"{where}.ep", 2, MAX_NODES * MAX_GPUS_PER_NODE)


def _in_place_rows(c: _Checker, table: dict, name: str, fields: tuple):
    """(row, path) of each object row of the in-place measurements `compute.<name>` (a list), its keys and
    its forward_s and backward_s (seconds >= 0) checked; the caller checks the rest."""
    rows = table.get(name)
    if rows is None or not c.kind(rows, list, f"compute.{name}"):
        return
    for i, row in enumerate(rows):
        where = f"compute.{name}[{i}]"
        if c.kind(row, dict, where):
            c.fields(row, fields, where)
            for key in ("forward_s", "backward_s"):
                c.number(row.get(key), f"{where}.{key}", 0, MAX_SECONDS)
            yield row, where


def _matmul_size_curve(c: _Checker, curve) -> None:
    """{"points": [[GFLOP >= 0, fraction in (0, 1]], ...] (distinct sizes), "source": text}."""
    if curve is None or not c.kind(curve, dict, "matmul_size_curve"):
        return
    c.fields(curve, CURVE_FIELDS, "matmul_size_curve")
    if "source" in curve:
        c.text(curve["source"], "matmul_size_curve.source")
    _curve_points(c, curve.get("points"), "matmul_size_curve.points", "GFLOP", "sizes",
                  lambda v, where: c.number(v, where, 0, MAX_RATE), "a fraction of efficiency.matmul", 1)


def _attention_curves(c: _Checker, curves) -> None:
    """{"kernels": {kernel: {"forward": curve, "backward": curve}}, "source": text}, each kernel one of
    ATTENTION_KERNELS, each curve {head_dim: [[seq_len, fraction of the peak], ...]} with head dims and sequence
    lengths positive integers, distinct within a curve, and fractions in (0, MAX_EFFICIENCY]."""
    if curves is None or not c.kind(curves, dict, "attention_curves"):
        return
    c.fields(curves, ATTENTION_CURVES_FIELDS, "attention_curves")
    if "source" in curves:
        c.text(curves["source"], "attention_curves.source")
    kernels = curves.get("kernels")
    if not c.kind(kernels, dict, "attention_curves.kernels"):
        return
    for kernel, passes in kernels.items():
        where = f"attention_curves.kernels.{kernel}"
        if kernel not in ATTENTION_KERNELS:
            c.bad("attention_curves.kernels", f"keyed by kernels among {', '.join(ATTENTION_KERNELS)}", kernel)
            continue
        if not c.kind(passes, dict, where):
            continue
        c.fields(passes, ATTENTION_CURVE_PASSES, where)
        for name in ATTENTION_CURVE_PASSES:
            curve = passes.get(name)
            if not c.kind(curve, dict, f"{where}.{name}"):
                continue
            if not curve:
                c.bad(f"{where}.{name}", "a non-empty object of head_dim -> [[seq_len, fraction], ...]", curve)
            for head_dim, points in curve.items():
                _attention_curve(c, head_dim, points, f"{where}.{name}.{head_dim}")


def _attention_curve(c: _Checker, head_dim, points, where: str) -> None:
    if not (isinstance(head_dim, str) and head_dim.isdigit() and int(head_dim) > 0):
        c.bad(where, "keyed by a positive integer head dim", head_dim)
    _curve_points(c, points, where, "seq_len", "sequence lengths",
                  lambda v, at: c.integer(v, at, 1, 1 << 40), "a fraction of the peak", MAX_EFFICIENCY)


def _curve_points(c: _Checker, points, where: str, x_name: str, x_plural: str, x_ok, fraction: str,
                  fraction_hi: float) -> None:
    """A non-empty list of [x, fraction] pairs at `where`, each x passing `x_ok(value, where)` (which reports its own
    error) and distinct, each fraction in (0, fraction_hi]; `x_name`, `x_plural` and `fraction` name them in errors."""
    if not c.kind(points, list, where):
        return
    if not points:
        c.bad(where, f"a non-empty list of [{x_name}, fraction] pairs", points)
    xs = []
    for i, point in enumerate(points):
        if not isinstance(point, list) or len(point) != 2:
            c.bad(f"{where}[{i}]", f"a [{x_name}, fraction] pair", point)
            continue
        if x_ok(point[0], f"{where}[{i}][0] ({x_name})"):
            xs.append(point[0])
        c.number(point[1], f"{where}[{i}][1] ({fraction})", MIN_FRACTION, fraction_hi)
    if len(set(xs)) != len(xs):
        c.bad(where, f"pairs of distinct {x_plural}", sorted(xs))
