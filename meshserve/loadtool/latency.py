"""Percentiles and the per-level summary of client-side latencies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PERCENTILES", "LatencySummary", "percentile", "summarize"]

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (the smallest value with at least ``pct``% of
    the values at or below it), as perf_analyzer reports them: always a latency that was observed."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 < pct <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {pct}")
    rank = math.ceil(pct / 100.0 * len(sorted_values))
    return float(sorted_values[max(rank, 1) - 1])


@dataclass(frozen=True)
class LatencySummary:
    """Microseconds (perf_analyzer's unit), over ``count`` values."""

    count: int
    avg_us: float
    min_us: float
    max_us: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(values_ns: Sequence[int]) -> LatencySummary | None:
    """None when there is nothing to summarize (every request failed)."""
    if not values_ns:
        return None
    ordered = sorted(values_ns)
    us = [v / 1000.0 for v in ordered]
    p = {pct: percentile(us, pct) for pct in PERCENTILES}
    return LatencySummary(
        count=len(us),
        avg_us=sum(us) / len(us),
        min_us=us[0],
        max_us=us[-1],
        p50_us=p[50],
        p90_us=p[90],
        p95_us=p[95],
        p99_us=p[99],
    )
