"""Stop signals for services: SIGTERM/SIGINT set an event; a second SIGINT exits at once.

Services that ``meshserve up`` starts also stop when their parent goes away (``--exit-with-parent``),
so a launcher killed with SIGKILL leaves no orphans behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from nats.aio.client import Client

__all__ = ["close_nats", "die_with_parent", "install_stop_signals"]

log = logging.getLogger(__name__)

_background: set[asyncio.Task[None]] = set()


def install_stop_signals(exit_with_parent: bool = False, poll_s: float = 1.0) -> asyncio.Event:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set() and sig == signal.SIGINT:
            os._exit(130)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if exit_with_parent:
        task = loop.create_task(_watch_parent(stop, os.getppid(), poll_s))
        _background.add(task)
        task.add_done_callback(_background.discard)
    return stop


async def _watch_parent(stop: asyncio.Event, parent: int, poll_s: float) -> None:
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("parent process %d is gone; stopping", parent)
            stop.set()
            return
        await asyncio.sleep(poll_s)


async def close_nats(nc: Client) -> None:
    """Drain when connected (delivers what is buffered); otherwise just close."""
    try:
        if nc.is_connected:
            await nc.drain()
            return
    except Exception as exc:
        log.debug("nats drain failed: %s", exc)
    try:
        await nc.close()
    except (RuntimeError, OSError) as exc:
        # the server went away while we stopped (a pod deletion stops NATS and the services at once):
        # uvloop refuses to flush to the closed transport; there is nothing left to deliver
        log.debug("nats close failed: %s", exc)


def die_with_parent() -> None:
    """``preexec_fn`` for children: the kernel sends SIGTERM when the launcher dies (Linux only).

    Covers binaries that cannot watch their parent themselves (the embedded nats-server)."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
