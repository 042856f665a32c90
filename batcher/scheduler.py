"""One model version's queues: admit requests, ask the policy when a batch is ready, send it to a free
instance, and answer every request that cannot be run (queue full, timed out, instance lost).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from batcher.link import InFlight, InstanceLink
from batcher.model_rules import ModelRules
from batcher.policy import Pending, Reason, decide
from batcher.queues import PriorityQueues
from meshserve import tracing
from meshserve.errors import DeadlineExceeded, MeshError, QueueFull, Unavailable, WorkerLost
from meshserve.pb import mesh_pb2

log = logging.getLogger(__name__)

__all__ = ["ModelScheduler", "Queued", "ReplyError"]

ReplyError = Callable[["Queued", MeshError], Awaitable[None]]

_batch_ids = itertools.count(1)


@dataclass(slots=True)
class Queued:
    """A request waiting in a queue: the bytes to forward and what the policy and replies need."""

    pending: Pending
    raw: bytes
    reply_to: str
    request_id: str
    model_name: str
    model_version: int
    deadline_s: float | None
    """When the requester stops waiting (monotonic clock); None = never."""
    priority: int = 0
    """The request's ``priority`` parameter (0 = the model's default level)."""
    timeout_s: float = 0.0
    """The request's ``timeout`` parameter (0 = none); used when the queue policy allows overriding."""
    queue_deadline_s: float | None = None
    """Set on admission from the level's queue policy."""
    retried: bool = False
    """Already sent again once after its instance was lost."""
    ack_to: str = ""
    """Where the requester wants to hear who holds it (``meshserve/custody.py``); kept for a hand-off."""


class ModelScheduler:
    def __init__(
        self,
        model: str,
        version: int,
        rules: ModelRules,
        max_queue_size: int,
        reply_error: ReplyError,
        max_batch_bytes: int = 256 * 1024 * 1024,
        on_custody: Callable[[list[Queued], bool], None] | None = None,
    ) -> None:
        self.model, self.version = model, version
        self._on_custody = on_custody
        """Told when items go to a worker (True) or come back to a queue for a retry (False), so the
        requesters know who answers them (meshserve/custody.py)."""
        self.rules = rules
        self._max_queue_size = max_queue_size
        self._max_batch_bytes = max_batch_bytes
        self._reply_error = reply_error
        self._queues: PriorityQueues[Queued] = PriorityQueues(list(rules.policies), rules.default_level)
        self._links: dict[str, InstanceLink] = {}
        self._wake = asyncio.Event()
        self.cancelled = 0
        """Requests taken out of the queue because their requester went away."""
        self.sent_by_reason: Counter[Reason] = Counter()
        """Batches sent, by the policy's reason (the batcher's metrics read it)."""

    @property
    def depth(self) -> int:
        return len(self._queues)

    def update_rules(self, rules: ModelRules) -> None:
        """A reloaded model's new config (it arrives with its first new instance).  Batching rules
        apply from the next batch; new priority levels / queue policies only when nothing is queued
        (queued requests keep their levels), else the old ones stay until the next reload."""
        if rules == self.rules:
            return
        queues_change = (rules.policies, rules.default_level) != (
            self.rules.policies,
            self.rules.default_level,
        )
        if queues_change and len(self._queues):
            log.warning(
                "model '%s' version %d keeps its old queue policies: %d requests are queued",
                self.model,
                self.version,
                len(self._queues),
            )
            rules = dataclasses.replace(
                rules, policies=self.rules.policies, default_level=self.rules.default_level
            )
        elif queues_change:
            self._queues = PriorityQueues(list(rules.policies), rules.default_level)
        self.rules = rules
        self._wake.set()

    @property
    def links(self) -> dict[str, InstanceLink]:
        return self._links

    def admit(self, item: Queued) -> MeshError | None:
        """Queue a request, or say why not (the caller answers it)."""
        if not any(link.accepting for link in self._links.values()):
            return Unavailable(f"model '{self.model}' version {self.version} has no live instance")
        level = self._queues.level_of(item.priority)
        if self._queues.full(level):
            limit = self._queues.policy(level).max_queue_size
            return QueueFull(
                f"Exceeds maximum queue size: model '{self.model}' version {self.version} priority level "
                f"{level} holds {limit} requests (its queue policy's max_queue_size)"
            )
        if len(self._queues) >= self._max_queue_size:
            return QueueFull(
                f"Exceeds maximum queue size: model '{self.model}' version {self.version} has "
                f"{self._max_queue_size} requests queued (raise --max-queue-size / MESHSERVE_MAX_QUEUE_SIZE)"
            )
        item.queue_deadline_s = self._queues.policy(level).queue_deadline(
            item.pending.arrival_s, item.timeout_s
        )
        self._queues.push(item, level)
        self._wake.set()
        return None

    def cancel(self, reply_to: str) -> int:
        """The requester behind ``reply_to`` is gone: drop its request from the queue (nobody to answer).
        Returns how many were dropped (0: not queued here: already sent, answered, or elsewhere)."""
        removed = self._queues.remove_where(lambda item: item.reply_to == reply_to)
        if removed:
            self.cancelled += len(removed)
            self._wake.set()
        return len(removed)

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
            try:
                wake_at = await self._dispatch_ready()
            except Exception:  # never let one bad batch stop the model's scheduling for good
                log.exception("scheduling %s v%d failed; retrying shortly", self.model, self.version)
                wake_at = time.monotonic() + 0.1

    async def _dispatch_ready(self) -> float | None:
        """Send every batch that is ready now; return when to look again (None = on the next event)."""
        while True:
            now = time.monotonic()
            await self._expire(now)
            if not self._links and len(self._queues):
                await self.drain(
                    Unavailable(f"model '{self.model}' version {self.version} has no live instance")
                )
            link = next((lk for lk in self._links.values() if lk.free), None)
            if link is None or not len(self._queues):
                return self._queues.next_due()
            window = itertools.islice(self._queues.ordered(), max(1, self.rules.batching.max_batch_size) + 1)
            decision = decide([q.pending for q in window], self.rules.batching, now)
            if decision.take == 0:
                due = [t for t in (decision.wake_at_s, self._queues.next_due()) if t is not None]
                return min(due) if due else None
            if decision.reason is not None:
                self.sent_by_reason[decision.reason] += 1
            await self._send(link, self._queues.pop_front(self._fit_bytes(decision.take)), now)

    def _fit_bytes(self, take: int) -> int:
        """At most ``take`` requests from the front whose bytes fit one batch frame (at least one)."""
        total = 0
        for count, item in enumerate(itertools.islice(self._queues.ordered(), take)):
            total += len(item.raw)
            if count and total > self._max_batch_bytes:
                return count
        return take

    async def _send(self, link: InstanceLink, items: list[Queued], now: float) -> None:
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
        if tracing.enabled():  # off by default; re-reading the requests costs only when on
            for q, item in zip(items, batch.items, strict=True):
                request = mesh_pb2.InferRequest.FromString(q.raw)
                tracing.record_span(
                    "batcher queue", request, dispatch_unix_ns - item.queue_ns, dispatch_unix_ns
                )
        await link.send(InFlight(batch=batch, sent_s=now, items=list(items)))
        if self._on_custody is not None:
            self._on_custody(items, True)

    async def _expire(self, now: float) -> None:
        expired = self._queues.expire(now)
        for item in expired.rejected:
            await self._reply_error(item, Unavailable("Request timeout expired"))
        for item in expired.abandoned:
            await self._reply_error(
                item, DeadlineExceeded("Request timeout expired while queued in the batcher")
            )

    async def fail_lost(self, flights: list[InFlight], reason: str) -> None:
        """A worker went away with batches in flight.  Inference is idempotent, so each request is
        retried once at the head of its queue when another instance is live; otherwise (or on its
        second loss, or for a decoupled model whose stream may have begun) it is answered with the
        reason."""
        can_retry = not self.rules.decoupled and any(link.accepting for link in self._links.values())
        retry: dict[int, list[Queued]] = {}
        for flight in flights:
            for item in flight.items:
                assert isinstance(item, Queued)
                if can_retry and not item.retried:
                    item.retried = True
                    retry.setdefault(self._queues.level_of(item.priority), []).append(item)
                else:
                    await self._reply_error(item, WorkerLost(reason))
        for level, items in retry.items():
            log.warning(
                "retrying %d requests of %s v%d on another instance", len(items), self.model, self.version
            )
            self._queues.push_front(items, level)
            if self._on_custody is not None:
                self._on_custody(items, False)
        if retry:
            self._wake.set()

    def take_all(self) -> list[Queued]:
        """Empty the queues without answering (the caller hands the requests on)."""
        return self._queues.drain()

    async def drain(self, error: MeshError) -> None:
        for item in self._queues.drain():
            await self._reply_error(item, error)
