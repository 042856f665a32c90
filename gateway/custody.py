"""Which batcher holds each request this gateway waits on, and which batchers are alive (pure
bookkeeping; the wire words are in ``meshserve/custody.py``, the actions in ``dispatcher.py``).

A request is tracked from its publish until its reply (or its requester giving up).  A batcher's
acknowledgement names it the holder; its heartbeats keep it alive.  :meth:`CustodyBook.orphans` returns
the requests whose holder has been silent for ``timeout_s``, and, when some batcher has just been found
dead, those nobody acknowledged within ``unacked_grace_s`` (the dead one took them before it could
say so; a live batcher acknowledges within milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshserve.custody import WITH_WORKER

__all__ = ["CustodyBook", "Held"]


@dataclass(slots=True)
class Held:
    """What is needed to publish a request again, and where it stands."""

    subject: str
    data: bytes
    deadline: float
    """Event-loop time at which the requester stops waiting."""
    published: float
    holder: str = ""
    """The batcher that acknowledged it; "" = none yet."""
    with_worker: bool = False
    """Its batcher sent it to a worker, which answers it whatever happens to the batcher."""
    resent: bool = False


class CustodyBook:
    def __init__(self, timeout_s: float, unacked_grace_s: float = 1.0) -> None:
        self.timeout_s = timeout_s
        self.unacked_grace_s = unacked_grace_s
        self._held: dict[str, Held] = {}
        self._seen: dict[str, float] = {}
        """Batcher id → when it last spoke (heartbeat or acknowledgement)."""

    def __len__(self) -> int:
        return len(self._held)

    def track(self, token: str, held: Held) -> None:
        self._held[token] = held

    def release(self, token: str) -> None:
        self._held.pop(token, None)

    def get(self, token: str) -> Held | None:
        return self._held.get(token)

    def acknowledged(self, batcher_id: str, tokens: list[str], now: float) -> None:
        """``tokens`` in the order the batcher wrote them; one marked ``WITH_WORKER`` is in a batch."""
        self._seen[batcher_id] = now
        for entry in tokens:
            held = self._held.get(entry.removeprefix(WITH_WORKER))
            if held is not None:
                held.holder, held.with_worker = batcher_id, entry.startswith(WITH_WORKER)

    def heartbeat(self, batcher_id: str, alive: bool, now: float) -> None:
        if alive:
            self._seen[batcher_id] = now
        elif batcher_id in self._seen:
            # it handed its queue on (the others acknowledge those within milliseconds) and its batches
            # in flight are answered: what it still holds is orphaned after the grace, not the timeout
            self._seen[batcher_id] = min(self._seen[batcher_id], now - self.timeout_s + self.unacked_grace_s)

    def reset_clock(self, now: float) -> None:
        """Our own NATS connection was down: silence was ours, not the batchers'."""
        for batcher_id in self._seen:
            self._seen[batcher_id] = now

    def live(self) -> list[str]:
        return sorted(self._seen)

    def orphans(self, now: float) -> list[tuple[str, Held]]:
        """Requests to resend or fail now; forgets the dead batchers."""
        dead = {b for b, seen in self._seen.items() if now - seen > self.timeout_s}
        if not dead:
            return []
        for batcher_id in dead:
            del self._seen[batcher_id]
        return [
            (token, held)
            for token, held in self._held.items()
            if (held.holder in dead and not held.with_worker)
            or (not held.holder and now - held.published > self.unacked_grace_s)
        ]

    def resent(self, token: str, now: float) -> None:
        held = self._held.get(token)
        if held is not None:
            held.holder, held.with_worker, held.resent, held.published = "", False, True, now
