"""Which model `autoconf profile --model` times: the model's own blocks; of a mixture-of-experts model also its MoE
layer in two blocks (profile/moe_blocks.py), the routed experts at every expert-parallel layout, routed dropless.
Torch-free, so that the launcher checks a model before starting anything.

The end-to-end reference runs use the same model, so every overhead they derive is over blocks the table holds;
the FSDP and tensor-parallel references use its dense view (`dense_view`), whose layers the table also holds.
"""

from __future__ import annotations

import dataclasses

from autoconf.errors import UserError
from autoconf.spec.model import ModelSpec

REFERENCE_LAYERS = 4  # depth of the model whose chained blocks are compared with the table (profile/overheads.py)


def timed_model(model: ModelSpec) -> ModelSpec:
    """The model whose blocks the profiler builds and times (module docstring): without its multi-token-prediction
    modules (blocks too, timed as the model's own) and, under capacity-factor routing, routed dropless (the
    executor's routing; the cost model caps the load imbalance at the capacity). Raises a UserError for latent
    attention, which the profiler's attention block (grouped-query, profile/compute.py) does not time."""
    if model.mla:
        raise UserError(f"the profiler times the executor's blocks: {model.name} uses multi-head latent attention, "
                        f"whose blocks the profiler does not build (it times grouped-query attention); profile a "
                        f"model with grouped-query attention")
    moe = model.moe and dataclasses.replace(model.moe, capacity_factor=None)
    return dataclasses.replace(model, moe=moe, mtp_num_layers=0) if model.moe or model.mtp_num_layers else model


def dense_view(model: ModelSpec) -> ModelSpec:
    """`model` with a dense MLP of its ffn_hidden_size in every layer (what the FSDP and tensor-parallel references
    build of an MoE model)."""
    return dataclasses.replace(model, moe=None) if model.moe else model


def timed_note(model: ModelSpec) -> str | None:
    """One line saying what the profile leaves to the cost model of `model`, or None when nothing."""
    if model.moe is None:
        return None
    capacity = (f"; routed dropless (capacity_factor {model.moe.capacity_factor} caps the load imbalance the cost "
                f"model applies)" if model.moe.capacity_factor is not None else "")
    return (f"{model.name} is a mixture-of-experts model: the profile times its MoE layer (router, shared experts) "
            f"and its routed experts at every expert-parallel layout on one rank with balanced routing; the "
            f"all-to-all comes from the network profile (on CPU ranks, measured in place at tp 1){capacity}")


def cpu_rank_memory_bytes(model: ModelSpec, dtype: str) -> float:
    """At least what one CPU rank of the profiler holds at once for `model` (its `timed_model`) in `dtype`, the more
    of the two references it builds of the executor's model with its embedding and head
    (`overheads.measure_reference`): one layer with weights, gradients and AdamW's two moments, plus the gradient
    norm's two float64 copies of its largest tensor (the optimizer reference); REFERENCE_LAYERS layers with weights
    and gradients (the chained reference; with an MoE layer among them, more than any "experts" entry holds). A
    lower bound: activations and other temporaries come on top."""
    from autoconf.spec.dtypes import dtype_bytes

    timed = timed_model(model)
    ends, size = timed.embedding_params() + timed.head_params(), dtype_bytes(dtype)
    first = timed.layer_params(0)
    largest = timed.hidden_size * max(timed.vocab_size, timed.ffn_hidden_size, timed.q_dim)
    optimizer_reference = 4 * (ends + first) * size + 2 * 8 * largest
    chained = sum(timed.layer_params(i) for i in range(min(timed.num_layers, REFERENCE_LAYERS)))
    chained_reference = 2 * (ends + chained) * size
    return float(max(optimizer_reference, chained_reference))
