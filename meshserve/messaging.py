"""Connecting to NATS the same way in every service: named client, bounded reconnects, logged events."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import nats
import nats.errors
from nats.aio.client import Client

from meshserve.errors import Unavailable
from meshserve.settings import Limits

__all__ = ["NatsEvents", "connect_nats", "connect_service", "gave_up_reconnecting"]

log = logging.getLogger(__name__)

_gave_up: list[str] = []
"""URLs this process stopped reconnecting to (its exit code says so: ``gave_up_reconnecting``)."""


def gave_up_reconnecting() -> bool:
    """Whether a connection of this process ran out of reconnect attempts (the service exits 1)."""
    return bool(_gave_up)


@dataclass
class NatsEvents:
    """Listeners for the connection's life, added by whoever needs them (after connecting, too).

    ``disconnected``: the connection dropped (requests waiting for a reply will not get one);
    ``reconnected``: it is back; ``gave_up``: ``max_reconnect_attempts`` ran out and the client closed.
    """

    disconnected: list[Callable[[], None]] = field(default_factory=list)
    reconnected: list[Callable[[], None]] = field(default_factory=list)
    gave_up: list[Callable[[], None]] = field(default_factory=list)

    @staticmethod
    def fire(listeners: list[Callable[[], None]]) -> None:
        for listener in listeners:
            try:
                listener()
            except Exception:
                log.exception("a NATS connection listener failed")


async def connect_nats(
    url: str,
    name: str,
    connect_timeout_s: float = 5.0,
    *,
    reconnect_wait_s: float = 0.5,
    max_reconnect_attempts: int = -1,
    events: NatsEvents | None = None,
) -> Client:
    """Connect; after a first success, reconnect every ``reconnect_wait_s`` (-1 attempts = forever, so
    a NATS restart never kills a service; a bound makes the service stop once it runs out, for a
    supervisor to restart it)."""
    events = events if events is not None else NatsEvents()
    client: list[Client] = []

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected from %s", url)
        events.fire(events.disconnected)

    async def on_reconnect() -> None:
        log.info("nats reconnected to %s", url)
        events.fire(events.reconnected)

    async def on_closed() -> None:
        if client and isinstance(client[0].last_error, nats.errors.NoServersError):
            log.error("nats: gave up reconnecting to %s after %d attempts", url, max_reconnect_attempts)
            _gave_up.append(url)
            events.fire(events.gave_up)

    try:
        nc = await nats.connect(
            url,
            name=name,
            connect_timeout=connect_timeout_s,
            max_reconnect_attempts=max_reconnect_attempts,
            reconnect_time_wait=reconnect_wait_s,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            closed_cb=on_closed,
            pending_size=64 * 1024 * 1024,
        )
    except Exception as exc:
        raise Unavailable(f"cannot connect to NATS at {url}: {exc}") from exc
    client.append(nc)
    return nc


async def connect_service(url: str, name: str, limits: Limits, events: NatsEvents | None = None) -> Client:
    """A service's connection, with the reconnect bounds of its ``Limits``."""
    return await connect_nats(
        url,
        name,
        reconnect_wait_s=limits.nats_reconnect_wait_s,
        max_reconnect_attempts=limits.nats_max_reconnect_attempts,
        events=events,
    )
