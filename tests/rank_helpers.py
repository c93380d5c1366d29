"""Running a test's function on several gloo ranks at once, each in its own spawned process."""

from __future__ import annotations

import os


def run_ranks(target, world: int, *args, timeout: float = 120, **kwargs) -> list:
    """What `target(rank, world, queue, *args, **kwargs)` puts on `queue` in each of `world` spawned processes, in
    the order they put it; every process has joined when it returns. Each process has MASTER_ADDR and MASTER_PORT
    set to one free local port, so the target needs only `torch.distributed.init_process_group("gloo",
    rank=rank, world_size=world)`. `target` must be a module-level function (spawn imports it by name)."""
    import torch.multiprocessing as mp

    from autoconf.execute.launch import free_port

    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(target, rank, world, port, queue, args, kwargs)) for rank in range(world)]
    for p in procs:
        p.start()
    seen = [queue.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join()
    return seen


def _rank(target, rank: int, world: int, port: int, queue, args: tuple, kwargs: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    target(rank, world, queue, *args, **kwargs)
