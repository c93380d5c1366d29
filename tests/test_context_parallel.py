"""Context parallelism (cp): the fourth degree of the grid, and the executor's (autoconf/execute/context_parallel.py).

Fast: the axis and old plans, the rules on cp; the load-balanced chunking, its positions and its inverse; the sharded
attention and RoPE equal the full sequence's on each rank's share; launch accepts a cp plan. Slow (torchrun, CPU + gloo): layouts with cp > 1 train to the single-process
losses and gradient norms, and a checkpoint written at cp2 resumes in layouts without CP.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoconf.execute import context_parallel as cpx
from autoconf.execute.model import Attention, _rope
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig, Plan, load_plan
from autoconf.spec.presets import PRESETS
from plan_helpers import even_plan
from test_execute import _close, _torchrun

STEPS = 3
LLAMA = ModelSpec(name="test-llama", arch="llama", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2,
                  ffn_hidden_size=176, vocab_size=256, max_seq_len=64)
GPT = ModelSpec(name="test-gpt", arch="gpt", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=4,
                ffn_hidden_size=256, vocab_size=256, max_seq_len=64, tied_embeddings=True)
MODELS = {"llama": LLAMA, "gpt": GPT}


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
                        "chunk of the causal sequence; use cp in 1, 2, 4, 8, 16, 32)"]
    assert ParallelConfig(cp=4, seq_len=64, **base).problems(model, 4) == []
    sp = ParallelConfig(cp=4, seq_len=32, sequence_parallel=True, **{**base, "tp": 16})
    assert any("sequence_parallel needs tp 16 to divide the 32 / cp 4 tokens" in p for p in sp.problems(model))


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
    work = {int(cpx.causal_mask(seq, cp, r).sum()) for r in range(cp)}
    assert work == {seq * (seq + 1) // 2 // cp}


def test_a_sequence_no_chunking_splits_is_one_clear_error():
    with pytest.raises(ValueError, match="divisible by 2 x cp = 8"):
        cpx.shard(torch.zeros(1, 36), 4, 0)


class _Gathered:
    """What "allgather" hands rank r's attention math: the whole sequence's K and V, and r's mask."""

    def __init__(self, k, v, seq, cp, rank):
        self.k, self.v, self.local = k, v, cpx.shard(k, cp, rank, dim=2)
        self.positions, self.mask = cpx.positions(seq, cp, rank), cpx.causal_mask(seq, cp, rank)

    def attention(self, q, k, v, p, attend):
        assert torch.equal(k, self.local)  # the layer hands over its own share
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
    rotated = _rope(q, LLAMA.rope_theta, torch.arange(seq))
    for r in range(cp):
        layer.context = _Gathered(k, v, seq, cp, r)
        share = layer.core(cpx.shard(q, cp, r, dim=2), cpx.shard(k, cp, r, dim=2), cpx.shard(v, cp, r, dim=2))
        torch.testing.assert_close(share, cpx.shard(full, cp, r, dim=2), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(_rope(cpx.shard(q, cp, r, dim=2), LLAMA.rope_theta, layer.context.positions),
                                   cpx.shard(rotated, cp, r, dim=2))
    # the reference is really causal: the first token's output is its own value
    torch.testing.assert_close(full[:, :, 0], v.repeat_interleave(2, dim=1)[:, :, 0])
    assert not torch.allclose(F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)),
                              full)


# ---- layouts under torchrun ---------------------------------------------------------------------------------------
def make_plan(arch: str = "llama", **layout):
    """4 layers, 32 tokens (divisible by 2 x cp for cp up to 4), 4 sequences per step, fp32."""
    return even_plan(MODELS[arch], global_batch=4, seq=32, **layout)


CHECKPOINT_WRITER = "llama-cp2-dp2-zero3"  # writes a checkpoint every step; step 2 is resumed by the *-resumed runs
# name -> plan, one torchrun job per world size (the 4-rank job first: it writes the checkpoint the others resume).
LAYOUTS = {
    4: {"llama-cp4": make_plan(cp=4),
        "llama-cp2-tp2-sp": make_plan(cp=2, tp=2, sp=True),
        "llama-cp2-pp2-1f1b": make_plan(cp=2, pp=2, schedule="1f1b"),
        "llama-cp2-pp2-interleaved": make_plan(cp=2, pp=2, vpp=2, schedule="interleaved-1f1b"),
        CHECKPOINT_WRITER: make_plan(cp=2, dp=2, zero=3)},
    2: {"llama-cp2": make_plan(cp=2),
        # learned positions, tied embedding, the attention core (and its K/V exchange) recomputed in the backward
        "gpt-cp2-selective": make_plan("gpt", cp=2, recompute="selective"),
        "llama-tp2-resumed": make_plan(tp=2)},
    1: {"llama": make_plan(), "gpt": make_plan("gpt"), "llama-resumed": make_plan()},
}
_RESULTS: dict[str, dict] = {}


def results(tmp_path_factory) -> dict[str, dict]:
    """Runs the three jobs once per session; name -> {"records", "seconds"}."""
    if _RESULTS:
        return _RESULTS
    tmp = tmp_path_factory.mktemp("cp")
    written = tmp / "written"
    for world in (4, 2, 1):
        names = list(LAYOUTS[world])
        options = {}
        for i, name in enumerate(names):
            if name == CHECKPOINT_WRITER:
                options[str(i)] = {"checkpoint_dir": str(written), "checkpoint_every": 1}
            elif name.endswith("-resumed"):
                shutil.copytree(written / "step-00000002", tmp / name / "step-00000002")
                options[str(i)] = {"checkpoint_dir": str(tmp / name)}
        job = {"plans": [LAYOUTS[world][n].to_dict() for n in names], "steps": STEPS, "seed": 0, "options": options}
        (tmp / f"job{world}.json").write_text(json.dumps(job))
        proc = _torchrun(world, ["scripts/executor_layouts.py", str(tmp / f"job{world}.json"),
                                 str(tmp / f"out{world}.json")])
        assert proc.returncode == 0, f"world {world} job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        _RESULTS.update(zip(names, json.loads((tmp / f"out{world}.json").read_text())))
    return _RESULTS


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for w in (4, 2) for n in LAYOUTS[w] if not n.endswith("-resumed")])
def test_context_parallel_layout_matches_single_process(name, tmp_path_factory):
    """Every step's loss and global gradient norm equal the single-process run's within 1e-4 relative (fp32, 3
    steps), and the reference really trains (its losses change)."""
    out = results(tmp_path_factory)
    reference = out[name.split("-")[0]]["records"]
    assert len({round(r["loss"], 6) for r in reference}) == STEPS
    got = out[name]["records"]
    assert len(got) == STEPS
    for ref, rec in zip(reference, got):
        assert _close(rec["loss"], ref["loss"]), (name, rec["step"], rec["loss"], ref["loss"])
        assert _close(rec["grad_norm"], ref["grad_norm"]), (name, rec["step"], rec["grad_norm"], ref["grad_norm"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-resumed", "llama-tp2-resumed"])
def test_checkpoint_written_with_context_parallelism_resumes_without_it(name, tmp_path_factory):
    """The step-2 checkpoint of cp2 x dp2 (ZeRO-3: shards over the 4 ranks of dp x cp) resumes in one process and at
    tp2: step 3 alone runs, with the uninterrupted run's loss and gradient norm."""
    out = results(tmp_path_factory)
    step3 = out["llama"]["records"][2]
    assert out[CHECKPOINT_WRITER]["records"][2]["loss"] == pytest.approx(step3["loss"], rel=1e-4)
    records = out[name]["records"]
    assert [r["step"] for r in records] == [3]
    assert _close(records[0]["loss"], step3["loss"]) and _close(records[0]["grad_norm"], step3["grad_norm"])
