"""DeepSeek-V3's multi-token-prediction modules (cost/mtp.py): the counts with and without them, their cost on the
last pipeline stage and nowhere else, the room the default partition makes for them, the exports and the executor's
refusal."""

import dataclasses

import pytest

from autoconf.cost.compute import model_pieces
from autoconf.cost.estimate import _schedule, default_mesh, default_partition, estimate, stage_plan
from autoconf.cost.memory import rank_params, stage_expert_params, stage_params
from autoconf.cost.mtp import mtp_pass_times
from autoconf.errors import UserError
from autoconf.report.exporters import _pipeline_layout, megatron_flags
from autoconf.report.torchtitan_export import torchtitan_config
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import PRESETS as FRAMEWORKS
from autoconf.spec.grid import RankGrid
from autoconf.spec.hf_moe import PRESET_CONFIGS
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS, from_hf_config
from autoconf.spec.support import check_supported

V3 = PRESETS["deepseek-v3"]
LLAMA = PRESETS["llama3-8b"]
AUTOCONF = FRAMEWORKS["autoconf"]


def test_deepseek_v3_counts_with_and_without_its_mtp_module():
    """The preset has one MTP module (HF num_nextn_predict_layers 1). `parameters` is the published 671B without it;
    with it 682.64B (one MoE block of 11.51B, two norms and the final norm, a 2h x h projection); active 37.55B
    without, 38.24B with. The JSON says both and reads back; a wrong count with MTP is refused."""
    assert V3.mtp_num_layers == 1
    assert round(V3.total_params() / 1e9, 2) == 671.03
    assert round(V3.total_params_with_mtp() / 1e9, 2) == 682.64
    assert V3.mtp_params() == V3.layer_params(60) + 3 * 7168 + 2 * 7168 * 7168
    assert round(V3.active_params() / 1e9, 2) == 37.55
    assert round(V3.active_params_with_mtp() / 1e9, 2) == 38.24
    data = V3.to_dict()
    assert data["mtp_num_layers"] == 1 and data["parameters"] == V3.total_params()
    assert data["parameters_with_mtp"] == V3.total_params_with_mtp()
    assert ModelSpec.from_dict(data) == V3
    with pytest.raises(UserError, match="parameters_with_mtp"):
        ModelSpec.from_dict({**data, "parameters_with_mtp": V3.total_params()})
    plain = LLAMA.to_dict()
    assert "mtp_num_layers" not in plain and "parameters_with_mtp" not in plain
    assert LLAMA.total_params_with_mtp() == LLAMA.total_params()


def test_hf_import_reads_num_nextn_predict_layers():
    """deepseek_v3 configs: num_nextn_predict_layers becomes mtp_num_layers (absent: transformers' DeepseekV3Config
    default, 1; spec/hf_defaults.py); a bad value is one line."""
    config = dict(PRESET_CONFIGS["deepseek-v3"])
    assert from_hf_config(config, "v3").mtp_num_layers == 1
    assert from_hf_config({**config, "num_nextn_predict_layers": 2}, "v3").mtp_num_layers == 2
    del config["num_nextn_predict_layers"]
    assert from_hf_config(config, "v3").mtp_num_layers == 1
    assert from_hf_config({**config, "num_nextn_predict_layers": 0}, "v3").mtp_num_layers == 0
    with pytest.raises(UserError, match="num_nextn_predict_layers must be a whole number"):
        from_hf_config({**config, "num_nextn_predict_layers": -1}, "v3")
    with pytest.raises(UserError, match="mtp_num_layers must be a whole number"):
        dataclasses.replace(LLAMA, mtp_num_layers=1.5)


def _stage_plan(model, cluster, c, partition):
    schedule = _schedule(c.schedule, c.pp, c.num_microbatches, c.vpp, c.seq_chunks, False)
    return stage_plan(model, cluster, c, partition, schedule.stage_to_rank, RankGrid(default_mesh(c)), AUTOCONF)


@pytest.mark.parametrize("pp", [1, 2])
def test_mtp_grows_the_last_stage_by_its_own_cost_only(pp):
    """Llama-3 8B with one MTP module, tp 1, on the same partition: every stage but the last keeps its time and
    memory; the last stage's forward grows by exactly the module's compute (`mtp_pass_times`: a block, the
    projection, norms, an embedding lookup, a head with its loss), its parameters by the module's and, under
    pipelining, by the embedding copy the last stage holds; its peak memory grows."""
    mtp = dataclasses.replace(LLAMA, mtp_num_layers=1)
    cluster = load_cluster("dgx-h100-80g", nodes=1)
    c = ParallelConfig(tp=1, pp=pp, dp=8 // pp, micro_batch_size=1, global_batch_size=64, seq_len=4096,
                       schedule="1f1b", zero_stage=1, recompute="none")
    partition = [[0, 32]] if pp == 1 else [[0, 16], [16, 32]]
    base, more = _stage_plan(LLAMA, cluster, c, partition), _stage_plan(mtp, cluster, c, partition)
    added = mtp_pass_times(mtp, cluster, c, model_pieces(mtp, cluster, c, None, AUTOCONF))
    assert added.forward > 0
    assert more.costs.forward[-1] == pytest.approx(base.costs.forward[-1] + added.forward, rel=1e-9)
    assert more.costs.backward_weight[-1] == pytest.approx(base.costs.backward_weight[-1] + added.backward_weight,
                                                           rel=1e-9)
    assert more.costs.forward[:-1] == base.costs.forward[:-1]
    assert more.costs.backward_input[:-1] == base.costs.backward_input[:-1]
    copy = LLAMA.vocab_size * LLAMA.hidden_size if pp > 1 else 0
    assert stage_params(mtp, partition, pp - 1) - stage_params(LLAMA, partition, pp - 1) == mtp.mtp_params() + copy
    assert stage_expert_params(mtp, partition, pp - 1) == 0
    before = estimate(LLAMA, cluster, c, partition, execution=AUTOCONF).prediction["memory_per_stage"]
    after = estimate(mtp, cluster, c, partition, execution=AUTOCONF).prediction["memory_per_stage"]
    assert after[:-1] == before[:-1]
    for key in ("params", "grads", "optimizer", "activations"):
        assert after[-1][key] > before[-1][key], key


@pytest.mark.parametrize("layout", ["torch", "megatron"])
def test_each_mtp_module_keeps_its_loss_and_under_zero_bubble_its_logits_gradient(layout):
    """Per micro-batch the MTP modules keep, beside their blocks, heads' inputs and projection inputs, each its loss's
    saved tensors as the main loss keeps them (`loss_kept_bytes`), also at pp 1 where the main loss is the stage's
    temporary; where the backward splits (zb-h1) the last stage holds the MTP heads' logits gradients until W with
    the main one's: two modules, three gradients per micro-batch awaiting W."""
    from autoconf.cost.memory import (head_gradient_bytes, head_input_bytes, loss_kept_bytes, mtp_kept_bytes,
                                      mtp_own_bytes, pipeline_buffer_bytes, stage_layer_activation_bytes)
    from autoconf.cost.mtp import mtp_activation_bytes

    ex = FRAMEWORKS["autoconf" if layout == "torch" else "megatron-core"]
    mtp = dataclasses.replace(LLAMA, mtp_num_layers=2)
    c = ParallelConfig(tp=2, pp=4, dp=1, micro_batch_size=1, global_batch_size=16, seq_len=4096, schedule="zb-h1",
                       sequence_parallel=True)
    head = head_input_bytes(mtp, c, layout)
    loss = loss_kept_bytes(mtp, c, layout, ex)
    kept = mtp_kept_bytes(mtp, c, layout, "gpu", "attention_core", ex, head)
    block = stage_layer_activation_bytes(mtp, c, 1, 0, layout, "gpu", "attention_core", False, ex)
    own = mtp_own_bytes(mtp, c, layout, "gpu")
    assert loss > 0 and kept - mtp_activation_bytes(mtp, block, head, 0.0, own) == pytest.approx(2 * loss, rel=1e-12)
    assert mtp_kept_bytes(LLAMA, c, layout, "gpu", "attention_core", ex, head) == 0.0
    with_mtp = pipeline_buffer_bytes(mtp, c, ex, [3], [4.0] * 4)
    without = pipeline_buffer_bytes(LLAMA, c, ex, [3], [4.0] * 4)
    assert with_mtp - without == pytest.approx(4 * 2 * head_gradient_bytes(mtp, c), rel=1e-12)


def test_a_rank_holding_both_ends_keeps_one_embedding():
    """Under a V placement in the megatron layout a rank holding the first and the last stage uses the first stage's
    embedding for the MTP modules: no copy (`rank_params`); a rank holding only the last stage keeps one."""
    partition = [[0, 16], [16, 32], [32, 48], [48, 61]]
    both, alone = rank_params(V3, partition, [0, 3], "megatron"), rank_params(V3, partition, [3], "megatron")
    copy = V3.vocab_size * V3.hidden_size
    assert both[0] == stage_params(V3, partition, 0) + stage_params(V3, partition, 3) - copy
    assert alone[0] == stage_params(V3, partition, 3)
    assert alone[1] == stage_expert_params(V3, partition, 3) > 0


def test_default_partition_makes_room_for_the_mtp_module():
    """DeepSeek-V3 on 16 stages: the layers and the MTP module split evenly, the module at the end of the last stage,
    so the last stage holds 2 layers (3 without MTP); every layer is placed once."""
    c = ParallelConfig(tp=1, pp=16, dp=1, micro_batch_size=1, global_batch_size=64, seq_len=4096, schedule="1f1b")
    room = default_partition(V3, c)
    plain = default_partition(dataclasses.replace(V3, mtp_num_layers=0), c)
    assert room[-1] == [59, 61] and plain[-1] == [58, 61]
    assert room[0][0] == 0 and all(a[1] == b[0] for a, b in zip(room, room[1:]))


def test_exports_and_the_executor_refusal():
    """Megatron gets --mtp-num-layers and an 'm' before the loss in the layout (the grammar megatron-core validates:
    tests/test_exports_upstream.py); torchtitan's config says it leaves the MTP module out; the executor runs it at
    pp2 under 1F1B, zbv and seq1f1b."""
    mtp = dataclasses.replace(LLAMA, mtp_num_layers=1)
    cluster = load_cluster("dgx-h100-80g", nodes=1)
    c = ParallelConfig(tp=1, pp=2, dp=4, micro_batch_size=1, global_batch_size=64, seq_len=4096,
                       schedule="1f1b", zero_stage=1, recompute="none")
    plan = estimate(mtp, cluster, c, [[0, 17], [17, 32]], execution=AUTOCONF)
    flags, _ = megatron_flags(plan)
    assert ("--mtp-num-layers", 1) in flags
    assert _pipeline_layout(plan) == "Et*17|t*15mL"
    assert "leaves out the model's 1 multi-token-prediction module(s)" in torchtitan_config(plan, "summary")
    plain = estimate(LLAMA, cluster, c, [[0, 17], [17, 32]], execution=AUTOCONF)
    assert not any(f[0] == "--mtp-num-layers" for f in megatron_flags(plain)[0])
    assert _pipeline_layout(plain) == "Et*17|t*15L"
    for schedule in ({}, {"schedule": "zbv", "vpp": 2}, {"schedule": "seq1f1b", "seq_chunks": 2}):
        check_supported(dataclasses.replace(c, **schedule), mtp)


def _units(split, layers):
    """A layer split's partition units (unit 0 the embedding, L + 1 the head with the MTP modules)."""
    bounds = [0] + [end + 1 for _, end in split[:-1]] + [layers + 2]
    return tuple((bounds[s], bounds[s + 1]) for s in range(len(split)))


MIXTRAL = PRESETS["mixtral-8x7b"]
SMALL_MOE = dataclasses.replace(MIXTRAL, num_layers=6, mtp_num_layers=1,
                                moe=dataclasses.replace(MIXTRAL.moe, first_k_dense=1))


@pytest.mark.parametrize("model,schedule,vpp,zero,recompute,microbatches,cp", [
    (dataclasses.replace(LLAMA, num_layers=6, mtp_num_layers=1), "1f1b", 1, 1, "none", 4, 1),
    (dataclasses.replace(LLAMA, num_layers=6, mtp_num_layers=1), "1f1b", 1, 1, "full", 4, 2),
    (dataclasses.replace(LLAMA, num_layers=6, mtp_num_layers=2), "interleaved-1f1b", 2, 3, "full", 4, 1),
    (SMALL_MOE, "zbv", 2, 0, "selective", 4, 1),
    (SMALL_MOE, "gpipe", 1, 3, "full", 1, 1),
    # tied embeddings: the last stage's one copy is the head's weight and the MTP modules' embedding
    (dataclasses.replace(LLAMA, num_layers=6, mtp_num_layers=1, tied_embeddings=True), "1f1b", 1, 1, "none", 4, 1),
    (dataclasses.replace(LLAMA, num_layers=6, mtp_num_layers=1, tied_embeddings=True), "zbv", 2, 1, "none", 4, 1),
    # seq1f1b (2 chunks): the MTP blocks keep the earlier chunks' K/V and their gradients as the layers do
    (dataclasses.replace(LLAMA, num_layers=6, mtp_num_layers=1), "seq1f1b", 1, 1, "none", 4, 1),
    (dataclasses.replace(LLAMA, num_layers=6, mtp_num_layers=2), "seq1f1b", 1, 0, "selective", 4, 1),
    (dataclasses.replace(LLAMA, num_layers=6, mtp_num_layers=1), "seq1f1b", 1, 3, "full", 2, 1),
])
def test_the_partition_sees_the_mtp_cost_as_the_estimate_does(model, schedule, vpp, zero, recompute, microbatches,
                                                                cp):
    """The CP-SAT partition's units carry the MTP modules with the head (solve/refine.py): each rank's bytes in its
    model equal the estimate's for the same split (a V placement keeps no embedding copy; one backward too), and
    the head unit's time grows by the modules' cost; under CP the MTP block exchanges K/V as a layer does."""
    from autoconf.solve.partition import evaluate_partition
    from autoconf.solve.refine import partition_problem

    cluster = load_cluster("dgx-h100-80g", nodes=1).resized(gpus_per_node=4 * cp)
    ep = 2 if model.moe else 1
    c = ParallelConfig(tp=1, pp=2, dp=2, cp=cp, cp_comm="allgather", vpp=vpp, ep=ep, micro_batch_size=1,
                       global_batch_size=2 * microbatches, seq_len=2048, schedule=schedule, zero_stage=zero,
                       recompute=recompute, seq_chunks=2 if schedule == "seq1f1b" else 1)
    split = [[0, 2], [2, 3], [3, 5], [5, 6]] if vpp == 2 else [[0, 4], [4, 6]]
    problem = partition_problem(model, cluster, c, AUTOCONF)
    mine = evaluate_partition(problem, _units(split, model.num_layers)).rank_memory_bytes
    mine = [m + cluster.usable_memory_bytes - lim for m, lim in zip(mine, problem.limits())]
    theirs = [m["total"] for m in estimate(model, cluster, c, split, execution=AUTOCONF).prediction["memory_per_stage"]]
    from autoconf.cost.memory import holds_unsharded_grads

    if (zero == 3 and any(b - a < 2 for a, b in split)) or (c.num_stages > c.pp and holds_unsharded_grads(c)):
        assert all(a >= b * (1 - 1e-9) for a, b in zip(mine, theirs))  # (refine's FSDP buffer bounds)
    else:
        assert mine == pytest.approx(theirs, rel=1e-6)
    plain = partition_problem(dataclasses.replace(model, mtp_num_layers=0), cluster, c, AUTOCONF)
    assert problem.unit_time[-1] > plain.unit_time[-1] and problem.unit_time[:-1] == plain.unit_time[:-1]
    if cp > 1:  # the MTP block exchanges K/V as a layer does: the last stage's 2 layers + 1 against the first's 4
        cp_comm = _stage_plan(model, cluster, c, split).cp_comm
        for ends in ("forward", "backward_input"):  # torch's ring (the preset on CUDA) hides the forward's gather
            assert getattr(cp_comm[-1], ends) == pytest.approx(getattr(cp_comm[0], ends) * 3 / 4, rel=1e-12)
        assert cp_comm[0].backward_input > 0
