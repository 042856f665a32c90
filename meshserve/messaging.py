"""Connecting to NATS the same way in every service: named client, bounded reconnects, logged events."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from meshserve.errors import Unavailable
from meshserve.settings import Limits

__all__ = [
    "NatsEvents",
    "NatsOptions",
    "configure_nats",
    "connect_nats",
    "connect_service",
    "gave_up_reconnecting",
    "nats_options",
]

log = logging.getLogger(__name__)

_gave_up: list[str] = []
"""URLs this process stopped reconnecting to (its exit code says so: ``gave_up_reconnecting``)."""


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """How every connection of this process authenticates to NATS, beyond what the URL says
    (``nats://user:password@host``, ``nats://token@host`` and ``tls://`` work as they are)."""

    creds: Path | None = None
    """A NATS credentials file (user JWT + nkey seed), ``--nats-creds``."""
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.creds is not None:
            kwargs["user_credentials"] = str(self.creds)
        if self.tls_ca is not None or self.tls_cert is not None:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(self.tls_ca) if self.tls_ca else None
            )
            if self.tls_cert is not None:
                context.load_cert_chain(str(self.tls_cert), str(self.tls_key) if self.tls_key else None)
            kwargs["tls"] = context
        return kwargs


_options = NatsOptions()


def configure_nats(options: NatsOptions) -> None:
    """Set once by the CLI, before any connection: every service connects with the same credentials."""
    global _options
    _options = options


def nats_options() -> NatsOptions:
    return _options


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
    first_connect_timeout_s: float = 30.0,
) -> Client:
    """Connect (the first connection within ``first_connect_timeout_s``, else ``Unavailable``); after a first success, reconnect every ``reconnect_wait_s`` (-1 attempts = forever, so
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
        # nats-py retries a failing first connection as often as later reconnects (forever at -1): a
        # wrong URL, scheme or certificate would hang the service before its ready line. Bound it.
        connecting = nats.connect(
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
            **_options.connect_kwargs(),
        )
        nc = await asyncio.wait_for(connecting, first_connect_timeout_s)
    except TimeoutError:
        raise Unavailable(
            f"cannot connect to NATS at {url} within {first_connect_timeout_s:.0f}s "
            "(check the URL, its scheme (nats:// or tls://), credentials and certificates; the log above "
            "has each attempt's error)"
        ) from None
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
        first_connect_timeout_s=limits.nats_connect_timeout_s,
    )
