"""Reading the fields every Hugging Face family shares, one rule each, for the dense importer (spec/presets.py) and
the mixture-of-experts one (spec/hf_moe.py).

Each reader takes the keys both as published config.json files write them and as transformers 5's config classes
do (`rope_theta` and the RoPE scaling inside `rope_parameters`, `layer_types` naming each layer's attention), and
refuses a value of the wrong type in one line naming the key, rather than reading it as something else (`bool("false")`
is True). Every number is read alike (`hf_int`, `hf_number`): a JSON number of the right kind and range, never a
string that spells one ("1e-5", "500000", "٤٠٩٦": transformers' config classes do not convert strings, so the model
they build would not run) and never a boolean (JSON's true is not a layer count).
"""

from __future__ import annotations

import json
import math

from autoconf.errors import UserError
from autoconf.files import shown
from autoconf.spec.model import MAX_LAYERS, MAX_SIZES, YarnSpec, _positive_int

REQUIRED = object()  # a key without a default: absent, it is a KeyError (the importer names the missing key)

# The range a number must lie in: (test, words for the message).
POSITIVE = (lambda v: v > 0, "a positive number")
NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
PROBABILITY = (lambda v: 0 <= v < 1, "a probability in [0, 1)")


UNQUOTED = "a number is written without quotes"


def _got(value, hint: str = "") -> str:
    """`(got ...)` for a message: the value as JSON, shortened; a string gets `hint` where given (what is written
    without quotes)."""
    try:
        text = json.dumps(value)  # (ASCII: a non-ASCII digit shows as \uXXXX, a control character escaped)
    except (TypeError, ValueError):
        text = repr(value)
    if isinstance(value, str) and hint:
        return f"(got the string {shown(text, 40)}; {hint})"
    return f"(got {shown(text, 40)})"


def _finite(value) -> float | None:
    """`value` as a float when it is a JSON number a float holds (an integer or a finite float, not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def hf_bool(config: dict, key: str, default: bool, name: str) -> bool:
    """A JSON true or false; absent or null is `default`."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise UserError(f"{name}: {key} must be true or false "
                        f"{_got(value, 'true and false are written without quotes')}")
    return value


def hf_int(config: dict, key: str, name: str, what: str, default=REQUIRED, least: int = 1, label: str = ""):
    """A JSON integer >= `least` (`what` says what it counts); absent is `default` (KeyError where REQUIRED), null
    is `default` too where there is one. A string, a boolean or a float (2.0 included) is refused naming `key` (as
    `label` where given: the path of a nested key)."""
    value = config.get(key)
    if key not in config and default is REQUIRED:
        raise KeyError(key)
    if value is None and default is not REQUIRED:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        kind = "a positive integer" if least == 1 else f"a whole number >= {least}"
        raise UserError(f"{name}: {label or key} must be {kind}, {what} {_got(value, UNQUOTED)}")
    return value


def number_value(value, key: str, name: str, rule=POSITIVE) -> float:
    """`value` (read from `key`) as a float: a JSON number satisfying `rule` (POSITIVE, NON_NEGATIVE, PROBABILITY),
    else a UserError naming `key`."""
    test, words = rule
    number = _finite(value)
    if number is None or not test(number):
        raise UserError(f"{name}: {key} must be a JSON number, {words} {_got(value, UNQUOTED)}")
    return number


def hf_number(config: dict, key: str, default: float, name: str, rule=POSITIVE) -> float:
    """`number_value` of `key`; absent or null is `default`."""
    value = config.get(key)
    return default if value is None else number_value(value, key, name, rule)


def layer_count(config: dict, key: str, name: str) -> int:
    """The number of transformer layers, 1..MAX_LAYERS. KeyError when the key is missing (the caller names it)."""
    layers = config[key]
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= MAX_LAYERS:
        raise UserError(f"{name}: {key} must be a layer count in 1..{MAX_LAYERS} {_got(layers, UNQUOTED)}")
    return layers


# Attention kinds of transformers 5's `layer_types` that the spec describes (a sliding layer keeps the window).
LAYER_TYPES = ("full_attention", "sliding_attention")


def _rope_parameters(config: dict, name: str) -> dict:
    """transformers 5's `rope_parameters` object ({} when absent or null). Refused: anything but an object, and an
    object nested by layer type (one RoPE per kind of layer), which the spec does not describe."""
    parameters = config.get("rope_parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise UserError(f"{name}: rope_parameters must be an object such as {{\"rope_type\": \"default\", "
                        f"\"rope_theta\": 10000.0}} or null {_got(parameters)}")
    nested = [key for key in parameters if key in LAYER_TYPES]
    if nested:
        raise UserError(f"{name}: rope_parameters nested by layer type ({', '.join(nested)}) is not read; autoconf "
                        f"describes one RoPE for every layer: give one object")
    return parameters


def rope_theta(config: dict, name: str) -> float:
    """The RoPE base: transformers 5's `rope_parameters.rope_theta`, else `rope_theta`; 10000 when neither is set
    (after spec/hf_defaults.py has filled in the model type's own, e.g. Mixtral's 1e6)."""
    theta = _rope_parameters(config, name).get("rope_theta")
    if theta is None:
        return hf_number(config, "rope_theta", 10000.0, name)
    return number_value(theta, "rope_parameters.rope_theta", name)


# The keys a scaling object names its type by, in the order transformers reads them (`rope_type`, the older `type`).
ROPE_TYPE_KEYS = ("rope_type", "type")


def _rope_type(scaling: dict):
    """A scaling object's type as transformers reads it: `rope_type`, else the older `type`, else "default"."""
    return next((scaling[k] for k in ROPE_TYPE_KEYS if scaling.get(k) is not None), "default")


def _rope_scaling(config: dict, name: str) -> tuple[str, dict | None]:
    """(the key it was read from, the RoPE scaling object or None): `rope_scaling`, or transformers 5's
    `rope_parameters` less its rope_theta; both, scaling differently (type or factor), are refused."""
    key = "rope_scaling"
    scaling = config.get(key)
    parameters = {k: v for k, v in _rope_parameters(config, name).items() if k != "rope_theta"} or None
    if scaling is None:
        key, scaling = "rope_parameters", parameters
    elif isinstance(scaling, dict) and parameters and _rope_type(parameters) != "default":
        kinds = [_rope_type(obj) for obj in (scaling, parameters)]
        if kinds[0] != kinds[1] or scaling.get("factor") != parameters.get("factor"):
            raise UserError(f"{name}: rope_scaling ({kinds[0]}, factor {scaling.get('factor')}) and rope_parameters "
                            f"({kinds[1]}, factor {parameters.get('factor')}) give two RoPE scalings; keep one of "
                            f"them")
    if scaling is not None and not isinstance(scaling, dict):
        raise UserError(f"{name}: {key} must be an object such as {{\"rope_type\": \"llama3\", \"factor\": 8.0}} "
                        f"or null {_got(scaling)}")
    return key, scaling


# transformers' rope_type names read here (its ROPE_INIT_FUNCTIONS less the families' own, such as Gemma's
# "proportional"): "default" rotates plainly; `rope_context` reads the context the others give.
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
# RoPE scalings whose factor stretches an original context (transformers' rope_type names).
STRETCHING_ROPE = ("yarn", "linear", "dynamic")


def _rope_kind(config: dict, name: str) -> tuple[str, dict | None, str]:
    """(key, scaling object or None, rope_type): the type as transformers reads it (`rope_type`, else the older
    `type`, else "default"); another type than ROPE_TYPES is refused naming them."""
    key, scaling = _rope_scaling(config, name)
    kind = _rope_type(scaling) if scaling else "default"
    untyped = scaling and all(scaling.get(k) is None for k in ROPE_TYPE_KEYS)
    if untyped and scaling.get("factor") not in (None, 1):
        # (an audit: read as no scaling, then "the model has no llama3 RoPE scaling (rope_scaling_factor 1)")
        raise UserError(f"{name}: {key} has a factor ({shown(json.dumps(scaling.get('factor')), 40)}) but no "
                        f"rope_type; name the scaling it is ({', '.join(ROPE_TYPES[1:])})")
    if not isinstance(kind, str) or kind not in ROPE_TYPES:
        raise UserError(f"{name}: {key} rope_type {shown(json.dumps(kind), 40)} is not read; known: "
                        f"{', '.join(ROPE_TYPES)}")
    return key, scaling, kind


def _scaling_factor(scaling: dict, key: str, name: str, kind: str) -> float:
    factor = _finite(scaling.get("factor"))
    if factor is None or factor < 1:
        raise UserError(f"{name}: {kind} {key} needs a factor >= 1, as Llama 3.1's llama3 8.0 or Qwen's yarn 4.0 "
                        f"{_got(scaling.get('factor'), UNQUOTED)}")
    return factor


def rope_scaling(config: dict, name: str) -> dict:
    """The spec's Llama 3.x RoPE scaling (rope_type "llama3"): its `factor`, which lets a model train past its
    context and further, and its `low_freq_factor`, `high_freq_factor` and `original_max_position_embeddings`
    (transformers requires all four), which the executor's rotation applies; a linear scaling's factor (every
    position divided by it, as transformers' "linear" does); {} without either (the spec's defaults: no scaling).
    YaRN is `rope_yarn`'s; dynamic and longrope scalings are read by `rope_context` (what they extend the context
    to) and named in `rope_unapplied`: the cost does not depend on how positions are rotated, and the executor
    rotates those models unscaled, saying so (docs/long-context.md, "The executor")."""
    key, scaling, kind = _rope_kind(config, name)
    if kind == "linear":
        return dict(rope_linear_factor=_scaling_factor(scaling, key, name, kind))
    if kind == "dynamic":
        return dict(rope_unapplied=f"dynamic, factor {_scaling_factor(scaling, key, name, kind):g}")
    if kind == "longrope":
        return dict(rope_unapplied="longrope")
    if kind != "llama3":
        return {}
    label = f"{key} llama3"
    factor = _scaling_factor(scaling, key, name, kind)
    low = _finite(scaling.get("low_freq_factor"))
    high = _finite(scaling.get("high_freq_factor"))
    if low is None or high is None or not 0 < low < high:
        given = [scaling.get("low_freq_factor"), scaling.get("high_freq_factor")]
        raise UserError(f"{name}: {label} needs low_freq_factor and high_freq_factor with 0 < low < high, as Llama "
                        f"3.1's 1.0 and 4.0 {_got(given)}")
    original = hf_int(scaling, "original_max_position_embeddings", name, "the context the scaling stretches",
                      label=f"{key}.original_max_position_embeddings")
    return dict(rope_scaling_factor=factor, rope_low_freq_factor=low,
                rope_high_freq_factor=high, rope_original_context=original)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction 0.1 mscale ln(factor) + 1 (1 for factor <= 1), as transformers computes it."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_yarn(config: dict, name: str, model_type: str) -> YarnSpec | None:
    """The spec's YaRN scaling of a config whose rope_type is "yarn" (None otherwise), as transformers'
    `_compute_yarn_parameters` reads it: the factor, the original context (absent: max_position_embeddings),
    beta_fast and beta_slow (32 and 1 when absent or zero), truncate (true when absent), and the attention factor
    (given, else mscale(factor, mscale) / mscale(factor, mscale_all_dim) where both are given, else
    mscale(factor)); for DeepSeek's types the softmax scale mscale(factor, mscale_all_dim)^2 where
    mscale_all_dim is given. A partial rotary factor is refused (no family autoconf reads has one)."""
    key, scaling, kind = _rope_kind(config, name)
    if kind != "yarn":
        return None
    if scaling.get("partial_rotary_factor", 1.0) != 1:
        raise UserError(f"{name}: yarn {key}.partial_rotary_factor is not read (autoconf rotates the whole head) "
                        f"{_got(scaling.get('partial_rotary_factor'))}")
    factor = _scaling_factor(scaling, key, name, kind)
    original = hf_int(scaling, "original_max_position_embeddings", name, "the context the scaling stretches",
                      hf_int(config, "max_position_embeddings", name, "the context in tokens", 4096),
                      label=f"{key}.original_max_position_embeddings")
    given = _finite(scaling.get("attention_factor"))
    mscale, all_dim = _finite(scaling.get("mscale")), _finite(scaling.get("mscale_all_dim"))
    for part, value in (("mscale", mscale), ("mscale_all_dim", all_dim), ("attention_factor", given)):
        if value is not None and value < 0:
            raise UserError(f"{name}: yarn {key}.{part} must be >= 0 (it scales the attention's magnitude) "
                            f"{_got(value)}")
    if given is None:
        given = (yarn_mscale(factor, mscale) / yarn_mscale(factor, all_dim) if mscale and all_dim
                 else yarn_mscale(factor))
    softmax = yarn_mscale(factor, all_dim) ** 2 if model_type.startswith("deepseek") and all_dim else 1.0
    return YarnSpec(factor=factor, original_context=original, attention_factor=given,
                    beta_fast=_finite(scaling.get("beta_fast")) or 32.0,
                    beta_slow=_finite(scaling.get("beta_slow")) or 1.0,
                    truncate=hf_bool(scaling, "truncate", True, name), softmax_scale=softmax)


def _rotary_frequencies(config: dict, scaling: dict) -> int | None:
    """How many frequencies RoPE rotates per head, as transformers counts them: int(head_dim x partial_rotary_factor)
    // 2, head_dim absent or null meaning hidden_size / num_attention_heads; None where those fields are not
    plain numbers (their own readers refuse them)."""
    heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
    head_dim = config.get("head_dim")
    if head_dim is None and _positive_int(heads) and _positive_int(hidden):
        head_dim = hidden // heads
    partial = scaling.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if not _positive_int(head_dim) or _finite(partial) is None:
        return None
    return int(head_dim * partial) // 2


def _check_longrope(config: dict, scaling: dict, key: str, name: str) -> None:
    """Refuses a longrope scaling without the per-frequency `short_factor` and `long_factor` lists that
    transformers requires (Phi-3's), with lists of another length than the head's rotary frequencies (transformers
    only warns, then fails multiplying them into the frequencies), or with an original context that is not a positive
    integer."""
    parts = ("short_factor", "long_factor")
    for part in parts:
        factors = scaling.get(part)
        if not isinstance(factors, list) or not factors or any(_finite(f) is None for f in factors):
            raise UserError(f"{name}: longrope {key}.{part} must be a list of numbers, one per rotary frequency, "
                            f"as Phi-3's configs give {_got(factors)}")
    frequencies = _rotary_frequencies(config, scaling)
    for part in parts:
        if frequencies is not None and len(scaling[part]) != frequencies:
            raise UserError(f"{name}: longrope {key}.{part} has {len(scaling[part])} numbers, but a head rotates "
                            f"{frequencies} frequencies (head_dim x partial_rotary_factor / 2); give one per frequency")
    hf_int(scaling, "original_max_position_embeddings", name, "the context the model was pretrained on", 1,
           label=f"{key}.original_max_position_embeddings")


def rope_context(config: dict, name: str) -> int:
    """The tokens the model is planned up to: max_position_embeddings (absent: the model type's transformers default,
    spec/hf_defaults.py, which `from_hf_config` fills in; else 4096), or, under a yarn, linear
    or dynamic RoPE scaling, its factor times the context it stretches when that is longer: its
    `original_max_position_embeddings`, for yarn by default max_position_embeddings as transformers reads it (Qwen's
    yarn 4.0 over 32,768 -> 131,072 tokens; DeepSeek-V3's 40 x 4,096 is its max_position_embeddings already). Linear
    and dynamic scaling without an original length are read as max_position_embeddings (configs write either).
    Under longrope (Phi-3: `short_factor` / `long_factor` lists over an `original_max_position_embeddings`)
    max_position_embeddings is already the extended context, as transformers reads it (Phi-3-mini-128k: 131,072
    over 4,096); its factor only scales attention. Any other rope_type is refused (`ROPE_TYPES`)."""
    base = hf_int(config, "max_position_embeddings", name, "the context in tokens", 4096)
    key, scaling, kind = _rope_kind(config, name)
    if kind == "longrope":
        _check_longrope(config, scaling, key, name)
        return base
    if kind not in STRETCHING_ROPE:
        return base
    factor = _scaling_factor(scaling, key, name, kind)
    original = hf_int(scaling, "original_max_position_embeddings", name, "the context the scaling stretches",
                      base if kind == "yarn" else None, label=f"{key}.original_max_position_embeddings")
    if original is None:
        return base
    if original > MAX_SIZES["max_seq_len"] or original * factor > MAX_SIZES["max_seq_len"]:
        raise UserError(f"{name}: {kind} {key} stretches {shown(f'{original:,}', 30)} tokens by {factor:g}, beyond "
                        f"the {MAX_SIZES['max_seq_len']:,} tokens autoconf plans")
    return max(base, int(original * factor))


def _layer_types(config: dict, name: str) -> list | None:
    """transformers 5's `layer_types` (None when absent or null): a list of LAYER_TYPES, one per layer."""
    layer_types = config.get("layer_types")
    if layer_types is None:
        return None
    if not isinstance(layer_types, list) or not all(isinstance(t, str) for t in layer_types):
        raise UserError(f"{name}: layer_types must be a list naming each layer's attention, e.g. "
                        f"[\"full_attention\", \"sliding_attention\"] {_got(layer_types)}")
    unknown = sorted(set(layer_types) - set(LAYER_TYPES))
    if unknown:
        raise UserError(f"{name}: layer_types has {shown(', '.join(unknown), 60)}, which autoconf does not read; "
                        f"known: {', '.join(LAYER_TYPES)}")
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int) and not isinstance(layers, bool) and len(layer_types) != layers:
        raise UserError(f"{name}: layer_types names {len(layer_types)} layers but num_hidden_layers is {layers}")
    return layer_types


# Whose attention slides, and by which keys: transformers 5's modelling code of each type. The Qwen types slide only
# under `use_sliding_window` (else their config class sets no window, whatever layer_types say); Qwen2, Qwen3,
# Qwen2-MoE and GPT-OSS read each layer's kind from `layer_types` (absent: their config class derives it), Mistral,
# Mixtral and Qwen3-MoE slide every layer when a window is set; Llama, DeepSeek and GPT-2 read no window at all (a
# stray key there is ignored, as transformers ignores it).
SWITCHED_WINDOWS = ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
LAYER_TYPES_READERS = ("qwen2", "qwen3", "qwen2_moe", "gpt_oss")
EVERY_LAYER_WINDOWS = ("mistral", "mixtral", "qwen3_moe")


def _derived_layer_types(config: dict, model_type: str, name: str, layers: int) -> list[str]:
    """The layer_types a Qwen config class derives when the config gives none and `use_sliding_window` is on: Qwen2
    and Qwen3 slide the layers from `max_window_layers` on, Qwen2-MoE (transformers 5) the even-numbered layers
    below it."""
    first = hf_int(config, "max_window_layers", name, "the layers the sliding window starts or stops at", 0,
                   least=0)
    if model_type == "qwen2_moe":
        slides = [i % 2 == 0 and i < first for i in range(layers)]
    else:
        slides = [i >= first for i in range(layers)]
    return ["sliding_attention" if slide else "full_attention" for slide in slides]


def sliding_window(config: dict, model_type: str, name: str) -> dict:
    """The spec's `sliding_window` and `full_attention_layers` of a config, the layers that slide as transformers 5
    slides them for `model_type` (SWITCHED_WINDOWS, LAYER_TYPES_READERS, EVERY_LAYER_WINDOWS). No sliding layer: no
    window."""
    layers = config.get("num_hidden_layers")
    switched = model_type not in SWITCHED_WINDOWS or hf_bool(config, "use_sliding_window", False, name)
    layer_types = _layer_types(config, name)  # (checked whoever reads them)
    full: tuple = ()
    if model_type in LAYER_TYPES_READERS:
        why = "layer_types has sliding_attention"
        if layer_types is None and switched and model_type in SWITCHED_WINDOWS and isinstance(layers, int) \
                and not isinstance(layers, bool):
            layer_types, why = _derived_layer_types(config, model_type, name, layers), "use_sliding_window is true"
        # (a Qwen config class without use_sliding_window sets no window: its "sliding_attention" layers attend
        # in full)
        slides = switched and layer_types is not None and "sliding_attention" in layer_types
        if slides:
            full = tuple(i for i, kind in enumerate(layer_types) if kind == "full_attention")
    elif model_type in EVERY_LAYER_WINDOWS:
        slides, why = switched and config.get("sliding_window") is not None, "sliding_window is set"
    else:
        slides = False
    if not slides:
        return {"sliding_window": None, "full_attention_layers": ()}
    if config.get("sliding_window") is None:
        raise UserError(f"{name}: the config slides attention windows but sets no sliding_window ({why}); give the "
                        f"window, or no sliding layer")
    window = hf_int(config, "sliding_window", name, "the attention window in tokens", 0)
    return {"sliding_window": window, "full_attention_layers": full}


def attention_dropout(config: dict, name: str, model_type: str) -> float:
    """The attention dropout of a Llama-shaped family: 0. The spec's one `dropout` is applied to the embedding, the
    attention probabilities and each residual branch alike (execute/model.py, and the masks the memory estimate
    counts); these families drop attention probabilities only, so a positive `attention_dropout` would be planned
    and trained as a different model and is refused."""
    dropout = hf_number(config, "attention_dropout", 0.0, name, PROBABILITY)
    if dropout:
        raise UserError(f"{name}: {model_type} with attention_dropout {dropout:g} is not modelled: autoconf's one "
                        f"dropout also drops the embedding and residual outputs, which {model_type} does not; set "
                        f"attention_dropout to 0 to plan it without dropout")
    return dropout


# The activations each reader's MLP computes, by the names transformers' ACT2FN gives them: a Llama-shaped family's
# SwiGLU gates with SiLU (transformers' default for every such type), GPT-2's MLP is GeLU's tanh approximation
# (execute/model.py).
LLAMA_ACTIVATIONS = ("silu", "swish")
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


def refuse_other_activation(config: dict, name: str, model_type: str, key: str, default: str,
                            accepted: tuple[str, ...]) -> None:
    """Refuses a config whose MLP activation (`key`, absent: `default`) is not one autoconf computes (`accepted`):
    it would be planned, exported and trained as another function."""
    act = config.get(key, default)
    if act not in accepted:
        raise UserError(f"{name}: {model_type} with {key} {shown(json.dumps(act), 40)} is not modelled (autoconf's "
                        f"{model_type} MLP computes {accepted[0]}); set {key} to {accepted[0]!r} to plan it so")


def llama_fields(config: dict, name: str, model_type: str) -> dict:
    """The ModelSpec fields every Llama-shaped family (dense or MoE) reads alike: layers, width, heads (absent or
    null KV heads: multi-head; 0 is an error), head width, vocabulary, context (`rope_context`), tied embeddings,
    attention dropout, RoPE base, scaling and sliding window. KeyError for a missing key (the caller names it)."""
    heads = hf_int(config, "num_attention_heads", name, "the attention heads")
    refuse_other_activation(config, name, model_type, "hidden_act", "silu", LLAMA_ACTIVATIONS)
    return dict(name=name, arch="llama", num_layers=layer_count(config, "num_hidden_layers", name),
                hidden_size=hf_int(config, "hidden_size", name, "the model width"), num_heads=heads,
                num_kv_heads=hf_int(config, "num_key_value_heads", name, "the key/value heads", heads),
                # absent or null: hidden_size / num_attention_heads
                head_dim=hf_int(config, "head_dim", name, "the width of one head", None),
                vocab_size=hf_int(config, "vocab_size", name, "the vocabulary"),
                max_seq_len=rope_context(config, name),
                tied_embeddings=hf_bool(config, "tie_word_embeddings", False, name),
                dropout=attention_dropout(config, name, model_type), rope_theta=rope_theta(config, name),
                **rope_scaling(config, name), rope_yarn=rope_yarn(config, name, model_type),
                **sliding_window(config, model_type, name))


# GPT-2's three dropouts; the spec has one probability for all three (transformers' defaults: 0.1 each).
GPT2_DROPOUTS = ("resid_pdrop", "attn_pdrop", "embd_pdrop")


def gpt2_fields(config: dict, name: str) -> dict:
    """The ModelSpec fields of a gpt2 config: layers, width, heads, MLP width (`n_inner`, absent or null: 4 x
    width), vocabulary, learned positions, tied embeddings, norm epsilon and the dropout. The spec has one dropout
    probability, applied where GPT-2 applies its three (the embedding, the attention probabilities, each residual
    branch), so a config whose resid_pdrop, attn_pdrop and embd_pdrop differ is refused. KeyError for a missing key
    (the caller names it). A RoPE scaling is refused: GPT-2 has none to scale, and so are cross-attention blocks
    (`add_cross_attention`: an encoder-decoder's decoder, which autoconf does not model)."""
    if hf_bool(config, "add_cross_attention", False, name):
        raise UserError(f"{name}: gpt2 with add_cross_attention true (a decoder attending to an encoder) is not "
                        f"modelled; set it to false to plan the decoder-only model")
    hidden = hf_int(config, "n_embd", name, "the model width")
    heads = hf_int(config, "n_head", name, "the attention heads")
    refuse_other_activation(config, name, "gpt2", "activation_function", "gelu_new", GPT2_ACTIVATIONS)
    for key in ("rope_scaling", "rope_parameters"):
        if config.get(key) is not None:
            raise UserError(f"{name}: gpt2 learns its positions and has no RoPE, so {key} is not read; remove it "
                            f"(or give the model_type whose RoPE it scales)")
    dropouts = {key: hf_number(config, key, 0.1, name, PROBABILITY) for key in GPT2_DROPOUTS}
    if len(set(dropouts.values())) > 1:
        given = ", ".join(f"{key} {value:g}" for key, value in dropouts.items())
        raise UserError(f"{name}: gpt2 dropouts differ ({given}); autoconf plans one probability for the "
                        f"embedding, attention and residual dropouts alike: set the three to one value (absent, "
                        f"each is 0.1)")
    return dict(name=name, arch="gpt", num_layers=layer_count(config, "n_layer", name), hidden_size=hidden,
                num_heads=heads, num_kv_heads=heads,
                ffn_hidden_size=hf_int(config, "n_inner", name, "the MLP width", 4 * hidden),
                vocab_size=hf_int(config, "vocab_size", name, "the vocabulary"),
                max_seq_len=hf_int(config, "n_positions", name, "the learned positions", 1024),
                tied_embeddings=hf_bool(config, "tie_word_embeddings", True, name),
                dropout=dropouts["resid_pdrop"], norm_eps=hf_number(config, "layer_norm_epsilon", 1e-5, name))


def refuse_bias(config: dict, name: str, model_type: str, keys: tuple[str, ...] = ("attention_bias",)) -> None:
    """Refuses biases the spec does not describe (a JSON true; anything but a boolean is refused as such)."""
    for key in keys:
        if hf_bool(config, key, False, name):
            raise UserError(f"{name}: {model_type} with {key} true is not modelled (the published models have none)")
