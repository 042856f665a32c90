"""Triton's log settings (the logging extension) on Python's logging: validation and application.

Keys and types are Triton's: ``log_file`` (string; empty = stderr), ``log_info``, ``log_warning``,
``log_error`` (booleans: whether records of that level are written), ``log_verbose_level`` (uint32:
0 = no debug records, 1 = meshserve's debug records, 2 and more = also the libraries' — NATS,
aiohttp), ``log_format`` (``default`` or ``ISO8601``).  The gateway validates a request
(:func:`parse_update`), stores the result where every service reads it
(``meshserve/settings_store.py``), and every process — gateways, batchers, workers — applies it with
:func:`apply`.  ``log_file`` is confined to ``--log-dir`` (see ``trace_settings.confine``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from meshserve.errors import InvalidArgument

__all__ = ["KEYS", "LogConfig", "apply", "parse_update"]

KEYS = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")
FORMATS = ("default", "ISO8601")
_UINT32_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class LogConfig:
    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    def as_response(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LogConfig | None:
        """None for a value that is not a valid config (a bucket shared with something else)."""
        try:
            raw = json.loads(data)
            return cls().with_update(parse_update(raw))
        except (ValueError, TypeError, AttributeError, InvalidArgument):
            return None

    def with_update(self, update: Mapping[str, Any]) -> LogConfig:
        return replace(self, **{k: v for k, v in update.items() if v is not None})


def parse_update(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a request's settings; None (JSON null, an unset gRPC value) leaves a key unchanged, as
    in Triton.  An unknown key is an error (Triton ignores it silently)."""
    update: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in KEYS:
            raise InvalidArgument(f"unknown log setting '{key}': meshserve accepts {', '.join(KEYS)}")
        if value is None:
            continue
        if key in ("log_info", "log_warning", "log_error"):
            if not isinstance(value, bool):
                raise InvalidArgument(f"log setting '{key}' must be a boolean, got {value!r}")
        elif key == "log_verbose_level":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT32_MAX:
                raise InvalidArgument(
                    f"log setting 'log_verbose_level' must be an integer >= 0, got {value!r}"
                )
        elif not isinstance(value, str):
            raise InvalidArgument(f"log setting '{key}' must be a string, got {value!r}")
        elif key == "log_format" and value not in FORMATS:
            raise InvalidArgument(f"invalid argument for --log_format, got: {value} (default or ISO8601)")
        update[key] = value
    return update


class _LevelSwitch(logging.Filter):
    """Triton's switches are per level, not a threshold: ``log_info`` false still writes warnings."""

    def __init__(self, config: LogConfig) -> None:
        super().__init__()
        self._config = config

    def filter(self, record: logging.LogRecord) -> bool:
        c = self._config
        if record.levelno >= logging.ERROR:
            return c.log_error
        if record.levelno >= logging.WARNING:
            return c.log_warning
        if record.levelno >= logging.INFO:
            return c.log_info
        return c.log_verbose_level > 0


class _Iso8601(logging.Formatter):
    """``2026-11-27T03:40:12.345Z``: UTC, as Triton's ISO8601 format."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def apply(config: LogConfig, service: str) -> None:
    """Make this process's root logger follow ``config`` (one handler: stderr, or ``log_file``
    appended — processes may share it)."""
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    failed = ""
    if config.log_file:
        try:
            handler = logging.FileHandler(config.log_file, mode="a", encoding="utf-8")
        except OSError as exc:  # checked at the gateway; another machine may lack the directory
            failed = f"cannot write log_file {config.log_file} ({exc}); logging to stderr"
    pattern = f"%(asctime)s {service}[%(process)d] %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(_Iso8601(pattern) if config.log_format == "ISO8601" else logging.Formatter(pattern))
    handler.addFilter(_LevelSwitch(config))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        if isinstance(old, logging.FileHandler):
            old.close()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if config.log_verbose_level > 0 else logging.INFO)
    for noisy in ("nats", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if config.log_verbose_level >= 2 else logging.WARNING)
    if failed:
        logging.getLogger(__name__).error(failed)
    logging.getLogger(__name__).info("log settings applied: %s", config.as_response())
