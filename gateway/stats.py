"""Per model-version statistics in Triton's vocabulary, kept by the gateway from what it sees.

The gateway times each request end to end (success / fail); the worker's ``Timing`` on each reply
adds the queue and compute parts (counted per successful request, as Triton does) and, on the one
reply that counts its batch's execution, the execution count and per-batch-size compute times.
The ``ModelStatistics`` RPC, the HTTP statistics route and the Prometheus collector all read this
book; nothing else counts.  Pure: no protocol, no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from meshserve.errors import Cancelled, DeadlineExceeded, MeshError, Unavailable
from meshserve.pb import mesh_pb2

__all__ = ["Duration", "FailureReason", "ModelStats", "StatsBook", "failure_reason", "merge_statistics"]


class FailureReason(Enum):
    """Triton's ``reason`` label on ``nv_inference_request_failure``."""

    REJECTED = "REJECTED"
    """Refused by the batcher: queue full, no live instance, deadline passed in the queue."""
    CANCELED = "CANCELED"
    BACKEND = "BACKEND"
    """The worker answered with an error: the model or the worker failed."""
    OTHER = "OTHER"
    """Anything else: bad request, no batcher, the gateway's own deadline, ..."""


def failure_reason(error: MeshError, from_worker: bool, from_mesh: bool) -> FailureReason:
    """Why a request failed.  ``from_worker``: the reply carried the worker's timing; ``from_mesh``:
    the error came back in a reply at all (worker or batcher), not raised by the gateway itself."""
    if isinstance(error, Cancelled):
        return FailureReason.CANCELED
    if from_worker:
        return FailureReason.BACKEND
    if from_mesh and isinstance(error, Unavailable | DeadlineExceeded):
        return FailureReason.REJECTED
    return FailureReason.OTHER


@dataclass(slots=True)
class Duration:
    """Triton's ``StatisticDuration``: how many times, and the nanoseconds they took in all."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(0, ns)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStats:
    """Compute times of the batches executed at one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    @property
    def count(self) -> int:
        """Batches executed at this size."""
        return self.compute_infer.count


@dataclass(slots=True)
class ModelStats:
    inference_count: int = 0
    """Rows of successful requests (a batch-N request counts N)."""
    execution_count: int = 0
    """Batches executed (whatever their requests' outcome)."""
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)
    """Batch size (rows) → compute times of the batches of that size."""
    failures: dict[FailureReason, int] = field(default_factory=lambda: dict.fromkeys(FailureReason, 0))
    pending: int = 0
    """Requests in flight at this gateway."""

    def as_dict(self, name: str, version: int) -> dict[str, Any]:
        """Triton's ``ModelStatistics`` message as JSON (the shape the gRPC and HTTP routes serve)."""
        zero = {"count": 0, "ns": 0}
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
                "cache_hit": dict(zero),
                "cache_miss": dict(zero),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": batch.compute_input.as_dict(),
                    "compute_infer": batch.compute_infer.as_dict(),
                    "compute_output": batch.compute_output.as_dict(),
                }
                for size, batch in sorted(self.batches.items())
            ],
        }


class StatsBook:
    def __init__(self) -> None:
        self._stats: dict[tuple[str, int], ModelStats] = {}

    def get(self, model: str, version: int) -> ModelStats:
        return self._stats.setdefault((model, version), ModelStats())

    def items(self) -> list[tuple[tuple[str, int], ModelStats]]:
        return sorted(self._stats.items())

    @contextmanager
    def in_flight(self, model: str, version: int) -> Iterator[None]:
        """Counts the request as pending while the block runs."""
        stats = self.get(model, version)
        stats.pending += 1
        try:
            yield
        finally:
            stats.pending -= 1

    def record_success(
        self, model: str, version: int, duration_ns: int, rows: int, timing: mesh_pb2.Timing | None
    ) -> None:
        stats = self.get(model, version)
        stats.success.add(duration_ns)
        stats.inference_count += max(1, rows)
        stats.last_inference_ms = _now_ms()
        if timing is not None:
            stats.queue.add(timing.queue_ns)
            stats.compute_input.add(timing.compute_input_ns)
            stats.compute_infer.add(timing.compute_infer_ns)
            stats.compute_output.add(timing.compute_output_ns)
            self._record_execution(stats, timing)

    def record_failure(
        self,
        model: str,
        version: int,
        duration_ns: int,
        reason: FailureReason,
        timing: mesh_pb2.Timing | None = None,
    ) -> None:
        stats = self.get(model, version)
        stats.fail.add(duration_ns)
        stats.failures[reason] += 1
        if timing is not None:
            self._record_execution(stats, timing)

    @staticmethod
    def _record_execution(stats: ModelStats, timing: mesh_pb2.Timing) -> None:
        if not timing.counts_execution:
            return
        stats.execution_count += 1
        stats.last_inference_ms = _now_ms()
        batch = stats.batches.get(timing.batch_rows)
        if batch is None:
            batch = stats.batches[timing.batch_rows] = BatchStats()
        batch.compute_input.add(timing.compute_input_ns)
        batch.compute_infer.add(timing.compute_infer_ns)
        batch.compute_output.add(timing.compute_output_ns)


def merge_statistics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One model version's statistics from several gateways' :meth:`ModelStats.as_dict`: counts and
    durations add up (each request was counted by exactly one gateway), batch sizes merge by size, the
    last inference is the latest."""
    merged: dict[str, Any] = _copy_stats(parts[0])
    for part in parts[1:]:
        merged["last_inference"] = max(int(merged["last_inference"]), int(part["last_inference"]))
        merged["inference_count"] += int(part["inference_count"])
        merged["execution_count"] += int(part["execution_count"])
        for key, duration in part["inference_stats"].items():
            _add_duration(merged["inference_stats"].setdefault(key, {"count": 0, "ns": 0}), duration)
        by_size = {int(b["batch_size"]): b for b in merged["batch_stats"]}
        for batch in part["batch_stats"]:
            into = by_size.get(int(batch["batch_size"]))
            if into is None:
                by_size[int(batch["batch_size"])] = _copy_stats(batch)
                continue
            for key in ("compute_input", "compute_infer", "compute_output"):
                _add_duration(into[key], batch[key])
        merged["batch_stats"] = [by_size[size] for size in sorted(by_size)]
    return merged


def _copy_stats(stats: Any) -> Any:
    """A deep copy of a statistics dict (only dicts, lists and scalars)."""
    if isinstance(stats, dict):
        return {key: _copy_stats(value) for key, value in stats.items()}
    if isinstance(stats, list):
        return [_copy_stats(value) for value in stats]
    return stats


def _add_duration(into: dict[str, int], other: dict[str, Any]) -> None:
    into["count"] = int(into["count"]) + int(other["count"])
    into["ns"] = int(into["ns"]) + int(other["ns"])


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
