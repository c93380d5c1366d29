"""Context parallelism (cp): the fourth degree of the grid, its cost and search, and the executor's
(autoconf/execute/context_parallel.py).

Executor, fast: the load-balanced chunking, its positions and its inverse; a rank's attention and RoPE equal the full
sequence's on its share. Slow (the session's shared torchrun jobs, CPU + gloo): layouts with cp > 1, under both K/V
exchanges, train to the single-process losses and gradient norms, and a checkpoint written at cp2 x dp2 resumes
without CP.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoconf.execute import context_parallel as cpx
from autoconf.execute.model import Attention
from autoconf.execute.rope import rotate as _rope
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig, Plan, load_plan
from autoconf.spec.presets import PRESETS
import executor_jobs
from executor_jobs import STEPS, Layout, assert_matches_reference
from executor_jobs import close as _close
from plan_helpers import even_plan

LLAMA = ModelSpec(name="test-llama", arch="llama", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2,
                  ffn_hidden_size=176, vocab_size=256, max_seq_len=64)
GPT = ModelSpec(name="test-gpt", arch="gpt", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=4,
                ffn_hidden_size=256, vocab_size=256, max_seq_len=64, tied_embeddings=True)
# "llama2": 2 layers for the layouts without a pipeline or data parallelism (still a block after a block; a layout's
# cost on CPU grows with its layers, each with its K/V exchange).
MODELS = {"llama": LLAMA, "gpt": GPT, "llama2": dataclasses.replace(LLAMA, name="test-llama2", num_layers=2)}


def _cp_plan(cp: int = 2, dp: int = 1, seq: int = 64) -> Plan:
    model = PRESETS["tiny-llama"]
    config = ParallelConfig(tp=1, pp=1, dp=dp, cp=cp, micro_batch_size=1, global_batch_size=4, seq_len=seq,
                            dtype="fp32")
    return Plan(model=model, cluster={"name": "test", "nodes": 1, "gpus_per_node": config.world_size},
                config=config, partition=[[0, model.num_layers]],
                placement={"mesh": np.arange(config.world_size).reshape(config.dims.shape).tolist()})


def test_a_plan_written_before_the_cp_axis_loads_with_cp_1(tmp_path):
    """An old plan (no `cp` in its config, a [pp][dp][tp] mesh) loads, reads cp = 1 and saves a 4-D mesh."""
    plan = even_plan(PRESETS["tiny-llama"], tp=2, pp=2, dp=2)
    data = plan.to_dict()
    del data["config"]["cp"]
    data["placement"]["mesh"] = np.asarray(data["placement"]["mesh"]).reshape(2, 2, 2).tolist()
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = load_plan(tmp_path / "old.json")
    assert old.config.cp == 1 and old.config == plan.config
    assert np.asarray(old.placement["mesh"]).shape == (2, 2, 1, 2)
    assert old.grid().group_of("tp", 5) == [4, 5] and old.grid().group_of("dp", 5) == [5, 7]


def test_cp_plans_validate_and_the_launcher_runs_them(tmp_path, capsys):
    from autoconf.execute.launch import launch

    plan = _cp_plan(cp=2, dp=2)
    plan.validate()
    assert plan.grid().group_of("cp", 0) == [0, 1] and plan.grid().group_of("dp", 0) == [0, 2]
    plan.save(tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json").config.cp == 2
    assert launch(tmp_path / "plan.json", steps=1, dry_run=True) == 0
    assert "--nproc-per-node 4" in capsys.readouterr().out


def test_cp_rules_name_what_would_work():
    model = PRESETS["tiny-llama"]
    base = dict(tp=1, pp=1, dp=1, micro_batch_size=1, global_batch_size=4, dtype="fp32")
    problems = ParallelConfig(cp=3, seq_len=64, **base).problems(model, 3)
    assert problems == ["cp 3 needs seq_len 64 divisible by 2 x cp = 6 (each rank holds one head and one tail "
                        "chunk of the causal sequence; use cp in 1)"]  # (only those that divide the 3 devices)
    problems = ParallelConfig(cp=3, seq_len=64, **base).problems(model)
    assert problems[0].endswith("use cp in 1, 2, 4, 8, 16, 32)")  # (no devices given: every degree that splits)
    assert ParallelConfig(cp=4, seq_len=64, **base).problems(model, 4) == []
    sp = ParallelConfig(cp=4, seq_len=32, sequence_parallel=True, **{**base, "tp": 16})
    assert any("sequence_parallel needs tp 16 to divide the 32 / cp 4 tokens" in p for p in sp.problems(model))


# ---- cost ---------------------------------------------------------------------------------------------------------
from autoconf.cost.compute import model_pieces  # noqa: E402
from autoconf.cost.estimate import PRESETS as FRAMEWORKS, cp_attention_comm, estimate  # noqa: E402
from autoconf.spec.cluster import load_cluster  # noqa: E402

H100 = load_cluster("dgx-h100-80g", nodes=2)
LONG = PRESETS["llama3.1-8b"]
# The "kernel" reading of CP attention (Megatron's presets; the executor where it runs its own attention): the rules
# below. Where the executor hands attention to torch's ring, tests/test_cp_ring.py.
KERNEL = FRAMEWORKS["autoconf"].replace(cp_attention="kernel")


def _long(cp: int, cp_comm: str = "ring", seq: int = 131072, **kw) -> ParallelConfig:
    base = dict(tp=1, pp=1, dp=16 // cp, cp=cp, cp_comm=cp_comm, micro_batch_size=1, global_batch_size=16 // cp,
                seq_len=seq, zero_stage=3, recompute="full", dtype="bf16")
    return ParallelConfig(**{**base, **kw})


def test_a_plan_from_before_the_cp_axis_predicts_what_cp_1_predicts():
    """A plan written before the cp axis (no cp fields, a [pp][dp][tp] mesh) loads as cp 1 and its layout predicts
    to the last bit what the 4-D plan predicts, for the executor and for Megatron-Core; no cp_comm term appears."""
    cases = [(PRESETS["llama3-8b"], load_cluster("dgx-h100-80g", nodes=1), FRAMEWORKS["autoconf"],
              ParallelConfig(tp=2, pp=2, dp=2, micro_batch_size=1, global_batch_size=16, seq_len=8192, zero_stage=1,
                             recompute="selective", sequence_parallel=True, dtype="bf16")),
             (PRESETS["llama3-70b"], load_cluster("dgx-h100-80g", nodes=8), FRAMEWORKS["megatron-core"],
              ParallelConfig(tp=8, pp=4, dp=2, vpp=2, schedule="interleaved-1f1b", micro_batch_size=1,
                             global_batch_size=64, seq_len=8192, recompute="full", dtype="bf16"))]
    for model, cluster, execution, c in cases:
        plan = estimate(model, cluster, c, execution=execution)
        old = plan.to_dict()
        for key in ("cp", "cp_comm"):
            del old["config"][key]
        old["placement"]["mesh"] = np.asarray(plan.placement["mesh"]).reshape(c.pp, c.dp, c.tp).tolist()
        loaded = Plan.from_dict(old)
        assert loaded.config == c
        again = estimate(model, cluster, loaded.config, partition=loaded.partition,
                         mesh=np.asarray(loaded.placement["mesh"]), execution=execution).prediction
        assert again == plan.prediction and "cp_comm" not in again["time_breakdown"]


def test_a_cp_rank_computes_its_tokens_and_one_cp_th_of_the_causal_attention():
    c = _long(4)
    pieces = model_pieces(LONG, H100, c, execution=KERNEL)
    local = model_pieces(LONG, H100, dataclasses.replace(c, seq_len=c.seq_len // 4, cp=1), execution=KERNEL)
    whole = model_pieces(LONG, H100, dataclasses.replace(c, cp=1), execution=KERNEL)
    assert pieces.block_rest == local.block_rest and pieces.head == local.head
    assert pieces.attention_core.forward == pytest.approx(whole.attention_core.forward / 4, rel=1e-12)
    # attention grows with s^2, the rest with s: the rank's attention share is 4x the one of a sequence of s/4
    assert pieces.attention_core.forward == pytest.approx(4 * local.attention_core.forward, rel=1e-9)


def test_memory_per_rank_falls_with_cp_and_ring_holds_less_than_allgather():
    peaks = {}
    for comm in ("ring", "allgather"):
        for cp in (1, 2, 4, 8, 16):
            p = estimate(LONG, H100, _long(cp, comm), detail=False).prediction
            peaks[comm, cp] = p["peak_memory_bytes"]
            activations = p["memory_per_stage"][0]["activations"]
            if cp == 1:
                base = activations
            assert activations == pytest.approx(base / cp, rel=1e-9)  # the sequence / cp
        assert all(peaks[comm, a] > peaks[comm, b] for a, b in ((1, 2), (2, 4), (4, 8), (8, 16)))
    # the K/V buffer: the whole sequence's K/V and their gradients (2 cp blocks) against four blocks of the ring
    from autoconf.cost.memory import cp_buffer_bytes, cp_kv_bytes

    for cp in (4, 8, 16):
        assert peaks["ring", cp] <= peaks["allgather", cp]
        assert cp_buffer_bytes(LONG, _long(cp, "allgather"), KERNEL) == 2 * cp * cp_kv_bytes(LONG, _long(cp))
        assert cp_buffer_bytes(LONG, _long(cp, "ring"), KERNEL) == 4 * cp_kv_bytes(LONG, _long(cp)) > 0


def test_ring_hides_behind_the_attention_where_the_all_gather_cannot():
    """At 128k tokens a K/V block's transfer is far shorter than the attention on the block before: the ring
    exposes only the compute its transfers take while they run (the profile's collective_sm_share of them), the
    all-gather its whole time. Both move the same bytes, so with no attention to hide behind the ring exposes about
    what the all-gather does."""
    group = [0, 1, 2, 3]
    c = _long(4)
    core = model_pieces(LONG, H100, c, execution=KERNEL).attention_core
    ring = cp_attention_comm(LONG, H100, c, group, core, KERNEL)
    gather = cp_attention_comm(LONG, H100, dataclasses.replace(c, cp_comm="allgather"), group, core, KERNEL)
    pairs = np.stack([group, np.roll(group, -1)], axis=1)
    from autoconf.cost.comm import p2p_time
    from autoconf.cost.memory import cp_kv_bytes

    kv = cp_kv_bytes(LONG, c)
    share = H100.collective_sm_share
    assert 0 < share < 1
    assert ring.forward == pytest.approx(3 * share * p2p_time(H100, kv, pairs))
    assert ring.backward_input == pytest.approx(3 * share * p2p_time(H100, 2 * kv, pairs))
    assert ring.forward < gather.forward < gather.backward_input
    assert ring.forward < 0.2 * gather.forward
    bare = cp_attention_comm(LONG, H100, c, group, dataclasses.replace(core, forward=0.0, backward_input=0.0), KERNEL)
    assert bare.forward == pytest.approx(gather.forward, rel=0.05)
    across = cp_attention_comm(LONG, H100, dataclasses.replace(c, cp_comm="allgather"), [0, 8, 1, 9], core, KERNEL)
    assert across.forward > gather.forward  # the link matrix: a group across nodes is slower
    p = estimate(LONG, H100, dataclasses.replace(c, cp_comm="allgather")).prediction
    assert p["time_breakdown"]["cp_comm"] > 0


def test_gradients_are_reduced_over_dp_x_cp():
    """CP ranks hold the same weights: with dp 1 a cp 2 layout still reduces gradients (over its two CP ranks), and
    ZeRO shards over dp x cp."""
    c = _long(2, dp=1, global_batch_size=1, zero_stage=0)
    one_node = load_cluster("dgx-h100-80g", nodes=1, gpus_per_node=2)
    assert estimate(LONG, one_node, c).prediction["time_breakdown"]["dp_comm"] > 0
    sharded = estimate(LONG, one_node, dataclasses.replace(c, zero_stage=3)).prediction["memory_per_stage"][0]
    whole = estimate(LONG, one_node, c).prediction["memory_per_stage"][0]
    assert sharded["optimizer"] == pytest.approx(whole["optimizer"] / 2)


def test_context_beyond_the_model_needs_rope_scaling():
    assert "context of 8,192 tokens" in PRESETS["llama3-8b"].context_problem(131072)
    assert "--seq-len 8192 or less" in PRESETS["llama3-8b"].context_problem(8193)
    assert PRESETS["llama3-8b"].context_problem(8192) is None
    assert LONG.context_problem(1 << 20) is None  # llama3.1: RoPE scaling, 1M tokens plannable
    assert _long(16, seq=1 << 20).problems(LONG, 16) == []


# ---- search -------------------------------------------------------------------------------------------------------
from autoconf.solve.space import CP_MIN_SEQ_LEN, candidates, cp_choices  # noqa: E402


def test_cp_is_searched_for_long_sequences_only():
    assert cp_choices(64, CP_MIN_SEQ_LEN - 2) == [1]
    assert cp_choices(64, 32768) == [1, 2, 4, 8, 16, 32]  # 32768 / 64 = 512 tokens a rank: too short
    assert cp_choices(12, 24576) == [1, 2, 3, 4, 6, 12]
    short = {c.cp for c in candidates(LONG, 16, 8, 16, 8192, "bf16", fixed={"pp": 1, "recompute": "full"})}
    assert short == {1}
    long = list(candidates(LONG, 16, 8, 16, 32768, "bf16", fixed={"pp": 1, "recompute": "full", "zero_stage": 3}))
    assert {c.cp for c in long} == {1, 2, 4, 8, 16}
    assert {c.cp_comm for c in long if c.cp > 1} == {"ring", "allgather"}
    assert all(c.world_size == 16 and c.seq_len % (2 * c.cp) == 0 for c in long)


def test_bounds_never_exceed_the_estimate_with_cp():
    """The search's time and memory bounds read the same CP rules as the estimate: never above it."""
    from test_search import assert_bounds_below_estimate

    configs = candidates(LONG, 16, 8, 16, 32768, "bf16", fixed={"micro_batch_size": 1, "zero_stage": 3})
    assert len(assert_bounds_below_estimate(LONG, H100, (
        c for c in configs if c.cp > 1 and c.pp <= 2 and c.schedule in ("1f1b", "interleaved-1f1b", "zbv")))) > 50


def test_the_planner_splits_a_256k_sequence_that_fits_no_other_way():
    from autoconf.solve.search import search

    one = load_cluster("dgx-h100-80g", nodes=1)
    # Without activation offload, which also fits it (tp 2 on cp 1 is within 0.1% of cp 2's step).
    fixed = {"micro_batch_size": 1, "recompute": "full", "pp": 1, "offload_activations": False}
    result = search(LONG, one, 8, 262144, "bf16", fixed=fixed, top_k=2, refine=False, launchable_only=False)
    best = result.plans[0]
    assert best.config.cp > 1 and best.prediction["fits"]
    assert not estimate(LONG, one, dataclasses.replace(best.config, cp=1, dp=best.config.dp_cp), detail=False
                        ).prediction["fits"]
    assert search(LONG, one, 8, 262144, "bf16", fixed={**fixed, "cp": 8}, top_k=1, refine=False).plans[0].config.cp == 8


def test_tp_x_cp_blocks_stay_within_a_node_unless_the_links_across_nodes_are_fast():
    """The rule (solve/placement.py CROSS_NODE_CP_RATIO; TP innermost then CP, Megatron-Core's tp-cp-ep-dp-pp order):
    on dgx-a100-80g (300 GB/s NVLink, 25 GB/s per GPU across nodes) a TP x CP block stays within a node's 8 GPUs;
    on dgx-h100-80g (450 against 50 GB/s, Llama 3's CP16-across-nodes fabric) and on one node it may cross. A
    pinned --fix cp that no TP fits names what would, in one line; without the rule the space is as before."""
    from autoconf.errors import UserError
    from autoconf.solve.placement import tp_cp_domain
    from autoconf.solve.search import search

    a100, h100 = (load_cluster(name, nodes=2) for name in ("dgx-a100-80g", "dgx-h100-80g"))
    domain = tp_cp_domain(a100)
    assert domain[0] == 8 and "25 GB/s" in domain[1]
    assert tp_cp_domain(h100)[0] is None and tp_cp_domain(load_cluster("dgx-a100-80g", nodes=1))[0] is None
    fixed = {"pp": 1, "recompute": "full", "zero_stage": 3}
    free = list(candidates(LONG, 16, 8, 16, 32768, "bf16", fixed=fixed))
    kept = list(candidates(LONG, 16, 8, 16, 32768, "bf16", fixed=fixed, tp_cp_domain=domain))
    assert kept == [c for c in free if c.tp * c.cp <= 8] and len(kept) < len(free)
    assert {c.cp for c in kept} == {1, 2, 4, 8}
    with pytest.raises(UserError) as err:
        search(LONG, a100, 16, 32768, "bf16", fixed={"tp": 8, "cp": 2}, top_k=1, refine=False)
    line = str(err.value)
    assert "--fix cp=2" in line and "tp 8 with cp <= 1, or tp <= 4 with cp 2" in line and "\n" not in line
    assert any(c.tp * c.cp == 16 for c in candidates(LONG, 16, 8, 16, 32768, "bf16", fixed={"tp": 8, **fixed},
                                                      tp_cp_domain=tp_cp_domain(h100)))


# ---- executor: chunks, positions, attention -----------------------------------------------------------------------
def _causal_mask(seq_len: int, cp: int, rank: int) -> torch.Tensor:
    """Boolean [seq/cp, seq]: which sequence positions CP rank `rank`'s tokens see causally (what the all-gather's
    attention computes chunk by chunk)."""
    from autoconf.execute.window_attention import window_mask

    return window_mask(cpx.positions(seq_len, cp, rank), torch.arange(seq_len), None)


@pytest.mark.parametrize("cp", [1, 2, 4, 8])
def test_shards_partition_the_sequence_and_unshard_inverts(cp):
    """Each rank holds chunks r and 2cp-1-r with their real positions; the shares cover every position once;
    `unshard` and the gather order both restore the sequence; every rank has the same causal work."""
    seq = 32
    x = torch.randint(0, 1000, (3, seq))
    shares = [cpx.shard(x, cp, r) for r in range(cp)]
    assert torch.equal(cpx.unshard(shares), x)
    assert torch.equal(torch.cat(shares, dim=1)[:, cpx.gather_order(seq, cp)], x)
    n = seq // (2 * cp)
    everyone = []
    for r, share in enumerate(shares):
        pos = cpx.positions(seq, cp, r)
        assert share.shape == (3, seq // cp)
        assert torch.equal(share, x[:, pos])  # the tokens a rank holds are those at its positions
        assert pos[:n].tolist() == list(range(r * n, (r + 1) * n))
        assert pos[n:].tolist() == list(range((2 * cp - 1 - r) * n, (2 * cp - r) * n))
        everyone += pos.tolist()
    assert sorted(everyone) == list(range(seq))
    work = {int(_causal_mask(seq, cp, r).sum()) for r in range(cp)}
    assert work == {seq * (seq + 1) // 2 // cp}


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
@pytest.mark.parametrize("window", [0, 1, 3, 4, 7, 9, 40])
def test_the_cp_ops_fused_pieces_cover_each_blocks_mask_exactly_once(cp, window):
    """The per-op policy's CP op runs each K/V block as fused-kernel pieces (execute/cp_attention.py `_pieces`): over
    every rank and block, of both algorithms, the pieces' pairs (their rows x columns: all, causal, under their
    bias, or a band of the window) are exactly the block's `window_mask` pairs, none twice. Chunks of 8 tokens:
    windows of at most 4 run the band, wider ones a bias or (40) the causal chunk."""
    from autoconf.execute.cp_attention import _pieces, _skipped
    from autoconf.execute.window_attention import window_mask

    seq = 16 * cp
    for rank in range(cp):
        mine = cpx.positions(seq, cp, rank)
        for owner in [None, *range(cp)]:
            if _skipped(owner, seq, cp, rank, window):
                continue
            keys = torch.arange(seq) if owner is None else cpx.positions(seq, cp, owner)
            want = window_mask(mine, keys, window or None)
            got = torch.zeros(want.shape, dtype=torch.int64)
            for piece in _pieces(owner, seq, cp, rank, window, None):
                block = got[piece.rows, piece.cols]
                pairs = torch.ones(block.shape, dtype=torch.bool) if piece.seen is None else piece.seen
                if piece.band:  # the same positions for rows and columns, each query the window's keys
                    behind = torch.arange(block.shape[0])[:, None] - torch.arange(block.shape[1])[None, :]
                    pairs = (behind >= 0) & (behind < piece.band)
                got[piece.rows, piece.cols] += (pairs.tril() if piece.causal else pairs).long()
            assert torch.equal(got, want.long()), (rank, owner)


def test_a_sequence_no_chunking_splits_is_one_clear_error():
    with pytest.raises(ValueError, match="divisible by 2 x cp = 8"):
        cpx.shard(torch.zeros(1, 36), 4, 0)


class _Gathered:
    """What "allgather" hands rank r's attention math: the whole sequence's K and V, and r's mask."""

    def __init__(self, k, v, seq, cp, rank):
        self.k, self.v, self.local = k, v, cpx.shard(k, cp, rank, dim=2)
        self.positions, self.mask = cpx.positions(seq, cp, rank), _causal_mask(seq, cp, rank)
        self.seq_len = seq

    def attention(self, q, k, v, p, attend, as_op=False, window=None, sinks=None):
        assert torch.equal(k, self.local) and window is None and sinks is None  # the layer hands over its share
        return attend(q, self.k, self.v, self.mask, p)


@pytest.mark.parametrize("attention", ["flash", "standard"])
@pytest.mark.parametrize("cp", [2, 4])
def test_a_rank_attends_like_the_full_sequence_on_its_share(attention, cp):
    """With every rank's K/V and the mask of real positions, a rank's attention output (grouped K/V) and its RoPE
    are the full sequence's at its positions."""
    seq, b, d = 32, 2, LLAMA.head_dim
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(b, LLAMA.num_heads, seq, d, generator=gen)
    k, v = (torch.randn(b, LLAMA.num_kv_heads, seq, d, generator=gen) for _ in range(2))
    layer = Attention(LLAMA, attention).eval()
    full = layer.core(q, k, v)
    rotated = _rope(q, LLAMA.rope_theta, None)
    for r in range(cp):
        layer.context = _Gathered(k, v, seq, cp, r)
        share = layer.core(cpx.shard(q, cp, r, dim=2), cpx.shard(k, cp, r, dim=2), cpx.shard(v, cp, r, dim=2))
        torch.testing.assert_close(share, cpx.shard(full, cp, r, dim=2), rtol=1e-5, atol=1e-6)
        positions = layer.context.positions
        torch.testing.assert_close(_rope(cpx.shard(q, cp, r, dim=2), LLAMA.rope_theta, positions, length=seq),
                                   cpx.shard(rotated, cp, r, dim=2))
    # the reference is really causal: the first token's output is its own value
    torch.testing.assert_close(full[:, :, 0], v.repeat_interleave(2, dim=1)[:, :, 0])
    assert not torch.allclose(F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)),
                              full)


# ---- layouts under torchrun ---------------------------------------------------------------------------------------
def make_plan(arch: str = "llama", cp_comm: str = "ring", **layout):
    """32 tokens (divisible by 2 x cp for cp up to 4), 4 sequences per step, fp32."""
    plan = even_plan(MODELS[arch], global_batch=4, seq=32, **layout)
    plan.config = dataclasses.replace(plan.config, cp_comm=cp_comm)
    plan.validate()
    return plan


CHECKPOINT_WRITER = "llama-cp2-dp2-zero3-ring"  # writes a checkpoint at step 2; the *-resumed runs resume it
RESUME = {"checkpoint_dir": "resumed", "copy_checkpoint": "written/step-00000002"}
# name -> Layout(world, plan, options), trained in the session's shared jobs (tests/executor_jobs.py: the 4-rank job
# runs first, so the checkpoint its writer leaves is there for the smaller jobs to resume). Layouts without pipeline
# or data parallelism train in micro-batches of 2: on CPU their cost is per micro-batch (each block's K/V exchange
# and TP collectives), and the global batch, so the reference's losses, is the same.
LAYOUTS: dict[str, Layout] = {
    "llama2-cp4-ring": Layout(4, make_plan("llama2", cp=4, micro_batch=2)),
    "llama2-cp2-tp2-sp-allgather": Layout(4, make_plan("llama2", cp=2, tp=2, sp=True, cp_comm="allgather",
                                                       micro_batch=2)),
    "llama-cp2-pp2-1f1b-ring": Layout(4, make_plan(cp=2, pp=2, schedule="1f1b")),
    "llama-cp2-pp2-interleaved-allgather": Layout(4, make_plan(cp=2, pp=2, vpp=2, schedule="interleaved-1f1b",
                                                               cp_comm="allgather")),
    CHECKPOINT_WRITER: Layout(4, make_plan(cp=2, dp=2, zero=3), {"checkpoint_dir": "written", "checkpoint_every": 2}),
    "llama2-cp2-allgather": Layout(2, make_plan("llama2", cp=2, cp_comm="allgather", micro_batch=2)),
    # learned positions, tied embedding, the attention core (and its K/V exchange) recomputed in the backward
    "gpt-cp2-selective-ring": Layout(2, make_plan("gpt", cp=2, recompute="selective", micro_batch=2)),
    "llama-tp2-resumed": Layout(2, make_plan(tp=2, micro_batch=2), {**RESUME, "checkpoint_dir": "tp2-resumed"}),
    "llama": Layout(1, make_plan()),
    "llama2": Layout(1, make_plan("llama2")),
    "gpt": Layout(1, make_plan("gpt")),
    "llama-resumed": Layout(1, make_plan(), RESUME),
}
executor_jobs.register("cp", LAYOUTS)


def results(tmp_path_factory) -> dict[str, dict]:
    """name -> {"records", "seconds"} of this module's layouts (tests/executor_jobs.py runs them once)."""
    return executor_jobs.results("cp", tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, lay in LAYOUTS.items() if lay.world > 1 and not n.endswith("-resumed")])
def test_context_parallel_layout_matches_single_process(name, tmp_path_factory):
    """Every step's loss and global gradient norm equal the single-process run's within 1e-4 relative (fp32, 3
    steps), and the reference really trains (its losses change)."""
    reference = assert_matches_reference(results(tmp_path_factory), name)
    assert len({round(r["loss"], 6) for r in reference}) == STEPS


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-resumed", "llama-tp2-resumed"])
def test_checkpoint_written_with_context_parallelism_resumes_without_it(name, tmp_path_factory):
    """The step-2 checkpoint of cp2 x dp2 (ZeRO-3: shards over the 4 ranks of dp x cp) resumes in one process and at
    tp2 (DCP reshards): step 3 alone runs, with the uninterrupted run's loss and gradient norm."""
    out = results(tmp_path_factory)
    step3 = out["llama"]["records"][2]
    assert out[CHECKPOINT_WRITER]["records"][2]["loss"] == pytest.approx(step3["loss"], rel=1e-4)
    records = out[name]["records"]
    assert [r["step"] for r in records] == [3]
    assert _close(records[0]["loss"], step3["loss"]) and _close(records[0]["grad_norm"], step3["grad_norm"])
