"""Scale-up domains: nodes (hosts) that one fabric joins (a GB200 NVL72 rack: 18 trays of 4 GPUs on one NVLink
switch fabric) talk over `intra_node` links; the cost model, placement and the search read links by domain, while
launch stays per node."""

import dataclasses
import json

import pytest

from autoconf.cost.estimate import estimate
from autoconf.errors import UserError
from autoconf.execute.launch import build_commands
from autoconf.solve.placement import tp_cp_domain
from autoconf.solve.space import candidates
from autoconf.spec.cluster import ClusterProfile, Link, load_cluster
from autoconf.spec.frameworks import execution
from autoconf.spec.grid import RankGrid, expert_groups
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import load_model
from plan_helpers import script_module

H100 = load_cluster("dgx-h100-80g")
DOMAIN = {"nodes": 2, "why": "two 4-GPU hosts on one NVLink fabric (test)"}


def trays(nodes: int, domain: dict | None = DOMAIN) -> ClusterProfile:
    """dgx-h100-80g's links and device in hosts of 4 GPUs, `domain["nodes"]` hosts per NVLink fabric."""
    return dataclasses.replace(H100, name="h100-trays", nodes=nodes, gpus_per_node=4, scale_up_domain=domain)


def test_links_follow_the_domain_not_the_host():
    c = trays(4)
    assert (c.nodes_per_domain, c.devices_per_domain, c.num_domains) == (2, 8, 2)
    assert c.link(0, 7) == c.intra_node  # another host of the same fabric
    assert c.link(7, 8) == c.inter_node  # another fabric
    assert trays(4, None).link(0, 7) == c.inter_node  # without a domain the fabric ends at the host


@pytest.mark.parametrize("layout", [dict(tp=8, pp=1, dp=2), dict(tp=2, pp=2, dp=4), dict(tp=1, pp=1, dp=16)])
def test_a_domain_of_hosts_predicts_what_one_node_of_its_size_does(layout):
    """Every link cost reads the domain: 4 hosts of 4 GPUs in fabrics of 2 hosts predict what 2 nodes of 8 do."""
    model = load_model("llama3-8b")
    c = ParallelConfig(**layout, micro_batch_size=1, global_batch_size=32, seq_len=4096, zero_stage=1,
                       recompute="selective", sequence_parallel=layout["tp"] > 1, dtype="bf16")
    ex = execution("megatron-core")
    domain = estimate(model, trays(4), c, execution=ex).prediction
    nodes = estimate(model, H100.resized(2), c, execution=ex).prediction
    assert domain["iteration_time_s"] == pytest.approx(nodes["iteration_time_s"], rel=1e-12)
    assert domain["time_breakdown"] == pytest.approx(nodes["time_breakdown"], rel=1e-9, abs=1e-12)
    assert domain["peak_memory_bytes"] == nodes["peak_memory_bytes"]
    hosts = estimate(model, trays(4, None), c, execution=ex).prediction
    if layout["tp"] > 4 or layout["dp"] > 1:
        assert hosts["iteration_time_s"] > domain["iteration_time_s"]  # the same traffic over InfiniBand


def test_the_search_keeps_tp_within_the_domain_not_the_host():
    model = load_model("llama3-8b")
    c = trays(4)
    tps = {cfg.tp for cfg in candidates(model, c.world_size, c.devices_per_domain, 32, 4096, "bf16")}
    assert max(tps) == 8
    slow = dataclasses.replace(c, inter_node=Link(8e-6, 25e9))  # NVLink 18 times faster: TP x CP stays inside
    assert tp_cp_domain(slow)[0] == 8 and "a scale-up domain" in tp_cp_domain(slow)[1]
    assert tp_cp_domain(dataclasses.replace(slow, nodes=2))[0] is None  # one fabric holds every device


def test_a_plan_on_a_domain_launches_per_host(tmp_path):
    model = load_model("llama3-8b")
    c = ParallelConfig(tp=8, pp=1, dp=2, micro_batch_size=1, global_batch_size=32, seq_len=4096, zero_stage=1,
                       recompute="selective", sequence_parallel=True, dtype="bf16")
    estimate(model, trays(4), c, execution=execution("autoconf")).save(tmp_path / "plan.json")
    commands = build_commands(tmp_path / "plan.json", steps=2, nnodes=4, master_addr="10.0.0.1", create_dirs=False)
    assert len(commands) == 4  # one torchrun per host, 4 processes each
    assert all(cmd[cmd.index("--nproc-per-node") + 1] == "4" for cmd in commands)


def test_round_trip_and_refusals():
    c = trays(4)
    assert ClusterProfile.from_dict(c.to_dict()) == c
    assert "scale_up_domain" not in H100.to_dict()  # profiles without one are written as before
    with pytest.raises(UserError, match=r"domains of 2.*\(2 or 4\), not 3"):
        trays(3)
    with pytest.raises(UserError, match="drop the link matrices or the domain"):
        dataclasses.replace(trays(2), intra_node_matrix=tuple((H100.intra_node,) * 4 for _ in range(4)))
    data = c.to_dict()
    for bad, needle in (({"nodes": 1, "why": "x"}, "scale_up_domain.nodes"), ({"nodes": 2}, "scale_up_domain.why"),
                        ({"nodes": 2, "why": "x", "size": 3}, "scale_up_domain.size"), (4, "scale_up_domain")):
        with pytest.raises(UserError, match=needle):
            ClusterProfile.from_dict({**data, "scale_up_domain": bad})


def test_truth_moe_costs_every_published_run_and_keeps_nvl72_ep_groups_on_one_fabric():
    """scripts/truth_moe.py reads each run's trays per fabric (`scale_up_nodes`): every run of its data file is
    costed, and on the GB200 / GB300 rows every EP group of the default grid lies on one NVLink fabric."""
    truth_moe = script_module("truth_moe")
    runs = json.loads(truth_moe.DATA.read_text())["runs"]
    racks = [run for run in runs if run.get("scale_up_nodes")]
    assert len(racks) >= 4
    for run in runs:
        row, _ = truth_moe.compare(run)
        assert "not_modelled" not in row, run["label"]
    for run in racks:
        c, _ = truth_moe.layout(run)
        cluster = truth_moe.cluster_of(run)
        assert cluster.devices_per_domain == 4 * run["scale_up_nodes"]
        grid = RankGrid.logical(c.dims)
        for pp_rank in range(c.pp):
            groups = expert_groups(grid, pp_rank, c.ep, c.etp, "ep")
            assert all(len({cluster.domain_of(int(d)) for d in group}) == 1 for group in groups), run["label"]


def test_a_node_range_that_makes_sizes_the_domains_refuse_names_the_range():
    """`plan --nodes 1:36` on GB200 NVL72 racks (18 nodes a domain) made a 32-node size and complained about "not
    32", a number the user never typed; now the range is named with one that works."""
    from click.testing import CliRunner

    from autoconf.cli import main

    result = CliRunner().invoke(main, ["plan", "--model", "tiny-gpt", "--cluster", "gb200-nvl72", "--nodes", "1:36",
                                       "--tokens", "1B", "--global-batch", "64", "--seq-len", "64"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--nodes 1:36 includes 32 nodes" in result.output and "e.g. 18:36:18" in result.output
    assert not load_cluster("gb200-nvl72").takes_nodes(32) and load_cluster("gb200-nvl72").takes_nodes(36)
