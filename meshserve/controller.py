"""Model control for ``meshserve up --model-control-mode explicit`` (Triton's EXPLICIT mode).

Gateways turn RepositoryModelLoad / Unload into a NATS request on :func:`subjects.control`; the
controller, living in the launcher that owns the worker processes, starts or stops the model's
workers and answers once they are READY (or says why not).  Models that are not loaded are
announced as UNAVAILABLE "unloaded", so every gateway's index and readiness show them as such.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg

from meshserve import subjects
from meshserve.ensemble import is_ensemble, plan_of
from meshserve.errors import Internal, MeshError
from meshserve.lifecycle import close_nats
from meshserve.messaging import connect_nats
from meshserve.pb import mesh_pb2
from meshserve.repository import ModelEntry

__all__ = ["UNLOADED_REASON", "Controller", "ModelOwner"]

log = logging.getLogger(__name__)

UNLOADED_REASON = "unloaded"


class ModelOwner(Protocol):
    """What the controller needs from the launcher."""

    async def start_model(self, name: str) -> list[dict[str, Any]]: ...

    async def stop_model(self, name: str) -> None: ...

    def entry(self, name: str) -> ModelEntry | None: ...


class Controller:
    def __init__(self, owner: ModelOwner, nats_url: str) -> None:
        self._owner = owner
        self._nats_url = nats_url
        self._nc: Client | None = None
        self._lock = asyncio.Lock()
        self._unloaded: dict[str, ModelEntry] = {}

    async def start(self, not_loaded: list[ModelEntry]) -> None:
        self._nc = await connect_nats(self._nats_url, "controller")
        self._unloaded = {e.name: e for e in not_loaded}
        await self._nc.subscribe(subjects.control(), cb=self._on_request)
        await self._nc.subscribe(subjects.worker_query(), cb=self._on_query)
        await self._announce_unloaded()

    async def close(self) -> None:
        if self._nc is not None:
            await close_nats(self._nc)

    async def _on_query(self, _msg: Msg) -> None:
        await self._announce_unloaded()

    async def _announce_unloaded(self) -> None:
        assert self._nc is not None
        for entry in self._unloaded.values():
            for version in entry.versions or (1,):
                ann = mesh_pb2.WorkerAnnouncement(
                    instance_id=f"controller:{entry.name}:{version}",
                    model_name=entry.name,
                    model_version=version,
                    state=mesh_pb2.UNAVAILABLE,
                    reason=UNLOADED_REASON,
                    model_config=entry.config.SerializeToString() if entry.config is not None else b"",
                )
                await self._nc.publish(subjects.worker_announce(), ann.SerializeToString())

    async def _clear_unloaded(self, entry: ModelEntry) -> None:
        """Withdraw the "unloaded" marker (a LOADING announcement from the same id)."""
        assert self._nc is not None
        for version in entry.versions or (1,):
            ann = mesh_pb2.WorkerAnnouncement(
                instance_id=f"controller:{entry.name}:{version}",
                model_name=entry.name,
                model_version=version,
                state=mesh_pb2.LOADING,
            )
            await self._nc.publish(subjects.worker_announce(), ann.SerializeToString())

    async def _on_request(self, msg: Msg) -> None:
        request = mesh_pb2.ControlRequest()
        reply = mesh_pb2.ControlReply()
        try:
            request.ParseFromString(msg.data)
            async with self._lock:  # one load/unload at a time
                if request.load:
                    await self._load(request.model_name)
                else:
                    await self._unload(request.model_name)
        except MeshError as exc:
            reply.error.code, reply.error.message = exc.code, exc.message
        except Exception as exc:
            log.exception("model control failed")
            err = Internal(f"{type(exc).__name__}: {exc}")
            reply.error.code, reply.error.message = err.code, err.message
        if msg.reply and self._nc is not None:
            await self._nc.publish(msg.reply, reply.SerializeToString())

    async def _load(self, name: str) -> None:
        entry = self._unloaded.pop(name, None) or self._owner.entry(name)
        if entry is not None:
            await self._clear_unloaded(entry)
        if entry is not None and entry.config is not None and is_ensemble(entry.config):
            await self._load_steps(entry)
            return
        log.info("loading model '%s'", name)
        readies = await self._owner.start_model(name)
        failed = [r for r in readies if r.get("state") != "READY"]
        if failed or not readies:
            reason = failed[0].get("reason", "") if failed else "it has no version to serve"
            raise Internal(f"failed to load '{name}': {reason}")

    async def _load_steps(self, entry: ModelEntry) -> None:
        """An ensemble has no workers: loading it loads its step models that are not loaded (as
        Triton does); the gateways derive its state from theirs."""
        assert entry.config is not None
        if entry.error:
            raise Internal(f"failed to load '{entry.name}': {entry.error}")
        for step in plan_of(entry.config).steps:
            if step.model in self._unloaded:
                await self._load(step.model)

    async def _unload(self, name: str) -> None:
        entry = self._owner.entry(name)
        if entry is None:
            from meshserve.errors import ModelNotFound

            raise ModelNotFound(f"failed to unload '{name}': no model of that name in the repository")
        log.info("unloading model '%s'", name)
        await self._owner.stop_model(name)
        self._unloaded[name] = entry
        await self._announce_unloaded()
