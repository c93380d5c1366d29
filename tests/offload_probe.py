"""Probe for tests/test_offload.py (scripts/executor_layouts.py option "probe"): what one rank of an
offload_optimizer plan holds in host memory, counted on the executor's own tensors. At each step's clipping (the
gradients reduced and sharded, before the optimizer step) it records the bytes of this rank's local gradient
shards; after each step, of its local parameter shards and AdamW's moments (the scalar step counts left out).
`finish()` restores torch and returns {"pp": pipeline rank, "params", "grads", "moments": bytes, "devices": the
device types those tensors live on}.
"""

from torch.distributed.tensor import DTensor

from autoconf.execute import train as train_module


def _local(t):
    return t.to_local() if isinstance(t, DTensor) else t


def _distinct_params(trainer):
    seen = {}
    for model in trainer.models:
        for p in model.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


class Probe:
    def __init__(self, plan):
        self.found = {"pp": None, "params": 0, "grads": 0, "moments": 0, "devices": []}
        self.saved = (train_module.Trainer.clip, train_module.Trainer.train_step)
        clip, train_step = self.saved
        found, devices = self.found, set()
        self.devices = devices

        def counted_clip(trainer, norm):
            grads = [_local(p.grad) for p in _distinct_params(trainer) if p.grad is not None]
            found["grads"] = sum(g.numel() * g.element_size() for g in grads)
            devices.update(g.device.type for g in grads)
            return clip(trainer, norm)

        def counted_step(trainer, step):
            out = train_step(trainer, step)
            found["pp"] = trainer.coords["pp"]
            params = [_local(p) for p in _distinct_params(trainer)]
            found["params"] = sum(p.numel() * p.element_size() for p in params)
            moments = [_local(t) for opt in trainer.optimizers for state in opt.state.values()
                       for key, t in state.items() if key in ("exp_avg", "exp_avg_sq")]
            found["moments"] = sum(t.numel() * t.element_size() for t in moments)
            devices.update(t.device.type for t in params + moments)
            return out

        train_module.Trainer.clip = counted_clip
        train_module.Trainer.train_step = counted_step

    def finish(self) -> dict:
        train_module.Trainer.clip, train_module.Trainer.train_step = self.saved
        return {**self.found, "devices": sorted(self.devices)}
