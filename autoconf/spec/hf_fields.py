"""Reading the fields every Hugging Face family shares, one rule each, for the dense importer (spec/presets.py) and
the mixture-of-experts one (spec/hf_moe.py).

Each reader takes the keys both as published config.json files write them and as transformers 5's config classes
do (`rope_theta` and the RoPE scaling inside `rope_parameters`, `layer_types` naming each layer's attention), and
refuses a value of the wrong type in one line naming the key, rather than reading it as something else (`bool("false")`
is True).
"""

from __future__ import annotations

import math

from autoconf.errors import UserError

MAX_LAYERS = 100_000  # layer patterns are listed layer by layer; more is a typo, not a model


def hf_bool(config: dict, key: str, default: bool, name: str) -> bool:
    """A JSON true or false; absent or null is `default`."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise UserError(f"{name}: {key} must be true or false (got {value!r})")
    return value


def positive_int(config: dict, key: str, default: int, name: str, what: str) -> int:
    """A whole number >= 1 (`what` says what it counts); absent or null is `default`."""
    value = config.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name}: {key} must be a positive integer, {what} (got {value!r})")
    return value


def layer_count(config: dict, key: str, name: str) -> int:
    """The number of transformer layers, 1..MAX_LAYERS. KeyError when the key is missing (the caller names it)."""
    layers = config[key]
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= MAX_LAYERS:
        raise UserError(f"{name}: {key} must be a layer count in 1..{MAX_LAYERS} (got {layers!r})")
    return layers


def _rope_parameters(config: dict) -> dict:
    parameters = config.get("rope_parameters")
    return parameters if isinstance(parameters, dict) else {}


def rope_theta(config: dict) -> float:
    """The RoPE base: `rope_theta`, or transformers 5's `rope_parameters.rope_theta`; 10000 when neither is set."""
    theta = _rope_parameters(config).get("rope_theta")
    return float(config.get("rope_theta", 10000.0) if theta is None else theta)


def rope_scaling_factor(config: dict, name: str) -> float:
    """The factor of Llama 3.x RoPE scaling (`rope_scaling` or transformers 5's `rope_parameters` with rope_type
    "llama3" and its `factor`), which lets a model train past max_position_embeddings; 1.0 without scaling. Another
    rope_type (linear, dynamic, yarn, longrope) is refused: the spec does not describe it, and read as plain RoPE the
    model would be another one."""
    scaling = config.get("rope_scaling")
    if scaling is None:
        scaling = {k: v for k, v in _rope_parameters(config).items() if k != "rope_theta"} or None
    if scaling is None:
        return 1.0
    if not isinstance(scaling, dict):
        raise UserError(f"{name}: rope_scaling must be an object such as {{\"rope_type\": \"llama3\", \"factor\": 8.0}}"
                        f" or null (got {scaling!r})")
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind in (None, "default"):
        return 1.0
    if kind != "llama3":
        raise UserError(f"{name}: rope_scaling of type {kind!r} is not modelled (autoconf reads the \"llama3\" type); "
                        f"remove rope_scaling to plan the model with plain RoPE up to max_position_embeddings")
    factor = scaling.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (math.isfinite(factor) and factor >= 1):
        raise UserError(f"{name}: llama3 rope_scaling needs a factor >= 1, as Llama 3.1's 8.0 (got {factor!r})")
    return float(factor)


def sliding_window(config: dict, model_type: str, name: str) -> int | None:
    """The attention window of a config that slides it (Mistral's `sliding_window`; Qwen's `use_sliding_window`
    with its `sliding_window`; transformers 5's `layer_types` with "sliding_attention" layers), or None when every
    layer attends to the whole sequence. The spec keeps it so that a sequence longer than the window, where
    sliding and full attention differ, is refused (ModelSpec.context_problem)."""
    layer_types = config.get("layer_types")
    slides = isinstance(layer_types, list) and "sliding_attention" in layer_types
    if model_type.startswith("qwen"):
        slides = slides or hf_bool(config, "use_sliding_window", False, name)
    else:
        slides = slides or config.get("sliding_window") is not None
    if not slides:
        return None
    if config.get("sliding_window") is None:
        raise UserError(f"{name}: the config slides attention windows but sets no sliding_window")
    return positive_int(config, "sliding_window", 0, name, "the attention window in tokens")
