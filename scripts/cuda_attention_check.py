"""Checks of the attention paths that only a CUDA device takes, for `scripts/gpu_check.sh` (one GPU is enough):

- seq1f1b: a Llama block run chunk by chunk as the executor's sequence chunks run it (execute/seq_chunks.py: each
  chunk's queries against the earlier chunks' K/V under torch's lower-right causal bias) gives the outputs and
  gradients of the whole sequence run at once, SDPA limited to the flash kernel where it is called with a mask,
  and the last chunk's call one that the flash kernel takes (so the bias runs without a mask tensor, as
  docs/long-context.md says);
- context parallelism: `context_parallel.torch_ring_kv` hands torch's ring grouped K/V on this device, and torch's
  ring (`_templated_ring_attention`, one rank) over the flash kernel gives on grouped K/V the outputs and gradients
  it gives on K/V repeated to the query heads;
- the per-op policy's CP op over the device's fused kernels (the memory-efficient kernel on CUDA) on one rank gives
  the layer's own attention's outputs and gradients, causal, windowed with sinks, with narrower values (`cp_op_check`);
- the executor's masked attention (sliding windows, sinks) beside causal flash: time and peak memory
  (`masked_check`), a measurement for `Execution.masked_attention`, not a pass/fail check.

On CPU (a dry run of the script) the same comparisons run with the CPU kernels, the flash limit left out. Prints one
JSON object; exits 1 when a comparison is off by more than its tolerance, 2 on bad arguments."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time

import torch


def _tolerance(dtype: torch.dtype) -> float:
    return 3e-2 if dtype == torch.bfloat16 else 1e-4


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def seq_chunk_check(device: torch.device, dtype: torch.dtype, seq: int, chunks: int) -> dict:
    """Largest relative difference between the chunked and the whole-sequence run of one Llama block: outputs,
    input gradients and parameter gradients."""
    from autoconf.execute import seq_chunks
    from autoconf.execute.model import Block
    from autoconf.spec.model import ModelSpec

    spec = ModelSpec(name="cuda-check", arch="llama", num_layers=1, hidden_size=1024, num_heads=8, num_kv_heads=2,
                     ffn_hidden_size=2816, vocab_size=256, max_seq_len=seq)
    torch.manual_seed(0)
    block = Block(spec, "flash", 0).to(device=device, dtype=dtype)
    x = torch.randn(1, seq, spec.hidden_size, device=device, dtype=dtype)
    grad = torch.randn_like(x)

    whole_in = x.clone().requires_grad_()
    whole = block(whole_in)
    whole.backward(grad)
    reference = [whole.detach(), whole_in.grad] + [p.grad.clone() for p in block.parameters()]
    block.zero_grad(set_to_none=True)

    bounds = [j * seq // chunks for j in range(chunks + 1)]
    context = seq_chunks.SequenceChunks(bounds, device)
    block.attention.context = context.layer()
    inputs, outputs = [], []
    with _flash_only(device):
        for j, (a, b) in enumerate(zip(bounds, bounds[1:])):
            context.start(j)
            inputs.append(x[:, a:b].clone().requires_grad_())
            outputs.append(block(inputs[-1]))
        for j in reversed(range(chunks)):  # the backward order of a micro-batch's chunks: last chunk first
            context.start(j)
            outputs[j].backward(grad[:, bounds[j]:bounds[j + 1]])
    context.start(None)
    chunked = [torch.cat([o.detach() for o in outputs], 1), torch.cat([i.grad for i in inputs], 1)]
    chunked += [p.grad for p in block.parameters()]
    diffs = [_relative(a, b) for a, b in zip(chunked, reference)]
    flash = _flash_takes(x.new_empty(1, spec.num_heads, seq // chunks, spec.head_dim),
                         x.new_empty(1, spec.num_kv_heads, seq, spec.head_dim))
    return {"seq": seq, "chunks": chunks, "last_chunk_on_flash": flash, "max_relative_difference": max(diffs),
            "ok": max(diffs) < _tolerance(dtype) and (flash or device.type != "cuda")}


def _flash_takes(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether torch's lower-right causal bias runs a query block q against keys k (grouped) on the flash kernel:
    the test `CausalBias` makes before it would fall back to another kernel."""
    from torch.backends.cuda import SDPAParams, can_use_flash_attention

    return q.is_cuda and can_use_flash_attention(SDPAParams(q, k, k, None, 0.0, False, True))


def _flash_only(device: torch.device):
    """SDPA limited to the flash kernel on CUDA (it raises if the call cannot run there); nothing on CPU."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def _one_rank_group(device: torch.device) -> None:
    """A process group of this one rank on a free local port (NCCL on CUDA, else gloo)."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def cp_op_check(device: torch.device, dtype: torch.dtype, seq: int, window: int = 128) -> dict:
    """The per-op policy's CP op (execute/cp_attention.py) on one rank over this device's fused kernels (CUDA: the
    memory-efficient kernel with its padded log-sum-exp and aligned bias) against the layer's own attention: output
    and the gradients of q, k, v (and sinks), for causal attention, a sliding `window` with sinks, and values
    narrower than the query-key width (latent attention's)."""
    import torch.distributed as dist

    from autoconf.execute.cp_attention import cp_attention
    from autoconf.execute.model import Attention
    from autoconf.spec.model import ModelSpec

    spec = ModelSpec(name="cp-op-check", arch="llama", num_layers=2, hidden_size=2048, num_heads=16, num_kv_heads=4,
                     head_dim=128, ffn_hidden_size=2048, vocab_size=256, max_seq_len=seq, sliding_window=window,
                     attention_sinks=True)
    _one_rank_group(device)
    diffs = {}
    try:
        for name, layer_window, sinks, v_width in (("causal", None, False, 128), ("window_sinks", window, True, 128),
                                                   ("narrow_values", None, False, 96)):
            layer = Attention(dataclasses.replace(spec, attention_sinks=sinks), "flash", layer_window)
            layer = layer.to(device=device, dtype=dtype)
            if sinks:
                with torch.no_grad():
                    layer.sinks.copy_(torch.linspace(-1, 1, 16))
            generator = torch.Generator(device=device).manual_seed(0)
            q = torch.randn(1, 16, seq, 128, device=device, dtype=dtype, generator=generator)
            k = torch.randn(1, 4, seq, 128, device=device, dtype=dtype, generator=generator)
            v = torch.randn(1, 4, seq, v_width, device=device, dtype=dtype, generator=generator)
            grad = torch.randn(1, 16, seq, v_width, device=device, dtype=dtype, generator=generator)
            results = []
            for run in ("op", "layer"):
                leaves = [t.clone().requires_grad_() for t in (q, k, v)]
                if run == "op":
                    out = cp_attention(*leaves, dist.group.WORLD.group_name, "ring", seq, layer_window or 0,
                                       layer.sinks)[0]
                else:
                    out = layer.core(*leaves)
                params = leaves + ([layer.sinks] if sinks else [])
                results.append([out, *torch.autograd.grad(out, params, grad)])
            diffs[name] = max(_relative(a, b) for a, b in zip(*results))
    finally:
        dist.destroy_process_group()
    return {"seq": seq, "window": window, "max_relative_difference": diffs,
            "ok": max(diffs.values()) < _tolerance(dtype)}


def ring_check(device: torch.device, dtype: torch.dtype, seq: int) -> dict:
    """torch's ring on one rank over this device's flash kernel: grouped against repeated K/V, and whether
    `torch_ring_kv` hands it the grouped ones."""
    import torch.distributed as dist
    from torch.distributed.tensor.experimental._context_parallel import _attention as att

    from autoconf.execute.context_parallel import torch_ring_kv

    _one_rank_group(device)
    try:
        aten = torch.ops.aten
        forward, backward = ((aten._scaled_dot_product_flash_attention.default,
                              aten._scaled_dot_product_flash_attention_backward.default) if device.type == "cuda" else
                             (aten._scaled_dot_product_flash_attention_for_cpu.default,
                              aten._scaled_dot_product_flash_attention_for_cpu_backward.default))
        generator = torch.Generator(device=device).manual_seed(0)
        q, k, v, grad_out = (torch.randn(1, heads, seq, 128, device=device, dtype=dtype, generator=generator)
                             for heads in (32, 8, 8, 32))
        handed = torch_ring_kv(q, k, v, 0.0)
        results = []
        for repeat in (1, 4):
            kr, vr = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
            outputs = att._templated_ring_attention(dist.group.WORLD, 2, forward, q, kr, vr, is_causal=True)
            out, lse = outputs[:2]
            # The CUDA kernel's backward also takes what its forward returned beside them (torch's ring passes them
            # on the same way, `_scaled_dot_product_ring_flash_attention_backward`).
            names = ("cum_seq_q", "cum_seq_k", "max_q", "max_k", "philox_seed", "philox_offset")
            extra = dict(zip(names, outputs[2:8])) if device.type == "cuda" else {}
            dq, dk, dv = att._templated_ring_attention_backward(dist.group.WORLD, 2, backward, grad_out, "grad_out",
                                                                q, kr, vr, out, lse, True, dropout_p=0.0, **extra)[:3]
            results.append((out, dq, *(t.unflatten(1, (8, repeat)).sum(2) for t in (dk, dv))))
    finally:
        dist.destroy_process_group()
    diffs = [_relative(a, b) for a, b in zip(*results)]
    grouped = handed[0].shape[1] == k.shape[1]
    return {"seq": seq, "torch_ring_kv_grouped": grouped, "max_relative_difference": max(diffs),
            "ok": max(diffs) < _tolerance(dtype) and (grouped or device.type != "cuda")}


def masked_check(device: torch.device, dtype: torch.dtype, seq: int, window: int = 128) -> dict:
    """What the executor's masked attention costs beside causal flash on this device, for
    `Execution.masked_attention`: one GPT-OSS-shaped attention core (64 query heads, 8 K/V heads, head 64) at `seq`
    tokens, forward and backward, four ways: causal (is_causal, the flash kernel), causal with sinks (the sink key,
    still is_causal), a sliding `window` (the band of execute/window_attention.py from 2 x window tokens on, else
    one mask) and the window with sinks; each its milliseconds (median of 5 after a warm-up) and its peak memory
    above the inputs. The estimate charges the window `spec.model.executor_window_work`'s scores and the sinks
    (2 d + 16) / 2 d of the products, at the flash curve's speed: the ratios here are what to compare that with. On
    CPU (the dry run) the times mean nothing."""
    from autoconf.execute.model import Attention
    from autoconf.spec.model import ModelSpec

    spec = ModelSpec(name="masked-check", arch="llama", num_layers=2, hidden_size=2880, num_heads=64, num_kv_heads=8,
                     head_dim=64, ffn_hidden_size=2880, vocab_size=256, max_seq_len=seq, sliding_window=window,
                     full_attention_layers=(1,))
    sinks = dataclasses.replace(spec, name="masked-check-sinks", attention_sinks=True)
    generator = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, 64, seq, 64, device=device, dtype=dtype, generator=generator)
    k, v = (torch.randn(1, 8, seq, 64, device=device, dtype=dtype, generator=generator) for _ in range(2))
    out = {}
    for name, model, window_of_layer in (("causal", spec, None), ("causal_sinks", sinks, None),
                                         ("window", spec, window), ("window_sinks", sinks, window)):
        layer = Attention(model, "flash", window_of_layer).to(device=device, dtype=dtype)
        if layer.sinks is not None:
            with torch.no_grad():
                layer.sinks.zero_()
        times, peak = [], 0
        for attempt in range(6):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            layer.core(*leaves).sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
                peak = max(peak, torch.cuda.max_memory_allocated() - base)
            if attempt:
                times.append(time.perf_counter() - start)
        out[name] = {"ms": round(1000 * sorted(times)[len(times) // 2], 3), "peak_MiB": round(peak / 2**20, 1)}
    causal = out["causal"]["ms"]
    return {"seq": seq, "window": window, **out,
            "ratio_to_causal": {k: round(v["ms"] / causal, 3) for k, v in out.items() if causal},
            "ok": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=8192, help="tokens of the sequence (default 8192)")
    parser.add_argument("--chunks", type=int, default=4, help="seq1f1b chunks (default 4)")
    args = parser.parse_args(argv)
    if args.seq < 2 * args.chunks or args.seq % (2 * args.chunks) or args.chunks < 2:
        print(f"cuda_attention_check: --seq {args.seq} must be a multiple of 2 x --chunks {args.chunks} and "
              f"--chunks at least 2", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
              "seq1f1b": seq_chunk_check(device, dtype, args.seq, args.chunks),
              "cp_ring": ring_check(device, dtype, args.seq),
              "cp_op": cp_op_check(device, dtype, args.seq if device.type == "cuda" else 256),
              "masked_attention": masked_check(device, dtype, args.seq if device.type == "cuda" else 256)}
    print(json.dumps(report, indent=2))
    return 0 if all(report[check]["ok"] for check in ("seq1f1b", "cp_ring", "cp_op")) else 1


if __name__ == "__main__":
    sys.exit(main())
