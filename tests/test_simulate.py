"""Critical-path simulation of pipeline schedules: textbook bubbles, in-flight micro-batches, delays, deadlock."""

import pytest

from autoconf.spec.schedules import SCHEDULES, Action, Schedule, build_schedule, check_schedule
from autoconf.cost.simulate import StageCosts, busy_per_rank, simulate

LEGAL = []
for _name in SCHEDULES:
    for _pp in (1, 2, 3, 4, 8):
        for _vpp in (1, 2, 3):
            for _m in (1, 2, 3, 4, 5, 8, 9, 12, 16, 17):
                try:
                    check_schedule(_name, _pp, _vpp, _m)
                except ValueError:
                    continue
                LEGAL.append((_name, _pp, _vpp, _m))

PM = [(2, 4), (2, 8), (4, 4), (4, 8), (4, 16), (8, 8), (8, 32)]


def _run(name, p, m, v=1, f=1.0, b=1.0, w=1.0, **kw):
    sch = build_schedule(name, p, m, v)
    return simulate(sch, StageCosts.uniform(sch.num_stages, f, b, w), **kw)


def _bubble_time(tl):
    """Idle seconds of the busiest rank: makespan minus that rank's compute."""
    return tl.makespan - max(tl.compute_time_per_rank)


@pytest.mark.parametrize("p,m", PM + [(4, 1), (4, 3), (8, 2), (8, 5)])
@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_gpipe_and_1f1b_bubble_fraction_is_p_minus_1_over_m_plus_p_minus_1(name, p, m):
    """Uniform stages, no communication: bubble_fraction = 1 - busy/(p*makespan) = (p-1)/(m+p-1) exactly, and the
    makespan is (m+p-1)(F+B+W); also with fewer micro-batches than stages (Megatron's 1F1B runs them)."""
    tl = _run(name, p, m, f=1.0, b=1.5, w=0.5)
    assert tl.bubble_fraction == pytest.approx((p - 1) / (m + p - 1), abs=1e-12)
    assert tl.makespan == pytest.approx((m + p - 1) * 3.0)


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 16), (8, 16), (4, 12), (4, 10)])
@pytest.mark.parametrize("v", [2, 3])
@pytest.mark.parametrize("name", ["interleaved-1f1b", "looped-bfs"])
def test_interleaved_and_bfs_bubble_fraction_is_p_minus_1_over_vm_plus_p_minus_1(name, p, m, v):
    """Uniform chunks (each 1/v of a rank's layers): bubble fraction (p-1)/(v*m+p-1) for interleaved 1F1B
    (Megatron) and for breadth-first (derived), whenever m >= p (torch's rounds also cover m % p != 0 here)."""
    tl = _run(name, p, m, v, f=1 / v, b=1 / v, w=1 / v)
    assert tl.bubble_fraction == pytest.approx((p - 1) / (v * m + p - 1), abs=1e-12)


@pytest.mark.parametrize("p,m", PM)
@pytest.mark.parametrize("f,b,w", [(1.0, 1.0, 1.0), (1.0, 2.0, 1.0), (2.0, 1.0, 1.0), (1.0, 1.5, 0.5)])
def test_zb_h1_bubble_time_is_p_minus_1_times_f_plus_b_minus_w(p, m, f, b, w):
    """ZB-H1 (torch InterleavedZeroBubble, one stage per rank), W <= B: bubble time (p-1)(F+B-W) where B is the
    input backward; makespan m(F+B+W) + (p-1)(F+B-W)."""
    tl = _run("zb-h1", p, m, f=f, b=b, w=w)
    assert _bubble_time(tl) == pytest.approx((p - 1) * (f + b - w))
    assert tl.makespan == pytest.approx(m * (f + b + w) + (p - 1) * (f + b - w))


@pytest.mark.parametrize("p,m", PM)
def test_zb_h1_bubble_is_a_third_of_1f1b_when_f_b_w_equal(p, m):
    """With F = B = W, ZB-H1's bubble time is one third of 1F1B's: (p-1)F against 3(p-1)F."""
    assert _bubble_time(_run("zb-h1", p, m)) == pytest.approx(_bubble_time(_run("1f1b", p, m)) / 3)


@pytest.mark.parametrize("p,m", [(2, 8), (4, 8), (4, 10), (4, 16), (8, 16), (8, 32)])
@pytest.mark.parametrize("name", ["zbv", "dualpipev"])
def test_v_schedules_bubble_is_the_v_placement_lower_bound_when_f_b_w_equal(name, p, m):
    """ZBV and DualPipeV with chunk costs F = B = W: bubble time exactly (p-1)F per rank (F of one chunk, i.e. half
    a 1F1B stage). Published: "about 0" (ZB-V) and (p/2-1)(F&B+B-3W) (DualPipe), which are 0 here; the exact
    number differs because the last rank cannot start before (p-1)F, when the first forward reaches it, and has
    2m(F+B+W) of work: (p-1)F is a lower bound for any order with V placement, and torch's orders reach it.
    DualPipeV's overlapped F&B pairs are simulated back to back (F then B), so its F&B overlap gain is not
    counted."""
    tl = _run(name, p, m, 2, f=0.5, b=0.5, w=0.5)
    assert _bubble_time(tl) == pytest.approx((p - 1) * 0.5)
    assert tl.makespan == pytest.approx(2 * m * 1.5 + (p - 1) * 0.5)


def test_interleaved_zero_bubble_divides_zb_h1_bubble_by_v():
    """torch's InterleavedZeroBubble with v chunks: bubble time (p-1)(F+B-W) in chunk costs, i.e. ZB-H1's / v."""
    tl = _run("zb-h1", 4, 8, 2, f=0.5, b=1.0, w=0.5)
    assert _bubble_time(tl) == pytest.approx(3 * (0.5 + 1.0 - 0.5))


@pytest.mark.parametrize("p,m", PM)
@pytest.mark.parametrize("name", ["1f1b", "zb-h1"])
def test_1f1b_and_zb_h1_rank_r_keeps_p_minus_r_microbatches(name, p, m):
    """1F1B and ZB-H1: stage r keeps at most min(m, p-r) micro-batches of activations in flight."""
    tl = _run(name, p, m)
    assert tl.peak_inflight == [min(m, p - r) for r in range(p)]
    assert tl.peak_inflight_rank == tl.peak_inflight


def test_zb_h1_inputs_wait_for_w_on_later_ranks():
    """ZB-H1 defers W on rank r by r steps: stage r holds up to r+1 micro-batches whose I ran but W has not."""
    tl = _run("zb-h1", 4, 8)
    assert tl.peak_inflight_weight == [1, 2, 3, 4]
    assert _run("1f1b", 4, 8).peak_inflight_weight == [0, 0, 0, 0]


@pytest.mark.parametrize("p,m", PM)
def test_gpipe_keeps_all_m_microbatches(p, m):
    """GPipe: every stage holds all m micro-batches before its first backward."""
    assert _run("gpipe", p, m).peak_inflight == [m] * p


@pytest.mark.parametrize("p,v", [(2, 2), (4, 2), (4, 4), (8, 2)])
def test_interleaved_first_rank_keeps_p_plus_p_minus_1_over_v_microbatches(p, v):
    """Interleaved 1F1B, m = 2p: rank 0 holds v*p + p - 1 chunk-micro-batches = p + (p-1)/v micro-batches of a
    whole 1F1B stage's activations (REFERENCES.md; Korthikanti's (1 + (p-1)/(p v)) factor)."""
    tl = _run("interleaved-1f1b", p, 2 * p, v)
    assert tl.peak_inflight_rank[0] == v * p + p - 1
    assert tl.peak_inflight_rank[0] / v == pytest.approx(p + (p - 1) / v)


@pytest.mark.parametrize("p", [2, 4, 8])
def test_v_schedules_keep_1f1b_memory(p):
    """ZBV: every rank holds 2p chunk-micro-batches (= p whole-stage micro-batches, as 1F1B's first rank).
    DualPipeV (torch's order): 2p+1 (p + 1/2), one chunk more, under DualPipe's published p+1."""
    assert _run("zbv", p, 4 * p, 2).peak_inflight_rank == [2 * p] * p
    assert _run("dualpipev", p, 4 * p, 2).peak_inflight_rank == [2 * p + 1] * p


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (8, 16)])
def test_p2p_delay_adds_2_p_minus_1_hops_to_gpipe(p, m):
    """GPipe with a p2p delay c between ranks: the critical path crosses p-1 hops forward and p-1 back, so the
    makespan grows by exactly 2(p-1)c."""
    base = _run("gpipe", p, m).makespan
    assert _run("gpipe", p, m, p2p_time=0.25).makespan == pytest.approx(base + 2 * (p - 1) * 0.25)


def test_p2p_callable_is_called_per_stage_pair():
    """A p2p function of (from_stage, to_stage) delays only the crossings it prices: one slow link adds 2c."""
    base = _run("gpipe", 4, 8).makespan
    slow = lambda a, b: 0.5 if {a, b} == {1, 2} else 0.0  # noqa: E731
    assert _run("gpipe", 4, 8, p2p_time=slow).makespan == pytest.approx(base + 1.0)


def test_p2p_between_stages_on_the_same_rank_is_free():
    """ZBV's stages p-1 and p share the last rank, so a p2p price on that pair is never paid."""
    base = _run("zbv", 4, 8, 2).makespan
    slow = _run("zbv", 4, 8, 2, p2p_time=lambda a, b: 100.0 if {a, b} == {3, 4} else 0.0).makespan
    assert slow == pytest.approx(base)


def test_allgather_delays_first_use_and_reduce_extends_makespan():
    """FSDP gathers run in first-use order from time 0 and gate the stage's first compute; gradient reduction
    starts after the stage's last backward and the makespan includes it."""
    sch = build_schedule("gpipe", 2, 4)
    costs = StageCosts.uniform(2, 1.0, 1.0, 1.0)
    base = simulate(sch, costs)
    tl = simulate(sch, costs, allgather_time=[0.5, 0.5], reduce_time=[2.0, 2.0])
    assert tl.events[0][0][1] == pytest.approx(0.5)  # rank 0 waits for its gather
    assert tl.comm_events[0][0] == ("allgather", 0, 0.0, 0.5)
    last_b0 = tl.events[0][-1][2]
    assert tl.comm_events[0][-1] == ("reduce", 0, last_b0, last_b0 + 2.0)
    assert tl.makespan == pytest.approx(base.makespan + 0.5 + 2.0)


def test_reducing_every_microbatch_puts_each_reduction_after_its_backward_on_the_stream():
    """grad_reduce "microbatch": each micro-batch's backward of a stage starts one reduction, queued on the rank's
    stream in the order the backwards end; a reduction longer than the compute between backwards piles up and the
    step ends with the stream. GPipe on 2 ranks, 4 micro-batches, F = B = 1 s, reductions of 0.5 and 3 s."""
    sch = build_schedule("gpipe", 2, 4)
    costs = StageCosts.uniform(2, 1.0, 1.0, 0.0)
    base = simulate(sch, costs)
    hidden = simulate(sch, costs, reduce_time=[0.5, 0.5], reduce_every_microbatch=True)
    for r in range(2):
        backwards = [(a.microbatch, end) for a, _, end in hidden.events[r] if a.kind == "B"]
        reduces = [e for e in hidden.comm_events[r] if e[0] == "reduce"]
        assert [(start, end) for _, _, start, end in reduces] == [(b, b + 0.5) for _, b in backwards]
    assert hidden.makespan == pytest.approx(base.makespan + 0.5)  # only the last one after the compute
    piled = simulate(sch, costs, reduce_time=[3.0, 3.0], reduce_every_microbatch=True)
    first_backward_end = min(end for a, _, end in piled.events[0] if a.kind == "B")
    assert piled.makespan == pytest.approx(first_backward_end + 4 * 3.0)


def test_beside_lies_between_the_longer_and_the_sum():
    """A phase of compute beside a collective: the longer of the two without contention, their sum when the
    collective takes the whole device, and compute + share x comm while the compute is the longer."""
    from autoconf.cost.simulate import beside

    for compute, comm in [(3.0, 1.0), (1.0, 3.0), (2.0, 2.0), (0.0, 1.0), (1.0, 0.0)]:
        assert beside(compute, comm, 0.0) == max(compute, comm)
        assert beside(compute, comm, 1.0) == compute + comm
        for share in (0.1, 0.159, 0.5):
            assert max(compute, comm) <= beside(compute, comm, share) <= compute + comm
    assert beside(3.0, 1.0, 0.2) == pytest.approx(3.2)
    assert beside(1.0, 3.0, 0.2) == 3.0


def test_contention_charges_the_compute_the_dp_stream_runs_beside():
    """With `contention` f a rank's compute ends f x (the seconds its DP stream's gathers and reduction buckets ran
    while it computed) later: a gather before any compute and a reduction after the last backward cost nothing; a
    reduction bucketed within the last backward costs f times what of it ran beside that backward; f 0 changes
    nothing and a reduction charged at share 0 (`reduce_contending`) neither."""
    sch = build_schedule("gpipe", 1, 2)
    costs = StageCosts.uniform(1, 1.0, 2.0, 0.0)
    base = simulate(sch, costs, allgather_time=[0.5], reduce_time=[1.0])
    same = simulate(sch, costs, allgather_time=[0.5], reduce_time=[1.0], contention=0.2)
    assert same.makespan == base.makespan and same.compute_time_per_rank == base.compute_time_per_rank
    # Four buckets of 0.25 s, each ready a quarter into the last 2 s backward: three run beside it, the last after.
    plain = simulate(sch, costs, reduce_time=[1.0], reduce_buckets=[4])
    slowed = simulate(sch, costs, reduce_time=[1.0], reduce_buckets=[4], contention=0.2)
    assert slowed.compute_end == pytest.approx(plain.compute_end + 0.2 * 0.75)
    assert slowed.compute_time_per_rank[0] == pytest.approx(plain.compute_time_per_rank[0] + 0.2 * 0.75)
    assert slowed.makespan == plain.makespan  # the stream's last bucket still ends the step
    uncharged = simulate(sch, costs, reduce_time=[1.0], reduce_buckets=[4], contention=0.2, reduce_contending=[0.0])
    assert uncharged.compute_end == plain.compute_end
    # A gather bucketed into the first forward: its later buckets run beside it.
    gathered = simulate(sch, StageCosts.uniform(1, 4.0, 1.0, 0.0), allgather_time=[1.0], gather_buckets=[4],
                        contention=0.5)
    alone = simulate(sch, StageCosts.uniform(1, 4.0, 1.0, 0.0), allgather_time=[1.0], gather_buckets=[4])
    assert gathered.compute_end == pytest.approx(alone.compute_end + 0.5 * 0.75)


def test_contention_is_the_same_on_the_wave_and_in_order_paths(monkeypatch):
    """The charge reads the actions' spans, which both simulation paths give bit for bit; under pairs (a paired
    backward repeats its forward's span) the spans' union is counted once."""
    import random

    import autoconf.cost.simulate as simulate_module

    rng = random.Random(11)
    for name, pp, vpp, m in [("1f1b", 4, 1, 9), ("interleaved-1f1b", 4, 2, 8), ("dualpipev", 3, 2, 12)]:
        S = build_schedule(name, pp, m, vpp).num_stages
        costs = _random_paired_costs(rng, S) if name == "dualpipev" else StageCosts(
            [rng.random() for _ in range(S)], [rng.random() for _ in range(S)], [rng.random() for _ in range(S)])
        kw = _random_comm(rng, S)
        runs = []
        for wide_from in (10**9, 1):
            monkeypatch.setattr(simulate_module, "WAVES_FROM_RANKS", wide_from)
            sch = build_schedule(name, pp, m, vpp)
            runs.append((simulate(sch, costs, **kw), simulate(sch, costs, contention=0.3, **kw)))
        (a0, a1), (b0, b1) = runs
        assert a1.makespan == pytest.approx(b1.makespan, rel=1e-12)
        assert a1.compute_time_per_rank == pytest.approx(b1.compute_time_per_rank, rel=1e-12)
        assert all(x1 >= x0 for x0, x1 in zip(a0.compute_time_per_rank, a1.compute_time_per_rank))
        assert a1.makespan >= a0.makespan
        # At most the share of every comm second: the stream's total time bounds the charge.
        stream = [sum(end - start for _, _, start, end in ev) for ev in a0.comm_events]
        assert all(x1 - x0 <= 0.3 * t + 1e-9 for x0, x1, t in zip(a0.compute_time_per_rank,
                                                                   a1.compute_time_per_rank, stream))


def test_looped_bfs_gathers_each_stage_once_in_first_use_order():
    """Breadth-first: rank r gathers its v stages once each, back to back, in model order."""
    sch = build_schedule("looped-bfs", 2, 4, 3)
    tl = simulate(sch, StageCosts.uniform(6, 1, 1, 1), allgather_time=[1.0] * 6)
    assert [(k, s, a, b) for k, s, a, b in tl.comm_events[1]] == [
        ("allgather", 1, 0.0, 1.0), ("allgather", 3, 1.0, 2.0), ("allgather", 5, 2.0, 3.0)]


def test_timeline_accounts_for_every_action():
    """Events list every action once with end - start equal to its cost; busy time sums them."""
    sch = build_schedule("zbv", 2, 5, 2)
    costs = StageCosts([1, 2, 3, 4], [0.5, 0.5, 1, 1], [0.25, 0.25, 0.5, 0.5])
    tl = simulate(sch, costs)
    for r in range(2):
        assert [e[0] for e in tl.events[r]] == list(sch.actions[r])
        total = 0.0
        prev_end = 0.0
        for a, s, e in tl.events[r]:
            cost = {"F": costs.forward[a.stage], "I": costs.backward_input[a.stage],
                    "W": costs.backward_weight[a.stage],
                    "B": costs.backward_input[a.stage] + costs.backward_weight[a.stage]}[a.kind]
            assert e - s == pytest.approx(cost) and s >= prev_end - 1e-12
            prev_end = e
            total += cost
        assert tl.compute_time_per_rank[r] == pytest.approx(total)


@pytest.mark.parametrize("wide_from", [16, 1])  # one action at a time, and a wave at a time
def test_deadlocking_order_is_detected_with_rank_and_action(wide_from, monkeypatch):
    """A hand-made order where rank 0 runs B(0,0) before F(0,0) can never progress: AssertionError names it."""
    import autoconf.cost.simulate as simulate_module

    monkeypatch.setattr(simulate_module, "WAVES_FROM_RANKS", wide_from)
    acts = ((Action("B", 0, 0), Action("F", 0, 0)), (Action("F", 1, 0), Action("B", 1, 0)))
    sch = Schedule("handmade", 2, 1, 1, (0, 1), acts)
    with pytest.raises(AssertionError, match="rank 0 .*B stage 0 micro-batch 0"):
        simulate(sch, StageCosts.uniform(2, 1, 1, 1))


@pytest.mark.parametrize("name,pp,vpp,m", LEGAL)
def test_every_legal_schedule_runs_without_deadlock(name, pp, vpp, m):
    """Every configuration check_schedule accepts simulates to completion; the makespan is at least each rank's
    compute and the bubble fraction lies in [0, 1)."""
    tl = _run(name, pp, m, vpp, f=1.0, b=2.0, w=1.0)
    assert tl.makespan >= max(tl.compute_time_per_rank) - 1e-9
    assert 0.0 <= tl.bubble_fraction < 1.0


@pytest.mark.parametrize("name,pp,vpp,m", LEGAL)
def test_busy_per_rank_is_the_simulated_compute_of_every_rank(name, pp, vpp, m):
    """`busy_per_rank` (the step floor's compute, from any count's schedule) is what the simulation counts per rank,
    for every legal schedule with uneven stages, given per schedule stage or per model stage (two directions)."""
    sch = build_schedule(name, pp, m, vpp)
    stages = sch.chain if sch.directions > 1 else sch.num_stages
    costs = StageCosts([1 + 0.1 * s for s in range(stages)], [2 + 0.3 * (s % 3) for s in range(stages)],
                       [0.5 + 0.07 * s for s in range(stages)])
    other = build_schedule(name, pp, max(m, 2 * pp) if name != "dualpipe" else m, vpp)  # (dualpipe: m's own rules)
    assert busy_per_rank(other, costs, m) == pytest.approx(simulate(sch, costs).compute_time_per_rank, rel=1e-12)


@pytest.mark.parametrize("pp,m,k", [(2, 4, 2), (4, 8, 3), (4, 5, 2)])
@pytest.mark.parametrize("per_chunk", [False, True])
def test_busy_per_rank_counts_every_sequence_chunk(pp, m, k, per_chunk):
    """Under seq1f1b each micro-batch passes every stage as k chunks, costed per stage or per stage and chunk."""
    sch = build_schedule("seq1f1b", pp, m, seq_chunks=k)
    n = pp * (k if per_chunk else 1)
    costs = StageCosts([1 + 0.2 * i for i in range(n)], [2 + 0.1 * i for i in range(n)], [0.0] * n)
    assert busy_per_rank(build_schedule("seq1f1b", pp, 3 * pp, seq_chunks=k), costs, m) == pytest.approx(
        simulate(sch, costs).compute_time_per_rank, rel=1e-12)


@pytest.mark.parametrize("name,f,b,w,bubble", [("1f1b", 1.0, 2.0, 1.0, 15 * 4.0), ("gpipe", 1.0, 2.0, 1.0, 15 * 4.0),
                                               ("zb-h1", 1.0, 1.0, 1.0, 15 * 1.0)])
def test_simulate_16_ranks_512_microbatches_is_exact_and_runs_each_action_once(name, f, b, w, bubble):
    """At the scale the search scores (p=16, m=512) the simulation still gives the textbook makespan, m(F+B+W) plus
    the bubble (p-1)(F+B+W) for GPipe/1F1B and (p-1)(F+B-W) for ZB-H1 with F=B=W, and its work is one event per
    action of the schedule (2mp, or 3mp with split backward), each rank busy exactly m(F+B+W). (How fast it runs is
    scripts/bench_search.py's business, not a test's.)"""
    p, m = 16, 512
    sch = build_schedule(name, p, m)
    tl = simulate(sch, StageCosts.uniform(p, f, b, w))
    assert tl.makespan == pytest.approx(m * (f + b + w) + bubble, rel=1e-12)
    actions = sum(len(acts) for acts in sch.actions)
    assert actions == (3 if name == "zb-h1" else 2) * m * p
    assert sum(len(ev) for ev in tl.events) == actions
    assert [[a for a, _, _ in ev] for ev in tl.events] == [list(acts) for acts in sch.actions]
    assert tl.compute_time_per_rank == pytest.approx([m * (f + b + w)] * p, rel=1e-12)


def _random_comm(rng, stages: int) -> dict:
    """`simulate`'s communication arguments drawn at random for `stages` stages: one P2P delay per stage pair
    (fixed once drawn), gather and reduce times and bucket counts per stage."""
    delays = {}
    return dict(p2p_time=lambda a, b: delays.setdefault((a, b), rng.random() / 10),
                allgather_time=[rng.random() for _ in range(stages)], reduce_time=[rng.random() for _ in range(stages)],
                gather_buckets=[rng.randint(1, 3) for _ in range(stages)],
                reduce_buckets=[rng.randint(1, 3) for _ in range(stages)])


def test_wave_and_in_order_simulations_agree_to_the_last_bit(monkeypatch):
    """Wide pipelines are simulated a wave of independent actions at a time with numpy, narrow ones one action at a
    time: on random costs, P2P delays, FSDP gathers and buckets both give the same times bit for bit, and the same
    in-flight counts."""
    import random

    import autoconf.cost.simulate as simulate_module

    rng = random.Random(7)
    for name, pp, vpp, m in [("1f1b", 4, 1, 9), ("zb-h1", 3, 1, 12), ("interleaved-1f1b", 4, 2, 8),
                             ("looped-bfs", 3, 3, 5), ("zbv", 4, 2, 17), ("dualpipev", 3, 2, 12), ("gpipe", 2, 1, 5)]:
        sch = build_schedule(name, pp, m, vpp)
        S = sch.num_stages
        costs = StageCosts([rng.random() for _ in range(S)], [rng.random() for _ in range(S)],
                           [rng.random() for _ in range(S)])
        kw = _random_comm(rng, S)
        runs = []
        for wide_from in (10**9, 1):
            monkeypatch.setattr(simulate_module, "WAVES_FROM_RANKS", wide_from)
            fresh = build_schedule(name, pp, m, vpp)  # nothing remembered from the other path
            runs.append(simulate(fresh, costs, **kw))
        in_order, waves = runs
        assert waves.makespan == in_order.makespan
        assert waves.compute_time_per_rank == in_order.compute_time_per_rank
        assert list(waves.events) == list(in_order.events)
        assert waves.comm_events == in_order.comm_events
        assert (waves.peak_inflight, waves.peak_inflight_weight, waves.peak_inflight_rank,
                waves.peak_inflight_joint) == (in_order.peak_inflight, in_order.peak_inflight_weight,
                                               in_order.peak_inflight_rank, in_order.peak_inflight_joint)


# DualPipe's overlapped pairs: a forward and the full backward after it run together (schedule registry `pairs`).

def _random_paired_costs(rng, S: int, share: float = 0.15) -> StageCosts:
    f, b = [rng.uniform(1, 2) for _ in range(S)], [rng.uniform(1, 2) for _ in range(S)]
    return StageCosts(f, b, [rng.uniform(0.2, 1) for _ in range(S)], [x * rng.uniform(0, 0.9) for x in f],
                      [x * rng.uniform(0, 0.9) for x in b], share)


def test_paired_seconds_hide_each_pass_communication_behind_the_other_pass_compute():
    """A pair lasts max(Fm, Bc + f Fm) + max(Bm, Fc + f Bm): between its compute alone and F + B; with each one's
    communication within the other's compute and no SM share it is the compute alone; an SM share slows the compute
    that runs beside the communication."""
    from autoconf.cost.simulate import paired_seconds

    assert paired_seconds(3.0, 1.0, 5.0, 2.0, 0.0) == 2.0 + 3.0  # fully hidden: Fc + Bc
    assert paired_seconds(3.0, 2.5, 2.0, 1.5, 0.0) == 2.5 + 1.5  # communication-bound: Fm + Bm
    assert paired_seconds(3.0, 1.0, 5.0, 2.0, 0.2) == pytest.approx(3.0 + 0.2 + 2.0 + 0.4)
    assert paired_seconds(3.0, 0.0, 5.0, 0.0, 0.2) == 8.0  # nothing to hide: F then B
    # asymmetric: the forward's 2.5 s exchange beside the backward's 4 s compute, the forward's 0.5 s compute beside no
    # exchange: 4 + 0.5 (the exchange behind its own pass's compute would read 2.5 + 4)
    assert paired_seconds(3.0, 2.5, 4.0, 0.0, 0.0) == pytest.approx(4.5)
    import random

    rng = random.Random(3)
    for _ in range(200):
        f, b, share = rng.uniform(0.1, 3), rng.uniform(0.1, 3), rng.uniform(0, 0.5)
        fm, bm = f * rng.random(), b * rng.random()
        pair = paired_seconds(f, fm, b, bm, share)
        assert f + b - fm - bm - 1e-12 <= pair <= f + b + 1e-12


def test_a_pair_starts_with_both_inputs_and_its_forward_and_backward_end_together():
    """In the simulation each paired F and B share one start, no earlier than either input's arrival, and one end,
    the pair's seconds later; the rank's busy time counts the pair once; the seconds saved are F + B - pair."""
    import random

    from autoconf.cost.simulate import paired_seconds

    rng = random.Random(11)
    sch = build_schedule("dualpipev", 4, 10, 2)
    costs = _random_paired_costs(rng, sch.num_stages)
    tl = simulate(sch, costs, 0.05)
    end = {(a.kind if a.kind != "I" else "B", a.stage, a.microbatch): e for ev in tl.events for a, _, e in ev}
    last = sch.num_stages - 1
    for r, js in enumerate(sch.paired):
        saved = 0.0
        for j in js:
            (fa, fs, fe), (ba, bs, be) = tl.events[r][j], tl.events[r][j + 1]
            full = costs.backward_input[ba.stage] + costs.backward_weight[ba.stage]
            pair = paired_seconds(costs.forward[fa.stage], costs.forward_comm[fa.stage], full,
                                  costs.backward_comm[ba.stage], costs.comm_sm_share)
            assert (fs, fe) == (bs, be) and fe == pytest.approx(fs + pair)
            assert fa.stage == 0 or fs >= end["F", fa.stage - 1, fa.microbatch]
            assert fs >= end["F" if ba.stage == last else "B", min(ba.stage + 1, last), ba.microbatch]
            saved += costs.forward[fa.stage] + full - pair
        assert tl.overlap_saved_per_rank[r] == pytest.approx(saved)
        assert tl.compute_time_per_rank[r] == pytest.approx(sum(e - s for _, s, e in tl.events[r]) - sum(
            tl.events[r][j + 1][2] - tl.events[r][j + 1][1] for j in js))
    # Without stated communication nothing pairs: the order runs as torch's runtime runs it, F then B.
    plain = simulate(sch, StageCosts(costs.forward, costs.backward_input, costs.backward_weight), 0.05)
    assert not plain.overlap_saved_per_rank
    assert all(e1 <= s2 for ev in plain.events for (_, _, e1), (_, s2, _) in zip(ev, ev[1:]))


def test_paired_wave_and_in_order_simulations_agree_to_the_last_bit(monkeypatch):
    """With overlapped pairs, FSDP gathers and buckets, the wave-at-a-time and one-at-a-time simulations give the
    same times bit for bit."""
    import random

    import autoconf.cost.simulate as simulate_module

    rng = random.Random(5)
    for pp, m in [(3, 12), (4, 11), (16, 33)]:
        S = 2 * pp
        costs = _random_paired_costs(rng, S)
        kw = _random_comm(rng, S)
        runs = []
        for wide_from in (10**9, 1):
            monkeypatch.setattr(simulate_module, "WAVES_FROM_RANKS", wide_from)
            runs.append(simulate(build_schedule("dualpipev", pp, m, 2), costs, **kw))
        in_order, waves = runs
        assert waves.makespan == in_order.makespan
        assert waves.compute_time_per_rank == in_order.compute_time_per_rank
        assert list(waves.events) == list(in_order.events)
        assert waves.comm_events == in_order.comm_events
        assert waves.overlap_saved_per_rank == in_order.overlap_saved_per_rank


def test_megatron_combined_1f1b_pairs_every_steady_step_of_interleaved_1f1b():
    """interleaved-1f1b with its pairs overlapped is Megatron-Core's combined 1F1B: each rank runs one more warmup
    forward than the plain order and then pairs every steady forward with the backward after it, whose own forward
    ran before the pair (the two are independent); the plain build states no pairs. Simulated with stated
    communication, every pair shares one start and end and the step is no longer than F then B would give."""
    import random

    rng = random.Random(7)
    for pp, vpp, m in [(2, 2, 4), (4, 2, 8), (4, 3, 12), (3, 4, 6)]:
        plain, paired = build_schedule("interleaved-1f1b", pp, m, vpp), build_schedule(
            "interleaved-1f1b", pp, m, vpp, overlap=True)
        assert plain.paired == ()
        for r in range(pp):
            acts, plain_acts = paired.actions[r], plain.actions[r]
            # the forwards before the first backward: the warmup, then the first steady step's
            warm, plain_warm = (next(j for j, a in enumerate(x) if a.kind == "B") - 1 for x in (acts, plain_acts))
            assert warm == plain_warm + 1 and paired.paired[r][0] == warm
            assert len(paired.paired[r]) == m * vpp - warm
            for j in paired.paired[r]:
                f, b = acts[j], acts[j + 1]
                assert (f.kind, b.kind) == ("F", "B")
                assert acts.index(Action("F", b.stage, b.microbatch)) < j
        costs = _random_paired_costs(rng, paired.num_stages)
        tl = simulate(paired, costs, 0.05)
        for r, js in enumerate(paired.paired):
            for j in js:
                assert tl.events[r][j][1:] == tl.events[r][j + 1][1:]
        unpaired = simulate(paired, StageCosts(costs.forward, costs.backward_input, costs.backward_weight), 0.05)
        assert tl.makespan <= unpaired.makespan + 1e-9
        assert all(s > 0 for s in tl.overlap_saved_per_rank)
    # Without a pipeline: the first forward alone, each next one with the previous backward, the last backward alone.
    flat = build_schedule("1f1b", 1, 4, overlap=True)
    assert str(flat) == "rank 0: 0F0 0F1 0B0 0F2 0B1 0F3 0B2 0B3" and flat.paired == ((1, 3, 5),)
    assert build_schedule("1f1b", 2, 4, overlap=True).paired == ((), ())
