"""The one interpolation rule of the cost model: piecewise-linear in x through measured points, with a named rule at
the edges.

Between two neighbouring points (after a stable sort by x) the value is y0 + w * (y1 - y0) with
w = (x - x0) / (x1 - x0). Beyond the measured range, `edges` says what happens:

- `"extrapolate"` (default; measured times): the line through the two points at that end is continued, and every result
  is clipped at zero (a time is never negative). With a single point, the line through the origin and that point
  (a time proportional to the size).
- `"clamp"` (measured ratios such as chain scales): the value of the nearest end point is held; with a single point,
  its value. No clipping (the result lies between the measured values).

x is read on the first segment whose right end is at or beyond it (the last segment beyond the range). Points with
equal x (a table that mixes sequence lengths at equal tokens) keep their given order; the zero-width segment between
them reads its left point (w = 0). Values may be numbers or equal-length tuples of numbers (each component
interpolated with the same w).
"""

from __future__ import annotations

from collections.abc import Sequence

EXTRAPOLATE = "extrapolate"
CLAMP = "clamp"
EDGES = (EXTRAPOLATE, CLAMP)


def interpolate_many(points: Sequence[tuple[float, Sequence[float]]], x: float,
                     edges: str = EXTRAPOLATE) -> tuple[float, ...]:
    """Each component of the y-vectors of `points` ((x, (y_1, ..., y_k)) pairs) read at `x` under the rule `edges`
    (see the module's docstring)."""
    if edges not in EDGES:
        raise ValueError(f"edges must be one of {', '.join(EDGES)}, got {edges!r}")
    if not points:
        raise ValueError("nothing to interpolate: no points")
    points = sorted(points, key=lambda p: p[0])
    if len(points) == 1:
        x0, y0 = points[0]
        return tuple(v * (x / x0) for v in y0) if edges == EXTRAPOLATE else tuple(y0)
    if edges == CLAMP:
        if x <= points[0][0]:
            return tuple(points[0][1])
        if x >= points[-1][0]:
            return tuple(points[-1][1])
    last = len(points) - 2
    for i, ((x0, y0), (x1, y1)) in enumerate(zip(points, points[1:])):
        if x <= x1 or i == last:
            w = (x - x0) / (x1 - x0) if x1 != x0 else 0.0
            values = (a + w * (b - a) for a, b in zip(y0, y1))
            return tuple(max(0.0, v) for v in values) if edges == EXTRAPOLATE else tuple(values)
    raise AssertionError("unreachable")


def interpolate(points: Sequence[tuple[float, float]], x: float, edges: str = EXTRAPOLATE) -> float:
    """The value at `x` of the piecewise-linear function through `points` ((x, y) pairs, any order) under the rule
    `edges` (see the module's docstring)."""
    return interpolate_many([(px, (py,)) for px, py in points], x, edges)[0]
