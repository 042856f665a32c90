"""Stop signals for services: SIGTERM/SIGINT set an event; a second SIGINT exits at once."""

from __future__ import annotations

import asyncio
import os
import signal

__all__ = ["install_stop_signals"]


def install_stop_signals() -> asyncio.Event:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set() and sig == signal.SIGINT:
            os._exit(130)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return stop
