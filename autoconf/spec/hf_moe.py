"""Mixture-of-experts models from Hugging Face config.json files, and the published configs of the MoE presets.

Read here: mixtral, qwen2_moe, qwen3_moe, deepseek_v2, deepseek_v3 and gpt_oss, with the keys of their published
config.json files and of transformers 5's own config classes (which rename some: Qwen3-MoE's `num_experts` is written
`num_local_experts`, `rope_theta` moves into `rope_parameters`). Any other config whose keys name experts is
refused with one line (`refuse_hidden_experts`), so that an MoE model is never planned as a dense one.

DeepSeek's multi-token-prediction modules (`num_nextn_predict_layers`) are read into `mtp_num_layers`, its routing
method (`topk_method`, `n_group`, `topk_group`) by `deepseek_routing`, which says why only the group limit changes
a plan.
gpt-oss is read with its attention sinks, biases, clamped SwiGLU, alternating sliding windows and YaRN (planned,
trained and exported: docs/moe.md "GPT-OSS"). A sliding attention window is read as the dense families read it
(spec/hf_fields.py `sliding_window`).
"""

from __future__ import annotations

import json

from autoconf.errors import UserError
from autoconf.files import quoted, shown
from autoconf.spec.hf_fields import (NON_NEGATIVE, REQUIRED, hf_bool, hf_int, hf_number, llama_fields,
                                     refuse_bias)
from autoconf.spec.model import CLAMPED_SWIGLU_ALPHA, MLASpec, ModelSpec, MoESpec

HF_MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "gpt_oss")
HF_DENSE_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3")  # read by spec/presets.py

# Keys that name routed experts (a positive value means an MoE model), with the family whose key it is.
EXPERT_KEYS = {"num_local_experts": "mixtral", "num_experts": "qwen3_moe", "n_routed_experts": "deepseek_v3",
               "moe_num_experts": None, "num_experts_per_tok": None, "experts_per_token": None,
               "moe_intermediate_size": None, "n_shared_experts": None, "shared_expert_intermediate_size": "qwen2_moe",
               "moe_topk": None, "moe_k": None}


def _says_experts(value) -> bool:
    """Whether an expert key's value names experts: a positive number, written as a JSON number or a string, or a
    list holding one (per-layer counts); not null, false, 0, a word ("none") or empty."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    if isinstance(value, list):
        return any(map(_says_experts, value))
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def expert_keys(config: dict, prefix: str = "", depth: int = 3) -> dict:
    """The expert keys whose value names experts (`_says_experts`), at the top of the config or in the objects below
    it down to `depth` levels (`text_config`, `ffn_config`), as {"key" or "parent.key": value}."""
    found = {prefix + key: config[key] for key in EXPERT_KEYS if _says_experts(config.get(key))}
    for key, value in config.items() if depth > 0 else ():
        if isinstance(value, dict):
            found.update(expert_keys(value, f"{prefix}{key}.", depth - 1))
    return found


def refuse_hidden_experts(config: dict, name: str, model_type) -> None:
    """Raises a UserError when a config that is not of an MoE type autoconf reads has expert keys: read as its
    model_type it would be planned as a dense model (a Mixtral relabelled `mistral` would be a 7.2B model, not
    46.7B)."""
    found = expert_keys(config)
    if not found:
        return
    keys = ", ".join(f"{k}={shown(json.dumps(v), 30)}" for k, v in sorted(found.items()))
    supported = ", ".join(HF_MOE_TYPES)
    if model_type in HF_DENSE_TYPES:
        family = ("qwen2_moe" if "shared_expert_intermediate_size" in found else
                  next((EXPERT_KEYS[k] for k in found if EXPERT_KEYS.get(k)), None))
        hint = f"If it is a {family} model, set model_type to {family!r}" if family else "Set its MoE model_type"
        raise UserError(f"{name}: model_type {model_type!r} is a dense family but the config has mixture-of-experts "
                        f"keys ({keys}); read as {model_type} it would lose its experts. {hint} (MoE types read: "
                        f"{supported})")
    raise UserError(f"{name}: model_type {quoted(model_type)} is a mixture-of-experts family autoconf does "
                    f"not read (keys {keys}); MoE types read: {supported}; dense: {', '.join(HF_DENSE_TYPES)}")


def _key(config: dict, *keys) -> str:
    """The first of `keys` present with a non-null value (transformers renames some keys), else the first."""
    return next((key for key in keys if config.get(key) is not None), keys[0])


def _count(config: dict, name: str, what: str, *keys) -> int:
    """`hf_int` of the first of `keys` the config gives (`_key`), a required positive count; refused when the config
    gives none of them or gives two that differ."""
    given = {key: config[key] for key in keys if config.get(key) is not None}
    if len(keys) > 1 and not given:
        raise UserError(f"{name}: the config gives none of {', '.join(keys)} ({what}); add one")
    if len({json.dumps(value) for value in given.values()}) > 1:
        raise UserError(f"{name}: {' and '.join(f'{key} {json.dumps(value)}' for key, value in given.items())} "
                        f"disagree on {what}; keep one")
    return hf_int(config, _key(config, *keys), name, what)


# DeepSeek's routing methods (`topk_method`) by model type: whether each limits a token to `topk_group` of
# `n_group` expert groups, and the router scoring it goes with (transformers' DeepseekV2TopkRouter: "greedy" and
# "group_limited_greedy" over softmax scores, a group's score its best expert's; DeepseekV3TopkRouter: "noaux_tc"
# only, over sigmoid scores plus the auxiliary-loss-free correction bias, a group's score its best two's). The
# first of each is transformers' default when the key is absent.
TOPK_METHODS = {"deepseek_v2": {"greedy": False, "group_limited_greedy": True},
                "deepseek_v3": {"noaux_tc": True}}
SCORING = {"deepseek_v2": "softmax", "deepseek_v3": "sigmoid"}
# transformers' n_group and topk_group when absent (DeepseekV3Config: 8 and 4; DeepseekV2Config has none, so its
# group-limited method needs both).
DEFAULT_GROUPS = {"deepseek_v2": (REQUIRED, REQUIRED), "deepseek_v3": (8, 4)}


def deepseek_routing(config: dict, name: str, model_type: str) -> dict:
    """The MoESpec router fields of a DeepSeek config: `scoring_func` and, under a group-limited `topk_method`,
    `n_group` and `topk_group` (1 and 1 under "greedy": every expert is open to every token). A topk_method that is
    not the model type's, or a scoring_func that is not its method's, is refused (`TOPK_METHODS`).

    What the method changes in a plan is only the group limit: the cost model prices balanced top-k routing (the
    load imbalance is the profile's measured ratio, else 1), so which experts a token picks, by a group's best score
    or best two, with or without noaux_tc's correction bias, changes no FLOP or byte; the group limit bounds the
    nodes a token's dispatch reaches (cost/moe.py `dispatch_nodes_bound`), which the executor's router keeps
    (execute/moe.py: the group score follows scoring_func, as each method's does) and the Megatron export writes.
    The correction bias is a buffer updated outside the gradient by DeepSeek's balancing, not run by the
    executor."""
    methods = TOPK_METHODS[model_type]
    method = config.get("topk_method")
    method = next(iter(methods)) if method is None else method
    if not isinstance(method, str) or method not in methods:
        raise UserError(f"{name}: topk_method {shown(json.dumps(method), 40)} is not a {model_type} routing method; "
                        f"known: {', '.join(methods)}")
    scoring = config.get("scoring_func")
    scoring = SCORING[model_type] if scoring is None else scoring
    if scoring != SCORING[model_type]:
        raise UserError(f"{name}: scoring_func {shown(json.dumps(scoring), 40)} is not {model_type}'s: its "
                        f"{method} routing scores experts by {SCORING[model_type]} (transformers and DeepSeek's "
                        f"code alike); set scoring_func to {SCORING[model_type]!r} or leave it out")
    if not methods[method]:
        return dict(scoring_func=scoring, n_group=1, topk_group=1)
    groups, top_groups = DEFAULT_GROUPS[model_type]
    return dict(scoring_func=scoring, n_group=hf_int(config, "n_group", name, f"the expert groups {method} "
                                                     f"chooses among", groups),
                topk_group=hf_int(config, "topk_group", name, "the groups a token's experts may lie in",
                                  top_groups))


def moe_from_hf(config: dict, name: str, model_type: str) -> ModelSpec:
    """A spec from the config.json of an MoE family in HF_MOE_TYPES. KeyError for a missing key (the caller names
    it)."""
    common = llama_fields(config, name, model_type)
    layers = common["num_layers"]
    top_k = _count(config, name, "the routed experts each token is sent to", "num_experts_per_tok",
                   "experts_per_token")
    aux = hf_number(config, _key(config, "router_aux_loss_coef", "aux_loss_alpha"), 0.0, name, NON_NEGATIVE)
    if model_type == "mixtral":
        width = hf_int(config, "intermediate_size", name, "the width of one expert")
        moe = MoESpec(num_experts=_count(config, name, "the routed experts", "num_local_experts", "num_experts"),
                      num_experts_per_tok=top_k, moe_intermediate_size=width, router_aux_loss_coef=aux)
        return ModelSpec(**common, ffn_hidden_size=width, norm_eps=hf_number(config, "rms_norm_eps", 1e-5, name),
                         moe=moe)
    if model_type in ("qwen2_moe", "qwen3_moe"):
        step = hf_int(config, "decoder_sparse_step", name, "every how many layers one is MoE", 1)
        sparse_step = {i for i in range(layers) if (i + 1) % step} if step > 1 else set()
        only = config.get("mlp_only_layers") or []
        if not isinstance(only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
            raise UserError(f"{name}: mlp_only_layers must be a list of layer indices, e.g. [0, 1] (got "
                            f"{quoted(only)})")
        dense = sorted(set(only) | sparse_step)
        shared = hf_int(config, "shared_expert_intermediate_size", name, "the shared expert's width, 0 for none", 0,
                        least=0) if model_type == "qwen2_moe" else 0
        expert = hf_int(config, "moe_intermediate_size", name, "the width of one routed expert")
        moe = MoESpec(num_experts=_count(config, name, "the routed experts", "num_experts", "num_local_experts"),
                      num_experts_per_tok=top_k, moe_intermediate_size=expert, num_shared_experts=1 if shared else 0,
                      shared_expert_intermediate_size=shared, shared_expert_gate=bool(shared),
                      dense_layers=tuple(dense), norm_topk_prob=hf_bool(config, "norm_topk_prob", False, name),
                      router_aux_loss_coef=aux)
        if model_type == "qwen3_moe":
            refuse_bias(config, name, model_type)
        # intermediate_size is the width of the dense layers; a model without any may leave it out.
        width = hf_int(config, "intermediate_size", name, "the width of the dense layers' MLP",
                       REQUIRED if dense else expert)
        qkv_bias = hf_bool(config, "qkv_bias", True, name) if model_type == "qwen2_moe" else False
        return ModelSpec(**common, ffn_hidden_size=width, norm_eps=hf_number(config, "rms_norm_eps", 1e-6, name),
                         qk_norm=model_type == "qwen3_moe", qkv_bias=qkv_bias, moe=moe)
    if model_type == "gpt_oss":
        return _gpt_oss(config, name, common, top_k, aux)
    return _deepseek(config, name, model_type, common, top_k, aux)


def _gpt_oss(config: dict, name: str, common: dict, top_k: int, aux: float) -> ModelSpec:
    """gpt_oss (transformers' GptOssConfig): every layer MoE, experts of intermediate_size with biases and the
    clamped SwiGLU (`swiglu_limit`), a biased router whose top-k logits are softmaxed (softmax scores renormalised
    over the top k), attention_bias on q, k, v and o, a learned sink logit per head, alternating sliding layers
    (`layer_types`, read by `llama_fields`)."""
    width = hf_int(config, "intermediate_size", name, "the width of one expert")
    alpha = hf_number(config, "swiglu_alpha", CLAMPED_SWIGLU_ALPHA, name)
    if alpha != CLAMPED_SWIGLU_ALPHA:
        raise UserError(f"{name}: swiglu_alpha {alpha:g} is not read: autoconf's clamped SwiGLU is GPT-OSS's, "
                        f"gate x sigmoid({CLAMPED_SWIGLU_ALPHA} gate); leave swiglu_alpha out or set it to "
                        f"{CLAMPED_SWIGLU_ALPHA}")
    bias = hf_bool(config, "attention_bias", True, name)
    moe = MoESpec(num_experts=_count(config, name, "the routed experts", "num_local_experts", "num_experts"),
                  num_experts_per_tok=top_k, moe_intermediate_size=width, router_bias=True, expert_bias=True,
                  norm_topk_prob=True, router_aux_loss_coef=aux)
    return ModelSpec(**common, ffn_hidden_size=width, norm_eps=hf_number(config, "rms_norm_eps", 1e-5, name),
                     qkv_bias=bias, out_proj_bias=bias, attention_sinks=True,
                     swiglu_limit=hf_number(config, "swiglu_limit", 7.0, name), moe=moe)


def _deepseek(config: dict, name: str, model_type: str, common: dict, top_k: int, aux: float) -> ModelSpec:
    """deepseek_v2 / deepseek_v3: multi-head latent attention, leading dense layers, shared experts, the router of
    `deepseek_routing`, multi-token-prediction modules."""
    refuse_bias(config, name, model_type)
    layers = common["num_layers"]
    first_dense = hf_int(config, "first_k_dense_replace", name, "the leading dense layers", 0, least=0)
    every = hf_int(config, "moe_layer_freq", name, "every how many layers one is MoE", 1)
    expert = hf_int(config, "moe_intermediate_size", name, "the width of one routed expert")
    shared = hf_int(config, "n_shared_experts", name, "the shared experts, 0 for none", 0, least=0)
    moe = MoESpec(num_experts=_count(config, name, "the routed experts", "n_routed_experts", "num_local_experts"),
                  num_experts_per_tok=top_k, moe_intermediate_size=expert, num_shared_experts=shared,
                  shared_expert_intermediate_size=expert if shared else 0, first_k_dense=first_dense,
                  dense_layers=tuple(i for i in range(first_dense, layers) if i % every) if every > 1 else (),
                  norm_topk_prob=hf_bool(config, "norm_topk_prob", model_type == "deepseek_v3", name),
                  routed_scaling_factor=hf_number(config, "routed_scaling_factor", 1.0, name),
                  router_aux_loss_coef=aux, **deepseek_routing(config, name, model_type))
    per_head = "a width per head"
    mla = MLASpec(q_lora_rank=hf_int(config, "q_lora_rank", name, "the query bottleneck rank, null for none", None),
                  kv_lora_rank=hf_int(config, "kv_lora_rank", name, "the rank of the key/value latent"),
                  qk_nope_head_dim=hf_int(config, "qk_nope_head_dim", name, per_head),
                  qk_rope_head_dim=hf_int(config, "qk_rope_head_dim", name, per_head),
                  v_head_dim=hf_int(config, "v_head_dim", name, per_head))
    # head_dim: the width of each head's value and of the attention output per head (the rotary keys and the
    # latent are the mla object's). Every query head gets its own key and value from the latent: transformers' MLA
    # reads no num_key_value_heads (DeepSeek's configs repeat num_attention_heads there), nor does the spec.
    mtp = hf_int(config, "num_nextn_predict_layers", name, "the MTP modules, 0 for none", 0, least=0)
    return ModelSpec(**{**common, "head_dim": mla.v_head_dim, "num_kv_heads": common["num_heads"]},
                     ffn_hidden_size=hf_int(config, "intermediate_size", name, "the width of the dense layers' MLP"),
                     norm_eps=hf_number(config, "rms_norm_eps", 1e-6, name), moe=moe, mla=mla, mtp_num_layers=mtp)


# The published config.json of each MoE preset (only the keys the importer reads; values as published).
_GPT_OSS = {"model_type": "gpt_oss", "hidden_size": 2880, "intermediate_size": 2880, "num_attention_heads": 64,
            "num_key_value_heads": 8, "head_dim": 64, "experts_per_token": 4, "num_experts_per_tok": 4,
            "vocab_size": 201088, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 150000,
            "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                             "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": False},
            "sliding_window": 128, "attention_bias": True, "swiglu_limit": 7.0, "router_aux_loss_coef": 0.9,
            "tie_word_embeddings": False}
PRESET_CONFIGS = {
    # https://huggingface.co/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json
    "mixtral-8x7b": {
        "model_type": "mixtral", "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 14336,
        "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
        "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02, "tie_word_embeddings": False},
    # https://huggingface.co/mistralai/Mixtral-8x22B-v0.1/blob/main/config.json
    "mixtral-8x22b": {
        "model_type": "mixtral", "num_hidden_layers": 56, "hidden_size": 6144, "intermediate_size": 16384,
        "num_attention_heads": 48, "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
        "vocab_size": 32000, "max_position_embeddings": 65536, "rms_norm_eps": 1e-05, "rope_theta": 1000000,
        "router_aux_loss_coef": 0.001},
    # https://huggingface.co/Qwen/Qwen3-30B-A3B/blob/main/config.json
    "qwen3-30b-a3b": {
        "model_type": "qwen3_moe", "num_hidden_layers": 48, "hidden_size": 2048, "intermediate_size": 6144,
        "moe_intermediate_size": 768, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
        "num_experts": 128, "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "norm_topk_prob": True, "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "attention_bias": False,
        "tie_word_embeddings": False},
    # https://huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json
    "qwen3-235b-a22b": {
        "model_type": "qwen3_moe", "num_hidden_layers": 94, "hidden_size": 4096, "intermediate_size": 12288,
        "moe_intermediate_size": 1536, "num_attention_heads": 64, "num_key_value_heads": 4, "head_dim": 128,
        "num_experts": 128, "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "norm_topk_prob": True, "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "attention_bias": False,
        "tie_word_embeddings": False},
    # https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json (num_nextn_predict_layers 1: one MTP
    # module, trained with the model and left out of the published 671B).
    "deepseek-v3": {
        "model_type": "deepseek_v3", "num_hidden_layers": 61, "hidden_size": 7168, "intermediate_size": 18432,
        "moe_intermediate_size": 2048, "num_attention_heads": 128, "num_key_value_heads": 128,
        "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
        "moe_layer_freq": 1, "n_group": 8, "topk_group": 4, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
        "norm_topk_prob": True, "routed_scaling_factor": 2.5, "aux_loss_alpha": 0.001, "q_lora_rank": 1536,
        "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "vocab_size": 129280, "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
        "attention_bias": False, "tie_word_embeddings": False, "num_nextn_predict_layers": 1},
    # https://huggingface.co/openai/gpt-oss-120b/blob/main/config.json: 36 layers alternating sliding and full
    # attention (layer_types, from a sliding one), 128 experts.
    "gpt-oss-120b": {**_GPT_OSS, "num_hidden_layers": 36, "num_local_experts": 128,
                     "layer_types": ["sliding_attention", "full_attention"] * 18},
    # https://huggingface.co/openai/gpt-oss-20b/blob/main/config.json: 24 layers, 32 experts.
    "gpt-oss-20b": {**_GPT_OSS, "num_hidden_layers": 24, "num_local_experts": 32,
                    "layer_types": ["sliding_attention", "full_attention"] * 12},
}
