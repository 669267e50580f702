"""Effective capacity (FAST'25's definition): the largest arrival-rate scale at which at least
``target`` of the requests meet both the TTFT and the TBT SLO; rejected requests meet neither.

Found by doubling from ``start`` until attainment falls below the target, then bisecting (in log
space) between the last scale that met it and the first that did not.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def effective_capacity(
    attainment_at: Callable[[float], float], *, target: float = 0.9, start: float = 1.0,
    steps: int = 6, max_scale: float = 1024.0,
) -> tuple[float, list[tuple[float, float]]]:  # fmt: skip
    """``(scale, [(scale, attainment), ...])``; 0 if even ``start / 2**4`` misses the target."""
    tried: list[tuple[float, float]] = []

    def meets(scale: float) -> bool:
        attained = attainment_at(scale)
        tried.append((scale, attained))
        return attained >= target

    lo, hi = 0.0, start
    while meets(hi):
        lo, hi = hi, hi * 2
        if hi > max_scale:
            return lo, tried
    if lo == 0.0:  # even the start misses: look below it
        for _ in range(4):
            hi /= 2
            if meets(hi):
                lo, hi = hi, hi * 2
                break
        else:
            return 0.0, tried
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if meets(mid):
            lo = mid
        else:
            hi = mid
    return lo, tried
