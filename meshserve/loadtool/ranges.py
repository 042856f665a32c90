"""perf_analyzer's ``start:end:step`` ranges (``--concurrency-range``, ``--request-rate-range``)."""

from __future__ import annotations

__all__ = ["MAX_LEVELS", "RangeError", "parse_concurrency_range", "parse_rate_range"]

MAX_LEVELS = 1000
"""A sweep longer than this is refused: it would run for hours."""


class RangeError(ValueError):
    """A range a person has to fix; the message says how."""


def _parts(text: str, flag: str) -> list[str]:
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or any(p.strip() == "" for p in parts):
        raise RangeError(f"{flag}: expected 'start', 'start:end' or 'start:end:step', got '{text}'")
    return [p.strip() for p in parts]


def parse_concurrency_range(text: str, flag: str = "--concurrency-range") -> list[int]:
    """``"4"`` → [4]; ``"1:8"`` → [1..8] step 1; ``"1:64:2"`` → [1, 3, 5, ...]; end inclusive.

    As perf_analyzer: the step is added (linear), ``end`` is included when the step lands on it.
    """
    parts = _parts(text, flag)
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise RangeError(f"{flag}: every part must be a whole number, got '{text}'") from None
    start = values[0]
    end = values[1] if len(values) > 1 else start
    step = values[2] if len(values) > 2 else 1
    if start < 1:
        raise RangeError(f"{flag}: start must be at least 1, got {start}")
    if end < start:
        raise RangeError(f"{flag}: end ({end}) is below start ({start})")
    if step < 1:
        raise RangeError(f"{flag}: step must be at least 1, got {step}")
    levels = list(range(start, end + 1, step))
    if len(levels) > MAX_LEVELS:
        raise RangeError(f"{flag}: {len(levels)} levels; at most {MAX_LEVELS} (use a larger step)")
    return levels


def parse_rate_range(text: str, flag: str = "--request-rate-range") -> list[float]:
    """Requests per second: ``"100"``, ``"100:400:100"`` → [100, 200, 300, 400]; ``"100:400"`` steps by
    ``start`` (a step of 1 request/s would rarely be meant).  Floats allowed; end inclusive."""
    parts = _parts(text, flag)
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise RangeError(f"{flag}: every part must be a number, got '{text}'") from None
    start = values[0]
    end = values[1] if len(values) > 1 else start
    step = values[2] if len(values) > 2 else start
    if not start > 0:
        raise RangeError(f"{flag}: the rate must be above 0 requests/s, got {start}")
    if end < start:
        raise RangeError(f"{flag}: end ({end}) is below start ({start})")
    if not step > 0:
        raise RangeError(f"{flag}: step must be above 0, got {step}")
    count = int((end - start) / step + 1e-9) + 1
    if count > MAX_LEVELS:
        raise RangeError(f"{flag}: {count} levels; at most {MAX_LEVELS} (use a larger step)")
    return [round(start + i * step, 9) for i in range(count)]
