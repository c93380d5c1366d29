"""Hugging Face config fields every family shares (spec/hf_fields.py): read as published config.json files and as
transformers 5 writes them, and refused in one line when they would otherwise be read as something else."""

from __future__ import annotations

import json

import pytest

from autoconf.errors import UserError
from autoconf.spec.presets import from_hf_config, load_model

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
    ({**QWEN3_MOE, "use_sliding_window": True}, "slides attention windows but sets no sliding_window"),
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
                           ({**QWEN3_MOE, "mlp_only_layers": [99]}, "moe.dense_layers [99] lie beyond")):
        with pytest.raises(UserError) as err:
            from_hf_config(config, "mx_layers")
        assert str(err.value).startswith("mx_layers: ") and str(err.value).count("mx_layers") == 1, err.value
        assert needle in str(err.value)


def test_a_sliding_window_shorter_than_the_sequence_is_refused():
    """Mistral 7B v0.1 (sliding_window 4096, context 32768) was planned at 32k tokens as full attention; the window
    is kept and a longer sequence refused, while Qwen's switch and transformers 5's layer_types are read too."""
    mistral = from_hf_config({**LLAMA, "model_type": "mistral", "sliding_window": 4096,
                              "max_position_embeddings": 32768}, "mistral-v01")
    assert mistral.sliding_window == 4096 and mistral.context_problem(4096) is None
    assert mistral.default_seq_len == 4096  # what plan takes without --seq-len
    assert "sliding attention window of 4,096 tokens" in mistral.context_problem(8192)
    assert load_model_json(mistral).sliding_window == 4096
    assert from_hf_config({**LLAMA, "model_type": "mistral", "sliding_window": None}, "m").sliding_window is None
    qwen = {**LLAMA, "model_type": "qwen2", "sliding_window": 512}
    assert from_hf_config(qwen, "q").sliding_window is None  # use_sliding_window false: the window is not used
    assert from_hf_config({**qwen, "use_sliding_window": True}, "q").sliding_window == 512
    assert from_hf_config({**qwen, "layer_types": ["sliding_attention", "full_attention"]}, "q").sliding_window == 512
    slides_from_layer_2 = {**qwen, "use_sliding_window": True, "max_window_layers": 2}  # of 2 layers: none slides
    assert from_hf_config(slides_from_layer_2, "q").sliding_window is None
    assert from_hf_config({**slides_from_layer_2, "layer_types": ["full_attention"] * 2}, "q").sliding_window is None
    assert "sliding_window" not in from_hf_config(LLAMA, "l").to_dict()  # a dense model's JSON is as before


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


def test_limits_stop_at_a_sliding_window(tmp_path):
    """`limits` searched Mistral 7B v0.1 up to its 32k context and refused it (the window is 4096)."""
    from click.testing import CliRunner

    from autoconf.cli import main

    config = {**LLAMA, "model_type": "mistral", "sliding_window": 1024, "max_position_embeddings": 32768}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["limits", "--model", str(tmp_path / "config.json"), "--cluster", "cpu-local",
                                       "--global-batch", "4", "--only", "seq"])
    assert result.exit_code == 0, result.output
    assert "sliding attention window is 1024 tokens" in result.output
