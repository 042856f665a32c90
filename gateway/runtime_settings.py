"""TraceSetting and LogSettings at the gateway: validate, share with the mesh, apply, answer.

A call is validated here (``meshserve/trace_settings.py``, ``meshserve/log_settings.py``), written to
the shared bucket (``meshserve/settings_store.py``) and applied to this gateway at once, so the answer
shows it; the other gateways (and, for log settings, the batchers and workers) apply it when their
watch sees the new value.  The trace settings decide, per request, whether the gateway traces it
(:meth:`RuntimeSettings.sample`, installed as the tracing module's sampler); the decision travels with
the request as the ``traceparent`` sampled flag, so the batcher and the worker follow it.

Files (``trace_file``, ``log_file``) are confined to ``--log-dir`` (``MESHSERVE_LOG_DIR``); the calls
need the control token when one is configured (``gateway/auth.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from meshserve import log_settings, trace_settings, tracing
from meshserve.errors import InvalidArgument
from meshserve.log_settings import LogConfig
from meshserve.settings_follow import DEFAULT_TRACE_FILE, log_dir
from meshserve.settings_store import SettingsStore
from meshserve.trace_settings import TraceBook, TraceConfig

log = logging.getLogger(__name__)

__all__ = ["RuntimeSettings"]


def initial_trace_config() -> TraceConfig:
    """What the mesh starts with: tracing on at start (``MESHSERVE_TRACING``) traces every request, as
    it always did; otherwise OFF with Triton's defaults (rate 1000, no count limit)."""
    if tracing.enabled():
        return TraceConfig(level=("TIMESTAMPS",), rate=1, file=tracing.file_path())
    return TraceConfig()


class RuntimeSettings:
    def __init__(
        self,
        store: SettingsStore | None,
        known_model: Callable[[str], bool],
        service: str = "gateway",
    ) -> None:
        self._store = store
        self._known_model = known_model
        self._service = service
        self.trace = TraceBook(defaults=initial_trace_config())
        self.log = LogConfig(log_verbose_level=1 if logging.getLogger().level <= logging.DEBUG else 0)
        self._revisions: dict[str, int] = {}
        self._lock = asyncio.Lock()
        tracing.set_sampler(self.sample)

    def sample(self, model: str) -> bool:
        return self.trace.sample(model)

    # -- trace ------------------------------------------------------------------------------------------
    async def trace_setting(self, model: str, raw: Mapping[str, Any] | None) -> dict[str, str | list[str]]:
        """GET (``raw`` None) or update one scope; the effective settings of the scope after it."""
        if model and not self._known_model(model):
            raise InvalidArgument(f"Request for unknown model : {model}")
        if raw is not None:
            update = trace_settings.parse_update(raw)
            if update.get("trace_file") is not None:
                if model:
                    raise InvalidArgument("trace_file is global in meshserve: set it without a model name")
                update["trace_file"] = trace_settings.confine(update["trace_file"], log_dir(), "trace file")
            async with self._lock:
                overrides = self.trace.merged(model, update)
                self._check_exporter(model, overrides)
                revision = await self._store.put_trace(model, overrides) if self._store is not None else 0
                self.apply_trace(model, overrides, revision)
        return self.trace.response(model)

    def _check_exporter(self, model: str, overrides: Mapping[str, Any]) -> None:
        """Turning a level on needs somewhere for the spans to go: the exporter the mesh started with,
        else a file in ``--log-dir`` (``trace_file``, by default ``trace.jsonl`` there)."""
        if tracing.enabled() and not tracing.file_path():
            if overrides.get("trace_file"):
                raise InvalidArgument(
                    "trace_file can not be set: this mesh exports its spans with MESHSERVE_TRACING="
                    f"{os.environ.get('MESHSERVE_TRACING', '')}"
                )
            return
        global_config = self.trace.defaults.with_update(
            overrides if not model else self.trace.global_overrides
        )
        config = global_config.with_update(overrides) if model else global_config
        if config.on and not (global_config.file or tracing.enabled()) and not log_dir():
            raise InvalidArgument(
                "tracing has no exporter: start the mesh with MESHSERVE_TRACING (otlp, console, file:PATH) "
                "or with --log-dir DIR, where a trace_file (JSON lines) can then be written"
            )

    def apply_trace(self, model: str, overrides: dict[str, Any], revision: int) -> None:
        """A scope's overrides, from this gateway's own call or from the shared bucket; a value older
        than the one applied is skipped (the call applies before the watch sees its own write)."""
        scope = trace_settings_key(model)
        if revision and revision <= self._revisions.get(scope, 0):
            return
        self._revisions[scope] = revision
        if model:
            self.trace.set_model(model, overrides)
        else:
            self.trace.set_global(overrides)
        self._start_exporter()

    def _start_exporter(self) -> None:
        configs = [self.trace.global_config()] + [self.trace.effective(m) for m in self.trace.model_overrides]
        if not any(c.on for c in configs):
            return
        path = self.trace.global_config().file
        if not path and not tracing.enabled() and log_dir():
            path = os.path.join(log_dir(), DEFAULT_TRACE_FILE)
            self.trace.set_defaults(self.trace.defaults.with_update({"trace_file": path}))
        if path and path != tracing.file_path() and (tracing.file_path() or not tracing.enabled()):
            tracing.start_file(path, self._service)

    # -- log --------------------------------------------------------------------------------------------
    async def log_setting(self, raw: Mapping[str, Any] | None) -> dict[str, Any]:
        if raw is not None:
            update = log_settings.parse_update(raw)
            if update.get("log_file"):
                update["log_file"] = trace_settings.confine(update["log_file"], log_dir(), "log file")
            async with self._lock:
                config = self.log.with_update(update)
                revision = await self._store.put_log(config) if self._store is not None else 0
                self.apply_log(config, revision)
        return self.log.as_response()

    def apply_log(self, config: LogConfig, revision: int = 0) -> None:
        if revision and revision <= self._revisions.get("log", 0):
            return
        self._revisions["log"] = revision
        if config != self.log:
            self.log = config
            log_settings.apply(config, self._service)

    async def watch(self) -> None:
        if self._store is not None:
            await self._store.watch(self.apply_trace, lambda config: self.apply_log(config))


def trace_settings_key(model: str) -> str:
    return f"model:{model}" if model else "global"
