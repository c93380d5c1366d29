"""Executor tests on CPU with gloo: every layout trains to the losses of a single-process run.

The layouts run in the session's three shared torchrun jobs (1, 2 and 4 processes, tests/executor_jobs.py): start-up
dominates, so each job trains every registered layout in one process group (scripts/executor_layouts.py).
Each layout trains 3 steps in fp32 with dropout 0 from the seeded initialisation; its per-step loss and global
gradient norm must equal the single-process run's within 1e-4 relative. (Adam is nearly invariant to a gradient's
scale, so the loss alone would miss a wrongly scaled gradient; the global norm catches it.)
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

import executor_jobs
from autoconf.errors import UserError
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import Plan
from executor_jobs import STEPS, Layout, assert_matches_reference, assert_same_records
from executor_jobs import close as _close
from plan_helpers import PARAM_COUNT, assert_ranks_hold_the_estimated_params, even_plan

SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zb-h1", "zbv", "dualpipev")
VPP = {"interleaved-1f1b": 2, "looped-bfs": 2, "zbv": 2, "dualpipev": 2}

GPT = ModelSpec(name="test-gpt", arch="gpt", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=4,
                ffn_hidden_size=256, vocab_size=256, max_seq_len=64, tied_embeddings=True)
LLAMA = ModelSpec(name="test-llama", arch="llama", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2,
                  ffn_hidden_size=176, vocab_size=256, max_seq_len=64)
# 8 layers where the layout needs 8 pipeline chunks (pp4 with two chunks per rank, pp2 with five); 2 ("gpt2",
# "llama2") for the tensor-parallel layouts that need no more (no pipeline: still a block after a block; pp2 with one
# chunk per rank), 4 elsewhere, since a layout's cost on CPU grows with its layers (tensor-parallel ones most).
# "gpt2" is tests/test_offload.py's GPT2 too (one reference run for both).
MODELS = {"gpt": GPT, "llama": LLAMA, "gpt8": dataclasses.replace(GPT, name="test-gpt8", num_layers=8),
          "llama8": dataclasses.replace(LLAMA, name="test-llama8", num_layers=8),
          "gpt2": dataclasses.replace(GPT, name="test-gpt2", num_layers=2),
          "llama2": dataclasses.replace(LLAMA, name="test-llama2", num_layers=2)}


def make_plan(arch: str = "gpt", **layout) -> Plan:
    """A plan of the test GPT or Llama built directly (tests/plans.py `even_plan`)."""
    return even_plan(MODELS[arch], **layout)


def end_chunk_plan(arch: str, partition: list[list[int]], **layout) -> Plan:
    """`make_plan`'s layout with `partition` (end stages that hold only the embedding or only the head)."""
    even = make_plan(arch, **{**layout, "vpp": 1, "schedule": "1f1b"})
    config = dataclasses.replace(even.config, vpp=layout.get("vpp", 1), schedule=layout.get("schedule", "1f1b"))
    plan = Plan(model=even.model, cluster=even.cluster, config=config, partition=partition, placement=even.placement)
    plan.validate()
    return plan


def offload_plan(arch: str, **changes) -> Plan:
    """`make_plan(arch, dp=2, zero=3)` with offload levers switched on (spec/plan.py OFFLOADS)."""
    plan = make_plan(arch, dp=2, zero=3)
    plan.config = dataclasses.replace(plan.config, **changes)
    plan.validate()
    return plan


def seq_chunk_plan(arch: str, chunks: int, split: list[int] | None = None, grad_reduce: str = "step",
                   offload_activations: bool = False, **layout) -> Plan:
    """A pp2 seq1f1b plan whose sequences flow in `chunks` chunks (at the boundaries `split`, else evenly)."""
    plan = make_plan(arch, pp=2, schedule="seq1f1b", **layout)
    plan.config = dataclasses.replace(plan.config, seq_chunks=chunks, grad_reduce=grad_reduce,
                                      seq_split="even" if split is None else "work",
                                      offload_activations=offload_activations)
    plan.sequence_split = split
    plan.validate()
    return plan


def reordered_plan() -> Plan:
    """pp2 x dp2 (zbv, ZeRO-1) whose placement puts pipeline rank 0 on devices 1 and 3 (the order torch's sorted
    process groups would otherwise contradict)."""
    plan = make_plan(pp=2, dp=2, schedule="zbv", vpp=2, zero=1)
    plan.placement = {"mesh": [[[[1]], [[3]]], [[[0]], [[2]]]]}
    plan.validate()
    return plan


GRAD_SYNC = {"probe": "tests/grad_sync_probe.py"}
# name -> Layout(world, plan[, options]); the name's first word is the reference run's (world 1). One shared torchrun
# job per world size trains them (tests/executor_jobs.py). Tensor-parallel layouts train in micro-batches of 2 (still
# 2 or more per rank): on CPU their cost is per micro-batch (each block's collectives), and the global batch, so the
# reference's losses, is the same.
LAYOUTS: dict[str, Layout] = {
    **{arch: Layout(1, make_plan(arch)) for arch in MODELS},
    "gpt2-tp2": Layout(2, make_plan("gpt2", tp=2, micro_batch=2), PARAM_COUNT),
    **{f"gpt-pp2-{s}": Layout(2, make_plan(pp=2, schedule=s, vpp=VPP.get(s, 1))) for s in SCHEDULES},
    **{f"gpt-dp2-zero{z}": Layout(2, make_plan(dp=2, zero=z)) for z in range(4)},
    "llama2-tp2-selective-standard": Layout(2, make_plan("llama2", tp=2, recompute="selective", attention="standard",
                                                         micro_batch=2)),
    "llama-pp2-1f1b-full": Layout(2, make_plan("llama", pp=2, schedule="1f1b", recompute="full")),
    # Recompute per stage: 3 of the first stage's 4 layers, 1 of the last's.
    "llama8-pp2-1f1b-full-per-stage": Layout(2, make_plan("llama8", pp=2, schedule="1f1b", recompute="full",
                                                          recompute_layers=[3, 1])),
    "llama-dp2-zero3": Layout(2, make_plan("llama", dp=2, zero=3)),
    # Offload: the blocks' saved activations to host memory; FSDP2's CPUOffloadPolicy (ZeRO-3, CPU optimizer).
    "llama-dp2-zero3-offload-activations": Layout(2, offload_plan("llama", offload_activations=True)),
    "gpt-dp2-zero3-offload-optimizer": Layout(2, offload_plan("gpt", offload_optimizer=True)),
    # pp * vpp = layers + 2: the first chunk holds only the embedding, the last only the head.
    "llama8-pp2-interleaved-endchunks": Layout(2, end_chunk_plan(
        "llama8", [[0, 0]] + [[i, i + 1] for i in range(8)] + [[8, 8]], pp=2, schedule="interleaved-1f1b", vpp=5)),
    "gpt-pp2-1f1b-embedding-stage": Layout(2, end_chunk_plan("gpt", [[0, 0], [0, 4]], pp=2, schedule="1f1b")),
    "llama-pp2-1f1b-head-stage": Layout(2, end_chunk_plan("llama", [[0, 4], [4, 4]], pp=2, schedule="1f1b")),
    # torchtitan's per-op selective policy (execute/checkpoint_policy.py): with TP + SP (the reduce-scatters saved,
    # the all-gathers recomputed; 1 of the 2 blocks, as its dispatch mode is slow on DTensors on CPU), on the first
    # layers of each pipeline stage, and under ZeRO-3.
    "llama2-tp2-sp-selective-op": Layout(2, make_plan("llama2", tp=2, sp=True, recompute="selective",
                                                      selective_recompute="alternate_matmuls", recompute_layers=[1],
                                                      micro_batch=2)),
    "gpt8-pp2-1f1b-selective-op-per-stage": Layout(2, make_plan("gpt8", pp=2, schedule="1f1b", recompute="selective",
                                                                selective_recompute="alternate_matmuls",
                                                                recompute_layers=[3, 1])),
    "llama-dp2-zero3-selective-op": Layout(2, make_plan("llama", dp=2, zero=3, recompute="selective",
                                                        selective_recompute="alternate_matmuls")),
    # Sequence-level pipelining (execute/seq_chunks.py): each sequence in 2 chunks; in 4, two rows per micro-batch,
    # learned positions and the tied embedding.
    "llama-pp2-seq1f1b-k2": Layout(2, seq_chunk_plan("llama", 2)),
    "gpt-pp2-seq1f1b-k4-mb2": Layout(2, seq_chunk_plan("gpt", 4, micro_batch=2)),
    # ... under recompute (a unit's backward runs its forward again, seeing the same earlier chunks): full, on an
    # uneven split (chunks of 11, 9, 7, 5 tokens), and the per-op policy on the first layers of each stage.
    "gpt-pp2-seq1f1b-k4-uneven-full": Layout(2, seq_chunk_plan("gpt", 4, [0, 11, 20, 27, 32], recompute="full",
                                                               micro_batch=2)),
    "llama8-pp2-seq1f1b-k4-selective-op-per-stage": Layout(2, seq_chunk_plan(
        "llama8", 4, recompute="selective", selective_recompute="alternate_matmuls", recompute_layers=[3, 1])),
    "llama-pp2-seq1f1b-k2-offload-activations": Layout(2, seq_chunk_plan("llama", 2, offload_activations=True)),
    "gpt2-tp4": Layout(4, make_plan("gpt2", tp=4, micro_batch=2)),
    # gpipe and 1f1b at pp4 (a stage between two others): tests/test_reliability.py's gpt/pp4 and llama/pp4 (the same
    # 4-rank job; their steps after a resume equal the uninterrupted run's).
    **{f"gpt8-pp4-{s}": Layout(4, make_plan("gpt8", pp=4, schedule=s, vpp=VPP.get(s, 1)))
       for s in SCHEDULES if s not in ("gpipe", "1f1b")},
    **{f"gpt-dp4-zero{z}": Layout(4, make_plan(dp=4, zero=z)) for z in range(4)},
    "gpt-pp2-dp2-1f1b-zero1": Layout(4, make_plan(pp=2, dp=2, schedule="1f1b", zero=1)),
    # seq1f1b with data parallelism (ZeRO-1 with the tied embedding; ZeRO-3 reducing every micro-batch, the
    # reducing stage over the chunk stage, with full recompute) and with TP + SP on an uneven split (chunks of 12,
    # 8, 6, 6 tokens).
    "gpt-pp2-dp2-seq1f1b-k4-zero1-mb2": Layout(4, seq_chunk_plan("gpt", 4, dp=2, zero=1, micro_batch=2)),
    # ZeRO-0's bucketed all-reduce waits for every chunk's backward (it reduced after the first micro-batch's worth).
    "llama-pp2-dp2-seq1f1b-k2-zero0": Layout(4, seq_chunk_plan("llama", 2, dp=2, zero=0)),
    "llama-pp2-dp2-seq1f1b-k2-zero3-microbatch-full": Layout(4, seq_chunk_plan(
        "llama", 2, dp=2, zero=3, grad_reduce="microbatch", recompute="full")),
    "gpt-tp2-pp2-seq1f1b-k4-sp-uneven": Layout(4, seq_chunk_plan("gpt", 4, [0, 12, 20, 26, 32], tp=2, sp=True,
                                                                 micro_batch=2)),
    "gpt-pp2-dp2-zbv-zero1-reordered": Layout(4, reordered_plan()),
    # ZeRO-0 reduces in the backward's hooks: pipelined (tied embedding across pipeline ranks, split backward
    # with the V placement, two chunks per rank) and with TP shards (vocabulary-parallel tied embedding, SP). The
    # probe records when the 1f1b and the tp2 layouts' all-reduces are issued.
    "gpt-pp2-dp2-1f1b-zero0": Layout(4, make_plan(pp=2, dp=2, schedule="1f1b", zero=0), GRAD_SYNC),
    **{f"gpt-pp2-dp2-{s}-zero0": Layout(4, make_plan(pp=2, dp=2, schedule=s, vpp=VPP.get(s, 1), zero=0))
       for s in ("zbv", "interleaved-1f1b")},
    "gpt2-tp2-dp2-zero0": Layout(4, make_plan("gpt2", tp=2, dp=2, zero=0), GRAD_SYNC),
    "llama2-tp2-dp2-sp-zero0": Layout(4, make_plan("llama2", tp=2, dp=2, sp=True, zero=0, micro_batch=2)),
    "gpt-tp2-pp2-interleaved": Layout(4, make_plan(tp=2, pp=2, schedule="interleaved-1f1b", vpp=2, micro_batch=2),
                                      PARAM_COUNT),
    "gpt2-tp2-dp2-sp-zero2": Layout(4, make_plan("gpt2", tp=2, dp=2, sp=True, zero=2, micro_batch=2)),
    "llama2-tp2-dp2-sp-zero3": Layout(4, make_plan("llama2", tp=2, dp=2, sp=True, zero=3, micro_batch=2)),
    "llama-pp2-dp2-zbv-zero2-full": Layout(4, make_plan("llama", pp=2, dp=2, schedule="zbv", vpp=2, zero=2,
                                                        recompute="full")),
    "llama-pp2-dp2-looped-bfs-zero3": Layout(4, make_plan("llama", pp=2, dp=2, schedule="looped-bfs", vpp=2, zero=3)),
    "llama2-tp2-pp2-sp-zb-h1-selective": Layout(4, make_plan("llama2", tp=2, pp=2, schedule="zb-h1", sp=True,
                                                             recompute="selective", micro_batch=2)),
}
# Checkpoint and resume in the same jobs: pp2 x dp2 (zbv, ZeRO-2, two chunks per rank) stops after 2 steps with a
# checkpoint every step; tp2 x dp2 (SP, ZeRO-3) resumes a copy of its step 2. The test then resumes it via `launch`.
RESUMES: dict[str, Layout] = {
    "llama-stop-after-2": Layout(4, LAYOUTS["llama-pp2-dp2-zbv-zero2-full"].plan,
                                 {"checkpoint_dir": "ckpt", "checkpoint_every": 1, "stop_after": 2}),
    "llama-resumed-tp2-dp2-sp-zero3": Layout(4, make_plan("llama", tp=2, dp=2, sp=True, zero=3, micro_batch=2),
                                             {"checkpoint_dir": "other", "copy_checkpoint": "ckpt/step-00000002"}),
}
executor_jobs.register("execute", {**LAYOUTS, **RESUMES})


def results(tmp_path_factory) -> dict[str, dict]:
    """name -> {"records", "seconds"} of this module's layouts (tests/executor_jobs.py runs them once)."""
    return executor_jobs.results("execute", tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, layout in LAYOUTS.items() if layout.world > 1])
def test_layout_matches_single_process(name, tmp_path_factory):
    """Every step's loss and global gradient norm equal the single-process run's within 1e-4 relative."""
    assert_matches_reference(results(tmp_path_factory), name)


@pytest.mark.slow
def test_single_process_losses_move(tmp_path_factory):
    """The reference run really trains (losses change step to step), so equal losses are a real check."""
    for name in MODELS:
        losses = [r["loss"] for r in results(tmp_path_factory)[name]["records"]]
        assert len(set(round(x, 6) for x in losses)) == STEPS


@pytest.mark.slow
def test_placement_that_reorders_the_pipeline_trains_the_same(tmp_path_factory):
    """A plan whose placement puts pipeline rank 0 on devices 1 and 3 trains to the single-process losses and
    gradient norms, as the grid-order placement does: grid position i runs as rank i."""
    plan = LAYOUTS["gpt-pp2-dp2-zbv-zero1-reordered"].plan
    assert plan.device_of() != sorted(plan.device_of())
    out = results(tmp_path_factory)
    assert_same_records(out["gpt"]["records"], out["gpt-pp2-dp2-zbv-zero1-reordered"]["records"], "reordered")
    assert_same_records(out["gpt"]["records"], out["gpt-pp2-dp2-1f1b-zero1"]["records"], "grid order")


@pytest.mark.slow
def test_checkpoint_resume_gives_same_next_losses(tmp_path_factory, capfd):
    """pp2 x dp2 (zbv, ZeRO-2, two chunks per rank): stop after 2 steps with a checkpoint, resume through `launch`
    under pp2 alone (the same stages on 2 ranks, whose start is far cheaper on CPU than 4; DCP reshards the ZeRO-2
    state): step 3 equals the uninterrupted run; the metrics file ends with a summary; an incomplete checkpoint is
    skipped; and the checkpoint also resumes into tp2 x dp2 with sequence parallelism, ZeRO-3, with the same step-3
    loss. (A resume through `launch` under the writer's own layout: tests/test_reliability.py's killed worker.)"""
    from autoconf.execute.launch import launch

    out = results(tmp_path_factory)
    uninterrupted = out["llama-pp2-dp2-zbv-zero2-full"]["records"][2]
    assert [r["step"] for r in out["llama-stop-after-2"]["records"]] == [1, 2]
    other = out["llama-resumed-tp2-dp2-sp-zero3"]["records"]
    assert [r["step"] for r in other] == [3]
    assert _close(other[0]["loss"], uninterrupted["loss"]) and _close(other[0]["grad_norm"], uninterrupted["grad_norm"])

    folder = executor_jobs.checkpoints("execute", tmp_path_factory)
    ckpt = folder / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-00000001", "step-00000002"]
    (ckpt / "step-00000009").mkdir()  # newer but incomplete: no marker
    plan_path = folder / "plan.json"
    make_plan("llama", pp=2, schedule="zbv", vpp=2, recompute="full").save(plan_path)
    metrics = folder / "metrics.jsonl"
    env_backup = dict(os.environ)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        rc = launch(plan_path, steps=STEPS, metrics=str(metrics), checkpoint_dir=str(ckpt))
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    printed, err = capfd.readouterr()
    assert rc == 0, err[-4000:]
    assert "skipping incomplete checkpoint" in printed
    assert f"resumed from {ckpt / 'step-00000002'} at step 2" in printed
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [line["step"] for line in lines[:-1]] == [3]
    assert _close(lines[0]["loss"], uninterrupted["loss"])
    assert _close(lines[0]["grad_norm"], uninterrupted["grad_norm"])
    summary = lines[-1]["summary"]
    assert summary["steps"] == 1 and summary["measured_iteration_time_s"] > 0
    assert summary["measured_peak_memory_bytes"] >= 0 and "CPU" in summary["peak_memory_kind"]
    assert (ckpt / "step-00000003" / "complete.json").is_file()


@pytest.mark.slow
def test_zero0_reduces_buckets_during_the_last_backward(tmp_path_factory):
    """ZeRO-0 with gradient accumulation over 4 micro-batches (dp2 with tp2, 2 blocks; pp2 x dp2 under 1f1b): on every
    rank and step the gradient all-reduces over the dp group are issued while the last micro-batch's backward is still
    running (one per bucket: each block, the head and the embedding of the rank's stage; none during the earlier
    micro-batches' backward, none after it); the losses and gradient norms equal the single-process run's (the
    layouts' own test_layout_matches_single_process)."""
    out = results(tmp_path_factory)
    # blocks + head + embedding; a pipeline stage holds 2 blocks and the embedding or head
    for name, n_buckets in (("gpt2-tp2-dp2-zero0", 2 + 2), ("gpt-pp2-dp2-1f1b-zero0", 2 + 1)):
        m = LAYOUTS[name].plan.config.num_microbatches
        assert m == 4
        assert len(out[name]["probe"]) == 4
        for rank, events in enumerate(out[name]["probe"]):
            for step in range(STEPS):
                backwards = [e for e in events if e["kind"] == "backward" and e["step"] == step]
                reduces = [e for e in events if e["kind"] == "all_reduce" and e["step"] == step]
                assert len(backwards) == m, (name, rank, step, backwards)
                assert len(reduces) == n_buckets, (name, rank, step, reduces)
                assert all(e["inside_backward"] and e["index"] == m - 1 for e in reduces), (name, rank, step, reduces)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2-tp2", "gpt-tp2-pp2-interleaved"])
def test_each_rank_holds_the_parameters_the_memory_estimate_counts(name, tmp_path_factory):
    """GPT blocks under tp2 (and pp2 x vpp2): the TP-split weights at 1/tp, the norms and the row-parallel biases
    whole, the embedding and head on their stages, counted on every rank (tests/param_count_probe.py)."""
    assert_ranks_hold_the_estimated_params(LAYOUTS[name].plan, results(tmp_path_factory)[name]["probe"])


# ---- pieces that need no process group ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [
    pytest.param("tiny-gpt", id="tiny-gpt"), pytest.param("tiny-llama", id="tiny-llama"),
    pytest.param(ModelSpec(name="gpt2", arch="gpt", num_layers=12, hidden_size=768, num_heads=12, num_kv_heads=12,
                           ffn_hidden_size=3072, vocab_size=50257, max_seq_len=1024, tied_embeddings=True), id="gpt2"),
    pytest.param(ModelSpec(name="qwen-like", arch="llama", num_layers=2, hidden_size=64, num_heads=4,
                           num_kv_heads=2, ffn_hidden_size=128, vocab_size=100, max_seq_len=32, qkv_bias=True,
                           tied_embeddings=True), id="llama-qkv-bias-tied"),
])
def test_parameter_count_equals_spec(spec):
    """The executor's model has exactly the spec's parameter count (built on the meta device)."""
    from autoconf.execute.model import build_model
    from autoconf.spec.presets import PRESETS

    spec = PRESETS[spec] if isinstance(spec, str) else spec
    model = build_model(spec)
    assert sum(p.numel() for p in model.parameters()) == spec.total_params()


def test_stages_partition_the_model_and_init_is_layout_independent():
    """Stage chunks hold exactly the partition's layers under the same names and the same initial values."""
    from autoconf.execute.model import build_model, init_weights
    from autoconf.execute.pipeline import build_chunks

    whole = build_model(LLAMA, device="cpu")
    init_weights(whole, seed=3)
    full = dict(whole.named_parameters())
    plan = make_plan("llama", pp=2, schedule="zbv", vpp=2)
    names = set()
    for pp_rank, expected_stages in ((0, [0, 3]), (1, [1, 2])):
        chunks = build_chunks(plan, pp_rank)
        assert [s for s, _ in chunks] == expected_stages  # V placement
        for _, chunk in chunks:
            chunk.to_empty(device="cpu")
            init_weights(chunk, seed=3)
            for n, p in chunk.named_parameters():
                names.add(n)
                assert torch.equal(p, full[n]), n
    assert names == set(full)


def test_attention_paths_agree():
    """The explicit softmax(QK^T) attention equals scaled_dot_product_attention."""
    from autoconf.execute.model import build_model, init_weights

    model = build_model(LLAMA, device="cpu")
    init_weights(model, 0)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    flash = model(tokens)
    for block in model.layers.values():
        block.attention.attention = "standard"
    torch.testing.assert_close(model(tokens), flash, rtol=1e-5, atol=1e-5)


def test_data_is_layout_independent_and_reads_files(tmp_path):
    from autoconf.execute.data import TokenSource, local_rows

    synthetic = TokenSource(None, 256, 16, seed=1)
    batch = synthetic.rows(5, 8)
    assert batch.shape == (8, 17) and torch.equal(batch, TokenSource(None, 256, 16, seed=1).rows(5, 8))
    assert not torch.equal(batch, synthetic.rows(6, 8))
    # each data-parallel rank builds only its rows, and together they are the global batch
    assert torch.equal(torch.cat([local_rows(synthetic, 5, 8, d, 4) for d in range(4)]), batch)

    tokens = np.arange(1000, dtype=np.uint32) % 300
    (tmp_path / "t.bin").write_bytes(tokens.tobytes())
    (tmp_path / "t.bin.json").write_text('{"dtype": "uint32"}')
    source = TokenSource(tmp_path / "t.bin", 300, 16, seed=0)
    rows = source.rows(0, 4)
    assert all(((rows[i, 1:] - rows[i, :-1]) % 300 == 1).all() for i in range(4))  # contiguous windows
    assert torch.equal(torch.cat([local_rows(source, 0, 4, d, 2) for d in range(2)]), rows)
    (tmp_path / "u.bin").write_bytes(tokens.astype(np.uint16).tobytes())  # no sidecar: uint16 for vocab 300
    assert TokenSource(tmp_path / "u.bin", 300, 16, seed=0).tokens.dtype == np.uint16

    (tmp_path / "a.txt").write_text("hello world, " * 20)
    text = TokenSource(tmp_path / "a.txt", 256, 8, seed=0).rows(0, 2)
    assert int(text.max()) < 128
    with pytest.raises(UserError, match="vocab"):
        TokenSource(tmp_path / "a.txt", 100, 8, seed=0)
    with pytest.raises(UserError, match="does not exist"):
        TokenSource(tmp_path / "missing.bin", 256, 8, seed=0)


def test_launch_validates_and_dry_runs(tmp_path, capsys):
    from autoconf.execute.launch import launch

    plan_path = tmp_path / "plan.json"
    make_plan(pp=2, dp=2, schedule="1f1b").save(plan_path)
    assert launch(plan_path, steps=5, dry_run=True) == 0
    line = capsys.readouterr().out.strip()
    assert "--nproc-per-node 4" in line and "--rdzv-backend c10d" in line and "autoconf.execute.train" in line
    assert launch(plan_path, steps=5, dry_run=True, nnodes=2, master_addr="10.1.2.3", master_port=1234,
                  max_restarts=3) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("--nproc-per-node 2" in x and "--master-addr 10.1.2.3" in x for x in lines)
    assert "--node-rank 0" in lines[0] and "--node-rank 1" in lines[1] and "--max-restarts 3" in lines[0]
    with pytest.raises(UserError, match="needs 4 processes"):
        launch(plan_path, steps=5, dry_run=True, nproc_per_node=3)
    with pytest.raises(UserError, match="does not exist"):
        launch(plan_path, steps=5, dry_run=True, data=str(tmp_path / "nope.bin"))
    (tmp_path / "m.jsonl").write_text("")
    with pytest.raises(UserError, match="already exists"):
        launch(plan_path, steps=5, dry_run=True, metrics=str(tmp_path / "m.jsonl"))
    assert launch(plan_path, steps=5, dry_run=True, metrics=str(tmp_path / "m.jsonl"), force=True) == 0
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot create"):
        launch(plan_path, steps=5, dry_run=True, metrics=str(blocker / "m.jsonl"))


@pytest.mark.parametrize("schedule", ["zb-h1", "zbv", "dualpipev"])
def test_zero3_with_split_backward_schedules_is_refused(schedule, tmp_path):
    """ZeRO-3 under a zero-bubble (split I/W backward) schedule loses weight gradients in torch 2.13: refused
    with a UserError naming the combination, before anything starts."""
    from autoconf.execute.launch import launch
    from autoconf.spec.support import unsupported_reason

    plan = make_plan(pp=2, dp=2, schedule=schedule, vpp=VPP.get(schedule, 1), zero=3)
    assert schedule in unsupported_reason(plan.config)
    assert unsupported_reason(make_plan(pp=2, dp=2, schedule=schedule, vpp=VPP.get(schedule, 1), zero=2).config) is None
    plan.save(tmp_path / "plan.json")
    with pytest.raises(UserError, match=f"{schedule} with zero_stage 3"):
        launch(tmp_path / "plan.json", steps=1, dry_run=True)


def test_checkpoint_finder_skips_incomplete(tmp_path):
    from autoconf.execute.checkpoint import MARKER, find_latest

    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / f"step-{step:08d}"
        d.mkdir()
        if complete:
            (d / MARKER).write_text(json.dumps({"step": step, "data_position": step}))
    (tmp_path / ".tmp-step-00000008").mkdir()
    messages = []
    path, meta = find_latest(tmp_path, log=messages.append)
    assert path.name == "step-00000004" and meta["data_position"] == 4
    assert len(messages) == 2 and all("skipping incomplete" in m for m in messages)
    from autoconf.execute.checkpoint import remove_interrupted  # (what a later committed save does)

    assert [p.name for p in remove_interrupted(tmp_path)] == [".tmp-step-00000008"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"step-{s:08d}" for s in (2, 4, 6)]


def test_lr_schedule_warms_up_then_decays():
    from autoconf.execute.train import TrainOptions, lr_at

    opts = TrainOptions(steps=100, lr=1e-3, warmup_steps=10)
    lrs = [lr_at(s, opts) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(1e-4)  # the floor at the end
    assert lr_at(99, TrainOptions(steps=100, lr=1e-3, min_lr_ratio=0.5)) == pytest.approx(5e-4)


def test_a_dry_run_of_a_gpu_plan_on_fewer_nodes_says_they_would_need_more_gpus(tmp_path, capsys):
    """A 16-GPU plan (two nodes of 8) dry-run on one node prints 16 processes per node, with a note that the plan's
    nodes have 8 GPUs and --nnodes 2 runs one process per GPU; on two nodes no such note."""
    from autoconf.cli import main
    from autoconf.execute.launch import launch
    from click.testing import CliRunner

    plan_path = tmp_path / "gpu.json"
    result = CliRunner().invoke(main, ["estimate", "--model", "tiny-gpt", "--cluster", "dgx-a100-80g", "--nodes", "2",
                                       "--tp", "1", "--pp", "1", "--dp", "16", "--micro-batch", "1",
                                       "--global-batch", "16", "--seq-len", "64", "--out", str(plan_path)])
    assert result.exit_code == 0, result.output
    capsys.readouterr()
    assert launch(plan_path, steps=2, dry_run=True, nnodes=1) == 0
    out = capsys.readouterr()
    assert "--nproc-per-node 16" in out.out
    assert "nodes of 8 GPUs, but 1 node(s) run 16 processes each" in out.err and "--nnodes 2" in out.err
    assert launch(plan_path, steps=2, dry_run=True, nnodes=2, master_addr="10.0.0.1") == 0
    assert "GPUs, but" not in capsys.readouterr().err


def test_a_rope_scaling_the_executor_does_not_apply_is_said_at_launch_and_in_the_exports(tmp_path, capsys):
    """A model whose dynamic or longrope RoPE scaling is read for its context only (`rope_unapplied`): launch (a dry
    run) notes that the executor rotates positions unscaled, and so do the Megatron and torchtitan exports."""
    import dataclasses

    from autoconf.execute.launch import launch
    from autoconf.report.exporters import megatron_args, torchtitan_config

    plan = make_plan("llama", pp=2, dp=2, schedule="1f1b")
    plan = dataclasses.replace(plan, model=dataclasses.replace(plan.model, rope_unapplied="dynamic, factor 2"))
    plan_path = tmp_path / "plan.json"
    plan.save(plan_path)
    assert launch(plan_path, steps=2, dry_run=True) == 0
    assert "dynamic, factor 2 RoPE scaling is not applied by the executor" in capsys.readouterr().err
    assert "dynamic, factor 2 RoPE scaling has no flag here" in megatron_args(plan)
    assert "dynamic, factor 2 RoPE scaling is not written" in torchtitan_config(plan)
