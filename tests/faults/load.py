"""Steady load with an account of every request: succeeded, failed with a clear error, or lost.

A request is *lost* (hung) when it has no final answer within its deadline plus a margin; a *clear*
error is a status the test allows (e.g. UNAVAILABLE) with a message a person can act on; anything
else (an unexpected status, an empty message, a wrong answer) is *unclear*.  Fault tests assert
``lost == 0`` and ``unclear == []``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

CLEAR_STATUSES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
"""What a client may get while a part of the mesh fails: retry later / gave up in time."""

Call = Callable[[grpcaio.InferenceServerClient], Awaitable[Any]]
"""One request on a client; raises InferenceServerException on an error answer."""
Check = Callable[[Any], bool]
"""Is this answer right?"""


@dataclass
class Tally:
    """The account of one load run."""

    sent: int = 0
    ok: int = 0
    clear: Counter[str] = field(default_factory=Counter)
    """Clear errors by status."""
    unclear: list[str] = field(default_factory=list)
    lost: int = 0
    ok_latencies_s: list[float] = field(default_factory=list)
    events: list[tuple[float, str, float]] = field(default_factory=list)
    """(monotonic end time, outcome, seconds taken) per request, for "did it serve again after X"."""

    @property
    def failed_clearly(self) -> int:
        return sum(self.clear.values())

    def ok_after(self, t: float) -> int:
        return sum(1 for at, outcome, _ in self.events if at >= t and outcome == "ok")

    def slowest(self, outcome: str) -> float:
        """The longest a request with this outcome took (0 when none)."""
        return max((took for _, out, took in self.events if out == outcome), default=0.0)

    def row(self) -> str:
        """One line for docs/reliability.md: sent / succeeded / failed clearly / lost."""
        detail = ", ".join(f"{k} {v}" for k, v in sorted(self.clear.items()))
        return f"sent {self.sent} / ok {self.ok} / clear {self.failed_clearly} ({detail}) / lost {self.lost}"

    def check(self, min_ok: int = 1) -> None:
        assert self.lost == 0, f"{self.lost} requests hung: {self.row()}"
        assert not self.unclear, f"unclear outcomes: {self.unclear[:5]} ({self.row()})"
        assert self.ok >= min_ok, f"too few successes: {self.row()}"
        assert self.sent == self.ok + self.failed_clearly + self.lost + len(self.unclear)


def status_name(exc: InferenceServerException) -> str:
    return str(exc.status() or "").removeprefix("StatusCode.")


class Load:
    """``concurrency`` loops, each sending one request after another (optionally paced) until stopped.

    Each loop has its own client (its own connection), as separate users would; a loop whose client
    got UNAVAILABLE reconnects, so a client of a dead gateway finds a living one on the same port.
    """

    def __init__(
        self,
        url: str,
        call: Call,
        *,
        concurrency: int = 4,
        deadline_s: float = 10.0,
        margin_s: float = 5.0,
        interval_s: float = 0.0,
        clear: Iterable[str] = CLEAR_STATUSES,
        check: Check | None = None,
    ) -> None:
        self.url = url
        self.call = call
        self.concurrency = concurrency
        self.deadline_s = deadline_s
        self.margin_s = margin_s
        self.interval_s = interval_s
        self.clear = frozenset(clear)
        self.check = check
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(self.concurrency)]

    async def stop(self) -> Tally:
        """Stop sending; wait for every request in flight to get its answer (or be counted lost)."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.tally

    async def run_for(self, seconds: float) -> Tally:
        self.start()
        await asyncio.sleep(seconds)
        return await self.stop()

    async def _loop(self) -> None:
        client = grpcaio.InferenceServerClient(self.url)
        try:
            while not self._stop.is_set():
                outcome = await self.one(client)
                if outcome == "UNAVAILABLE":  # maybe our gateway went away: a fresh connection
                    await client.close()
                    client = grpcaio.InferenceServerClient(self.url)
                if self.interval_s:
                    await asyncio.sleep(self.interval_s)
        finally:
            await client.close()

    async def one(self, client: grpcaio.InferenceServerClient) -> str:
        """Send one request and account for it; return its outcome ("ok", a status, "lost", "unclear")."""
        tally = self.tally
        tally.sent += 1
        start = time.monotonic()
        try:
            result = await asyncio.wait_for(self.call(client), self.deadline_s + self.margin_s)
        except TimeoutError:
            tally.lost += 1
            outcome = "lost"
        except InferenceServerException as exc:
            status, message = status_name(exc), str(exc.message() or "")
            if status in self.clear and message.strip():
                tally.clear[status] += 1
                outcome = status
            else:
                tally.unclear.append(f"{status}: {message}")
                outcome = "unclear"
        except Exception as exc:  # a client-side failure is not an answer either
            tally.unclear.append(f"{type(exc).__name__}: {exc}")
            outcome = "unclear"
        else:
            if self.check is not None and not self.check(result):
                tally.unclear.append("wrong answer")
                outcome = "unclear"
            else:
                tally.ok += 1
                tally.ok_latencies_s.append(time.monotonic() - start)
                outcome = "ok"
        end = time.monotonic()
        tally.events.append((end, outcome, end - start))
        return outcome


# -- requests for the test models ------------------------------------------------------------------
def simple_call(timeout_s: float | None = None) -> tuple[Call, Check]:
    """`simple` (INPUT0 + INPUT1, INPUT0 - INPUT1) with random inputs, and its check."""
    expected: dict[int, np.ndarray] = {}

    async def call(client: grpcaio.InferenceServerClient) -> Any:
        a = np.random.randint(0, 1000, size=(1, 16), dtype=np.int32)
        inputs = [
            grpcaio.InferInput("INPUT0", [1, 16], "INT32"),
            grpcaio.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(a)
        result = await client.infer("simple", inputs, client_timeout=timeout_s)
        expected[id(result)] = a
        return result

    def check(result: Any) -> bool:
        a = expected.pop(id(result))
        return bool(np.array_equal(result.as_numpy("OUTPUT0"), 2 * a))

    return call, check


def fp32_call(model: str, width: int, timeout_us: int = 0) -> tuple[Call, Check]:
    """An echo model (IN → OUT, FP32 ``[1, width]``): `slow`, `pace` and the like."""
    sent: dict[int, np.ndarray] = {}

    async def call(client: grpcaio.InferenceServerClient) -> Any:
        x = np.random.rand(1, width).astype(np.float32)
        tensor = grpcaio.InferInput("IN", [1, width], "FP32")
        tensor.set_data_from_numpy(x)
        result = await client.infer(model, [tensor], timeout=timeout_us or None)
        sent[id(result)] = x
        return result

    def check(result: Any) -> bool:
        return bool(np.array_equal(result.as_numpy("OUT"), sent.pop(id(result))))

    return call, check


async def eventually(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``predicate`` from inside the event loop (the load keeps running meanwhile)."""
    for _ in range(max(1, int(timeout_s / interval_s))):
        if predicate():
            return True
        await asyncio.sleep(interval_s)
    return predicate()
