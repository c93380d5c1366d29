"""Rotary position embedding as the executor's attention applies it: the rotate-half convention over a head's
width, at each token's real position, with a model's RoPE scaling where it has one (Llama 3.x's "llama3" band,
YaRN and linear, each as transformers computes it: tests/test_hf_equivalence.py checks the logits)."""

from __future__ import annotations

import functools
import math

import torch

from autoconf.spec.model import ModelSpec


def rope_scaling_of(spec: ModelSpec) -> tuple | None:
    """The spec's RoPE scaling as `rotate` takes it: ("llama3", factor, low_freq_factor, high_freq_factor, original
    context), ("yarn", its YarnSpec), ("linear", factor), or None without one."""
    if spec.rope_yarn is not None:
        return ("yarn", spec.rope_yarn)
    if spec.rope_linear_factor != 1:
        return ("linear", spec.rope_linear_factor)
    if spec.rope_scaling_factor == 1:
        return None
    return ("llama3", spec.rope_scaling_factor, spec.rope_low_freq_factor, spec.rope_high_freq_factor,
            spec.rope_original_context)


def _scaled_frequencies(inv_freq: torch.Tensor, theta: float, scaling: tuple) -> tuple[torch.Tensor, float]:
    """(frequencies, magnitude on cos and sin) of `scaling` (`rope_scaling_of`), as transformers computes them.
    llama3: a wavelength longer than original / low_freq_factor divided by the factor, one shorter than
    original / high_freq_factor kept, those between interpolated by original / wavelength. yarn: each frequency
    between its interpolated (divided by the factor) and extrapolated value by a linear ramp over the dimensions
    whose wavelengths fit the original context between beta_fast and beta_slow times; cos and sin times the
    attention factor. linear: every frequency divided by the factor (positions / factor)."""
    if scaling[0] == "linear":
        return inv_freq / scaling[1], 1.0
    if scaling[0] == "llama3":
        _, factor, low, high, original = scaling
        wavelength = 2 * math.pi / inv_freq
        stretched = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelength - low) / (high - low)
        between = (wavelength >= original / high) & (wavelength <= original / low)
        return torch.where(between, (1 - smooth) * stretched / factor + smooth * stretched, stretched), 1.0
    yarn, d = scaling[1], 2 * inv_freq.shape[0]

    def dimension(rotations: float) -> float:
        return d * math.log(yarn.original_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dimension(yarn.beta_fast), dimension(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    ramp = ((torch.arange(d // 2, dtype=torch.float32, device=inv_freq.device) - low)
            / (high - low if high != low else 0.001)).clamp(0, 1)
    return inv_freq / yarn.factor * ramp + inv_freq * (1 - ramp), yarn.attention_factor


def rope_table(theta: float, d: int, scaling: tuple | None, length: int, device: torch.device,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [length, d] of positions 0..length-1 in `dtype`, for head width d and the model's RoPE scaling
    (`rope_scaling_of`). Eager, computed once per arguments and shared by every layer's queries and keys (as
    torchtitan precomputes its table); inside torch.compile computed in the graph, which fuses it."""
    if torch.compiler.is_compiling():
        return _table(theta, d, scaling, length, device, dtype)
    with torch.inference_mode(False):  # a table first made under inference mode could not be saved for backward
        return _cached_table(theta, d, scaling, length, device, dtype)


def _table(theta: float, d: int, scaling: tuple | None, length: int, device: torch.device,
           dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
    magnitude = 1.0
    if scaling is not None:
        inv_freq, magnitude = _scaled_frequencies(inv_freq, theta, scaling)
    angles = torch.outer(torch.arange(length, device=device).to(torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos(), angles.sin()
    if magnitude != 1.0:
        cos, sin = cos * magnitude, sin * magnitude
    return cos.to(dtype), sin.to(dtype)


# Unbounded (a run asks for one or two lengths): an eviction between a block's forward and its recompute would
# give the per-op policy's replay ops it did not record.
_cached_table = functools.lru_cache(maxsize=None)(_table)


def rotate(x: torch.Tensor, theta: float, positions: torch.Tensor | None, scaling: tuple | None = None,
           length: int | None = None) -> torch.Tensor:
    """Rotary embedding (rotate-half convention) of x [batch, heads, seq, head_dim] at token `positions` [seq]
    (None: 0..seq-1), each below `length` (the table's rows: needed with positions), its frequencies those of the
    model's RoPE scaling where given (`rope_scaling_of`, `_scaled_frequencies`)."""
    if positions is not None and length is None:
        raise TypeError("rotate: positions need the sequence length they lie below (length)")
    d = x.shape[-1]
    cos, sin = rope_table(theta, d, scaling, length or x.shape[-2], x.device, x.dtype)
    if positions is not None:
        cos, sin = cos[positions], sin[positions]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
