"""An MoE layer's token exchange measured in place (CPU profiles): what an expert-parallel MoE block adds beyond its
local compute, as `tp_layers` measures it for tensor-parallel layers.

The executor's own MoE block (its first MoE layer, attention included) with its routed experts sharded over real
EP groups of the running job (consecutive ranks, every group at once as in training;
`parallelize.apply_expert_parallel`), each rank routing micro-batches of its own random tokens. What the exchange
adds (the counts' and the rows' all-to-alls there and back, the wait for the group, the regrouping by source) is the
wall time of a pass less the block table's local compute of the same block at that ep (attention, two norms, the
"moe" block and the "experts" entries at ep, over the profile's `cpu_share`). The cost model reads it in place of
the modelled all-to-alls (`cost/moe.ep_comm_passes`) for layouts without TP or expert TP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from autoconf.execute.dtypes import TORCH_DTYPES
from autoconf.profile.tp_layers import block_time, medians_over_ranks, timed_passes
from autoconf.spec.model import ModelSpec


def ep_degrees(expert_degrees: tuple[tuple[int, int], ...], world: int) -> tuple[int, ...]:
    """The expert-parallel degrees measured in place: those above 1 at which the routed experts were timed
    without expert TP (`Grid.expert_degrees`, the (ep, etp) pairs) that divide the ranks of the job."""
    return tuple(ep for ep, etp in expert_degrees if etp == 1 and ep > 1 and world % ep == 0)


def measure_ep_layers(model: ModelSpec, table: dict, eps: tuple[int, ...], micro_batches: tuple[int, ...], seq: int,
                      device: torch.device, dtype: str, share: float, warmup: int,
                      repeats: int) -> list[dict]:
    """Entries {"ep", "micro_batch", "seq_len", "forward_s", "backward_s"}: wall seconds per MoE block and pass
    beyond its local compute (module docstring), medians over repeats and ranks. Each point has about TP_BUDGET_S
    seconds: a larger micro-batch gets fewer repeats (at least MIN_REPEATS)."""
    from torch.distributed.device_mesh import init_device_mesh

    from autoconf.execute.model import build_model
    from autoconf.execute.parallelize import apply_expert_parallel, materialize
    from autoconf.spec.plan import ParallelConfig

    world = dist.get_world_size()
    layer = next(i for i in range(model.num_layers) if model.is_moe_layer(i))
    out = []
    for ep in eps:
        config = ParallelConfig(tp=1, pp=1, dp=world, ep=ep, micro_batch_size=1, global_batch_size=world,
                                seq_len=seq)
        mesh = init_device_mesh(device.type, (world // ep, ep), mesh_dim_names=("edp", "ep"))
        net = build_model(model, layer, layer + 1, embed=False, head=False)
        apply_expert_parallel(net, mesh, config)
        materialize(net, device, 0)
        net = net.to(TORCH_DTYPES[dtype]).train()
        runs = (warmup, repeats)
        for mb in micro_batches:
            forward, backward, runs = timed_passes(net, (mb, seq, model.hidden_size), device, dtype, runs)
            local_f, local_b = (sum(block_time(table, b, 1, mb, seq, keys, ep=ep)
                                    for b in ("attention", "norm", "norm", "moe", "experts")) / share
                                for keys in (("forward_s",), ("backward_input_s", "backward_weight_s")))
            out.append({"ep": ep, "micro_batch": mb, "seq_len": seq,
                        "forward_s": forward - local_f, "backward_s": backward - local_b})
            if runs is None:
                break
    return medians_over_ranks(out)
