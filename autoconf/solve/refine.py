"""Turns one config into the inputs of the CP-SAT partition and placement solvers, and their answers back.

Partition units are the embedding, each transformer layer, and the head with the loss; each is costed with the same
pieces the estimate uses (compute, the TP collectives inside it, recompute), so the stages that hold the vocabulary
layers get fewer transformer layers when that balances time or memory.
"""

from __future__ import annotations

import numpy as np

from autoconf.cost.compute import model_pieces
from autoconf.cost.estimate import WEIGHT_GRAD_ACTIVATION_SHARE, Execution, recompute_time, tp_collective
from autoconf.cost.memory import (_state_bytes_per_param, head_input_bytes, layer_activation_bytes,
                                  logits_temporary_bytes)
from autoconf.spec.schedules import build_schedule
from autoconf.cost.simulate import StageCosts, simulate
from autoconf.spec.cluster import DTYPE_BYTES, ClusterProfile
from autoconf.spec.model import ModelSpec
from autoconf.spec.plan import ParallelConfig


def partition_problem(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, execution: Execution):
    from autoconf.solve.partition import PartitionProblem

    pieces = model_pieces(model, cluster, c)
    one = tp_collective(model, cluster, c, list(range(c.tp)))
    layer_time = pieces.block.total + 4 * one + recompute_time(pieces, c, one)
    e = DTYPE_BYTES[c.dtype]
    split = c.tp if c.sequence_parallel else 1
    sbh = c.seq_len * c.micro_batch_size * model.hidden_size
    w, g, o, copy = _state_bytes_per_param(c, execution.memory_layout)
    per_param = w + g + o + copy
    head_params = model.head_params() + (model.vocab_size * model.hidden_size if model.tied_embeddings else 0)
    logits = logits_temporary_bytes(model, c, execution.memory_layout)
    unit_time = [pieces.embedding.total + one] + [layer_time] * model.num_layers + [pieces.head.total + one]
    unit_static = ([model.embedding_params() / c.tp * per_param]
                   + [model.layer_params() / c.tp * per_param] * model.num_layers
                   + [head_params / c.tp * per_param + logits])
    layer_act = layer_activation_bytes(model, c, execution.memory_layout, cluster.device.kind)
    unit_act = ([sbh / split if model.dropout > 0 else 0.0] + [layer_act] * model.num_layers
                + [head_input_bytes(model, c, execution.memory_layout)])
    schedule = build_schedule(c.schedule, c.pp, c.num_microbatches, c.vpp)
    timeline = simulate(schedule, StageCosts.uniform(schedule.num_stages, 1.0, 1.0, 1.0))
    inflight = tuple(int(np.ceil(timeline.peak_inflight[s] + WEIGHT_GRAD_ACTIVATION_SHARE
                                 * timeline.peak_inflight_weight[s])) for s in range(schedule.num_stages))
    limit = (cluster.device.memory_bytes - cluster.device.memory_overhead_bytes
             - (4 * sbh * e / split if c.pp > 1 else 0))
    return PartitionProblem(unit_time=tuple(unit_time), unit_static_bytes=tuple(unit_static),
                            unit_activation_bytes=tuple(unit_act), stage_to_rank=tuple(schedule.stage_to_rank),
                            inflight=inflight, memory_limit_bytes=float(limit), num_microbatches=c.num_microbatches)


def refined_partition(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig, execution: Execution,
                      time_limit_s: float = 2.0, seed: int = 0) -> list[list[int]] | None:
    """CP-SAT's stage partition for `c`, or None when it finds none (the caller keeps the uniform split)."""
    from autoconf.solve.partition import solve_partition

    if c.num_stages == 1:
        return None
    result = solve_partition(partition_problem(model, cluster, c, execution), time_limit_s=time_limit_s, seed=seed)
    return None if result is None else [list(r) for r in result.layer_ranges()]


def traffic(model: ModelSpec, c: ParallelConfig) -> tuple[float, float, float]:
    """Bytes per step each rank moves in its TP group, to its pipeline neighbour, and in its DP group."""
    e = DTYPE_BYTES[c.dtype]
    activation = c.seq_len * c.micro_batch_size * model.hidden_size * e
    layers_per_rank = model.num_layers / c.pp
    tp_bytes = 4 * layers_per_rank * activation * c.num_microbatches if c.tp > 1 else 0.0
    pp_bytes = 2 * c.vpp * activation * c.num_microbatches if c.pp > 1 else 0.0
    dp_bytes = model.total_params() / c.pp / c.tp * 4 if c.dp > 1 else 0.0
    return tp_bytes, pp_bytes, dp_bytes


def refined_mesh(model: ModelSpec, cluster: ClusterProfile, c: ParallelConfig,
                 time_limit_s: float = 5.0, seed: int = 0) -> np.ndarray | None:
    """The placement solver's [pp][dp][tp] mesh for `c` on `cluster`'s links."""
    from autoconf.solve.placement import solve_placement

    if c.world_size == 1:
        return None
    tp_bytes, pp_bytes, dp_bytes = traffic(model, c)
    return np.asarray(solve_placement(c.pp, c.dp, c.tp, cluster, tp_bytes, pp_bytes, dp_bytes,
                                      time_limit_s=time_limit_s, seed=seed))
