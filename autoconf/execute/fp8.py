"""FP8 training (plan dtype `fp8`) through torchao's float8 training: the one place the executor touches torchao.

`apply_float8(model, config)` swaps every linear layer of the transformer blocks for torchao's Float8Linear
(`torchao.float8.convert_to_float8_training`, tensorwise dynamic scaling: what `autoconf.spec.dtypes` and
`cost/fp8.py` describe); the embedding and the LM head stay bf16 (torchtitan filters the head, "output", the same
way). Under FSDP (ZeRO >= 1 over dp > 1) the weights are all-gathered in fp8 (`enable_fsdp_float8_all_gather`).
It runs after the model is materialised and before FSDP wraps it (torchtitan's order: converters, then
parallelisms).

Where it runs: on CUDA GPUs of compute capability >= 8.9 (Hopper, Ada and newer; `torch._scaled_mm`'s FP8 kernels).
On CPU the FP8 GEMM is emulated (torchao's `emulate`: the same casts, amax scales and fp8 rounding of the inputs,
the product taken in high precision): torch 2.13 does run `_scaled_mm` on CPU, but about 0.3 s for a 64x64x176
GEMM (measured on this machine under load), too slow even for tests. tests/test_fp8.py uses the emulation to check
the numerics against bf16, the casts and the bytes saved for the backward. TP is not combined with it here (torchao's TP needs its
own Float8ColwiseParallel / Float8RowwiseParallel styles): `autoconf.spec.support` refuses fp8 with tp > 1.
"""

from __future__ import annotations

import torch
from torch import nn

from autoconf.errors import UserError

# torch._scaled_mm's CUDA kernels need both GEMM dimensions of a weight to be multiples of 16.
FP8_ALIGN = 16
MIN_CAPABILITY = (8, 9)


def fp8_device_problem(device: torch.device) -> str | None:
    """Why `device` cannot run FP8 GEMMs (one line), or None: a CUDA device below compute capability 8.9. CPU runs
    them (slowly) through torch's CPU `_scaled_mm`."""
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_CAPABILITY:
            return (f"dtype fp8 needs FP8 tensor cores (compute capability >= 8.9); {torch.cuda.get_device_name(device)}"
                    f" has {capability[0]}.{capability[1]}: plan it in bf16")
    return None


def is_block_linear(module: nn.Module, fqn: str) -> bool:
    """Whether torchao converts this module: a linear layer inside a transformer block (`layers.*`, and the MTP
    modules' blocks and projections) whose two dimensions FP8 GEMMs accept; never the LM head, nor an MoE router
    (its scores choose the experts: torchtitan keeps it in high precision too). The routed experts are 3-D weights,
    not linear layers: they stay bf16."""
    mtp = fqn.startswith("mtp.") and (".block." in fqn or fqn.endswith(".eh_proj"))
    in_block = fqn.startswith("layers.") or mtp
    return (isinstance(module, nn.Linear) and in_block and not fqn.endswith(".router") and
            module.in_features % FP8_ALIGN == 0 and module.out_features % FP8_ALIGN == 0)


def apply_float8(model: nn.Module, fsdp: bool, device: torch.device) -> nn.Module:
    """Converts the block linears of `model` (in place) to torchao Float8Linear with tensorwise dynamic scaling and,
    when `fsdp`, fp8 all-gather of their weights; on CPU with the GEMM emulated. Raises a UserError when torchao is missing or the device has no
    FP8."""
    problem = fp8_device_problem(device)
    if problem:
        raise UserError(problem)
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise UserError("dtype fp8 trains through torchao's float8 training: pip install 'autoconf[fp8]' "
                        "(torchao)") from None
    config = Float8LinearConfig(enable_fsdp_float8_all_gather=fsdp, emulate=device.type == "cpu")
    return convert_to_float8_training(model, config=config, module_filter_fn=is_block_linear)
