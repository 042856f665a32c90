"""Requests whose requesters went away, as this worker heard them on ``meshserve.cancel.<model>.<version>``.

A request is known by its reply subject (unique per request).  The book is bounded: it keeps the
newest ``capacity`` subjects, enough for every request a worker can hold; an older cancel is only
a missed optimisation (the gateway drops a reply nobody waits for).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["CancelBook"]


class CancelBook:
    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._subjects: OrderedDict[str, None] = OrderedDict()

    def add(self, reply_to: str) -> None:
        self._subjects[reply_to] = None
        while len(self._subjects) > self._capacity:
            self._subjects.popitem(last=False)

    def __contains__(self, reply_to: object) -> bool:
        return reply_to in self._subjects

    def __len__(self) -> int:
        return len(self._subjects)
