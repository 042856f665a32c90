"""When to send each request at a fixed rate: evenly spaced (constant) or a Poisson process.

Pure and seeded, so a run can be repeated and the unit tests can check the statistics.
"""

from __future__ import annotations

import random
from typing import Literal

__all__ = ["Distribution", "send_offsets"]

Distribution = Literal["constant", "poisson"]


def send_offsets(
    rate_per_s: float,
    distribution: Distribution,
    *,
    duration_s: float | None = None,
    count: int | None = None,
    seed: int = 0,
) -> list[float]:
    """Seconds after the start at which to send, for ``count`` requests or those that fall before
    ``duration_s`` (exactly one of them).  Constant: ``i / rate``.  Poisson: exponential gaps of mean
    ``1 / rate`` (perf_analyzer's ``--request-distribution poisson``)."""
    if rate_per_s <= 0:
        raise ValueError(f"rate must be above 0, got {rate_per_s}")
    if (duration_s is None) == (count is None):
        raise ValueError("give exactly one of duration_s and count")
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if duration_s is not None and duration_s < 0:
        raise ValueError(f"duration must be >= 0, got {duration_s}")
    rng = random.Random(seed)
    offsets: list[float] = []
    t = 0.0
    limit = count if count is not None else int(rate_per_s * float(duration_s or 0.0) * 4 + 1000)
    while len(offsets) < limit:  # bounded: at most `limit` entries
        if distribution == "constant":
            t = len(offsets) / rate_per_s
        elif offsets:
            t += rng.expovariate(rate_per_s)
        else:
            t = rng.expovariate(rate_per_s)
        if duration_s is not None and t >= duration_s:
            break
        offsets.append(t)
    return offsets
