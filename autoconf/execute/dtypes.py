"""The torch dtype of each of autoconf's dtype names (`autoconf.spec.dtypes`): the one torch map, used by the
profiler and the executor."""

from __future__ import annotations

import torch

from autoconf.spec.dtypes import DTYPES, PRECISIONS

STORAGE_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# A plan dtype's element dtype: what the model's weights and activations are held in (bf16 under fp8, whose GEMM
# inputs torchao casts to fp8 inside each linear, `autoconf.execute.fp8`).
TORCH_DTYPES: dict[str, torch.dtype] = {name: STORAGE_DTYPES[PRECISIONS[name].element] for name in DTYPES}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of autoconf dtype `name`; a ValueError naming the known ones otherwise."""
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}") from None
