"""The parallel degrees and the rank grid: one value object for each, read by every view.

`ParallelDims` holds one degree per axis of `AXES`, the grid's axis order (outermost first), which is also the
dimension order of the executor's DeviceMesh and of a plan's `placement.mesh`. `RankGrid` is one array of that
shape: the device of each grid position (grid position i runs as global rank i). Every group of ranks (the TP group
of a pipeline rank, every DP group, the devices of one pipeline rank) is a slice or a reshape of that array, so the
estimate, the placement and partition solvers, the exporters and the executor's mesh all take their ranks from here.

Adding a degree (ep, ...) is one field of `ParallelDims` and one name in `AXES`. Pure Python + numpy.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, fields

import numpy as np

# Outermost first. TP is innermost and CP next to it, so on the logical grid a TP x CP block fills consecutive devices
# (one node's fast links where tp * cp <= devices per node): the two degrees that exchange activations every layer.
AXES = ("pp", "dp", "cp", "tp")
_DEGREES = operator.attrgetter(*AXES)


def world_size_of(degrees) -> int:
    """The ranks of anything carrying one degree per axis of `AXES` as attributes: their product."""
    return math.prod(_DEGREES(degrees))


@dataclass(frozen=True)
class ParallelDims:
    """One degree per axis of `AXES`."""

    pp: int = 1
    dp: int = 1
    cp: int = 1
    tp: int = 1

    @classmethod
    def of(cls, config) -> "ParallelDims":
        """The degrees of anything carrying them as attributes (a ParallelConfig)."""
        return cls(**{axis: getattr(config, axis) for axis in AXES})

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(getattr(self, axis) for axis in AXES)

    @property
    def world_size(self) -> int:
        return world_size_of(self)

    def problems(self, world_size: int | None = None) -> list[str]:
        """Every degree that is not a positive integer, and a product that misses the device count (naming each
        factor)."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                out.append(f"{f.name} must be a positive integer (got {value!r})")
        if not out and world_size is not None and self.world_size != world_size:
            out.append(f"{self.product()} = {self.world_size} but the cluster has {world_size} devices")
        return out

    def product(self) -> str:
        """The device count as its factors, every axis named: "pp*dp*cp*tp = 2*4*1*8"."""
        return f"{'*'.join(AXES)} = {'*'.join(str(v) for v in self.shape)}"


class RankGrid:
    """The device of every grid position, as one array over the named axes `AXES`."""

    def __init__(self, devices):
        self.devices = np.asarray(devices, dtype=np.int64)
        if self.devices.ndim == len(AXES) - 1:
            # A plan written before the cp axis existed: [pp][dp][tp], read as cp = 1.
            self.devices = np.expand_dims(self.devices, AXES.index("cp"))
        assert self.devices.ndim == len(AXES), f"a rank grid has axes {AXES}, got shape {self.devices.shape}"

    @classmethod
    def logical(cls, dims: ParallelDims) -> "RankGrid":
        """Grid position i on device i: TP fills consecutive devices first, then CP, then DP, then PP."""
        return cls(np.arange(dims.world_size).reshape(dims.shape))

    @property
    def dims(self) -> ParallelDims:
        return ParallelDims(*(int(n) for n in self.devices.shape))

    def size(self, axis: str) -> int:
        return self.devices.shape[AXES.index(axis)]

    def groups(self, axis: str) -> np.ndarray:
        """Every group along `axis`, one per row, in a fixed order every rank agrees on (the other axes in grid
        order)."""
        moved = np.moveaxis(self.devices, AXES.index(axis), -1)
        return moved.reshape(-1, self.size(axis))

    def coords(self, rank: int) -> dict[str, int]:
        """Index along every axis of the grid position holding device `rank`."""
        where = np.argwhere(self.devices == rank)
        if len(where) != 1:
            raise ValueError(f"rank {rank} is not in the placement mesh")
        return dict(zip(AXES, (int(i) for i in where[0])))

    def group_of(self, axis: str, rank: int) -> list[int]:
        """The devices of `rank`'s group along `axis`, in axis order."""
        index = self.coords(rank)
        index[axis] = slice(None)
        return [int(d) for d in self.devices[tuple(index[a] for a in AXES)]]

    def pipeline_rank(self, pp_rank: int) -> np.ndarray:
        """The devices of one pipeline rank, shape (dp, cp, tp)."""
        return self.devices[pp_rank]

    def first_group_array(self, axis: str | tuple[str, ...], pp_rank: int) -> np.ndarray:
        """The first group along `axis` (or along several axes together, flattened in grid order) within pipeline
        rank `pp_rank` (every other position 0): the group the cost model charges for that stage. Along one axis a
        view of the grid (no copy: for groups of many thousand devices)."""
        axes = (axis,) if isinstance(axis, str) else axis
        index = {a: 0 for a in AXES}
        index.update(pp=pp_rank)
        for a in axes:
            index[a] = slice(None)
        group = self.devices[tuple(index[a] for a in AXES)]
        return group if len(axes) == 1 else group.reshape(-1)

    def flat(self) -> list[int]:
        return [int(d) for d in self.devices.reshape(-1)]

    def tolist(self) -> list:
        return self.devices.tolist()


EXPERT_AXES = ("edp", "ep", "etp")


def expert_grid(grid: RankGrid, pp_rank: int, ep: int, etp: int) -> np.ndarray:
    """The devices of pipeline rank `pp_rank` as the MoE layers see them, shape (edp, ep, etp) over `EXPERT_AXES`
    (Megatron-Core's "MoE parallel folding"): the same ranks attention uses, taken in grid order (the last axis
    fastest) and reshaped with etp innermost, then ep, then expert-data-parallel edp = ranks / (ep * etp). So with
    etp == tp an expert-TP group is the attention TP group, and an EP group spans consecutive TP groups (within a
    node when ep * etp fits one). Raises ValueError when ep * etp does not divide the pipeline rank's ranks."""
    devices = grid.pipeline_rank(pp_rank).reshape(-1)
    if ep < 1 or etp < 1 or devices.size % (ep * etp):
        raise ValueError(f"ep*etp = {ep}*{etp} does not divide the {devices.size} ranks of a pipeline rank")
    return devices.reshape(devices.size // (ep * etp), ep, etp)


def expert_groups(grid: RankGrid, pp_rank: int, ep: int, etp: int, axis: str) -> np.ndarray:
    """Every group of pipeline rank `pp_rank` along expert axis `axis` (one of `EXPERT_AXES`), one per row, the
    other axes in order: the EP groups (all-to-all), the ETP groups, the expert-data-parallel groups."""
    folded = expert_grid(grid, pp_rank, ep, etp)
    moved = np.moveaxis(folded, EXPERT_AXES.index(axis), -1)
    return moved.reshape(-1, folded.shape[EXPERT_AXES.index(axis)])
