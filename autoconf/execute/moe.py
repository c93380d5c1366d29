"""The mixture-of-experts layer of a block, as a `MoESpec` describes it, with expert parallelism.

`MoE` = router + routed experts + shared experts (+ Qwen2-MoE's shared-expert gate):

- router: a linear h -> num_experts (with a bias when `router_bias`); scores by softmax or sigmoid (fp32); with
  `n_group` > 1 a token picks its experts among its `topk_group` best groups (a group's score: its best expert's
  under softmax, DeepSeek-V2; the sum of its two best under sigmoid, DeepSeek-V3); the top-k scores are the weights,
  renormalised to sum to 1 when `norm_topk_prob`, times `routed_scaling_factor`. Routing is dropless: every token
  reaches its k experts (a `capacity_factor` is refused by the executor, spec/support.py).
- routed experts: SwiGLU experts of `moe_intermediate_size`, their weights stacked as 3-D parameters
  `experts.w1` / `experts.w3` [E, h, f] and `experts.w2` [E, f, h], computed with `torch._grouped_mm` where it runs
  on this device and dtype (probed once: forward and backward against a loop), else a loop over the experts; the
  two give the same numbers (tests/test_moe_execute.py).
- shared experts: one SwiGLU of num_shared_experts x shared_expert_intermediate_size (the same function as that
  many experts of the narrower width, summed), every token passes through it; with tp > 1 split over the TP ranks
  like a dense MLP (gate and up column-parallel, down row-parallel: an all-reduce, or under sequence parallelism a
  reduce-scatter to this rank's part of the sequence; parallelize.py `mlp_tp_plan`), as Megatron-Core and
  torchtitan split them.
- load-balancing loss: only when the spec's `router_aux_loss_coef` > 0: Switch Transformer's
  coef * E * sum_e f_e P_e over the micro-batch's tokens (f_e: share of the top-k assignments sent to e, P_e: mean
  normalised score), added to the training objective through the backward (`_AddAuxLoss`); the reported loss stays
  the token cross entropy, so losses compare across models and layouts.

Expert parallelism (`parallelize.apply_expert_parallel` sets the groups): the routed experts of a rank are the
contiguous block [r E/ep, (r+1) E/ep) of its ep group. With tp > 1 the TP ranks hold the same tokens, so the layer
first takes this TP rank's 1/tp of the micro-batch's tokens (`_TakeShare`, a view: its backward gathers the
gradient), routes only those (the router's gradients summed over the TP ranks by `_SumGrad`, the load-balancing
loss's statistics by `_SumOver`, so both are one process's) and gives the others their outputs back at the end
(`_GatherShares`), so each token is routed once. Under sequence
parallelism the layer takes the whole sequence (gathered by the TP plan) and returns this rank's part of it. The
tokens of a rank are sorted by expert, the per-rank counts exchanged (`all_to_all_single`), the tokens sent to the
ranks holding their experts with the autograd-aware `_functional_collectives.all_to_all_single_autograd` (verified on
gloo), computed there, sent back the same way and combined, weighted by their router weights.

Expert tensor parallelism (etp > 1): each rank of an ETP group holds a 1/etp slice of every local expert's FFN width
(w1, w3 split by columns, w2 by rows; DTensors over ("ep", "etp")); after the dispatch the ETP ranks gather each
other's rows, each computes the SwiGLU of its slice (SwiGLU is element-wise over the width, so the slices' down
projections are partial sums of the whole expert's output), and each rank's rows' partial outputs are summed back to
it before the combine (Megatron-Core's all-gather and reduce-scatter over the expert-TP group).
"""

from __future__ import annotations

import concurrent.futures
import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from autoconf.execute.checkpoint_policy import uncounted_matmuls
from autoconf.execute.model import gated
from autoconf.spec.model import ModelSpec


def _local(t: torch.Tensor) -> torch.Tensor:
    """A parameter's local shard (the experts of this rank when it is an expert-parallel DTensor)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _expert_loop(x: torch.Tensor, counts: torch.Tensor, w1, w3, w2, biases=(None, None, None),
                 limit: float | None = None) -> torch.Tensor:
    """SwiGLU (`gated`, clamped at `limit` where given) of each expert over its rows of x (rows grouped by expert,
    counts[e] rows for expert e: an int64 tensor, read on the host), with the experts' biases of w1, w3 and w2 where
    given ([E, width] and [E, h])."""
    b1, b3, b2 = biases
    outs = []
    for e, part in enumerate(x.split(counts.tolist())):
        gate, up = part @ w1[e], part @ w3[e]
        if b1 is not None:
            gate, up = gate + b1[e], up + b3[e]
        out = gated(gate, up, limit) @ w2[e]
        outs.append(out if b2 is None else out + b2[e])
    return torch.cat(outs) if outs else x.new_zeros(0, w2.shape[-1])


def _expert_grouped(x: torch.Tensor, counts: torch.Tensor, w1, w3, w2, biases=(None, None, None),
                    limit: float | None = None) -> torch.Tensor:
    """The same as `_expert_loop` with one grouped GEMM per weight (`torch._grouped_mm`, rows split at `offs`),
    each expert's bias repeated over its rows; the counts stay on the device (no host read)."""
    offs = counts.cumsum(0).to(torch.int32)
    b1, b3, b2 = (None if b is None else b.repeat_interleave(counts, dim=0, output_size=x.shape[0]) for b in biases)
    gate, up = torch._grouped_mm(x, w1, offs=offs), torch._grouped_mm(x, w3, offs=offs)
    if b1 is not None:
        gate, up = gate + b1, up + b3
    out = torch._grouped_mm(gated(gate, up, limit), w2, offs=offs)
    return out if b2 is None else out + b2


@functools.lru_cache(maxsize=None)
def grouped_mm_runs(device_type: str, device_index, dtype: torch.dtype, hidden: int, width: int) -> bool:
    """Whether `torch._grouped_mm` computes this device's and dtype's expert GEMMs (forward and backward) as the
    loop does. Measured once per shape: it needs 16-byte aligned rows, and on CUDA bf16 and a recent GPU; on CPU
    torch 2.13 runs it in fp32. The probe runs in a thread of its own: the first call comes from inside a block's
    forward, whose checkpoint (its dispatch mode and saved-tensor hooks, thread-local) must not see the probe's
    forward and backward."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_probe_grouped_mm, device_type, device_index, dtype, hidden, width).result()


def _probe_grouped_mm(device_type: str, device_index, dtype: torch.dtype, hidden: int, width: int) -> bool:
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(shape, generator=gen).to(device, dtype)
               for shape in ((5, hidden), (2, hidden, width), (2, hidden, width), (2, width, hidden))]
    results = []
    for fn in (_expert_grouped, _expert_loop):
        leaves = [t.clone().requires_grad_() for t in tensors]
        try:
            out = fn(leaves[0], torch.tensor([2, 3], device=device), *leaves[1:])
            out.backward(torch.ones_like(out))
        except (RuntimeError, NotImplementedError):
            return False
        results.append([out.detach()] + [t.grad for t in leaves])
    tol = 1e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    return all(torch.allclose(a.float(), b.float(), rtol=tol, atol=tol) for a, b in zip(*results))


class GroupedExperts(nn.Module):
    """num_experts SwiGLU experts as stacked weights (this rank's block of them under expert parallelism), with
    GPT-OSS's biases (`bias`: w1_bias, w3_bias [E, f], w2_bias [E, h]) and clamped SwiGLU (`limit`) where the spec
    has them."""

    def __init__(self, num_experts: int, hidden: int, width: int, bias: bool = False, limit: float | None = None):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden, width))  # gate
        self.w3 = nn.Parameter(torch.empty(num_experts, hidden, width))  # up
        self.w2 = nn.Parameter(torch.empty(num_experts, width, hidden))  # down
        if bias:
            self.w1_bias = nn.Parameter(torch.empty(num_experts, width))
            self.w3_bias = nn.Parameter(torch.empty(num_experts, width))
            self.w2_bias = nn.Parameter(torch.empty(num_experts, hidden))
        self.bias, self.limit = bias, limit
        # Set by parallelize: under expert TP the down projection's bias is added once, after the ETP ranks'
        # partial outputs are summed (`MoE`).
        self.down_bias_after_sum = False

    def local(self, name: str) -> torch.Tensor:
        """This rank's shard of parameter `name`."""
        return _local(getattr(self, name))

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x: rows grouped by local expert, counts[e] rows for local expert e (int64, on x's device); returns their
        outputs in that order. The grouped GEMM reads the counts on the device, the loop on the host. Under the
        per-op selective policy their GEMMs are recomputed, outside its matmul count."""
        w1, w3, w2 = self.local("w1"), self.local("w3"), self.local("w2")
        biases = (None, None, None)
        if self.bias:
            biases = (self.local("w1_bias"), self.local("w3_bias"),
                      None if self.down_bias_after_sum else self.local("w2_bias"))
        with uncounted_matmuls():
            if grouped_mm_runs(x.device.type, x.device.index, x.dtype, w1.shape[1], w1.shape[2]):
                return _expert_grouped(x, counts, w1, w3, w2, biases, self.limit)
            return _expert_loop(x, counts, w1, w3, w2, biases, self.limit)


class SharedExperts(nn.Module):
    """The shared experts as one SwiGLU of their summed width, split over TP like a dense MLP (parallelize.py
    `mlp_tp_plan`)."""

    def __init__(self, hidden: int, width: int, limit: float | None = None):
        super().__init__()
        self.w1 = nn.Linear(hidden, width, bias=False)
        self.w3 = nn.Linear(hidden, width, bias=False)
        self.w2 = nn.Linear(width, hidden, bias=False)
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(gated(self.w1(x), self.w3(x), self.limit))


class _AddAuxLoss(torch.autograd.Function):
    """Returns `x`; its backward adds d(scale * aux)/d(aux) = scale, so the aux loss joins the objective without
    joining the reported loss."""

    @staticmethod
    def forward(ctx, x, aux, scale: float):
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, torch.full((), ctx.scale, dtype=torch.float32, device=grad.device), None


class _TakeShare(torch.autograd.Function):
    """Rows [r n/k, (r+1) n/k) of a tensor that the k ranks of `group` hold alike, as a view (no copy); the backward
    gathers every rank's gradient of its share, so the gradient of the whole tensor is complete (and alike) on every
    rank."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group, k = group, dist.get_world_size(group)
        return x.chunk(k)[dist.get_rank(group)]

    @staticmethod
    def backward(ctx, grad):
        return _all_gather_rows(grad.contiguous(), ctx.group), None


class _GatherShares(torch.autograd.Function):
    """The inverse of `_TakeShare`: every rank's share, concatenated in rank order; the backward keeps this rank's
    rows of the (alike) gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather_rows(x.contiguous(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad.chunk(dist.get_world_size(ctx.group))[dist.get_rank(ctx.group)].contiguous(), None


class _SumGrad(torch.autograd.Function):
    """The identity on a parameter the ranks of `group` hold alike and use on different tokens; the backward sums
    its gradient over them, so each holds the gradient of all their tokens (one process's)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        from torch.distributed._functional_collectives import all_reduce

        return torch.ops._c10d_functional.wait_tensor(all_reduce(grad.contiguous(), "sum", ctx.group)), None


class _SumOver(torch.autograd.Function):
    """The sum over the ranks of `group` of a tensor each computes from its own tokens; the backward passes the
    (alike) gradient of the sum to each rank's part unchanged."""

    @staticmethod
    def forward(ctx, x, group):
        from torch.distributed._functional_collectives import all_reduce

        return torch.ops._c10d_functional.wait_tensor(all_reduce(x.contiguous(), "sum", group))

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _all_gather_rows(x: torch.Tensor, group) -> torch.Tensor:
    out = x.new_empty((x.shape[0] * dist.get_world_size(group), *x.shape[1:]))
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the name since torch 2.13
    gather(out, x, group=group)
    return out


class MoE(nn.Module):
    """An MoE layer: input [batch, seq, hidden] (the TP ranks' replicated activations), output the same, or under
    sequence parallelism this TP rank's part of the sequence."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        m, h = spec.moe, spec.hidden_size
        self.moe = m
        self.router = nn.Linear(h, m.num_experts, bias=m.router_bias)
        self.experts = GroupedExperts(m.num_experts, h, m.moe_intermediate_size, m.expert_bias, spec.swiglu_limit)
        width = m.num_shared_experts * m.shared_expert_intermediate_size
        self.shared = SharedExperts(h, width, spec.swiglu_limit) if width else None
        self.shared_gate = nn.Linear(h, 1, bias=False) if m.shared_expert_gate else None
        # Set by parallelize: the expert-parallel group (None: every expert here), the expert-tensor-parallel
        # group (None: whole experts), the TP group whose ranks hold the same tokens (None: tp 1) and, under
        # sequence parallelism, the TP mesh whose ranks each return their part of the sequence (else None); set by
        # the training loop: the aux loss gradient's scale (1/m when the loop divides each micro-batch's loss by
        # the m micro-batches, 1 when the pipeline scales afterwards).
        self.ep_group = None
        self.etp_group = None
        self.token_group = None
        self.sequence_mesh = None
        self.sequence_group = None  # set by context_parallel.attach: the CP group holding the rest of the sequences
        self.aux_loss_scale = 1.0

    # ---- routing -------------------------------------------------------------------------------------------------
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(expert indices [T, k], weights [T, k], normalised scores [T, E]) of tokens x [T, h]."""
        m = self.moe
        with uncounted_matmuls():  # the per-op policy recomputes the router, outside its matmul count
            if self.token_group is None:
                logits = self.router(x).float()
            else:  # x is this TP rank's share of the tokens: the router's gradients sum over the shares
                bias = self.router.bias
                logits = F.linear(x, _SumGrad.apply(self.router.weight, self.token_group),
                                  None if bias is None else _SumGrad.apply(bias, self.token_group)).float()
        scores = logits.softmax(-1) if m.scoring_func == "softmax" else logits.sigmoid()
        choose = scores
        if m.n_group > 1:
            groups = scores.view(x.shape[0], m.n_group, -1)
            group_score = (groups.max(-1).values if m.scoring_func == "softmax"
                           else groups.topk(min(2, groups.shape[-1]), dim=-1).values.sum(-1))
            best = group_score.topk(m.topk_group, dim=-1).indices
            keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best, True)
            choose = scores.masked_fill(~keep.repeat_interleave(groups.shape[-1], dim=1), float("-inf"))
        index = choose.topk(m.num_experts_per_tok, dim=-1).indices
        weights = scores.gather(1, index)
        if m.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + (1e-20 if m.scoring_func == "sigmoid" else 0.0))
        weights = weights * m.routed_scaling_factor
        probs = scores if m.scoring_func == "softmax" else scores / scores.sum(-1, keepdim=True)
        return index, weights, probs

    def aux_loss(self, index: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Switch Transformer's load-balancing loss coef * E * sum_e f_e P_e over the micro-batch's tokens, as one
        process computes it: at tp > 1 (`token_group`) over all the TP ranks' shares, their per-expert assignment
        counts, score sums and token counts added up (`_SumOver`, whose backward leaves each rank its share's
        gradient: the router's are summed over TP by `_SumGrad`); under context parallelism over its whole
        sequences, the CP ranks' sums added up too (with autograd, whose backward sums every rank's gradient, so
        with the gradients averaged over dp x cp each rank's router gets its own tokens' share)."""
        e, k = self.moe.num_experts, index.shape[1]
        stats = torch.cat([expert_counts(index, e).to(probs.dtype), probs.sum(0),
                           probs.new_full((1,), probs.shape[0])])  # counts, score sums, tokens: one all-reduce
        if self.token_group is not None:
            stats = _SumOver.apply(stats, self.token_group)
        if self.sequence_group is not None:
            from torch.distributed._functional_collectives import all_reduce

            stats = all_reduce(stats, "sum", self.sequence_group)
        counts, scores, tokens = stats[:e], stats[e:2 * e], stats[-1]
        return self.moe.router_aux_loss_coef * e * (counts / (tokens * k) * scores / tokens).sum()

    # ---- dispatch, experts, combine --------------------------------------------------------------------------------
    def routed(self, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_k weights[t, k] * expert_{index[t, k]}(x[t]) for tokens x [T, h], the experts wherever they live."""
        t, k = index.shape
        order = index.flatten().argsort(stable=True)  # the token-copies sorted by expert
        out = self.dispatched(x[order // k], expert_counts(index, self.moe.num_experts))
        combined = out[inverse(order)].view(t, k, -1) * weights.unsqueeze(-1).to(out.dtype)
        return combined.sum(1)

    def dispatched(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The experts' outputs of `rows` (sorted by expert, counts[e] for expert e), in the rows' order: computed
        here when every expert is whole on this rank, else exchanged with the ranks that hold them."""
        if self.ep_group is None and self.etp_group is None:
            return self.experts(rows, counts)
        return self._exchange(rows, counts)

    def _exchange(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Sends rows (sorted by expert, counts[e] for expert e) to the ranks of the ep group that hold their
        experts, runs the local experts (`_local_experts`), and returns the outputs in the rows' order. The split
        sizes of every exchange come to the host in one read, after the counts are exchanged: the layer's only
        wait for the device on the grouped-GEMM path, as in torchtitan's expert parallelism (the loop over experts,
        where `torch._grouped_mm` does not run, reads its counts too)."""
        from torch.distributed._functional_collectives import all_to_all_single, all_to_all_single_autograd

        ep = dist.get_world_size(self.ep_group) if self.ep_group is not None else 1
        etp = dist.get_world_size(self.etp_group) if self.etp_group is not None else 1
        local = self.moe.num_experts // ep
        # received[i, j]: rows rank i sends for this rank's j-th local expert; grid[r]: ETP rank r's received.
        received = (counts.view(1, local) if ep == 1
                    else all_to_all_single(counts, None, None, self.ep_group).wait().view(ep, local))
        grid = (received.unsqueeze(0) if etp == 1
                else _all_gather_rows(received.flatten().contiguous(), self.etp_group).view(etp, ep, local))
        host = torch.cat([counts, grid.flatten()]).tolist()
        send_splits = _sums(host[:counts.numel()], local)
        blocks = _sums(host[counts.numel():], local)  # rows by (ETP rank, source rank)
        me = dist.get_rank(self.etp_group) if etp > 1 else 0
        recv_splits = blocks[me * ep:(me + 1) * ep]
        if ep > 1:
            rows = all_to_all_single_autograd(rows, recv_splits, send_splits, self.ep_group)
        back = self._local_experts(rows, received, grid, _sums(blocks, ep))
        return all_to_all_single_autograd(back, send_splits, recv_splits, self.ep_group) if ep > 1 else back

    def _local_experts(self, got: torch.Tensor, mine: torch.Tensor, grid: torch.Tensor,
                       sizes: list[int]) -> torch.Tensor:
        """The local experts' outputs of rows `got`, which come by source rank, then by local expert
        (mine[i, j] rows), in the same order. With expert tensor parallelism (etp group) each rank holds
        1/etp of every local expert's FFN width: the ETP ranks first gather each other's rows (grid[r]: ETP rank
        r's counts, sizes[r] its rows), compute partial outputs over their width slice, and sum each rank's rows'
        partials back to it (an all-gather and a reduce-scatter of uneven blocks, as two autograd all-to-alls)."""
        from torch.distributed._functional_collectives import all_to_all_single_autograd

        etp, n = len(sizes), got.shape[0]
        if etp > 1:
            got = all_to_all_single_autograd(got.repeat(etp, 1), sizes, [n] * etp, self.etp_group)
        out = regrouped_experts(self.experts, got, grid)
        if etp > 1:
            out = all_to_all_single_autograd(out, [n] * etp, sizes, self.etp_group).view(etp, n, -1).sum(0)
            if self.experts.down_bias_after_sum:  # each rank adds it to its own rows once; its gradient is
                # summed over the ETP ranks, which hold it alike
                bias = _SumGrad.apply(self.experts.local("w2_bias"), self.etp_group)
                local = mine.shape[1]
                expert = torch.arange(local, device=out.device).repeat(mine.shape[0])
                out = out + bias[expert.repeat_interleave(mine.flatten(), output_size=n)]
        return out

    def _sequence_share(self, t: torch.Tensor) -> torch.Tensor:
        """t [batch, seq, ...], alike on the TP ranks: under sequence parallelism this rank's part of the sequence
        (its backward gathers the TP ranks' gradients of their parts), else t."""
        if self.sequence_mesh is None:
            return t
        from torch.distributed.tensor import DTensor, Replicate, Shard

        whole = DTensor.from_local(t, self.sequence_mesh, [Replicate()], run_check=False)
        return whole.redistribute(self.sequence_mesh, [Shard(1)]).to_local()

    def token_share(self, tokens: torch.Tensor) -> torch.Tensor:
        """This TP rank's share of the (alike) tokens [T, h] that it routes (all of them at tp 1)."""
        return tokens if self.token_group is None else _TakeShare.apply(tokens, self.token_group)

    def all_shares(self, out: torch.Tensor) -> torch.Tensor:
        """The inverse of `token_share`: every TP rank's routed outputs, in rank order."""
        return out if self.token_group is None else _GatherShares.apply(out, self.token_group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, seq, hidden], alike on the TP ranks; returns the layer's output, under sequence parallelism
        this rank's part of the sequence."""
        shape = x.shape
        mine = self.token_share(x.reshape(-1, shape[-1]))
        index, weights, probs = self.route(mine)
        aux = self.aux_loss(index, probs) if (self.moe.router_aux_loss_coef > 0 and torch.is_grad_enabled()) else None
        out = self.all_shares(self.routed(mine, index, weights))
        out = self._sequence_share(out.view(shape))
        if self.shared is not None:
            shared = self.shared(x)  # TP-split: this rank's sequence share under sequence parallelism
            if self.shared_gate is not None:
                shared = self._sequence_share(torch.sigmoid(self.shared_gate(x))) * shared
            out = out + shared
        if aux is not None:
            out = _AddAuxLoss.apply(out, aux, self.aux_loss_scale)
        return out


def regrouped_experts(experts: GroupedExperts, got: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
    """The local `experts`' outputs of rows `got`, which come in blocks (by ETP rank, source rank), each block by
    local expert (received[..., j] rows for local expert j, on got's device), in the same order: the rows are
    regrouped by expert for the experts' GEMMs and put back, without a host read."""
    local = received.shape[-1]
    expert_of_row = torch.arange(local, device=got.device).repeat(received.numel() // local)
    by_expert = expert_of_row.repeat_interleave(received.flatten(), output_size=got.shape[0]).argsort(stable=True)
    return experts(got[by_expert], received.reshape(-1, local).sum(0))[inverse(by_expert)]


def _sums(values: list[int], width: int) -> list[int]:
    """The sums of consecutive runs of `width` values."""
    return [sum(values[i:i + width]) for i in range(0, len(values), width)]


def expert_counts(index: torch.Tensor, experts: int) -> torch.Tensor:
    """How many of the top-k choices `index` [T, k] name each of the experts (int64 [experts]), computed on the
    device: unlike `bincount`, whose output size depends on the values, it needs no host read."""
    flat = index.flatten()
    return flat.new_zeros(experts).scatter_add_(0, flat, torch.ones_like(flat))


def inverse(order: torch.Tensor) -> torch.Tensor:
    """The permutation that undoes `order` (t[order][inverse(order)] == t): one scatter, not a second sort."""
    return torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))


def is_expert_param(fqn: str) -> bool:
    """Whether parameter `fqn` is a routed expert weight (held over the expert mesh, not the attention's)."""
    return ".experts." in fqn
