"""The in-flight rule of the memory model: a rank holds, at its peak, the most of (micro-batches between F and B/I)
plus WEIGHT_GRAD_ACTIVATION_SHARE x (those between I and W), both counted at the same instant of its order."""

import pytest

from autoconf.cost.estimate import EXTRAPOLATE_ABOVE, schedule_inflight
from autoconf.cost.simulate import WEIGHT_GRAD_ACTIVATION_SHARE, StageCosts, simulate
from autoconf.spec.schedules import SCHEDULES, build_schedule, check_schedule, stage_to_rank


def _brute_joint(schedule, rank: int) -> float:
    """The largest live + share x waiting after any action of the rank's list, each set kept by (stage, micro-batch)
    and counted afresh after every action."""
    live, waiting, best = set(), set(), 0.0
    for a in schedule.actions[rank]:
        key = (a.stage, a.microbatch)
        if a.kind == "F":
            live.add(key)
        elif a.kind in ("B", "I"):
            live.remove(key)
            if a.kind == "I":
                waiting.add(key)
        else:
            waiting.remove(key)
        best = max(best, len(live) + WEIGHT_GRAD_ACTIVATION_SHARE * len(waiting))
    return best


GRID = []
for _name in SCHEDULES:
    if _name == "seq1f1b":  # its counts are of sequence chunks (tests/test_seq1f1b.py); no split backward
        continue
    for _pp in (2, 4):
        for _vpp in (1, 2):
            for _k in (1, EXTRAPOLATE_ABOVE + 2):  # the second is extended from 2p and 3p
                try:
                    check_schedule(_name, _pp, _vpp, _k * _pp)
                except ValueError:
                    continue
                GRID.append((_name, _pp, _vpp, _k * _pp))


@pytest.mark.parametrize("name,pp,vpp,m", GRID)
def test_a_ranks_stages_hold_exactly_its_joint_peak(name, pp, vpp, m):
    """For every schedule of the registry, each rank's stages together hold exactly the joint peak of its order
    (brute force), from the whole schedule and from the rank's own list (the search's bound), extended or not;
    schedules without W hold their rank's live peak, as before the joint rule."""
    schedule = build_schedule(name, pp, m, vpp)
    owner = stage_to_rank(name, pp, vpp)
    counts = schedule_inflight(name, pp, vpp, m)
    timeline = simulate(schedule, StageCosts.uniform(schedule.num_stages, 1.0, 2.0, 1.0))
    for r in range(pp):
        joint = _brute_joint(schedule, r)
        assert timeline.peak_inflight_joint[r] == pytest.approx(joint, abs=1e-9)
        assert sum(n for s, n in enumerate(counts) if owner[s] == r) == pytest.approx(joint, abs=1e-9)
        own = schedule_inflight(name, pp, vpp, m, rank=r)
        assert sum(n for s, n in enumerate(own) if owner[s] == r) == pytest.approx(joint, abs=1e-9)
        if not any(a.kind == "W" for a in schedule.actions[r]):
            assert joint == timeline.peak_inflight_rank[r]


def test_dualpipev_holds_pp_plus_one_chunks_and_zb_h1_less_than_its_separate_peaks():
    """DualPipe's count (its README: PP+1 activations per device) is dualpipev's joint peak at 8 ranks, 2 x 8 + 1
    chunk-micro-batches on every rank; ZB-H1's first rank holds fewer than its live peak plus the share of its
    W-inputs' own peak (the two do not coincide)."""
    pp, m = 8, 32
    owner = stage_to_rank("dualpipev", pp, 2)
    counts = schedule_inflight("dualpipev", pp, 2, m)
    assert [sum(counts[s] for s in range(2 * pp) if owner[s] == r) for r in range(pp)] == pytest.approx([17.0] * pp)
    tl = simulate(build_schedule("zb-h1", 4, 16), StageCosts.uniform(4, 1.0, 1.0, 1.0))
    assert tl.peak_inflight_joint[0] < tl.peak_inflight_rank[0] + WEIGHT_GRAD_ACTIVATION_SHARE * \
        tl.peak_inflight_weight[0]
