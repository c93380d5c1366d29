"""The training dtypes autoconf knows, with their bytes per element: one table read by the spec, the cost model,
the CLI and (through `autoconf.execute.dtypes`, the only torch map) the profiler and the executor.

`tf32` is not here: it is a matmul mode of fp32 tensors (a device's `peak_flops` may state it), not a storage dtype.
"""

from __future__ import annotations

from autoconf.errors import UserError

DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4}
DTYPES: tuple[str, ...] = tuple(DTYPE_BYTES)  # the names, in the order the CLI offers them


def dtype_bytes(name: str) -> int:
    """Bytes per element of dtype `name`; a UserError naming the known ones otherwise."""
    try:
        return DTYPE_BYTES[name]
    except KeyError:
        raise UserError(f"dtype {name!r} is not one of {', '.join(DTYPES)}") from None
