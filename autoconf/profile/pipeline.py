"""What torch.distributed.pipelining's runtime costs per action, by schedule.

Every rank of the job joins a two-rank pipeline (ranks 2k and 2k+1; all pipelines at once, an odd last rank only
waits) whose stages are an 8 x 8 linear layer, so the compute is negligible and what remains is the runtime: the
Python that drives each forward or backward action, the send/receive set-up and waits of gloo's point-to-point ops,
gradient scaling. Per schedule, vpp 1 for the single-stage classes and ZB-H1, 2 for the multi-stage ones (the
multi-stage runtime costs several times more per action: measured 0.45-0.65 ms against 0.14 ms CPU per action on
an idle 2-core host). The time is the rank process's CPU time (process_time: the gloo threads included), per action,
the median over steps and ranks; the cost model adds it, divided by the CPU share, to every action of a pipelined
stage (profile table `compute.pipeline_action_s`). CPU profiles only: on a GPU the host-side runtime overlaps the
kernels it launches.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from autoconf.spec.schedules import SCHEDULES, schedule_spec
from autoconf.profile.timing import median

MICROBATCHES = 8
WIDTH = 8


def _sum_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return output.sum()


def measure_pipeline_actions(device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """{schedule name: CPU seconds of this rank's two-rank pipeline per forward and per backward(-input) pass of
    each of its stages (a zero-bubble schedule's weight-gradient actions are folded into those)}; every rank must
    call it (it creates process groups). Ranks without a partner return {}."""
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining.schedules import PipelineScheduleSingle, get_schedule_class

    rank, world = dist.get_rank(), dist.get_world_size()
    groups = [dist.new_group([a, a + 1]) for a in range(0, world - 1, 2)]
    runs = [name for name in SCHEDULES if schedule_spec(name).torch_class]  # those torch has a class for
    if rank // 2 >= len(groups):
        for _ in runs:
            dist.barrier()
        return {}
    group, pp_rank = groups[rank // 2], rank % 2
    out = {}
    for name in runs:
        spec = schedule_spec(name)
        cls = get_schedule_class(spec.torch_class)
        vpp = spec.chunks[0]
        placement = spec.stage_to_rank(2, vpp)
        ids = [s for s, r in enumerate(placement) if r == pp_rank]
        stages = [PipelineStage(torch.nn.Linear(WIDTH, WIDTH).to(device), s, 2 * vpp, device, group=group)
                  for s in ids]
        if issubclass(cls, PipelineScheduleSingle):
            schedule = cls(stages[0], n_microbatches=MICROBATCHES, loss_fn=_sum_loss)
        else:
            schedule = cls(stages, n_microbatches=MICROBATCHES, loss_fn=_sum_loss)
        x = torch.randn(MICROBATCHES, WIDTH, device=device)
        first, last = 0 in ids, 2 * vpp - 1 in ids
        args = (x,) if first else ()
        kwargs = {"target": x} if last else {}
        times = []
        for i in range(warmup + repeats):
            t0 = time.process_time()
            schedule.step(*args, **kwargs)
            if i >= warmup:
                times.append(time.process_time() - t0)
        # Per forward and per backward(-input) pass, as the cost model charges it (W actions folded in).
        out[name] = median(times) / (len(ids) * MICROBATCHES * 2)
        dist.barrier()
    return out
