"""The one way autoconf runs CP-SAT: seeded, one worker, limited in deterministic time, optionally dumped.

The limit is CP-SAT's deterministic time (machine-independent work units, about a second each), so a search cut
short stops at the same solution on every machine and under any load; the wall clock (WALL_GUARD times the limit)
only guards against a solver that stops counting work. It must not bind first: on 2 cores shared by 50 processes a
deterministic second took over 6 s of wall time, and a guard of 3x then stopped a 64-stage partition at half its
work, so the refined plan depended on the machine's load. One worker keeps the answer independent of thread
timing.

Set `AUTOCONF_CPSAT_DUMP=DIR` to keep the slow solves for study: every solve that spends at least half its limit
(deterministic or wall-clock seconds) writes its model to `DIR/<name>-<pid>-<n>.pb` (a binary CpModelProto with the
hint; read it with `ortools.sat.cp_model_pb2.CpModelProto().ParseFromString(data)`) and `DIR/<name>-<pid>-<n>.txt`
(the solver parameters, status, objective and times). Fast solves write nothing.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from pathlib import Path

from ortools.sat.python import cp_model

DUMP_ENV = "AUTOCONF_CPSAT_DUMP"
WALL_GUARD = 60  # the wall-clock limit, in multiples of the deterministic limit (see the module docstring)
_dump_counter = itertools.count()


def solve(model: cp_model.CpModel, time_limit_s: float, seed: int, name: str = "model",
          hints: Iterable[tuple] = (), **parameters) -> tuple[cp_model.CpSolver, int]:
    """Solves `model` and returns (solver, status): seeded with `seed`, one worker, at most `time_limit_s` of
    deterministic time (and WALL_GUARD times that of wall-clock time). `hints` are (variable, value) pairs added as
    the solution hint; `parameters` are further CP-SAT parameters by name (e.g. cp_model_presolve=False). `name`
    names the dump files (see the module's docstring)."""
    for var, value in hints:
        model.add_hint(var, value)
    solver = cp_model.CpSolver()
    solver.parameters.max_deterministic_time = time_limit_s
    solver.parameters.max_time_in_seconds = WALL_GUARD * time_limit_s
    solver.parameters.random_seed = seed
    solver.parameters.num_workers = 1
    for key, value in parameters.items():
        setattr(solver.parameters, key, value)
    status = solver.solve(model)
    dump_dir = os.environ.get(DUMP_ENV)
    if dump_dir and max(solver.deterministic_time, solver.wall_time) >= time_limit_s / 2:
        _dump(Path(dump_dir), name, model, solver, status)
    return solver, status


def _dump(folder: Path, name: str, model: cp_model.CpModel, solver: cp_model.CpSolver, status: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{name}-{os.getpid()}-{next(_dump_counter)}"
    model.export_to_file(str(stem) + ".pb")
    objective = solver.objective_value if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) else None
    (stem.parent / (stem.name + ".txt")).write_text(
        f"status: {solver.status_name(status)}\nobjective: {objective}\n"
        f"deterministic_time: {solver.deterministic_time}\nwall_time: {solver.wall_time}\n"
        f"parameters:\n{solver.parameters}")
