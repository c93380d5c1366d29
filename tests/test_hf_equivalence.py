"""The executor's model is the model transformers builds from the same config: equal logits for the same weights.

Each case is a small config of a family autoconf imports (Llama, with Llama 3.1's RoPE scaling and with tied embeddings
too; Qwen2 with its q/k/v biases; Qwen3 with its q/k norms, with YaRN too; Mistral with a sliding window shorter than
the sequence and with heads wider than hidden / heads; Mixtral, Qwen3-MoE and Qwen2-MoE;
DeepSeek-V3, with its YaRN too; GPT-OSS with its sinks, biases, clamped SwiGLU, top-k router, alternating windows
and YaRN), read by `from_hf_config`; transformers' model is built in fp32 with its own random init, its weights are
copied into autoconf's model (`execute/model.py`) by name, and both run the same tokens. Skipped without
`transformers` (the test extra). RoPE scaling: Llama 3.1's, YaRN (GPT-OSS's own, Qwen's, DeepSeek's) and linear are
applied and checked here; dynamic and longrope are not applied by the executor, which says so at launch
(`ModelSpec.rope_unapplied`; docs/long-context.md "The executor").
"""

from __future__ import annotations

import dataclasses

import pytest

from autoconf.spec.presets import from_hf_config

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

SMALL = dict(num_hidden_layers=4, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
             head_dim=16, vocab_size=128, max_position_embeddings=64)
DEEPSEEK = {"num_attention_heads": 4, "num_key_value_heads": 4, "moe_intermediate_size": 32, "n_routed_experts": 8,
            "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 2, "topk_group": 1,
            "kv_lora_rank": 16, "q_lora_rank": 24, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
            "head_dim": 8}
CASES = {
    "llama": ("LlamaConfig", {}),
    # Llama 3.1's scaling over an original context of 16 tokens, so that it stretches frequencies the 24 tokens use
    "llama3.1-scaling": ("LlamaConfig", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
                                                             "factor": 8.0, "low_freq_factor": 1.0,
                                                             "high_freq_factor": 4.0,
                                                             "original_max_position_embeddings": 16}}),
    # linear scaling: every position divided by the factor
    "llama-linear": ("LlamaConfig", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0,
                                                         "factor": 4.0}}),
    "qwen3": ("Qwen3Config", {}),
    # Qwen2's q/k/v biases; Llama 3.2's tied embeddings; Mistral-NeMo's heads wider than hidden / heads
    "qwen2": ("Qwen2Config", {}),
    "llama-tied": ("LlamaConfig", {"tie_word_embeddings": True}),
    "mistral-wide-heads": ("MistralConfig", {"head_dim": 32, "sliding_window": None}),
    "mistral-window": ("MistralConfig", {"sliding_window": 5}),
    # GPT-OSS's own YaRN (factor 32 over 4096 tokens, truncate false)
    "gpt-oss": ("GptOssConfig", {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 5,
                                 "intermediate_size": 32}),
    # Qwen's long-context YaRN (factor 4 over 8 tokens, truncating), its attention factor from the factor
    "qwen3-yarn": ("Qwen3Config", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                       "original_max_position_embeddings": 8}}),
    # softmax routing over 4 experts, top 2: Mixtral's weights renormalised, Qwen3-MoE's as its norm_topk_prob says,
    # Qwen2-MoE's with its gated shared expert and q/k/v biases
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3-moe": ("Qwen3MoeConfig", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                     "norm_topk_prob": True}),
    "qwen2-moe": ("Qwen2MoeConfig", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                     "shared_expert_intermediate_size": 48, "norm_topk_prob": False}),
    # DeepSeek-V3: latent attention (interleaved rotary pairs in transformers), a leading dense layer, sigmoid
    # routing within 1 of 2 expert groups, a shared expert, scaled routed output; and its YaRN with mscale and
    # mscale_all_dim, which also scales the softmax
    "deepseek-v3": ("DeepseekV3Config", DEEPSEEK),
    "deepseek-v3-yarn": ("DeepseekV3Config", {**DEEPSEEK, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 8,
        "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0}}),
}


def _ours(name: str, hf) -> dict:
    """autoconf's parameter name -> the tensor it takes from transformers' model `hf` (by transformers' names)."""
    theirs = dict(hf.named_parameters())
    out = {"embed.tok.weight": theirs["model.embed_tokens.weight"], "norm.weight": theirs["model.norm.weight"]}
    if "lm_head.weight" in theirs:  # (tied: the embedding's, one parameter on both sides)
        out["output.weight"] = theirs["lm_head.weight"]
    for i in range(hf.config.num_hidden_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        out[dst + "attention_norm.weight"] = theirs[src + "input_layernorm.weight"]
        out[dst + "ffn_norm.weight"] = theirs[src + "post_attention_layernorm.weight"]
        if name.startswith("deepseek"):
            out.update(_latent_attention(hf.config, theirs, src, dst))
            out.update(_mlp(theirs, src, dst))
            continue
        for ours, hf_name in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
            for leaf in ("weight", "bias"):
                if f"{src}self_attn.{hf_name}.{leaf}" in theirs:
                    out[f"{dst}attention.{ours}.{leaf}"] = theirs[f"{src}self_attn.{hf_name}.{leaf}"]
        for extra in ("q_norm.weight", "k_norm.weight", "sinks"):
            if src + "self_attn." + extra in theirs:
                out[dst + "attention." + extra] = theirs[src + "self_attn." + extra]
        if name == "gpt-oss":
            gate_up, bias = theirs[src + "mlp.experts.gate_up_proj"], theirs[src + "mlp.experts.gate_up_proj_bias"]
            out.update({dst + "feed_forward.router.weight": theirs[src + "mlp.router.weight"],
                        dst + "feed_forward.router.bias": theirs[src + "mlp.router.bias"],
                        # transformers interleaves gate and up columns
                        dst + "feed_forward.experts.w1": gate_up[..., ::2],
                        dst + "feed_forward.experts.w3": gate_up[..., 1::2],
                        dst + "feed_forward.experts.w1_bias": bias[..., ::2],
                        dst + "feed_forward.experts.w3_bias": bias[..., 1::2],
                        dst + "feed_forward.experts.w2": theirs[src + "mlp.experts.down_proj"],
                        dst + "feed_forward.experts.w2_bias": theirs[src + "mlp.experts.down_proj_bias"]})
        else:
            out.update(_mlp(theirs, src, dst))
    return out


def _interleaved_to_halves(rows: torch.Tensor, first: int, width: int, groups: int) -> torch.Tensor:
    """`rows` with, in each of `groups` blocks of `len(rows) / groups`, the `width` rotary rows from `first` on put
    from transformers' interleaved pairs (x0 y0 x1 y1 ...) into autoconf's halves (x0 x1 ... y0 y1 ...): the same
    rotation of a permuted vector, so the scores are unchanged."""
    blocks = rows.view(groups, -1, rows.shape[-1]).clone()
    rope = blocks[:, first:first + width]
    blocks[:, first:first + width] = torch.cat([rope[:, 0::2], rope[:, 1::2]], dim=1)
    return blocks.view_as(rows)


def _latent_attention(config, theirs: dict, src: str, dst: str) -> dict:
    """DeepSeek's latent attention under autoconf's names (its rotary rows from interleaved pairs to halves)."""
    nope, rope, heads = config.qk_nope_head_dim, config.qk_rope_head_dim, config.num_attention_heads
    att = src + "self_attn."
    out = {dst + "attention.wq_a.weight": theirs[att + "q_a_proj.weight"],
           dst + "attention.q_a_norm.weight": theirs[att + "q_a_layernorm.weight"],
           dst + "attention.wq_b.weight": _interleaved_to_halves(theirs[att + "q_b_proj.weight"], nope, rope, heads),
           dst + "attention.wkv_a.weight": _interleaved_to_halves(theirs[att + "kv_a_proj_with_mqa.weight"],
                                                                  config.kv_lora_rank, rope, 1),
           dst + "attention.kv_a_norm.weight": theirs[att + "kv_a_layernorm.weight"],
           dst + "attention.wkv_b.weight": theirs[att + "kv_b_proj.weight"],
           dst + "attention.wo.weight": theirs[att + "o_proj.weight"]}
    return out


def _mlp(theirs: dict, src: str, dst: str) -> dict:
    """A block's MLP under autoconf's names: a dense SwiGLU, or the router, the routed experts (transformers' fused
    [E, 2f, h] gate then up, and [E, h, f] down) and the shared experts (DeepSeek's shared_experts, Qwen2-MoE's
    shared_expert and its gate)."""
    mlp, ff = src + "mlp.", dst + "feed_forward."
    if mlp + "gate.weight" not in theirs:
        return {f"{ff}{ours}.weight": theirs[f"{mlp}{hf_name}.weight"]
                for ours, hf_name in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj"))}
    gate, up = theirs[mlp + "experts.gate_up_proj"].chunk(2, dim=1)
    out = {ff + "router.weight": theirs[mlp + "gate.weight"], ff + "experts.w1": gate.transpose(1, 2),
           ff + "experts.w3": up.transpose(1, 2), ff + "experts.w2": theirs[mlp + "experts.down_proj"].transpose(1, 2)}
    for shared in ("shared_experts", "shared_expert"):
        for ours, hf_name in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            if f"{mlp}{shared}.{hf_name}.weight" in theirs:
                out[f"{ff}shared.{ours}.weight"] = theirs[f"{mlp}{shared}.{hf_name}.weight"]
    if mlp + "shared_expert_gate.weight" in theirs:
        out[ff + "shared_gate.weight"] = theirs[mlp + "shared_expert_gate.weight"]
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_executors_model_computes_transformers_logits(name):
    from autoconf.execute.model import build_model

    class_name, overrides = CASES[name]
    config = getattr(transformers, class_name)(**{**SMALL, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # biases and sinks away from their zero init, so that they matter
        for param_name, param in hf.named_parameters():
            if param_name.endswith(("bias", "sinks")):
                param.normal_(0.0, 0.5)
    # transformers builds no multi-token-prediction module (DeepSeek-V3's checkpoint holds one, which it leaves
    # unused): the logits are the main model's (the executor's MTP modules: tests/test_mtp_execute.py).
    spec = dataclasses.replace(from_hf_config(config.to_dict(), name), mtp_num_layers=0)
    ours = build_model(spec)
    ours.to_empty(device="cpu")
    ours.tie_weights()  # (as `parallelize.materialize` does: a tied head is the embedding)
    weights = _ours(name, hf)
    assert set(weights) == {n for n, _ in ours.named_parameters()}
    with torch.no_grad():
        for param_name, param in ours.named_parameters():
            param.copy_(weights[param_name])
    ours.eval()
    tokens = torch.randint(0, SMALL["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
        got = ours(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
