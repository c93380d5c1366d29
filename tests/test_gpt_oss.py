"""GPT-OSS (gpt_oss configs, presets gpt-oss-120b and gpt-oss-20b): planned with its attention sinks, biases, clamped
SwiGLU and alternating sliding windows; refused by the executor in one line.

The parameter counts against OpenAI's model card are in tests/test_moe_spec.py (scripts/data/published_moe.json),
and against the model transformers builds from GptOssConfig, block by block, there too; the Megatron-LM flags are
parsed and built into megatron-core's configs in tests/test_exports_upstream.py ("gpt-oss").
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from autoconf.cost.estimate import estimate
from autoconf.errors import UserError
from autoconf.spec.cluster import load_cluster
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS, from_hf_config
from autoconf.spec.support import model_unsupported_reason

OSS = PRESETS["gpt-oss-120b"]


def test_the_preset_is_gpt_oss_as_its_config_describes_it():
    assert [OSS.attention_window(i) for i in range(4)] == [128, None, 128, None]
    assert OSS.sliding_layer_count == 18 and OSS.max_seq_len == 131072
    assert (OSS.attention_sinks, OSS.qkv_bias, OSS.out_proj_bias, OSS.swiglu_limit) == (True, True, True, 7.0)
    assert (OSS.moe.num_experts, OSS.moe.num_experts_per_tok, OSS.moe.router_bias, OSS.moe.expert_bias) == (
        128, 4, True, True)
    assert all(OSS.is_moe_layer(i) for i in range(OSS.num_layers))
    data = json.loads(json.dumps(OSS.to_dict()))
    assert ModelSpec.from_dict(data) == OSS and data["parameters"] == OSS.total_params()


def test_sinks_and_biases_are_weights_of_their_own():
    """Each layer's sinks are one logit per head; the biases add q, k, v, o widths and every expert's gate, up and
    down widths."""
    plain = dataclasses.replace(OSS, attention_sinks=False, qkv_bias=False, out_proj_bias=False,
                                moe=dataclasses.replace(OSS.moe, expert_bias=False, router_bias=False))
    m = OSS.moe
    per_layer = (OSS.num_heads + OSS.q_dim + 2 * OSS.kv_dim + OSS.hidden_size + m.num_experts
                 + m.num_experts * (2 * m.moe_intermediate_size + OSS.hidden_size))
    assert OSS.layer_params(0) - plain.layer_params(0) == per_layer


@pytest.mark.parametrize("fields, needle", [
    ({"swiglu_limit": -1.0}, "swiglu_limit must be a positive number or null"),
    ({"swiglu_limit": "7"}, "swiglu_limit must be a positive number or null"),
    ({"attention_sinks": 1}, "attention_sinks must be true or false"),
    ({"arch": "gpt", "moe": None, "sliding_window": None, "full_attention_layers": ()},
     "attention_sinks, out_proj_bias, swiglu_limit need arch llama"),
])
def test_bad_gpt_oss_fields_are_one_line(fields, needle):
    with pytest.raises(UserError) as err:
        dataclasses.replace(OSS, **fields)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_gpt_oss_config_without_its_window_is_one_line():
    config = {**_config(), "sliding_window": None}
    with pytest.raises(UserError, match="slides attention windows but sets no sliding_window"):
        from_hf_config(config, "oss")


def _config() -> dict:
    return {"model_type": "gpt_oss", "num_hidden_layers": 4, "hidden_size": 64, "intermediate_size": 64,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_local_experts": 8,
            "experts_per_token": 2, "vocab_size": 256, "max_position_embeddings": 512, "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"] * 2, "swiglu_limit": 7.0}


def test_the_experts_per_token_key_of_openais_configs_is_read():
    spec = from_hf_config(_config(), "oss")
    assert spec.moe.num_experts_per_tok == 2 and spec.full_attention_layers == (1, 3)


def test_the_executor_refuses_it_in_one_line_and_the_estimate_says_why():
    reason = model_unsupported_reason(OSS)
    assert reason.startswith("gpt-oss-120b has attention sinks (attention_sinks) and an output-projection bias")
    assert "export the plan to Megatron-LM" in reason and "\n" not in reason
    config = ParallelConfig(tp=1, pp=4, dp=16, ep=8, micro_batch_size=1, global_batch_size=512, seq_len=4096,
                            zero_stage=1)
    prediction = estimate(OSS, load_cluster("dgx-h100-80g", nodes=8), config).prediction
    assert prediction["launchable"] is False and prediction["not_launchable_reason"] == reason
    assert prediction["fits"]  # the recipe's micro-batch 1 (Megatron-Bridge v0.2.0) fits an H100 here
