"""The statistics API's counters for one model version, and their change over a measurement.

Both protocols answer Triton's ``ModelStatistics`` layout: HTTP as JSON numbers, gRPC (through
tritonclient's ``as_json=True``) as protobuf JSON, where 64-bit counters are strings and zero fields are
left out.  ``snapshot`` reads either; ``breakdown`` subtracts two snapshots into averages per request,
as perf_analyzer prints "Server: ... queue ... compute input/infer/output".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["STAT_FIELDS", "ServerBreakdown", "StatsSnapshot", "breakdown", "snapshot"]

STAT_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class StatsSnapshot:
    """Cumulative counters: ``counts[field]`` and ``ns[field]`` for each of STAT_FIELDS."""

    inference_count: int
    execution_count: int
    counts: dict[str, int]
    ns: dict[str, int]


@dataclass(frozen=True)
class ServerBreakdown:
    """What the server did during one measurement, averages in microseconds per successful request."""

    success_count: int
    fail_count: int
    inference_count: int
    execution_count: int
    avg_queue_us: float
    avg_compute_input_us: float
    avg_compute_infer_us: float
    avg_compute_output_us: float
    avg_request_us: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def snapshot(statistics: dict[str, Any], model: str, version: str = "") -> StatsSnapshot:
    """The entry for ``model`` (and ``version`` when given; else the newest version listed) of a
    statistics answer.  Raises LookupError when the answer has no such entry."""
    entries = [e for e in statistics.get("model_stats", []) if e.get("name") == model]
    if version:
        entries = [e for e in entries if str(e.get("version", "")) == version]
    if not entries:
        raise LookupError(f"the statistics have no entry for model '{model}' version '{version or 'any'}'")
    entry = max(entries, key=lambda e: _int(e.get("version")) if str(e.get("version", "")).isdigit() else 0)
    stats = entry.get("inference_stats", {}) or {}
    counts = {f: _int((stats.get(f) or {}).get("count")) for f in STAT_FIELDS}
    ns = {f: _int((stats.get(f) or {}).get("ns")) for f in STAT_FIELDS}
    return StatsSnapshot(
        inference_count=_int(entry.get("inference_count")),
        execution_count=_int(entry.get("execution_count")),
        counts=counts,
        ns=ns,
    )


def breakdown(before: StatsSnapshot, after: StatsSnapshot) -> ServerBreakdown:
    """``after - before`` as per-request averages (0 where no request succeeded)."""
    d_count = {f: after.counts[f] - before.counts[f] for f in STAT_FIELDS}
    d_ns = {f: after.ns[f] - before.ns[f] for f in STAT_FIELDS}
    n = d_count["success"]

    def avg(field: str) -> float:
        return d_ns[field] / n / 1000.0 if n > 0 else 0.0

    return ServerBreakdown(
        success_count=n,
        fail_count=d_count["fail"],
        inference_count=after.inference_count - before.inference_count,
        execution_count=after.execution_count - before.execution_count,
        avg_queue_us=avg("queue"),
        avg_compute_input_us=avg("compute_input"),
        avg_compute_infer_us=avg("compute_infer"),
        avg_compute_output_us=avg("compute_output"),
        avg_request_us=avg("success"),
    )
