"""Agreement between predicted and measured step times: relative error, Spearman rank correlation, regret.

Pure numpy (no scipy): Spearman is the Pearson correlation of the average ranks, so ties share their mean rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rank_average(values: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values get the mean of the ranks they span."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho of two equally long samples; None with fewer than 2 points or a constant sample."""
    if len(a) != len(b):
        raise ValueError(f"spearman needs samples of equal length (got {len(a)} and {len(b)})")
    if len(a) < 2:
        return None
    ra, rb = rank_average(a), rank_average(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    if denom == 0.0:
        return None
    return float((ra * rb).sum() / denom)


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> np.ndarray:
    """(predicted - measured) / measured, per run."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return (p - m) / m


def median_abs_error(predicted: Sequence[float], measured: Sequence[float]) -> float | None:
    """Median over runs of |predicted - measured| / measured (a fraction: 0.05 is 5%)."""
    if len(predicted) == 0:
        return None
    return float(np.median(np.abs(relative_errors(predicted, measured))))


def regret(measured: Sequence[float], chosen: int) -> float | None:
    """(measured time of the chosen run - best measured time) / best measured time; None if the chosen run has no
    measurement."""
    if chosen is None or not 0 <= chosen < len(measured) or measured[chosen] is None:
        return None
    values = [m for m in measured if m is not None]
    best = min(values)
    return float((measured[chosen] - best) / best)
