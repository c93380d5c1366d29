"""Compute profiling: forward, backward-for-inputs (I) and backward-for-weights (W) time of each block kind.

Blocks are the executor's own modules (`autoconf.execute.model`), built at TP-sharded shapes on one device: the
attention block with heads/tp query heads and kv_heads/tp key/value heads (its QKV and output projections narrowed
accordingly), the MLP with ffn/tp, one norm, the embedding with vocab/tp rows (rounded up), and the head (final norm,
a vocab/tp LM head, cross-entropy on the local logits); of an MoE model also its MoE layer without the routed
experts ("moe") and one rank's routed experts at each expert-parallel layout ("experts": profile/moe_blocks.py).
Communication of a real TP layer, and an MoE layer's all-to-all, is not included: the cost model adds it from the
network profile.

How I and W are separated. Each repeat builds a fresh graph and times, in order:
  forward              the block's forward;
  backward_input (I)   torch.autograd.grad(out, [input], grad_out, retain_graph=True): only the gradients that lead
                       to the input are computed (autograd skips the weight-gradient matmuls no one asked for);
  full backward        a second forward (untimed), then torch.autograd.grad(out, [input, *params], grad_out).
W is full - I of the same repeat. Asking autograd for the parameters alone would not do: the gradient of an early
weight (QKV, the first MLP matrix) needs the activation gradients flowing back through everything after it, so a
parameters-only pass would recount most of I. The zero-bubble split that the schedules use is exactly "I computes all
activation gradients, W only the weight-gradient GEMMs", i.e. full - I. The embedding's input is token ids, so its
I is zero and its whole backward is W. Times are medians over repeats after warm-up, with p10/p90 of the forward.

Distribution. The grid (block x tp x micro-batch x seq-len, plus attention at the asked `--seq-len`s and an MoE
model's experts per ep x etp) is dealt out to the ranks, longest entries first in snake order so every rank gets a
similar amount of work, and all ranks time their share at the same time, as all devices compute at once in training
(on a shared CPU host this contention is what training would see). When there are more ranks than entries, each
entry is timed by several ranks and the median over them is kept.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from autoconf.errors import UserError
from autoconf.execute.dtypes import TORCH_DTYPES
from autoconf.profile.moe_blocks import ExpertsBlock, RoutingBlock, dispatched_rows, expert_degrees
from autoconf.profile.timing import median, percentile, sync, work_time, work_times
from autoconf.spec.model import ModelSpec
from autoconf.spec.profile_checks import BLOCKS, MOE_BLOCKS



@dataclasses.dataclass(frozen=True)
class Grid:
    micro_batches: tuple[int, ...]
    seq_lens: tuple[int, ...]
    tps: tuple[int, ...]
    warmup: int
    repeats: int
    entry_budget_s: float = 10.0  # seconds one grid entry may take before its repeats are cut (to at least 3)
    attention_seq_lens: tuple[int, ...] = ()  # further lengths at which only the attention block is timed
    expert_degrees: tuple[tuple[int, int], ...] = ()  # (ep, etp) pairs of an MoE model's "experts" entries


def tp_widths(model: ModelSpec, max_tp: int) -> list[int]:
    """Powers of two up to `max_tp` that divide the heads, the KV heads and the MLP width."""
    out, t = [], 1
    while t <= max_tp:
        if model.num_heads % t == 0 and model.num_kv_heads % t == 0 and model.ffn_hidden_size % t == 0:
            out.append(t)
        t *= 2
    return out


def tp_widths_note(model: ModelSpec, max_tp: int, tps: tuple[int, ...]) -> str | None:
    """The sentence saying why the blocks are timed at no width as wide as an asked `--max-tp`; None when the
    widest timed width is `max_tp` itself."""
    if tps and max(tps) >= max_tp:
        return None
    return (f"--max-tp {max_tp}: the blocks are timed at TP widths {', '.join(map(str, tps))} only, the powers of two "
            f"up to {max_tp} that divide {model.name}'s {model.num_heads} heads, {model.num_kv_heads} KV heads and "
            f"MLP width {model.ffn_hidden_size}")


def default_grid(model: ModelSpec, max_tp: int, quick: bool, tiny: bool = False,
                 seq_lens: tuple[int, ...] = ()) -> Grid:
    """The micro-batch sizes, sequence lengths and TP widths to time.

    Every block is timed at the model's context and its halves down to a quarter (at most 2048 tokens long; the
    linear layers' time is linear in tokens). The attention block is also timed at each of `seq_lens` (the lengths
    the user will plan for, `--seq-len`) not already in the grid: its core grows with seq_len^2, which the cost
    model reads from these entries and, beyond the longest one, extrapolates in micro_batch x seq_len^2. An MoE
    model's "moe" block is timed like the others, its "experts" block at every micro-batch at the longest sequence
    (its time grows with tokens alone) for each (ep, etp) of `moe_blocks.expert_degrees` over the TP widths. `tiny`
    is the test-suite grid.
    """
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in seq_lens):
        raise UserError(f"--seq-len must be a positive integer, got {list(seq_lens)}")
    tps = tuple(tp_widths(model, max_tp))
    top = min(model.max_seq_len, 2048)
    if tiny:
        grid = Grid((1,), (min(top, 32),), tps[:2], warmup=1, repeats=2, entry_budget_s=1.0)
    elif quick:
        grid = Grid((1, 2, 4), (top,), tps, warmup=2, repeats=10, entry_budget_s=3.0)
    else:
        seqs = sorted({max(top // 4, 1), max(top // 2, 1), top})
        grid = Grid((1, 2, 4, 8), tuple(seqs), tps, warmup=3, repeats=20, entry_budget_s=10.0)
    extra = tuple(sorted(set(seq_lens) - set(grid.seq_lens)))
    return dataclasses.replace(grid, attention_seq_lens=extra, expert_degrees=expert_degrees(model, grid.tps))


# ---- the blocks at sharded shapes --------------------------------------------------------------------------------
class Head(nn.Module):
    """Final norm, LM head over vocab/tp rows, cross-entropy (fp32) on the local logits."""

    def __init__(self, model: ModelSpec, vocab: int):
        super().__init__()
        from autoconf.execute.model import make_norm

        self.norm = make_norm(model)
        self.output = nn.Linear(model.hidden_size, vocab, bias=False)

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.output(self.norm(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def build_block(kind: str, model: ModelSpec, tp: int, ep: int = 1, etp: int = 1) -> nn.Module:
    from autoconf.execute import model as blocks

    h = model.hidden_size
    if kind == "attention":
        module = blocks.Attention(model, "flash")
        q_width, kv_width = h // tp, model.kv_dim // tp
        qkv_bias = model.linear_bias or model.qkv_bias
        module.wq = nn.Linear(h, q_width, bias=qkv_bias)
        module.wk = nn.Linear(h, kv_width, bias=qkv_bias)
        module.wv = nn.Linear(h, kv_width, bias=qkv_bias)
        module.wo = nn.Linear(q_width, h, bias=model.linear_bias)
        return module
    if kind == "mlp":
        sharded = dataclasses.replace(model, ffn_hidden_size=model.ffn_hidden_size // tp)
        return blocks.GeluMLP(sharded) if model.arch == "gpt" else blocks.SwiGLU(sharded)
    if kind == "norm":
        return blocks.make_norm(model)
    if kind == "embedding":
        return blocks.Embedding(dataclasses.replace(model, vocab_size=math.ceil(model.vocab_size / tp)))
    if kind == "head":
        return Head(model, math.ceil(model.vocab_size / tp))
    if kind == "moe":
        return RoutingBlock(model, tp)
    if kind == "experts":
        return ExpertsBlock(model, ep, etp)
    raise AssertionError(kind)


def _inputs(kind: str, model: ModelSpec, tp: int, mb: int, seq: int, device, dtype):
    """(differentiable input or None, extra forward args)."""
    if kind == "embedding":
        vocab = math.ceil(model.vocab_size / tp)
        return None, (torch.randint(0, vocab, (mb, seq), device=device),)
    if kind == "experts":
        rows = dispatched_rows(model, mb, seq)
        return torch.randn(rows, model.hidden_size, device=device, dtype=dtype, requires_grad=True), ()
    x = torch.randn(mb, seq, model.hidden_size, device=device, dtype=dtype, requires_grad=True)
    if kind == "head":
        vocab = math.ceil(model.vocab_size / tp)
        return x, (torch.randint(0, vocab, (mb, seq), device=device),)
    return x, ()


def time_entry(kind: str, model: ModelSpec, tp: int, mb: int, seq: int, device: torch.device, dtype: str,
               warmup: int, repeats: int, budget_s: float = float("inf"), ep: int = 1, etp: int = 1) -> dict:
    """Times one grid entry on this rank (see the module docstring for the method); an "experts" entry says its
    ep and etp."""
    torch_dtype = TORCH_DTYPES[dtype]
    module = build_block(kind, model, tp, ep, etp).to(device=device, dtype=torch_dtype).train()
    params = [p for p in module.parameters() if p.requires_grad]
    x, extra = _inputs(kind, model, tp, mb, seq, device, torch_dtype)

    def forward():
        return module(*(extra if x is None else (x, *extra)))

    out = forward()
    grad_out = torch.ones_like(out) if out.dim() == 0 else torch.randn_like(out)
    del out
    inputs_and_params = ([x] if x is not None else []) + params

    def one_repeat() -> tuple[float, float, float]:
        holder: dict = {}
        t_f = work_time(lambda: holder.__setitem__("out", forward()), device)
        t_i = 0.0
        if x is not None:
            t_i = work_time(lambda: torch.autograd.grad(holder["out"], [x], grad_out, retain_graph=True), device)
        del holder["out"]
        out = forward()
        sync(device)
        t_full = work_time(lambda: torch.autograd.grad(out, inputs_and_params, grad_out), device)
        return t_f, t_i, max(t_full - t_i, 0.0)

    # A first warm-up repeat sizes the rest: an entry that would overrun its time budget gets fewer repeats
    # (at least 3), so a large model on a slow device still finishes.
    start = time.perf_counter()
    one_repeat()
    per_repeat = time.perf_counter() - start
    if per_repeat * (warmup + repeats) > budget_s:
        warmup, repeats = 1, max(3, min(repeats, int(budget_s / max(per_repeat, 1e-9))))
    samples = [one_repeat() for _ in range(warmup - 1 + repeats)][warmup - 1:]
    fwd, bwd_i, bwd_w = ([s[k] for s in samples] for k in range(3))
    degrees = {"ep": ep, "etp": etp} if kind == "experts" else {}
    return {"block": kind, "tp": tp, **degrees, "micro_batch": mb, "seq_len": seq,
            "forward_s": median(fwd), "backward_input_s": median(bwd_i), "backward_weight_s": median(bwd_w),
            "p10_forward_s": percentile(fwd, 10), "p90_forward_s": percentile(fwd, 90), "repeats": repeats}


def optimizer_time_per_param(device: torch.device, numel: int, warmup: int, repeats: int) -> float:
    """Seconds per parameter of one step of the executor's AdamW (execute/optimizer.py `model_optimizer`) over
    `numel` fp32 parameters (in 1M-element tensors)."""
    from autoconf.execute.optimizer import model_optimizer

    chunk = min(numel, 1 << 20)
    params = [torch.zeros(chunk, device=device, requires_grad=True) for _ in range(max(numel // chunk, 1))]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = model_optimizer(params, 1e-4, 0.1)
    return median(work_times(opt.step, device, warmup, repeats)) / sum(p.numel() for p in params)


# ---- the grid across ranks ---------------------------------------------------------------------------------------
def _cost(model: ModelSpec, kind: str, tp: int, mb: int, seq: int, ep: int = 1, etp: int = 1) -> float:
    tokens = mb * seq
    if kind == "experts":
        return dispatched_rows(model, mb, seq) * 3 * model.hidden_size * model.moe.moe_intermediate_size
    if kind == "moe":
        m = model.moe
        shared = m.num_shared_experts * m.shared_expert_intermediate_size
        return tokens * model.hidden_size * (m.num_experts / tp + 3 * shared / tp + m.num_experts_per_tok)
    if kind == "attention":
        return tokens * (4 * model.hidden_size ** 2 / tp + seq * model.hidden_size / tp)
    if kind == "mlp":
        return tokens * 3 * model.hidden_size * model.ffn_hidden_size / tp
    if kind == "head":
        return tokens * model.hidden_size * model.vocab_size / tp
    return tokens * model.hidden_size


def assign(entries: list[tuple], costs: list[float], world: int) -> list[list[int]]:
    """Entry indices per rank: longest first, dealt in snake order; with more ranks than entries, ranks repeat."""
    order = sorted(range(len(entries)), key=lambda i: -costs[i])
    if world >= len(entries):
        return [[order[r % len(entries)]] if entries else [] for r in range(world)]
    per_rank: list[list[int]] = [[] for _ in range(world)]
    for position, index in enumerate(order):
        turn, offset = divmod(position, world)
        per_rank[offset if turn % 2 == 0 else world - 1 - offset].append(index)
    return per_rank


def measure_compute(model: ModelSpec, grid: Grid, device: torch.device, dtype: str, device_label: str,
                    log: Callable[[str], None], optimizer_numel: int) -> dict:
    """Every rank times its share; the `compute` table, identical on every rank."""
    if dtype not in TORCH_DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(TORCH_DTYPES)}")
    rank, world = dist.get_rank(), dist.get_world_size()
    kinds = BLOCKS + (MOE_BLOCKS[:1] if model.moe is not None else ())
    entries = [(kind, tp, mb, seq) for tp in grid.tps for kind in kinds
               for mb in grid.micro_batches for seq in grid.seq_lens]
    entries += [("attention", tp, mb, seq) for tp in grid.tps for mb in grid.micro_batches
                for seq in grid.attention_seq_lens]
    entries += [("experts", 1, mb, max(grid.seq_lens), ep, etp) for ep, etp in grid.expert_degrees
                for mb in grid.micro_batches]
    costs = [_cost(model, *e) for e in entries]
    mine = assign(entries, costs, world)[rank]
    also = f"; attention also at seq {list(grid.attention_seq_lens)}" if grid.attention_seq_lens else ""
    if grid.expert_degrees:
        also += f"; experts at (ep, etp) {', '.join(f'({ep}, {etp})' for ep, etp in grid.expert_degrees)}"
    log(f"  {len(entries)} grid entries (blocks {', '.join(kinds)}; tp {list(grid.tps)}; micro-batch "
        f"{list(grid.micro_batches)}; seq {list(grid.seq_lens)}{also}) over {world} rank(s), {grid.repeats} repeats")
    results = []
    step = max(len(mine) // 5, 1)
    for done, index in enumerate(mine, start=1):
        kind, tp, mb, seq, *degrees = entries[index]
        results.append((index, time_entry(kind, model, tp, mb, seq, device, dtype, grid.warmup, grid.repeats,
                                               grid.entry_budget_s, *degrees)))
        if done % step == 0 or done == len(mine):
            log(f"  rank 0: {done}/{len(mine)} entries timed")
    opt = optimizer_time_per_param(device, optimizer_numel, grid.warmup, max(grid.repeats // 2, 2))
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {"entries": results, "optimizer": opt})
    by_index: dict[int, list[dict]] = {}
    for part in gathered:
        for index, entry in part["entries"]:
            by_index.setdefault(index, []).append(entry)
    table = []
    for index in sorted(by_index):
        timed = by_index[index]
        merged = dict(timed[0])
        for key in ("forward_s", "backward_input_s", "backward_weight_s", "p10_forward_s", "p90_forward_s"):
            merged[key] = median([t[key] for t in timed])
        merged["repeats"] = sum(t["repeats"] for t in timed)
        table.append(merged)
    return {"dtype": dtype, "device": device_label, "model": model.to_dict(), "entries": table,
            "optimizer_s_per_param": median([part["optimizer"] for part in gathered])}
