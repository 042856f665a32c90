"""preserve_ordering's chain (gateway/ordering.py): releases in arrival order, bounded, cancel-safe."""

from __future__ import annotations

import asyncio

from gateway.ordering import OrderedReleases

KEY = ("m", 1)


def test_a_later_request_that_finishes_first_waits_for_the_earlier_ones() -> None:
    async def scenario() -> list[str]:
        chain = OrderedReleases()
        released: list[str] = []
        places = {name: chain.enter(KEY) for name in ("a", "b", "c")}

        async def finish(name: str, after_s: float) -> None:
            await asyncio.sleep(after_s)
            await places[name].wait_turn(5.0)
            released.append(name)

        await asyncio.gather(finish("a", 0.06), finish("b", 0.03), finish("c", 0.0))
        assert len(chain) == 0
        return released

    assert asyncio.run(scenario()) == ["a", "b", "c"]


def test_other_model_versions_do_not_wait() -> None:
    async def scenario() -> list[str]:
        chain = OrderedReleases()
        released: list[str] = []
        slow, other = chain.enter(KEY), chain.enter(("m", 2))

        async def finish(name: str, place: object, after_s: float) -> None:
            await asyncio.sleep(after_s)
            await place.wait_turn(5.0)  # type: ignore[attr-defined]
            released.append(name)

        await asyncio.gather(finish("slow", slow, 0.05), finish("other", other, 0.0))
        return released

    assert asyncio.run(scenario()) == ["other", "slow"]


def test_waiting_is_bounded_by_the_request_deadline() -> None:
    async def scenario() -> float:
        chain = OrderedReleases()
        chain.enter(KEY)  # never finishes
        second = chain.enter(KEY)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await second.wait_turn(0.05)
        return loop.time() - start

    assert 0.04 <= asyncio.run(scenario()) < 1.0


def test_a_request_that_leaves_lets_the_next_go() -> None:
    async def scenario() -> list[str]:
        chain = OrderedReleases()
        first, second, third = chain.enter(KEY), chain.enter(KEY), chain.enter(KEY)
        released: list[str] = []

        async def third_done() -> None:
            await third.wait_turn(5.0)
            released.append("third")

        task = asyncio.create_task(third_done())
        await asyncio.sleep(0.01)
        second.leave()  # cancelled: no response to order
        await asyncio.sleep(0.02)
        assert released == []  # still behind the first
        await first.wait_turn(5.0)
        released.append("first")
        await task
        assert len(chain) == 0
        return released

    assert asyncio.run(scenario()) == ["first", "third"]
