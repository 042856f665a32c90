"""Priority levels and queue policies of one model version (Triton's DB9, DB10), as pure data structures.

Level 1 is the highest priority.  Each level holds two FIFOs: requests in time, then requests whose
queue timeout passed under ``timeout_action: DELAY`` (they wait behind every request of their level
that is still in time).  Batches are formed from :meth:`PriorityQueues.ordered`: level 1, its
delayed requests, level 2, … — and taken from its front with :meth:`PriorityQueues.pop_front`.
No clock is read here: callers pass ``now_s``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

__all__ = ["Expired", "PriorityQueues", "QueueItem", "QueuePolicy"]


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ``ModelQueuePolicy`` for one priority level."""

    max_queue_size: int = 0
    """0 = unbounded (the batcher's own ``--max-queue-size`` still bounds the model)."""
    default_timeout_s: float = 0.0
    """0 = requests never time out in the queue (unless they ask, when overriding is allowed)."""
    allow_timeout_override: bool = False
    """A request's ``timeout`` parameter may shorten (never lengthen) ``default_timeout_s``."""
    delay_on_timeout: bool = False
    """``timeout_action: DELAY`` (else REJECT)."""

    def queue_deadline(self, arrival_s: float, request_timeout_s: float) -> float | None:
        """When a request arriving at ``arrival_s`` times out in the queue (None = never)."""
        timeout = self.default_timeout_s
        if self.allow_timeout_override and request_timeout_s > 0:
            timeout = min(timeout, request_timeout_s) if timeout > 0 else request_timeout_s
        return arrival_s + timeout if timeout > 0 else None


class QueueItem(Protocol):
    queue_deadline_s: float | None
    """When the queue policy acts on it; None = never (or already delayed)."""
    deadline_s: float | None
    """When its requester stops waiting; None = never."""


Item = TypeVar("Item", bound=QueueItem)


@dataclass(slots=True)
class Expired(Generic[Item]):
    rejected: list[Item] = field(default_factory=list)
    """Queue timeout passed under REJECT: answer "Request timeout expired"."""
    abandoned: list[Item] = field(default_factory=list)
    """The requester's own deadline passed: answer DEADLINE_EXCEEDED."""


@dataclass(slots=True)
class _Level(Generic[Item]):
    policy: QueuePolicy
    in_time: deque[Item] = field(default_factory=deque)
    delayed: deque[Item] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self.in_time) + len(self.delayed)


class PriorityQueues(Generic[Item]):
    def __init__(self, policies: list[QueuePolicy], default_level: int = 1) -> None:
        if not policies:
            policies = [QueuePolicy()]
        self._levels: list[_Level[Item]] = [_Level(p) for p in policies]
        self.default_level = default_level if 1 <= default_level <= len(policies) else 1

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    @property
    def level_count(self) -> int:
        return len(self._levels)

    def level_of(self, priority: int) -> int:
        """Triton's mapping: 0 (or a level that does not exist) means the default level."""
        return priority if 1 <= priority <= len(self._levels) else self.default_level

    def policy(self, level: int) -> QueuePolicy:
        return self._levels[level - 1].policy

    def full(self, level: int) -> bool:
        limit = self._levels[level - 1].policy.max_queue_size
        return limit > 0 and len(self._levels[level - 1]) >= limit

    def push(self, item: Item, level: int) -> None:
        self._levels[level - 1].in_time.append(item)

    def ordered(self) -> Iterator[Item]:
        for level in self._levels:
            yield from level.in_time
            yield from level.delayed

    def push_front(self, items: list[Item], level: int) -> None:
        """Put ``items`` back at the head of ``level``, in their order (a retry goes first)."""
        self._levels[level - 1].in_time.extendleft(reversed(items))

    def pop_front(self, count: int) -> list[Item]:
        taken: list[Item] = []
        for level in self._levels:
            for fifo in (level.in_time, level.delayed):
                while fifo and len(taken) < count:
                    taken.append(fifo.popleft())
        return taken

    def remove_where(self, predicate: Callable[[Item], bool]) -> list[Item]:
        """Take out every queued item for which ``predicate`` holds (a cancelled request)."""
        removed: list[Item] = []
        for level in self._levels:
            for name in ("in_time", "delayed"):
                fifo: deque[Item] = getattr(level, name)
                if any(predicate(item) for item in fifo):
                    removed.extend(item for item in fifo if predicate(item))
                    setattr(level, name, deque(item for item in fifo if not predicate(item)))
        return removed

    def drain(self) -> list[Item]:
        return self.pop_front(len(self))

    def expire(self, now_s: float) -> Expired[Item]:
        """Apply each level's timeout action to requests whose time has come; return those to answer."""
        out: Expired[Item] = Expired()
        for level in self._levels:
            if not any(_due(i, now_s) for fifo in (level.in_time, level.delayed) for i in fifo):
                continue
            keep: deque[Item] = deque()
            for item in level.in_time:
                if item.deadline_s is not None and item.deadline_s <= now_s:
                    out.abandoned.append(item)
                elif item.queue_deadline_s is not None and item.queue_deadline_s <= now_s:
                    if level.policy.delay_on_timeout:
                        item.queue_deadline_s = None
                        level.delayed.append(item)
                    else:
                        out.rejected.append(item)
                else:
                    keep.append(item)
            level.in_time = keep
            still: deque[Item] = deque()
            for item in level.delayed:
                if item.deadline_s is not None and item.deadline_s <= now_s:
                    out.abandoned.append(item)
                else:
                    still.append(item)
            level.delayed = still
        return out

    def next_due(self) -> float | None:
        """The earliest time :meth:`expire` would act."""
        times = [
            t
            for level in self._levels
            for fifo in (level.in_time, level.delayed)
            for item in fifo
            for t in (item.deadline_s, item.queue_deadline_s)
            if t is not None
        ]
        return min(times) if times else None


def _due(item: QueueItem, now_s: float) -> bool:
    return (item.deadline_s is not None and item.deadline_s <= now_s) or (
        item.queue_deadline_s is not None and item.queue_deadline_s <= now_s
    )
