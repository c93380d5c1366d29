"""Model spec, cluster profile and plan: published parameter counts, file round-trips, and self-checking degrees."""

import json

import pytest

from autoconf.errors import UserError
from autoconf.spec.cluster import ClusterProfile, Link, bundled_profiles, load_cluster
from autoconf.spec.plan import ParallelConfig, Plan, load_plan
from autoconf.spec.presets import PRESETS, PUBLISHED_PARAMS, from_hf_config, load_model
from plan_helpers import script_module


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_presets_match_published_parameter_counts(name):
    """Every preset with a published size is within 2% of it (GPT-3's table rounds its sizes)."""
    assert PRESETS[name].total_params() == pytest.approx(PUBLISHED_PARAMS[name], rel=0.02)


def test_tiny_presets_have_eight_layers():
    """The CPU presets are 8-layer models, as DESIGN.md promises."""
    assert PRESETS["tiny-gpt"].num_layers == 8 and PRESETS["tiny-llama"].num_layers == 8


def test_gpt_layer_activation_bytes_reproduce_korthikanti_table2():
    """A GPT block with dropout and standard attention keeps s*b*h*(34 + 5as/h) bytes in 16 bit, and the TP,
    sequence-parallel and recompute variants match the paper's Table 2."""
    m = PRESETS["gpt-175b"]
    s, b, h, a, t = 2048, 1, m.hidden_size, m.num_heads, 8
    sbh = s * b * h

    def act(**kw):
        return m.layer_activation_bytes(s, b, attention="standard", act_bytes=2, **kw)

    assert act() == pytest.approx(sbh * (34 + 5 * a * s / h))
    assert act(tp=t) == pytest.approx(sbh * (10 + 24 / t + 5 * a * s / (h * t)))
    assert act(tp=t, sequence_parallel=True) == pytest.approx(sbh / t * (34 + 5 * a * s / h))
    assert act(tp=t, recompute="selective") == pytest.approx(sbh * (10 + 24 / t))
    assert act(tp=t, sequence_parallel=True, recompute="selective") == pytest.approx(34 * sbh / t)
    assert act(tp=t, recompute="full") == pytest.approx(2 * sbh)


def test_flash_attention_drops_the_quadratic_term():
    """Memory-efficient attention keeps no s*s scores, so doubling the sequence at most doubles the bytes."""
    m = PRESETS["llama3-8b"]
    one = m.layer_activation_bytes(4096, 1)
    two = m.layer_activation_bytes(8192, 1)
    assert two == pytest.approx(2 * one)
    assert m.layer_activation_bytes(8192, 1, attention="standard") > 2 * m.layer_activation_bytes(4096, 1,
                                                                                               attention="standard")


def test_hf_configs_import(tmp_path):
    """gpt2, llama, mistral and qwen2 config.json keys give the right shapes; GPT-2 defaults to dropout 0.1."""
    gpt2 = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
            "n_positions": 1024}
    spec = from_hf_config(gpt2, "gpt2")
    assert spec.total_params() == pytest.approx(124.44e6, rel=0.001) and spec.dropout == 0.1
    qwen = {"model_type": "qwen2", "num_hidden_layers": 24, "hidden_size": 896, "num_attention_heads": 14,
            "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
            "max_position_embeddings": 32768, "tie_word_embeddings": True}
    q = from_hf_config(qwen, "qwen2-0.5b")
    assert q.qkv_bias and q.tied_embeddings and q.total_params() == pytest.approx(494e6, rel=0.01)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "mistral", "num_hidden_layers": 32, "hidden_size": 4096,
                                "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
                                "vocab_size": 32000}))
    assert load_model(str(path)).total_params() == pytest.approx(7.24e9, rel=0.01)


@pytest.mark.parametrize("name", ["tiny-gpt", "llama3-70b", "gpt3-175b"])
def test_model_json_round_trips(tmp_path, name):
    """A model written as autoconf JSON loads back equal."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps(PRESETS[name].to_dict()))
    assert load_model(str(path)) == PRESETS[name]


@pytest.mark.parametrize("name", bundled_profiles())
def test_bundled_profiles_round_trip_and_state_their_assumptions(name):
    """Each bundled profile loads, round-trips through JSON, and explains every efficiency it assumes."""
    profile = load_cluster(name)
    assert ClusterProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    for key in ("matmul", "attention", "memory", "comm_intra", "comm_inter"):
        entry = profile.efficiency[key]
        assert 0 < entry["value"] <= 1 and len(entry["why"]) > 10


def test_bundled_profiles_script_writes_the_shipped_specification_profiles():
    """scripts/bundled_profiles.py writes every shipped specification profile byte for byte, and nothing else (the
    measured ones come from `autoconf profile`)."""
    from autoconf.spec.cluster import PROFILES_DIR

    written = script_module("bundled_profiles").files()
    shipped = {p.name: p.read_text() for p in PROFILES_DIR.iterdir() if p.name.endswith(".json")}
    specification = {name for name, text in shipped.items() if json.loads(text)["source"] == "specification"}
    assert set(written) == specification
    for name, text in written.items():
        assert text == shipped[name], name


def test_heterogeneous_profile_round_trips_and_resizing_is_refused():
    """A per-node-pair link matrix survives JSON, and a measured matrix cannot be silently resized."""
    base = load_cluster("dgx-a100-80g", nodes=3)
    slow, fast = Link(1e-5, 5e9), Link(8e-6, 25e9)
    matrix = tuple(tuple(slow if {i, j} == {0, 2} else fast for j in range(3)) for i in range(3))
    import dataclasses

    hetero = dataclasses.replace(base, inter_node_matrix=matrix)
    again = ClusterProfile.from_dict(json.loads(json.dumps(hetero.to_dict())))
    assert again == hetero and again.link(0, 16) == slow and again.link(0, 8) == fast
    with pytest.raises(UserError, match="cannot be resized"):
        hetero.resized(nodes=4)


def test_resizing_a_uniform_profile():
    """--nodes / --gpus-per-node size a uniform profile."""
    c = load_cluster("dgx-h100-80g", nodes=16, gpus_per_node=4)
    assert c.world_size == 64 and c.domain_of(5) == 1


def test_parallel_config_explains_every_bad_factor():
    """A layout breaking several rules is rejected with each offending factor named."""
    bad = ParallelConfig(tp=3, pp=16, dp=2, micro_batch_size=3, global_batch_size=64, seq_len=128)
    with pytest.raises(UserError) as err:
        bad.check(PRESETS["tiny-llama"], world_size=64)
    message = str(err.value)
    for fragment in ("pp*dp*cp*tp = 16*2*1*3 = 96", "64 devices", "tp 3 does not divide the 4 attention heads",
                     "2 KV heads", "16 stages but the model has only 8 layers", "not divisible by micro-batch 3"):
        assert fragment in message


def test_schedule_rules_are_part_of_the_check():
    """DualPipeV with fewer than 2 x pp micro-batches is refused with the numbers; 1F1B with fewer micro-batches
    than stages is a layout (Megatron-LM runs it), which only a torch runtime refuses (`Execution.problem`)."""
    c = ParallelConfig(tp=1, pp=4, dp=1, micro_batch_size=1, global_batch_size=6, seq_len=64, schedule="dualpipev",
                       vpp=2)
    with pytest.raises(UserError, match=r"dualpipev needs num_microbatches \(6\) >= 2 \* pp \(8\)"):
        c.check(PRESETS["tiny-gpt"], 4)
    short = ParallelConfig(tp=1, pp=4, dp=1, micro_batch_size=1, global_batch_size=2, seq_len=64)
    short.check(PRESETS["tiny-gpt"], 4)


def test_plan_round_trips(tmp_path):
    """A plan saved and loaded is equal, and an existing file is not overwritten without force."""
    from autoconf.cost.estimate import estimate

    cfg = ParallelConfig(tp=1, pp=2, dp=2, micro_batch_size=1, global_batch_size=8, seq_len=64, dtype="fp32")
    plan = estimate(PRESETS["tiny-gpt"], load_cluster("cpu-local"), cfg)
    path = tmp_path / "plan.json"
    plan.save(path)
    again = load_plan(path)
    assert again.to_dict() == json.loads(plan.to_json())
    with pytest.raises(UserError, match="already exists"):
        plan.save(path)
    plan.save(path, force=True)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=7), "version"),
    (lambda d: d.update(partition=[[0, 3], [3, 8], [8, 9], [9, 9]]), "partition"),
    (lambda d: d["placement"].update(mesh=[[[0]], [[0]]]), "mesh"),
    (lambda d: d["config"].update(tp=3), "tp"),
    (lambda d: d.pop("model"), "model"),
])
def test_malformed_plans_are_rejected_with_a_reason(tmp_path, mutate, message):
    """Broken plan files raise UserError naming the broken part."""
    from autoconf.cost.estimate import estimate

    cfg = ParallelConfig(tp=1, pp=2, dp=2, micro_batch_size=1, global_batch_size=8, seq_len=64, dtype="fp32")
    data = json.loads(estimate(PRESETS["tiny-gpt"], load_cluster("cpu-local"), cfg).to_json())
    mutate(data)
    with pytest.raises(UserError, match=message):
        Plan.from_dict(data)


def test_nemo_truth_rows_cite_their_tables_and_count_the_publishers_model_flops():
    """scripts/data/published_nemo.json: every table names its source and the recipes its unprinted flags come from,
    every row's layout fills its GPUs with whole micro-batches, and on NeMo 24.07's table (Megatron's FLOPs formula)
    the published model TFLOP/s over tokens/s is the model FLOPs per token autoconf counts for the row's model
    (padded vocabulary included) within 1%."""
    truth = script_module("truth_nemo")
    data = truth.load()
    models = {k: v for k, v in data["models"].items() if k != "source"}
    checked = 0
    for table in data["tables"]:
        assert "http" in table["source"] and table["recipes"] and table["rows"]
        for row in table["rows"]:
            dp, rest = divmod(row["gpus"], row["tp"] * row["pp"] * row["cp"])
            assert rest == 0 and row["gbs"] % (row["mbs"] * dp) == 0, row["label"]
            if table["id"] != "nemo-24.07":
                continue
            model = truth.model_of(row, models, row["tp"])
            per_token = model.model_flops_per_iteration(row["seq_len"], row["gbs"]) / (row["gbs"] * row["seq_len"])
            published = row["model_tflops_per_gpu"] * 1e12 / row["tokens_per_s_per_gpu"]
            assert published == pytest.approx(per_token, rel=0.01), row["label"]
            checked += 1
    assert checked == 12


def test_llama3_truth_rows_run_the_pipeline_their_paper_describes():
    """scripts/data/published_long_context.json takes Llama 3 405B's V 8 from its paper (Sec. 3.3.2: the first model
    chunk holds only the embedding and the last only the head, one layer in every other): autoconf's default
    partition of that layout is exactly that, and the 8k rows run the same pipeline without activation
    checkpointing, as the paper states."""
    from autoconf.cost.estimate import default_partition

    truth = script_module("truth_long_context")
    data = json.loads(truth.DATA.read_text())
    row, short = data["llama3"], data["llama3_8k"]
    model = load_model(row["model"])
    c = ParallelConfig(tp=row["tp"], pp=row["pp"], dp=row["dp"], cp=row["cp"], micro_batch_size=1,
                       global_batch_size=row["batch_per_dp"] * row["dp"], seq_len=row["seq_len"],
                       schedule=row["schedule"], vpp=row["vpp"], zero_stage=1, sequence_parallel=True, dtype="bf16")
    parts = default_partition(model, c)
    assert len(parts) == model.num_layers + 2 == row["pp"] * row["vpp"]
    assert parts[0] == [0, 0] and parts[-1] == [model.num_layers, model.num_layers]
    assert all(end - first == 1 for first, end in parts[1:-1])
    assert (short["schedule"], short["vpp"], short["pp"], short["recompute"]) == (row["schedule"], row["vpp"],
                                                                                 row["pp"], "none")
    rows = truth.llama3_8k_rows(data)
    assert all("vpp8" in r["layout"] and "rc-" not in r["layout"] for r in rows)
    # half the batch per DP group (the paper's reason for its MFU drop): a larger bubble, a slower step per GPU
    assert rows[1]["predicted_tflops_per_gpu"] < rows[0]["predicted_tflops_per_gpu"]


def test_remembered_hash_follows_equality():
    """Model specs and framework flags remember their hash (spec/hashing.py): equal instances hash alike, and a
    spec made from another with a field changed gets its own hash, not the one its source remembered."""
    import dataclasses

    from autoconf.spec.frameworks import execution
    from autoconf.spec.presets import PRESETS

    for spec in (PRESETS["deepseek-v3"], PRESETS["llama3-8b"], execution("megatron-core")):
        hash(spec)  # computed and remembered: the replaced copies below must not inherit it
        same = dataclasses.replace(spec)
        assert same == spec and hash(same) == hash(spec)
        changed = (dataclasses.replace(spec, num_layers=spec.num_layers + 1) if hasattr(spec, "num_layers")
                   else spec.replace(tp_comm_overlap=not spec.tp_comm_overlap))
        fields = tuple(getattr(changed, f.name) for f in dataclasses.fields(changed) if f.compare)
        assert changed != spec and hash(changed) == hash(fields) != hash(spec)


def test_a_measured_gpu_profile_starts_from_its_parts_data_sheet():
    """`autoconf profile` on a GPU reads the part's dense peaks and its base data-sheet profile by device name, the
    most specific name first: a GB200's B200 (1200 W) is not read as an HGX B200 (1000 W), and a B200 starts from
    dgx-b200-180g, a bundled profile."""
    from autoconf.profile.hardware import base_profile_for, known_gpu

    assert known_gpu("NVIDIA B200")[0]["bf16"] == 2250e12 == load_cluster("dgx-b200-180g").device.peak("bf16")
    assert known_gpu("NVIDIA GB200")[0]["bf16"] == 2500e12
    # a part with a bundled data-sheet profile is read from it (its fp8 rate included), one without from the table
    for name, profile in (("NVIDIA H100 80GB HBM3", "dgx-h100-80g"), ("NVIDIA H200", "dgx-h200-141g"),
                          ("NVIDIA A100-SXM4-80GB", "dgx-a100-80g")):
        device = load_cluster(profile).device
        assert known_gpu(name) == (device.peak_flops, device.memory_bandwidth_Bps)
    assert known_gpu("NVIDIA H100 80GB HBM3")[0]["fp8"] == 1979e12
    assert known_gpu("NVIDIA H100 PCIe")[0]["bf16"] == 756e12 and known_gpu("NVIDIA A100-PCIE-40GB")[1] == 1.555e12
    for name, base in (("NVIDIA B200", "dgx-b200-180g"), ("NVIDIA H100 80GB HBM3", "dgx-h100-80g"),
                       ("NVIDIA A100-SXM4-80GB", "dgx-a100-80g")):
        assert base_profile_for(name) == base and base in bundled_profiles()
