"""Connecting to NATS the same way in every service: named client, bounded reconnects, logged events."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from meshserve.errors import Unavailable

__all__ = ["NatsOptions", "configure_nats", "connect_nats", "nats_options"]

log = logging.getLogger(__name__)


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
            **_options.connect_kwargs(),
        )
    except Exception as exc:
        raise Unavailable(f"cannot connect to NATS at {url}: {exc}") from exc
