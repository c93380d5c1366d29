"""Probe for tests/test_memory_pipeline_buffers.py (scripts/executor_layouts.py option "probe"): what torch's
pipeline stages of this rank hold to pass activations and gradients.

After every forward and backward of one of this rank's stages (torch.distributed.pipelining's
`forward_one_chunk` and `backward_one_chunk`, the points where a stage's holdings change), takes an inventory by
storage (a storage shared by several tensors counts once) over every stage of the rank seen so far:

    receive     every stage's activation and gradient receive buffers (`args_recv_info`, `grad_recv_info`)
    outputs     the outputs a stage keeps until their micro-batch's backward (`fwd_cache`) on stages that send
                them on (not the last)
    sending     input gradients waiting for their send (`bwd_cache`)
    inputs      how many of the receive buffers are the input of a micro-batch in flight (in `fwd_cache`)

`finish()` restores torch and returns this rank's peaks over the step: {"held": bytes of receive + outputs +
sending, "receive": bytes, "outputs": the most micro-batch outputs kept at once, "unit": bytes of one buffer}.
"""

import torch
from torch.distributed.pipelining.stage import _PipelineStageBase

STAGES: list = []
PEAKS: dict = {}


def _add(seen: dict, t) -> None:
    if isinstance(t, torch.Tensor):
        t = t.to_local() if hasattr(t, "to_local") else t
        storage = t.untyped_storage()
        if storage.nbytes():
            seen[storage.data_ptr()] = storage.nbytes()
    elif isinstance(t, (tuple, list)):
        for x in t:
            _add(seen, x)


def inventory() -> dict:
    """This rank's pipeline holdings now."""
    receive: dict = {}
    kept: dict = {}
    outputs = 0
    for stage in STAGES:
        for infos in (*stage.args_recv_info.values(), *stage.grad_recv_info.values()):
            for info in infos:
                _add(receive, getattr(info, "buffer", None))
        if not stage.is_last:
            for output, _ in stage.fwd_cache.values():
                _add(kept, output)
            outputs += len(stage.fwd_cache)
        for grads in stage.bwd_cache.values():
            _add(kept, grads)
    unit = max(receive.values(), default=0)
    return {"held": sum({**receive, **kept}.values()), "receive": sum(receive.values()), "outputs": outputs,
            "unit": unit}


def _sampled(fn):
    def wrapper(stage, *args, **kwargs):
        if stage not in STAGES:
            STAGES.append(stage)
        out = fn(stage, *args, **kwargs)
        for key, value in inventory().items():
            PEAKS[key] = max(PEAKS.get(key, 0), value)
        return out
    return wrapper


class Probe:
    POINTS = ("forward_one_chunk", "backward_one_chunk")

    def __init__(self, plan):
        PEAKS.clear()
        STAGES.clear()
        self.saved = [(name, getattr(_PipelineStageBase, name)) for name in self.POINTS]
        for name, fn in self.saved:
            setattr(_PipelineStageBase, name, _sampled(fn))

    def finish(self) -> dict:
        for name, fn in self.saved:
            setattr(_PipelineStageBase, name, fn)
        STAGES.clear()
        return dict(PEAKS)
