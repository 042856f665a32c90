"""A service's first NATS connection is bounded: a wrong address must not hang it before its ready line."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from meshserve.errors import Unavailable
from meshserve.messaging import connect_nats


def test_a_first_connection_that_keeps_failing_gives_up_with_a_clear_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"nats://127.0.0.1:{port}"

    async def attempt() -> tuple[float, str]:
        start = time.monotonic()
        with pytest.raises(Unavailable) as info:
            # with unbounded reconnects (-1) nats-py alone would retry this forever
            await connect_nats(url, "probe", connect_timeout_s=1.0, first_connect_timeout_s=2.0)
        return time.monotonic() - start, str(info.value)

    elapsed, message = asyncio.run(attempt())
    assert elapsed < 10, elapsed
    assert f"cannot connect to NATS at {url}" in message, message
