"""Triton's trace settings (the trace extension): validation, global and per-model merging, sampling.

Pure logic; the gateway holds one :class:`TraceBook` and shares the settings with the other gateways
(``meshserve/settings_store.py``).  Keys and value formats are Triton's (every value a string, except
``trace_level``, a list of strings): ``trace_level`` (``OFF``, or any of ``TIMESTAMPS`` / ``TENSORS``),
``trace_rate`` (trace one request in N), ``trace_count`` (traces left; -1 = no limit),
``log_frequency`` (kept and reported; spans are written as they end) and ``trace_file`` (the JSON-lines
file of the file exporter; global only, confined to ``--log-dir``).  ``trace_mode`` is reported
(``opentelemetry``) and cannot be changed.

A model's settings are overrides on the global ones: a key the model never set follows the global
value, also when the global one changes later; clearing a model's key (JSON ``null`` / an empty gRPC
value) makes it follow the global value again; clearing a global key restores the value the mesh
started with.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshserve.errors import InvalidArgument

__all__ = [
    "KEYS",
    "LEVELS",
    "TraceBook",
    "TraceConfig",
    "confine",
    "parse_update",
]

LEVELS = ("TIMESTAMPS", "TENSORS")
KEYS = ("trace_file", "trace_level", "trace_rate", "trace_count", "log_frequency")
TRACE_MODE = "opentelemetry"
_UINT32_MAX = 2**32 - 1
_INT32_MAX = 2**31 - 1

Update = dict[str, Any]
"""Validated changes: key → new value (``trace_level`` a tuple, numbers ints, ``trace_file`` a str),
or None to clear the key."""


@dataclass(frozen=True, slots=True)
class TraceConfig:
    level: tuple[str, ...] = ()
    """Empty = OFF."""
    rate: int = 1000
    count: int = -1
    log_frequency: int = 0
    file: str = ""

    @property
    def on(self) -> bool:
        return bool(self.level)

    def with_update(self, update: Mapping[str, Any]) -> TraceConfig:
        """This config with the non-None values of ``update`` applied."""
        names = {"trace_level": "level", "trace_rate": "rate", "trace_count": "count", "trace_file": "file"}
        changes = {names.get(k, k): v for k, v in update.items() if v is not None}
        return replace(self, **changes)

    def as_response(self) -> dict[str, str | list[str]]:
        """Triton's response: strings, ``trace_level`` a list (``["OFF"]`` when off)."""
        return {
            "trace_level": list(self.level) or ["OFF"],
            "trace_rate": str(self.rate),
            "trace_count": str(self.count),
            "log_frequency": str(self.log_frequency),
            "trace_file": self.file,
            "trace_mode": TRACE_MODE,
        }


def _one_string(key: str, value: Any) -> str:
    """HTTP sends a string (or, leniently, a number); gRPC a one-element list of strings."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise InvalidArgument(f"trace setting '{key}' takes one value, got {len(value)}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidArgument(f"trace setting '{key}' must be a string, got {value!r}")
    return str(value).strip()


def _integer(key: str, value: Any, low: int, high: int) -> int:
    text = _one_string(key, value)
    try:
        number = int(text)
    except ValueError:
        raise InvalidArgument(f"Unable to parse '{key}', got: {text}") from None
    if not low <= number <= high:
        raise InvalidArgument(
            f"Unable to parse '{key}', value is out of range [ {low}, {high} ], got: {text}"
        )
    return number


def _level(value: Any) -> tuple[str, ...]:
    levels = [value] if isinstance(value, str) else value
    if not isinstance(levels, (list, tuple)) or not all(isinstance(v, str) for v in levels):
        raise InvalidArgument(f"trace setting 'trace_level' must be a list of strings, got {value!r}")
    wanted = [v.strip().upper() for v in levels]
    if "OFF" in wanted:
        if len(wanted) != 1:
            raise InvalidArgument("Expect only one trace level 'OFF' is specified")
        return ()
    unknown = [v for v in wanted if v not in LEVELS]
    if unknown:
        raise InvalidArgument(
            f"unknown trace level {unknown[0]!r}: 'trace_level' takes OFF, or any of {', '.join(LEVELS)}"
        )
    return tuple(level for level in LEVELS if level in wanted)


def parse_update(raw: Mapping[str, Any]) -> Update:
    """Validate a request's settings (HTTP JSON or gRPC lists) into an :data:`Update`.  A value of None
    (JSON null) or an empty list (gRPC's cleared value) clears the key.  Wording follows Triton's where
    Triton has a message; an unknown key is an error (Triton ignores it silently)."""
    update: Update = {}
    for key, value in raw.items():
        if key not in KEYS:
            raise InvalidArgument(
                f"unknown trace setting '{key}': meshserve accepts {', '.join(KEYS)}"
                + (" (trace_mode is fixed: opentelemetry)" if key == "trace_mode" else "")
            )
        if value is None or (isinstance(value, (list, tuple)) and not value):
            update[key] = None
        elif key == "trace_level":
            update[key] = _level(value)
        elif key == "trace_rate":
            update[key] = _integer(key, value, 1, _UINT32_MAX)
        elif key == "trace_count":
            update[key] = _integer(key, value, -1, _INT32_MAX)
        elif key == "log_frequency":
            update[key] = _integer(key, value, 0, _UINT32_MAX)
        else:
            update[key] = _one_string(key, value)
    return update


def confine(path: str, log_dir: str, what: str) -> str:
    """``path`` resolved inside ``log_dir`` (relative paths are taken from it), or InvalidArgument:
    a client never makes the server write outside the directory the operator chose."""
    if not log_dir:
        raise InvalidArgument(
            f"{what} location can not be updated through network protocol unless the server runs with "
            "--log-dir DIR (files are then confined to DIR)"
        )
    if "\x00" in path:
        raise InvalidArgument(f"{what} {path!r} is not a valid path")
    root = Path(log_dir).resolve()
    target = (root / path).resolve()
    if target == root or root not in target.parents:
        raise InvalidArgument(f"{what} '{path}' is outside the log directory {root} (--log-dir)")
    if not target.parent.is_dir():
        raise InvalidArgument(f"{what} '{path}': the directory {target.parent} does not exist")
    if target.is_dir():
        raise InvalidArgument(f"{what} '{path}' is a directory")
    return str(target)


@dataclass(slots=True)
class _Counter:
    seen: int = 0
    left: int = -1


@dataclass(slots=True)
class TraceBook:
    """The global settings, each model's overrides, and the sampling counters of this gateway."""

    defaults: TraceConfig = field(default_factory=TraceConfig)
    global_overrides: Update = field(default_factory=dict)
    model_overrides: dict[str, Update] = field(default_factory=dict)
    _counters: dict[str, _Counter] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _effective: dict[str, TraceConfig] = field(default_factory=dict)
    """Cache of :meth:`effective` (every request asks; settings change rarely)."""

    def global_config(self) -> TraceConfig:
        return self.effective("")

    def effective(self, model: str = "") -> TraceConfig:
        config = self._effective.get(model)
        if config is None:
            config = self.defaults.with_update(self.global_overrides)
            if model:
                config = config.with_update(self.model_overrides.get(model, {}))
            self._effective[model] = config
        return config

    def set_defaults(self, defaults: TraceConfig) -> None:
        self.defaults = defaults
        self._effective.clear()

    def set_global(self, overrides: Update) -> None:
        """Replace the global overrides (what the shared store holds); counters of the scopes that
        follow the global count or rate start over."""
        self.global_overrides = {k: v for k, v in overrides.items() if v is not None}
        self._effective.clear()
        with self._lock:
            self._counters.pop("", None)
            for model in list(self._counters):
                if model and not self._own_scope(model):
                    self._counters.pop(model, None)

    def set_model(self, model: str, overrides: Update) -> None:
        kept = {k: v for k, v in overrides.items() if v is not None}
        if kept:
            self.model_overrides[model] = kept
        else:
            self.model_overrides.pop(model, None)
        self._effective.clear()
        with self._lock:
            self._counters.pop(model, None)

    def merged(self, model: str, update: Update) -> Update:
        """The overrides of ``model`` (or the global ones) after ``update``: None values clear keys."""
        current = dict(self.model_overrides.get(model, {}) if model else self.global_overrides)
        for key, value in update.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        return current

    def _own_scope(self, model: str) -> bool:
        overrides = self.model_overrides.get(model, {})
        return "trace_rate" in overrides or "trace_count" in overrides or "trace_level" in overrides

    def _scope(self, model: str) -> str:
        return model if model and self._own_scope(model) else ""

    def sample(self, model: str) -> bool:
        """Whether this request of ``model`` is traced: the level is on, it is the first of every
        ``trace_rate`` requests of its scope (the model when it has its own level/rate/count, else
        everything following the global settings), and the scope has traces left."""
        config = self.effective(model)
        if not config.on:
            return False
        scope = self._scope(model)
        with self._lock:
            counter = self._counters.get(scope)
            if counter is None:
                counter = self._counters[scope] = _Counter(left=config.count)
            counter.seen += 1
            if (counter.seen - 1) % config.rate != 0 or counter.left == 0:
                return False
            if counter.left > 0:
                counter.left -= 1
            return True

    def response(self, model: str = "") -> dict[str, str | list[str]]:
        """Triton's answer: the effective settings, ``trace_count`` the traces left on this gateway."""
        config = self.effective(model)
        scope = self._scope(model)
        with self._lock:
            counter = self._counters.get(scope)
        if counter is not None:
            config = replace(config, count=counter.left)
        return config.as_response()


def default_trace_file() -> str:
    """The file of ``MESHSERVE_TRACING=file:PATH`` (reported as ``trace_file``), else empty."""
    mode = os.environ.get("MESHSERVE_TRACING", "").strip()
    return mode[len("file:") :] if mode.startswith("file:") else ""
