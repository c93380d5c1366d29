"""How many micro-batches' losses the last pipeline stage holds at once (`schedules.held_losses`), against torch's
own schedules: the last stage keeps each micro-batch's output (the logits) in its `fwd_cache` from its forward until
its backward. Under 1F1B one; under GPipe every micro-batch of the step (found by a review: the estimate counted one
micro-batch's loss under every schedule, so a GPipe plan of llama3-8b at 8k tokens read 56.6 GiB where it needs 86).

The multi-stage schedules run on two ranks of two stages each (torch's runtime, `_PipelineScheduleRuntime`). Where the
backward splits, the input-gradient step I pops the output from `fwd_cache` (stage.py `backward_one_chunk`), so the
count ends at I; until W the stage keeps `backward_state` (its inputs and, through the head's autograd node, the
gradient of its output: logits-sized on a real model's last stage), counted here apart."""

from __future__ import annotations

import pytest

from autoconf.spec.schedules import held_loss_states, held_losses, stage_to_rank
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


# (schedule, micro-batches, outputs the last stage holds at once, of them awaiting W at once) on 2 ranks x 2 stages.
MULTI_STAGE = [("interleaved-1f1b", 4, 1, 0), ("interleaved-1f1b", 8, 1, 0), ("looped-bfs", 4, 4, 0),
               ("looped-bfs", 8, 8, 0), ("zb-h1", 4, 1, 2), ("zb-h1", 8, 1, 2), ("zbv", 4, 1, 1), ("zbv", 8, 1, 1),
               ("dualpipev", 4, 1, 1), ("dualpipev", 8, 1, 1)]


def _multi_stage_outputs(rank: int, world: int, queue, cases) -> None:
    """On two gloo ranks, two linear stages each (placed as autoconf places them), each case's schedule run for one
    step: {(schedule, micro-batches): (the most outputs the last stage keeps in `fwd_cache` at once, the most of its
    micro-batches past I awaiting W at once)} from the rank holding the last stage, {} from the other."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed import pipelining
    from torch.distributed.pipelining.schedules import get_schedule_class

    from autoconf.spec.schedules import schedule_spec

    dist.init_process_group("gloo", rank=rank, world_size=world)
    hidden, vocab, rows, last = 16, 32, 8, 2 * world - 1
    seen = {}
    for name, microbatches in cases:
        torch.manual_seed(0)
        stages = [pipelining.PipelineStage(torch.nn.Linear(hidden, vocab if s == last else hidden), s, last + 1,
                                           torch.device("cpu"))
                  for s, r in enumerate(stage_to_rank(name, world, 2)) if r == rank]
        runner = get_schedule_class(schedule_spec(name).torch_class)(stages, microbatches, loss_fn=F.cross_entropy)
        ends = [s for s in stages if s.stage_index == last]
        most = [0, 0]
        for stage in ends:
            def counted(step, stage=stage):
                def run(*args, **kwargs):
                    out = step(*args, **kwargs)
                    most[:] = max(most[0], len(stage.fwd_cache)), max(most[1], len(stage.backward_state))
                    return out
                return run

            stage.forward_one_chunk = counted(stage.forward_one_chunk)
            stage.backward_one_chunk = counted(stage.backward_one_chunk)
        # 2-D micro-batches: a linear stage's output is then no view, which the I step's in-place detach refuses
        args = (torch.randn(microbatches * rows, hidden),) if any(s.stage_index == 0 for s in stages) else ()
        target = {"target": torch.randint(0, vocab, (microbatches * rows,))} if ends else {}
        runner.step(*args, return_outputs=False, **target)
        if ends:
            seen[name, microbatches] = tuple(most)
    dist.destroy_process_group()
    queue.put((rank, seen))


@pytest.fixture(scope="module")
def multi_stage_torch():
    """One two-rank run of every multi-stage case (one process group: ~6 s of spawning paid once)."""
    seen = dict(run_ranks(_multi_stage_outputs, 2, [case[:2] for case in MULTI_STAGE]))
    return {case: (rank, counts) for rank, cases in seen.items() for case, counts in cases.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name, microbatches, outputs, awaiting", MULTI_STAGE)
def test_the_losses_a_multi_stage_last_stage_holds_are_torchs(multi_stage_torch, name, microbatches, outputs,
                                                               awaiting):
    """With two stages per rank (loop placement, or V where the last stage sits on rank 0) torch's runtime keeps on
    the last stage the outputs `held_losses` counts: one under interleaved 1F1B and the zero-bubble schedules (whose
    I frees it), every micro-batch under looped BFS; and past I it keeps, until W, the logits gradients
    `held_loss_states` counts (which the memory estimate prices, `memory.head_gradient_bytes`)."""
    rank, (held, past_input) = multi_stage_torch[name, microbatches]
    assert rank == stage_to_rank(name, 2, 2)[3]
    assert held == held_losses(name, 2, 2, microbatches, rank) == outputs
    assert past_input == max(g for _, g in held_loss_states(name, 2, 2, microbatches, rank)) == awaiting
    assert held_losses(name, 2, 2, microbatches, 1 - rank) == 0


def test_the_memory_prices_the_logits_gradients_awaiting_w():
    """The last pipeline rank of zb-h1 (pp 4, 16 micro-batches) holds up to 4 micro-batches past I and before W, each
    a logits gradient over its vocabulary slice in the compute dtype (2 GiB for llama3-8b at 8192 tokens): its
    pipeline buffers exceed 1F1B's, with the same units in flight, by exactly those; the other ranks' by nothing."""
    from autoconf.cost.memory import head_gradient_bytes, pipeline_buffer_bytes
    from autoconf.spec.frameworks import execution
    from autoconf.spec.plan import ParallelConfig
    from autoconf.spec.presets import load_model

    model = load_model("llama3-8b")
    for tp in (1, 2):
        configs = {name: ParallelConfig(tp=tp, pp=4, dp=1, micro_batch_size=1, global_batch_size=16, seq_len=8192,
                                        schedule=name) for name in ("zb-h1", "1f1b")}
        held = {name: [pipeline_buffer_bytes(model, c, execution("autoconf"), [s], [4.0] * 4) for s in range(4)]
                for name, c in configs.items()}
        gradient = head_gradient_bytes(model, configs["zb-h1"])
        assert gradient == 8192 * 128256 / tp * 2
        assert max(g for _, g in held_loss_states("zb-h1", 4, 1, 16, 3)) == 4
        assert held["zb-h1"][3] - held["1f1b"][3] == pytest.approx(4 * gradient, rel=1e-12)
        assert held["zb-h1"][:3] == held["1f1b"][:3]
