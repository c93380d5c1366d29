"""The placement's charge for the MoE token exchange reads the estimate's dispatch rule (`cost/moe.dispatch_shares`)."""

import pytest

from autoconf.cost.estimate import default_mesh, dp_buffer_bytes
from autoconf.cost.moe import ep_comm_passes
from autoconf.spec.cluster import load_cluster
from autoconf.spec.frameworks import execution
from autoconf.spec.grid import RankGrid, expert_groups
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.presets import PRESETS
from autoconf.solve.refine import exchange_scale, rank_share_of_params, traffic

V3 = PRESETS["deepseek-v3"]
# DeepSeek-V3's published layout: ep 64 over 8 nodes, so the exchange rides the DP replicas' links.
C = ParallelConfig(tp=1, pp=16, dp=128, ep=64, micro_batch_size=1, global_batch_size=15360, seq_len=4096,
                   schedule="dualpipe", zero_stage=1, recompute="selective", dtype="fp8-deepseek")
H800 = load_cluster("dgx-h800-80g", nodes=256)


def test_per_node_dispatch_scales_the_exchange_as_the_estimate_times_it():
    """Dispatching once per node (the deepseek preset) charges the DP axis the exchange's bytes times the estimate's
    own ratio of per-node to plain exchange seconds (within the rounding of the fp8 dispatch's latency terms); the
    same framework without it, or no cluster, charges the plain bytes."""
    ours = execution("deepseek")
    plain = ours.replace(dispatch_per_node=False)
    groups = [expert_groups(RankGrid(default_mesh(C)), 0, C.ep, C.etp, axis)[0] for axis in ("ep", "etp")]
    ratio = ep_comm_passes(V3, H800, C, *groups, ours)[0] / ep_comm_passes(V3, H800, C, *groups, plain)[0]
    scale = exchange_scale(V3, H800, C, ours)
    assert scale == pytest.approx(ratio, rel=1e-3) and scale < 1.0
    assert exchange_scale(V3, H800, C, plain) == 1.0
    tp, pp, dp_plain, cp = traffic(V3, C, plain, H800)
    assert traffic(V3, C, ours) == (tp, pp, dp_plain, cp) == traffic(V3, C, plain)
    # The DP axis's other traffic: the attention layout's gradients over dp, the experts' over their expert-DP pairs.
    dense, experts = rank_share_of_params(V3, C)
    assert C.edp == 2 and experts < dense
    gradients = dp_buffer_bytes(C, dense, ours)[0] + dp_buffer_bytes(C, experts, ours)[0]
    dp_ours = traffic(V3, C, ours, H800)[2]
    assert dp_ours - gradients == pytest.approx(scale * (dp_plain - gradients))
