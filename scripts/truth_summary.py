"""The error summary the truth scripts share: mean and max of |error| in percent, and the line that prints them.

Imported by the scripts beside it: `python scripts/truth_*.py` puts scripts/ first on the import path, and so does
`tests/plan_helpers.script_module`, which loads them in tests.
"""

from __future__ import annotations

from typing import Iterable


def error_stats(errors: Iterable[float], scale: float = 100.0) -> tuple[float, float, int]:
    """(mean |error|, max |error|, count) of `errors`, each times `scale` (100 turns fractions into percent),
    rounded to 2 decimals; (0, 0, 0) for none."""
    values = [abs(e) for e in errors]
    if not values:
        return 0.0, 0.0, 0
    return round(scale * sum(values) / len(values), 2), round(scale * max(values), 2), len(values)


def error_line(mean: float, largest: float, count: int, of: str = "rows") -> str:
    """'mean |error| 1.23%, max 4.56% over 7 rows': the phrase every truth script prints after its table."""
    return f"mean |error| {mean:.2f}%, max {largest:.2f}% over {count} {of}"
