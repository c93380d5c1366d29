"""Turns one config into the inputs of the CP-SAT partition and placement solvers, and their answers back.

Partition units are the embedding, each transformer layer, and the head with the loss; each is costed with the same
pieces the estimate uses (compute, the TP collectives inside it, recompute), so the stages that hold the vocabulary
layers get fewer transformer layers when that balances time or memory.
"""

from __future__ import annotations

import numpy as np

from autoconf.cost.compute import model_pieces
from autoconf.cost.estimate import (Execution, p2p_bytes, recompute_time, schedule_inflight, selective_matmul_share,
                                    tp_collective)
from autoconf.cost.memory import (gather_buffer_bytes, logits_temporary_bytes, p2p_buffer_bytes, state_bytes_per_param,
                                  unit_activation_bytes)
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.dtypes import DTYPE_BYTES
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig
from autoconf.spec.schedules import stage_to_rank


def partition_problem(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, execution: Execution):
    """The partition units with the estimate's own costs: time from the same pieces, bytes from cost/memory.py's
    functions (state bytes per parameter, activations per unit, in-flight counts of the schedule's order, the P2P
    and FSDP gather buffers taken off the limit). Two rules of the estimate that are not linear in the units are
    taken on the safe side: the in-flight counts are rounded up, and with one micro-batch per step the gradients
    are counted beside the activations (the estimate takes the larger)."""
    from autoconf.solve.partition import PartitionProblem

    layout = execution.memory_layout
    pieces = model_pieces(model, cluster, c)
    one = tp_collective(model, cluster, c, list(range(c.tp)))
    layer_time = pieces.block.total + 4 * one + recompute_time(pieces, c, one, selective_matmul_share(model, execution))
    per_param = sum(state_bytes_per_param(c, layout))
    head_params = model.head_params() + (model.vocab_size * model.hidden_size if model.tied_embeddings else 0)
    unit_time = [pieces.embedding.total + one] + [layer_time] * model.num_layers + [pieces.head.total + one]
    unit_static = ([model.embedding_params() / c.tp * per_param]
                   + [model.layer_params() / c.tp * per_param] * model.num_layers
                   + [head_params / c.tp * per_param + logits_temporary_bytes(model, c, layout)])
    embedding, layer, head = unit_activation_bytes(model, c, layout, cluster.device.kind)
    unit_act = [embedding] + [layer] * model.num_layers + [head]
    inflight = tuple(int(np.ceil(n)) for n in schedule_inflight(c.schedule, c.pp, c.vpp, c.num_microbatches))
    limit = (cluster.device.memory_bytes - cluster.device.memory_overhead_bytes - p2p_buffer_bytes(model, c)
             - gather_buffer_bytes(model, c, layout))
    return PartitionProblem(unit_time=tuple(unit_time), unit_static_bytes=tuple(unit_static),
                            unit_activation_bytes=tuple(unit_act),
                            stage_to_rank=stage_to_rank(c.schedule, c.pp, c.vpp), inflight=inflight,
                            memory_limit_bytes=float(limit), num_microbatches=c.num_microbatches)


def refined_partition(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, execution: Execution,
                      time_limit_s: float = 2.0, seed: int = 0) -> list[list[int]] | None:
    """CP-SAT's stage partition for `c`, or None when it finds none (the caller keeps the uniform split)."""
    from autoconf.solve.partition import solve_partition

    if c.num_stages == 1:
        return None
    result = solve_partition(partition_problem(model, cluster, c, execution), time_limit_s=time_limit_s, seed=seed)
    return None if result is None else [list(r) for r in result.layer_ranges()]


def traffic(model: ModelSpec, c: ParallelConfig, execution: Execution = Execution()) -> tuple[float, float, float]:
    """Bytes per step each rank moves in its TP group, to its pipeline neighbour (the estimate's `p2p_bytes` per
    micro-batch and direction: a 1/tp slice under sequence parallelism), and in its DP group."""
    e = DTYPE_BYTES[c.dtype]
    activation = c.seq_len * c.micro_batch_size * model.hidden_size * e
    layers_per_rank = model.num_layers / c.pp
    tp_bytes = 4 * layers_per_rank * activation * c.num_microbatches if c.tp > 1 else 0.0
    pp_bytes = 2 * c.vpp * p2p_bytes(model, c, execution) * c.num_microbatches if c.pp > 1 else 0.0
    dp_bytes = model.total_params() / c.pp / c.tp * 4 if c.dp > 1 else 0.0
    return tp_bytes, pp_bytes, dp_bytes


def refined_mesh(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, execution: Execution = Execution(),
                 time_limit_s: float = 5.0, seed: int = 0) -> np.ndarray | None:
    """The placement solver's [pp][dp][tp] mesh for `c` on `cluster`'s links."""
    from autoconf.solve.placement import solve_placement

    if c.world_size == 1:
        return None
    tp_bytes, pp_bytes, dp_bytes = traffic(model, c, execution)
    return np.asarray(solve_placement(c.pp, c.dp, c.tp, cluster, tp_bytes, pp_bytes, dp_bytes,
                                      time_limit_s=time_limit_s, seed=seed))
