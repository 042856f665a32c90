"""The load loops, each bounded by a count or a time: a fixed number of requests in flight
(concurrency), or requests sent on a schedule (request rate).

A *sender* is an async callable taking the request's index (which payload to use); it returns
``None`` (an inference) or a ``StreamTiming`` (an LLM stream) and raises on failure.  The loops
record what happened into ``Samples``; the process pool merges the ``Samples`` of its processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from meshserve.loadtool.schedule import Distribution, send_offsets
from meshserve.loadtool.streaming import StreamTiming

__all__ = ["ERRORS_KEPT", "Phase", "Samples", "Sender", "merge", "run_phase"]

Sender = Callable[[int], Awaitable[StreamTiming | None]]
ERRORS_KEPT = 5
"""Distinct error messages kept per measurement (all are counted)."""
LATE_S = 0.005
"""Rate mode: a request sent this much after its scheduled time counts as delayed (perf_analyzer's
"delayed requests": the client could not keep the rate; a few on a busy 2-core machine are timer noise)."""


@dataclass(frozen=True)
class Phase:
    """One process's share of one measurement (or warm-up).  Exactly one of duration_s and count."""

    mode: Literal["concurrency", "rate"]
    level: float
    """Requests in flight (concurrency) or requests per second (rate), for this process."""
    duration_s: float | None = None
    count: int | None = None
    distribution: Distribution = "constant"
    seed: int = 0
    start_at: float = 0.0
    """``time.monotonic()`` at which to begin (system-wide on Linux, so processes start together)."""
    max_duration_s: float = 600.0
    """Count mode stops starting requests after this long anyway."""
    max_inflight: int = 4096
    """Rate mode: at most this many requests outstanding; later sends wait (and count as delayed)."""
    first_index: int = 0
    """Payload index of this process's first request, so processes do not all send the same one."""


@dataclass
class Samples:
    latencies_ns: list[int] = field(default_factory=list)
    ttft_ns: list[int] = field(default_factory=list)
    itl_ns: list[int] = field(default_factory=list)
    output_tokens: int = 0
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    sent: int = 0
    delayed: int = 0
    first_start_ns: int | None = None
    last_end_ns: int = 0

    def record(self, start_ns: int, end_ns: int, outcome: StreamTiming | None) -> None:
        self.latencies_ns.append(end_ns - start_ns)
        if outcome is not None:
            self.ttft_ns.append(outcome.ttft_ns)
            self.output_tokens += outcome.tokens
            if outcome.tokens > 1:
                self.itl_ns.append(outcome.itl_ns)
        self._span(start_ns, end_ns)

    def fail(self, start_ns: int, end_ns: int, exc: BaseException) -> None:
        self.errors += 1
        message = f"{type(exc).__name__}: {exc}"[:500]
        if len(self.error_messages) < ERRORS_KEPT and message not in self.error_messages:
            self.error_messages.append(message)
        self._span(start_ns, end_ns)

    def _span(self, start_ns: int, end_ns: int) -> None:
        self.first_start_ns = start_ns if self.first_start_ns is None else min(self.first_start_ns, start_ns)
        self.last_end_ns = max(self.last_end_ns, end_ns)

    @property
    def completed(self) -> int:
        return len(self.latencies_ns)

    @property
    def window_s(self) -> float:
        if self.first_start_ns is None:
            return 0.0
        return max(self.last_end_ns - self.first_start_ns, 0) / 1e9


def merge(parts: Sequence[Samples]) -> Samples:
    total = Samples()
    for part in parts:
        total.latencies_ns.extend(part.latencies_ns)
        total.ttft_ns.extend(part.ttft_ns)
        total.itl_ns.extend(part.itl_ns)
        total.output_tokens += part.output_tokens
        total.errors += part.errors
        for message in part.error_messages:
            if len(total.error_messages) < ERRORS_KEPT and message not in total.error_messages:
                total.error_messages.append(message)
        total.sent += part.sent
        total.delayed += part.delayed
        if part.first_start_ns is not None:
            total._span(part.first_start_ns, part.last_end_ns)
    return total


async def _timed(send: Sender, index: int, samples: Samples, on_done: Callable[[], None]) -> None:
    start = time.monotonic_ns()
    try:
        outcome = await send(index)
    except Exception as exc:  # every failure is counted, never fatal to the run
        samples.fail(start, time.monotonic_ns(), exc)
    else:
        samples.record(start, time.monotonic_ns(), outcome)
    finally:
        on_done()


async def _wait_start(start_at: float) -> None:
    delay = start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_concurrency(send: Sender, phase: Phase, on_done: Callable[[], None]) -> Samples:
    """``level`` slots, each sending its next request when the last one answers, until the duration
    has passed or ``count`` requests were started (and at most ``max_duration_s``)."""
    samples = Samples()
    await _wait_start(phase.start_at)
    begin = time.monotonic()
    limit_s = phase.duration_s if phase.duration_s is not None else phase.max_duration_s
    stop_at = begin + min(limit_s, phase.max_duration_s)
    next_index = phase.first_index

    async def slot() -> None:
        nonlocal next_index
        while time.monotonic() < stop_at and (phase.count is None or samples.sent < phase.count):
            index, next_index = next_index, next_index + 1
            samples.sent += 1
            await _timed(send, index, samples, on_done)

    async with asyncio.TaskGroup() as group:
        for _ in range(int(phase.level)):
            group.create_task(slot())
    return samples


async def run_rate(send: Sender, phase: Phase, on_done: Callable[[], None]) -> Samples:
    """Requests sent at the schedule's times (``level`` per second), then wait for their answers."""
    samples = Samples()
    if phase.count is not None:
        offsets = send_offsets(phase.level, phase.distribution, count=phase.count, seed=phase.seed)
    else:
        duration = min(float(phase.duration_s or 0.0), phase.max_duration_s)
        offsets = send_offsets(phase.level, phase.distribution, duration_s=duration, seed=phase.seed)
    slots = asyncio.Semaphore(phase.max_inflight)
    await _wait_start(phase.start_at)
    begin = time.monotonic()
    hard_stop = begin + phase.max_duration_s

    def release() -> None:
        slots.release()
        on_done()

    async with asyncio.TaskGroup() as group:
        for i, offset in enumerate(offsets):
            delay = begin + offset - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            if time.monotonic() - (begin + offset) > LATE_S:
                samples.delayed += 1
            if time.monotonic() >= hard_stop:
                slots.release()
                break
            samples.sent += 1
            group.create_task(_timed(send, phase.first_index + i, samples, release))
    return samples


async def run_phase(send: Sender, phase: Phase, on_done: Callable[[], None]) -> Samples:
    if phase.mode == "concurrency":
        return await run_concurrency(send, phase, on_done)
    return await run_rate(send, phase, on_done)
