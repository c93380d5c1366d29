"""The profiler: tournament pairing, alpha-beta fits, host grouping, argument checks, and one real 2-rank run."""

from __future__ import annotations

import itertools
import json
import os
import socket

import numpy as np
import pytest

from autoconf.errors import UserError
from autoconf.profile.compute import Grid, assign, default_grid, tp_widths, tp_widths_note
from autoconf.profile.hardware import parse_bytes
from autoconf.profile.launch import build_command, check_output, profile
from autoconf.profile.network import (HostLayout, collective_groups, fit_alpha_beta, group_hosts, one_way_times,
                                      round_robin_pairs, summarize_links)
from autoconf.profile.run import parse_args
from autoconf.spec.cluster import ClusterProfile, Link
from autoconf.spec.presets import PRESETS


@pytest.mark.parametrize("n", range(1, 13))
def test_round_robin_meets_every_pair_once_in_disjoint_rounds(n):
    """Every two ranks meet exactly once; no rank is in two pairs of one round; n-1 rounds (even) or n (odd)."""
    rounds = round_robin_pairs(n)
    met = [pair for r in rounds for pair in r]
    assert sorted(met) == list(itertools.combinations(range(n), 2))
    for pairs in rounds:
        ranks = [x for pair in pairs for x in pair]
        assert len(ranks) == len(set(ranks))
        assert all(a < b for a, b in pairs)
    expected = 0 if n < 2 else (n - 1 if n % 2 == 0 else n)
    assert len(rounds) == expected


def test_alpha_beta_fit_recovers_exact_parameters():
    """Noise-free t = alpha + n / beta gives back alpha and beta."""
    alpha, beta = 25e-6, 12e9
    sizes = [4096, 65536, 1 << 20, 16 << 20]
    link = fit_alpha_beta(sizes, [alpha + n / beta for n in sizes])
    assert link.latency_s == pytest.approx(alpha, rel=1e-6)
    assert link.bandwidth_Bps == pytest.approx(beta, rel=1e-6)


def test_a_delayed_four_byte_ping_pong_leaves_the_messages_their_times():
    """Sixth review: a quick profile on a loaded host measured one direction of a link at 1 ns and 4e15 bytes/s:
    its 4-byte ping-pong took longer than the messages' own round trips, whose one-way times (less half of it)
    were clamped at a nanosecond. Taken at most the shortest round trip, the 4-byte one leaves each message a
    positive time growing with its size, and the fit a bandwidth no faster than the exact one."""
    alpha, beta = 40e-6, 5e9
    sizes = [4096, 65536, 1 << 20, 16 << 20]
    rtts = [2 * alpha + n / beta for n in sizes]  # (a 4-byte acknowledgement back takes alpha)
    assert [t for _, t in one_way_times(sizes, 2 * alpha, rtts)] == pytest.approx([alpha + n / beta for n in sizes])
    delayed = one_way_times(sizes, 1.0, rtts)  # (the 4-byte round trip delayed a whole second)
    times = [t for _, t in delayed]
    assert all(t > 0 for t in times) and times == sorted(times)
    assert fit_alpha_beta(sizes, times).bandwidth_Bps <= beta * (1 + 1e-9)


def test_alpha_beta_fit_tolerates_noise_at_every_scale():
    """With 3% multiplicative noise both parameters come back within 10%, including the latency, which a
    large message's absolute error would swamp in an unweighted fit."""
    rng = np.random.default_rng(0)
    alpha, beta = 50e-6, 2e9
    sizes = [4096, 16384, 65536, 262144, 1 << 20, 4 << 20, 16 << 20] * 3
    times = [(alpha + n / beta) * (1 + rng.normal(0, 0.03)) for n in sizes]
    link = fit_alpha_beta(sizes, times)
    assert link.latency_s == pytest.approx(alpha, rel=0.1)
    assert link.bandwidth_Bps == pytest.approx(beta, rel=0.1)


def test_alpha_beta_fit_never_returns_negative_latency_or_bandwidth():
    """Pure bandwidth data (zero latency plus noise) clamps alpha at 0; flat times still give a positive beta."""
    link = fit_alpha_beta([1e6, 2e6, 4e6], [0.0009, 0.0021, 0.0040])
    assert link.latency_s >= 0 and link.bandwidth_Bps > 0
    flat = fit_alpha_beta([1e3, 1e6], [1e-4, 1.001e-4])  # no bandwidth signal: the largest message's rate
    assert flat.latency_s >= 0 and flat.bandwidth_Bps == pytest.approx(1e6 / 1.001e-4)
    with pytest.raises(ValueError):
        fit_alpha_beta([1e3, 1e3], [1.0, 1.0])


def test_group_hosts_gives_nodes_and_ranks_per_node():
    """Ranks sharing a host name form a node, nodes ordered by their lowest rank, local ranks by rank order."""
    layout = group_hosts(["b", "a", "b", "a", "c", "c"])
    assert layout.hostnames == ("b", "a", "c")
    assert (layout.nodes, layout.gpus_per_node) == (3, 2)
    assert layout.ranks == ((0, 2), (1, 3), (4, 5))
    assert layout.node_of == (0, 1, 0, 1, 2, 2)
    assert layout.local_of == (0, 0, 1, 1, 0, 1)


def test_group_hosts_rejects_uneven_nodes():
    with pytest.raises(UserError, match="different numbers of ranks"):
        group_hosts(["a", "a", "a", "b"])


def _layout(nodes: int, g: int) -> HostLayout:
    return group_hosts([f"h{r // g}" for r in range(nodes * g)])


def test_summarize_links_builds_matrices_from_pair_fits():
    """Intra-node pairs make the g x g matrix (median over nodes), cross-node pairs the node matrix (median over
    device pairs); the plain links are the medians of each kind."""
    layout = _layout(2, 2)
    fits = {}
    for a in range(4):
        for b in range(4):
            if a != b:
                same = layout.node_of[a] == layout.node_of[b]
                fits[(a, b)] = Link(1e-6 if same else 1e-5, 100e9 if same else 10e9)
    fits[(0, 1)] = Link(2e-6, 50e9)
    fits[(2, 3)] = Link(4e-6, 30e9)
    links = summarize_links(layout, fits, Link(0.0, 1e12))
    intra = links["intra_node_matrix"]
    assert intra[0][1] == Link(3e-6, 40e9)  # median of node 0's and node 1's 0->1 links
    assert intra[1][0] == Link(1e-6, 100e9)
    assert intra[0][0] == Link(0.0, 1e12)
    assert links["inter_node_matrix"][0][1] == Link(1e-5, 10e9)
    assert links["inter_node"] == Link(1e-5, 10e9)
    one_node = summarize_links(_layout(1, 2), {(0, 1): Link(1e-6, 1e9), (1, 0): Link(1e-6, 1e9)}, Link(0.0, 1e12))
    assert one_node["inter_node"] is None and one_node["inter_node_matrix"] is None


def test_collective_groups_are_disjoint_and_shaped_by_kind():
    """Intra groups stay inside one node; inter groups take one rank per node; concurrent groups never overlap."""
    layout = _layout(4, 4)
    plan = collective_groups(layout)
    assert [(kind, k) for kind, k, _ in plan] == [("intra", 2), ("intra", 4), ("inter", 2), ("inter", 4),
                                                  ("inter", 16)]
    for kind, k, groups in plan[:-1]:
        members = [r for g in groups for r in g]
        assert len(members) == len(set(members))
        for g in groups:
            assert len(g) == k
            nodes = {layout.node_of[r] for r in g}
            assert len(nodes) == (1 if kind == "intra" else k)


def test_compute_grid_assignment_covers_every_entry():
    """Each entry is timed by some rank; with fewer ranks than entries each entry by exactly one."""
    entries = list(range(10))
    costs = [float(i) for i in entries]
    for world in (1, 3, 10, 16):
        per_rank = assign(entries, costs, world)
        timed = [i for part in per_rank for i in part]
        assert set(timed) == set(entries)
        if world <= len(entries):
            assert sorted(timed) == entries


def test_tp_widths_divide_heads_and_ffn():
    assert tp_widths(PRESETS["tiny-llama"], 8) == [1, 2]  # two KV heads
    assert tp_widths(PRESETS["tiny-gpt"], 8) == [1, 2, 4]
    grid = default_grid(PRESETS["tiny-gpt"], 4, quick=True)
    assert isinstance(grid, Grid) and grid.seq_lens == (128,)


def test_a_max_tp_the_model_cannot_take_is_said():
    """`profile --max-tp 8` on tiny-llama timed widths 1 and 2 without a word."""
    llama = PRESETS["tiny-llama"]
    note = tp_widths_note(llama, 8, tuple(tp_widths(llama, 8)))
    assert note and "TP widths 1, 2 only" in note and "2 KV heads" in note
    assert tp_widths_note(PRESETS["tiny-gpt"], 4, tuple(tp_widths(PRESETS["tiny-gpt"], 4))) is None
    assert "--max-tp 3" in tp_widths_note(PRESETS["tiny-gpt"], 3, (1, 2))


def test_parse_bytes_reads_suffixes():
    assert parse_bytes("4GiB") == 4 << 30
    assert parse_bytes("512M") == 512 << 20
    assert parse_bytes("2GB") == 2_000_000_000
    assert parse_bytes("1024") == 1024
    with pytest.raises(UserError):
        parse_bytes("lots")
    with pytest.raises(UserError, match="--memory-per-rank: size '0' must be positive"):  # (the flag was not named)
        parse_bytes("0")


def test_profile_refuses_to_overwrite_and_checks_the_folder(tmp_path):
    existing = tmp_path / "p.json"
    existing.write_text("{}")
    with pytest.raises(UserError, match="already exists"):
        profile(existing)
    assert check_output(existing, force=True) == existing.resolve()
    assert check_output(tmp_path / "new" / "p.json", force=False).parent.is_dir()  # (made, as plan's --out)
    with pytest.raises(UserError, match="cannot make folder"):
        profile(existing / "p.json")  # (under a file)
    with pytest.raises(UserError, match="is a folder"):
        profile(tmp_path)
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UserError, match="not writable"):
            profile(locked / "p.json")


def test_profile_checks_ranks_model_and_port(tmp_path):
    out = tmp_path / "p.json"
    with pytest.raises(UserError, match="node-rank"):
        profile(out, nnodes=2, node_rank=2)
    with pytest.raises(UserError, match="nproc-per-node"):
        profile(out, nproc_per_node=0)
    with pytest.raises(UserError, match="unknown model"):
        profile(out, model="no-such-model")
    with pytest.raises(UserError, match="--max-tp must be an integer >= 1"):
        profile(out, max_tp=0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="in use"):
            profile(out, master_port=busy.getsockname()[1])
    assert not out.exists()


def test_build_command_passes_multi_node_flags():
    cmd = build_command("/x/p.json", 8, 4, 2, "node0", 29400, "llama3-8b", False)
    assert cmd[1:3] == ["-m", "autoconf.execute.elastic"]
    joined = " ".join(cmd)
    assert "--nnodes 4 --node-rank 2 --master-addr node0 --master-port 29400" in joined
    assert joined.endswith("-m autoconf.profile.run --out /x/p.json --model llama3-8b")
    c10d = " ".join(build_command("/x/p.json", 8, 4, 2, "node0", 29400, None, True, rdzv="c10d"))
    assert "--rdzv-backend c10d --rdzv-endpoint node0:29400" in c10d and "--quick" in c10d
    one_gpu = build_command("/x/p.json", 1, 1, 0, "127.0.0.1", 29400, "gpt3-1.3b", False, max_tp=8)
    assert one_gpu[-2:] == ["--max-tp", "8"]
    assert parse_args(["--out", "p.json", "--max-tp", "8"]).max_tp == 8
    long = build_command("/x/p.json", 1, 1, 0, "127.0.0.1", 29400, "llama3-8b", False, seq_lens=(8192, 32768))
    assert long[-4:] == ["--seq-len", "8192", "--seq-len", "32768"]
    assert parse_args(["--out", "p.json", *long[-4:]]).seq_len == [8192, 32768]


def test_profile_refuses_a_bad_sequence_length(tmp_path):
    """`profile --seq-len 0` is one clear line before torchrun starts, and writes nothing."""
    out = tmp_path / "p.json"
    with pytest.raises(UserError, match="--seq-len must be an integer from 1"):
        profile(out, seq_lens=(0,))
    assert not out.exists()


@pytest.mark.slow
def test_two_rank_quick_profile_round_trips(tmp_path, monkeypatch):
    """A real 2-rank gloo run (tiny grid) writes a measured profile that loads, round-trips, and has a compute table
    in the format the cost model reads; with two pretend nodes the inter-node paths are exercised too. With
    torchrun's default port 29500 taken, it runs on a free one (it refused before unless given --master-port)."""
    monkeypatch.setenv("AUTOCONF_PROFILE_TINY", "1")
    monkeypatch.setenv("AUTOCONF_PROFILE_FAKE_NODES", "2")
    out = tmp_path / "profile.json"
    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", 29500))
            busy.listen()
        except OSError:  # taken already: the case this checks
            pass
        assert profile(out, nproc_per_node=2, quick=True) == 0
    data = json.loads(out.read_text())
    cluster = ClusterProfile.from_dict(data)
    assert cluster.to_dict() == data
    assert cluster.source == "measured" and cluster.backend == "gloo"
    assert (cluster.nodes, cluster.gpus_per_node) == (2, 1)
    assert len(cluster.hostnames) == 2 and cluster.inter_node_matrix is not None
    assert cluster.inter_node.bandwidth_Bps > 0 and cluster.device.peak("fp32") > 0
    assert cluster.eff("matmul") == 1.0 and cluster.eff("memory") == 1.0
    assert cluster.collectives["all_reduce"]["inter"][0]["ranks"] == 2
    compute = cluster.compute
    assert compute["dtype"] == "fp32" and compute["device"] == "cpu" and compute["model"]["name"] == "tiny-gpt"
    blocks = {e["block"] for e in compute["entries"]}
    assert blocks == {"attention", "mlp", "norm", "embedding", "head"}
    for entry in compute["entries"]:
        assert entry["forward_s"] > 0 and entry["backward_weight_s"] >= 0
        assert entry["p10_forward_s"] <= entry["p90_forward_s"]
    assert compute["optimizer_s_per_param"] > 0
    assert not list(tmp_path.glob(".*tmp*"))
    # Planning on the measured profile uses its compute tables.
    from autoconf.solve.search import search
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.presets import PRESETS

    measured = load_cluster(str(out))
    result = search(PRESETS["tiny-gpt"], measured, 4, compute["entries"][0]["seq_len"], "fp32", top_k=2)
    assert result.plans and result.plans[0].prediction["compute_source"] == "measured"


@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-llama"])
def test_every_block_times_at_every_tp_width(name):
    """The executor's blocks build at TP-sharded shapes (GQA, rotary, vocab/tp head) and give positive times;
    the embedding has no input gradient, the others have both I and W."""
    import torch

    from autoconf.profile.compute import BLOCKS, time_entry

    model = PRESETS[name]
    for tp in tp_widths(model, 2):
        for kind in BLOCKS:
            entry = time_entry(kind, model, tp, 1, 16, torch.device("cpu"), "fp32", warmup=1, repeats=2)
            assert entry["forward_s"] > 0 and entry["repeats"] == 2
            if kind == "embedding":
                assert entry["backward_input_s"] == 0.0
            else:
                assert entry["backward_input_s"] > 0


def test_entry_budget_cuts_repeats_but_keeps_three():
    import torch

    from autoconf.profile.compute import time_entry

    entry = time_entry("mlp", PRESETS["tiny-gpt"], 1, 1, 16, torch.device("cpu"), "fp32", warmup=3, repeats=50,
                       budget_s=0.0)
    assert entry["repeats"] == 3


def test_a_multi_node_profile_cannot_meet_on_loopback(tmp_path):
    """Third fuzz round: `profile --nnodes 2` with the default 127.0.0.1 waited silently for a second node that could
    never reach it (launch already refused the same)."""
    with pytest.raises(UserError, match="cannot meet at 127.0.0.1"):
        profile(tmp_path / "p.json", nnodes=2, node_rank=0)
