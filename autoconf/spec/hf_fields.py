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
from autoconf.spec.model import MAX_LAYERS



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


def _rope_scaling(config: dict, name: str) -> tuple[str, dict | None]:
    """(the key it was read from, the RoPE scaling object or None): `rope_scaling`, or transformers 5's
    `rope_parameters` less its rope_theta."""
    key = "rope_scaling"
    scaling = config.get(key)
    if scaling is None:
        key = "rope_parameters"
        scaling = {k: v for k, v in _rope_parameters(config).items() if k != "rope_theta"} or None
    if scaling is not None and not isinstance(scaling, dict):
        raise UserError(f"{name}: {key} must be an object such as {{\"rope_type\": \"llama3\", \"factor\": 8.0}} "
                        f"or null (got {scaling!r})")
    return key, scaling


def _scaling_factor(scaling: dict, key: str, name: str, kind: str) -> float:
    factor = scaling.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (math.isfinite(factor) and factor >= 1):
        raise UserError(f"{name}: {kind} {key} needs a factor >= 1, as Llama 3.1's llama3 8.0 or Qwen's yarn 4.0 "
                        f"(got {factor!r})")
    return float(factor)


def rope_scaling_factor(config: dict, name: str) -> float:
    """The factor of Llama 3.x RoPE scaling (rope_type "llama3" and its `factor`), which lets a model train past
    its context and further; 1.0 without it. Another rope_type is read by `rope_context` (what it extends the
    context to); the cost does not depend on how positions are rotated (the executor rotates them plainly)."""
    key, scaling = _rope_scaling(config, name)
    if scaling is None or (scaling.get("rope_type") or scaling.get("type")) != "llama3":
        return 1.0
    return _scaling_factor(scaling, key, name, "llama3")


# RoPE scalings whose factor stretches an original context (transformers' rope_type names).
STRETCHING_ROPE = ("yarn", "linear", "dynamic")


def rope_context(config: dict, name: str) -> int:
    """The tokens the model is planned up to: max_position_embeddings (4096 when absent), or, under a yarn, linear
    or dynamic RoPE scaling, its factor times the context it stretches when that is longer: its
    `original_max_position_embeddings`, for yarn by default max_position_embeddings as transformers reads it (Qwen's
    yarn 4.0 over 32,768 -> 131,072 tokens; DeepSeek-V3's 40 x 4,096 is its max_position_embeddings already). Linear
    and dynamic scaling without an original length are read as max_position_embeddings (configs write either)."""
    base = config.get("max_position_embeddings", 4096)
    key, scaling = _rope_scaling(config, name)
    kind = scaling and (scaling.get("rope_type") or scaling.get("type"))
    if kind not in STRETCHING_ROPE or not isinstance(base, int) or isinstance(base, bool):
        return base  # (a bad base is ModelSpec's to name)
    factor = _scaling_factor(scaling, key, name, kind)
    original = scaling.get("original_max_position_embeddings", base if kind == "yarn" else None)
    if original is None:
        return base
    if isinstance(original, bool) or not isinstance(original, int) or original < 1:
        raise UserError(f"{name}: {key}.original_max_position_embeddings must be a positive integer (got "
                        f"{original!r})")
    return max(base, int(original * factor))


def sliding_window(config: dict, model_type: str, name: str) -> int | None:
    """The attention window of a config whose layers slide it, or None when every layer attends to the whole
    sequence: transformers 5's `layer_types` when given (a "sliding_attention" layer), else Qwen's
    `use_sliding_window` for the layers from `max_window_layers` on, else Mistral's `sliding_window` when set. The
    spec keeps it so that a sequence longer than the window, where sliding and full attention differ, is refused
    (ModelSpec.context_problem)."""
    layer_types = config.get("layer_types")
    if isinstance(layer_types, list):
        slides = "sliding_attention" in layer_types
    elif model_type.startswith("qwen"):
        first = config.get("max_window_layers")
        layers = config.get("num_hidden_layers")
        slides = hf_bool(config, "use_sliding_window", False, name) and not (
            isinstance(first, int) and isinstance(layers, int) and first >= layers)
    else:
        slides = config.get("sliding_window") is not None
    if not slides:
        return None
    if config.get("sliding_window") is None:
        raise UserError(f"{name}: the config slides attention windows but sets no sliding_window")
    return positive_int(config, "sliding_window", 0, name, "the attention window in tokens")


def llama_fields(config: dict, name: str, model_type: str) -> dict:
    """The ModelSpec fields every Llama-shaped family (dense or MoE) reads alike: layers, width, heads (absent or
    null KV heads: multi-head; 0 is an error), head width, vocabulary, context (`rope_context`), tied embeddings,
    attention dropout, RoPE base, scaling and sliding window. KeyError for a missing key (the caller names it)."""
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads")
    return dict(name=name, arch="llama", num_layers=layer_count(config, "num_hidden_layers", name),
                hidden_size=config["hidden_size"], num_heads=heads,
                num_kv_heads=heads if kv_heads is None else kv_heads,
                head_dim=config.get("head_dim"),  # absent or null: hidden_size / num_attention_heads
                vocab_size=config["vocab_size"], max_seq_len=rope_context(config, name),
                tied_embeddings=hf_bool(config, "tie_word_embeddings", False, name),
                dropout=float(config.get("attention_dropout", 0.0) or 0.0), rope_theta=rope_theta(config),
                rope_scaling_factor=rope_scaling_factor(config, name),
                sliding_window=sliding_window(config, model_type, name))


def refuse_bias(config: dict, name: str, model_type: str, keys: tuple[str, ...] = ("attention_bias",)) -> None:
    """Refuses biases the spec does not describe (a JSON true; anything but a boolean is refused as such)."""
    for key in keys:
        if hf_bool(config, key, False, name):
            raise UserError(f"{name}: {model_type} with {key} true is not modelled (the published models have none)")
