"""The collectives `cp_ring.transfers` assumes equal those torch's ring attention issues (gloo, CPU, cp2 and cp4), and
each carries the bytes `cp_ring` charges for autoconf's executor (grouped K/V as they are); torch's ring gives the
same outputs and gradients on grouped K/V as on K/V repeated to the query heads."""

import pytest

from autoconf.cost import cp_ring
from autoconf.cost.cp_ring import transfers
from autoconf.cost.estimate import cp_exchange_bytes
from autoconf.cost.memory import cp_kv_bytes
from autoconf.spec.frameworks import execution
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from tests.rank_helpers import run_ranks

torch = pytest.importorskip("torch")


def _probe(rank, world, queue, method, kv_heads=2, dtype="float32", repeat=False):
    """One rank's collectives in torch's ring forward and backward on Q [1, 2 heads, 8 tokens, 4] and K/V of
    `kv_heads`, grouped as the executor's torch path hands them to the flash kernel, or with `repeat` repeated to the
    2 query heads: per pass, the count of each kind and (kind, dtype, bytes) of every tensor sent."""
    import torch.distributed as dist
    from torch.distributed.tensor.experimental._context_parallel import _attention as att

    dist.init_process_group("gloo", rank=rank, world_size=world)
    counts = {"all_gather": 0, "permute": 0}
    sent = []
    gather, permute = att.ft_c.all_gather_single, att.ft_c.permute_tensor

    def counted(kind, collective):
        def run(t, *a, **k):
            counts[kind] += 1
            sent.append((kind, str(t.dtype), t.numel() * t.element_size()))
            return collective(t, *a, **k)
        return run

    att.ft_c.all_gather_single, att.ft_c.permute_tensor = counted("all_gather", gather), counted("permute", permute)
    att.set_rotate_method(method)
    group = dist.group.WORLD
    dt = getattr(torch, dtype)
    q, k, v = torch.randn(1, 2, 8, 4, dtype=dt), torch.randn(1, kv_heads, 8, 4, dtype=dt), torch.randn(1, kv_heads, 8, 4,
                                                                                                      dtype=dt)
    if repeat:
        k, v = (t.repeat_interleave(2 // kv_heads, dim=1) for t in (k, v))
    aten = torch.ops.aten
    out, lse = att._templated_ring_attention(group, 2, aten._scaled_dot_product_flash_attention_for_cpu.default,
                                             q, k, v, is_causal=True)[:2]
    forward, forward_sent = dict(counts), list(sent)
    counts.update(all_gather=0, permute=0)
    sent.clear()
    att._templated_ring_attention_backward(group, 2, aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
                                           torch.ones_like(out), "grad_out", q, k, v, out, lse, True, dropout_p=0.0)
    dist.destroy_process_group()
    queue.put({"forward": forward, "backward": counts, "sent": {"forward": forward_sent, "backward": list(sent)}})


def _grouped_against_repeated(rank, world, queue, method):
    """One rank's largest |difference| between torch's ring on grouped K/V (4 query heads over 2 K/V heads) and on
    the same K/V repeated to the query heads: (output, dQ, dK, dV), the repeated dK/dV summed over each group."""
    import torch.distributed as dist
    from torch.distributed.tensor.experimental._context_parallel import _attention as att

    dist.init_process_group("gloo", rank=rank, world_size=world)
    att.set_rotate_method(method)
    generator = torch.Generator().manual_seed(0)
    q, k, v, grad_out = (torch.randn(1, heads, 16, 8, generator=generator) for heads in (4, 2, 2, 4))
    shard = slice(rank * 16 // world, (rank + 1) * 16 // world)
    q, k, v, grad_out = (t[:, :, shard].contiguous() for t in (q, k, v, grad_out))
    aten = torch.ops.aten
    results = []
    for repeat in (1, 2):
        kr, vr = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        out, lse = att._templated_ring_attention(dist.group.WORLD, 2,
                                                 aten._scaled_dot_product_flash_attention_for_cpu.default, q, kr, vr,
                                                 is_causal=True)[:2]
        dq, dk, dv = att._templated_ring_attention_backward(
            dist.group.WORLD, 2, aten._scaled_dot_product_flash_attention_for_cpu_backward.default, grad_out,
            "grad_out", q, kr, vr, out, lse, True, dropout_p=0.0)[:3]
        dk, dv = (t.unflatten(1, (2, repeat)).sum(2) for t in (dk, dv))
        results.append((out, dq, dk, dv))
    dist.destroy_process_group()
    queue.put([float((a - b).abs().max()) for a, b in zip(*results)])


def _run(cp, method, target=_probe, **kw):
    return run_ranks(target, cp, method, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("cp", [2, 4])
@pytest.mark.parametrize("comm,method", [("allgather", "allgather"), ("ring", "alltoall")])
def test_transfers_match_torch(cp, comm, method):
    seen = _run(cp, method)
    expected = {p: {"all_gather": n["kv_gather"], "permute": n["kv_rotate"] + n["dkv_rotate"]}
                for p, n in transfers(cp, comm).items()}
    assert all({p: s[p] for p in expected} == expected for s in seen), (seen, expected)


@pytest.mark.slow
@pytest.mark.parametrize("comm,method", [("allgather", "allgather"), ("ring", "alltoall")])
def test_each_transfer_carries_the_bytes_cp_ring_charges_the_executor(comm, method):
    """A bf16 model of 2 query heads and 1 K/V head of 4, its K/V handed to torch's ring grouped as autoconf's
    executor does where the flash kernel takes them, at cp 2: every K/V all-gather or permute sends one rank's
    grouped block (`cp_ring.sdpa_kv_bytes` of the autoconf preset: the grouped `cp_kv_bytes`), every dK/dV permute
    the fp32 gradients `cp_ring.dkv_bytes` charges; repeated to the query heads (`cp_repeat_kv`), twice both. Their
    sum is what the placement charges the CP group (`estimate.cp_exchange_bytes`)."""
    model = ModelSpec(name="probe", arch="llama", num_layers=1, hidden_size=8, num_heads=2, num_kv_heads=1,
                      ffn_hidden_size=16, vocab_size=16, max_seq_len=16)
    c = ParallelConfig(tp=1, pp=1, dp=1, cp=2, cp_comm=comm, micro_batch_size=1, global_batch_size=1, seq_len=16,
                       dtype="bf16")
    for ex in (execution("autoconf"), execution("autoconf").replace(cp_repeat_kv=True)):
        kv = cp_ring.sdpa_kv_bytes(model, c, ex, cp_kv_bytes(model, c))
        assert kv == (2 if ex.cp_repeat_kv else 1) * cp_kv_bytes(model, c) and cp_ring.dkv_bytes(model, c, ex) == 2 * kv
        for s in _run(2, method, kv_heads=1, dtype="bfloat16", repeat=ex.cp_repeat_kv):
            sends = s["sent"]["forward"] + s["sent"]["backward"]
            blocks = [n for _, dtype, n in sends if dtype == "torch.bfloat16"]
            assert blocks == [kv] * sum(n["kv_gather"] + n["kv_rotate"] for n in transfers(2, comm).values()), sends
            dkv = [n for _, dtype, n in sends if dtype == "torch.float32"]
            assert dkv == [cp_ring.dkv_bytes(model, c, ex)] * transfers(2, comm)["backward"]["dkv_rotate"], sends
            # what the placement charges the CP group (`estimate.cp_exchange_bytes`): every byte the rank sent
            sent = sum(n * (c.cp - 1 if kind == "all_gather" else 1) for kind, _, n in sends)
            assert cp_exchange_bytes(model, c, ex) == sent


@pytest.mark.slow
@pytest.mark.parametrize("method", ["allgather", "alltoall"])
def test_torchs_ring_on_grouped_kv_equals_it_on_repeated_kv(method):
    """What lets the executor hand torch's ring grouped K/V (`context_parallel.torch_ring_kv`): at cp 2, in fp32,
    the ring's outputs and gradients on 4 query heads over 2 K/V heads equal those on the K/V repeated to the
    query heads (dK/dV summed over each group), with either rotate method."""
    for diffs in _run(2, method, target=_grouped_against_repeated):
        assert max(diffs) < 1e-5, diffs
