"""The few statistics the federated report needs (stand-in until ``aecomp.compress.protocol`` lands).

``mean_spread(xs)``
    ``(mean, sample standard deviation)``; the deviation is 0 for a single value.
``paired_interval(a, b, level)``
    the mean of the paired differences ``d_r = a_r - b_r`` over repeats ``r`` (the same test
    images within a repeat: a different split each repeat) with a two-sided Student-t interval
    ``mean(d) +- t_{(1+level)/2, n-1} * sd(d) / sqrt(n)``; with one repeat the interval is unknown
    (``None``), never a made-up width.
``choose_on_validation(rows, ...)``
    the row with the fewest bytes among those whose mean *validation* gap to the reference is
    within the tolerance (``within_tolerance: True``); when none is, the row with the best mean
    validation accuracy (``within_tolerance: False``, and the report says so). Rows may carry
    test accuracy; it is never read here.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["choose_on_validation", "mean_spread", "paired_interval"]

# two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30 (scipy.stats.t.ppf(0.975, df))
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def mean_spread(xs: Sequence[float]) -> Tuple[float, float]:
    xs = [float(x) for x in xs]
    if not xs:
        raise ValueError("mean_spread: no values")
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def paired_interval(a: Sequence[float], b: Sequence[float]) -> Dict[str, Any]:
    """95% interval of ``mean(a - b)`` over paired repeats (module docstring)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_interval: {len(a)} and {len(b)} values; need the same positive number")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    m, sd = mean_spread(d)
    n = len(d)
    if n < 2:
        return {"mean": m, "low": None, "high": None, "n": n, "level": 0.95}
    t = _T975[min(n - 1, len(_T975)) - 1] if n - 1 <= len(_T975) else 1.96
    half = t * sd / math.sqrt(n)
    return {"mean": m, "low": m - half, "high": m + half, "n": n, "level": 0.95}


def choose_on_validation(rows: List[Dict[str, Any]], reference_val: Sequence[float], tolerance: float,
                         ) -> Optional[Dict[str, Any]]:
    """The row with the fewest ``bytes_per_round`` whose mean of ``val_accuracy - reference_val``
    (paired by repeat) is at least ``-tolerance`` points, else the best on validation (module
    docstring); None for no rows. The chosen row gets ``val_gap`` and ``within_tolerance``."""
    scored = []
    for i, row in enumerate(rows):
        gap = paired_interval(row["val_accuracy"], reference_val)["mean"]
        scored.append((gap >= -tolerance, gap, i, row))
    ok = [(row["bytes_per_round"], -gap, i, row) for within, gap, i, row in scored if within]
    if ok:
        best = min(ok)
    else:
        best = min(((-gap, row["bytes_per_round"], i, row) for _, gap, i, row in scored), default=None)
    if best is None:
        return None
    row = dict(best[3])
    row["val_gap"] = next(g for _, g, i, _ in scored if i == best[2])
    row["within_tolerance"] = bool(ok)
    return row
