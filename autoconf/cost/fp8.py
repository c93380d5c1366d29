"""What FP8 training (plan dtype `fp8`, torchao float8 with tensorwise dynamic scaling; see `autoconf.spec.dtypes`)
adds to a block's cost: the scaling traffic of each linear layer, and what a Float8Linear saves for its backward.

The GEMMs themselves are timed by `cost/compute.py` (`gemms_time` at the `fp8` peak, reading the profile's
`matmul_size_curve` like bf16 GEMMs: no published source gives FP8 its own size curve), the FSDP gather of fp8
weights by `cost/estimate.py` (`gather_bytes`).

Scaling, as torchao 0.18 runs it (`float8_linear.py`, `matmul_with_hp_or_float8_args`): each cast of a tensor to
fp8 first reduces its absolute maximum (a read of the bf16 tensor), then reads it again and writes the fp8 copy: 2 +
2 + 1 = 5 bytes per element, memory-bound. Per linear layer of K inputs and N outputs on T tokens the forward casts
the input (T x K) and the weight (K x N); the input-gradient pass casts the output gradient (T x N) and the weight
again; the weight-gradient pass casts the output gradient once more (T x N, for the other GEMM operand layout) and
the saved bf16 input again (T x K); under TP, torchao's float8 TP styles cast each TP region's input once
(`input_cast_elements`). Under FSDP with fp8 all-gather the weight arrives already in fp8 (cast on the
rank's 1/dp shard before the gather), so its casts shrink to the shard in the forward and vanish in the backward.
Eager counts: torch.compile fuses some of these passes, so this is the upper end of the overhead.
"""

from __future__ import annotations

from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.dtypes import DTYPE_BYTES, STORAGE_BYTES, precision
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig


def block_linears(model: ModelSpec, tp: int) -> list[tuple[int, int]]:
    """(in_features, out_features) of each linear layer of one block on one TP rank: Q, K and V (three modules, as
    in autoconf's executor and torchtitan's Llama, so each casts the block input; column-parallel), the output
    projection (row-parallel), the MLP's up (and gate) matrices (column-parallel) and its down matrix (row-parallel).
    The same weights as `cost.compute.layer_gemms` (Q and the output projection at the heads' width, `q_dim`, which
    differs from the hidden size where head_dim x heads does: Qwen3-30B-A3B's 4096 against 2048)."""
    h, f, kv, q = model.hidden_size, model.ffn_hidden_size, model.kv_dim, model.q_dim
    ups = 1 if model.arch == "gpt" else 2
    return [(h, q // tp), (h, kv // tp), (h, kv // tp), (q // tp, h), *[(h, f // tp)] * ups, (f // tp, h)]


def cast_bytes_per_element(element: str) -> int:
    """Bytes moved to cast one element of dtype `element` to fp8 with a fresh tensorwise scale: the amax read, the
    cast's read and its fp8 write."""
    return 2 * STORAGE_BYTES[element] + STORAGE_BYTES["fp8"]


def scaling_time(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig) -> tuple[float, float, float]:
    """Seconds one block spends casting its linears' GEMM inputs to fp8 for one micro-batch on one TP rank, as
    (forward, input-gradient pass, weight-gradient pass), at `HBM bandwidth x efficiency["memory"]`; zero for a
    dtype without dynamic scaling. The column-parallel linears see the full sequence also under sequence
    parallelism (their input is gathered first), so every linear casts `seq_len x micro_batch` tokens."""
    if not precision(c.dtype).dynamic_scaling:
        return 0.0, 0.0, 0.0
    tokens = c.local_seq_len * c.micro_batch_size
    linears = block_linears(model, c.tp)
    outputs = sum(tokens * n for _, n in linears)
    weights = sum(k * n for k, n in linears)
    forward_inputs, backward_inputs = input_cast_elements(model, c)
    return cast_seconds(cluster, c, forward_inputs, outputs, backward_inputs, weights)


def cast_seconds(cluster: ClusterProfile, c: ParallelConfig, forward_inputs: float, outputs: float,
                 backward_inputs: float, weights: float) -> tuple[float, float, float]:
    """(forward, input-gradient, weight-gradient) seconds of casting, for linear layers whose GEMMs read
    `forward_inputs` input elements in the forward (`backward_inputs` re-cast in the weight-gradient pass), write
    `outputs` output elements (their gradients are cast in both backward passes) and hold `weights` weight elements
    (cast in the forward and the input-gradient pass, or with FSDP's fp8 all-gather only the rank's 1/dp shard in
    the forward), at `HBM bandwidth x efficiency["memory"]`; zero for a dtype without dynamic scaling."""
    p = precision(c.dtype)
    if not p.dynamic_scaling:
        return 0.0, 0.0, 0.0
    fp8_gather = p.gather == "fp8" and c.zero_sharded
    weight_forward = 1.0 / c.dp_cp if fp8_gather else 1.0
    weight_backward = 0.0 if fp8_gather else 1.0
    seconds_per_element = cast_bytes_per_element(p.element) / (cluster.device.memory_bandwidth_Bps *
                                                               cluster.eff("memory"))
    return ((forward_inputs + weight_forward * weights) * seconds_per_element,
            (outputs + weight_backward * weights) * seconds_per_element,
            (outputs + backward_inputs) * seconds_per_element)


def input_cast_elements(model: ModelSpec, c: ParallelConfig) -> tuple[float, float]:
    """Elements of linear-layer inputs cast to fp8 per block and micro-batch on one TP rank, in the forward and
    again in the weight-gradient pass.

    tp 1 (the executor's Float8Linear): every linear casts its own input in the forward and re-casts its saved
    bf16 input in the backward, so Q, K and V (and gate and up) each cast the same tensor. tp > 1: torchao's float8
    TP styles, which torchtitan applies with tensorwise float8 (`PrepareFloat8ModuleInput`,
    `Float8ColwiseParallel`, `Float8RowwiseParallel` in `torchao/float8/float8_tensor_parallel.py`): each TP region
    (attention, MLP) casts its input once, on the rank's sequence shard under sequence parallelism, before the
    all-gather, and its column-parallel linears use (and save) that fp8 tensor, so only the row-parallel linears
    (output projection, down matrix) cast their inputs in both passes. The executor does not run fp8 with TP
    (`autoconf.spec.support`)."""
    tokens = c.local_seq_len * c.micro_batch_size
    linears = block_linears(model, c.tp)
    every = sum(tokens * k for k, _ in linears)
    if c.tp == 1:
        return every, every
    h, f, t = model.hidden_size, model.ffn_hidden_size, c.tp
    row_parallel = tokens * (h // t + f // t)
    regions = 2 * tokens * h / (t if c.sequence_parallel else 1)
    return regions + row_parallel, row_parallel


def mlp_cast_elements(model: ModelSpec, c: ParallelConfig) -> tuple[float, float, float, float]:
    """The dense MLP's share of `scaling_time`'s elements, as `cast_seconds` takes them (forward inputs, outputs,
    inputs re-cast in the weight-gradient pass, weights): what an MoE block casts for its experts instead
    (`cost/moe.expert_cast_elements`)."""
    tokens = c.local_seq_len * c.micro_batch_size
    mlp = block_linears(model, c.tp)[4:]
    if c.tp == 1:
        forward_inputs = backward_inputs = sum(tokens * k for k, _ in mlp)
    else:
        backward_inputs = tokens * (model.ffn_hidden_size // c.tp)
        forward_inputs = backward_inputs + tokens * model.hidden_size / (c.tp if c.sequence_parallel else 1)
    return (forward_inputs, sum(tokens * n for _, n in mlp), backward_inputs, sum(k * n for k, n in mlp))


def float8_linear_saved_bytes(tokens: int, in_features: int, dtype: str) -> int:
    """Bytes a Float8Linear keeps for its backward beyond its weight (which it saves by reference): its input in the
    dtype's element precision (bf16 for fp8), exactly what an nn.Linear saves, so FP8 leaves the block's saved
    activations unchanged; the fp8 copies live only during the GEMM. tests/test_fp8.py counts it with autograd's
    saved-tensor hooks on torchao's own module."""
    return tokens * in_features * DTYPE_BYTES[dtype]
