"""Runtime trace and log settings in a NATS JetStream key-value bucket, shared by the whole mesh.

The same pattern as the model states (``meshserve/model_states.py``): the gateway that takes a
TraceSetting / LogSettings call writes the bucket; every gateway watches it for the trace settings
(each samples its own requests) and every service — gateways, batchers, workers — for the log
settings, which each applies to its own logging.  A process started later reads the current values
when its watch starts.  Keys:

``trace.global``            JSON object of the global trace overrides (``trace_settings.Update``)
``trace.model.<model>``     one model's overrides (model name escaped as in the model states bucket)
``log``                     the whole ``LogConfig``

With JetStream off (an external NATS without it) :meth:`SettingsStore.open` returns None and the
settings hold for the gateway that took the call only (logged once).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from meshserve.errors import Unavailable
from meshserve.log_settings import LogConfig
from meshserve.model_states import _escape, _unescape

__all__ = ["BUCKET", "SettingsStore", "decode_trace", "encode_trace", "trace_key"]

log = logging.getLogger(__name__)

BUCKET = "meshserve_settings"
_GLOBAL = "trace.global"
_MODEL = "trace.model."
_LOG = "log"

TraceCallback = Callable[[str, dict[str, Any], int], None]
"""(model or "" for global, overrides, KV revision)."""
LogCallback = Callable[[LogConfig], None]


def trace_key(model: str) -> str:
    return _MODEL + _escape(model) if model else _GLOBAL


def encode_trace(overrides: dict[str, Any]) -> bytes:
    """JSON in the request's own format (``trace_level`` OFF as ``["OFF"]``), re-parsed on the way in."""
    return json.dumps(
        {k: (list(v) or ["OFF"]) if k == "trace_level" else v for k, v in overrides.items()}
    ).encode()


def decode_trace(data: bytes) -> dict[str, Any] | None:
    """Overrides back from the bucket, re-validated (None when they are not ours)."""
    from meshserve.errors import InvalidArgument
    from meshserve.trace_settings import parse_update

    try:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            return None
        return {k: v for k, v in parse_update(raw).items() if v is not None}
    except (ValueError, InvalidArgument):
        return None


class SettingsStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, nc: Client, bucket: str = BUCKET) -> SettingsStore | None:
        try:
            kv = await nc.jetstream().create_key_value(bucket=bucket, history=1)
        except Exception as exc:  # JetStream off on this server, or not reachable
            log.warning(
                "runtime trace/log settings not shared in JetStream KV (%s): %s; they hold for the "
                "gateway that takes the call only",
                type(exc).__name__,
                exc,
            )
            return None
        return cls(kv)

    async def put_trace(self, model: str, overrides: dict[str, Any]) -> int:
        """Write (or, when empty, delete) one scope's overrides; the KV revision (0 on a delete).
        Unavailable when NATS does not take it: the setting would hold for one gateway only."""
        key = trace_key(model)
        try:
            if not overrides:
                try:
                    await self._kv.delete(key)
                except KeyNotFoundError:
                    pass
                return 0
            return int(await self._kv.put(key, encode_trace(overrides)))
        except Exception as exc:
            raise Unavailable(f"the trace setting cannot be shared with the mesh over NATS: {exc}") from exc

    async def put_log(self, config: LogConfig) -> int:
        try:
            return int(await self._kv.put(_LOG, config.to_json()))
        except Exception as exc:
            raise Unavailable(f"the log setting cannot be shared with the mesh over NATS: {exc}") from exc

    async def watch(self, on_trace: TraceCallback | None, on_log: LogCallback | None) -> None:
        """Feed current and future values to the callbacks until cancelled (a callback that raises is
        logged; the watch goes on)."""
        try:
            watcher = await self._kv.watchall()
        except Exception as exc:
            log.warning("cannot watch the runtime settings in KV: %s", exc)
            return
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                try:
                    _dispatch(
                        entry.key, entry.operation, entry.value or b"", entry.revision or 0, on_trace, on_log
                    )
                except Exception:
                    log.exception("runtime setting %s not applied", entry.key)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]


def _dispatch(
    key: str,
    operation: str | None,
    value: bytes,
    revision: int,
    on_trace: TraceCallback | None,
    on_log: LogCallback | None,
) -> None:
    deleted = operation in ("DEL", "PURGE")
    if key == _LOG:
        if on_log is not None:
            config = LogConfig() if deleted else LogConfig.from_json(value)
            if config is not None:
                on_log(config)
        return
    if on_trace is None or not (key == _GLOBAL or key.startswith(_MODEL)):
        return
    model = "" if key == _GLOBAL else _unescape(key[len(_MODEL) :])
    overrides = {} if deleted else decode_trace(value)
    if overrides is not None:
        on_trace(model, overrides, revision)
