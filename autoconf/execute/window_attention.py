"""Which keys a query sees, and attention within a sliding window without an s x s mask.

Masks are boolean, True where a query may see a key, from real positions (`window_mask`), so every attention path
(plain, context-parallel, seq1f1b chunks) masks the same pairs. A sliding layer over a sequence at least twice its
window runs `banded_attention`: the queries in blocks of the window, each scored against only the 2 window - 1 keys
that can reach it, with one small mask per block. SDPA then computes O(s w) scores and holds an O(s w) mask where one
mask of the whole sequence costs s^2 of both (GPT-OSS at 128k tokens: a 32 GiB bf16 bias per layer). Which path runs
is `spec.model.window_band`, the rule the cost model reads (`executor_window_work`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import CausalBias, causal_lower_right

from autoconf.spec.model import window_band


def window_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean [queries, keys]: True where a query may see a key, causally (the key at or before it) and, under a
    sliding `window`, within the window keys ending at the query (None: the whole causal past)."""
    behind = query_positions[..., :, None] - key_positions[..., None, :]
    seen = behind >= 0
    return seen if window is None else seen & (behind < window)


def last_queries_mask(queries: int, keys: int, window: int | None, device) -> torch.Tensor:
    """`window_mask` of `queries` queries at the last of `keys` keys' positions 0 .. keys - 1 (a whole sequence over
    itself, a seq1f1b chunk over the earlier chunks and its own, torch's lower-right causal bias)."""
    every = torch.arange(keys, device=device)
    return window_mask(every[keys - queries:], every, window)


def sliding_mask(queries: int, keys: int, window: int | None, device) -> torch.Tensor | None:
    """`last_queries_mask` under a sliding `window`; None where plain causal attention is the same (no window, or
    one that holds every key)."""
    if window is None or keys <= window:
        return None
    return last_queries_mask(queries, keys, window, device)


def lower_right(queries: int, keys: int) -> CausalBias:
    """torch's lower-right causal bias of `queries` queries at the last of `keys` keys' positions, carrying as
    `with_sink_key` the same bias with one query and one key more: the form `AttentionCore.attend` gives attention
    sinks (a leading dummy query, the sink key first) without a mask tensor. Build both outside the modes a forward
    may run under (the per-op policy's): torch cannot create these tensor subclasses inside them."""
    bias = causal_lower_right(queries, keys)
    bias.with_sink_key = causal_lower_right(queries + 1, keys + 1)
    return bias


def causal_or(mask, queries: int, keys: int, device) -> torch.Tensor:
    """`mask` as a boolean tensor: itself, or for None and torch's causal biases the causal [queries, keys] mask with
    the queries the last of the keys' positions."""
    if mask is not None and not isinstance(mask, CausalBias):
        return mask
    return last_queries_mask(queries, keys, None, device)


def attend_within(attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None, p: float,
                  causal=None) -> torch.Tensor:
    """`attend(q, k, v, mask, p)` for queries at the last of the keys' positions, within a sliding `window` (None:
    the whole causal past): banded where `window_band` says so, else under one mask of the window, else under
    `causal` (None where queries and keys are the same positions, else the lower-right causal bias the caller
    built)."""
    if window_band(k.shape[2], window) is not None:
        return banded_attention(attend, q, k, v, window, p)
    mask = sliding_mask(q.shape[2], k.shape[2], window, q.device)
    return attend(q, k, v, causal if mask is None else mask, p)


class Band(NamedTuple):
    """How `window_band`'s blocks lay m queries at the last of n key positions out: `blocks` blocks of `block`
    queries (the last padded by `tail` rows), each against `width` = block + window - 1 keys ending with its last
    query; the keys padded by `lead` zero rows before position 0 and `tail` after the last, block j's keys starting
    at padded row `start` + j block."""

    window: int
    first: int  # the first query's position
    block: int
    blocks: int
    width: int
    lead: int
    tail: int
    start: int

    @classmethod
    def of(cls, queries: int, keys: int, window: int) -> "Band":
        block = window_band(keys, window)
        blocks = -(-queries // block)
        first = keys - queries
        lead = max(0, window - 1 - first)
        return cls(window, first, block, blocks, block + window - 1, lead, blocks * block - queries,
                   first + lead - (window - 1))

    def queries(self, t: torch.Tensor) -> torch.Tensor:
        """[b, heads, m, ...] -> [b x blocks, heads, block, ...], the rows padded to whole blocks."""
        t = F.pad(t, (0, 0) * (t.dim() - 3) + (0, self.tail))
        return t.unflatten(2, (self.blocks, self.block)).transpose(1, 2).flatten(0, 1)

    def rows(self, t: torch.Tensor, b: int, m: int) -> torch.Tensor:
        """The inverse of `queries`, the padded rows dropped."""
        return t.unflatten(0, (b, self.blocks)).transpose(1, 2).flatten(2, 3)[:, :, :m]

    def keys(self, t: torch.Tensor) -> torch.Tensor:
        """[b, kv_heads, n, d] -> each block's keys [b x blocks, kv_heads, width, d] (zeros outside the sequence)."""
        t = F.pad(t, (0, 0, self.lead, self.tail))[:, :, self.start:self.start + (self.blocks - 1) * self.block
                                                     + self.width]
        return t.unfold(2, self.width, self.block).permute(0, 2, 1, 4, 3).flatten(0, 1)

    def key_rows(self, device) -> torch.Tensor:
        """The padded key row of each block's keys, flattened block by block (what `keys` gathers)."""
        return (self.start + torch.arange(self.blocks, device=device)[:, None] * self.block
                + torch.arange(self.width, device=device)).flatten()

    def seen(self, device) -> torch.Tensor:
        """Bool [blocks, 1, block, width]: each block's pairs within the window, keys before position 0 left out."""
        query_pos = self.first + torch.arange(self.blocks * self.block, device=device).view(self.blocks, self.block)
        key_pos = query_pos[:, :1] - (self.window - 1) + torch.arange(self.width, device=device)
        return (window_mask(query_pos, key_pos, self.window) & (key_pos >= 0)[:, None, :]).unsqueeze(1)


def banded_attention(attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                     p: float) -> torch.Tensor:
    """The same result as `attend` under the window's mask, for q [b, heads, m, d] at the last m of the n positions
    of k and v [b, kv_heads, n, d]: the queries in blocks of `window_band`'s size, each against the keys that
    reach it (`Band`), all blocks one batch of `attend` with a [block, block + window - 1] mask each. The padded
    queries' rows are dropped."""
    b, m = q.shape[0], q.shape[2]
    band = Band.of(m, k.shape[2], window)
    out = attend(band.queries(q), band.keys(k), band.keys(v), band.seen(q.device).repeat(b, 1, 1, 1), p)
    return band.rows(out, b, m)
