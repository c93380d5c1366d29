"""What a Hugging Face config.json means where it leaves a key out: the default of that model type's config class in
transformers (5.x: `configuration_<type>.py`, the `__init__` defaults, which `PretrainedConfig.from_dict` fills in),
for the keys autoconf reads with a fallback of its own. Before this table a Mixtral config without
`num_key_value_heads` was read as multi-head (transformers: 8 KV heads), without `rope_theta` as 10000 (1e6) and
without `max_position_embeddings` as 4096 tokens (131072).

Each entry is (the keys any of which the config may give instead, the defaults filled in when it gives none): a
config in transformers 4's spelling (`rope_theta`, `rope_scaling`) gets no transformers 5 `rope_parameters`, and the
reverse. Keys that size the model (widths, layers, heads, experts, top-k, vocabulary) have no entry, and a config
without one is refused by name rather than read as some model's default, but for the Qwen MoE types' dense
`intermediate_size` and Qwen2-MoE's `shared_expert_intermediate_size`, which autoconf had read otherwise (as the
experts' width, or as no shared expert) where transformers fills in its own. tests/test_hf_fields.py checks every
entry against the installed transformers' classes: a key left out reads as that class reads it.
"""

from __future__ import annotations

from collections.abc import Callable


def _alternating_windows(config: dict) -> list[str]:
    """GptOssConfig's layer_types when absent: sliding-window attention on even layers, full on odd ones."""
    return ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(config["num_hidden_layers"])]


# GptOssConfig's rope_parameters (transformers 5; rope_scaling in 4.x): YaRN, factor 32 over 4096 tokens.
GPT_OSS_YARN = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                "original_max_position_embeddings": 4096}

Defaults = tuple[tuple[str, ...], dict[str, object | Callable[[dict], object]]]
_NORM_1E6 = ((("rms_norm_eps",), {"rms_norm_eps": 1e-6}),)
_ROUTER = ((("router_aux_loss_coef",), {"router_aux_loss_coef": 0.001}),)
# Qwen2's, Qwen3's and Qwen2-MoE's window under use_sliding_window, and the layer it starts (or stops) at.
_QWEN_WINDOWS = ((("sliding_window",), {"sliding_window": 4096}), (("max_window_layers",), {"max_window_layers": 28}))


def _one(key: str, value) -> tuple[Defaults]:
    return (((key,), {key: value}),)


def _theta(value: float) -> tuple[Defaults]:
    return ((("rope_parameters", "rope_theta"), {"rope_theta": value}),)


TRANSFORMERS_DEFAULTS: dict[str, tuple[Defaults, ...]] = {
    "llama": (*_one("max_position_embeddings", 2048), *_NORM_1E6),
    "mistral": (*_one("num_key_value_heads", 8), *_one("max_position_embeddings", 4096 * 32),
                *_one("sliding_window", 4096), *_NORM_1E6),
    "qwen2": (*_one("num_key_value_heads", 32), *_one("max_position_embeddings", 32768), *_QWEN_WINDOWS,
              *_NORM_1E6),
    "qwen3": (*_one("num_key_value_heads", 32), *_one("head_dim", 128), *_one("max_position_embeddings", 32768),
              *_QWEN_WINDOWS, *_NORM_1E6),
    "mixtral": (*_one("num_key_value_heads", 8), *_one("max_position_embeddings", 4096 * 32), *_theta(1e6),
                *_ROUTER),
    "qwen2_moe": (*_one("num_key_value_heads", 16), *_one("max_position_embeddings", 32768),
                  *_one("intermediate_size", 5632), *_one("shared_expert_intermediate_size", 5632), *_ROUTER,
                  *_QWEN_WINDOWS, *_NORM_1E6),
    "qwen3_moe": (*_one("num_key_value_heads", 4), *_one("max_position_embeddings", 32768),
                  *_one("intermediate_size", 6144), *_one("sliding_window", 4096), *_ROUTER, *_NORM_1E6),
    "deepseek_v2": (*_one("num_key_value_heads", 32), *_one("max_position_embeddings", 2048),
                    *_one("n_shared_experts", 2), *_one("q_lora_rank", 1536), *_NORM_1E6),
    "deepseek_v3": (*_one("num_key_value_heads", 128), *_one("max_position_embeddings", 4096),
                    *_one("first_k_dense_replace", 3), *_one("n_shared_experts", 1),
                    *_one("routed_scaling_factor", 2.5), *_one("q_lora_rank", 1536),
                    *_one("num_nextn_predict_layers", 1), *_NORM_1E6),
    "gpt_oss": (*_one("num_key_value_heads", 8), *_one("max_position_embeddings", 131072), *_one("head_dim", 64),
                *_one("sliding_window", 128), *_one("layer_types", _alternating_windows), *_theta(150000.0),
                (("rope_parameters", "rope_scaling"), {"rope_scaling": GPT_OSS_YARN}), *_ROUTER),
}


def with_transformers_defaults(config: dict, model_type: str) -> dict:
    """`config` with the defaults transformers' class for `model_type` fills in for the keys it leaves out
    (`TRANSFORMERS_DEFAULTS`); a key given as null stays null, as transformers keeps it."""
    out = dict(config)
    for keys, defaults in TRANSFORMERS_DEFAULTS.get(model_type, ()):
        if not any(key in config for key in keys):
            for key, value in defaults.items():
                out[key] = value(config) if callable(value) else value
    return out
