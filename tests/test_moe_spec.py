"""Mixture-of-experts model spec: published parameter counts, the Hugging Face import (against transformers' own
config classes when the `hf` extra is installed), round trips, and the refusals that keep an MoE model from being
planned as a dense one or launched by an executor that does not run experts yet."""

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from autoconf.cli import main
from autoconf.errors import UserError
from autoconf.spec.hf_moe import PRESET_CONFIGS
from autoconf.spec.model import ModelSpec, MoESpec
from autoconf.spec.presets import PRESETS, from_hf_config, load_model

PUBLISHED = json.loads((Path(__file__).parent.parent / "scripts/data/published_moe.json").read_text())
MOE_PRESETS = sorted(PRESET_CONFIGS)

# A tiny MoE model with tiny-llama's attention, so that a tiny-llama plan's layout fits it.
TINY_MOE = dataclasses.replace(PRESETS["tiny-llama"], name="tiny-moe", moe=MoESpec(
    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, num_shared_experts=1,
    shared_expert_intermediate_size=96, first_k_dense=1))


def count(model: ModelSpec, what: str) -> int:
    embedding = model.embedding_params()
    lm_head = 0 if model.tied_embeddings else model.vocab_size * model.hidden_size
    return {"parameters": model.total_params(), "active_parameters": model.active_params(),
            "non_embedding": model.total_params() - embedding - lm_head,
            "active_without_input_embedding": model.active_params() - embedding}[what]


def run_cli(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_refusal(result, *needles):
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("autoconf: error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize("figure", PUBLISHED["figures"], ids=lambda f: f"{f['model']}-{f['count']}")
def test_moe_presets_match_published_counts(figure):
    """Each published total / active / non-embedding count, read at its printed precision (value +- half a unit of
    its last digit), is within 1% of the preset's count under the convention the publisher uses."""
    ours = count(PRESETS[figure["model"]], figure["count"])
    low, high = figure["value"] - figure["unit"] / 2, figure["value"] + figure["unit"] / 2
    gap = max(low - ours, ours - high, 0.0)
    assert gap <= 0.01 * figure["value"], f"{ours / 1e9:.3f}B against published {figure['value'] / 1e9}B"


def test_every_moe_preset_has_published_total_and_active_counts():
    """No MoE preset goes unchecked: each has a published total and a published active count (under the
    publisher's convention: GPT-OSS's leaves the embedding table out)."""
    checked = {(f["model"], f["count"]) for f in PUBLISHED["figures"]}
    for name in MOE_PRESETS:
        assert (name, "parameters") in checked
        assert {(name, "active_parameters"), (name, "active_without_input_embedding")} & checked, name


def test_dense_models_report_equal_total_and_active_parameters():
    """A dense model's active count is its total, and the model JSON says so."""
    for spec in PRESETS.values():
        if not spec.is_moe:
            data = spec.to_dict()
            assert data["parameters"] == data["active_parameters"] == spec.total_params()


def test_moe_counts_layer_by_layer():
    """DeepSeek-V3's first three layers are dense (SwiGLU of 18432), the other 58 MoE; the total is the sum of its
    blocks plus embedding and head, and a token uses 8 of the 256 routed experts plus the shared one."""
    m = PRESETS["deepseek-v3"]
    assert [m.is_moe_layer(i) for i in range(5)] == [False, False, False, True, True]
    assert m.layer_groups() == [(0, 3), (3, 58)]
    blocks = sum(m.layer_params(i) for i in range(m.num_layers))
    assert m.total_params() == blocks + m.embedding_params() + m.head_params()
    expert = 3 * m.hidden_size * m.moe.moe_intermediate_size
    assert m.layer_params(3) - m.layer_active_params(3) == (256 - 8) * expert
    assert m.layer_params(0) == m.layer_active_params(0)
    with pytest.raises(ValueError, match="name the layer"):
        m.layer_params()  # dense and MoE blocks differ


@pytest.mark.parametrize("name", MOE_PRESETS + ["llama3-8b", "tiny-llama"])
def test_forward_flops_follow_the_active_parameters(name):
    """Forward matmul FLOPs per token are 2 x the active weights (less the embedding lookup and the norms, plus the
    tied head's matmul): the 2N of the 6ND rule with N the active count, far below 2 x the total for MoE."""
    m = PRESETS[name]
    norms = sum(n * op.params for _, n, op in m.op_table() if op.kind == "norm")
    tied_head = m.vocab_size * m.hidden_size if m.tied_embeddings else 0
    matmul_weights = m.active_params() - m.embedding_params() - norms + tied_head
    seq = 4096
    attention = m.layer_attention_flops(seq, 1) / seq * m.num_layers
    matmul_flops = m.forward_flops_per_token(seq) - attention
    # GPT-OSS's biases and attention-sink logits are weights without matmul FLOPs: 3e-4 of its active count
    biased = m.qkv_bias or m.attention_sinks or (m.moe is not None and m.moe.expert_bias)
    assert matmul_flops == pytest.approx(2 * matmul_weights, rel=1e-3 if biased else 1e-12)
    if m.is_moe:
        assert matmul_flops < 0.5 * 2 * m.total_params()


@pytest.mark.parametrize("name", MOE_PRESETS)
def test_moe_model_json_round_trips(name, tmp_path):
    """The model JSON of an MoE preset (moe and mla objects, derived counts) loads back to the same spec."""
    spec = PRESETS[name]
    path = tmp_path / "model.json"
    path.write_text(json.dumps(spec.to_dict()))
    assert load_model(str(path)) == spec
    assert json.loads(path.read_text())["moe"]["num_experts"] == spec.moe.num_experts


def test_older_model_json_and_dense_json_are_unchanged():
    """A dense model's JSON has no MoE keys (so older files, plans and checkpoints compare equal), and JSON written
    before the derived counts existed still loads."""
    data = PRESETS["llama3-8b"].to_dict()
    assert not {"moe", "mla", "head_dim", "qk_norm"} & set(data)
    old = {k: v for k, v in data.items() if k not in ("parameters", "active_parameters")}
    assert ModelSpec.from_dict(old) == PRESETS["llama3-8b"]


def test_moe_json_without_its_experts_is_refused():
    """A Mixtral written as autoconf JSON without its moe object, but with its published parameter count, is refused
    (its fields describe a 7.2B dense model)."""
    data = PRESETS["mixtral-8x7b"].to_dict()
    del data["moe"]
    with pytest.raises(UserError, match="needs its moe object"):
        ModelSpec.from_dict(data)


@pytest.mark.parametrize("model_type, family", [("mistral", "mixtral"), ("llama", "mixtral"), ("qwen2", "qwen3_moe")])
def test_expert_keys_under_a_dense_model_type_are_refused(model_type, family):
    """A Mixtral or Qwen3-MoE config relabelled as a dense family is refused with the family to use, not read as a
    dense model of a sixth of its size."""
    source = "mixtral-8x7b" if family == "mixtral" else "qwen3-30b-a3b"
    config = {**PRESET_CONFIGS[source], "model_type": model_type}
    with pytest.raises(UserError, match=f"set model_type to '{family}'") as err:
        from_hf_config(config, "relabelled")
    assert "\n" not in str(err.value)


def test_unknown_moe_family_and_nested_expert_keys_are_refused():
    """An MoE family autoconf does not read is refused naming the ones it does, also when the experts sit one
    object down (text_config)."""
    config = {**PRESET_CONFIGS["mixtral-8x7b"], "model_type": "olmoe"}
    with pytest.raises(UserError, match="MoE types read: mixtral"):
        from_hf_config(config, "olmoe")
    nested = {"model_type": "llama", **{k: v for k, v in PRESET_CONFIGS["mixtral-8x7b"].items()
                                        if k not in ("num_local_experts", "model_type")},
              "text_config": {"num_local_experts": 8}}
    with pytest.raises(UserError, match="text_config.num_local_experts=8"):
        from_hf_config(nested, "nested")


@pytest.mark.parametrize("experts, shown", [("8", 'num_local_experts="8"'), ([4, 4], "num_local_experts=\\[4, 4\\]"),
                                            ({"text_config": {"ffn": {"num_local_experts": 8}}},
                                             "text_config.ffn.num_local_experts=8")])
def test_expert_keys_of_any_json_kind_or_two_objects_down_are_refused(experts, shown):
    """Thirtieth session's review: a dense-type config whose expert count was a string, a list or two objects down
    was read as a dense model."""
    config = {k: v for k, v in PRESET_CONFIGS["mixtral-8x7b"].items()
              if k not in ("num_local_experts", "num_experts_per_tok")}
    config = {**config, "model_type": "llama",
              **(experts if isinstance(experts, dict) else {"num_local_experts": experts})}
    with pytest.raises(UserError, match=f"dense family but the config has mixture-of-experts keys \\({shown}\\)"):
        from_hf_config(config, "m")


@pytest.mark.parametrize("freq", [0.5, "2", -2, True])
def test_deepseek_moe_layer_freq_must_be_a_positive_integer(freq):
    """A fractional or textual moe_layer_freq is one line, not a model whose every layer is read as MoE."""
    with pytest.raises(UserError, match="moe_layer_freq must be a positive integer"):
        from_hf_config({**PRESET_CONFIGS["deepseek-v3"], "moe_layer_freq": freq}, "ds")


def test_a_dense_config_still_reads_as_dense():
    """Expert keys set to zero or null do not make a dense config MoE."""
    config = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
              "intermediate_size": 128, "vocab_size": 100, "num_experts": 0, "num_local_experts": None}
    assert not from_hf_config(config, "dense").is_moe


@pytest.mark.parametrize("change, message", [
    ({"num_experts_per_tok": 9}, "exceeds the 8 experts (top-k must be 1..8)"),
    ({"n_group": 3}, "n_group 3 does not divide the 8 experts"),
    ({"num_shared_experts": 1}, "shared_expert_intermediate_size"),
    ({"capacity_factor": 0}, "capacity_factor must be a positive number"),
    ({"scoring_func": "relu"}, "scoring_func 'relu'"),
])
def test_bad_moe_fields_are_named(change, message):
    good = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MoESpec(**{**good, **change})


def test_a_model_with_no_moe_layer_is_refused():
    with pytest.raises(UserError, match="leaves no MoE layer"):
        dataclasses.replace(TINY_MOE, moe=dataclasses.replace(TINY_MOE.moe, first_k_dense=8))


def test_launch_takes_an_moe_plan_and_latent_attention(tmp_path):
    """A plan file whose model is MoE (written by hand) launches (the executor builds MoE layers,
    tests/test_moe_execute.py), and so does one whose model uses DeepSeek-V3's latent attention (tests/test_mla.py)."""
    dense = tmp_path / "dense.json"
    result = run_cli(["estimate", "--model", "tiny-llama", "--cluster", "cpu-local", "--tp", "1", "--pp", "2",
                      "--dp", "2", "--micro-batch", "1", "--global-batch", "8", "--seq-len", "64", "--out", dense])
    assert result.exit_code == 0, result.output
    plan = json.loads(dense.read_text())
    plan["model"] = TINY_MOE.to_dict()
    moe = tmp_path / "moe.json"
    moe.write_text(json.dumps(plan))
    assert run_cli(["launch", moe, "--dry-run"]).exit_code == 0
    mla = PRESETS["deepseek-v3"].mla
    plan["model"] = dataclasses.replace(TINY_MOE, mla=mla, head_dim=mla.v_head_dim,
                                        num_kv_heads=TINY_MOE.num_heads).to_dict()
    moe.write_text(json.dumps(plan))
    assert run_cli(["launch", moe, "--dry-run"]).exit_code == 0
    assert run_cli(["launch", dense, "--dry-run"]).exit_code == 0


def test_the_executor_refusal_is_one_rule():
    """launch and profile read one rule (spec/support.py `model_unsupported_reason`): a capacity factor is refused;
    an MoE model with dropless routing, a dense model and DeepSeek-V3 with and without its MTP module pass (the
    layouts its MTP module runs in: tests/test_mtp_execute.py)."""
    from autoconf.spec.support import model_unsupported_reason

    assert model_unsupported_reason(TINY_MOE) is None and model_unsupported_reason(PRESETS["tiny-llama"]) is None
    assert model_unsupported_reason(dataclasses.replace(PRESETS["deepseek-v3"], mtp_num_layers=0)) is None
    assert model_unsupported_reason(PRESETS["deepseek-v3"]) is None
    capped = dataclasses.replace(TINY_MOE, moe=dataclasses.replace(TINY_MOE.moe, capacity_factor=1.25))
    assert "dropless" in model_unsupported_reason(capped)


# ---- against transformers' own config classes (pip install -e .[hf]) ---------------------------------------------
HF_CLASSES = [("MixtralConfig", {}), ("Qwen2MoeConfig", {}), ("Qwen3MoeConfig", {}),
              ("DeepseekV3Config", {}), ("DeepseekV2Config", {"num_experts_per_tok": 6, "first_k_dense_replace": 1}),
              ("GptOssConfig", {})]


@pytest.mark.parametrize("class_name, overrides", HF_CLASSES, ids=[c for c, _ in HF_CLASSES])
def test_import_matches_transformers_models_on_the_meta_device(class_name, overrides):
    """Each MoE config class's defaults, written with to_dict() and read by from_hf_config, give the parameter count
    of the model transformers builds from them (on the meta device, 4 layers deep to stay cheap), block by block."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    config = getattr(transformers, class_name)(**overrides, num_hidden_layers=4)
    spec = from_hf_config(config.to_dict(), class_name)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert spec.total_params() == sum(p.numel() for p in model.parameters())
    blocks = model.model.layers
    assert [spec.layer_params(i) for i in range(4)] == [sum(p.numel() for p in b.parameters()) for b in blocks]
    assert any(spec.is_moe_layer(i) for i in range(4))


def test_a_checkpoint_written_before_the_derived_counts_resumes(tmp_path):
    """Checkpoint metadata from before `parameters` / `active_parameters` existed still matches its model, and a
    different model is still refused."""
    from plan_helpers import even_plan

    from autoconf.execute.train import TrainOptions, check_resumable

    plan = even_plan(PRESETS["tiny-llama"])
    old = {k: v for k, v in plan.model.to_dict().items() if k not in ("parameters", "active_parameters")}
    check_resumable(tmp_path, {"seed": 0, "data": None, "model": old}, plan, TrainOptions(steps=1), print)
    with pytest.raises(UserError, match="differs from this plan"):
        check_resumable(tmp_path, {"seed": 0, "data": None, "model": {**old, "num_layers": 4}}, plan,
                        TrainOptions(steps=1), print)


def test_a_bad_moe_field_in_a_model_json_is_named_once(tmp_path):
    """A model JSON whose moe object has a bad field names the file, the object and the field, each once."""
    from autoconf.spec.presets import load_model

    data = TINY_MOE.to_dict()
    data["moe"] = {**data["moe"], "moe_intermediate_size": "x"}
    path = tmp_path / "bad_moe.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as err:
        load_model(str(path))
    assert str(err.value).count("moe: ") == 1 and "moe_intermediate_size must be a positive integer" in str(err.value)


def test_a_plan_of_a_model_the_executor_cannot_build_is_marked_not_launchable():
    """The planner plans a model whose capacity-factor routing the executor does not build (for Megatron's exports)
    but marks its plans not launchable; the same MoE model without it, and with latent attention, is launchable."""
    from autoconf.solve.search import search
    from autoconf.spec.cluster import load_cluster

    mla = PRESETS["deepseek-v3"].mla
    capped = dataclasses.replace(TINY_MOE, moe=dataclasses.replace(TINY_MOE.moe, capacity_factor=1.25))
    cluster = load_cluster("dgx-h100-80g", nodes=1)
    latent = dataclasses.replace(TINY_MOE, mla=mla, head_dim=mla.v_head_dim, num_kv_heads=TINY_MOE.num_heads)
    for model, launchable in ((TINY_MOE, True), (latent, True), (capped, False)):
        plans = search(model, cluster, 8, 64, "bf16", top_k=1, refine=False).plans
        assert plans and plans[0].prediction["launchable"] is launchable


def test_the_search_leaves_out_layouts_the_executor_refuses_of_an_moe_model():
    """The search's launchable filter reads the layout's rules with the model (`candidate_unsupported_reason`): an MoE
    layout whose tp does not divide a rank's tokens, or under seq1f1b, was costed and ranked, and only marked not
    launchable afterwards; pinned to such layouts the search now says in one line why none runs (but for a pinned
    schedule: the user's choice, costed and marked, test_bad_input.py)."""
    from autoconf.solve.search import search
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.plan import ParallelConfig
    from autoconf.spec.support import candidate_unsupported_reason

    cluster = load_cluster("dgx-h100-80g", nodes=1)
    result = search(TINY_MOE, cluster, 8, 7, "bf16", top_k=200, refine=False, fixed={"tp": 2})
    assert result.plans and all(p.prediction["launchable"] for p in result.plans)
    assert all(p.config.micro_batch_size * p.config.local_seq_len % p.config.tp == 0 for p in result.plans)
    with pytest.raises(UserError, match="tp 2 does not divide the 7 tokens of a micro-batch"):
        search(TINY_MOE, cluster, 8, 7, "bf16", refine=False, fixed={"tp": 2, "micro_batch_size": 1})
    # and fitting advice names no such layout (it read the executor's rules without the model)
    from autoconf.solve.fit import advisable
    from autoconf.spec.frameworks import execution

    split = ParallelConfig(tp=2, pp=1, dp=4, micro_batch_size=1, global_batch_size=8, seq_len=7)
    assert not advisable(TINY_MOE, cluster, split, execution("autoconf"))
    assert advisable(TINY_MOE, cluster, dataclasses.replace(split, micro_batch_size=2), execution("autoconf"))
    chunked = ParallelConfig(tp=1, pp=2, dp=4, micro_batch_size=1, global_batch_size=8, seq_len=64,
                             schedule="seq1f1b", seq_chunks=2)
    assert candidate_unsupported_reason(chunked, PRESETS["tiny-llama"]) is None
    assert "on dense models; tiny-moe is a mixture-of-experts" in candidate_unsupported_reason(chunked, TINY_MOE)


def test_a_pinned_seq1f1b_of_an_moe_model_is_costed_only_in_layouts_seq1f1b_takes():
    """A pinned seq1f1b of an MoE model is the user's choice, costed and marked not launchable; but it excused every
    rule after it (a review): layouts with pp 1, which seq1f1b never runs, were ranked first. Only the MoE refusal is
    excused now, and a pin the schedule cannot take names that pin."""
    from autoconf.solve.search import search
    from autoconf.spec.cluster import load_cluster

    cluster = load_cluster("dgx-h100-80g", nodes=1)
    plans = search(TINY_MOE, cluster, 64, 128, "bf16", top_k=50, refine=False, fixed={"schedule": "seq1f1b"}).plans
    assert plans and all(p.config.pp > 1 and p.config.cp == 1 for p in plans), [p.config.label() for p in plans]
    assert all(p.prediction["launchable"] is False for p in plans)
    with pytest.raises(UserError, match="cp 2"):
        search(TINY_MOE, cluster, 64, 128, "bf16", refine=False, fixed={"schedule": "seq1f1b", "cp": 2})


def test_a_bad_expert_key_of_a_config_json_is_named_with_the_file():
    """The expert spec's checks speak for the user's config.json by its name (they said "moe:")."""
    with pytest.raises(UserError, match=r"^mine: num_experts_per_tok 9 exceeds the 8 experts"):
        from_hf_config({**PRESET_CONFIGS["mixtral-8x7b"], "num_experts_per_tok": 9}, "mine")
