"""Pipeline schedule action lists (pure Python, no torch)."""

import dataclasses

import pytest

from autoconf.spec.schedules import (SCHEDULES, Action, build_schedule, check_schedule, register, schedule_spec,
                                     stage_to_rank, unregister)


def _legal_grid():
    for name in SCHEDULES:
        for pp in (1, 2, 3, 4, 8):
            for vpp in (1, 2, 3):
                for m in (1, 2, 3, 4, 5, 8, 9, 12, 16, 17):
                    try:
                        check_schedule(name, pp, vpp, m)
                    except ValueError:
                        continue
                    yield name, pp, vpp, m


LEGAL = list(_legal_grid())


def test_every_schedule_name_has_legal_configurations():
    """Each of the seven schedule names builds for some (pp, vpp, m) in the grid."""
    assert {g[0] for g in LEGAL} == set(SCHEDULES)


@pytest.mark.parametrize("name,pp,vpp,m", LEGAL)
def test_every_stage_and_microbatch_runs_once_on_its_rank_in_dependency_order(name, pp, vpp, m):
    """Each (stage, micro-batch) that passes the stage (all, or under two directions its direction's half) has one F
    and either one B or one I then one W, all on the rank holding the stage, with F before B/I before W in that
    rank's order; nothing else runs."""
    sch = build_schedule(name, pp, m, vpp)
    assert len(sch.actions) == pp and len(sch.stage_to_rank) == sch.num_stages
    seen = {}
    for rank, acts in enumerate(sch.actions):
        for pos, a in enumerate(acts):
            assert sch.stage_to_rank[a.stage] == rank
            assert (a.kind, a.stage, a.microbatch) not in seen
            seen[a.kind, a.stage, a.microbatch] = pos
    for s in range(sch.num_stages):
        for i in sch.microbatches_of_stage(s):
            f = seen.pop(("F", s, i))
            if ("B", s, i) in seen:
                assert seen.pop(("B", s, i)) > f
            else:
                b = seen.pop(("I", s, i))
                assert seen.pop(("W", s, i)) > b > f
    assert not seen


def test_stage_to_rank_is_loop_or_v():
    """Loop placement puts stage s on rank s % pp; zbv/dualpipev put stages r and 2pp-1-r on rank r."""
    assert stage_to_rank("interleaved-1f1b", 4, 2) == (0, 1, 2, 3, 0, 1, 2, 3)
    assert stage_to_rank("1f1b", 3, 1) == (0, 1, 2)
    assert stage_to_rank("zbv", 4, 2) == (0, 1, 2, 3, 3, 2, 1, 0)
    sch = build_schedule("dualpipev", 4, 8, 2)
    assert [sch.stages_of_rank(r) for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]
    # dualpipe: stage d*pp + k is model stage k in direction d; rank r holds model stages r and pp-1-r
    dual = build_schedule("dualpipe", 4, 8, 1)
    assert dual.stage_to_rank == (0, 1, 2, 3, 3, 2, 1, 0) and dual.num_stages == 8
    assert [dual.model_stages_of_rank(r) for r in range(4)] == [(0, 3), (1, 2), (2, 1), (3, 0)]


def test_splits_backward_only_for_zero_bubble_schedules():
    """gpipe, 1f1b, interleaved, looped-bfs and seq1f1b use full B; zb-h1, zbv, dualpipev and dualpipe use I/W."""
    split = {name: build_schedule(name, 4, 8, 2 if name in ("interleaved-1f1b", "zbv", "dualpipev") else 1)
             .splits_backward for name in SCHEDULES}
    assert split == {"gpipe": False, "1f1b": False, "interleaved-1f1b": False, "looped-bfs": False,
                     "zb-h1": True, "zbv": True, "dualpipev": True, "dualpipe": True, "seq1f1b": False}
    assert split == {name: schedule_spec(name).split_backward for name in SCHEDULES}  # (the registry's own flag)


def test_1f1b_rank_r_runs_pp_minus_r_forwards_before_its_first_backward():
    """1F1B warm-up: rank r runs pp-r forwards, then alternates B and F, then drains the backwards."""
    sch = build_schedule("1f1b", 4, 8)
    for r, acts in enumerate(sch.actions):
        kinds = "".join(a.kind for a in acts)
        assert kinds.index("B") == 4 - r
    assert sch.actions[0][:6] == (Action("F", 0, 0), Action("F", 0, 1), Action("F", 0, 2), Action("F", 0, 3),
                                  Action("B", 0, 0), Action("F", 0, 4))


def test_gpipe_runs_all_forwards_then_all_backwards():
    """GPipe: F0..F(m-1) then B0..B(m-1) on every rank."""
    sch = build_schedule("gpipe", 3, 5)
    for r, acts in enumerate(sch.actions):
        assert [str(a) for a in acts] == [f"{r}F{i}" for i in range(5)] + [f"{r}B{i}" for i in range(5)]


@pytest.mark.parametrize(
    "args,needle",
    [
        (("zbv", 4, 3, 8), "zbv needs vpp == 2 (got 3)"),
        (("dualpipev", 4, 1, 8), "dualpipev needs vpp == 2 (got 1)"),
        (("interleaved-1f1b", 4, 1, 8), "interleaved-1f1b needs vpp >= 2"),
        (("gpipe", 4, 2, 8), "gpipe needs vpp == 1"),
        (("1f1b", 4, 2, 8), "1f1b needs vpp == 1"),
        (("dualpipev", 4, 2, 7), "dualpipev needs num_microbatches (7) >= 2 * pp (8)"),
        (("dualpipe", 4, 2, 8), "dualpipe needs vpp == 1 (got 2)"),
        (("dualpipe", 3, 1, 8), "dualpipe needs an even pp (got 3)"),
        (("dualpipe", 4, 1, 9), "dualpipe needs an even num_microbatches (got 9)"),
        (("dualpipe", 4, 1, 6), "dualpipe needs num_microbatches (6) >= 2 * pp (8)"),
        (("interleaved-1f1b", 4, 2, 11), "use 10 or 12 micro-batches"),
        (("zb-h1", 4, 1, 9), "multiple of the number of rounds"),
        (("pipedream", 4, 1, 8), "unknown schedule"),
        (("gpipe", 0, 1, 8), "pp must be >= 1"),
        (("gpipe", 2, 1, 0), "num_microbatches must be >= 1"),
    ],
)
def test_check_schedule_names_the_factor_and_a_fix(args, needle):
    """Illegal combinations raise one-line ValueErrors that name the offending factor and what would work."""
    with pytest.raises(ValueError) as e:
        check_schedule(*args)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_build_schedule_checks_first():
    """build_schedule refuses what check_schedule refuses, and defaults to vpp=1."""
    with pytest.raises(ValueError):
        build_schedule("dualpipev", 4, 7, 2)
    assert build_schedule("1f1b", 2, 4).vpp == 1


def test_1f1b_with_fewer_microbatches_than_ranks_is_torchs_refusal_only():
    """The 1F1B order is defined for m < pp (Megatron-LM's and nanotron's warm-up min(pp - r - 1, m) forwards:
    rank r runs min(m, pp - r) forwards before its first backward); torch's Schedule1F1B alone refuses it, so the
    spec names that rule only for a torch runtime, in one line naming what would work."""
    check_schedule("1f1b", 4, 1, 3)
    sch = build_schedule("1f1b", 8, 3)
    for r, acts in enumerate(sch.actions):
        assert "".join(a.kind for a in acts).index("B") == min(3, 8 - r)
    spec = schedule_spec("1f1b")
    assert spec.problem(4, 1, 3, runtime=None) is None and spec.problem(4, 1, 3, "megatron") is None
    assert spec.problem(4, 1, 4) is None
    line = spec.problem(4, 1, 3)
    assert "1f1b needs num_microbatches (3) >= pp (4) in torch's 1F1B" in line and "gpipe" in line
    assert "megatron" in line and "\n" not in line


def test_interleaved_and_zero_bubble_accept_fewer_microbatches_than_ranks():
    """torch runs Interleaved1F1B / InterleavedZeroBubble with m < pp (one round); so do we."""
    for name in ("interleaved-1f1b", "zb-h1"):
        check_schedule(name, 4, 2, 3)


def test_zbv_accepts_any_microbatch_count():
    """torch's ZBV pads to 2pp-1 micro-batches and drops the padding's actions, so any m >= 1 is legal."""
    for m in (1, 2, 7, 9):
        sch = build_schedule("zbv", 4, m, 2)
        assert sum(len(a) for a in sch.actions) == 3 * 8 * m


@pytest.fixture
def registered_copy():
    """A schedule registered only here: gpipe's order under a new name, with a bubble bound of its own."""
    base = schedule_spec("gpipe")
    spec = dataclasses.replace(base, name="gpipe-test-copy", megatron_note=None)
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.name)


def test_a_schedule_registered_in_one_place_reaches_the_cli_search_and_simulation(registered_copy):
    """Registering a ScheduleSpec is all it takes: the CLI offers it, the candidate space yields it, the bound and
    the estimate cost it, and the simulation runs its order."""
    from click.testing import CliRunner

    from autoconf.cli import main
    from autoconf.cost.estimate import estimate
    from autoconf.solve.space import candidates
    from autoconf.solve.search import search
    from autoconf.spec.cluster import load_cluster
    from autoconf.spec.presets import PRESETS

    name = registered_copy.name
    help_text = CliRunner().invoke(main, ["estimate", "--help"]).output
    assert name in help_text
    model, cluster = PRESETS["tiny-gpt"], load_cluster("cpu-local")
    found = [c for c in candidates(model, 4, 4, 8, 64, "fp32") if c.schedule == name]
    assert found and all(c.vpp == 1 for c in found)
    config = next(c for c in found if c.pp == 2)
    twin = dataclasses.replace(config, schedule="gpipe")
    ours, theirs = (estimate(model, cluster, c).prediction["iteration_time_s"] for c in (config, twin))
    assert ours == pytest.approx(theirs)
    assert str(build_schedule(name, 2, 4)) == str(build_schedule("gpipe", 2, 4))
    result = search(model, cluster, 8, 64, "fp32", fixed={"schedule": name, "pp": 2}, top_k=1, refine=False)
    assert result.plans[0].config.schedule == name


def test_unknown_schedules_are_refused_with_the_registered_names():
    with pytest.raises(ValueError, match="choose one of gpipe, 1f1b"):
        schedule_spec("pipedream")
