"""Probe for tests/test_memory_fsdp.py (scripts/executor_layouts.py option "probe"): the parameter, gradient and
optimizer bytes each rank holds.

While its plan trains, takes an inventory of the bytes this rank holds, by storage (a storage shared by several
tensors counts once), at every point where FSDP's unsharded buffers are largest: just before each FSDP unit's
post-forward and post-backward (the unit is gathered, the next one may be prefetched, its unsharded gradient is
complete; under pipelining also the stage's one reduction after its last backward), after each backward call, after
the pipeline's step and after the optimizer step. Categories:

    params      the sharded fp32 parameters, every unsharded (gathered) copy and the all-gather outputs not yet
                freed (a prefetched unit's, or the previous unit's kept while the next gathers)
    grads       the sharded gradients, every unsharded gradient (accumulated or just computed) and the
                reduce-scatter inputs FSDP keeps until the next unit reduces
    optimizer   the optimizer's state tensors

FSDP2's own objects (`FSDPParam`: `sharded_param`, `_unsharded_param`, `unsharded_accumulated_grad`; the param
group's all-gather result; the shared all-gather and reduce-scatter states) are what torch's `FSDPMemTracker`
reads as well. `finish()` restores torch and returns this rank's peaks, {category: bytes}.
"""

import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

from autoconf.execute import train as train_module

TRAINER: list = []
PEAKS: dict = {}


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _add(seen: dict, t) -> None:
    if t is None:
        return
    t = _local(t)
    storage = t.untyped_storage()
    if storage.nbytes():
        seen[storage.data_ptr()] = storage.nbytes()


def inventory() -> dict:
    """Bytes by category held now by this rank's chunks and optimizers."""
    if not TRAINER:
        return {}
    trainer = TRAINER[0]
    params: dict = {}
    grads: dict = {}
    for model in trainer.models:
        for module in model.modules():
            if not isinstance(module, FSDPModule):
                continue
            state = module._get_fsdp_state()
            group = state._fsdp_param_group
            comm = getattr(state, "_comm_ctx", None)
            gathering = getattr(comm, "all_gather_state", None)  # set up at FSDP's lazy init
            if gathering is not None:
                _add(params, gathering.all_gather_result.all_gather_output)
            for rs in getattr(comm, "reduce_scatter_states", ()):
                _add(grads, rs.reduce_scatter_input)
            if group is not None and group._all_gather_result is not None:
                _add(params, group._all_gather_result.all_gather_output)
            for fp in (group.fsdp_params if group is not None else ()):
                _add(params, fp.sharded_param)
                _add(grads, fp.sharded_param.grad)
                _add(grads, fp.unsharded_accumulated_grad)
                if hasattr(fp, "_unsharded_param"):
                    _add(params, fp._unsharded_param)
                    _add(grads, fp._unsharded_param.grad)
    optimizer: dict = {}
    for opt in trainer.optimizers:
        for state in opt.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    _add(optimizer, value)
    return {"params": sum(params.values()), "grads": sum(grads.values()), "optimizer": sum(optimizer.values())}


def sample() -> None:
    for key, value in inventory().items():
        PEAKS[key] = max(PEAKS.get(key, 0), value)


def _sampled(fn, before: bool):
    """`fn` with an inventory taken before (or after) each call."""
    def wrapper(*args, **kwargs):
        if before:
            sample()
        out = fn(*args, **kwargs)
        if not before:
            sample()
        return out
    return wrapper


class Probe:
    # (owner, attribute, sample before the call?): FSDP units just before their post-forward and post-backward; each
    # backward call, the pipeline's step and the optimizer step (its state exists) just after.
    POINTS = ((FSDPParamGroup, "post_backward", True), (FSDPParamGroup, "post_forward", True),
              (torch.autograd, "backward", False), (train_module.Trainer, "train_step", False),
              (train_module.Trainer, "_pipeline", False))

    def __init__(self, plan):
        PEAKS.clear()
        TRAINER.clear()
        self.saved = [(owner, name, getattr(owner, name)) for owner, name, _ in self.POINTS]
        for (owner, name, before), (_, _, fn) in zip(self.POINTS, self.saved):
            setattr(owner, name, _sampled(fn, before))
        init = train_module.Trainer.__init__
        self.saved.append((train_module.Trainer, "__init__", init))

        def remembered_init(trainer, *args, **kwargs):
            init(trainer, *args, **kwargs)
            TRAINER[:] = [trainer]

        train_module.Trainer.__init__ = remembered_init

    def finish(self) -> dict:
        for owner, name, fn in self.saved:
            setattr(owner, name, fn)
        TRAINER.clear()
        return dict(PEAKS)
