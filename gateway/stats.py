"""Per model-version request statistics as far as the gateway sees them (success, failure, durations).

Queue and compute durations live in the batcher and workers; they join these in a later issue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["ModelStats", "StatsBook"]


@dataclass(slots=True)
class ModelStats:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    inference_count: int = 0
    last_inference_ms: int = 0


class StatsBook:
    def __init__(self) -> None:
        self._stats: dict[tuple[str, int], ModelStats] = {}

    def get(self, model: str, version: int) -> ModelStats:
        return self._stats.setdefault((model, version), ModelStats())

    def record(self, model: str, version: int, ok: bool, duration_ns: int, rows: int) -> None:
        stats = self.get(model, version)
        if ok:
            stats.success_count += 1
            stats.success_ns += duration_ns
            stats.inference_count += max(1, rows)
        else:
            stats.fail_count += 1
            stats.fail_ns += duration_ns
        stats.last_inference_ms = time.time_ns() // 1_000_000
