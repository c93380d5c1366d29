"""Hugging Face config fields every family shares (spec/hf_fields.py): read as published config.json files and as
transformers 5 writes them, and refused in one line when they would otherwise be read as something else."""

from __future__ import annotations

import dataclasses
import json

import pytest

from autoconf.errors import UserError
from autoconf.spec.model import ModelSpec
from autoconf.spec.presets import PRESETS, from_hf_config, load_model

LLAMA = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 8192}
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}
MIXTRAL = {**LLAMA, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2}
QWEN3_MOE = {**LLAMA, "model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2,
             "moe_intermediate_size": 32}


def test_transformers_5_rope_parameters_are_read_by_the_dense_importer():
    """transformers 5 writes rope_theta and the scaling inside rope_parameters; a Llama 3.1 config written so was
    planned with theta 10000 and no scaling (the MoE importer read them already)."""
    spec = from_hf_config({**LLAMA, "rope_parameters": {"rope_theta": 500000.0, **LLAMA3_SCALING}}, "l31")
    assert (spec.rope_theta, spec.rope_scaling_factor) == (500000.0, 8.0)
    published = from_hf_config({**LLAMA, "rope_theta": 500000.0, "rope_scaling": LLAMA3_SCALING}, "l31")
    assert (published.rope_theta, published.rope_scaling_factor) == (500000.0, 8.0)
    default = from_hf_config({**LLAMA, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}, "q")
    assert (default.rope_theta, default.rope_scaling_factor) == (1e6, 1.0)


@pytest.mark.parametrize("config, needle", [
    ({**LLAMA, "rope_scaling": {"rope_type": "llama3"}}, "llama3 rope_scaling needs a factor >= 1"),
    ({**LLAMA, "rope_parameters": {"rope_type": "llama3", "factor": 0.5}}, "llama3 rope_parameters needs a factor"),
    ({**LLAMA, "rope_scaling": [8]}, "rope_scaling must be an object"),
    ({**LLAMA, "tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false"),
    ({**LLAMA, "attention_bias": "false"}, "attention_bias must be true or false"),
    ({**QWEN3_MOE, "attention_bias": "false"}, "attention_bias must be true or false"),
    ({**LLAMA, "attention_bias": True}, "llama with attention_bias true is not modelled"),
    ({**LLAMA, "mlp_bias": True}, "llama with mlp_bias true is not modelled"),
    ({**LLAMA, "num_hidden_layers": 10 ** 8}, "num_hidden_layers must be a layer count in 1..100000"),
    ({**QWEN3_MOE, "decoder_sparse_step": -1}, "decoder_sparse_step must be a positive integer"),
    ({**QWEN3_MOE, "decoder_sparse_step": 2.5}, "decoder_sparse_step must be a positive integer"),
    ({**QWEN3_MOE, "decoder_sparse_step": "2"}, "decoder_sparse_step must be a positive integer"),
    ({**QWEN3_MOE, "norm_topk_prob": "true"}, "norm_topk_prob must be true or false"),
    ({**LLAMA, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": None,
      "layer_types": ["sliding_attention"] * 2}, "slides attention windows but sets no sliding_window"),
    ({**LLAMA, "hidden_act": "gelu"}, "llama with hidden_act \"gelu\" is not modelled .* set hidden_act to 'silu'"),
    ({**QWEN3_MOE, "hidden_act": "relu"}, "qwen3_moe with hidden_act \"relu\" is not modelled"),
    ({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 100, "activation_function": "relu"},
     "gpt2 with activation_function \"relu\" is not modelled"),
])
def test_fields_that_would_be_read_as_something_else_are_one_line(config, needle):
    with pytest.raises(UserError, match=needle):
        from_hf_config(config, "m")


@pytest.mark.parametrize("config, context", [
    ({**LLAMA, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}, 8192),  # no original length: as written
    ({**LLAMA, "rope_parameters": {"rope_theta": 1e6, "rope_type": "dynamic", "factor": 2.0}}, 8192),
    ({**LLAMA, "rope_scaling": {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 4096}},
     16384),
    # Qwen3's documented yarn (factor 4 over 32,768 tokens; its config says 40,960): 131,072
    ({**QWEN3_MOE, "max_position_embeddings": 40960, "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}, 131072),
    ({**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, 16384),  # transformers' default original
    # DeepSeek-V3's published yarn (40 x 4,096), over a shorter max_position_embeddings than its own 163,840
    ({**MIXTRAL, "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                  "beta_fast": 32}}, 163840),
])
def test_stretching_rope_scaling_plans_up_to_the_context_it_reaches_and_no_further(config, context):
    """A yarn config set as Qwen documents for 131,072 tokens was refused past max_position_embeddings with a line
    telling the user to set rope_scaling, which it had. Yarn, linear and dynamic scaling reach their factor times
    the original context; past that only llama3 scaling trains, and the refusal says what the context is."""
    spec = from_hf_config(config, "m")
    assert spec.rope_scaling_factor == 1.0 and spec.max_seq_len == context and spec.context_problem(context) is None
    assert f"context of {context:,} tokens" in spec.context_problem(context + 1)
    kind = (config.get("rope_scaling") or {})
    kind = kind.get("rope_type") or kind.get("type")
    linear = kind == "linear"
    assert spec.rope_linear_factor == (4.0 if linear else 1.0)  # (applied by the executor, exported to Megatron)
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    # (dynamic: read for its context, named where the executor and the exports rotate unscaled)
    assert spec.rope_unapplied == ("dynamic, factor 2" if scaling.get("rope_type") == "dynamic" else None)
    if kind in ("yarn", "linear"):  # its own scaling named, not "has no llama3 RoPE scaling"
        assert f"its {kind} RoPE scaling reaches no further" in spec.context_problem(context + 1)
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_a_linear_rope_factor_below_one_or_beside_another_scaling_is_refused():
    assert "rope_linear_factor" not in PRESETS["tiny-llama"].to_dict()
    for fields in ({"rope_linear_factor": 0.5}, {"rope_linear_factor": 2.0, "rope_scaling_factor": 8.0}):
        with pytest.raises(UserError, match="rope_linear_factor"):
            dataclasses.replace(PRESETS["tiny-llama"], **fields)


@pytest.mark.parametrize("scaling, needle", [
    ({"rope_type": "yarn"}, "yarn rope_scaling needs a factor >= 1"),
    ({"rope_type": "linear", "factor": 2.0, "original_max_position_embeddings": "4k"},
     "original_max_position_embeddings must be a positive integer"),
])
def test_a_stretching_rope_scaling_without_usable_numbers_is_one_line(scaling, needle):
    with pytest.raises(UserError, match=needle):
        from_hf_config({**LLAMA, "rope_scaling": scaling}, "m")


def test_an_moe_importer_error_names_the_file_once():
    for config, needle in (({**MIXTRAL, "num_hidden_layers": 200000}, "num_hidden_layers must be a layer count"),
                           ({**QWEN3_MOE, "mlp_only_layers": [99]}, "moe.dense_layers: 99 lies beyond the")):
        with pytest.raises(UserError) as err:
            from_hf_config(config, "mx_layers")
        assert str(err.value).startswith("mx_layers: ") and str(err.value).count("mx_layers") == 1, err.value
        assert needle in str(err.value)


def test_sliding_windows_are_read_per_layer_and_limit_no_sequence():
    """Mistral 7B v0.1 (sliding_window 4096, context 32768) slides every layer and plans its whole context; Qwen's
    switch slides the layers from max_window_layers on; transformers 5's layer_types names each layer (GPT-OSS's
    alternating layers). A model without a sliding layer has no window."""
    mistral = from_hf_config({**LLAMA, "model_type": "mistral", "sliding_window": 4096,
                              "max_position_embeddings": 32768}, "mistral-v01")
    assert (mistral.sliding_window, mistral.full_attention_layers) == (4096, ())
    assert mistral.context_problem(32768) is None and mistral.default_seq_len == 8192
    assert [mistral.attention_window(i) for i in range(2)] == [4096, 4096]
    assert load_model_json(mistral) == mistral
    assert from_hf_config({**LLAMA, "model_type": "mistral", "sliding_window": None}, "m").sliding_window is None
    qwen = {**LLAMA, "model_type": "qwen2", "sliding_window": 512, "num_hidden_layers": 4}
    assert from_hf_config(qwen, "q").sliding_window is None  # use_sliding_window false: the window is not used
    assert from_hf_config({**qwen, "use_sliding_window": True}, "q").full_attention_layers == ()
    above_1 = from_hf_config({**qwen, "use_sliding_window": True, "max_window_layers": 1}, "q")
    assert [above_1.attention_window(i) for i in range(4)] == [None, 512, 512, 512]
    alternating = from_hf_config({**qwen, "use_sliding_window": True,
                                  "layer_types": ["sliding_attention", "full_attention"] * 2}, "q")
    assert (alternating.sliding_window, alternating.full_attention_layers) == (512, (1, 3))
    assert load_model_json(alternating) == alternating and alternating.to_dict()["full_attention_layers"] == [1, 3]
    slides_from_layer_4 = {**qwen, "use_sliding_window": True, "max_window_layers": 4}  # of 4 layers: none slides
    assert from_hf_config(slides_from_layer_4, "q").sliding_window is None
    assert from_hf_config({**slides_from_layer_4, "layer_types": ["full_attention"] * 4}, "q").sliding_window is None
    data = from_hf_config(LLAMA, "l").to_dict()  # a dense model's JSON is as before
    assert "sliding_window" not in data and "full_attention_layers" not in data


def load_model_json(spec):
    from autoconf.spec.model import ModelSpec

    return ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))


def test_a_model_folder_is_read_through_its_config(tmp_path):
    folder = tmp_path / "Llama-tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA))
    assert load_model(str(folder)).name == "Llama-tiny"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="a folder without a config.json"):
        load_model(str(tmp_path / "empty"))


DENSE_CLASSES = [("LlamaConfig", {}), ("LlamaConfig", {"tie_word_embeddings": True, "head_dim": 32}),
                 ("MistralConfig", {"sliding_window": None}), ("Qwen2Config", {}), ("Qwen3Config", {}),
                 ("Qwen3Config", {"tie_word_embeddings": True})]


@pytest.mark.parametrize("class_name, overrides", DENSE_CLASSES, ids=[f"{c}-{i}" for i, (c, _) in
                                                                     enumerate(DENSE_CLASSES)])
def test_dense_import_matches_transformers_models_on_the_meta_device(class_name, overrides):
    """Each dense config class, written by transformers 5 (rope_parameters, layer_types) and read by
    from_hf_config, gives the parameter count of the model transformers builds (qwen3: q/k norms, head_dim 128;
    qwen2: q/k/v biases), block by block."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    config = getattr(transformers, class_name)(num_hidden_layers=2, hidden_size=256, intermediate_size=512,
                                               num_attention_heads=8, num_key_value_heads=4, vocab_size=1000,
                                               **overrides)
    spec = from_hf_config(config.to_dict(), class_name)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert spec.total_params() == sum(p.numel() for p in model.parameters())
    assert [spec.layer_params(i) for i in range(2)] == [sum(p.numel() for p in b.parameters())
                                                        for b in model.model.layers]


def test_limits_search_a_sliding_window_model_up_to_its_context(tmp_path):
    """`limits` searches Mistral 7B v0.1 up to its 32k context (it stopped at the 4096 window before windows were
    modelled)."""
    from click.testing import CliRunner

    from autoconf.cli import main

    config = {**LLAMA, "model_type": "mistral", "sliding_window": 64, "max_position_embeddings": 512}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["limits", "--model", str(tmp_path / "config.json"), "--cluster", "cpu-local",
                                       "--global-batch", "4", "--only", "seq"])
    assert result.exit_code == 0, result.output
    assert "context is 512 tokens" in result.output


# ---- every number read alike (fuzz report: "0.1" and "500000" were read through float(), "1e-5" refused) -----------
GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 256, "n_positions": 128}
DEEPSEEK_V3 = {**LLAMA, "model_type": "deepseek_v3", "moe_intermediate_size": 32, "n_routed_experts": 8,
               "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1, "n_group": 4,
               "topk_group": 2, "kv_lora_rank": 16, "q_lora_rank": None, "qk_nope_head_dim": 16,
               "qk_rope_head_dim": 8, "v_head_dim": 16}
DEEPSEEK_V2 = {**DEEPSEEK_V3, "model_type": "deepseek_v2", "topk_method": "group_limited_greedy"}


@pytest.mark.parametrize("base, key, value", [
    (LLAMA, "rms_norm_eps", "1e-5"), (LLAMA, "rope_theta", "500000"), (LLAMA, "attention_dropout", "0.1"),
    (LLAMA, "hidden_size", "64"), (LLAMA, "num_attention_heads", "4"), (LLAMA, "num_key_value_heads", "2"),
    (LLAMA, "head_dim", "16"), (LLAMA, "vocab_size", "256"), (LLAMA, "intermediate_size", "128"),
    (LLAMA, "max_position_embeddings", "8192"), (LLAMA, "num_hidden_layers", "2"),
    (LLAMA, "hidden_size", "٦٤"), (LLAMA, "max_position_embeddings", "８１９２"),  # Arabic-Indic, full-width digits
    (LLAMA, "num_hidden_layers", True), (LLAMA, "hidden_size", True), (LLAMA, "num_key_value_heads", True),
    (LLAMA, "rms_norm_eps", True), (LLAMA, "rope_theta", False), (LLAMA, "rope_theta", float("nan")),
    (LLAMA, "rms_norm_eps", float("inf")), (LLAMA, "hidden_size", 64.0), (LLAMA, "rope_theta", 10 ** 400),
    (GPT2, "n_embd", "64"), (GPT2, "n_positions", True), (GPT2, "resid_pdrop", "0.1"), (GPT2, "attn_pdrop", "0"),
    (GPT2, "layer_norm_epsilon", "1e-5"), (GPT2, "n_inner", "256"),
    (MIXTRAL, "num_experts_per_tok", "2"), (MIXTRAL, "num_local_experts", "4"),
    (MIXTRAL, "router_aux_loss_coef", "0.02"), (QWEN3_MOE, "moe_intermediate_size", "32"),
    (DEEPSEEK_V3, "routed_scaling_factor", "2.5"), (DEEPSEEK_V3, "n_group", "4"), (DEEPSEEK_V3, "topk_group", True),
    (DEEPSEEK_V3, "kv_lora_rank", True), (DEEPSEEK_V3, "first_k_dense_replace", True),
    (DEEPSEEK_V3, "n_shared_experts", "1"), (DEEPSEEK_V3, "aux_loss_alpha", "0.001"),
])
def test_a_number_that_is_not_a_json_number_is_refused_naming_its_key(base, key, value):
    """A string that spells a number (also in other scripts' digits, which int() and float() accept), a boolean, a
    float where a count is meant, NaN, infinity and a number no float holds: one line naming the key, whatever the
    key. transformers' own config classes do not convert strings either (below)."""
    with pytest.raises(UserError) as err:
        from_hf_config({**base, key: value}, "m")
    message = str(err.value)
    assert message.startswith(f"m: {key} must be ") and "\n" not in message, message
    if isinstance(value, str):
        assert "the string" in message and "a number is written without quotes" in message, message


def test_a_nested_number_names_its_path():
    with pytest.raises(UserError, match=r"m: rope_parameters.rope_theta must be a JSON number, a positive number "
                                        r"\(got the string \"1e6\""):
        from_hf_config({**LLAMA, "rope_parameters": {"rope_theta": "1e6", "rope_type": "default"}}, "m")
    with pytest.raises(UserError, match="rope_scaling.original_max_position_embeddings must be a positive integer"):
        from_hf_config({**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 2.0,
                                                  "original_max_position_embeddings": True}}, "m")


def test_transformers_does_not_convert_string_numbers_either():
    """The expected behaviour: transformers 5 refuses a string where its config declares a float or an int, and
    keeps a string rope_theta a string (its rotary embedding then fails), so no reading of "1e-5" as 1e-5 is what
    the model would be."""
    transformers = pytest.importorskip("transformers")
    for field in ({"rms_norm_eps": "1e-5"}, {"num_hidden_layers": True}, {"hidden_size": "64"}):
        with pytest.raises(Exception, match=f"Field '{next(iter(field))}' expected"):  # (huggingface_hub's error)
            transformers.LlamaConfig(**field)
    assert transformers.LlamaConfig(rope_theta="500000").rope_parameters["rope_theta"] == "500000"


def test_json_numbers_of_every_kind_are_still_read():
    spec = from_hf_config({**LLAMA, "rms_norm_eps": 1e-5, "rope_theta": 500000, "attention_dropout": 0,
                           "num_key_value_heads": None, "head_dim": None}, "m")
    assert (spec.norm_eps, spec.rope_theta, spec.dropout, spec.num_kv_heads, spec.head_dim) == (1e-5, 500000.0,
                                                                                                0.0, 4, 16)


# ---- layer_types and rope_parameters of the wrong shape (fuzz report: ignored) ------------------------------------
@pytest.mark.parametrize("config, needle", [
    ({**LLAMA, "layer_types": "sliding_attention"}, "layer_types must be a list naming each layer's attention"),
    ({**LLAMA, "layer_types": {"0": "full_attention"}}, "layer_types must be a list"),
    ({**LLAMA, "layer_types": ["full_attention", 1]}, "layer_types must be a list"),
    ({**LLAMA, "layer_types": ["full_attention", "chunked_attention"]},
     "layer_types has chunked_attention, which autoconf does not read; known: full_attention, sliding_attention"),
    ({**LLAMA, "layer_types": ["full_attention"] * 3}, "layer_types names 3 layers but num_hidden_layers is 2"),
    ({**LLAMA, "rope_parameters": [10000.0, "default"]}, "rope_parameters must be an object"),
    ({**LLAMA, "rope_parameters": "default"}, "rope_parameters must be an object"),
    ({**LLAMA, "layer_types": ["full_attention", "sliding_attention"], "sliding_window": 64,
      "rope_parameters": {"full_attention": {"rope_type": "default"}, "sliding_attention": {"rope_type": "default"}}},
     "rope_parameters nested by layer type \\(full_attention, sliding_attention\\) is not read"),
])
def test_layer_types_and_rope_parameters_of_another_shape_are_refused(config, needle):
    with pytest.raises(UserError, match=needle) as err:
        from_hf_config(config, "m")
    assert "\n" not in str(err.value)


def test_transformers_refuses_a_layer_types_string_too():
    transformers = pytest.importorskip("transformers")
    with pytest.raises(Exception, match="Field 'layer_types' with value 'sliding_attention' doesn't match"):
        transformers.Qwen2Config(num_hidden_layers=2, layer_types="sliding_attention")


# ---- RoPE types: longrope read, the rest refused (fuzz report: longrope and unknown types ignored) ----------------
PHI3_128K_SCALING = {"type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8}


def test_longrope_plans_up_to_max_position_embeddings_which_is_already_the_extended_context():
    """Phi-3-mini-128k writes max_position_embeddings 131072, original_max_position_embeddings 4096 and a longrope
    rope_scaling of two factor lists: transformers takes 131,072 as the context (its attention scale is the
    longrope one for 131072 / 4096, below), so the plan goes to 131,072 tokens and no further."""
    config = {**LLAMA, "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
              "rope_scaling": PHI3_128K_SCALING}
    spec = from_hf_config(config, "phi3-like")
    assert (spec.max_seq_len, spec.rope_scaling_factor, spec.rope_unapplied) == (131072, 1.0, "longrope")
    assert spec.context_problem(131072) is None and "context of 131,072 tokens" in spec.context_problem(131073)
    written = from_hf_config({**LLAMA, "max_position_embeddings": 131072, "rope_parameters": {
        "rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8,
        "original_max_position_embeddings": 4096, "rope_theta": 10000.0}}, "t5")
    assert written.max_seq_len == 131072
    short = from_hf_config({**LLAMA, "rope_scaling": {**PHI3_128K_SCALING, "factor": 32.0}}, "m")
    assert short.max_seq_len == 8192  # (the factor scales attention only; transformers reads no context from it)


def test_longrope_matches_transformers():
    """transformers' longrope: the attention scale comes from max_position_embeddings / original (so the former is
    the extended context); Phi3Config's defaults have no scaling, and read as llama they plan its 4,096 tokens."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    import math

    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                      intermediate_size=128, vocab_size=256, max_position_embeddings=131072,
                                      rope_parameters={"rope_type": "longrope", "short_factor": [1.0] * 8,
                                                       "long_factor": [4.0] * 8,
                                                       "original_max_position_embeddings": 4096})
    _, attention_factor = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu")
    assert attention_factor == pytest.approx(math.sqrt(1 + math.log(131072 / 4096) / math.log(4096)))
    assert from_hf_config(config.to_dict(), "l").max_seq_len == 131072
    phi3 = transformers.Phi3Config()
    assert (phi3.max_position_embeddings, phi3.original_max_position_embeddings) == (4096, 4096)
    assert from_hf_config({**phi3.to_dict(), "model_type": "llama"}, "p").max_seq_len == 4096


def test_longrope_lists_of_another_length_fail_in_transformers_as_autoconf_says():
    """transformers only warns of longrope factor lists whose length is not the head's rotary frequencies, then
    fails multiplying them into the frequencies; autoconf refuses the config in one line instead."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    parameters = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 16,
                  "original_max_position_embeddings": 4096}
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                      intermediate_size=128, vocab_size=256, max_position_embeddings=131072,
                                      rope_parameters=parameters)
    with pytest.raises(RuntimeError):
        ROPE_INIT_FUNCTIONS["longrope"](config, torch.device("cpu"), seq_len=131072)
    with pytest.raises(UserError, match="long_factor has 16 numbers, but a head rotates 8 frequencies"):
        from_hf_config(config.to_dict(), "l")


@pytest.mark.parametrize("scaling, needle", [
    ({"type": "su", "short_factor": [1.0], "long_factor": [1.0]},
     "rope_scaling rope_type \"su\" is not read; known: default, linear, dynamic, yarn, longrope, llama3"),
    ({"rope_type": "mrope", "mrope_section": [16, 24, 24]}, "rope_type \"mrope\" is not read"),
    ({"rope_type": "proportional"}, "rope_type \"proportional\" is not read"),
    ({"rope_type": 3}, "rope_type 3 is not read"),
    ({"rope_type": "", "factor": 8.0}, "rope_type \"\" is not read"),
    ({"factor": 4.0}, r"rope_scaling has a factor \(4.0\) but no rope_type; name the scaling it is \(linear, "),
    ({"type": "longrope", "long_factor": [1.0]}, "longrope rope_scaling.short_factor must be a list of numbers"),
    ({"type": "longrope", "short_factor": [1.0], "long_factor": ["1"]}, "long_factor must be a list of numbers"),
    ({**PHI3_128K_SCALING, "long_factor": [4.0] * 16},
     r"longrope rope_scaling.long_factor has 16 numbers, but a head rotates 8 frequencies \(head_dim x "),
    ({**PHI3_128K_SCALING, "partial_rotary_factor": 0.5},
     "longrope rope_scaling.short_factor has 8 numbers, but a head rotates 4 frequencies"),
    ({**PHI3_128K_SCALING, "original_max_position_embeddings": "4k"},
     "rope_scaling.original_max_position_embeddings must be a positive integer"),
])
def test_an_unknown_rope_type_or_an_unusable_longrope_is_one_line(scaling, needle):
    with pytest.raises(UserError, match=needle):
        from_hf_config({**LLAMA, "rope_scaling": scaling}, "m")
    with pytest.raises(UserError, match=needle.replace("rope_scaling", "rope_parameters")):
        from_hf_config({**LLAMA, "rope_parameters": scaling}, "m")


# ---- DeepSeek's routing method (fuzz report: topk_method ignored) -------------------------------------------------
def test_deepseek_topk_method_sets_the_group_limit_or_is_refused():
    """deepseek_v2: "greedy" (transformers' default) leaves every expert open, "group_limited_greedy" reads n_group
    and topk_group; deepseek_v3 routes by "noaux_tc" only, with DeepseekV3Config's 8 and 4 groups when absent.
    Another method, or a scoring_func that is not the method's, is one line."""
    grouped = from_hf_config(DEEPSEEK_V2, "v2").moe
    assert (grouped.n_group, grouped.topk_group, grouped.scoring_func) == (4, 2, "softmax")
    for method in ("greedy", None):
        greedy = from_hf_config({**DEEPSEEK_V2, "topk_method": method}, "v2").moe
        assert (greedy.n_group, greedy.topk_group) == (1, 1)
    v3 = from_hf_config({**DEEPSEEK_V3, "topk_method": "noaux_tc"}, "v3").moe
    assert (v3.n_group, v3.topk_group, v3.scoring_func) == (4, 2, "sigmoid")
    eight = {k: v for k, v in DEEPSEEK_V3.items() if k not in ("n_group", "topk_group")}
    assert (lambda m: (m.n_group, m.topk_group))(from_hf_config(eight, "v3").moe) == (8, 4)
    for config, needle in [
        ({**DEEPSEEK_V2, "topk_method": "noaux_tc"},
         "topk_method \"noaux_tc\" is not a deepseek_v2 routing method; known: greedy, group_limited_greedy"),
        ({**DEEPSEEK_V3, "topk_method": "greedy"}, "topk_method \"greedy\" is not a deepseek_v3 routing method; "
                                                  "known: noaux_tc"),
        ({**DEEPSEEK_V2, "topk_method": ["greedy"]}, "topk_method \\[\"greedy\"\\] is not"),
        ({**DEEPSEEK_V3, "scoring_func": "softmax"}, "scoring_func \"softmax\" is not deepseek_v3's"),
        ({**DEEPSEEK_V2, "scoring_func": "sigmoid"}, "scoring_func \"sigmoid\" is not deepseek_v2's"),
        ({k: v for k, v in DEEPSEEK_V2.items() if k != "n_group"}, "lacks key 'n_group'"),
        ({**DEEPSEEK_V2, "topk_group": None}, "topk_group must be a positive integer"),
    ]:
        with pytest.raises(UserError, match=needle):
            from_hf_config(config, "ds")


def test_deepseek_routing_matches_transformers_config_classes():
    transformers = pytest.importorskip("transformers")
    small = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=128,
                 moe_intermediate_size=32, vocab_size=256, num_experts_per_tok=2, first_k_dense_replace=1,
                 kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)
    v2 = transformers.DeepseekV2Config(**small, n_routed_experts=8, topk_method="group_limited_greedy", n_group=4,
                                       topk_group=2)
    assert (lambda m: (m.n_group, m.topk_group))(from_hf_config(v2.to_dict(), "v2").moe) == (4, 2)
    greedy = transformers.DeepseekV2Config(**small, n_routed_experts=8)  # topk_method "greedy", n_group None
    assert (lambda m: (m.n_group, m.topk_group))(from_hf_config(greedy.to_dict(), "v2").moe) == (1, 1)
    v3 = transformers.DeepseekV3Config(**small, n_routed_experts=16)
    data = {k: v for k, v in v3.to_dict().items() if k not in ("n_group", "topk_group")}
    assert (lambda m: (m.n_group, m.topk_group))(from_hf_config(data, "v3").moe) == (v3.n_group, v3.topk_group)


# ---- dropouts (fuzz report: GPT-2's attn_pdrop and embd_pdrop ignored) --------------------------------------------
def test_gpt2_dropouts_must_agree_since_the_spec_plans_one():
    """autoconf's one dropout drops the embedding, the attention probabilities and each residual branch (the
    executor, the memory estimate's masks): GPT-2's three agreeing are read as it, three that differ are refused;
    transformers' defaults (0.1 each) apply to the absent ones."""
    assert from_hf_config(GPT2, "g").dropout == 0.1
    assert from_hf_config({**GPT2, **dict.fromkeys(("resid_pdrop", "attn_pdrop", "embd_pdrop"), 0.0)}, "g").dropout == 0
    for config in ({**GPT2, "attn_pdrop": 0.0}, {**GPT2, "resid_pdrop": 0.0, "attn_pdrop": 0.0}):
        with pytest.raises(UserError, match=r"g: gpt2 dropouts differ \(resid_pdrop .*, attn_pdrop 0, embd_pdrop "
                                            r"0.1\); autoconf plans one probability"):
            from_hf_config(config, "g")
    with pytest.raises(UserError, match=r"resid_pdrop must be a JSON number, a probability in \[0, 1\)"):
        from_hf_config({**GPT2, "resid_pdrop": 1.0}, "g")


def test_gpt2_defaults_match_transformers():
    transformers = pytest.importorskip("transformers")
    spec = from_hf_config(transformers.GPT2Config(n_layer=2).to_dict(), "gpt2")
    assert (spec.dropout, spec.max_seq_len, spec.ffn_hidden_size, spec.norm_eps) == (0.1, 1024, 3072, 1e-5)
    with pytest.raises(UserError, match="gpt2 dropouts differ"):
        from_hf_config(transformers.GPT2Config(n_layer=2, attn_pdrop=0.0).to_dict(), "gpt2")


def test_a_llama_attention_dropout_is_refused_since_the_spec_would_drop_residuals_too():
    with pytest.raises(UserError, match="llama with attention_dropout 0.1 is not modelled: autoconf's one dropout "
                                        "also drops the embedding and residual outputs"):
        from_hf_config({**LLAMA, "attention_dropout": 0.1}, "m")
    assert from_hf_config({**LLAMA, "attention_dropout": 0.0}, "m").dropout == 0.0


# ---- context wording (fuzz report: autoconf's own model JSON was told of max_position_embeddings) ----------------
def test_context_lines_name_autoconfs_fields_first(tmp_path):
    """A model read from autoconf's model JSON is told of max_seq_len and rope_scaling_factor, the fields it has;
    a config.json's names follow them."""
    from autoconf.spec.model import ModelSpec

    path = tmp_path / "model.json"
    path.write_text(json.dumps(ModelSpec(name="own", arch="llama", num_layers=2, hidden_size=64, num_heads=4,
                                         num_kv_heads=4, ffn_hidden_size=128, vocab_size=256,
                                         max_seq_len=1024).to_dict()))
    line = load_model(str(path)).context_problem(2048)
    assert "context of 1,024 tokens (max_seq_len; in a config.json max_position_embeddings" in line
    assert "(rope_scaling_factor 1)" in line and "\n" not in line
    gpt = ModelSpec(name="own", arch="gpt", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=4,
                    ffn_hidden_size=256, vocab_size=256, max_seq_len=128)
    assert "128 learned positions (max_seq_len; n_positions in a config.json)" in gpt.context_problem(256)


# ---- Llama 3.x RoPE scaling: every parameter read, kept and checked (the executor applies them) -------------------
def test_llama3_scaling_keeps_its_frequency_band_and_the_json_says_it_when_not_llama_31s():
    from autoconf.spec.model import ModelSpec

    ours = from_hf_config({**LLAMA, "rope_scaling": {**LLAMA3_SCALING, "low_freq_factor": 2.0,
                                                     "original_max_position_embeddings": 4096}}, "m")
    assert (ours.rope_scaling_factor, ours.rope_low_freq_factor, ours.rope_high_freq_factor,
            ours.rope_original_context) == (8.0, 2.0, 4.0, 4096)
    data = json.loads(json.dumps(ours.to_dict()))
    assert data["rope_low_freq_factor"] == 2.0 and "rope_high_freq_factor" not in data  # Llama 3.1's 4: left out
    assert ModelSpec.from_dict(data) == ours
    with pytest.raises(UserError, match="needs low_freq_factor and high_freq_factor with 0 < low < high"):
        from_hf_config({**LLAMA, "rope_scaling": {**LLAMA3_SCALING, "high_freq_factor": 0.5}}, "m")
    with pytest.raises(UserError, match="rope_original_context must be a positive integer"):
        ModelSpec.from_dict({**data, "rope_original_context": 0})


def test_yarn_is_read_as_transformers_reads_it_and_round_trips():
    """GPT-OSS's yarn (no mscale: attention factor 0.1 ln 32 + 1), DeepSeek's (mscale = mscale_all_dim: attention
    factor 1, the softmax scaled by (0.1 ln 40 + 1)^2), absent betas 32 and 1, truncate true when absent; the model
    JSON keeps it; a partial rotary factor is one line."""
    import math

    from autoconf.spec.model import ModelSpec
    from autoconf.spec.presets import PRESETS

    oss = PRESETS["gpt-oss-120b"].rope_yarn
    assert (oss.factor, oss.original_context, oss.truncate, oss.softmax_scale) == (32.0, 4096, False, 1.0)
    assert oss.attention_factor == pytest.approx(0.1 * math.log(32) + 1)
    deepseek = {**DEEPSEEK_V3, "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                                                "original_max_position_embeddings": 4096}}
    yarn = from_hf_config(deepseek, "d").rope_yarn
    assert (yarn.attention_factor, yarn.beta_fast, yarn.beta_slow, yarn.truncate) == (1.0, 32.0, 1.0, True)
    assert yarn.softmax_scale == pytest.approx((0.1 * math.log(40) + 1) ** 2)
    qwen = from_hf_config({**QWEN3_MOE, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                         "original_max_position_embeddings": 32768}}, "q")
    assert qwen.rope_yarn.softmax_scale == 1.0 and qwen.max_seq_len == 131072
    assert ModelSpec.from_dict(json.loads(json.dumps(qwen.to_dict()))) == qwen
    with pytest.raises(UserError, match="partial_rotary_factor is not read"):
        from_hf_config({**QWEN3_MOE, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                      "partial_rotary_factor": 0.5}}, "q")


WINDOWED = {"use_sliding_window": True, "sliding_window": 512, "num_hidden_layers": 32}


@pytest.mark.parametrize("config", [
    {**LLAMA, **WINDOWED, "model_type": "qwen2"},  # no max_window_layers: the class's 28
    {**LLAMA, **WINDOWED, "model_type": "qwen3", "max_window_layers": 4},
    {**QWEN3_MOE, **WINDOWED, "model_type": "qwen2_moe", "max_window_layers": 6},  # the even layers below 6
    {**QWEN3_MOE, **WINDOWED, "max_window_layers": 4},  # Qwen3-MoE slides every layer
    {**LLAMA, **WINDOWED, "model_type": "mistral"}, {**MIXTRAL, **WINDOWED},
    {**LLAMA, **WINDOWED},  # Llama's attention reads no window: a stray key is ignored, as transformers ignores it
    {**DEEPSEEK_V3, **WINDOWED},
], ids=lambda config: config["model_type"])
def test_the_layers_that_slide_are_those_transformers_slides(config):
    """Thirtieth session's review: a Llama or DeepSeek config with a stray sliding_window was planned with every
    layer windowed, Qwen2 under use_sliding_window without max_window_layers from the first layer (transformers:
    28), Qwen3-MoE's max_window_layers read where transformers slides every layer. Each layer's window is the one
    transformers' model applies: the config class's layer_types where its attention reads them, else the config's
    window on every layer of the types whose attention takes it (Mistral, Mixtral, Qwen3-MoE), else none."""
    transformers = pytest.importorskip("transformers")
    ours = from_hf_config(config, "w")
    theirs = transformers.CONFIG_MAPPING[config["model_type"]].from_dict(config)
    window = getattr(theirs, "sliding_window", None)
    if config["model_type"] in ("qwen2", "qwen3", "qwen2_moe"):
        expected = [window if kind == "sliding_attention" else None for kind in theirs.layer_types]
    elif config["model_type"] in ("mistral", "mixtral", "qwen3_moe"):
        expected = [window] * theirs.num_hidden_layers
    else:
        expected = [None] * theirs.num_hidden_layers
    assert [ours.attention_window(i) for i in range(ours.num_layers)] == expected
    assert any(expected) == (config["model_type"] not in ("llama", "deepseek_v3"))


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3", "qwen2_moe"])
def test_qwen_layer_types_that_slide_without_the_switch_attend_in_full(model_type):
    """Qwen's config classes set no window unless use_sliding_window (Qwen2-MoE's 0), whatever layer_types say."""
    transformers = pytest.importorskip("transformers")
    qwen = {**(QWEN3_MOE if model_type == "qwen2_moe" else LLAMA), "model_type": model_type, "sliding_window": 512,
            "layer_types": ["sliding_attention"] * 2}
    assert from_hf_config(qwen, "q").sliding_window is None
    assert not transformers.CONFIG_MAPPING[model_type].from_dict(qwen).sliding_window
    assert from_hf_config({**qwen, "use_sliding_window": True}, "q").full_attention_layers == ()


# Sizes no class default derives (Qwen's 32 KV heads and 128-wide heads, Llama's heads of hidden / heads): with the
# class defaults alone a key left out may read the same by coincidence (Qwen3's head_dim 128 = 4096 / 32).
SIZED = {"hidden_size": 4096, "num_attention_heads": 64, "num_key_value_heads": 16}
# What a class leaves without a value and its model needs (DeepSeek-V2's top-k: V2-Lite's 6).
COMPLETED = {"deepseek_v2": {"num_experts_per_tok": 6}}


@pytest.mark.parametrize("sized", [False, True], ids=["class-defaults", "sized"])
@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe",
                                        "deepseek_v2", "deepseek_v3", "gpt_oss", "gpt2"])
def test_a_key_left_out_reads_as_transformers_reads_it_or_is_refused_by_name(model_type, sized):
    """Sixth review: a Mixtral config without num_key_value_heads was read as multi-head, without rope_theta as 10000,
    without max_position_embeddings as 4096 tokens; transformers' MixtralConfig fills in 8, 1e6 and 131072. Every
    key of the model type's config class (its defaults written out whole, and with SIZED widths), left out, gives
    the spec of what transformers' class makes of the config without it (written out whole), or a refusal naming a
    key (those that size the model: spec/hf_defaults.py). Thirtieth session's review: Qwen3 without head_dim was
    read with heads of hidden / heads (transformers: 128), Qwen2 and Qwen3 without num_key_value_heads as multi-head
    (32), DeepSeek-V2 without n_shared_experts as none (2), Qwen2 with use_sliding_window but no max_window_layers
    as sliding from the first layer (28)."""
    transformers = pytest.importorskip("transformers")
    config_class = transformers.CONFIG_MAPPING[model_type]

    def written_whole(config: dict) -> dict:
        return json.loads(config_class.from_dict(config).to_json_string(use_diff=False))

    whole = written_whole(COMPLETED.get(model_type, {}))
    if sized:
        whole = written_whole({**whole, **{k: v for k, v in SIZED.items() if k in whole}, "layer_types": None})
    from_hf_config(whole, "x")
    refused = []
    for key in whole:
        less = {k: v for k, v in whole.items() if k != key}
        try:
            ours = from_hf_config(less, "x")
        except UserError as err:
            assert key in str(err), (key, str(err))
            refused.append(key)
            continue
        assert ours == from_hf_config(written_whole(less), "x"), key
    assert "model_type" in refused and len(refused) < len(whole) / 2


def test_two_spellings_of_one_count_that_disagree_are_refused():
    """GPT-OSS's experts_per_token beside transformers' num_experts_per_tok: 2 against 4 was read as 4."""
    from autoconf.spec.hf_moe import PRESET_CONFIGS

    config = dict(PRESET_CONFIGS["gpt-oss-20b"], experts_per_token=2)
    with pytest.raises(UserError, match="num_experts_per_tok 4 and experts_per_token 2 disagree"):
        from_hf_config(config, "x")
    assert from_hf_config(dict(PRESET_CONFIGS["gpt-oss-20b"], experts_per_token=4), "gpt-oss-20b") == PRESETS[
        "gpt-oss-20b"]
