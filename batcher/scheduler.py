"""One model version's queue: admits requests, asks the policy when a batch is ready, sends it to a
free instance, and answers every request that cannot be run (deadline passed, queue full, instance lost).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from batcher.link import InFlight, InstanceLink
from batcher.policy import BatchingRules, Pending, decide
from meshserve.errors import DeadlineExceeded, MeshError, QueueFull, Unavailable, WorkerLost
from meshserve.pb import mesh_pb2

log = logging.getLogger(__name__)

__all__ = ["ModelScheduler", "Queued", "ReplyError"]

ReplyError = Callable[["Queued", MeshError], Awaitable[None]]

_batch_ids = itertools.count(1)


@dataclass(slots=True)
class Queued:
    """A request waiting in the queue: the bytes to forward and what the policy and replies need."""

    pending: Pending
    raw: bytes
    reply_to: str
    request_id: str
    model_name: str
    model_version: int
    deadline_s: float | None
    """On the monotonic clock; None = no deadline."""


class ModelScheduler:
    def __init__(
        self, model: str, version: int, rules: BatchingRules, max_queue_size: int, reply_error: ReplyError
    ) -> None:
        self.model, self.version = model, version
        self.rules = rules
        self._max_queue_size = max_queue_size
        self._reply_error = reply_error
        self._queue: deque[Queued] = deque()
        self._links: dict[str, InstanceLink] = {}
        self._wake = asyncio.Event()

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def links(self) -> dict[str, InstanceLink]:
        return self._links

    def admit(self, item: Queued) -> MeshError | None:
        """Queue a request, or say why not (the caller answers it)."""
        if not any(link.accepting for link in self._links.values()):
            return Unavailable(f"model '{self.model}' version {self.version} has no live instance")
        if len(self._queue) >= self._max_queue_size:
            return QueueFull(
                f"queue of model '{self.model}' version {self.version} is full ({self._max_queue_size} "
                "requests; raise --max-queue-size / MESHSERVE_MAX_QUEUE_SIZE)"
            )
        self._queue.append(item)
        self._wake.set()
        return None

    def add_link(self, link: InstanceLink) -> None:
        self._links[link.instance_id] = link
        self._wake.set()

    def remove_link(self, instance_id: str) -> InstanceLink | None:
        link = self._links.pop(instance_id, None)
        self._wake.set()
        return link

    def notify(self) -> None:
        """Something changed (an instance freed up): decide again."""
        self._wake.set()

    async def run(self) -> None:
        """The scheduling loop: wait for a change or a due time, then dispatch while possible."""
        wake_at: float | None = None
        while True:
            timeout = None if wake_at is None else max(0.0, wake_at - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            wake_at = await self._dispatch_ready()

    async def _dispatch_ready(self) -> float | None:
        """Send every batch that is ready now; return when to look again (None = on the next event)."""
        while True:
            now = time.monotonic()
            await self._expire(now)
            if not self._links and self._queue:
                await self._fail_all(
                    Unavailable(f"model '{self.model}' version {self.version} has no live instance")
                )
            link = next((lk for lk in self._links.values() if lk.free), None)
            if link is None or not self._queue:
                return self._next_deadline()
            decision = decide([q.pending for q in self._queue], self.rules, now)
            if decision.take == 0:
                due = decision.wake_at_s
                deadline = self._next_deadline()
                return min(d for d in (due, deadline) if d is not None) if (due or deadline) else None
            items = [self._queue.popleft() for _ in range(decision.take)]
            dispatch_unix_ns = time.time_ns()
            batch = mesh_pb2.Batch(
                batch_id=next(_batch_ids),
                items=[
                    mesh_pb2.BatchItem(
                        request=q.raw,
                        reply_to=q.reply_to,
                        queue_ns=int((now - q.pending.arrival_s) * 1e9),
                        dispatch_unix_ns=dispatch_unix_ns,
                    )
                    for q in items
                ],
            )
            await link.send(InFlight(batch=batch, sent_s=now, items=list(items)))

    async def _expire(self, now: float) -> None:
        if not any(q.deadline_s is not None and q.deadline_s <= now for q in self._queue):
            return
        # Split before answering: a reply may yield, and requests admitted meanwhile must stay queued.
        expired = [q for q in self._queue if q.deadline_s is not None and q.deadline_s <= now]
        self._queue = deque(q for q in self._queue if q.deadline_s is None or q.deadline_s > now)
        for q in expired:
            await self._reply_error(
                q, DeadlineExceeded("Request timeout expired while queued in the batcher")
            )

    def _next_deadline(self) -> float | None:
        deadlines = [q.deadline_s for q in self._queue if q.deadline_s is not None]
        return min(deadlines) if deadlines else None

    async def _fail_all(self, error: MeshError) -> None:
        while self._queue:
            await self._reply_error(self._queue.popleft(), error)

    async def fail_lost(self, flights: list[InFlight], reason: str) -> None:
        """A worker went away with batches in flight: answer each of their requests."""
        for flight in flights:
            for item in flight.items:
                assert isinstance(item, Queued)
                await self._reply_error(item, WorkerLost(reason))

    async def drain(self, error: MeshError) -> None:
        await self._fail_all(error)
