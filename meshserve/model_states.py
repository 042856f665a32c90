"""Model states in a NATS JetStream key-value bucket, where every gateway can read them.

One key per model version, ``<model>.<version>`` (the model name escaped into KV's key alphabet),
holding JSON ``{"model", "version", "state", "reason", "updated_unix_ns"}`` with Triton's states
LOADING, READY, UNLOADING, UNAVAILABLE.  The launcher writes it as it starts models and the
controller as it loads, unloads and follows the repository; a removed model's keys are deleted.
Gateways watch the bucket, so a gateway started later — or one started by hand against the same
NATS without ``--model-repository`` — knows every model, why one is not served, and which are being
unloaded, without asking anybody.

This is the *declared* state.  Which instances are live (and so where requests go) stays on the
workers' announcements and heartbeats: liveness needs a heartbeat anyway, and a crashed worker
cannot delete its key.  A gateway combines both (:func:`combined_state`).

JetStream may be off on an external NATS (``--nats-url``); then :meth:`ModelStateStore.open`
returns None, the mesh logs it once, and everything works from announcements as before.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

__all__ = [
    "BUCKET",
    "STATES",
    "ModelStateRecord",
    "ModelStateStore",
    "combined_state",
    "parse_key",
    "state_key",
]

log = logging.getLogger(__name__)

BUCKET = "meshserve_models"
STATES = ("LOADING", "READY", "UNLOADING", "UNAVAILABLE")
_KEY_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def _escape(name: str) -> str:
    """A model name in KV's key alphabet: other characters (and '=') become ``=XX`` per UTF-8 byte."""
    out = []
    for char in name:
        if char in _KEY_SAFE:
            out.append(char)
        else:
            out.extend(f"={b:02X}" for b in char.encode())
    return "".join(out) or "=00"


def _unescape(token: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(token[i].encode())
            i += 1
    text = raw.decode(errors="replace")
    return "" if text == "\0" else text


def state_key(model: str, version: int) -> str:
    return f"{_escape(model)}.{version}"


def parse_key(key: str) -> tuple[str, int] | None:
    """(model, version) of a key this module wrote; None for anything else."""
    token, _, version = key.rpartition(".")
    if not token or not version.isdigit():
        return None
    try:
        return _unescape(token), int(version)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ModelStateRecord:
    model: str
    version: int
    state: str
    reason: str = ""
    updated_unix_ns: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ModelStateRecord | None:
        """None for a value that is not one of ours (a bucket shared with something else)."""
        try:
            raw = json.loads(data)
            record = cls(
                model=str(raw["model"]),
                version=int(raw["version"]),
                state=str(raw["state"]),
                reason=str(raw.get("reason", "")),
                updated_unix_ns=int(raw.get("updated_unix_ns", 0)),
            )
        except (ValueError, KeyError, TypeError):
            return None
        return record if record.state in STATES else None


def combined_state(live: bool, announced: str, record: ModelStateRecord | None) -> tuple[str, str | None]:
    """What a gateway shows for one model version: (state, reason or None to keep its own).

    ``live``: an instance heartbeats READY; ``announced``: the gateway's own state (from
    announcements, or derived from the steps for an ensemble).  UNLOADING wins (requests in flight
    finish, Triton shows UNLOADING); then READY (live instances, or the gateway's own); then a
    declared UNAVAILABLE with its reason (a failed load, "unloaded"); else the gateway's own state —
    a declared LOADING or READY adds nothing the gateway does not see better itself."""
    if record is not None and record.state == "UNLOADING":
        return "UNLOADING", record.reason
    if live or announced == "READY":
        return "READY", None
    if record is not None and record.state == "UNAVAILABLE":
        return record.state, record.reason
    return announced, None


class ModelStateStore:
    """Writes and watches the bucket; every method is a no-op-safe coroutine (a failed write is logged:
    the state is also on the announcements)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, nc: Client, create: bool = True, bucket: str = BUCKET) -> ModelStateStore | None:
        js = nc.jetstream()
        try:
            kv = await (js.create_key_value(bucket=bucket, history=1) if create else js.key_value(bucket))
        except BucketNotFoundError:
            return None
        except Exception as exc:  # JetStream off on this server, or not reachable
            log.warning("model states not shared in JetStream KV (%s): %s", type(exc).__name__, exc)
            return None
        return cls(kv)

    async def put(self, model: str, version: int, state: str, reason: str = "") -> None:
        record = ModelStateRecord(model, version, state, reason, time.time_ns())
        try:
            await self._kv.put(state_key(model, version), record.to_json())
        except Exception as exc:
            log.warning("cannot write the state of %s:%d to KV: %s", model, version, exc)

    async def delete(self, model: str, versions: tuple[int, ...]) -> None:
        for version in versions:
            try:
                await self._kv.delete(state_key(model, version))
            except KeyNotFoundError:
                pass
            except Exception as exc:
                log.warning("cannot delete the state of %s:%d from KV: %s", model, version, exc)

    async def put_versions(self, model: str, versions: tuple[int, ...], state: str, reason: str = "") -> None:
        """One state for several versions; () = the model as a whole (version 0)."""
        for version in versions or (0,):
            await self.put(model, version, state, reason)

    async def clear(self) -> None:
        """Forget every state (a new ``meshserve up`` owns the bucket from its start)."""
        try:
            keys = await self._kv.keys()
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            return
        for key in keys:
            try:
                await self._kv.delete(key)
            except Exception as exc:
                log.warning("cannot delete %s from KV: %s", key, exc)

    async def keys_of(self, model: str) -> tuple[int, ...]:
        """The versions the bucket holds for ``model``."""
        try:
            keys = await self._kv.keys()
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            return ()
        parsed = (parse_key(k) for k in keys)
        return tuple(sorted(p[1] for p in parsed if p is not None and p[0] == model))

    async def watch(
        self,
        on_record: Callable[[ModelStateRecord], None],
        on_delete: Callable[[str, int], None],
    ) -> None:
        """Feed every current and future entry to the callbacks until cancelled."""
        try:
            watcher = await self._kv.watchall()
        except Exception as exc:
            log.warning("cannot watch the model states in KV: %s", exc)
            return
        try:
            async for entry in watcher:
                if entry is None:  # the end of the initial values
                    continue
                where = parse_key(entry.key)
                if where is None:
                    continue
                if entry.operation in ("DEL", "PURGE"):
                    on_delete(*where)
                    continue
                record = ModelStateRecord.from_json(entry.value or b"")
                if record is not None:
                    on_record(record)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
