"""When is a batch ready?  Triton's dynamic-batching rules as a pure function of the queue and the clock.

Called only when an instance of the model is free (batches are pulled, rule DB4 in the notes).
Rules (shared/notes/triton-reference.md §3.1):
- DB3: a batch's size is the sum of its requests' rows, never above ``max_batch_size``.
- DB4: scan in arrival order; stop at the first request that would overflow or whose non-batch
  shapes (its ``signature``) differ from the head's.
- DB2/DB5: preferred sizes default to ``[max_batch_size]``; when the scan reaches a preferred size,
  send the largest preferred prefix now.
- DB6: with no queue delay, send what the scan found now.
- DB7: with a delay, wait until the oldest request has waited ``max_queue_delay``, unless the scan
  is blocked (next request cannot join) — then waiting cannot grow the batch, so send now.
- DB11: a model without dynamic batching sends each request alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = ["BatchingRules", "Decision", "Pending", "Reason", "decide"]


class Reason(Enum):
    """Why a batch was sent (a metric label later)."""

    PREFERRED_SIZE = "preferred_size"
    MAX_BATCH_SIZE = "max_batch_size"
    BLOCKED = "blocked"
    NO_DELAY = "no_delay"
    QUEUE_DELAY = "queue_delay"
    NOT_BATCHING = "not_batching"


@dataclass(frozen=True, slots=True)
class BatchingRules:
    max_batch_size: int
    """0 = the model does not batch."""
    dynamic: bool
    """The config has a ``dynamic_batching`` block."""
    preferred_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0

    @property
    def effective_preferred(self) -> tuple[int, ...]:
        return self.preferred_sizes or ((self.max_batch_size,) if self.max_batch_size > 0 else ())


@dataclass(frozen=True, slots=True)
class Pending:
    """What the policy needs to know about one queued request."""

    arrival_s: float
    rows: int
    signature: Hashable
    """Requests batch together only when their signatures (non-batch shapes, inputs present) are equal."""


@dataclass(frozen=True, slots=True)
class Decision:
    take: int
    """How many requests from the head of the queue to send now (0 = none yet)."""
    wake_at_s: float | None = None
    """When to decide again if nothing else happens (None = only on a new arrival)."""
    reason: Reason | None = None


def decide(queue: Sequence[Pending], rules: BatchingRules, now_s: float) -> Decision:
    if not queue:
        return Decision(0)
    if rules.max_batch_size == 0 or not rules.dynamic:
        return Decision(1, reason=Reason.NOT_BATCHING)
    preferred = set(rules.effective_preferred)
    head = queue[0]
    rows = count = best_preferred = 0
    blocked = False
    for pending in queue:
        if pending.signature != head.signature or rows + pending.rows > rules.max_batch_size:
            blocked = True
            break
        rows += pending.rows
        count += 1
        if rows in preferred:
            best_preferred = count
    if count == 0:  # the head alone is larger than max_batch_size (the gateway should have refused it)
        return Decision(1, reason=Reason.MAX_BATCH_SIZE)
    if best_preferred:
        return Decision(best_preferred, reason=Reason.PREFERRED_SIZE)
    if rows >= rules.max_batch_size:
        return Decision(count, reason=Reason.MAX_BATCH_SIZE)
    if blocked:
        return Decision(count, reason=Reason.BLOCKED)
    if rules.max_queue_delay_s <= 0:
        return Decision(count, reason=Reason.NO_DELAY)
    due = head.arrival_s + rules.max_queue_delay_s
    if now_s >= due:
        return Decision(count, reason=Reason.QUEUE_DELAY)
    return Decision(0, wake_at_s=due)
