"""validate/select.py's novelty: every degree of a layout counts, before its pipeline shape and its levers."""
from autoconf.spec.plan import ParallelConfig
from autoconf.validate.select import features, novelty


def _seen(*configs):
    seen = {"schedule": {"none"}, "cp_comm": {"none"}}
    for c in configs:
        for name, value in features(c).items():
            seen.setdefault(name, set()).add(value)
    return seen


def _config(**kw):
    base = dict(tp=1, pp=1, dp=4, micro_batch_size=1, global_batch_size=16, seq_len=4096, dtype="bf16")
    return ParallelConfig(**{**base, **kw})


def _most_novel(candidates, seen):
    return max(candidates, key=lambda c: novelty(c, seen))


def test_a_cp_new_layout_is_preferred_to_a_repeat_of_the_degrees():
    """Seen: tp1 pp1 dp4. A layout that only moves ranks from dp to cp (dp2 cp2) outranks one that repeats the
    degrees with many levers new (micro-batch, ZeRO, recompute, gradient reduction, offload)."""
    seen = _seen(_config())
    repeat = _config(micro_batch_size=2, zero_stage=3, recompute="full", grad_reduce="microbatch",
                     offload_optimizer=True)
    cp_new = _config(dp=2, cp=2)
    assert novelty(cp_new, seen)[0] == 1 and novelty(repeat, seen)[0] == 0
    assert _most_novel([repeat, cp_new], seen) == cp_new


def test_an_ep_new_layout_is_preferred_to_a_repeat_and_to_a_new_pipeline_shape():
    """Seen: tp1 pp2 dp2 ep1 under 1F1B. An ep2 layout (same tp, pp, dp) outranks the same degrees under a new
    schedule with vpp 2, and a layout whose degrees are all values seen before but in a new combination ranks below
    one that brings a degree value never seen (etp 2)."""
    seen = _seen(_config(pp=2, dp=2))
    ep_new = _config(pp=2, dp=2, ep=2)
    new_shape = _config(pp=2, dp=2, vpp=2, schedule="interleaved-1f1b")
    assert _most_novel([new_shape, ep_new], seen) == ep_new
    seen = _seen(_config(pp=2, dp=2), _config(pp=1, dp=4, ep=2))
    recombined = _config(pp=1, dp=4, ep=1, tp=1)  # tp1 pp1 dp4 ep1: every value seen, a new combination
    etp_new = _config(pp=2, dp=2, etp=2)
    assert novelty(recombined, seen)[:2] == (1, 0) and novelty(etp_new, seen)[:2] == (1, 1)
    assert _most_novel([recombined, etp_new], seen) == etp_new


def test_the_cp_algorithm_and_the_schedule_are_moot_without_cp_and_without_a_pipeline():
    """Without CP the CP algorithm never counts as new, without a pipeline the schedule never does."""
    seen = _seen(_config())
    assert novelty(_config(cp_comm="allgather", schedule="gpipe"), seen) == (0, 0, 0, 0)
    assert novelty(_config(dp=2, cp=2, cp_comm="allgather"), seen)[3] > 0
