"""The executor's mixture-of-experts layer (execute/moe.py) and expert parallelism, on CPU with gloo.

Single process: the MoE model has the spec's parameters, trains (the loss falls, gradients reach the router, the
routed and the shared experts), and the grouped GEMM and the loop over experts give the same numbers.
Several ranks (the session's shared torchrun jobs of 1, 2 and 4 processes, each training every registered layout
in one process group, tests/executor_jobs.py): every layout's per-step loss and global gradient norm over 3 steps in
fp32 (dropless routing) equal the single-process run's within 1e-4 relative, for ep2, ep4, ep2 x tp2, ep2 x pp2,
ep2 x dp2 under ZeRO-3, ep2 over tp2 x dp2 with sequence parallelism and ep2 x etp2 over tp2 x dp2 (expert tensor
parallelism); a shared expert with Qwen2-MoE's gate at ep2 x tp2 with sequence parallelism; a model with a
load-balancing loss and DeepSeek-style routing (sigmoid scores, group-limited) under ep2, ep2 x pp2 and ep2 x tp2
with sequence parallelism; and a checkpoint written under ep2 resumes under ep1 (tp2) with the uninterrupted run's
step-3 loss. Two gloo ranks sharing their tokens as TP ranks do: each routes only its half, and the output, the
load-balancing loss and the gradients (router, experts, input) equal one process's.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autoconf.errors import UserError
from autoconf.spec.plan import Plan
from autoconf.spec.presets import PRESETS
import executor_jobs
from executor_jobs import STEPS, Layout, assert_matches_reference
from executor_jobs import close as _close
from plan_helpers import PARAM_COUNT, assert_ranks_hold_the_estimated_params, even_plan
from rank_helpers import run_ranks

MOE = PRESETS["tiny-moe"]
# Sigmoid scores with group-limited routing (DeepSeek-V3's router), a scale on the routed output and a
# load-balancing loss: the aux loss's gradient must scale like the cross entropy's in every layout.
AUX = dataclasses.replace(MOE, name="tiny-moe-aux", moe=dataclasses.replace(
    MOE.moe, scoring_func="sigmoid", n_group=2, topk_group=1, routed_scaling_factor=2.0, router_aux_loss_coef=0.05))
# 2 layers (the dense one, then one MoE layer) for the layouts without a pipeline: a layout's cost on CPU grows with
# its layers, tensor- and expert-parallel ones most, and every MoE layer runs the same dispatch.
# Qwen2-MoE's sigmoid gate on the shared expert, which under TP and sequence parallelism weighs this rank's part of
# the sequence.
MODELS = {"moe": MOE, "aux": AUX, "moe2": dataclasses.replace(MOE, name="tiny-moe2", num_layers=2),
          "gate2": dataclasses.replace(MOE, name="tiny-moe-gate2", num_layers=2,
                                       moe=dataclasses.replace(MOE.moe, shared_expert_gate=True))}


def moe_plan(model: str = "moe", ep: int = 1, etp: int = 1, **layout) -> Plan:
    """`even_plan` of the test MoE model with expert-parallel degrees."""
    plan = even_plan(MODELS[model], **layout)
    config = dataclasses.replace(plan.config, ep=ep, etp=etp)
    plan = Plan(model=plan.model, cluster=plan.cluster, config=config, partition=plan.partition,
                placement=plan.placement)
    plan.validate()
    return plan


# name -> Layout(world, plan, options); the name's first word is the reference run's (world 1). Trained in the
# session's shared torchrun jobs (tests/executor_jobs.py). Tensor-parallel layouts in micro-batches of 2 (their CPU
# cost is per micro-batch; the global batch, so the reference's losses, is the same). ep2 (world 2) and the pipelined
# layouts keep 4 layers (MoE layers on both stages).
LAYOUTS: dict[str, Layout] = {
    "moe": Layout(1, moe_plan()),
    "aux": Layout(1, moe_plan("aux")),
    "moe2": Layout(1, moe_plan("moe2")),
    "moe-ep2": Layout(2, moe_plan(ep=2, dp=2)),
    "moe2-ep2-tp2": Layout(2, moe_plan("moe2", ep=2, tp=2, micro_batch=2), PARAM_COUNT),
    "aux-ep2": Layout(2, moe_plan("aux", ep=2, dp=2)),
    # the load-balancing statistics over the CP ranks' parts of each sequence (MoE.aux_loss)
    "aux-cp2-ep2": Layout(2, moe_plan("aux", ep=2, cp=2)),
    "moe2-ep4": Layout(4, moe_plan("moe2", ep=4, dp=4)),
    "moe2-ep2-dp2-zero3": Layout(4, moe_plan("moe2", ep=2, dp=4, zero=3)),
    "moe-ep2-pp2": Layout(4, moe_plan(ep=2, pp=2, dp=2)),
    "aux-ep2-pp2": Layout(4, moe_plan("aux", ep=2, pp=2, dp=2)),
    "moe2-ep2-tp2-dp2-sp": Layout(4, moe_plan("moe2", ep=2, tp=2, dp=2, sp=True, micro_batch=2)),
    "moe2-ep2-etp2-tp2-dp2": Layout(4, moe_plan("moe2", ep=2, etp=2, tp=2, dp=2, micro_batch=2)),
    "gate2": Layout(1, moe_plan("gate2")),
    "gate2-ep2-tp2-sp": Layout(2, moe_plan("gate2", ep=2, tp=2, sp=True, micro_batch=2), PARAM_COUNT),
    # micro-batches of 1 as the reference's: the load-balancing loss is taken over a micro-batch's tokens
    "aux-ep2-tp2-sp": Layout(2, moe_plan("aux", ep=2, tp=2, sp=True)),
}
# ep2 writes a checkpoint after step 2, which ep1 (over tp2) resumes for step 3.
RESUMES: dict[str, Layout] = {
    "moe-ckpt1": Layout(1, moe_plan(), {"checkpoint_dir": "ckpt1", "stop_after": 2}),
    "moe-ckpt-ep2": Layout(2, moe_plan(ep=2, dp=2), {"checkpoint_dir": "ckpt", "stop_after": 2}),
    "moe-resume-ep1": Layout(2, moe_plan(ep=1, tp=2), {"checkpoint_dir": "ckpt"}),
}
executor_jobs.register("moe", {**LAYOUTS, **RESUMES})


def results(tmp_path_factory) -> dict[str, dict]:
    """name -> {"records", "seconds"} of this module's layouts (tests/executor_jobs.py runs them once)."""
    return executor_jobs.results("moe", tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, layout in LAYOUTS.items() if layout.world > 1])
def test_moe_layout_matches_single_process(name, tmp_path_factory):
    """Every step's loss and global gradient norm equal the single-process run's within 1e-4 relative."""
    assert_matches_reference(results(tmp_path_factory), name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["moe2-ep2-tp2", "gate2-ep2-tp2-sp"])
def test_each_rank_holds_the_parameters_the_memory_estimate_counts(name, tmp_path_factory):
    """ep2 x tp2 on 2 ranks: the routed experts at 1/ep, the router (and the shared expert's gate) and the norms
    whole, the rest at 1/tp (tests/param_count_probe.py)."""
    assert_ranks_hold_the_estimated_params(LAYOUTS[name].plan, results(tmp_path_factory)[name]["probe"])


@pytest.mark.slow
def test_moe_checkpoint_reshards_from_ep2_to_ep1(tmp_path_factory):
    """A checkpoint written under ep2 x dp2 after step 2 resumes under ep1 x tp2: step 3's loss and gradient norm
    equal the uninterrupted single-process run's."""
    out = results(tmp_path_factory)
    assert [r["step"] for r in out["moe-ckpt-ep2"]["records"]] == [1, 2]
    resumed = out["moe-resume-ep1"]["records"]
    assert [r["step"] for r in resumed] == [3]
    reference = out["moe"]["records"][2]
    assert _close(resumed[0]["loss"], reference["loss"]) and _close(resumed[0]["grad_norm"], reference["grad_norm"])


@pytest.mark.slow
def test_the_optimizer_sees_the_experts_gradients_of_one_process(tmp_path, tmp_path_factory):
    """Under ep2 x dp2 the experts' gradients are averaged over their edp replicas and scaled by edp / (dp x cp) in the
    step (the clip's multiply): AdamW's first moments after two steps, which are linear in the gradients it was
    given (AdamW's update is not: a wrong scale would not show in the losses), equal the single-process run's."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    results(tmp_path_factory)
    moments = []
    for folder in ("ckpt1", "ckpt"):
        dcp_to_torch_save(executor_jobs.checkpoints("moe", tmp_path_factory) / folder / "step-00000002",
                          tmp_path / f"{folder}.pt")
        state = torch.load(tmp_path / f"{folder}.pt", weights_only=False)
        moments.append({k: v for k, v in _flat(state).items() if ".experts." in k and k.endswith("exp_avg")})
    assert moments[0] and moments[0].keys() == moments[1].keys()
    for key, value in moments[0].items():
        torch.testing.assert_close(moments[1][key], value, rtol=1e-4, atol=1e-9)


def _flat(state, prefix: str = "") -> dict:
    """A nested state dict's tensors under dotted keys."""
    if isinstance(state, dict):
        return {k: v for key, sub in state.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): state} if isinstance(state, torch.Tensor) else {}


@pytest.mark.slow
def test_moe_reference_runs_train(tmp_path_factory):
    """The reference runs move step to step, and the load-balancing loss changes the gradients (the same weights
    with it and without it differ in gradient norm), so equal numbers are a real check."""
    ref = results(tmp_path_factory)
    for name in ("moe", "aux", "moe2"):
        assert len({round(r["loss"], 6) for r in ref[name]["records"]}) == STEPS
    assert not _close(ref["aux"]["records"][0]["grad_norm"], ref["moe"]["records"][0]["grad_norm"])


# ---- pieces that need no process group ----------------------------------------------------------------------------
def _model(spec=MOE):
    from autoconf.execute.model import build_model, init_weights

    model = build_model(spec, device="cpu")
    init_weights(model, 0)
    return model


def test_moe_model_has_the_spec_parameters():
    """The executor's MoE model holds the spec's parameters; layer 0 (first_k_dense) is dense, the rest MoE."""
    from autoconf.execute.moe import MoE

    model = _model()
    assert sum(p.numel() for p in model.parameters()) == MOE.total_params()
    kinds = [isinstance(block.feed_forward, MoE) for block in model.layers.values()]
    assert kinds == [MOE.is_moe_layer(i) for i in range(MOE.num_layers)] == [False, True, True, True]


def test_moe_trains_in_one_process():
    """On a repeated batch the loss falls over a few AdamW steps, and the router, every routed expert that got a
    token and the shared expert receive gradients."""
    torch.manual_seed(0)
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = torch.randint(0, MOE.vocab_size, (4, 33))
    losses = []
    for _ in range(6):
        opt.zero_grad()
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        if not losses:
            moe = model.layers["1"].feed_forward
            assert moe.router.weight.grad.abs().sum() > 0
            assert moe.shared.w2.weight.grad.abs().sum() > 0
            used = moe.experts.w1.grad.flatten(1).abs().sum(1) > 0
            assert used.sum() >= MOE.moe.num_experts_per_tok
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_grouped_gemm_and_loop_give_the_same_numbers():
    """The experts through torch._grouped_mm and through the loop agree in output and gradients (an expert without
    tokens included), and the grouped GEMM is the path taken on CPU in fp32 at these widths."""
    from autoconf.execute.moe import _expert_grouped, _expert_loop, grouped_mm_runs

    assert grouped_mm_runs("cpu", None, torch.float32, 64, 64)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, 64, generator=gen)
    weights = [torch.randn(3, 64, 32, generator=gen), torch.randn(3, 64, 32, generator=gen),
               torch.randn(3, 32, 64, generator=gen)]
    grad = torch.randn(10, 64, generator=gen)
    got = []
    for fn in (_expert_grouped, _expert_loop):
        leaves = [t.clone().requires_grad_() for t in (x, *weights)]
        out = fn(leaves[0], torch.tensor([4, 0, 6]), *leaves[1:])
        out.backward(grad)
        got.append([out.detach()] + [t.grad for t in leaves])
    for a, b in zip(*got):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


class _HostWaits(torch.utils._python_dispatch.TorchDispatchMode):
    """Records what makes the host wait for a value on the device: a read of a tensor's values into Python
    (`.tolist()`, which no op shows on CPU, and `.item()`, `int(t)`, ...) and an op whose output's size depends on
    the values (bincount, nonzero, boolean indexing, repeat_interleave without its output size). On CPU nothing
    waits, but on a GPU each of these stops the host from running ahead."""

    def __init__(self):
        super().__init__()
        self.waits: list[str] = []

    def __enter__(self):
        self._tolist = torch.Tensor.tolist
        waits, tolist = self.waits, self._tolist

        def recorded(t):
            waits.append("tolist")
            return tolist(t)

        torch.Tensor.tolist = recorded
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tags = func.tags
        if torch.Tag.data_dependent_output in tags:
            self.waits.append(str(func))
        elif torch.Tag.dynamic_output_shape in tags:
            if func is torch.ops.aten.index.Tensor:
                if any(i is not None and i.dtype == torch.bool for i in args[1]):
                    self.waits.append(str(func))
            elif not (func is torch.ops.aten.repeat_interleave.Tensor and kwargs.get("output_size") is not None):
                self.waits.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize("model", ["moe", "aux"])
def test_routing_and_experts_never_make_the_host_wait(model):
    """One process's MoE layer (routing, the load-balancing loss, the grouped GEMM, the combine) forward and
    backward, and the regrouping that expert parallelism's received rows go through, read nothing back to the host
    (the counts stay on the device)."""
    from autoconf.execute.moe import regrouped_experts

    torch.manual_seed(0)
    moe = _model(MODELS[model]).layers["1"].feed_forward
    x = torch.randn(2, 9, MOE.hidden_size, requires_grad=True)
    local = moe.experts.w1.shape[0]
    received = torch.arange(2 * local).remainder(3).view(2, local)  # two source ranks' rows per local expert
    rows = torch.randn(int(received.sum()), MOE.hidden_size, requires_grad=True)
    moe(x)  # (the first call probes the grouped GEMM once per shape: `grouped_mm_runs`)
    with _HostWaits() as mode:
        moe(x).sum().backward()
        regrouped_experts(moe.experts, rows, received).sum().backward()
    assert x.grad.abs().sum() > 0 and rows.grad.abs().sum() > 0
    assert mode.waits == []
    with _HostWaits() as mode:  # the detector sees what the layer used to run
        torch.bincount(received.flatten(), minlength=local)
        received.flatten().repeat_interleave(received.flatten())
        received.sum(1).tolist()
    assert mode.waits == ["aten.bincount.default", "aten.repeat_interleave.Tensor", "tolist"]


@pytest.mark.slow
def test_expert_parallel_layer_reads_its_split_sizes_once():
    """On 2 gloo ranks, as ep2 and as etp2: the MoE layer's forward reads the split sizes of its exchanges back to
    the host once (`MoE._exchange`) and its backward not at all, and its output equals one process's layer on the
    same tokens."""
    for found in run_ranks(_exchange_worker, 2):
        assert found == {"ep2": (["tolist"], [], True), "etp2": (["tolist"], [], True)}, found


def _exchange_worker(rank: int, world: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)  # each rank its own tokens
    x = torch.randn(2, 9, MOE.hidden_size)
    found = {}
    for name in ("ep2", "etp2"):
        whole = _model().layers["1"].feed_forward
        layer = _model().layers["1"].feed_forward
        experts, local = layer.experts, MOE.moe.num_experts // world
        width = MOE.moe.moe_intermediate_size // world
        with torch.no_grad():
            for key in ("w1", "w3", "w2"):
                w = getattr(experts, key)
                if name == "ep2":  # this rank's block of whole experts
                    part = w[rank * local:(rank + 1) * local]
                else:  # a slice of every expert's width: w1, w3 by columns, w2 by rows
                    part = w.narrow(2 if key != "w2" else 1, rank * width, width)
                setattr(experts, key, torch.nn.Parameter(part.clone()))
        layer.ep_group, layer.etp_group = (dist.group.WORLD, None) if name == "ep2" else (None, dist.group.WORLD)
        leaf = x.clone().requires_grad_()
        layer(x)  # (the first call probes the grouped GEMM once per shape: `grouped_mm_runs`)
        with _HostWaits() as forward:
            out = layer(leaf)
        with _HostWaits() as backward:
            out.sum().backward()
        found[name] = (forward.waits, backward.waits, torch.allclose(out, whole(x), rtol=1e-5, atol=1e-6))
    dist.destroy_process_group()
    queue.put(found)


def test_router_weights_and_group_limits():
    """Softmax with norm_topk_prob: each token's k weights sum to 1. Sigmoid with n_group 2, topk_group 1: a token's
    experts all lie in one group, and its weights sum to routed_scaling_factor."""
    torch.manual_seed(0)
    x = torch.randn(16, MOE.hidden_size)
    index, weights, _ = _model().layers["1"].feed_forward.route(x)
    assert torch.allclose(weights.sum(-1), torch.ones(16))
    index, weights, _ = _model(AUX).layers["1"].feed_forward.route(x)
    per_group = AUX.moe.num_experts // AUX.moe.n_group
    assert ((index // per_group) == (index[:, :1] // per_group)).all()
    assert torch.allclose(weights.sum(-1), torch.full((16,), AUX.moe.routed_scaling_factor))


def test_the_combine_keeps_the_expert_outputs_as_the_autoconf_preset_states():
    """The executor weighs the expert outputs by the routing weights in the combine, so autograd keeps the [T, k, h]
    outputs for the weights' gradient: what the autoconf preset's `moe_combine_keeps_outputs` tells the memory
    model (Megatron-Core's preset, which weighs inside the experts, says the opposite)."""
    from autoconf.spec.frameworks import PRESETS as FRAMEWORKS

    torch.manual_seed(0)
    layer = _model().layers["1"].feed_forward
    x = torch.randn(16, MOE.hidden_size, requires_grad=True)
    index, weights, _ = layer.route(x)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        layer.routed(x, index, weights)
    kept = (16, MOE.moe.num_experts_per_tok, MOE.hidden_size) in shapes
    assert kept and FRAMEWORKS["autoconf"].moe_combine_keeps_outputs
    assert not FRAMEWORKS["megatron-core"].moe_combine_keeps_outputs


def test_aux_loss_only_when_the_spec_has_one():
    """The load-balancing loss changes the router's gradient, not the output; without a coefficient there is none."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, MOE.hidden_size)
    with_aux = dataclasses.replace(AUX, moe=dataclasses.replace(AUX.moe, router_aux_loss_coef=0.5))
    without = dataclasses.replace(AUX, moe=dataclasses.replace(AUX.moe, router_aux_loss_coef=0.0))
    outs, grads = [], []
    for spec in (with_aux, without):
        moe = _model(spec).layers["1"].feed_forward
        out = moe(x)
        out.backward(torch.ones_like(out))
        outs.append(out.detach())
        grads.append(moe.router.weight.grad.clone())
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(grads[0], grads[1])


def test_launch_takes_moe_and_refuses_what_the_executor_does_not_build(tmp_path, capsys):
    """launch --dry-run accepts an MoE plan; a capacity factor is refused in one line, DeepSeek-V3 (latent
    attention, tests/test_mla.py; its MTP module: tests/test_mtp.py) without MTP is not."""
    from autoconf.execute.launch import launch

    path = tmp_path / "moe.json"
    moe_plan(ep=2, dp=2).save(path)
    assert launch(path, steps=1, dry_run=True, nnodes=1) == 0
    from autoconf.spec.support import model_unsupported_reason

    assert model_unsupported_reason(dataclasses.replace(PRESETS["deepseek-v3"], mtp_num_layers=0)) is None
    capped = dataclasses.replace(MOE, moe=dataclasses.replace(MOE.moe, capacity_factor=1.25))
    bad = even_plan(capped)
    bad.save(tmp_path / "capped.json")
    with pytest.raises(UserError, match="dropless"):
        launch(tmp_path / "capped.json", steps=1, dry_run=True, nnodes=1)


def test_profiler_times_an_moe_model_routed_dropless_and_its_dense_view_for_the_dense_references():
    """`profile --model` of an MoE model times the model itself, routed dropless (the executor's routing), and
    says that the all-to-all is the network's; the FSDP and TP references take its dense view (same attention and
    dense MLP, no experts); a latent-attention model is refused in one line."""
    from autoconf.profile.timed_model import dense_view, timed_model, timed_note

    capped = dataclasses.replace(MOE, moe=dataclasses.replace(MOE.moe, capacity_factor=1.25))
    assert timed_model(capped).moe == MOE.moe and timed_model(MOE) == MOE
    dense = dense_view(MOE)
    assert dense.moe is None and dense.hidden_size == MOE.hidden_size and dense.ffn_hidden_size == 176
    assert "all-to-all" in timed_note(MOE) and "capacity_factor 1.25" in timed_note(capped)
    assert timed_note(dense) is None
    with pytest.raises(UserError, match="latent attention"):
        timed_model(PRESETS["deepseek-v3"])


def _share_worker(rank: int, world: int, queue) -> None:
    """One of 2 gloo ranks holding the same 16 tokens as TP ranks do (`token_group`): the layer's output, input and
    router gradients and the load-balancing loss against the same layer without the group on all the tokens, and
    the row counts of the fp32 [rows, experts] tensors its forward keeps for the backward (the scores: a row per
    token routed)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    spec = dataclasses.replace(AUX, moe=dataclasses.replace(AUX.moe, router_bias=True, router_aux_loss_coef=0.5))
    torch.manual_seed(0)
    x = torch.randn(2, 8, spec.hidden_size)
    grad = torch.randn(2, 8, spec.hidden_size)
    got = []
    for group in (None, dist.group.WORLD):
        layer = _model(spec).layers["1"].feed_forward
        layer.token_group = group
        leaf = x.clone().requires_grad_()
        rows = []

        def pack(t):
            if t.dtype == torch.float32 and t.dim() == 2 and t.shape[1] == spec.moe.num_experts:
                rows.append(t.shape[0])
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = layer(leaf)
        out.backward(grad)
        mine = leaf.detach().reshape(-1, spec.hidden_size)
        if group is not None:
            mine = mine.chunk(2)[rank]
        index, _, probs = layer.route(mine)
        got.append({"out": out.detach(), "aux": layer.aux_loss(index, probs).detach(), "x": leaf.grad,
                    "weight": layer.router.weight.grad, "bias": layer.router.bias.grad,
                    "w1": layer.experts.w1.grad, "rows": sorted(set(rows))})
    one, shared = got
    dist.all_reduce(shared["w1"])  # each rank's experts saw its share: the expert-data-parallel reduction sums them
    dist.destroy_process_group()
    queue.put({"rows": (one["rows"], shared["rows"]), "aux": (float(one["aux"]), float(shared["aux"])),
               "differ": {k: float((one[k] - shared[k]).abs().max() / one[k].abs().max())
                          for k in ("out", "x", "weight", "bias", "w1")}})


@pytest.mark.slow
def test_each_tp_rank_routes_its_share_and_the_router_learns_as_one_process():
    """Two ranks sharing 16 tokens as TP ranks: each keeps router scores for its 8 tokens only (one process: 16),
    and the output, the load-balancing loss and the gradients of the input, the router's weight and bias and the
    experts (summed over the ranks) equal one process's within 1e-5 relative."""
    seen = run_ranks(_share_worker, 2)
    for found in seen:
        one, shared = found["rows"]
        assert 16 in one and 16 not in shared and 8 in shared, found
        assert _close(found["aux"][1], found["aux"][0], 1e-5) and found["aux"][0] > 0, found
        assert all(d <= 1e-5 for d in found["differ"].values()), found


def test_tp_must_divide_the_tokens_a_rank_holds_after_context_parallelism():
    """An MoE layer's TP ranks route a share each of the rank's tokens, micro_batch x seq_len / (cp x seq_chunks);
    the rule had read micro_batch x seq_len, so seq 12 at cp 2 x tp 4 (6 tokens a rank, which `chunk(4)` splits
    in 3) passed and failed inside the run (a review)."""
    from autoconf.spec.plan import ParallelConfig
    from autoconf.spec.support import unsupported_reason

    def reason(seq: int, cp: int) -> str | None:
        return unsupported_reason(ParallelConfig(tp=4, pp=1, dp=1, cp=cp, micro_batch_size=1, global_batch_size=1,
                                                 seq_len=seq, sequence_parallel=True), MOE)

    assert "does not divide the 6 tokens of a micro-batch one rank holds after cp" in reason(12, 2)
    assert "tokens" not in (reason(16, 2) or "") and "tokens" not in (reason(12, 1) or "")
