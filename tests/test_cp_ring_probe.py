"""The collectives `cp_ring.transfers` assumes equal those torch's ring attention issues (gloo, CPU, cp2 and cp4)."""

import os
import socket

import pytest

from autoconf.cost.cp_ring import transfers

torch = pytest.importorskip("torch")


def _probe(rank, world, port, method, queue):
    import torch.distributed as dist
    from torch.distributed.tensor.experimental._context_parallel import _attention as att

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    counts = {"all_gather": 0, "permute": 0}
    gather, permute = att.ft_c.all_gather_single, att.ft_c.permute_tensor

    def counted_gather(*a, **k):
        counts["all_gather"] += 1
        return gather(*a, **k)

    def counted_permute(*a, **k):
        counts["permute"] += 1
        return permute(*a, **k)

    att.ft_c.all_gather_single, att.ft_c.permute_tensor = counted_gather, counted_permute
    att.set_rotate_method(method)
    group = dist.group.WORLD
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    aten = torch.ops.aten
    out, lse = att._templated_ring_attention(group, 2, aten._scaled_dot_product_flash_attention_for_cpu.default,
                                             q, k, v, is_causal=True)[:2]
    forward = dict(counts)
    counts.update(all_gather=0, permute=0)
    att._templated_ring_attention_backward(group, 2, aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
                                           torch.ones_like(out), "grad_out", q, k, v, out, lse, True, dropout_p=0.0)
    dist.destroy_process_group()
    queue.put({"forward": forward, "backward": counts})


@pytest.mark.slow
@pytest.mark.parametrize("cp", [2, 4])
@pytest.mark.parametrize("comm,method", [("allgather", "allgather"), ("ring", "alltoall")])
def test_transfers_match_torch(cp, comm, method):
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_probe, args=(r, cp, port, method, queue)) for r in range(cp)]
    for p in procs:
        p.start()
    seen = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    expected = {p: {"all_gather": n["kv_gather"], "permute": n["kv_rotate"] + n["dkv_rotate"]}
                for p, n in transfers(cp, comm).items()}
    assert all(s == expected for s in seen), (seen, expected)
