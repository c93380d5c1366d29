"""The CP-SAT settings helper (autoconf.solve.cpsat): seeded, one worker, time-limited, slow solves dumped on request."""

from ortools.sat import cp_model_pb2
from ortools.sat.python import cp_model

from autoconf.solve import cpsat


def _model():
    model = cp_model.CpModel()
    xs = [model.new_int_var(0, 10, f"x{i}") for i in range(4)]
    model.add(sum(xs) <= 17)
    model.maximize(sum((i + 1) * x for i, x in enumerate(xs)))
    return model, xs


def test_solve_sets_the_limits_seed_and_one_worker_and_uses_the_hints():
    """The solver carries the deterministic limit, a wall-clock guard of WALL_GUARD times it, the seed, one worker
    and extra parameters; the hints land in the model."""
    model, xs = _model()
    solver, status = cpsat.solve(model, 2.0, seed=7, hints=[(xs[0], 3)], cp_model_presolve=False)
    assert status == cp_model.OPTIMAL and solver.objective_value == 4 * 10 + 3 * 7
    p = solver.parameters
    assert (p.max_deterministic_time, p.max_time_in_seconds, p.random_seed, p.num_workers) == \
        (2.0, 2.0 * cpsat.WALL_GUARD, 7, 1)
    assert cpsat.WALL_GUARD >= 10  # the deterministic limit binds first even on a loaded machine
    assert p.cp_model_presolve is False
    assert list(model.proto.solution_hint.values) == [3]


def test_slow_solves_are_dumped_when_asked_and_fast_ones_are_not(tmp_path, monkeypatch):
    """With AUTOCONF_CPSAT_DUMP set, a solve that spends half its limit writes its model and a note; a fast one
    writes nothing; without the variable nothing is written."""
    monkeypatch.setenv(cpsat.DUMP_ENV, str(tmp_path / "dump"))
    cpsat.solve(_model()[0], 60.0, seed=0, name="fast")
    assert not (tmp_path / "dump").exists()
    cpsat.solve(_model()[0], 1e-9, seed=0, name="slow")  # any solve takes half of a nanosecond
    (pb,) = (tmp_path / "dump").glob("slow-*.pb")
    proto = cp_model_pb2.CpModelProto()
    proto.ParseFromString(pb.read_bytes())
    assert len(proto.variables) == 4
    note = pb.with_suffix(".txt").read_text()
    assert "status:" in note and "random_seed: 0" in note and "num_workers: 1" in note
    monkeypatch.delenv(cpsat.DUMP_ENV)
    cpsat.solve(_model()[0], 1e-9, seed=0, name="quiet")
    assert not list((tmp_path / "dump").glob("quiet-*"))
