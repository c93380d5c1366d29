"""FP8 training (dtype fp8: torchao float8, bf16 master weights): the dtype table, the profiles' FP8 rates, the cost
terms, the refusal on devices without FP8, the exports, and on CPU the executor's Float8Linear (its GEMM emulated
by torchao, the casts and fp8 rounding real): what it casts and saves is what the cost model counts, and its losses
stay near bf16's."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json

import pytest
import torch

from autoconf.cost.compute import _spec_pieces, gemms_time, layer_gemms
from autoconf.cost.estimate import dp_collectives, estimate
from autoconf.cost.fp8 import (block_linears, cast_bytes_per_element, float8_linear_saved_bytes, input_cast_elements,
                               scaling_time)
from autoconf.errors import UserError
from autoconf.report.exporters import megatron_args, torchtitan_config
from autoconf.spec.cluster import ClusterProfile, load_cluster
from autoconf.spec.dtypes import DTYPE_BYTES, PROFILED_DTYPES, dtype_problem, gather_bytes, precision
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import load_model
from autoconf.spec.support import unsupported_reason
from tests.test_bad_input import assert_one_clear_error, run_cli

import executor_jobs
from executor_jobs import Layout

TINY = ModelSpec(name="t", arch="llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                 ffn_hidden_size=128, vocab_size=128, max_seq_len=64)


def _config(dtype: str, **kw) -> ParallelConfig:
    base = dict(tp=1, pp=1, dp=8, micro_batch_size=2, global_batch_size=16, seq_len=8192, zero_stage=3,
                recompute="selective", dtype=dtype)
    return ParallelConfig(**{**base, **kw})


def test_fp8_keeps_bf16_storage_and_gathers_one_byte():
    """fp8 is a recipe: activations and working weights bf16 (2 bytes), GEMMs at the fp8 peak, FSDP gathers 1 byte
    per parameter (half of bf16's); the profiler never times an fp8 table."""
    p = precision("fp8")
    assert (p.element, p.gemm, p.gather, p.dynamic_scaling) == ("bf16", "fp8", "fp8", True)
    assert DTYPE_BYTES["fp8"] == DTYPE_BYTES["bf16"] == 2
    assert gather_bytes("fp8") * 2 == gather_bytes("bf16")
    assert "fp8" not in PROFILED_DTYPES and "bf16" in PROFILED_DTYPES


def test_profiles_state_fp8_only_where_the_data_sheet_does():
    """H100 profiles carry an FP8 rate of twice their bf16 rate (dense, data sheet); A100 and CPU have none, and
    `dtype_problem` says so in one line for them only. A profile stating fp8 without bf16 is refused, and an old
    profile without the key still loads."""
    for name in ("dgx-h100-80g", "grand-teton-h100-96g-500w"):
        peaks = load_cluster(name).device.peak_flops
        assert peaks["fp8"] == pytest.approx(2 * peaks["bf16"], rel=0.01)
        assert dtype_problem("fp8", peaks, name) is None
    for name in ("dgx-a100-80g", "cpu-local"):
        device = load_cluster(name).device
        assert "fp8" not in device.peak_flops
        assert "FP8" in dtype_problem("fp8", device.peak_flops, device.name)
    doc = load_cluster("dgx-h100-80g").to_dict()
    del doc["device"]["peak_flops"]["bf16"]
    with pytest.raises(UserError, match="bf16 beside fp8"):
        ClusterProfile.from_dict(doc)
    del doc["device"]["peak_flops"]["fp8"]
    assert "fp8" not in ClusterProfile.from_dict(doc).device.peak_flops


def test_fp8_runs_block_gemms_at_the_fp8_peak_and_the_rest_at_bf16():
    """Under fp8 a block's weight GEMMs take bf16-peak/fp8-peak of their bf16 time (same size curve), the attention
    core, the embedding and the head do not change, and the block pays the casts on top."""
    model, cluster = load_model("llama3-8b"), load_cluster("grand-teton-h100-96g-500w")
    bf16, fp8 = _spec_pieces(model, cluster, _config("bf16")), _spec_pieces(model, cluster, _config("fp8"))
    gemms = layer_gemms(model, 8192, 2, 1)
    ratio = gemms_time(cluster, "fp8", gemms) / gemms_time(cluster, "bf16", gemms)
    assert ratio == pytest.approx(cluster.device.peak("bf16") / cluster.device.peak("fp8"))
    assert fp8.attention_core == bf16.attention_core and fp8.head == bf16.head and fp8.embedding == bf16.embedding
    casts = scaling_time(model, cluster, _config("fp8"))
    saved = (bf16.block_rest.backward_weight - fp8.block_rest.backward_weight) + casts[2]
    assert saved == pytest.approx(gemms_time(cluster, "bf16", gemms) * (1 - ratio))
    assert 0 < casts[0] < fp8.block_rest.forward
    assert scaling_time(model, cluster, _config("bf16")) == (0.0, 0.0, 0.0)


def test_fp8_estimate_is_faster_than_bf16_but_not_twice():
    """Llama 3 8B FSDP on 8 H100: FP8 speeds the step up, by less than the GEMM peak ratio (attention, norms,
    casts and communication do not speed up); the FSDP gather moves half the bytes; MFU is read at the bf16 peak."""
    model, cluster = load_model("llama3-8b"), load_cluster("grand-teton-h100-96g-500w")
    bf16 = estimate(model, cluster, _config("bf16"), detail=False).prediction
    fp8 = estimate(model, cluster, _config("fp8"), detail=False).prediction
    assert 1.05 < fp8["tokens_per_s"] / bf16["tokens_per_s"] < 1.9
    assert fp8["mfu"] / bf16["mfu"] == pytest.approx(fp8["tokens_per_s"] / bf16["tokens_per_s"])
    devices = list(range(8))
    g16 = dp_collectives(cluster, _config("bf16"), 1e9, devices)[0]
    g8 = dp_collectives(cluster, _config("fp8"), 1e9, devices)[0]
    assert g8 < g16 and dp_collectives(cluster, _config("bf16", zero_stage=0), 1e9, devices)[0] == 0



def test_tp_regions_cast_each_input_once_on_the_sequence_shard():
    """With tp > 1 (torchao's float8 TP styles) the attention and MLP regions cast their input once, before the
    all-gather: fewer elements than one cast per linear, and sequence parallelism shrinks those two casts by tp;
    the weight-gradient pass re-casts only the row-parallel linears' inputs."""
    model, tokens = load_model("llama3-8b"), 8192 * 2
    per_linear = sum(tokens * k for k, _ in block_linears(model, 8))
    fwd, bwd = input_cast_elements(model, _config("fp8", tp=8))
    fwd_sp, bwd_sp = input_cast_elements(model, _config("fp8", tp=8, sequence_parallel=True))
    assert fwd_sp < fwd < per_linear and bwd_sp == bwd < fwd_sp
    assert fwd - fwd_sp == pytest.approx(2 * tokens * model.hidden_size * (1 - 1 / 8))
    assert input_cast_elements(model, _config("fp8")) == (sum(tokens * k for k, _ in block_linears(model, 1)),) * 2

@pytest.mark.parametrize("verb", ["estimate", "plan"])
def test_fp8_on_a_device_without_it_is_one_clear_line(verb):
    """`--dtype fp8` (estimate) or `--fix dtype=fp8` (plan) on A100: one line naming FP8 and the device."""
    common = ["--model", "tiny-llama", "--cluster", "dgx-a100-80g", "--global-batch", 8]
    if verb == "estimate":
        args = ["estimate", *common, "--tp", 1, "--pp", 1, "--dp", 8, "--micro-batch", 1, "--dtype", "fp8"]
    else:
        args = ["plan", *common, "--fix", "dtype=fp8"]
    assert_one_clear_error(run_cli(args), "FP8", "A100")


def test_plan_never_chooses_fp8_unless_asked():
    """The search keeps the dtype it is given: on an FP8-capable H100 a plain `plan` is bf16, `--fix dtype=fp8`
    gives fp8 plans."""
    args = ["plan", "--model", "tiny-llama", "--cluster", "dgx-h100-80g", "--gpus-per-node", 2, "--global-batch", 4,
            "--seq-len", 128, "--top", 1, "--json"]
    plain = json.loads(run_cli(args).output)
    fixed = json.loads(run_cli([*args, "--fix", "dtype=fp8"]).output)
    assert plain["plans"][0]["config"]["dtype"] == "bf16"
    assert fixed["plans"][0]["config"]["dtype"] == "fp8"


def test_executor_refuses_fp8_with_tp():
    assert "tp 2" in unsupported_reason(_config("fp8", tp=2, dp=4))
    assert unsupported_reason(_config("fp8")) is None


def test_exports_carry_fp8():
    """Megatron gets --fp8-format hybrid with tensorwise scaling and the fp8 parameter gather under the distributed
    optimizer; torchtitan's config module compiles and says how its float8 converter differs (rowwise only)."""
    model, cluster = load_model("tiny-llama"), load_cluster("dgx-h100-80g")
    plan = estimate(model, cluster, _config("fp8", seq_len=128, zero_stage=1), detail=False)
    tokens = " ".join(line for line in megatron_args(plan).splitlines() if not line.startswith("#")).split()
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--fp8-format", choices=["e4m3", "hybrid"])
    parser.add_argument("--fp8-recipe", choices=["tensorwise", "delayed", "mxfp8", "blockwise"])
    for flag in ("--fp8-param-gather", "--bf16", "--use-distributed-optimizer"):
        parser.add_argument(flag, action="store_true")
    known, _ = parser.parse_known_args(tokens)
    assert (known.fp8_format, known.fp8_recipe, known.fp8_param_gather, known.bf16) == ("hybrid", "tensorwise",
                                                                                        True, True)
    titan = torchtitan_config(plan)
    compile(titan, "torchtitan_config.py", "exec")
    assert "Float8LinearConverter" in titan and "rowwise" in titan
    assert 'training.mixed_precision_param = "bfloat16"' in titan


# ---- the executor's FP8 linears on CPU (torchao Float8Linear, GEMM emulated) --------------------------------------
needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                   reason="torchao not installed (pip install 'autoconf[fp8]')")


def _tiny_model(dtype):
    from autoconf.execute.model import build_model, init_weights

    model = build_model(TINY, device="cpu")
    init_weights(model, 0)
    return model.to(dtype)


@needs_torchao
def test_float8_block_casts_what_the_cost_model_counts(monkeypatch):
    """Counting every tensor torchao casts to fp8 in one block's forward and backward (its cast function, patched)
    gives the element counts `cost/fp8.py` charges: inputs + weights forward; outputs + weights, then outputs +
    inputs, in the backward."""
    import torchao.float8.float8_linear as f8

    from autoconf.execute.fp8 import apply_float8

    model = _tiny_model(torch.bfloat16)
    apply_float8(model, fsdp=False, device=torch.device("cpu"))
    counted = {"forward": 0, "backward": 0}
    phase = {"now": "forward"}
    real = f8.hp_tensor_to_float8_dynamic

    def counting(tensor, *args, **kwargs):
        counted[phase["now"]] += tensor.numel()
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(f8, "hp_tensor_to_float8_dynamic", counting)
    b, s = 2, 32
    x = torch.randn(b, s, TINY.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    y = model.layers["0"](x)
    phase["now"] = "backward"
    y.float().sum().backward()
    tokens = b * s
    linears = block_linears(TINY, 1)
    inputs, outputs = sum(tokens * k for k, _ in linears), sum(tokens * n for _, n in linears)
    weights = sum(k * n for k, n in linears)
    assert counted == {"forward": inputs + weights, "backward": 2 * outputs + weights + inputs}
    assert cast_bytes_per_element("bf16") == 5


@needs_torchao
def test_float8_linear_saves_its_bf16_input_as_modelled():
    """A Float8Linear's saved tensors (autograd's saved-tensor hooks), beyond its weight: its bf16 input, the
    bytes `float8_linear_saved_bytes` states; the block's saved bytes equal the bf16 block's."""
    from autoconf.execute.fp8 import apply_float8

    def saved(module, x) -> int:
        params = {p.untyped_storage().data_ptr() for p in module.parameters()}
        total = [0]

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        return total[0]

    bf16 = _tiny_model(torch.bfloat16)
    fp8 = copy.deepcopy(bf16)
    apply_float8(fp8, fsdp=False, device=torch.device("cpu"))
    wq = fp8.layers["0"].attention.wq
    assert type(wq).__name__ == "Float8Linear" and type(fp8.output).__name__ == "Linear"
    x = torch.randn(2, 32, TINY.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    assert saved(wq, x) == float8_linear_saved_bytes(64, TINY.hidden_size, "fp8")
    assert saved(fp8.layers["0"], x) == saved(bf16.layers["0"], x)


@needs_torchao
def test_fp8_training_tracks_bf16_losses():
    """Six AdamW steps of a 2-layer model on a learnable sequence: the FP8 losses differ from bf16's (FP8 really
    runs) by under 2% and fall step by step as bf16's do (at a learning rate where bf16's own losses fall smoothly;
    at 1e-2 they oscillate and any rounding change moves step 6 by several percent)."""
    import torch.nn.functional as F

    from autoconf.execute.fp8 import apply_float8

    def losses(model) -> list[float]:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        tokens = (torch.arange(33).repeat(2, 1) * 5 + torch.arange(2)[:, None]) % TINY.vocab_size
        out = []
        for _ in range(6):
            logits = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
            out.append(loss.item())
        return out

    base = _tiny_model(torch.bfloat16)
    fp8 = copy.deepcopy(base)
    apply_float8(fp8, fsdp=False, device=torch.device("cpu"))
    ref, got = losses(base), losses(fp8)
    assert ref != got
    assert max(abs(a - b) / a for a, b in zip(ref, got)) < 0.02
    assert got[-1] < 0.9 * got[0] and ref[-1] < 0.9 * ref[0]
    assert all(b < a for a, b in zip(got, got[1:])) and all(b < a for a, b in zip(ref, ref[1:]))


def _layout_plan(dtype, **layout):
    from plan_helpers import even_plan

    plan = even_plan(dataclasses.replace(TINY, num_layers=4), **layout)
    plan.config = dataclasses.replace(plan.config, dtype=dtype)
    return plan


# Trained in the session's shared 2-rank torchrun job (tests/executor_jobs.py); only where torchao is installed.
FP8_LAYOUTS = {"fp8-dp2-zero1": Layout(2, _layout_plan("fp8", dp=2, zero=1)),
               "fp8-pp2": Layout(2, _layout_plan("fp8", pp=2)),
               "fp32-dp2-zero1": Layout(2, _layout_plan("fp32", dp=2, zero=1))}
if importlib.util.find_spec("torchao") is not None:
    executor_jobs.register("fp8", FP8_LAYOUTS)


@needs_torchao
@pytest.mark.slow
def test_fp8_trains_the_same_under_fsdp_and_pipelining(tmp_path_factory):
    """The executor's fp8 plans (torchao Float8Linear, CPU emulation, gloo): FSDP with fp8 all-gather (dp 2, ZeRO-1)
    and a two-stage pipeline start from the same loss (1e-6) and stay within 1e-3 in loss and 1e-2 in gradient norm
    (fp8 rounding turns the layouts' different reduction orders into whole fp8 steps on some elements; measured 8e-6
    and 1e-3), and differ from the same plan in fp32 (the FP8 casts really run)."""
    out = executor_jobs.results("fp8", tmp_path_factory)
    fsdp, pipeline, fp32 = [[(r["loss"], r["grad_norm"]) for r in out[name]["records"]] for name in FP8_LAYOUTS]
    assert abs(fsdp[0][0] - pipeline[0][0]) <= 1e-6 * pipeline[0][0]
    for (la, ga), (lb, gb) in zip(fsdp, pipeline):
        assert abs(la - lb) <= 1e-3 * lb and abs(ga - gb) <= 1e-2 * gb
    assert any(abs(la - lc) > 1e-6 for (la, _), (lc, _) in zip(fsdp, fp32))
