"""Mesh-wide statistics: every gateway counts only the requests it carried, so one gateway asks the
others over NATS and adds their counts to its own before it answers ``ModelStatistics``.

Each gateway publishes a heartbeat on :func:`subjects.gateway_announce` (its id) and keeps the set of
peers it heard lately, so a statistics call knows how many answers to wait for: it publishes one
question on :func:`subjects.gateway_stats` with its own reply inbox, takes answers until every live
peer answered or ``stats_collect_timeout_s`` passed, and merges what came (a peer that does not
answer in time is left out and logged, never waited on past the bound).  Prometheus needs none of
this: it scrapes every gateway's metrics port and sums there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.stats import merge_statistics
from meshserve import subjects

log = logging.getLogger(__name__)

__all__ = ["GatewayPeers", "StatsKey"]

StatsKey = tuple[str, int]
LocalStats = Callable[[list[StatsKey]], list[dict[str, Any]]]


class GatewayPeers:
    def __init__(
        self,
        nc: NATS,
        local_stats: LocalStats,
        heartbeat_s: float = 2.0,
        collect_timeout_s: float = 1.0,
    ) -> None:
        self._nc = nc
        self._local_stats = local_stats
        self._heartbeat_s = heartbeat_s
        self._collect_timeout_s = collect_timeout_s
        self.id = uuid.uuid4().hex
        self._seen: dict[str, float] = {}
        self._subs: list[Subscription] = []
        self._beat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subs.append(await self._nc.subscribe(subjects.gateway_announce(), cb=self._on_announce))
        self._subs.append(await self._nc.subscribe(subjects.gateway_stats(), cb=self._on_stats_question))
        self._beat = asyncio.create_task(self._heartbeat())

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be closing already
                pass

    def live_peers(self) -> int:
        """Other gateways heard within three heartbeats."""
        horizon = time.monotonic() - 3 * self._heartbeat_s
        self._seen = {peer: seen for peer, seen in self._seen.items() if seen >= horizon}
        return len(self._seen)

    async def statistics(self, keys: list[StatsKey]) -> list[dict[str, Any]]:
        """Statistics of ``keys`` summed over this gateway and every live peer, in ``keys`` order."""
        local = self._local_stats(keys)
        expected = self.live_peers()
        if expected == 0 or not keys:
            return local
        answers = await self._ask_peers(keys, expected)
        merged = []
        for index, own in enumerate(local):
            parts = [own] + [answer[index] for answer in answers if index < len(answer)]
            merged.append(merge_statistics(parts))
        return merged

    async def _ask_peers(self, keys: list[StatsKey], expected: int) -> list[list[dict[str, Any]]]:
        inbox = self._nc.new_inbox()
        answers: list[list[dict[str, Any]]] = []
        all_in = asyncio.Event()

        async def on_answer(msg: Msg) -> None:
            try:
                answer = json.loads(msg.data)
            except ValueError:
                log.warning("undecodable statistics answer from a peer gateway dropped")
                return
            if isinstance(answer, list) and len(answer) == len(keys):
                answers.append(answer)
            if len(answers) >= expected:
                all_in.set()

        sub = await self._nc.subscribe(inbox, cb=on_answer, max_msgs=expected)
        try:
            question = {"from": self.id, "keys": [[name, version] for name, version in keys]}
            await self._nc.publish(subjects.gateway_stats(), json.dumps(question).encode(), reply=inbox)
            await asyncio.wait_for(all_in.wait(), self._collect_timeout_s)
        except TimeoutError:
            log.warning(
                "statistics: %d of %d peer gateways answered within %.1fs; answering with theirs and ours",
                len(answers),
                expected,
                self._collect_timeout_s,
            )
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # already gone after max_msgs
                pass
        return list(answers)

    async def _on_announce(self, msg: Msg) -> None:
        peer = msg.data.decode(errors="replace")
        if not peer or peer == self.id:
            return
        new = peer not in self._seen
        self._seen[peer] = time.monotonic()
        if new:  # a gateway that just started learns of us now, not one heartbeat later
            await self._nc.publish(subjects.gateway_announce(), self.id.encode())

    async def _on_stats_question(self, msg: Msg) -> None:
        try:
            question = json.loads(msg.data)
            if question.get("from") == self.id or not msg.reply:
                return
            keys = [(str(name), int(version)) for name, version in question["keys"]]
        except (ValueError, KeyError, TypeError):
            log.warning("undecodable statistics question dropped")
            return
        await self._nc.publish(msg.reply, json.dumps(self._local_stats(keys)).encode())

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self._nc.publish(subjects.gateway_announce(), self.id.encode())
            except Exception as exc:  # a reconnecting connection: try again next beat
                log.debug("gateway heartbeat not sent: %s", exc)
            await asyncio.sleep(self._heartbeat_s)
