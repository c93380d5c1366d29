"""Offload to host memory: what leaves the device, what the host holds, and what the copies and the CPU step cost.

The levers are the config's OFFLOADS (spec/plan.py). Every rule is here once; cost/memory.py, cost/estimate.py and
the search's bounds (solve/search.py) call these functions.

offload_activations (execute/offload.py: autograd's saved-tensor hooks, as `torch.autograd.graph.save_on_cpu(
pin_memory=True)` does, around each transformer block): every activation the block saves for its backward is copied
to pinned host memory when saved and back when the backward unpacks it. Unlike save_on_cpu the hook leaves
parameters (and views of them: the weights the linears save) on the device, where FSDP keeps or re-gathers them
anyway; save_on_cpu would copy every weight out and back for every micro-batch. The copies run on the current
(compute) stream, as save_on_cpu's do, so they are NOT overlapped with compute: a forward pays bytes / d2h rate, an
input backward bytes / h2d rate. The device keeps, of a block, only the activations its running backward has
unpacked (one block's worth, a temporary).

offload_optimizer (FSDP2 `CPUOffloadPolicy`): the sharded fp32 parameters (4/dp bytes per parameter), their
sharded fp32 gradients (4/dp) and AdamW's two moments (8/dp) live in host memory. Each FSDP all-gather first copies
the fp32 shard to the device (its copy-in, on the all-gather stream: it overlaps compute exactly as the gather
does), each reduce-scatter copies its fp32 gradient shard back (on the reduce-scatter stream, likewise); the
optimizer step runs on the CPU after the backward, not overlapped, at the profile's host AdamW rate. What stays on
the device: the unsharded compute copies FSDP gathers and the unsharded gradients it accumulates between
reductions (cost/memory.py). Megatron's layout (`--optimizer-cpu-offload`, HybridDeviceOptimizer with fraction 1)
moves its 12 bytes of fp32 master weights and moments to the host, plus an fp32 copy of the gradients.

A profile states the host side per node (`ClusterProfile.host`, HOST_FIELDS); without it offload is refused.
"""

from __future__ import annotations

from autoconf.errors import UserError
from autoconf.spec.cluster import ClusterProfile
from autoconf.spec.frameworks import Execution
from autoconf.spec.plan import ParallelConfig


def offload_problem(cluster: ClusterProfile) -> str | None:
    """Why nothing can be offloaded on this cluster, or None: its devices are CPU ranks (their memory already is host
    memory: offloading would move nothing, yet cost its copies and a CPU optimizer step in the estimate), or its
    profile states no host facts."""
    if cluster.device.kind == "cpu":
        return (f"cluster {cluster.name}'s devices are CPU ranks, whose memory already is host memory, so offloading "
                f"to the host moves nothing; drop the offload (it is for GPU profiles)")
    if cluster.host is None:
        return (f"cluster {cluster.name} states no host memory and host-device bandwidth (its profile has no "
                f"\"host\" object); profile the cluster again or use a bundled profile that states them "
                f"(dgx-h100-80g, dgx-a100-80g)")
    return None


def check_offload(cluster: ClusterProfile, levers: tuple[str, ...]) -> None:
    """Raises a one-line UserError, naming the levers (OFFLOADS names) that are on, when any is on where
    `offload_problem` says nothing can be."""
    problem = offload_problem(cluster) if levers else None
    if problem:
        raise UserError(f"{', '.join(levers)}: {problem}")


def plans_offload(cluster: ClusterProfile) -> bool:
    """Whether the search may propose offload on this cluster (`offload_problem`)."""
    return offload_problem(cluster) is None


def activation_copy_bytes(config: ParallelConfig, layer_activation: float) -> float:
    """Bytes one block copies to the host per micro-batch under offload_activations (and back in the backward):
    its saved activations (`layer_activation`, cost/memory.py's count); 0 without it."""
    return layer_activation if config.offload_activations else 0.0


def activation_copy_times(cluster: ClusterProfile, nbytes: float) -> tuple[float, float]:
    """(forward, input backward) seconds a block's `nbytes` offloaded tensors add on the compute stream."""
    if not nbytes:
        return 0.0, 0.0
    return nbytes / float(cluster.host["d2h_Bps"]), nbytes / float(cluster.host["h2d_Bps"])


def gather_copy_time(cluster: ClusterProfile, config: ParallelConfig, params: float, group: int) -> float:
    """Seconds of the fp32 shard copies to the device before one FSDP all-gather of `params` parameters (per TP
    rank, sharded over the `group` ranks that hold the same weights: dp x cp, or edp for routed experts) under
    offload_optimizer; 0 without it."""
    if not config.offload_optimizer:
        return 0.0
    return params * 4 / group / float(cluster.host["h2d_Bps"])


def reduce_copy_time(cluster: ClusterProfile, config: ParallelConfig, params: float, group: int) -> float:
    """Seconds of the fp32 gradient shard copies to the host after one reduce-scatter of `params` parameters
    (sharded over `group` ranks, as `gather_copy_time`) under offload_optimizer; 0 without it."""
    if not config.offload_optimizer:
        return 0.0
    return params * 4 / group / float(cluster.host["d2h_Bps"])


def cpu_optimizer_time(cluster: ClusterProfile, local_params: float) -> float:
    """The AdamW step over `local_params` parameters on the host CPU, at the profile's host rate."""
    return local_params * float(cluster.host["adam_s_per_param"])


def host_state_bytes_per_param(config: ParallelConfig, layout: str, execution: Execution | None = None,
                               experts: bool = False) -> float:
    """Host bytes per local parameter under offload_optimizer, sharded over dp x cp as ZeRO shards them (a routed
    expert's over the expert-data-parallel degree edp): the torch layout's fp32 weights, gradients and AdamW moments
    (4 + 4 + 8); the megatron layout's fp32 master weights, its two moments in `execution`'s dtype
    (`Execution.moment_bytes`: 8 in fp32, 4 in bf16; Megatron-LM's defaults without) and the fp32 gradient copy (4).
    0 without offload_optimizer."""
    if not config.offload_optimizer:
        return 0.0
    per_param = 16.0 if layout == "torch" else 4.0 + (execution or Execution()).moment_bytes(config.dtype) + 4.0
    return per_param / (config.edp if experts else config.dp_cp)


def host_state_bytes(config: ParallelConfig, layout: str, execution: Execution | None, params: float,
                     experts: float) -> float:
    """Host bytes of a rank's offloaded optimizer state: its local dense `params` and routed-expert `experts`
    parameters at `host_state_bytes_per_param` each; 0 without offload_optimizer."""
    return (params * host_state_bytes_per_param(config, layout, execution)
            + experts * host_state_bytes_per_param(config, layout, execution, experts=True))


def host_memory_per_node(cluster: ClusterProfile, rank_host_bytes: list[float]) -> float:
    """Host bytes one node holds, as the busiest pipeline rank's host bytes times the devices of a node (a node runs
    gpus_per_node ranks; an upper bound when pipeline ranks share a node)."""
    return max(rank_host_bytes, default=0.0) * cluster.gpus_per_node


def check_host_memory(cluster: ClusterProfile, config: ParallelConfig, per_node: float) -> None:
    """Raises a one-line UserError when an offloading plan needs more host memory per node than the node has."""
    if not config.offloads:
        return
    limit = float(cluster.host["memory_bytes"])
    if per_node > limit:
        GiB = 1024 ** 3
        raise UserError(f"offload beyond host memory: the plan puts {per_node / GiB:.1f} GiB on the host of each node "
                        f"({cluster.gpus_per_node} ranks), which has {limit / GiB:.1f} GiB; offload less (drop "
                        f"offload_activations or offload_optimizer), or use more devices")
