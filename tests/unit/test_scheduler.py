"""One model version's queue (batcher/scheduler.py) driven against fake instance links.

Each test runs the scheduler loop as a task on its own event loop and cancels it at the end.  Waits
are on events the fakes set, bounded by ``WAIT_S``; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from batcher.link import InFlight
from batcher.model_rules import ModelRules
from batcher.policy import BatchingRules, Pending
from batcher.queues import QueuePolicy
from batcher.scheduler import ModelScheduler, Queued
from meshserve.errors import DeadlineExceeded, MeshError, QueueFull, Unavailable, WorkerLost

WAIT_S = 1.0
SIG = ("x", (4,))
DYNAMIC = BatchingRules(max_batch_size=4, dynamic=True)
UNBATCHED = BatchingRules(max_batch_size=4, dynamic=False)


class FakeLink:
    """Duck-types ``InstanceLink``: records every batch sent; ``finish`` completes the oldest."""

    def __init__(self, instance_id: str, changed: asyncio.Event, max_inflight: int = 1) -> None:
        self.instance_id = instance_id
        self.accepting = True
        self.inflight: dict[int, InFlight] = {}
        self.max_inflight = max_inflight
        self.sent: list[InFlight] = []
        self._changed = changed

    @property
    def free(self) -> bool:
        return self.accepting and len(self.inflight) < self.max_inflight

    async def send(self, flight: InFlight) -> None:
        self.inflight[flight.batch.batch_id] = flight
        self.sent.append(flight)
        self._changed.set()

    def finish(self) -> InFlight:
        return self.inflight.pop(next(iter(self.inflight)))


class Harness:
    def __init__(self, rules: BatchingRules = DYNAMIC, max_queue_size: int = 100) -> None:
        self.changed = asyncio.Event()
        self.errors: list[tuple[Queued, MeshError]] = []
        model_rules = ModelRules(
            batching=rules, policies=(QueuePolicy(),), default_level=1, ragged_inputs=frozenset()
        )
        self.scheduler = ModelScheduler("m", 1, model_rules, max_queue_size, self.reply_error)
        self.task: asyncio.Task[None] | None = None
        self.on_error: Callable[[Queued], None] | None = None

    async def reply_error(self, item: Queued, error: MeshError) -> None:
        self.errors.append((item, error))
        if self.on_error is not None:
            self.on_error(item)
        await asyncio.sleep(0)  # publishing an answer may yield to other tasks
        self.changed.set()

    def link(self, instance_id: str = "w1", max_inflight: int = 1) -> FakeLink:
        link = FakeLink(instance_id, self.changed, max_inflight)
        self.scheduler.add_link(link)  # type: ignore[arg-type]
        return link

    def admit(self, item: Queued) -> None:
        assert self.scheduler.admit(item) is None

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition`` holds, re-checking whenever a fake records something."""
        deadline = time.monotonic() + WAIT_S
        while not condition():
            if self.task is not None and self.task.done():
                self.task.result()  # the loop died: raise its error
                raise AssertionError("the scheduler loop ended")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("condition not reached in time")
            self.changed.clear()
            waiter = asyncio.ensure_future(self.changed.wait())
            others = {waiter} | ({self.task} if self.task is not None else set())
            await asyncio.wait(others, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    async def settle(self) -> None:
        """Let the loop run every step it can take without time passing."""
        for _ in range(20):
            await asyncio.sleep(0)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Harness]:
        self.task = asyncio.create_task(self.scheduler.run())
        try:
            yield self
        finally:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def queued(
    request_id: str, rows: int = 1, deadline_in_s: float | None = None, arrival_s: float | None = None
) -> Queued:
    now = time.monotonic()
    return Queued(
        pending=Pending(now if arrival_s is None else arrival_s, rows, SIG),
        raw=f"raw-{request_id}".encode(),
        reply_to=f"_INBOX.{request_id}",
        request_id=request_id,
        model_name="m",
        model_version=1,
        deadline_s=None if deadline_in_s is None else now + deadline_in_s,
    )


def ids(flight: InFlight) -> list[str]:
    return [item.request_id for item in flight.items]  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------
# Admission
# --------------------------------------------------------------------------------------------------


def test_admission_without_a_live_instance_is_unavailable() -> None:
    async def scenario() -> None:
        h = Harness()
        error = h.scheduler.admit(queued("a"))
        assert isinstance(error, Unavailable)
        assert str(error) == "model 'm' version 1 has no live instance"
        link = h.link()
        link.accepting = False  # leaving: takes no new work
        error = h.scheduler.admit(queued("b"))
        assert isinstance(error, Unavailable)
        assert h.scheduler.depth == 0
        link.accepting = True
        assert h.scheduler.admit(queued("c")) is None
        assert h.scheduler.depth == 1

    asyncio.run(scenario())


def test_admission_beyond_the_queue_bound_is_queue_full() -> None:
    async def scenario() -> None:
        h = Harness(max_queue_size=2)
        h.link()
        h.admit(queued("a"))
        h.admit(queued("b"))
        error = h.scheduler.admit(queued("c"))
        assert isinstance(error, QueueFull)
        assert error.http_status == 503
        assert str(error) == (
            "Exceeds maximum queue size: model 'm' version 1 has 2 requests queued (raise --max-queue-size / MESHSERVE_MAX_QUEUE_SIZE)"
        )
        assert h.scheduler.depth == 2

    asyncio.run(scenario())


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


def test_queued_requests_go_as_one_batch_to_a_free_instance() -> None:
    async def scenario() -> None:
        h = Harness(DYNAMIC)
        link = h.link()
        for rid in ("a", "b", "c"):
            h.admit(queued(rid))
        async with h.running():
            await h.until(lambda: len(link.sent) == 1)
            (flight,) = link.sent
            assert ids(flight) == ["a", "b", "c"]
            assert [i.request for i in flight.batch.items] == [b"raw-a", b"raw-b", b"raw-c"]
            assert [i.reply_to for i in flight.batch.items] == ["_INBOX.a", "_INBOX.b", "_INBOX.c"]
            assert flight.batch.batch_id in link.inflight
            assert h.scheduler.depth == 0
            assert h.errors == []

    asyncio.run(scenario())


def test_a_busy_instance_gets_the_next_batch_only_when_it_frees_up() -> None:
    async def scenario() -> None:
        h = Harness(DYNAMIC)
        link = h.link()
        async with h.running():
            h.admit(queued("a"))
            await h.until(lambda: len(link.sent) == 1)
            h.admit(queued("b"))
            h.admit(queued("c"))
            await h.settle()
            assert len(link.sent) == 1  # busy: nothing more sent
            assert h.scheduler.depth == 2
            link.finish()
            h.scheduler.notify()
            await h.until(lambda: len(link.sent) == 2)
            assert ids(link.sent[1]) == ["b", "c"]
            assert link.sent[0].batch.batch_id != link.sent[1].batch.batch_id

    asyncio.run(scenario())


def test_batches_never_exceed_max_batch_size_in_rows() -> None:
    async def scenario() -> None:
        h = Harness(DYNAMIC)  # max_batch_size 4
        link = h.link(max_inflight=3)
        for rid, rows in (("a", 2), ("b", 1), ("c", 2), ("d", 2)):
            h.admit(queued(rid, rows=rows))
        async with h.running():
            await h.until(lambda: len(link.sent) == 2)
            assert [ids(f) for f in link.sent] == [["a", "b"], ["c", "d"]]

    asyncio.run(scenario())


def test_without_dynamic_batching_each_request_goes_alone_to_free_instances() -> None:
    async def scenario() -> None:
        h = Harness(UNBATCHED)
        one, two = h.link("w1"), h.link("w2")
        for rid in ("a", "b", "c"):
            h.admit(queued(rid))
        async with h.running():
            await h.until(lambda: len(one.sent) + len(two.sent) == 2)
            await h.settle()
            assert [ids(f) for f in one.sent + two.sent] == [["a"], ["b"]]
            assert h.scheduler.depth == 1
            two.finish()
            h.scheduler.notify()
            await h.until(lambda: len(two.sent) == 2)
            assert ids(two.sent[1]) == ["c"]

    asyncio.run(scenario())


def test_queue_delay_holds_a_partial_batch_until_it_is_due() -> None:
    async def scenario() -> None:
        h = Harness(BatchingRules(max_batch_size=4, dynamic=True, max_queue_delay_s=0.02))
        link = h.link()
        async with h.running():
            h.admit(queued("a"))
            await h.settle()
            assert link.sent == []  # waiting for more requests
            h.admit(queued("b"))
            start = time.monotonic()
            await h.until(lambda: len(link.sent) == 1)  # the loop's own timer fires
            assert time.monotonic() - start < WAIT_S
            assert ids(link.sent[0]) == ["a", "b"]

    asyncio.run(scenario())


def test_a_full_batch_goes_at_once_despite_the_queue_delay() -> None:
    async def scenario() -> None:
        h = Harness(BatchingRules(max_batch_size=2, dynamic=True, max_queue_delay_s=60.0))
        link = h.link()
        async with h.running():
            h.admit(queued("a"))
            await h.settle()
            assert link.sent == []
            h.admit(queued("b"))
            await h.until(lambda: len(link.sent) == 1)
            assert ids(link.sent[0]) == ["a", "b"]

    asyncio.run(scenario())


# --------------------------------------------------------------------------------------------------
# Requests that cannot run
# --------------------------------------------------------------------------------------------------


def test_requests_past_their_deadline_are_answered_and_never_sent() -> None:
    async def scenario() -> None:
        h = Harness(DYNAMIC)
        link = h.link()
        h.admit(queued("late", deadline_in_s=-0.001))
        h.admit(queued("ok", deadline_in_s=30.0))
        async with h.running():
            await h.until(lambda: len(link.sent) == 1 and len(h.errors) == 1)
            ((item, error),) = h.errors
            assert item.request_id == "late"
            assert isinstance(error, DeadlineExceeded)
            assert str(error) == "Request timeout expired while queued in the batcher"
            assert ids(link.sent[0]) == ["ok"]

    asyncio.run(scenario())


def test_deadline_passing_while_the_instance_is_busy_is_answered_on_time() -> None:
    async def scenario() -> None:
        h = Harness(DYNAMIC)
        link = h.link()
        async with h.running():
            h.admit(queued("first"))
            await h.until(lambda: len(link.sent) == 1)
            h.admit(queued("waits", deadline_in_s=0.02))
            h.admit(queued("patient"))
            await h.until(lambda: len(h.errors) == 1)  # no event but the deadline wakes the loop
            assert h.errors[0][0].request_id == "waits"
            assert isinstance(h.errors[0][1], DeadlineExceeded)
            link.finish()
            h.scheduler.notify()
            await h.until(lambda: len(link.sent) == 2)
            assert ids(link.sent[1]) == ["patient"]

    asyncio.run(scenario())


def test_a_request_arriving_while_an_expiry_is_answered_is_not_lost() -> None:
    async def scenario() -> None:
        h = Harness(DYNAMIC)
        link = h.link()

        def arrive(item: Queued) -> None:
            if item.request_id == "late":
                h.admit(queued("arrives"))  # another request lands while the answer is published

        h.on_error = arrive
        h.admit(queued("late", deadline_in_s=-0.001))
        h.admit(queued("also-late", deadline_in_s=-0.001))
        async with h.running():
            await h.until(lambda: len(link.sent) == 1)
            assert [item.request_id for item, _ in h.errors] == ["late", "also-late"]
            assert ids(link.sent[0]) == ["arrives"]

    asyncio.run(scenario())


def test_queued_requests_fail_when_the_last_instance_leaves() -> None:
    async def scenario() -> None:
        h = Harness(DYNAMIC)
        link = h.link()
        async with h.running():
            h.admit(queued("a"))
            await h.until(lambda: len(link.sent) == 1)
            h.admit(queued("b"))
            h.admit(queued("c"))
            assert h.scheduler.remove_link("w1") is link
            await h.until(lambda: len(h.errors) == 2)
            assert [item.request_id for item, _ in h.errors] == ["b", "c"]
            assert all(isinstance(e, Unavailable) for _, e in h.errors)
            assert str(h.errors[0][1]) == "model 'm' version 1 has no live instance"
            assert h.scheduler.depth == 0
            assert h.scheduler.admit(queued("d")) is not None

    asyncio.run(scenario())


def test_fail_lost_answers_every_request_of_every_lost_flight() -> None:
    async def scenario() -> None:
        h = Harness(DYNAMIC)
        link = h.link(max_inflight=2)
        async with h.running():
            h.admit(queued("a"))
            h.admit(queued("b"))
            await h.until(lambda: len(link.sent) == 1)
            h.admit(queued("c"))
            await h.until(lambda: len(link.sent) == 2)
            flights = list(link.inflight.values())
            link.inflight.clear()
            link.accepting = False  # as the batcher does: a lost link leaves the pool first
            h.scheduler.remove_link(link.instance_id)
            await h.scheduler.fail_lost(flights, "worker w1 at 127.0.0.1:1 lost: UNAVAILABLE")
        assert [item.request_id for item, _ in h.errors] == ["a", "b", "c"]
        for _, error in h.errors:
            assert isinstance(error, WorkerLost)
            assert str(error) == "worker w1 at 127.0.0.1:1 lost: UNAVAILABLE"

    asyncio.run(scenario())


def test_a_lost_batch_is_retried_once_on_another_instance() -> None:
    async def scenario() -> None:
        h = Harness(DYNAMIC)
        first = h.link("w1")
        async with h.running():
            h.admit(queued("a"))
            await h.until(lambda: len(first.sent) == 1)
            second = h.link("w2")
            flights = list(first.inflight.values())
            first.inflight.clear()
            first.accepting = False
            h.scheduler.remove_link("w1")
            await h.scheduler.fail_lost(flights, "w1 lost")
            await h.until(lambda: len(second.sent) == 1)
            assert [q.request_id for q in second.sent[0].items] == ["a"]  # type: ignore[attr-defined]
            assert h.errors == []
            # lost a second time: answered, not retried again
            flights = list(second.inflight.values())
            second.inflight.clear()
            h.link("w3")
            await h.scheduler.fail_lost(flights, "w2 lost")
        assert [(item.request_id, str(error)) for item, error in h.errors] == [("a", "w2 lost")]

    asyncio.run(scenario())


def test_drain_answers_everything_queued() -> None:
    async def scenario() -> None:
        h = Harness(DYNAMIC)
        link = h.link()
        for rid in ("a", "b", "c"):
            h.admit(queued(rid))
        link.accepting = False  # leaving: nothing more is dispatched to it
        async with h.running():
            await h.settle()
            assert link.sent == []
            await h.scheduler.drain(Unavailable("batcher is shutting down"))
            assert h.scheduler.depth == 0
        assert [item.request_id for item, _ in h.errors] == ["a", "b", "c"]
        assert all(str(e) == "batcher is shutting down" for _, e in h.errors)

    asyncio.run(scenario())


@pytest.mark.parametrize("rules", [DYNAMIC, UNBATCHED])
def test_notify_without_work_sends_nothing(rules: BatchingRules) -> None:
    async def scenario() -> None:
        h = Harness(rules)
        link = h.link()
        async with h.running():
            h.scheduler.notify()
            await h.settle()
            assert link.sent == []
            assert h.errors == []
            h.admit(queued("a"))
            await h.until(lambda: len(link.sent) == 1)

    asyncio.run(scenario())


def test_a_cancelled_request_leaves_the_queue_unanswered_and_never_runs() -> None:
    async def scenario() -> None:
        h = Harness(UNBATCHED)
        link = h.link()
        for rid in ("a", "b", "c"):
            h.admit(queued(rid))
        async with h.running():
            await h.until(lambda: len(link.sent) == 1)  # "a" runs; "b" and "c" wait
            assert h.scheduler.cancel("_INBOX.b") == 1
            assert h.scheduler.cancel("_INBOX.b") == 0  # already gone
            assert h.scheduler.cancel("_INBOX.a") == 0  # already sent: the worker's business
            link.finish()
            h.scheduler.notify()
            await h.until(lambda: len(link.sent) == 2)
            link.finish()
            h.scheduler.notify()
            await h.settle()
        assert [item.request_id for flight in link.sent for item in flight.items] == ["a", "c"]  # type: ignore[attr-defined]
        assert h.errors == [] and h.scheduler.cancelled == 1 and h.scheduler.depth == 0

    asyncio.run(scenario())


def _rules(batching: BatchingRules, *policies: QueuePolicy) -> ModelRules:
    return ModelRules(
        batching=batching, policies=policies or (QueuePolicy(),), default_level=1, ragged_inputs=frozenset()
    )


def test_a_reloaded_config_replaces_the_batching_rules() -> None:
    async def scenario() -> None:
        h = Harness(DYNAMIC)
        h.scheduler.update_rules(_rules(UNBATCHED))
        assert h.scheduler.rules.batching == UNBATCHED

    asyncio.run(scenario())


def test_new_queue_policies_apply_only_to_an_empty_queue() -> None:
    async def scenario() -> None:
        h = Harness(DYNAMIC)
        two_levels = _rules(UNBATCHED, QueuePolicy(max_queue_size=1), QueuePolicy())
        h.scheduler.update_rules(two_levels)  # nothing queued: the queues are rebuilt
        assert h.scheduler.rules.policies == two_levels.policies
        h.link()
        assert h.scheduler.admit(queued("r1")) is None
        h.scheduler.update_rules(_rules(DYNAMIC))  # one queued: the levels stay, the batching changes
        assert h.scheduler.rules.policies == two_levels.policies
        assert h.scheduler.rules.batching == DYNAMIC

    asyncio.run(scenario())
