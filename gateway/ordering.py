"""``dynamic_batching { preserve_ordering: true }`` (Triton's DB8): a model version's responses leave
this gateway in the order its requests arrived here, even when instances finish out of order.

Each request takes a place in a chain: it may release its response (or error) only once the request
before it has released its own.  A request waits for its predecessor at most until its own deadline,
then goes anyway (logged): a stuck predecessor must not hold every later request past its deadline.
A cancelled request leaves the chain at once.  The order is per gateway process: requests that arrive
at different gateways have no common arrival order to keep.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

__all__ = ["OrderedReleases", "Place"]

Key = tuple[str, int]


class Place:
    """One request's place in its model version's chain."""

    __slots__ = ("_chain", "key", "mine", "previous")

    def __init__(self, chain: OrderedReleases, key: Key, previous: asyncio.Future[None] | None) -> None:
        self._chain = chain
        self.key = key
        self.previous = previous
        self.mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def wait_turn(self, timeout_s: float) -> None:
        """Wait (bounded) until every earlier request has released, then release this one."""
        try:
            if self.previous is not None and not self.previous.done():
                await asyncio.wait_for(asyncio.shield(self.previous), max(0.0, timeout_s))
        except TimeoutError:
            log.warning(
                "preserve_ordering: %s v%d: an earlier request is still running; releasing", *self.key
            )
        finally:
            self._release()

    def leave(self) -> None:
        """Leave the chain without a response to order (the request was cancelled): later requests
        still wait for the earlier ones, as if this one had never come."""
        if self.previous is None or self.previous.done():
            self._release()
        else:
            self.previous.add_done_callback(lambda _: self._release())

    def _release(self) -> None:
        if not self.mine.done():
            self.mine.set_result(None)
        self._chain.forget(self)


class OrderedReleases:
    def __init__(self) -> None:
        self._last: dict[Key, Place] = {}

    def enter(self, key: Key) -> Place:
        """Take the next place for ``key`` (call in arrival order: before any await)."""
        last = self._last.get(key)
        place = Place(self, key, last.mine if last is not None else None)
        self._last[key] = place
        return place

    def forget(self, place: Place) -> None:
        if self._last.get(place.key) is place:
            del self._last[place.key]

    def __len__(self) -> int:
        """Model versions with a request in their chain (for tests: empty when all is done)."""
        return len(self._last)
