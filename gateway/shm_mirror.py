"""Register and unregister shared memory regions on every gateway that can see the same objects.

With several gateways on one host (``meshserve up --gateways N``: one port, connections spread by
SO_REUSEPORT) a client's register call reaches one gateway and its next request may reach another.
So a gateway that registers or unregisters a region announces it on :func:`subjects.gateway_shm`, and
every other gateway applies it to its own registry — a registration only where opening the key gives
the very same object (kernel boot id, device and inode: same host, same /dev/shm), an unregister
only of regions in the objects the announcing gateway removed — and acknowledges.  The call returns
to the client once every live peer acknowledged, or after ``stats_collect_timeout_s`` (logged), so a
request sent right after a register finds the region whichever gateway it reaches.

A gateway that starts later does not learn earlier registrations (as a restarted Triton forgets its
regions): clients register again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.shm import ObjectId, SharedMemoryRegistry
from meshserve import subjects
from meshserve.errors import MeshError

log = logging.getLogger(__name__)

__all__ = ["ShmMirror"]


class ShmMirror:
    """The gateway's register / unregister calls: this gateway's registry first (its errors are the
    client's answer), then the peers'.  Until :meth:`attach` it works on this gateway alone."""

    def __init__(self, registry: SharedMemoryRegistry, ack_timeout_s: float = 1.0) -> None:
        self._registry = registry
        self._ack_timeout_s = ack_timeout_s
        self._id = uuid.uuid4().hex
        self._nc: NATS | None = None
        self._live_peers: Callable[[], int] = lambda: 0
        self._sub: Subscription | None = None

    async def attach(self, nc: NATS, live_peers: Callable[[], int]) -> None:
        self._nc, self._live_peers = nc, live_peers
        self._sub = await nc.subscribe(subjects.gateway_shm(), cb=self._on_change)

    async def detach(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # the connection may be closing already
                pass
        self._nc = None

    async def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        object_id = self._registry.register(name, key, offset, byte_size)
        await self._announce(
            {
                "op": "register",
                "name": name,
                "key": key,
                "offset": offset,
                "byte_size": byte_size,
                "object": list(object_id),
            }
        )

    async def unregister(self, name: str) -> None:
        removed = self._registry.unregister(name)
        if removed:
            await self._announce(
                {"op": "unregister", "regions": [[one, list(object_id)] for one, object_id in removed]}
            )

    async def _announce(self, change: dict[str, Any]) -> None:
        expected = self._live_peers()
        if self._nc is None or expected == 0:
            return
        nc = self._nc
        inbox = nc.new_inbox()
        acks = 0
        all_in = asyncio.Event()

        async def on_ack(msg: Msg) -> None:
            nonlocal acks
            acks += 1
            if acks >= expected:
                all_in.set()

        sub = await nc.subscribe(inbox, cb=on_ack, max_msgs=expected)
        try:
            await nc.publish(
                subjects.gateway_shm(), json.dumps({"from": self._id, **change}).encode(), reply=inbox
            )
            await asyncio.wait_for(all_in.wait(), self._ack_timeout_s)
        except TimeoutError:
            log.warning(
                "shared memory %s: %d of %d peer gateways acknowledged within %.1fs",
                change["op"],
                acks,
                expected,
                self._ack_timeout_s,
            )
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # already gone after max_msgs
                pass

    async def _on_change(self, msg: Msg) -> None:
        try:
            change = json.loads(msg.data)
            if not isinstance(change, dict) or change.get("from") == self._id:
                return
            self._apply(change)
        except (ValueError, KeyError, TypeError):
            log.warning("undecodable shared memory announcement dropped")
        if msg.reply and self._nc is not None:
            await self._nc.publish(msg.reply, b"ok")

    def _apply(self, change: dict[str, Any]) -> None:
        if change["op"] == "register":
            try:
                self._registry.register(
                    str(change["name"]),
                    str(change["key"]),
                    int(change["offset"]),
                    int(change["byte_size"]),
                    expect=_object_id(change["object"]),
                )
            except MeshError as exc:  # another host's object, a name in use here, the limit: not ours
                log.debug("announced shared memory region %r not taken: %s", change["name"], exc)
        elif change["op"] == "unregister":
            for name, object_id in change["regions"]:
                self._registry.unregister_object(str(name), _object_id(object_id))


def _object_id(raw: Any) -> ObjectId:
    boot, dev, ino = raw
    return (str(boot), int(dev), int(ino))
