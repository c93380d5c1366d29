"""Our per-rank action lists equal the compute order torch.distributed.pipelining runs (CPU, no process group).

Multi-stage schedules compute the order of every rank in their constructor (`pipeline_order`), so one schedule
object built on light fake stages gives all ranks. The single-stage ones (GPipe, 1F1B) run their order inside
`_step_microbatches`; we run that real code with a recording fake stage and no-op p2p.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch.distributed.pipelining import schedules as TS  # noqa: E402

from autoconf.spec.schedules import build_schedule, schedule_spec, stage_to_rank  # noqa: E402


class FakeStage:
    """The attributes the schedule constructors read, and recording compute methods for `_step_microbatches`."""

    def __init__(self, stage_index: int, num_stages: int, pp: int, rank: int):
        self.stage_index = stage_index
        self.num_stages = num_stages
        self.group_size = pp
        self.group_rank = rank
        self.submod = torch.nn.Linear(1, 1)
        self.is_first = stage_index == 0
        self.is_last = stage_index == num_stages - 1
        self.stage_index_to_group_rank: dict[int, int] = {}
        self.has_backward = True
        self.output_chunks: list = []
        self.log: list[str] = []

    def clear_runtime_states(self):
        pass

    def get_fwd_recv_ops(self, i):
        return []

    get_fwd_send_ops = get_bwd_recv_ops = get_bwd_send_ops = get_fwd_recv_ops

    def forward_one_chunk(self, i, *args, **kwargs):
        self.log.append(f"{self.stage_index}F{i}")

    def backward_one_chunk(self, i, **kwargs):
        self.log.append(f"{self.stage_index}B{i}")

    def perform_reduce_grad(self, *args):
        pass


def _ours(name: str, pp: int, m: int, vpp: int) -> dict[int, list[str]]:
    sch = build_schedule(name, pp, m, vpp)
    return {r: [str(a) for a in acts] for r, acts in enumerate(sch.actions)}


def _compute_only(actions) -> list[str]:
    """F/B/I/W actions as strings ("3F0"); OVERLAP_F_B expanded into its sub-actions in run order."""
    out = []
    for a in actions:
        if a is None:
            continue
        if a.computation_type == TS.OVERLAP_F_B:
            out += [str(s) for s in a.sub_actions]
        elif a.computation_type in (TS.F, TS.B, TS.I, TS.W):
            out.append(str(a))
    return out


def _torch_multi(name: str, pp: int, m: int, vpp: int):
    cls = TS.get_schedule_class(schedule_spec(name).torch_class)
    s2r = stage_to_rank(name, pp, vpp)
    stages = [FakeStage(s, pp * vpp, pp, 0) for s in range(pp * vpp) if s2r[s] == 0]
    return cls(stages, m)


def _torch_single_run(name: str, pp: int, m: int) -> dict[int, list[str]]:
    cls = TS.get_schedule_class(schedule_spec(name).torch_class)
    orders = {}
    for rank in range(pp):
        stage = FakeStage(rank, pp, pp, rank)
        sch = cls(stage, m)
        sch._check_inputs = lambda a, k, t, l: ([()] * m, [{}] * m)
        sch._initialize_stage = lambda *a, **k: None
        sch._step_microbatches(None, None, None, None)
        orders[rank] = stage.log
    return orders


@pytest.fixture
def no_p2p(monkeypatch):
    monkeypatch.setattr(TS, "_batch_p2p", lambda ops, desc=None: [])
    monkeypatch.setattr(TS, "_sorted_batch_p2p", lambda ops, desc=None: {})
    monkeypatch.setattr(TS, "_wait_batch_p2p", lambda work: None)


SINGLE = [(pp, m) for pp in (2, 4) for m in (4, 5, 8)]


@pytest.mark.parametrize("pp,m", SINGLE)
@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_single_stage_order_equals_torch_runtime(no_p2p, name, pp, m):
    """gpipe/1f1b: each rank's F/B sequence equals what torch's `_step_microbatches` actually runs."""
    assert _ours(name, pp, m, 1) == _torch_single_run(name, pp, m)


@pytest.mark.parametrize("pp,m", SINGLE)
def test_gpipe_order_equals_torch_pipeline_order(pp, m):
    """gpipe: equal to ScheduleGPipe.pipeline_order (its IR) on every rank."""
    sch = TS.ScheduleGPipe(FakeStage(0, pp, pp, 0), m)
    assert _ours("gpipe", pp, m, 1) == {r: _compute_only(a) for r, a in sch.pipeline_order.items()}


@pytest.mark.parametrize("pp,m", SINGLE)
def test_1f1b_order_equals_torch_pipeline_order_except_its_last_rank_labels(pp, m):
    """1f1b: equal to Schedule1F1B.pipeline_order on ranks 0..pp-2. On the last rank torch 2.13's IR numbers the
    forwards 1..m (not 0..m-1) while `_step_microbatches` runs 0..m-1; we follow the runtime and accept either."""
    sch = TS.Schedule1F1B(FakeStage(0, pp, pp, 0), m)
    ours = _ours("1f1b", pp, m, 1)
    theirs = {r: _compute_only(a) for r, a in sch.pipeline_order.items()}
    for r in range(pp - 1):
        assert ours[r] == theirs[r]
    last = pp - 1
    shifted = [f"{last}F{int(a.split('F')[1]) + 1}" if "F" in a else a for a in ours[last]]
    assert theirs[last] in (ours[last], shifted)


MULTI = [
    ("interleaved-1f1b", pp, m, v)
    for pp in (2, 4)
    for m in (2, 3, 4, 5, 6, 8, 12)
    for v in (2, 3)
    if m % max(1, m // pp) == 0
] + [
    ("looped-bfs", pp, m, v) for pp in (2, 4) for m in (1, 3, 4, 8) for v in (1, 2, 3)
] + [
    ("zb-h1", pp, m, v)
    for pp in (2, 4)
    for m in (2, 3, 4, 5, 6, 8, 12)
    for v in (1, 2, 3)
    if m % max(1, m // pp) == 0
] + [
    ("zbv", pp, m, 2) for pp in (2, 4) for m in (1, 2, 3, 4, 5, 7, 8, 13)
] + [
    ("dualpipev", pp, m, 2) for pp in (2, 4) for m in (2 * pp, 2 * pp + 1, 3 * pp, 16)
]


@pytest.mark.parametrize("name,pp,m,vpp", MULTI)
def test_multi_stage_order_equals_torch_pipeline_order(name, pp, m, vpp):
    """Multi-stage schedules: each rank's F/B/I/W sequence equals torch's `pipeline_order` (Nones dropped,
    DualPipeV's OVERLAP_F_B split into its F then B), and equals the compute actions of the lowered
    `pipeline_order_with_comms` the runtime executes."""
    sch = _torch_multi(name, pp, m, vpp)
    ours = _ours(name, pp, m, vpp)
    assert ours == {r: _compute_only(a) for r, a in sch.pipeline_order.items()}
    assert ours == {r: _compute_only(a) for r, a in sch.pipeline_order_with_comms.items()}


@pytest.mark.parametrize("name,vpp", [("zbv", 2), ("dualpipev", 2), ("interleaved-1f1b", 2), ("looped-bfs", 3)])
def test_stage_to_rank_equals_torch_mapping(name, vpp):
    """Our stage placement equals the schedule's `stage_index_to_group_rank` (V for zbv/dualpipev, loop otherwise)."""
    pp = 4
    sch = _torch_multi(name, pp, 8, vpp)
    assert stage_to_rank(name, pp, vpp) == tuple(sch.stage_index_to_group_rank[s] for s in range(pp * vpp))


def test_torch_rejects_what_the_spec_says_torch_rejects():
    """Where torch's constructors raise (1f1b m < pp, dualpipev m < 2pp, interleaved m % rounds, zbv vpp != 2), the
    spec's rule for a torch runtime says so too (`ScheduleSpec.problem`), and build_schedule raises ValueError but
    for 1F1B with fewer micro-batches than stages, whose order other runtimes run (Megatron-LM, nanotron)."""
    cases = [
        ("1f1b", 4, 3, 1, lambda: TS.Schedule1F1B(FakeStage(0, 4, 4, 0), 3)),
        ("dualpipev", 4, 7, 2, lambda: _torch_multi("dualpipev", 4, 7, 2)),
        ("interleaved-1f1b", 4, 11, 2, lambda: _torch_multi("interleaved-1f1b", 4, 11, 2)),
        ("zb-h1", 4, 9, 1, lambda: _torch_multi("zb-h1", 4, 9, 1)),
        ("zbv", 4, 8, 3, lambda: TS.ScheduleZBVZeroBubble([FakeStage(s, 12, 4, 0) for s in (0, 4, 8)], 8)),
    ]
    for name, pp, m, vpp, make in cases:
        with pytest.raises((ValueError, RuntimeError)):
            make()
        assert schedule_spec(name).problem(pp, vpp, m), name
        if name == "1f1b":
            build_schedule(name, pp, m, vpp)
            continue
        with pytest.raises(ValueError):
            build_schedule(name, pp, m, vpp)


@pytest.mark.parametrize("pp,m", [(2, 4), (2, 7), (4, 8), (4, 13)])
def test_dualpipev_pairs_are_torchs_overlap_f_b_actions(pp, m):
    """The registry's pairs of dualpipev (`ScheduleSpec.pairs`, which the simulation may overlap) are exactly the
    forwards torch's ScheduleDualPipeV puts in an OVERLAP_F_B action with the backward after them, at their positions
    in the rank's compute order; schedules without pairs have none."""
    sch = _torch_multi("dualpipev", pp, m, 2)
    ours = build_schedule("dualpipev", pp, m, 2)
    for rank, actions in sch.pipeline_order.items():
        pos, theirs = 0, []
        for action in actions:
            if action is None:
                continue
            if action.computation_type == TS.OVERLAP_F_B:
                theirs.append(pos)
                pos += len(action.sub_actions)
            elif action.computation_type in (TS.F, TS.B, TS.I, TS.W):
                pos += 1
        assert ours.paired[rank] == tuple(theirs)
    assert not build_schedule("zbv", 4, 8, 2).paired and not build_schedule("1f1b", 4, 8).paired
