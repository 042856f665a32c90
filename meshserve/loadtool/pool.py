"""Run the load loops in this process or in N processes started together (``--processes N``), when
one Python client process cannot saturate the server.

Each process builds its own client once (``SenderSpec``), then serves commands over a pipe: run this
``Phase``, answer the ``Samples``.  The parent splits each measurement's concurrency, rate or count
across processes and merges what comes back.  Every wait is bounded; a process whose parent has gone
quiet for ``IDLE_EXIT_S`` exits by itself.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any, Literal

from meshserve.loadtool.inputs import Payload
from meshserve.loadtool.load import Phase, Samples, Sender, merge, run_phase
from meshserve.loadtool.transport import Endpoint

__all__ = ["IDLE_EXIT_S", "LocalRunner", "PoolRunner", "Runner", "SenderSpec", "make_runner", "split_phase"]

IDLE_EXIT_S = 3600.0
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SenderSpec:
    """What a process needs to build its sender (picklable)."""

    kind: Literal["infer", "stream"]
    endpoint: Endpoint
    connections: int
    payloads: list[Payload] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    stream_endpoint: Literal["generate", "openai"] = "generate"
    bodies: list[dict[str, Any]] = field(default_factory=list)


async def _open(spec: SenderSpec) -> tuple[Sender, Callable[[], Any]]:
    if spec.kind == "infer":
        from meshserve.loadtool.transport import open_infer

        infer = open_infer(spec.endpoint, spec.payloads, spec.outputs, spec.connections)
        return infer, infer.close
    e = spec.endpoint
    if e.protocol == "grpc":  # generate over ModelStreamInfer
        from meshserve.loadtool.transport import StreamInfer

        grpc_stream = StreamInfer(e, spec.payloads)
        return grpc_stream, grpc_stream.close
    from meshserve.loadtool.streaming import Streamer

    streamer = Streamer(
        e.url, spec.stream_endpoint, e.model, e.version, spec.bodies, e.timeout_s, spec.connections
    )
    return streamer, streamer.close


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def split_phase(phase: Phase, processes: int) -> list[Phase]:
    """One phase per process (those with nothing to do left out): concurrency and count are shared
    out as evenly as whole numbers allow, a rate is divided (a constant one staggered), each process
    gets its own seed and payload offset."""
    shares = []
    for i in range(processes):
        if phase.mode == "concurrency":
            level: float = _share(int(phase.level), processes, i)
            if level == 0:
                continue
        else:
            level = phase.level / processes
        count = None if phase.count is None else _share(phase.count, processes, i)
        if count == 0:
            continue
        # a constant rate split N ways: process i starts i/rate later, so the sends interleave evenly
        stagger = i / phase.level if phase.mode == "rate" and phase.distribution == "constant" else 0.0
        shares.append(
            replace(
                phase,
                level=level,
                count=count,
                seed=phase.seed * 1009 + i,
                first_index=i * 7919,
                start_at=phase.start_at + stagger,
            )
        )
    return shares


class Runner(abc.ABC):
    """Runs a phase (split across its processes) and answers the merged samples."""

    processes: int = 1

    def __init__(self) -> None:
        self.done_counts: Any = [0]
        """Requests finished, per process (the progress bar sums them)."""

    def completed(self) -> int:
        return int(sum(self.done_counts))

    @abc.abstractmethod
    def run(self, phase: Phase, timeout_s: float) -> Samples:
        """The phase's samples, within ``timeout_s``."""

    def close(self) -> None:  # noqa: B027 (most runners hold nothing to close)
        """Release what the runner holds (processes, event loop)."""


class LocalRunner(Runner):
    """In this process, on its own event loop."""

    def __init__(self, spec: SenderSpec) -> None:
        super().__init__()
        self._loop = asyncio.new_event_loop()
        self._sender, self._closer = self._loop.run_until_complete(_open(spec))

    def _count(self) -> None:
        self.done_counts[0] += 1

    def run(self, phase: Phase, timeout_s: float) -> Samples:
        async def bounded() -> Samples:
            async with asyncio.timeout(timeout_s):
                return await run_phase(self._sender, phase, self._count)

        return self._loop.run_until_complete(bounded())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(self._closer())
        self._loop.close()


def _process_main(index: int, spec: SenderSpec, conn: Connection, counts: Any) -> None:
    with contextlib.suppress(
        KeyboardInterrupt
    ):  # Ctrl-C reaches the whole process group: the parent reports it
        _serve(index, spec, conn, counts)


def _serve(index: int, spec: SenderSpec, conn: Connection, counts: Any) -> None:
    loop = asyncio.new_event_loop()
    try:
        sender, closer = loop.run_until_complete(_open(spec))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))

    def count() -> None:
        counts[index] += 1  # this process is the only writer of its slot

    try:
        while conn.poll(IDLE_EXIT_S):
            message = conn.recv()
            if message is None:
                break
            phase, timeout_s = message

            async def bounded(phase: Phase = phase, timeout_s: float = timeout_s) -> Samples:
                async with asyncio.timeout(timeout_s):
                    return await run_phase(sender, phase, count)

            try:
                conn.send(("samples", loop.run_until_complete(bounded())))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(closer())
        loop.close()


class PoolRunner(Runner):
    """``processes`` spawned processes, one client each."""

    def __init__(self, spec: SenderSpec, processes: int) -> None:
        super().__init__()
        context = multiprocessing.get_context("spawn")
        self.processes = processes
        self.done_counts = context.Array("q", processes, lock=False)
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        try:
            for i in range(processes):
                parent, child = context.Pipe()
                proc = context.Process(
                    target=_process_main,
                    args=(i, spec, child, self.done_counts),
                    daemon=True,
                    name=f"bench-{i}",
                )
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            for i, conn in enumerate(self._conns):
                kind, detail = self._receive(conn, START_TIMEOUT_S, f"load process {i} did not start")
                if kind != "ready":
                    raise RuntimeError(f"load process {i} failed to start: {detail}")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _receive(conn: Connection, timeout_s: float, what: str) -> tuple[str, Any]:
        if not conn.poll(timeout_s):
            raise TimeoutError(f"{what} in {timeout_s:.0f}s")
        try:
            message: tuple[str, Any] = conn.recv()
        except EOFError:
            raise RuntimeError(f"{what}: the process exited") from None
        return message

    def run(self, phase: Phase, timeout_s: float) -> Samples:
        shares = split_phase(phase, self.processes)
        for conn, share in zip(self._conns, shares, strict=False):
            conn.send((share, timeout_s))
        parts = []
        deadline = time.monotonic() + timeout_s + 30.0
        for i, conn in enumerate(self._conns[: len(shares)]):
            kind, detail = self._receive(
                conn, max(deadline - time.monotonic(), 1.0), f"load process {i} did not answer"
            )
            if kind != "samples":
                raise RuntimeError(f"load process {i}: {detail}")
            parts.append(detail)
        return merge(parts)

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for conn in self._conns:
            conn.close()


def make_runner(spec: SenderSpec, processes: int) -> Runner:
    return LocalRunner(spec) if processes <= 1 else PoolRunner(spec, processes)
