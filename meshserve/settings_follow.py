"""What a batcher or a worker does with the mesh's runtime settings: apply the log settings a client
set (LogSettings), and start writing spans to the trace file when a client turned tracing on at run
time (TraceSetting with no exporter at start).  The gateway's side is ``gateway/runtime_settings.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from meshserve import log_settings, tracing
from meshserve.log_settings import LogConfig
from meshserve.settings_store import SettingsStore

__all__ = ["DEFAULT_TRACE_FILE", "follow_settings", "log_dir", "start_following"]

DEFAULT_TRACE_FILE = "trace.jsonl"
"""The file in ``--log-dir`` that spans go to when tracing is turned on with no ``trace_file``."""


def log_dir() -> str:
    """The directory clients may name files in (``--log-dir``, passed on as ``MESHSERVE_LOG_DIR``)."""
    return os.environ.get("MESHSERVE_LOG_DIR", "").strip()


class _Follower:
    def __init__(self, service: str) -> None:
        self.service = service
        self.log = LogConfig(log_verbose_level=1 if logging.getLogger().level <= logging.DEBUG else 0)
        self.trace_file = ""

    def on_log(self, config: LogConfig) -> None:
        if config != self.log:
            self.log = config
            log_settings.apply(config, self.service)

    def on_trace(self, model: str, overrides: dict[str, Any], revision: int) -> None:
        if not model:
            self.trace_file = str(overrides.get("trace_file") or "")
            if self.trace_file and tracing.file_path():
                tracing.start_file(self.trace_file, self.service)
        if overrides.get("trace_level") and not tracing.enabled() and log_dir():
            tracing.start_file(self.trace_file or os.path.join(log_dir(), DEFAULT_TRACE_FILE), self.service)


def start_following(nc: Any, service: str) -> asyncio.Task[None]:
    """The service's watch as a task; the service cancels it when it stops."""
    return asyncio.create_task(follow_settings(nc, service), name=f"{service} runtime settings")


async def follow_settings(nc: Any, service: str) -> None:
    """Run until cancelled (a task of the service's run); nothing to do without JetStream."""
    store = await SettingsStore.open(nc)
    if store is not None:
        follower = _Follower(service)
        await store.watch(follower.on_trace, follower.on_log)
