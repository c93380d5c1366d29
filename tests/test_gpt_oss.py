"""GPT-OSS (gpt_oss configs, presets gpt-oss-120b and gpt-oss-20b): planned and trained with its attention sinks,
biases, clamped SwiGLU and alternating sliding windows.

Executor, fast: a layer with sinks attends as a softmax with the sink logit as one more column does, through both
attention paths, with and without a window; the CP ring and the per-op policy's CP op, on a one-rank group, give
that softmax's output and the gradients of q, k, v and the sinks; the built model holds the spec's parameters and
every one learns. Slow (the session's shared torchrun jobs, CPU + gloo): a small GPT-OSS trains to the single
process's losses at ep2 x tp2 with sequence parallelism (sinks split with the heads, the output bias row-parallel,
the experts' biases with their experts), ep2 x etp2 x tp2 x dp2 (the down projection's bias added once after the
ETP sum), cp2 over the ring and cp2 all-gather under the per-op policy; its losses differ from the same model's
without sinks.

The parameter counts against OpenAI's model card are in tests/test_moe_spec.py (scripts/data/published_moe.json),
and against the model transformers builds from GptOssConfig, block by block, there too; the Megatron-LM flags are
parsed and built into megatron-core's configs in tests/test_exports_upstream.py ("gpt-oss").
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from autoconf.cost.estimate import estimate
from autoconf.errors import UserError
from autoconf.spec.cluster import load_cluster
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS, from_hf_config
from autoconf.spec.support import model_unsupported_reason

OSS = PRESETS["gpt-oss-120b"]


def test_the_preset_is_gpt_oss_as_its_config_describes_it():
    assert [OSS.attention_window(i) for i in range(4)] == [128, None, 128, None]
    assert OSS.sliding_layer_count == 18 and OSS.max_seq_len == 131072
    assert (OSS.attention_sinks, OSS.qkv_bias, OSS.out_proj_bias, OSS.swiglu_limit) == (True, True, True, 7.0)
    assert (OSS.moe.num_experts, OSS.moe.num_experts_per_tok, OSS.moe.router_bias, OSS.moe.expert_bias) == (
        128, 4, True, True)
    assert all(OSS.is_moe_layer(i) for i in range(OSS.num_layers))
    data = json.loads(json.dumps(OSS.to_dict()))
    assert ModelSpec.from_dict(data) == OSS and data["parameters"] == OSS.total_params()


def test_sinks_and_biases_are_weights_of_their_own():
    """Each layer's sinks are one logit per head; the biases add q, k, v, o widths and every expert's gate, up and
    down widths."""
    plain = dataclasses.replace(OSS, attention_sinks=False, qkv_bias=False, out_proj_bias=False,
                                moe=dataclasses.replace(OSS.moe, expert_bias=False, router_bias=False))
    m = OSS.moe
    per_layer = (OSS.num_heads + OSS.q_dim + 2 * OSS.kv_dim + OSS.hidden_size + m.num_experts
                 + m.num_experts * (2 * m.moe_intermediate_size + OSS.hidden_size))
    assert OSS.layer_params(0) - plain.layer_params(0) == per_layer


@pytest.mark.parametrize("fields, needle", [
    ({"swiglu_limit": -1.0}, "swiglu_limit must be a positive number or null"),
    ({"swiglu_limit": "7"}, "swiglu_limit must be a positive number or null"),
    ({"attention_sinks": 1}, "attention_sinks must be true or false"),
    ({"arch": "gpt", "moe": None, "sliding_window": None, "full_attention_layers": ()},
     "attention_sinks, out_proj_bias, swiglu_limit need arch llama"),
])
def test_bad_gpt_oss_fields_are_one_line(fields, needle):
    with pytest.raises(UserError) as err:
        dataclasses.replace(OSS, **fields)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_gpt_oss_config_without_its_window_is_one_line():
    config = {**_config(), "sliding_window": None}
    with pytest.raises(UserError, match="slides attention windows but sets no sliding_window"):
        from_hf_config(config, "oss")


def _config() -> dict:
    return {"model_type": "gpt_oss", "num_hidden_layers": 4, "hidden_size": 64, "intermediate_size": 64,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_local_experts": 8,
            "experts_per_token": 2, "vocab_size": 256, "max_position_embeddings": 512, "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"] * 2, "swiglu_limit": 7.0}


def test_another_swiglu_slope_is_one_line():
    with pytest.raises(UserError, match="swiglu_alpha 1.5 is not read: autoconf's clamped SwiGLU is GPT-OSS's"):
        from_hf_config({**_config(), "swiglu_alpha": 1.5}, "oss")
    assert from_hf_config({**_config(), "swiglu_alpha": 1.702}, "oss").swiglu_limit == 7.0


def test_the_experts_per_token_key_of_openais_configs_is_read():
    spec = from_hf_config(_config(), "oss")
    assert spec.moe.num_experts_per_tok == 2 and spec.full_attention_layers == (1, 3)


def test_the_executor_builds_it_and_the_planner_launches_it():
    assert model_unsupported_reason(OSS) is None
    config = ParallelConfig(tp=1, pp=4, dp=16, ep=8, micro_batch_size=1, global_batch_size=512, seq_len=4096,
                            zero_stage=1)
    prediction = estimate(OSS, load_cluster("dgx-h100-80g", nodes=8), config).prediction
    # the recipe's micro-batch 1 (Megatron-Bridge v0.2.0) fits
    assert "not_launchable_reason" not in prediction and prediction["fits"]


# ---- executor -------------------------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")

SMALL = ModelSpec(name="oss", arch="llama", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                  ffn_hidden_size=64, vocab_size=256, max_seq_len=64, sliding_window=6, full_attention_layers=(1, 3),
                  attention_sinks=True, qkv_bias=True, out_proj_bias=True, swiglu_limit=7.0,
                  moe=dataclasses.replace(OSS.moe, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                          router_aux_loss_coef=0.0))
NO_SINKS = dataclasses.replace(SMALL, name="nosinks", attention_sinks=False)


def _naive_with_sinks(q, k, v, sinks, window):
    """The sink logit as one more column of every row's softmax, its probability weighing nothing."""
    repeat = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
    s = q.shape[2]
    i = torch.arange(s)
    seen = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
    scores = ((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5).masked_fill(~seen, float("-inf"))
    column = sinks.view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    return torch.cat([column, scores], -1).softmax(-1)[..., 1:] @ v


@pytest.mark.parametrize("attention", ["flash", "standard"])
@pytest.mark.parametrize("window", [6, None])
def test_a_layer_with_sinks_attends_as_a_softmax_with_one_more_column(attention, window):
    from autoconf.execute.model import Attention

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 32, 16, generator=gen)
    k, v = (torch.randn(2, 2, 32, 16, generator=gen) for _ in range(2))
    layer = Attention(SMALL, attention, window).eval()
    with torch.no_grad():
        layer.sinks.copy_(torch.tensor([2.0, -1.0, 0.5, 0.0]))
    out = layer.core(q, k, v)
    torch.testing.assert_close(out, _naive_with_sinks(q, k, v, layer.sinks.detach(), window or 32),
                               rtol=1e-5, atol=1e-6)
    plain = Attention(NO_SINKS, attention, window).eval()
    assert not torch.allclose(out, plain.core(q, k, v))


@pytest.mark.parametrize("path", ["ring", "op allgather", "op ring"])
@pytest.mark.parametrize("seq, window, v_width", [(16, 6, 8), (64, 4, 8), (64, 4, 6), (64, 40, 8)])
def test_the_cp_ring_and_op_take_the_sink_into_every_row_and_its_gradient(path, seq, window, v_width):
    """On a one-rank CP group the ring (autograd through its merge) and the per-op policy's custom op (its own
    backward, with the sink's gradient -sum p_sink rowsum(dO O)) give the naive softmax's output and the gradients
    of q, k, v and the sinks, within a window: under one bias per chunk (16 tokens, window 6), in the band's blocks
    with the corner between the two chunks (64, window 4; with values narrower than the keys too), a window wider
    than a chunk (64, 40)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from autoconf.execute.context_parallel import ContextParallel
    from autoconf.execute.cp_attention import cp_attention

    gen = torch.Generator().manual_seed(1)
    leaves = [torch.randn(shape, generator=gen).requires_grad_()
              for shape in ((2, 4, seq, 8), (2, 2, seq, 8), (2, 2, seq, v_width), (4,))]
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        cp = ContextParallel(init_device_mesh("cpu", (1,), mesh_dim_names=("cp",))["cp"], seq, torch.device("cpu"),
                             "ring")
        q, k, v, sinks = leaves
        if path == "ring":
            out = cp.ring_attention(q, k, v, 0.0, window, sinks)
        else:
            out = cp_attention(q, k, v, cp.group.group_name, path.split()[1], seq, window, sinks)[0]
        grads = torch.autograd.grad(out.square().sum(), leaves)
    finally:
        dist.destroy_process_group()
    naive = _naive_with_sinks(q, k, v, sinks, window)
    torch.testing.assert_close(out, naive, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, torch.autograd.grad(naive.square().sum(), leaves)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_built_model_holds_the_specs_parameters_and_every_one_learns():
    from autoconf.execute.model import build_model, init_weights

    model = build_model(SMALL)
    model.to_empty(device="cpu")
    init_weights(model, 0)
    assert sum(p.numel() for p in model.parameters()) == SMALL.total_params()
    model(torch.randint(0, 256, (2, 32))).float().logsumexp(-1).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []


# ---- layouts under torchrun ---------------------------------------------------------------------------------------
import executor_jobs  # noqa: E402
from executor_jobs import Layout, assert_matches_reference  # noqa: E402
from plan_helpers import even_plan  # noqa: E402

OPS = {"recompute": "selective", "selective_recompute": "alternate_matmuls"}  # the per-op policy


def _plan(model=SMALL, ep: int = 1, etp: int = 1, cp_comm: str = "ring", **layout):
    plan = even_plan(model, global_batch=4, **layout)
    plan.config = dataclasses.replace(plan.config, ep=ep, etp=etp, cp_comm=cp_comm)
    plan.validate()
    return plan


LAYOUTS = {"oss": Layout(1, _plan()),
           "nosinks": Layout(1, _plan(NO_SINKS)),
           "oss-ep2-tp2-sp": Layout(2, _plan(ep=2, tp=2, sp=True, micro_batch=2)),
           "oss-ep2-etp2-tp2-dp2": Layout(4, _plan(ep=2, etp=2, tp=2, dp=2, micro_batch=2)),
           "oss-cp2-ring": Layout(2, _plan(cp=2, micro_batch=2)),
           "oss-cp2-ops-allgather": Layout(2, _plan(cp=2, cp_comm="allgather", micro_batch=2, **OPS))}
executor_jobs.register("oss", LAYOUTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, lay in LAYOUTS.items() if lay.world > 1])
def test_gpt_oss_layouts_train_as_one_process(name, tmp_path_factory):
    """Every step's loss and gradient norm equal the single-process run's within 1e-4 relative (fp32, 3 steps), and
    the sinks matter: the same model without them trains to other losses."""
    out = executor_jobs.results("oss", tmp_path_factory)
    executor_jobs.assert_differs(assert_matches_reference(out, name), out["nosinks"]["records"])
