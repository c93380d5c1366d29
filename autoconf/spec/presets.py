"""Model presets from published papers and model cards, Hugging Face config.json import, and `load_model`."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from autoconf.errors import UserError
from autoconf.files import did_you_mean, named_input, quoted, shown
from autoconf.spec.hf_fields import gpt2_fields, hf_int, hf_number, llama_fields, refuse_bias
from autoconf.spec.hf_defaults import with_transformers_defaults
from autoconf.spec.hf_moe import HF_DENSE_TYPES, HF_MOE_TYPES, PRESET_CONFIGS, moe_from_hf, refuse_hidden_experts
from autoconf.spec.model import ModelSpec, MoESpec, is_printable_name


def _gpt(name: str, layers: int, hidden: int, heads: int, vocab: int = 50257, seq: int = 2048,
         dropout: float = 0.1) -> ModelSpec:
    return ModelSpec(name=name, arch="gpt", num_layers=layers, hidden_size=hidden, num_heads=heads,
                     num_kv_heads=heads, ffn_hidden_size=4 * hidden, vocab_size=vocab, max_seq_len=seq,
                     tied_embeddings=True, dropout=dropout)


def _llama(name: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int, seq: int,
           rope_theta: float, norm_eps: float, rope_scaling: float = 1.0) -> ModelSpec:
    return ModelSpec(name=name, arch="llama", num_layers=layers, hidden_size=hidden, num_heads=heads,
                     num_kv_heads=kv_heads, ffn_hidden_size=ffn, vocab_size=vocab, max_seq_len=seq,
                     tied_embeddings=False, dropout=0.0, rope_theta=rope_theta, norm_eps=norm_eps,
                     rope_scaling_factor=rope_scaling)


# GPT-3 family: Brown et al. 2020, Table 2.1 (vocabulary 50257, context 2048).
# Megatron-LM models (gpt-22b ... gpt-1t): Korthikanti et al. 2022, Table 3 (vocabulary padded to 51200).
# Llama: the Hugging Face config.json of each released model (Llama 3.1: rope_scaling {"rope_type": "llama3",
# "factor": 8.0}).
PRESETS: dict[str, ModelSpec] = {spec.name: spec for spec in [
    _gpt("gpt3-125m", 12, 768, 12),
    _gpt("gpt3-350m", 24, 1024, 16),
    _gpt("gpt3-760m", 24, 1536, 16),
    _gpt("gpt3-1.3b", 24, 2048, 16),
    _gpt("gpt3-2.7b", 32, 2560, 32),
    _gpt("gpt3-6.7b", 32, 4096, 32),
    _gpt("gpt3-13b", 40, 5120, 40),
    _gpt("gpt3-175b", 96, 12288, 96),
    _gpt("gpt-22b", 48, 6144, 64, vocab=51200),
    _gpt("gpt-175b", 96, 12288, 96, vocab=51200),
    _gpt("gpt-530b", 105, 20480, 128, vocab=51200),
    _gpt("gpt-1t", 128, 25600, 160, vocab=51200),
    _llama("llama2-7b", 32, 4096, 32, 32, 11008, 32000, 4096, 10000.0, 1e-5),
    _llama("llama2-13b", 40, 5120, 40, 40, 13824, 32000, 4096, 10000.0, 1e-5),
    _llama("llama2-70b", 80, 8192, 64, 8, 28672, 32000, 4096, 10000.0, 1e-5),
    _llama("llama3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, 500000.0, 1e-5),
    _llama("llama3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, 500000.0, 1e-5),
    _llama("llama3.1-8b", 32, 4096, 32, 8, 14336, 128256, 131072, 500000.0, 1e-5, rope_scaling=8.0),
    _llama("llama3.1-70b", 80, 8192, 64, 8, 28672, 128256, 131072, 500000.0, 1e-5, rope_scaling=8.0),
    _llama("llama3.1-405b", 126, 16384, 128, 8, 53248, 128256, 131072, 500000.0, 1e-5, rope_scaling=8.0),
    _gpt("tiny-gpt", 8, 128, 4, vocab=256, seq=128, dropout=0.0),
    _llama("tiny-llama", 8, 128, 4, 2, 352, 256, 128, 10000.0, 1e-5),
    # For CPU runs of the MoE executor: 8 experts, top-2, one shared expert, one leading dense layer.
    ModelSpec(name="tiny-moe", arch="llama", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2,
              ffn_hidden_size=176, vocab_size=256, max_seq_len=128,
              moe=MoESpec(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, num_shared_experts=1,
                          shared_expert_intermediate_size=64, first_k_dense=1)),
]}

# Parameter counts as published (model cards / papers), for tests.
PUBLISHED_PARAMS = {
    "gpt3-125m": 125e6, "gpt3-350m": 350e6, "gpt3-760m": 760e6, "gpt3-1.3b": 1.3e9, "gpt3-2.7b": 2.7e9,
    "gpt3-6.7b": 6.7e9, "gpt3-13b": 13e9, "gpt3-175b": 175e9, "gpt-22b": 22e9, "gpt-175b": 175e9,
    "gpt-530b": 530e9, "gpt-1t": 1e12, "llama2-7b": 6.74e9, "llama2-13b": 13.0e9, "llama2-70b": 68.98e9,
    "llama3-8b": 8.03e9, "llama3-70b": 70.55e9, "llama3.1-405b": 405.85e9,
}

_HF_LLAMA_TYPES = tuple(t for t in HF_DENSE_TYPES if t != "gpt2")  # the Llama-shaped ones
_HF_TYPES = (*HF_DENSE_TYPES, *HF_MOE_TYPES)  # every model_type `from_hf_config` reads


def from_hf_config(config: dict, name: str) -> ModelSpec:
    """Builds a spec from a Hugging Face config.json (model_type gpt2, llama, mistral, qwen2 or qwen3; mixture of
    experts: mixtral, qwen2_moe, qwen3_moe, deepseek_v2, deepseek_v3, gpt_oss). A config with expert keys under any
    other model_type is refused, never read as a dense model."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise UserError(f"{name}: model_type must be a string naming the model's family, e.g. \"llama\", not "
                        f"{shown(json.dumps(model_type), 40)}; supported: {', '.join(_HF_TYPES)}")
    if model_type not in HF_MOE_TYPES:
        refuse_hidden_experts(config, name, model_type)
    try:
        config = with_transformers_defaults(config, model_type)
        if model_type in HF_MOE_TYPES:
            try:
                return moe_from_hf(config, name, model_type)
            except UserError as err:  # the expert spec's checks say "moe:" or "model 'x':"; the user's file is `name`
                message = str(err).removeprefix("moe: ").removeprefix(f"model {name!r}: ").removeprefix(f"{name}: ")
                raise UserError(f"{name}: {message}") from None
        if model_type == "gpt2":
            return ModelSpec(**gpt2_fields(config, name))
        if model_type in _HF_LLAMA_TYPES:
            if model_type in ("llama", "qwen3"):  # (their attention_bias would bias the output projection too)
                refuse_bias(config, name, model_type, ("attention_bias", "mlp_bias"))
            return ModelSpec(
                **llama_fields(config, name, model_type),
                ffn_hidden_size=hf_int(config, "intermediate_size", name, "the MLP width"),
                qkv_bias=model_type == "qwen2",  # Qwen2 biases q, k and v always; Mistral never (transformers)
                qk_norm=model_type == "qwen3", norm_eps=hf_number(config, "rms_norm_eps", 1e-5, name))
    except KeyError as missing:
        raise UserError(f"{name}: Hugging Face config of type {model_type!r} lacks key {missing}") from None
    except (TypeError, ValueError, OverflowError, AttributeError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"{name}: malformed Hugging Face config of type {model_type!r} ({err})") from None
    text = config.get("text_config")
    nested = (f" (a multimodal config whose text_config is of type {quoted(text.get('model_type'))}, read too: save "
              f"that object as its own config.json and plan that)") if isinstance(text, dict) and text.get(
        "model_type") in _HF_TYPES else ""
    raise UserError(f"{name}: unsupported model_type {quoted(model_type)}{nested}; supported: "
                    f"{', '.join(_HF_TYPES)}")


# Mixture-of-experts presets: each model's published config.json (spec/hf_moe.py cites the repository) read by the
# importer. Published totals and active counts, and what each publisher counts: scripts/data/published_moe.json.
PRESETS.update({name: from_hf_config(config, name) for name, config in PRESET_CONFIGS.items()})


# The largest input JSON read (a plan of the largest cluster allowed holds a mesh of 8M ranks, about 70 MB).
MAX_JSON_BYTES = 256 << 20


def read_json(path: Path, what: str) -> dict:
    """Reads a JSON object from `path`, turning every failure into one UserError line. Only a regular file of at most
    MAX_JSON_BYTES is read: a device would be read until memory runs out, a pipe would wait for a writer forever."""
    try:
        info = path.stat()
    except OSError as err:
        raise UserError(f"cannot read {what} file {path}: {err.strerror or err}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{what} file {path} is a folder; give the JSON file in it")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{what} file {path} is not a regular file (a device, a pipe or a socket); give a JSON file")
    if info.st_size > MAX_JSON_BYTES:
        raise UserError(f"{what} file {path} holds {info.st_size:,} bytes, more than the {MAX_JSON_BYTES >> 20} MiB "
                        f"a {what} can take; give the JSON file autoconf wrote")
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"cannot read {what} file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} file {path} is not text (not UTF-8); expected a JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{what} file {path} is not valid JSON (line {err.lineno}: {err.msg})") from None
    except (ValueError, RecursionError) as err:  # a number too long to convert, nesting too deep
        raise UserError(f"{what} file {path} is not usable JSON ({str(err)[:120]})") from None
    if not isinstance(data, dict):
        kind = {type(None): "null", bool: "a boolean", str: "a string", list: "an array"}.get(type(data), "a number")
        raise UserError(f"{what} file {path} must hold a JSON object ({{...}}), not {kind}")
    return data


# Keys of a Hugging Face config.json that autoconf's own model JSON never holds: a file with one of them but no
# model_type is a Hugging Face config that lost its type, not a malformed autoconf model.
_HF_ONLY_KEYS = ("architectures", "num_hidden_layers", "num_attention_heads", "intermediate_size", "n_layer",
                 "text_config")


def load_model(arg: str) -> ModelSpec:
    """A preset name, a Hugging Face config.json path (or the folder holding it), or autoconf's own model JSON
    path."""
    if arg in PRESETS:
        return PRESETS[arg]
    path = named_input(arg, "--model")
    if path is None:
        raise UserError(f"unknown model {shown(arg)!r}: not a preset (see `autoconf models`) and no such file"
                        f"{did_you_mean(arg, PRESETS)}")
    if path.is_dir():  # a Hugging Face model folder
        if (path / "config.json").is_dir():
            raise UserError(f"{arg}/config.json is a folder, not a model's config file; give a model's config.json "
                            f"or its folder")
        if not (path / "config.json").is_file():
            raise UserError(f"{arg} is a folder without a config.json; give a model's config.json or its folder")
        path = path / "config.json"
    data = read_json(path, "model")
    if "model_type" in data:
        name = (path.parent.name or path.resolve().parent.name) if path.name == "config.json" else path.stem
        if not is_printable_name(name):
            raise UserError(f"{str(path)!r}: the model is named after its folder or file, {name!r}, which must be "
                            f"printable text without newlines or control characters; rename it")
        return from_hf_config(data, name=name)
    if data.get("kind") not in (None, "model"):
        raise UserError(f"{path} is a {data.get('kind')!r} file, not a model")
    hf_keys = [key for key in _HF_ONLY_KEYS if key in data]
    if hf_keys:
        raise UserError(f"{path} reads as a Hugging Face config (it has {', '.join(hf_keys)}) but names no "
                        f"model_type; add the model's \"model_type\" ({', '.join(_HF_TYPES)})")
    return ModelSpec.from_dict(data, source=str(path))
