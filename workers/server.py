"""The worker's batch endpoint: batchers connect over TCP and send length-prefixed ``Batch`` frames;
each is executed (one at a time — the instance has one compute thread) and answered by a
``BatchDone`` frame on the same connection.  Responses themselves go out over NATS, not here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from meshserve.framing import read_frame, write_frame
from meshserve.pb import mesh_pb2

log = logging.getLogger(__name__)

__all__ = ["BatchServer"]


class RunsBatches(Protocol):
    """What executes a batch: ``workers.executor.BatchExecutor``, or an ``llm`` model's stage 0."""

    async def run(self, batch: mesh_pb2.Batch) -> mesh_pb2.BatchDone: ...


class BatchServer:
    def __init__(self, executor: RunsBatches, max_frame_bytes: int) -> None:
        self._executor = executor
        self._max_frame_bytes = max_frame_bytes
        self._server: asyncio.Server | None = None
        self._busy = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, host: str, port: int) -> int:
        """Listen; return the port actually bound (``port`` 0 picks a free one)."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=2**20)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        log.info("batcher connected from %s", peer)
        self._writers.add(writer)
        try:
            while (frame := await read_frame(reader, self._max_frame_bytes)) is not None:
                batch = mesh_pb2.Batch.FromString(frame)
                self._busy += 1
                self._idle.clear()
                try:
                    done = await self._executor.run(batch)
                finally:
                    self._busy -= 1
                    if not self._busy:
                        self._idle.set()
                write_frame(writer, done.SerializeToString())
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.info("batcher %s went away: %s", peer, exc)
        except Exception:
            log.exception("batch stream from %s failed", peer)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting connections, let the batch in flight finish (bounded), then close."""
        if self._server is None:
            return
        self._server.close()
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        except TimeoutError:
            log.warning("a batch was still running after %.1f s; stopping anyway", grace_s)
        for writer in list(self._writers):  # Server.close_clients() only exists from Python 3.13
            writer.close()
