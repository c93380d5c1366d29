"""A cluster profile refuses a key it does not know at every depth, not only at the top level.

Each object below the top level has its key set in autoconf/spec/profile_checks.py (DEVICE_FIELDS, LINK_FIELDS,
EFFICIENCY_NAMES, ...); a typo there (`device.memroy_bytes`) was silently ignored, so the value the user meant never
reached the cost model. The key sets are exactly what the writers write and the readers read: the tests at the end
hold the writers (ClusterProfile.to_dict, `autoconf profile`'s pieces, the bundled profiles) and the readers to them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest

from autoconf.errors import UserError
from autoconf.spec import profile_checks as pc
from autoconf.spec.cluster import PROFILES_DIR, ClusterProfile, Device, Link, bundled_profiles

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bad_input import assert_one_clear_error, run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_DGX = json.loads((PROFILES_DIR / "dgx-h100-80g.json").read_text())  # curves, price, host
_MEASURED = json.loads((PROFILES_DIR / "h100-gpt3-1.3b.json").read_text())  # compute tables


def _refusal(doc: dict) -> str:
    with pytest.raises(UserError) as err:
        ClusterProfile.from_dict(doc, "p.json")
    message = str(err.value)
    assert "\n" not in message and len(message) < 1200, message
    return message


def _set(path: tuple, value):
    """An edit of `_DGX`/`_MEASURED` setting the key at `path` (the last step is the new key) to `value`."""
    def edit(doc):
        node = doc
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
    return edit


_POINT = {"ranks": 2, "bytes": 1 << 20, "time_s": 1e-4}
_TP_ROW = {"tp": 2, "micro_batch": 1, "seq_len": 64, "sequence_parallel": False, "forward_s": 1e-4, "backward_s": 1e-4}


@pytest.mark.parametrize("base,edit,path,allowed", [
    (_DGX, _set(("device", "memroy_bytes"), 1), "device.memroy_bytes", pc.DEVICE_FIELDS),
    (_DGX, _set(("device", "peak_flops", "bf61"), 1e12), "device.peak_flops.bf61", pc.PEAK_DTYPES),
    (_DGX, _set(("intra_node", "latncy_s"), 1e-6), "intra_node.latncy_s", pc.LINK_FIELDS),
    (_DGX, _set(("inter_node", "bandwith_Bps"), 1e9), "inter_node.bandwith_Bps", pc.LINK_FIELDS),
    (_DGX, lambda d: d.update(intra_node_matrix=[[{**d["intra_node"], **({"bw": 1} if (i, j) == (1, 2) else {})}
                                                  for j in range(8)] for i in range(8)]),
     "intra_node_matrix[1][2].bw", pc.LINK_FIELDS),
    (_DGX, lambda d: d.update(nodes=2, inter_node_matrix=[[{**d["inter_node"], "lat": 1}] * 2] * 2),
     "inter_node_matrix[0][0].lat", pc.LINK_FIELDS),
    (_DGX, _set(("collectives", "allreduce"), {"intra": [_POINT]}), "collectives.allreduce", pc.COLLECTIVE_OPS),
    (_DGX, _set(("collectives", "all_reduce"), {"intar": [_POINT]}), "collectives.all_reduce.intar",
     pc.COLLECTIVE_SCOPES),
    (_DGX, _set(("collectives", "all_gather"), {"intra": [_POINT, {**_POINT, "bytes": 2 << 20, "tim_s": 1}]}),
     "collectives.all_gather.intra[1].tim_s", pc.COLLECTIVE_POINT_FIELDS),
    (_DGX, _set(("efficiency", "matmull"), {"value": 0.5, "why": "typo"}), "efficiency.matmull", pc.EFFICIENCY_NAMES),
    (_DGX, _set(("efficiency", "matmul", "valeu"), 0.5), "efficiency.matmul.valeu", pc.ENTRY_FIELDS),
    (_DGX, _set(("price", "usd_per_gpu_hr"), 2.0), "price.usd_per_gpu_hr", pc.PRICE_FIELDS),
    (_DGX, _set(("host", "h2d_bps"), 1e10), "host.h2d_bps", pc.HOST_KEYS),
    (_DGX, _set(("matmul_size_curve", "point"), [[1, 1.0]]), "matmul_size_curve.point", pc.CURVE_FIELDS),
    (_DGX, _set(("attention_curves", "kernel"), {}), "attention_curves.kernel", pc.ATTENTION_CURVES_FIELDS),
    (_DGX, _set(("attention_curves", "kernels", "fa2", "backwards"), {}), "attention_curves.kernels.fa2.backwards",
     pc.ATTENTION_CURVE_PASSES),
    (_DGX, _set(("memory_headroom",), {"value": 0.1, "fraction": 0.2}), "memory_headroom.fraction", pc.ENTRY_FIELDS),
    (_MEASURED, _set(("compute", "entires"), []), "compute.entires", pc.COMPUTE_FIELDS),
    (_MEASURED, _set(("compute", "entries", 3, "forwrd_s"), 1e-3), "compute.entries[3].forwrd_s",
     pc.COMPUTE_ENTRY_FIELDS),
    (_MEASURED, _set(("compute", "chain_scales", 0, "tp"), 2), "compute.chain_scales[0].tp", pc.CHAIN_SCALE_FIELDS),
    (_MEASURED, _set(("compute", "tp_layers"), [{**_TP_ROW, "backward_input_s": 0.0}]),
     "compute.tp_layers[0].backward_input_s", pc.TP_LAYER_FIELDS),
    (_MEASURED, _set(("compute", "pipeline_action_s"), {"1f1b": 1e-4, "1f1f": 1e-4}), "compute.pipeline_action_s.1f1f",
     None),
])
def test_a_typo_below_the_top_level_is_refused_by_its_path(base, edit, path, allowed):
    """Every object of a profile refuses a key it does not hold: one line naming the key by its path and what the
    object holds. The same profile without the typo loads."""
    doc = copy.deepcopy(base)
    edit(doc)
    message = _refusal(doc)
    assert f"unknown field(s) {path};" in message, message
    if allowed is not None:
        assert ", ".join(allowed) in message, message


def test_the_typo_edits_are_otherwise_valid():
    """The matrices, collectives and TP rows the typo cases start from load without the typo (so the refusals above
    are for the typo, not for something else)."""
    doc = copy.deepcopy(_DGX)
    doc.update(nodes=2, intra_node_matrix=[[dict(doc["intra_node"])] * 8] * 8,
               inter_node_matrix=[[dict(doc["inter_node"])] * 2] * 2,
               collectives={"all_gather": {"intra": [_POINT, {**_POINT, "bytes": 2 << 20}]}})
    ClusterProfile.from_dict(doc)
    doc = copy.deepcopy(_MEASURED)
    doc["compute"].update(tp_layers=[_TP_ROW], pipeline_action_s={"1f1b": 1e-4}, fsdp_pass_s_per_unit=1e-3,
                          fsdp_solo_pass_s_per_unit=5e-4)
    ClusterProfile.from_dict(doc)


def test_a_matrix_of_typos_is_one_problem():
    """The same typo in every cell of a matrix is named once, with how many more cells have it."""
    doc = copy.deepcopy(_DGX)
    doc["intra_node_matrix"] = [[{**doc["intra_node"], "bw": 1} for _ in range(8)] for _ in range(8)]
    message = _refusal(doc)
    assert message.count("unknown field(s)") == 1 and "63 more cells" in message, message


def test_many_or_huge_unknown_keys_stay_one_short_line():
    """Many typos list the first five and how many more; a huge key is shortened."""
    doc = copy.deepcopy(_DGX)
    doc["device"].update({f"extra{i}": 1 for i in range(12)})
    message = _refusal(doc)
    assert "device.extra4 and 7 more" in message and "extra5" not in message, message
    doc = copy.deepcopy(_DGX)
    doc["price"]["x" * 100_000] = 1
    assert "price.'xxx" in _refusal(doc)


def test_hostnames_at_most_one_per_node():
    """A profile names at most one host per node, each once: more, or one twice, is refused; as many, or fewer (a
    profile whose `nodes` was raised by hand), loads."""
    doc = copy.deepcopy(_DGX)
    doc.update(nodes=2, hostnames=["a", "b", "c"])
    message = _refusal(doc)
    assert "hostnames must be at most one name per node (2 nodes), got 3" in message, message
    for names in (["a", "b"], ["a"], []):
        doc["hostnames"] = names
        assert ClusterProfile.from_dict(doc).hostnames == tuple(names)
    doc["hostnames"] = ["a", "a"]
    assert "hostnames must be one distinct name per node, got 'a' more than once" in _refusal(doc)


def test_a_profile_without_efficiency_matmul_is_refused_in_one_line(tmp_path):
    """A profile lacking efficiency.matmul (or another entry every estimate reads) is refused when loaded, naming
    it and what a profile states; before, `estimate` failed later with "does not state efficiency 'matmul'" and no
    word of the file or the fix."""
    doc = copy.deepcopy(_DGX)
    del doc["efficiency"]["matmul"]
    message = _refusal(doc)
    assert "efficiency lacks matmul: a profile states matmul, attention, memory, comm_intra, comm_inter" in message
    (tmp_path / "p.json").write_text(json.dumps(doc))
    assert_one_clear_error(run_cli(["estimate", "--model", "gpt3-1.3b", "--cluster", tmp_path / "p.json", "--nodes",
                                    "1", "--gpus-per-node", "1", "--tp", "1", "--pp", "1", "--dp", "1",
                                    "--micro-batch", "1", "--global-batch", "1"]),
                           str(tmp_path / "p.json"), "efficiency lacks matmul", "dgx-h100-80g")


# ---- the key sets are what the writers write and the readers read --------------------------------------------------
def test_every_bundled_profile_writes_only_known_keys():
    """The bundled profiles (scripts/bundled_profiles.py) load and write back themselves: none holds a key the checks
    refuse, and ClusterProfile.to_dict writes none."""
    for name in bundled_profiles():
        doc = json.loads((PROFILES_DIR / f"{name}.json").read_text())
        assert pc.profile_problems(ClusterProfile.from_dict(doc).to_dict()) == []


def test_device_and_link_keys_are_what_to_dict_writes():
    assert tuple(f.name for f in dataclasses.fields(Device)) == pc.DEVICE_FIELDS
    assert tuple(Link(1e-6, 1e9).to_dict()) == pc.LINK_FIELDS
    assert tuple(ClusterProfile.from_dict(_DGX).to_dict()["memory_headroom"]) == pc.ENTRY_FIELDS


def test_peak_dtypes_are_the_precisions_and_the_data_sheets():
    """device.peak_flops may state a dtype a precision runs its GEMMs or elements at, and tf32 (a data sheet's); the
    profiler's data sheets state no other."""
    from autoconf.profile.hardware import DATA_SHEETS
    from autoconf.spec.dtypes import PRECISIONS

    used = {p.gemm for p in PRECISIONS.values()} | {p.element for p in PRECISIONS.values()}
    assert set(pc.PEAK_DTYPES) == used | {"tf32"}
    for _, sheet in DATA_SHEETS:
        if not isinstance(sheet, str):
            assert set(sheet[0]) <= set(pc.PEAK_DTYPES)


def test_the_profilers_efficiencies_are_known_and_complete():
    """`autoconf profile`'s efficiency objects (CPU, and GPU without a base profile) state every required entry and
    only known names, each entry of value and why."""
    from autoconf.profile.hardware import cpu_efficiency, gpu_efficiency

    rates = {"peak_flops": {"bf16": 5e14, "fp32": 1e11}, "memory_bandwidth_Bps": 1e12, "attention_flops": 3e14}
    for eff in (cpu_efficiency(rates, "fp32"), gpu_efficiency(None, rates, 9.89e14, "bf16")):
        assert set(pc.REQUIRED_EFFICIENCIES) <= set(eff) <= set(pc.EFFICIENCY_NAMES)
        assert all(tuple(entry) == pc.ENTRY_FIELDS for entry in eff.values())


def test_efficiency_names_are_exactly_those_the_code_reads_or_writes():
    """EFFICIENCY_NAMES is the set of efficiency entries autoconf's source reads (eff, overhead, efficiency.get,
    efficiency[...], `in efficiency`) or writes: no name a profile could state in vain, none read that is refused."""
    pattern = re.compile(r'(?:\.eff|\.overhead|_stated)\("(\w+)"\)|efficiency(?:\.get\(|\[)"(\w+)"|'
                         r'"(\w+)" (?:not )?in (?:\w+\.)?efficiency\b')
    named = set()
    for path in (REPO / "autoconf").rglob("*.py"):
        if path.name != "profile_checks.py":
            named |= {next(g for g in m.groups() if g) for m in pattern.finditer(path.read_text())}
    assert named == set(pc.EFFICIENCY_NAMES)


def test_compute_keys_are_exactly_those_the_code_reads_or_writes():
    """COMPUTE_FIELDS is what the profiler, the cost model and calibration write or read of `compute` (and the
    bundled measured profiles hold)."""
    pattern = re.compile(r'\b(?:table|compute)(?:\.get\(|\[)"(\w+)"')
    named = set()
    for folder in ("cost", "profile", "validate"):
        for path in (REPO / "autoconf" / folder).rglob("*.py"):
            named |= set(pattern.findall(path.read_text()))
    for name in bundled_profiles():
        named |= set(json.loads((PROFILES_DIR / f"{name}.json").read_text()).get("compute") or {})
    assert named == set(pc.COMPUTE_FIELDS)


def test_compute_rows_are_what_the_profiler_writes():
    """A timed block entry and a chain-scale row hold only the keys the checks know."""
    import torch

    from autoconf.profile.compute import time_entry
    from autoconf.profile.overheads import chain_scales
    from autoconf.spec.presets import PRESETS

    entry = time_entry("mlp", PRESETS["tiny-gpt"], 1, 1, 16, torch.device("cpu"), "fp32", warmup=1, repeats=2)
    assert set(entry) == set(pc.COMPUTE_ENTRY_FIELDS) - set(pc.EXPERT_DEGREE_FIELDS)
    experts = time_entry("experts", PRESETS["tiny-moe"], 1, 1, 16, torch.device("cpu"), "fp32", warmup=1, repeats=2,
                         ep=2, etp=2)
    assert set(experts) == set(pc.COMPUTE_ENTRY_FIELDS) and (experts["ep"], experts["etp"]) == (2, 2)
    table = {"entries": [{**entry, "block": block} for block in pc.BLOCKS]}
    passes = [{"micro_batch": 1, "seq_len": 16, "forward_s": 1e-3, "backward_s": 2e-3}]
    rows = chain_scales(PRESETS["tiny-gpt"], table, {"layers": 1, "passes": passes},
                        {"layers": 2, "passes": [{**p, "forward_s": 2e-3, "backward_s": 4e-3} for p in passes]})
    assert rows and all(tuple(row) == pc.CHAIN_SCALE_FIELDS for row in rows)


def test_the_profiler_measures_only_collectives_the_cost_model_reads():
    """The collectives the profiler measures are among those a profile states and the cost model reads (one
    tuple, spec/profile_checks.py COLLECTIVE_OPS, which cost/comm.py's OPS is)."""
    from autoconf.profile.network import COLLECTIVES

    assert set(COLLECTIVES) <= set(pc.COLLECTIVE_OPS)


def test_the_model_a_measured_table_was_timed_on_is_read_as_a_model():
    """compute.model (the model the tables were timed on) was checked as an object only: a typo in it kept the
    tables from ever matching a plan's model, silently."""
    doc = copy.deepcopy(_MEASURED)
    doc["compute"]["model"]["hiden_size"] = doc["compute"]["model"].pop("hidden_size")
    message = _refusal(doc)
    assert message.startswith("p.json") and "compute.model: unknown model field(s) 'hiden_size'" in message
