"""The executor's multi-token-prediction modules (execute/mtp.py), on CPU.

One process: the model holds `total_params_with_mtp` parameters, and the training objective's gradients equal those
of an objective written out here by slicing (the main cross entropy plus scale / D times each depth's cross
entropy over the positions that have a token k + 1 ahead), and what a module keeps for its backward is the
estimate's. Several ranks (the session's shared torchrun jobs, tests/executor_jobs.py): the per-step loss and global
gradient norm of dp2, dp2 under ZeRO-3 with full recompute, tp2 with and without sequence parallelism, an MoE
model's ep2, pipelines under every schedule the executor runs (seq1f1b's sequence chunks included) and context
parallelism equal the single-process run's within 1e-4 relative over 3 steps in fp32; under tp2 each rank keeps
the estimate's bytes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import executor_jobs
from executor_jobs import Layout, assert_matches_reference
from plan_helpers import even_plan
from autoconf.spec.plan import Plan
from autoconf.spec.presets import PRESETS

LLAMA = dataclasses.replace(PRESETS["tiny-llama"], name="tiny-llama-mtp", mtp_num_layers=2)
MOE = dataclasses.replace(PRESETS["tiny-moe"], name="tiny-moe-mtp", num_layers=2, mtp_num_layers=1)
GPT = dataclasses.replace(PRESETS["tiny-gpt"], name="tiny-gpt-mtp", mtp_num_layers=1)  # tied, learned positions


def _with(plan: Plan, **fields) -> Plan:
    """`plan` with config `fields` replaced, validated."""
    plan.config = dataclasses.replace(plan.config, **fields)
    plan.validate()
    return plan


def _chunked(plan: Plan, chunks: int, split: list[int] | None = None) -> Plan:
    """A seq1f1b `plan` whose sequences flow in `chunks` chunks (at the boundaries `split`, else evenly)."""
    plan.sequence_split = split
    return _with(plan, seq_chunks=chunks, seq_split="even" if split is None else "work")


def _moe_plan(**layout) -> Plan:
    plan = even_plan(MOE, **layout)
    plan.config = dataclasses.replace(plan.config, ep=2)
    plan.validate()
    return plan


# (two micro-batches of 4 where DTensor's or CP's per-micro-batch cost on CPU is high: still an accumulation)
LAYOUTS: dict[str, Layout] = {
    "mtp": Layout(1, even_plan(LLAMA)),
    "mtp-dp2": Layout(2, even_plan(LLAMA, dp=2)),
    "mtp-dp2-zero3-full": Layout(2, even_plan(LLAMA, dp=2, zero=3, recompute="full")),
    "mtp-tp2": Layout(2, even_plan(LLAMA, tp=2, micro_batch=4)),
    "mtp-tp2-sp": Layout(2, even_plan(LLAMA, tp=2, sp=True, micro_batch=4)),
    "mtpmoe": Layout(1, even_plan(MOE)),
    "mtpmoe-ep2": Layout(2, _moe_plan(dp=2)),
    # Pipelines: the modules on the last stage with its copy of the embedding (execute/mtp.py).
    "mtp-pp2": Layout(2, even_plan(LLAMA, pp=2), {"checkpoint_dir": "pp2", "checkpoint_every": 1}),
    "mtp-pp2-interleaved": Layout(2, even_plan(LLAMA, pp=2, schedule="interleaved-1f1b", vpp=2)),
    "mtp-pp2-zb-h1": Layout(2, even_plan(LLAMA, pp=2, schedule="zb-h1")),
    # V placements: rank 0 holds the first and the last stage, each chunk its own embedding (summed on the rank)
    "mtp-pp2-zbv": Layout(2, even_plan(LLAMA, pp=2, schedule="zbv", vpp=2)),
    "mtpgpt-pp2-dualpipev": Layout(2, even_plan(GPT, pp=2, schedule="dualpipev", vpp=2)),
    "mtp-tp2-pp2-sp-zero3": Layout(4, even_plan(LLAMA, tp=2, pp=2, sp=True, zero=3, micro_batch=2)),
    "mtpgpt": Layout(1, even_plan(GPT)),
    "mtpgpt-pp2-dp2-zero2": Layout(4, even_plan(GPT, pp=2, dp=2, zero=2),
                                   {"checkpoint_dir": "gpt-pp2", "checkpoint_every": 1}),
    # Context parallelism: the tokens ahead of a chunk's last places come from whole sequences (execute/mtp.py).
    "mtp-cp2": Layout(2, even_plan(LLAMA, cp=2, micro_batch=4)),
    "mtpgpt-cp2-allgather": Layout(2, _with(even_plan(GPT, cp=2, micro_batch=4), cp_comm="allgather")),
    "mtp-cp2-pp2": Layout(4, even_plan(LLAMA, cp=2, pp=2)),
    # seq1f1b: the tokens ahead cut into the units with the labels, the modules' blocks reading earlier units' K/V;
    # a GPT's learned positions, an uneven split (the last chunk shorter), two rows per micro-batch.
    "mtp-pp2-seq1f1b-k2": Layout(2, _chunked(even_plan(LLAMA, pp=2, schedule="seq1f1b"), 2)),
    "mtpgpt-pp2-seq1f1b-k4-uneven-mb2": Layout(2, _chunked(even_plan(GPT, pp=2, schedule="seq1f1b", micro_batch=2),
                                                           4, [0, 11, 20, 27, 32])),
}
# Checkpoints across the embedding copy: one written at pp1 x dp2 (no copy) resumes at pp2, and pp2's (with the
# copy) resumes at pp1; step 3 equals the uninterrupted run's.
RESUMES: dict[str, Layout] = {
    "mtp-dp2-stop-after-2": Layout(2, even_plan(LLAMA, dp=2),
                                   {"checkpoint_dir": "dp2", "checkpoint_every": 1, "stop_after": 2}),
    "mtp-resumed-pp2": Layout(2, even_plan(LLAMA, pp=2),
                              {"checkpoint_dir": "resumed-pp2", "copy_checkpoint": "dp2/step-00000002"}),
    "mtp-resumed-pp1": Layout(1, even_plan(LLAMA),
                              {"checkpoint_dir": "resumed-pp1", "copy_checkpoint": "pp2/step-00000002"}),
}
executor_jobs.register("mtp", {**LAYOUTS, **RESUMES})


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, layout in LAYOUTS.items() if layout.world > 1])
def test_mtp_layout_matches_single_process(name, tmp_path_factory):
    """Every step's loss and global gradient norm equal the single-process run's within 1e-4 relative."""
    assert_matches_reference(executor_jobs.results("mtp", tmp_path_factory), name)


@pytest.mark.slow
def test_checkpoints_resume_across_the_last_stages_embedding_copy(tmp_path_factory):
    """A checkpoint written at pp1 x dp2 (one embedding) resumes at pp2, whose last stage reads its embedding copy
    from the embedding's state; one written at pp2 (with the copy) resumes at pp1: both resumed steps 3 equal the
    uninterrupted run's loss and gradient norm."""
    out = executor_jobs.results("mtp", tmp_path_factory)
    uninterrupted = out["mtp"]["records"][2]
    assert [r["step"] for r in out["mtp-dp2-stop-after-2"]["records"]] == [1, 2]
    for name in ("mtp-resumed-pp2", "mtp-resumed-pp1"):
        records = out[name]["records"]
        assert [r["step"] for r in records] == [3], name
        for key in ("loss", "grad_norm"):
            assert records[0][key] == pytest.approx(uninterrupted[key], rel=1e-4), (name, key)


@pytest.mark.slow
def test_the_last_stages_embedding_copy_stays_the_embedding(tmp_path, tmp_path_factory):
    """After three steps at pp2 the last stage's copies of the embedding and their AdamW moments equal the first
    stage's bit for bit (pipeline.EmbeddingSync sums their gradients; unsynced, they part after the first step, which
    three steps' losses barely show): the MTP modules' copy of a Llama, and of a GPT with tied embeddings the head's
    weight (which the MTP modules read) and the learned positions' copy, under pp2 x dp2 and ZeRO-2."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from autoconf.execute.model import embedding_source

    executor_jobs.results("mtp", tmp_path_factory)
    for folder, spec, names in (("pp2", LLAMA, {"mtp_embed.tok.weight"}),
                                ("gpt-pp2", GPT, {"output.weight", "mtp_embed.pos.weight"})):
        dcp_to_torch_save(executor_jobs.checkpoints("mtp", tmp_path_factory) / folder / "step-00000003",
                          tmp_path / f"{folder}.pt")
        state = _flat(torch.load(tmp_path / f"{folder}.pt", weights_only=False))
        copies = [key for key in state if embedding_source(key, spec.tied_embeddings) != key]
        assert {name for name in names for key in copies if name in key} == names, sorted(state)
        assert len(copies) >= 3 * len(names), copies  # each weight, its exp_avg and exp_avg_sq
        for key in copies:
            original = state[embedding_source(key, spec.tied_embeddings)]
            assert not torch.equal(original, torch.zeros_like(original)), key
            torch.testing.assert_close(state[key], original, rtol=0, atol=0, msg=key)


def _flat(state, prefix: str = "") -> dict:
    """A nested state dict's tensors under dotted keys."""
    if isinstance(state, dict):
        return {k: v for key, sub in state.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): state} if isinstance(state, torch.Tensor) else {}


@pytest.mark.slow
def test_the_mtp_losses_move_the_gradients(tmp_path_factory):
    """The same model without its MTP modules has another gradient norm at step 1 (the same loss: the reported
    loss is the main cross entropy), so the layouts' equal numbers check the MTP modules too."""
    from executor_jobs import STEPS

    out = executor_jobs.results("mtp", tmp_path_factory)
    assert len({round(r["loss"], 6) for r in out["mtp"]["records"]}) == STEPS
    plain = _objective_grads(dataclasses.replace(LLAMA, mtp_num_layers=0), 0.1)[1]
    with_mtp = _objective_grads(LLAMA, 0.1)[1]
    assert abs(plain - with_mtp) > 1e-3 * plain


def _model(spec):
    from autoconf.execute.model import build_model, init_weights

    model = build_model(spec, device="cpu")
    init_weights(model, 0)
    return model


def _objective_grads(spec, scale: float):
    """(the executor's objective's parameter gradients by name, their global norm) on a fixed batch."""
    from autoconf.execute.loss import cross_entropy
    from autoconf.execute.mtp import future_tokens, with_mtp_losses

    model = _model(spec)
    tokens = torch.randint(0, spec.vocab_size, (2, 17), generator=torch.Generator().manual_seed(3))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if model.mtp is None:
        objective = cross_entropy(model(inputs), targets)
    else:
        future = future_tokens(targets, spec.mtp_num_layers)
        logits, *extra = model(inputs, mtp_future=future)
        objective = with_mtp_losses(cross_entropy(logits, targets), extra, future, cross_entropy, scale)
    objective.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return grads, float(torch.stack([g.norm() for g in grads.values()]).norm())


def test_the_model_holds_the_mtp_parameters():
    """The executor's model with MTP modules holds `total_params_with_mtp`; split into pipeline stages, the MTP
    modules live on the last stage only, which adds a copy of the embedding (the cost model's count,
    `memory.stage_params`); a tied head shares that copy's weight."""
    from autoconf.cost.memory import stage_params
    from autoconf.execute.model import build_model

    assert sum(p.numel() for p in _model(LLAMA).parameters()) == LLAMA.total_params_with_mtp()
    assert sum(p.numel() for p in _model(MOE).parameters()) == MOE.total_params_with_mtp()
    partition = [[0, 3], [3, 8]]
    for spec in (LLAMA, GPT):
        first, last = (build_model(spec, *partition[s], embed=s == 0, head=s == 1) for s in (0, 1))
        assert first.mtp is None and last.mtp is not None and last.mtp_embed is not None
        for stage, chunk in enumerate((first, last)):
            assert sum(p.numel() for p in chunk.parameters()) == stage_params(spec, partition, stage), spec.name
    # On a V placement (zbv: rank 0 holds stages 0 and 3) each chunk keeps its own embedding, as the torch layout's
    # count says (`mtp.copy_per_chunk`).
    from autoconf.cost.memory import rank_params

    v_split = [[0, 2], [2, 4], [4, 6], [6, 8]]
    for spec in (LLAMA, GPT):
        held = sum(p.numel() for st in (0, 3)
                   for p in build_model(spec, *v_split[st], embed=st == 0, head=st == 3).parameters())
        assert held == rank_params(spec, v_split, [0, 3], "torch")[0], spec.name
        assert held > rank_params(spec, v_split, [0, 3], "megatron")[0], spec.name  # (megatron: one embedding)
    tied = build_model(GPT, 3, 8, embed=False, head=True)
    assert tied.mtp_embed.tok.weight is tied.output.weight
    assert [n for n, _ in tied.named_parameters() if tied.is_embedding_copy(n)] == ["output.weight",
                                                                                     "mtp_embed.pos.weight"]


@pytest.mark.parametrize("spec", [LLAMA, MOE, GPT], ids=["dense", "moe", "gpt"])
def test_the_objective_is_the_main_loss_plus_the_scaled_mtp_losses(spec):
    """The executor's objective's gradients equal those of main + scale / D x sum_k CE_k written out by slicing:
    depth k reads the embedding of the token k ahead (targets[:, k - 1 + i]; learned positions i + k, as
    Megatron-Core rolls the position ids with the tokens) and predicts the one k + 1 ahead (targets[:, k + i]) at the
    positions i < seq - k that have one; the reported value is the main loss."""
    from autoconf.execute.loss import cross_entropy
    from autoconf.execute.mtp import future_tokens, with_mtp_losses

    scale = 0.3
    got, _ = _objective_grads(spec, scale)
    model = _model(spec)
    tokens = torch.randint(0, spec.vocab_size, (2, 17), generator=torch.Generator().manual_seed(3))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    seq = targets.shape[1]
    hidden = model.norm(_trunk(model, inputs))
    main = F.cross_entropy(model.output(hidden).flatten(0, 1), targets.flatten())
    extra = []
    for k, module in enumerate(model.mtp.values(), start=1):
        ahead = torch.cat([targets[:, k - 1:], targets.new_zeros(2, k - 1)], dim=1)
        embedded = model.embed.tok(ahead)
        if model.embed.pos is not None:
            embedded = embedded + model.embed.pos(torch.cat([torch.arange(k, seq), torch.zeros(k, dtype=torch.long)]))
        hidden = module(hidden, embedded)
        logits = model.output(hidden)[:, :seq - k]
        extra.append(F.cross_entropy(logits.flatten(0, 1), targets[:, k:].flatten()))
    (main + scale / len(extra) * sum(extra)).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    future = future_tokens(targets, spec.mtp_num_layers)
    logits, *extra = _model(spec)(inputs, mtp_future=future)
    value = with_mtp_losses(cross_entropy(logits, targets), extra, future, cross_entropy, scale)
    assert torch.allclose(value, main.detach(), rtol=1e-5)  # the reported loss: the main cross entropy


def _trunk(model, inputs):
    x = model.embed(inputs)
    for block in model.layers.values():
        x = block(x)
    return x


def test_every_schedule_the_executor_runs_takes_mtp_modules():
    """The executor builds MTP modules in every layout it runs (seq1f1b's sequence chunks included since they take
    the tokens ahead cut with the labels): no layout of the model is refused for them, and DeepSeek-V3 itself is
    not refused."""
    from autoconf.spec.support import model_unsupported_reason, unsupported_reason

    plan = _with(even_plan(LLAMA, pp=2, schedule="seq1f1b"), seq_chunks=2)
    assert unsupported_reason(plan.config, LLAMA) is None
    for layout in (dict(dp=2), dict(tp=2, sp=True), dict(pp=2), dict(pp=2, schedule="interleaved-1f1b", vpp=2),
                   dict(pp=2, schedule="zbv", vpp=2), dict(pp=2, schedule="dualpipev", vpp=2), dict(cp=2),
                   dict(cp=2, pp=2)):
        assert unsupported_reason(even_plan(LLAMA, **layout).config, LLAMA) is None, layout
    assert model_unsupported_reason(PRESETS["deepseek-v3"]) is None


class _Step(torch.nn.Module):
    """One micro-batch's forward and loss (with the MTP losses where the model has MTP modules), as the training
    loop runs it: what `saved_bytes` counts includes every loss's kept logits."""

    def __init__(self, model, targets, loss_fn=None):
        from autoconf.execute.loss import cross_entropy

        super().__init__()
        self.model, self.targets, self.loss_fn = model, targets, loss_fn or cross_entropy

    def forward(self, inputs):
        from autoconf.execute.mtp import future_tokens, with_mtp_losses

        if self.model.mtp is None:
            return self.loss_fn(self.model(inputs), self.targets)
        future = future_tokens(self.targets, self.model.spec.mtp_num_layers)
        logits, *extra = self.model(inputs, mtp_future=future)
        return with_mtp_losses(self.loss_fn(logits, self.targets), extra, future, self.loss_fn, 0.1)


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_the_estimate_counts_what_the_mtp_module_keeps(arch, dtype, recompute):
    """What a model with one MTP module keeps for its backward beyond the same model without it (autograd's saved
    tensors, the losses' kept logits included) is `mtp_kept_bytes`, within 1% (left over: norm statistics per
    token and the shifted token ids): its block, its norms' and projection's inputs, its head's input and its
    loss's logits."""
    from autoconf.cost.memory import head_input_bytes, mtp_kept_bytes
    from autoconf.execute.parallelize import apply_recompute
    from autoconf.profile.activations import saved_bytes
    from autoconf.spec.plan import ParallelConfig

    mb, seq = 3, 40  # (tokens unlike every weight dimension: saved_bytes tells activations from weights by shape)
    base = dataclasses.replace(PRESETS[arch], dropout=0.0)
    low = torch.bfloat16 if dtype == "bf16" else torch.float32
    tokens = torch.randint(0, base.vocab_size, (mb, seq + 1), generator=torch.Generator().manual_seed(0))
    kept = []
    for depth in (0, 1):
        model = _model(dataclasses.replace(base, mtp_num_layers=depth)).to(low)
        apply_recompute(model, recompute)
        kept.append(saved_bytes(_Step(model, tokens[:, 1:]), tokens[:, :-1]))
    spec = dataclasses.replace(base, mtp_num_layers=1)
    c = ParallelConfig(tp=1, pp=1, dp=1, micro_batch_size=mb, global_batch_size=mb, seq_len=seq, dtype=dtype,
                       recompute=recompute)
    estimated = mtp_kept_bytes(spec, c, "torch", "cpu", "attention_core", None,
                               head_input_bytes(spec, c, "torch", "cpu"))
    assert estimated <= kept[1] - kept[0] <= 1.01 * estimated


def test_the_search_for_the_executor_keeps_the_layouts_its_mtp_modules_run_in():
    """Planned for the executor, a model with MTP modules gets launchable layouts, pipelines (V placements and
    seq1f1b too) and context parallelism included."""
    from autoconf.solve.search import search
    from autoconf.spec.cluster import load_cluster

    cluster = load_cluster("dgx-h100-80g", nodes=1)
    result = search(LLAMA, cluster, 16, 64, "bf16", top_k=5, refine=False)
    assert result.plans and all(p.prediction.get("launchable", True) for p in result.plans)
    for pin in ({"pp": 2}, {"cp": 2}, {"schedule": "zbv"}, {"schedule": "seq1f1b", "pp": 2}):
        pinned = search(LLAMA, cluster, 16, 64, "bf16", fixed=pin, top_k=1, refine=False).plans[0]
        assert pinned.prediction.get("launchable", True), pin
        assert all(getattr(pinned.config, key) == value for key, value in pin.items()), pin


@pytest.mark.slow
def test_each_tp_rank_keeps_what_the_estimate_counts_for_the_mtp_module():
    """On 2 gloo ranks as tp2, with and without sequence parallelism: what a module keeps on a rank beyond the same
    model without it is `mtp_kept_bytes`'s, within 2% (the projection's input gathered whole under SP, the hidden
    norm's input shared with the head's only without SP)."""
    from rank_helpers import run_ranks

    for found in run_ranks(_tp_kept_worker, 2, timeout=300):
        for sp, (kept, estimated) in found.items():
            assert estimated <= kept <= 1.02 * estimated, (sp, kept, estimated)


def _tp_kept_worker(rank: int, world: int, queue) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from autoconf.cost.memory import head_input_bytes, mtp_kept_bytes
    from autoconf.execute.model import build_model, init_weights
    from autoconf.execute.parallelize import apply_tp
    from autoconf.profile.activations import saved_bytes
    from autoconf.spec.plan import ParallelConfig

    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    mb, seq = 3, 40
    base = dataclasses.replace(PRESETS["tiny-llama"], dropout=0.0)
    tokens = torch.randint(0, base.vocab_size, (mb, seq + 1), generator=torch.Generator().manual_seed(0))
    found = {}
    for sp in (False, True):
        kept = []
        for depth in (0, 1):
            spec = dataclasses.replace(base, mtp_num_layers=depth)
            model = build_model(spec)
            apply_tp(model, mesh, sp)
            model.to_empty(device="cpu")
            model.tie_weights()
            init_weights(model, 0)
            kept.append(saved_bytes(_Step(model, tokens[:, 1:], _tp_loss(mesh, spec)), tokens[:, :-1]))
        c = ParallelConfig(tp=world, pp=1, dp=1, micro_batch_size=mb, global_batch_size=mb, seq_len=seq,
                           dtype="fp32", sequence_parallel=sp)
        estimated = mtp_kept_bytes(spec, c, "torch", "cpu", "attention_core", None,
                                   head_input_bytes(spec, c, "torch", "cpu"))
        found[sp] = (kept[1] - kept[0], estimated)
    queue.put(found)
    dist.destroy_process_group()


def _tp_loss(mesh, spec):
    from autoconf.execute.loss import rank_loss

    return rank_loss(mesh, spec.vocab_size)
