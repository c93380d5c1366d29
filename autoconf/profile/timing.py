"""Small timing helpers shared by the profilers: statistics, device sync, and a stopwatch that uses CUDA events on GPU.

On CPU a time is `time.perf_counter()` around the work. On GPU it is a pair of CUDA events recorded on the current
stream around the work and read after a synchronize, so host-side launch overhead that overlaps GPU work is not
counted. `work_time` is for compute kernels: on CPU it reads the calling thread's CPU time instead of the wall clock,
so a kernel's time does not depend on whether the scheduler preempted it (ranks sharing cores, a CPU quota's
throttling); the cost model turns it back into wall time with the measured share of a core.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between the closest ranks."""
    assert values, "percentile of nothing"
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through the points."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of `fn` takes on `device` (the device is idle before and after)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def work_time(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of device work one call of `fn` takes: CUDA event time on GPU, this thread's CPU time on CPU (the
    profiled ranks compute with one thread, so that is all of the call's work, at full core speed)."""
    if device.type == "cuda":
        return time_once(fn, device)
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def work_times(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """`warmup` untimed calls, then the `work_time` of each of `repeats` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    return [work_time(fn, device) for _ in range(repeats)]


def time_repeated(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
                  min_time_s: float = 0.0, max_repeats: int = 1000) -> list[float]:
    """`warmup` untimed calls, then the times of at least `repeats` calls, continuing until `min_time_s` of timed
    calls have passed (at most `max_repeats`): on a noisy shared host the median needs many samples."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_time_s and len(times) < max_repeats):
        times.append(time_once(fn, device))
    return times

