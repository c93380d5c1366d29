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
