"""Per-layer recompute as the exporters say it: Megatron's flags and torchtitan's policy name exactly the layers
the plan recomputes, with no flags where it recomputes none."""

import re

import pytest

from autoconf.cost.estimate import estimate
from autoconf.report.exporters import megatron_flags, torchtitan_config
from autoconf.spec.cluster import load_cluster
from autoconf.spec.plan import ParallelConfig, recomputed_layer_indices
from autoconf.spec.presets import PRESETS

CLUSTER = load_cluster("dgx-a100-80g", nodes=1, gpus_per_node=4)
UNIFORM = [("--recompute-granularity", "full"), ("--recompute-method", "uniform"), ("--recompute-num-layers", 1)]


def _plan(recompute="full", recompute_layers=None, selective_recompute=None):
    config = ParallelConfig(tp=1, pp=2, dp=2, micro_batch_size=1, global_batch_size=16, seq_len=64,
                            recompute=recompute, recompute_layers=recompute_layers,
                            selective_recompute=selective_recompute, dtype="bf16")
    return estimate(PRESETS["tiny-llama"], CLUSTER, config)


def _recompute_flags(plan):
    flags, notes = megatron_flags(plan)
    return [f for f in flags if f[0].startswith("--recompute")], notes


def test_megatron_every_layer_counted_is_uniform_recompute_of_one_layer_groups():
    every = _plan(recompute_layers=[4, 4])
    assert _recompute_flags(every)[0] == UNIFORM == _recompute_flags(_plan())[0]
    assert not [n for n in _recompute_flags(every)[1] if "recompute" in n]


@pytest.mark.parametrize("recompute", ["full", "selective"])
def test_megatron_no_layer_recomputed_has_no_recompute_flags(recompute):
    flags, notes = _recompute_flags(_plan(recompute, recompute_layers=[0, 0]))
    assert flags == [] and not [n for n in notes if "recompute" in n]


def test_megatron_first_layers_of_each_stage_are_block_recompute_of_the_largest_count():
    flags, notes = _recompute_flags(_plan(recompute_layers=[3, 1]))
    assert flags == [("--recompute-granularity", "full"), ("--recompute-method", "block"),
                     ("--recompute-num-layers", 3)]
    assert any("[3, 1]" in n for n in notes)


@pytest.mark.parametrize("recompute, layers, selective, expected", [
    ("full", [3, 1], None, "PlannedBlocksAC(FullAC)"),
    ("selective", [2, 1], "alternate_matmuls", "PlannedBlocksAC(SelectiveAC)"),
    ("full", [4, 4], None, "FullAC.Config()"),
    ("full", None, None, "FullAC.Config()"),
    ("full", [0, 0], None, "activation_checkpoint = None"),
])
def test_torchtitan_policy_names_the_plans_blocks(recompute, layers, selective, expected):
    plan = _plan(recompute, layers, selective)
    text = torchtitan_config(plan)
    assert expected in text
    named = re.search(r"BLOCKS = frozenset\(\{(.*)\}\)", text)
    if "PlannedBlocksAC" in expected:
        assert {int(n) for n in re.findall(r'"layers\.(\d+)"', named.group(1))} == \
            recomputed_layer_indices(plan.config, plan.partition)
        assert "config.activation_checkpoint = PlannedBlocksAC.Config()" in text
    else:
        assert named is None
