"""One worker instance as the batcher sees it: a long-lived TCP stream of frames, batches in flight on it.

``run`` connects and then reads each ``BatchDone``; ``send`` writes a batch.  When the stream breaks
(the worker died or went away), every batch still in flight is handed to ``on_lost`` so that each of
its requests gets an answer — never a hang.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from meshserve.framing import read_frame, split_address, write_frame
from meshserve.pb import mesh_pb2

log = logging.getLogger(__name__)

__all__ = ["InFlight", "InstanceLink"]


@dataclass(slots=True)
class InFlight:
    """A batch sent and not yet done; ``items`` are what to answer if the instance is lost."""

    batch: mesh_pb2.Batch
    sent_s: float
    items: list[object] = field(default_factory=list)


class InstanceLink:
    def __init__(
        self,
        instance_id: str,
        address: str,
        max_inflight: int,
        max_frame_bytes: int,
        on_done: Callable[[InstanceLink, InFlight | None], None],
        on_lost: Callable[[InstanceLink, list[InFlight], str], None],
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.instance_id = instance_id
        self.address = address
        self.max_inflight = max(1, max_inflight)
        self.inflight: dict[int, InFlight] = {}
        self.accepting = True
        self._max_frame_bytes = max_frame_bytes
        self._connect_timeout_s = connect_timeout_s
        self._on_done = on_done
        self._on_lost = on_lost
        self._writer: asyncio.StreamWriter | None = None
        self._closed = False
        self._reported = False
        self._quiet = False

    @property
    def free(self) -> bool:
        return (
            self.accepting
            and self._writer is not None
            and not self._closed
            and len(self.inflight) < self.max_inflight
        )

    async def send(self, flight: InFlight) -> None:
        assert self._writer is not None, "send() before the link is connected"
        self.inflight[flight.batch.batch_id] = flight
        try:
            write_frame(self._writer, flight.batch.SerializeToString())
            await self._writer.drain()
        except Exception as exc:  # reset transport (uvloop raises RuntimeError), encode failure, ...
            log.warning("instance %s: cannot send batch %d: %s", self.instance_id, flight.batch.batch_id, exc)
            self._lose(f"stream to worker {self.instance_id} at {self.address} broke: {exc}")

    async def run(self) -> None:
        """Connect, then read ``BatchDone`` frames for the life of the link."""
        reason = f"worker {self.instance_id} at {self.address} lost: it closed its stream"
        try:
            host, port = split_address(self.address)
            async with asyncio.timeout(self._connect_timeout_s):
                reader, self._writer = await asyncio.open_connection(host, port, limit=2**20)
            self._on_done(self, None)  # connected: the scheduler may send now
            while (frame := await read_frame(reader, self._max_frame_bytes)) is not None:
                done = mesh_pb2.BatchDone.FromString(frame)
                flight = self.inflight.pop(done.batch_id, None)
                if flight is not None:
                    self._on_done(self, flight)
        except asyncio.CancelledError:
            reason = "batcher shutting down"
            raise
        except Exception as exc:  # a dead, hung or wrong endpoint must never take the batcher down
            reason = f"worker {self.instance_id} at {self.address} lost: {type(exc).__name__}: {exc}"
            log.warning("%s", reason)
        finally:
            self._lose(reason)
            await self.close()

    def _lose(self, reason: str) -> None:
        """The link is over: report it once (with the batches it still held) unless it was retired."""
        self.accepting = False
        lost = list(self.inflight.values())
        self.inflight.clear()
        if self._reported or self._quiet:
            return
        self._reported = True
        self._on_lost(self, lost, reason)

    def abandon(self, reason: str) -> None:
        """The worker went silent: fail (or retry) its batches now and drop the connection."""
        self._lose(reason)
        if self._writer is not None:
            self._writer.transport.abort()

    def retire(self) -> None:
        """Shutting down on purpose: the worker answers its requests itself, report nothing."""
        self._quiet = True
        self.accepting = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.accepting = False
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except (ConnectionError, OSError):
                pass
