"""Connecting to NATS the same way in every service: named client, bounded reconnects, logged events."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client

from meshserve.errors import Unavailable

__all__ = ["connect_nats"]

log = logging.getLogger(__name__)


async def connect_nats(url: str, name: str, connect_timeout_s: float = 5.0) -> Client:
    """Connect, reconnecting forever after a first success (NATS restarts must not kill a service)."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected from %s", url)

    async def on_reconnect() -> None:
        log.info("nats reconnected to %s", url)

    try:
        return await nats.connect(
            url,
            name=name,
            connect_timeout=connect_timeout_s,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            pending_size=64 * 1024 * 1024,
        )
    except Exception as exc:
        raise Unavailable(f"cannot connect to NATS at {url}: {exc}") from exc
