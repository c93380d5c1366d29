"""Which model `autoconf profile --model` times: the model's own blocks, or for a mixture-of-experts model its dense
view. Torch-free, so that the launcher checks a model before starting anything.

An MoE model's profile times its attention, norms, embedding and head, and as "mlp" the dense SwiGLU of its
ffn_hidden_size (the MLP of its leading dense layers); the end-to-end and tensor-parallel reference runs use the
same dense view, so every overhead they derive is over blocks the table holds. The routed experts (router, grouped
expert GEMMs, the all-to-all) are not timed.
"""

from __future__ import annotations

import dataclasses

from autoconf.errors import UserError
from autoconf.spec.model import ModelSpec

REFERENCE_LAYERS = 4  # depth of the model whose chained blocks are compared with the table (profile/overheads.py)


def timed_model(model: ModelSpec) -> ModelSpec:
    """The model whose blocks the profiler builds and times (module docstring). Raises a UserError for what the
    executor's blocks cannot build, and for latent attention, which the profiler's attention block (grouped-query,
    profile/compute.py) does not time."""
    from autoconf.spec.support import model_unsupported_reason

    # the profiler times blocks: the MTP modules are blocks too, timed as the model's own
    dense = dataclasses.replace(model, moe=None, mtp_num_layers=0) if model.moe or model.mtp_num_layers else model
    reason = model_unsupported_reason(dense) or (
        f"{model.name} uses multi-head latent attention, whose blocks the profiler does not build (it times "
        f"grouped-query attention); profile a model with grouped-query attention" if model.mla else None)
    if reason:
        raise UserError(f"the profiler times the executor's blocks: {reason}")
    return dense


def timed_note(model: ModelSpec) -> str | None:
    """One line saying what is not timed of `model`, or None when every block is."""
    if model.moe is None:
        return None
    return (f"{model.name} is a mixture-of-experts model: the profile times its attention, norms, embedding, head "
            f"and dense MLP (ffn {model.ffn_hidden_size}); its routed experts (router, expert GEMMs, all-to-all) are "
            f"not timed")


def cpu_rank_memory_bytes(model: ModelSpec, dtype: str) -> float:
    """At least what one CPU rank of the profiler holds at once for `model` (its `timed_model`) in `dtype`, the more
    of the two references it builds of the executor's model with its embedding and head
    (`overheads.measure_reference`): one layer with weights, gradients and AdamW's two moments, plus the gradient
    norm's two float64 copies of its largest tensor (the optimizer reference); REFERENCE_LAYERS layers with weights
    and gradients (the chained reference). A lower bound: activations and other temporaries come on top."""
    from autoconf.spec.dtypes import dtype_bytes

    timed = timed_model(model)
    ends, layer, size = timed.embedding_params() + timed.head_params(), timed.layer_params(), dtype_bytes(dtype)
    largest = timed.hidden_size * max(timed.vocab_size, timed.ffn_hidden_size, timed.q_dim)
    optimizer_reference = 4 * (ends + layer) * size + 2 * 8 * largest
    chained_reference = 2 * (ends + min(timed.num_layers, REFERENCE_LAYERS) * layer) * size
    return float(max(optimizer_reference, chained_reference))
