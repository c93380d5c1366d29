"""What an MoE block costs beyond its GEMMs under fp8 and expert parallelism (docs/moe.md, "Qwen3 against NVIDIA's
H100 rows"): the copies of the routed rows (the sort by local expert and back, Megatron-Core's fp8 padding), and
the fp8 casts of the experts' GEMMs in place of a dense MLP's."""

import dataclasses

import pytest

from autoconf.cost.compute import gemms_time, model_pieces
from autoconf.cost.fp8 import cast_seconds, mlp_cast_elements
from autoconf.cost.moe import expert_cast_elements, expert_gemms, routed_copy_bytes, routed_rows
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import PRESETS as FRAMEWORKS
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS

QWEN3 = PRESETS["qwen3-30b-a3b"]
H100 = load_cluster("dgx-h100-80g", nodes=2)
MCORE = FRAMEWORKS["megatron-core"]


def config(**changes) -> ParallelConfig:
    base = dict(tp=1, pp=1, dp=16, ep=8, micro_batch_size=2, global_batch_size=512, seq_len=4096, zero_stage=1,
                dtype="fp8")
    return ParallelConfig(**{**base, **changes})


def test_routed_copies_follow_the_dispatcher_and_the_fp8_padding():
    """A copy reads and writes every routed row once per pass: two (sort by local expert, unsort) with ep > 1 and
    several local experts, two more (pad, unpad) under fp8 with Megatron-Core's padding; none on one rank's own
    experts, with one local expert per rank, or in bf16 without padding."""
    one_copy = 2 * routed_rows(QWEN3, config()) * QWEN3.hidden_size * 2
    assert routed_rows(QWEN3, config()) == 4096 * 2 * 8
    assert routed_copy_bytes(QWEN3, config(), fp8_padding=False) == pytest.approx(2 * one_copy)
    assert routed_copy_bytes(QWEN3, config(), fp8_padding=True) == pytest.approx(4 * one_copy)
    assert routed_copy_bytes(QWEN3, config(dtype="bf16"), fp8_padding=True) == pytest.approx(2 * one_copy)
    assert routed_copy_bytes(QWEN3, config(ep=1), fp8_padding=False) == 0.0
    assert routed_copy_bytes(QWEN3, config(ep=128, dp=128), fp8_padding=False) == 0.0
    assert MCORE.moe_fp8_padding and not FRAMEWORKS["autoconf"].moe_fp8_padding


def test_fp8_casts_of_an_moe_block_are_its_experts_not_the_dense_ffn():
    """Under fp8 an MoE block casts its experts' GEMM operands: its time no longer reads the model's dense FFN width
    (Qwen3's 6144, which no MoE layer has), and grows with top-k (the routed rows each GEMM casts)."""
    c = config()
    wide = dataclasses.replace(QWEN3, ffn_hidden_size=4 * QWEN3.ffn_hidden_size)
    base = model_pieces(QWEN3, H100, c, execution=MCORE).moe_rest
    assert model_pieces(wide, H100, c, execution=MCORE).moe_rest.total == pytest.approx(base.total)
    top16 = dataclasses.replace(QWEN3, moe=dataclasses.replace(QWEN3.moe, num_experts_per_tok=16))
    casts = [sum(cast_seconds(H100, c, *expert_cast_elements(m, c))) for m in (QWEN3, top16)]
    assert casts[1] > 1.5 * casts[0]
    assert sum(cast_seconds(H100, config(dtype="bf16"), *expert_cast_elements(QWEN3, c))) == 0.0


def test_an_moe_block_with_one_expert_casts_like_the_dense_mlp_less_one_input():
    """One expert of the dense width, top-1, no expert parallelism: the same GEMMs as a dense SwiGLU MLP, so the same
    casts but one: the gate and up projections are one GEMM (`linear_fc1`) and cast their shared input once."""
    dense = dataclasses.replace(QWEN3, moe=dataclasses.replace(
        QWEN3.moe, num_experts=1, num_experts_per_tok=1, moe_intermediate_size=QWEN3.ffn_hidden_size))
    c = config(ep=1)
    tokens = c.seq_len * c.micro_batch_size
    mlp, experts = mlp_cast_elements(dense, c), expert_cast_elements(dense, c)
    assert experts[1] == mlp[1] and experts[3] == mlp[3]
    assert mlp[0] - experts[0] == mlp[2] - experts[2] == tokens * QWEN3.hidden_size


def test_megatron_cores_padding_slows_the_fp8_moe_block_by_its_copies():
    """The megatron-core preset's fp8 padding adds exactly its two copies to the forward and the input-gradient
    pass of an MoE block, at the profile's element-wise rate."""
    c = config()
    rate = H100.device.memory_bandwidth_Bps * H100.eff("memory")
    padded = model_pieces(QWEN3, H100, c, execution=MCORE).moe_rest
    plain = model_pieces(QWEN3, H100, c, execution=MCORE.replace(moe_fp8_padding=False)).moe_rest
    extra = (routed_copy_bytes(QWEN3, c, True) - routed_copy_bytes(QWEN3, c, False)) / rate
    assert padded.forward - plain.forward == pytest.approx(extra)
    assert padded.backward_input - plain.backward_input == pytest.approx(extra)
    assert padded.backward_weight == pytest.approx(plain.backward_weight)


def test_the_executors_routed_experts_stay_in_bf16_under_fp8():
    """autoconf's executor converts only the blocks' linear layers to fp8 (its grouped experts are raw weights): its
    routed GEMMs run at the bf16 peak and cast nothing. Qwen3 has no shared experts, so no expert casts are left,
    and the block differs from one with fp8 routed experts by exactly the GEMMs' rate and the routed casts."""
    c = config()
    assert not FRAMEWORKS["autoconf"].moe_fp8_routed_experts and MCORE.moe_fp8_routed_experts
    assert expert_cast_elements(QWEN3, c, routed=False) == (0.0, 0.0, 0.0, 0.0)
    executor = FRAMEWORKS["autoconf"]
    bf16 = model_pieces(QWEN3, H100, c, execution=executor).moe_rest
    fp8 = model_pieces(QWEN3, H100, c, execution=executor.replace(moe_fp8_routed_experts=True)).moe_rest
    _, routed, experts = expert_gemms(QWEN3, c)
    gemms = 3 * experts * (gemms_time(H100, "fp8", routed) - gemms_time(H100, "bf16", routed))
    casts = sum(cast_seconds(H100, c, *expert_cast_elements(QWEN3, c)))
    assert gemms < 0 < casts
    assert fp8.total - bf16.total == pytest.approx(gemms + casts)
