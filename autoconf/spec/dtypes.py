"""The training dtypes autoconf knows: one table read by the spec, the cost model, the CLI and (through
`autoconf.execute.dtypes`, the only torch map) the profiler and the executor.

A plan's `dtype` names a precision recipe, not only a storage type. For every name the table says which dtype each
kind of tensor has:

| dtype | parameters (sharded master) | working weights | GEMM inputs of the linears | saved activations | gradients (reduced) | optimizer states |
|---|---|---|---|---|---|---|
| fp32 | fp32 | fp32 | fp32 | fp32 | fp32 | fp32 |
| bf16 / fp16 | fp32 | bf16 / fp16 | bf16 / fp16 | bf16 / fp16 | fp32 | fp32 |
| fp8 | fp32 | bf16 | fp8 (e4m3 forward, e5m2 gradients) | bf16 | fp32 | fp32 |
| fp8-deepseek | fp32 | bf16 | fp8 (e4m3, 1x128 / 128x128 scales) | bf16; linear inputs fp8, attention output e5m6 | fp32 | fp32 master, bf16 moments |

`fp8` is torchao's float8 training (`torchao.float8.convert_to_float8_training`, tensorwise dynamic scaling): every
linear layer of a transformer block casts its input and weight to fp8 right before the GEMM, with a scale from the
tensor's absolute maximum (amax) computed at that moment, and its output gradient likewise in the backward; the
weights stay in bf16/fp32 (master weights in fp32 under FSDP2 mixed precision), and Float8Linear saves its
high-precision (bf16) input for the backward (torchao 0.18 `float8_linear.py`, `matmul_with_hp_or_float8_args`
saves `input_hp` and `weight_hp_t` and re-casts in the backward), so saved activations keep the bf16 size. The
attention core, the norms, the embedding and the LM head stay bf16. Under FSDP the parameters are all-gathered in
fp8 (torchao `enable_fsdp_float8_all_gather`: the weight is cast on its shard before the gather, half the bytes of
bf16). In a `Precision`: `element` is the dtype of activations, working weights and the P2P/TP traffic, `gemm` the
device peak the linears' GEMMs run at, `gather` the dtype FSDP gathers parameters in.

`fp8-deepseek` is the recipe of the DeepSeek-V3 technical report (arXiv 2412.19437 v1, Sec. 3.3): FP8 GEMMs with
fine-grained online scaling (1x128 activation tiles, 128x128 weight blocks); the activations a linear layer caches
for its backward are kept in fp8 (`cached`), except the attention output, the input of the linear after the
attention core, which is kept in a customised E5M6 format (`attention_output`, 12 bits); the AdamW moments are bf16
(`moments`) while master weights and gradients stay fp32; the MoE dispatch sends fp8 tokens and the backward the
fp8 gradient before the experts' down projections (`dispatch`), the combine and its backward stay bf16. GEMMs,
scaling and gathers are costed as under fp8. autoconf's executor does not run it (`autoconf.spec.support`); the cost
model describes it in the Megatron memory layout. The 1x128 tiles' fp32 scales (3% of an fp8 tensor) are not
counted.

`tf32` is not here: it is a matmul mode of fp32 tensors (a device's `peak_flops` may state it), not a storage dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoconf.errors import UserError

# Bytes of one element of each storage type a precision names (keys of a device's `peak_flops` besides tf32).
STORAGE_BYTES: dict[str, float] = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1, "e5m6": 1.5}


@dataclass(frozen=True)
class Precision:
    """What one plan dtype means for each kind of tensor (the table in this module's docstring)."""

    name: str
    element: str  # activations, working weights, P2P and TP traffic; the attention core and norms compute in it
    gemm: str  # the device peak (`peak_flops` key) the block's linear layers run their GEMMs at
    gather: str  # the dtype FSDP all-gathers parameters in
    dynamic_scaling: bool = False  # GEMM inputs cast with a scale from their amax, in forward and backward
    cached: str = ""  # the activations a linear layer keeps for its backward ("": the element dtype)
    attention_output: str = ""  # the attention core's output kept for the output projection ("": `cached`)
    moments: str = "fp32"  # the optimizer's moments (AdamW's first and second)
    dispatch: str = ""  # what the MoE all-to-all sends towards the experts, in both passes ("": the element dtype)

    @property
    def cached_dtype(self) -> str:
        return self.cached or self.element

    @property
    def attention_output_dtype(self) -> str:
        return self.attention_output or self.cached_dtype

    @property
    def dispatch_dtype(self) -> str:
        return self.dispatch or self.element


PRECISIONS: dict[str, Precision] = {
    "bf16": Precision("bf16", "bf16", "bf16", "bf16"),
    "fp16": Precision("fp16", "fp16", "fp16", "fp16"),
    "fp32": Precision("fp32", "fp32", "fp32", "fp32"),
    "fp8": Precision("fp8", element="bf16", gemm="fp8", gather="fp8", dynamic_scaling=True),
    "fp8-deepseek": Precision("fp8-deepseek", element="bf16", gemm="fp8", gather="fp8", dynamic_scaling=True,
                              cached="fp8", attention_output="e5m6", moments="bf16", dispatch="fp8"),
}
DTYPES: tuple[str, ...] = tuple(PRECISIONS)  # the names, in the order the CLI offers them
# The dtypes the profiler times its compute tables in: those whose GEMMs run in their element dtype (it times plain
# modules; an fp8 plan is predicted from the data-sheet model, `cost/compute.py` and `cost/fp8.py`).
PROFILED_DTYPES: tuple[str, ...] = tuple(n for n, p in PRECISIONS.items() if p.gemm == p.element)
# Bytes per element of the tensors a model of each dtype holds (activations, working weights, P2P/TP traffic).
DTYPE_BYTES: dict[str, int] = {name: STORAGE_BYTES[p.element] for name, p in PRECISIONS.items()}


def precision(name: str) -> Precision:
    """The recipe of plan dtype `name`; a UserError naming the known ones otherwise."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise UserError(f"dtype {name!r} is not one of {', '.join(DTYPES)}") from None


def dtype_bytes(name: str) -> int:
    """Bytes per element of the activations and working weights of dtype `name` (2 for fp8: only GEMM inputs and
    FSDP gathers are fp8); a UserError naming the known ones otherwise."""
    return STORAGE_BYTES[precision(name).element]


def gather_bytes(name: str) -> int:
    """Bytes per parameter an FSDP all-gather moves under dtype `name` (1 for fp8, 2 for bf16)."""
    return STORAGE_BYTES[precision(name).gather]


def dtype_problem(name: str, peak_flops: dict, device: str) -> str | None:
    """Why a device with these `peak_flops` cannot train in dtype `name` (one line saying what would), or None.
    A dtype needs a peak for its GEMMs and for its elementwise dtype; fp8 needs FP8 tensor cores, which a profile
    states as `device.peak_flops.fp8` (Hopper / Ada and newer; not A100, not a CPU)."""
    p = precision(name)
    missing = [d for d in dict.fromkeys((p.gemm, p.element)) if d not in peak_flops]
    if not missing:
        return None
    if p.gemm == "fp8" and "fp8" in missing:
        return (f"--dtype fp8 needs FP8 tensor cores, but device {device} states no FP8 rate (device.peak_flops.fp8;"
                f" FP8 GEMMs need an H100/H200-class GPU, compute capability >= 8.9); use bf16 on it")
    return f"device {device} has no peak for {', '.join(missing)} (dtype {name}); it has {', '.join(peak_flops)}"


def check_dtype(name: str, peak_flops: dict, device: str) -> None:
    """Raises `dtype_problem` as a UserError."""
    problem = dtype_problem(name, peak_flops, device)
    if problem:
        raise UserError(problem)


def default_dtype(cluster) -> str:
    """The dtype planned without --dtype: fp32 on CPU ranks (what the bundled executor trains in there), else
    bf16."""
    return "fp32" if cluster.device.kind == "cpu" else "bf16"


def check_trainable_dtype(name: str, cluster) -> None:
    """A dtype a search or a validation may plan in on `cluster` (a ClusterProfile): one the device has a rate for
    (fp8 only where it runs), and fp32 on CPU ranks, where the bundled executor trains in fp32 (`estimate` takes
    any, for what-if numbers)."""
    check_dtype(name, cluster.device.peak_flops, cluster.device.name)
    if cluster.device.kind == "cpu" and name != "fp32":
        raise UserError(f"the bundled executor trains in fp32 on CPU ranks, so a {name} plan for {cluster.name} "
                        f"could not run as planned; drop --dtype / --fix dtype (fp32) or use `estimate` for what-if "
                        f"numbers")
