"""How many micro-batches' losses the last pipeline stage holds at once (`schedules.held_losses`), against torch's
own schedules: the last stage keeps each micro-batch's output (the logits) in its `fwd_cache` from its forward until
its backward. Under 1F1B one; under GPipe every micro-batch of the step (found by a review: the estimate counted one
micro-batch's loss under every schedule, so a GPipe plan of llama3-8b at 8k tokens read 56.6 GiB where it needs 86)."""

from __future__ import annotations

import pytest

from autoconf.spec.schedules import held_losses
from rank_helpers import run_ranks

TORCH_SCHEDULES = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B"}


def _last_stage_outputs(rank: int, world: int, queue, schedule: str, microbatches: int) -> None:
    """On two gloo ranks, one linear stage each: the most outputs rank 1's stage keeps at once over a step."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed import pipelining

    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    hidden, vocab, seq = 16, 32, 8
    module = torch.nn.Linear(hidden, hidden if rank == 0 else vocab)
    stage = pipelining.PipelineStage(module, rank, world, torch.device("cpu"))
    loss = (lambda out, target: F.cross_entropy(out.reshape(-1, vocab), target.reshape(-1)))
    runner = getattr(pipelining, TORCH_SCHEDULES[schedule])(stage, microbatches, loss_fn=loss)
    most = [0]
    backward = stage.backward_one_chunk

    def counted(*args, **kwargs):
        most[0] = max(most[0], len(stage.fwd_cache))
        return backward(*args, **kwargs)

    stage.backward_one_chunk = counted
    if rank == 0:
        runner.step(torch.randn(microbatches, seq, hidden))
    else:
        runner.step(target=torch.randint(0, vocab, (microbatches, seq)))
    dist.destroy_process_group()
    queue.put((rank, most[0]))


@pytest.mark.slow
@pytest.mark.parametrize("schedule", list(TORCH_SCHEDULES))
def test_the_losses_the_last_stage_holds_are_torchs(schedule):
    """torch's GPipe keeps all 4 micro-batches' outputs on the last stage before its first backward, its 1F1B one."""
    seen = dict(run_ranks(_last_stage_outputs, 2, schedule, 4))
    assert seen[1] == held_losses(schedule, 2, 1, 4, 1) == (4 if schedule == "gpipe" else 1)
    assert held_losses(schedule, 2, 1, 4, 0) == 0


@pytest.mark.parametrize("name, vpp, chunks, overlap, held", [
    ("1f1b", 1, 1, False, 1), ("gpipe", 1, 1, False, 16), ("looped-bfs", 2, 1, False, 16),
    ("interleaved-1f1b", 2, 1, False, 1), ("zb-h1", 1, 1, False, 1), ("seq1f1b", 1, 4, False, 4),
    ("interleaved-1f1b", 2, 1, True, 1), ("dualpipev", 2, 1, False, 1), ("zbv", 2, 1, False, 1)])
def test_held_losses_of_each_schedule(name, vpp, chunks, overlap, held):
    """On the rank of the last stage: one under the one-forward-one-backward families, every micro-batch where all
    forwards of the last stage run first, every chunk of a micro-batch under seq1f1b (its chunks' backwards run in
    reverse after the last chunk's forward); none on the other ranks. An overlapped pair (Megatron's combined 1F1B,
    `overlap`) ends its forward's loss after its backward's began with the previous one: still one at a time."""
    from autoconf.spec.schedules import stage_to_rank

    owner = stage_to_rank(name, 4, vpp)
    last = owner[4 * vpp - 1]
    assert held_losses(name, 4, vpp, 16, last, chunks, overlap) == held
    assert all(held_losses(name, 4, vpp, 16, r, chunks, overlap) == 0 for r in range(4) if r != last)
