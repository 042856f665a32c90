"""One worker instance as the batcher sees it: a long-lived gRPC stream, batches in flight on it.

``send`` writes a batch; a reader task waits for each ``BatchDone``.  When the stream breaks (the
worker died or went away), every batch still in flight is handed to ``on_lost`` so that each of its
requests gets an answer — never a hang.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from meshserve.pb import mesh_pb2, mesh_pb2_grpc

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
        grpc_message_bytes: int,
        on_done: Callable[[InstanceLink, InFlight], None],
        on_lost: Callable[[InstanceLink, list[InFlight], str], None],
    ) -> None:
        self.instance_id = instance_id
        self.address = address
        self.max_inflight = max(1, max_inflight)
        self.inflight: dict[int, InFlight] = {}
        self.accepting = True
        self._on_done = on_done
        self._on_lost = on_lost
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", grpc_message_bytes),
                ("grpc.max_send_message_length", grpc_message_bytes),
            ],
        )
        self._call = mesh_pb2_grpc.WorkerStub(self._channel).Execute()
        self._closed = False

    @property
    def free(self) -> bool:
        return self.accepting and not self._closed and len(self.inflight) < self.max_inflight

    async def send(self, flight: InFlight) -> None:
        self.inflight[flight.batch.batch_id] = flight
        try:
            await self._call.write(flight.batch)
        except Exception as exc:  # the reader sees the same break and fails the batch
            log.warning("instance %s: cannot send batch %d: %s", self.instance_id, flight.batch.batch_id, exc)
            self._lose(f"stream to worker {self.instance_id} at {self.address} broke: {exc}")

    async def read(self) -> None:
        """Runs for the life of the link; ends when the stream ends."""
        reason = f"worker {self.instance_id} at {self.address} closed its stream"
        try:
            while True:
                done = await self._call.read()
                if done is grpc.aio.EOF:
                    break
                flight = self.inflight.pop(done.batch_id, None)
                if flight is not None:
                    self._on_done(self, flight)
        except grpc.aio.AioRpcError as exc:
            reason = f"worker {self.instance_id} at {self.address} lost: {exc.code().name} {exc.details()}"
        except asyncio.CancelledError:
            reason = "batcher shutting down"
            raise
        finally:
            self._lose(reason)
            await self.close()

    def _lose(self, reason: str) -> None:
        self.accepting = False
        if self.inflight:
            lost = list(self.inflight.values())
            self.inflight.clear()
            self._on_lost(self, lost, reason)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.accepting = False
        self._call.cancel()
        await self._channel.close()
