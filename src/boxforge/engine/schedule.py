"""Learning-rate schedule as a function of run progress in [0, 1].

Progress is iterations done / planned iterations, or elapsed / budget for
`--time` runs, so a time-budgeted run warms up, decays and reaches its floor at
the deadline whatever the machine's speed (as Ultralytics' `time=`).
"""

from __future__ import annotations

import math
from bisect import bisect_right


def lr_factor(progress: float, *, schedule: str, warmup: float, milestones: list[float] | None = None,
              gamma: float = 0.1, floor: float = 0.01) -> float:
    """Multiplier of the peak learning rate at `progress` (0 = start, 1 = end of the run)."""
    p = min(max(progress, 0.0), 1.0)
    warm = 1.0
    if warmup > 0 and p < warmup:
        warm = 0.001 + (1 - 0.001) * p / warmup
    if schedule == "constant":
        return warm
    if schedule == "multistep":
        return warm * gamma ** bisect_right(sorted(milestones or []), p)
    after = 0.0 if p < warmup else (p - warmup) / max(1e-12, 1 - warmup)
    return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * after)))
