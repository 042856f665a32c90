"""Model control for ``meshserve up --model-control-mode explicit|poll`` (Triton's EXPLICIT and POLL).

Gateways turn RepositoryModelLoad / Unload into a NATS request on :func:`subjects.control`; the
controller, living in the launcher that owns the worker processes, starts or stops the model's
workers and answers once they are READY (or says why not).  Models that are not loaded are
announced as UNAVAILABLE "unloaded", so every gateway's index and readiness show them as such.

In poll mode the controller watches the repository instead (:mod:`meshserve.repo_watch`): a new
model directory is loaded, a removed one unloaded (and withdrawn from every gateway's tables), a
changed one reloaded — new workers beside the old, which stop once the new are READY — and
load/unload requests are refused as Triton refuses them.

Controller markers are announcements on the workers' subject with instance id
``controller:<model>:<version>``: reason :data:`UNLOADED_REASON` (explicit mode, not loaded),
:data:`REMOVED_REASON` (gone from the repository or the version no longer served; version 0 = every
version), or a load error for a model that has no worker to say it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg

from meshserve import subjects
from meshserve.errors import Internal, InvalidArgument, MeshError, ModelNotFound, Unavailable
from meshserve.lifecycle import close_nats
from meshserve.messaging import connect_nats
from meshserve.model_deps import composing_models, dependents_to_unload, load_order
from meshserve.model_override import materialize, parse_override_config
from meshserve.model_states import ModelStateStore
from meshserve.pb import mesh_pb2
from meshserve.pb import model_config_pb2 as mc
from meshserve.repo_watch import Fingerprint, RepositoryChanges, RepositoryWatcher, snapshot
from meshserve.repository import ModelEntry
from meshserve.security import check_model_name

__all__ = [
    "CONTROLLER_ID_PREFIX",
    "POLL_REFUSAL",
    "REMOVED_REASON",
    "UNLOADED_REASON",
    "Controller",
    "ModelOwner",
]

log = logging.getLogger(__name__)

UNLOADED_REASON = "unloaded"
REMOVED_REASON = "removed from the model repository"
CONTROLLER_ID_PREFIX = "controller:"
POLL_REFUSAL = "explicit model load / unload is not allowed if polling is enabled"
"""Triton's wording (clients and scripts match on it), answered UNAVAILABLE in poll mode."""


class ModelOwner(Protocol):
    """What the controller needs from the launcher."""

    @property
    def repository(self) -> Path: ...

    async def start_model(self, name: str, repository: Path | None = None) -> list[dict[str, Any]]: ...

    async def stop_model(self, name: str) -> None: ...

    def entry(self, name: str) -> ModelEntry | None: ...

    def read_entry(self, name: str, repository: Path | None = None) -> ModelEntry | None: ...

    def forget(self, name: str) -> None: ...


class Controller:
    def __init__(
        self,
        owner: ModelOwner,
        nats_url: str,
        mode: str = "explicit",
        poll_interval_s: float = 15.0,
        states: ModelStateStore | None = None,
        load_threads: int = 4,
    ) -> None:
        self._owner = owner
        self._load_slots = asyncio.Semaphore(max(1, load_threads))
        """Loads that start workers at once (``--model-load-thread-count``); the rest wait their turn,
        each within its caller's deadline."""
        self._nats_url = nats_url
        self._mode = mode
        self._poll_interval_s = poll_interval_s
        self._nc: Client | None = None
        self._lock = asyncio.Lock()
        """Poll mode: one repository change set applied at a time."""
        self._model_locks: dict[str, asyncio.Lock] = {}
        """One load/unload of a model at a time; different models load concurrently (a slow load of
        one does not hold up another's)."""
        self._unloaded: dict[str, ModelEntry] = {}
        self._loaded: dict[str, mc.ModelConfig | None] = {}
        """Every model this mesh serves now → its config (for ensembles' dependencies)."""
        self._managed: Path | None = None
        """Override model directories (loads with ``config`` / ``file:`` parameters) live here;
        made at the first such load, removed by :meth:`close`."""
        self._override_dirs: dict[str, Path] = {}
        self._load_seq = 0
        self._poll_task: asyncio.Task[None] | None = None
        self._states = states
        """The JetStream KV bucket every gateway reads (None: JetStream is off; announcements only)."""

    async def start(
        self,
        loaded: list[ModelEntry],
        not_loaded: list[ModelEntry],
        baseline: Mapping[str, Fingerprint] | None = None,
    ) -> None:
        self._nc = await connect_nats(self._nats_url, "controller")
        self._loaded = {e.name: e.config for e in loaded}
        # explicit: ``not_loaded`` are the models left unloaded; poll: those that cannot be read
        self._unloaded = {e.name: e for e in not_loaded} if self._mode == "explicit" else {}
        await self._nc.subscribe(subjects.control(), cb=self._on_request)
        await self._nc.subscribe(subjects.worker_query(), cb=self._on_query)
        await self._announce_unloaded()
        if self._mode == "poll":
            for entry in not_loaded:  # no worker will say why these are not served
                await self._announce_failed(entry)
            watcher = RepositoryWatcher(applied=dict(baseline or {}))
            self._poll_task = asyncio.create_task(self._poll(watcher))

    async def close(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            try:
                await self._poll_task
            except asyncio.CancelledError:
                pass
        if self._nc is not None:
            await close_nats(self._nc)
        if self._managed is not None:
            shutil.rmtree(self._managed, ignore_errors=True)

    # -- announcements ------------------------------------------------------------------------------
    async def _marker(self, name: str, version: int, state: int, reason: str, config: bytes = b"") -> None:
        assert self._nc is not None
        ann = mesh_pb2.WorkerAnnouncement(
            instance_id=f"{CONTROLLER_ID_PREFIX}{name}:{version}",
            model_name=name,
            model_version=version,
            state=state,  # type: ignore[arg-type]
            reason=reason,
            model_config=config,
        )
        await self._nc.publish(subjects.worker_announce(), ann.SerializeToString())

    async def _on_query(self, _msg: Msg) -> None:
        await self._announce_unloaded()

    async def _announce_unloaded(self) -> None:
        for entry in self._unloaded.values():
            config = entry.config.SerializeToString() if entry.config is not None else b""
            for version in entry.versions or (1,):
                await self._marker(entry.name, version, mesh_pb2.UNAVAILABLE, UNLOADED_REASON, config)

    async def _clear_unloaded(self, entry: ModelEntry) -> None:
        """Withdraw the "unloaded" marker (a LOADING announcement from the same id)."""
        for version in entry.versions or (1,):
            await self._marker(entry.name, version, mesh_pb2.LOADING, "")

    async def _announce_failed(self, entry: ModelEntry) -> None:
        """A model that no worker will speak for (its directory cannot be read) is UNAVAILABLE with why."""
        if entry.error:
            for version in entry.versions or (1,):
                await self._marker(entry.name, version, mesh_pb2.UNAVAILABLE, entry.error)

    async def _announce_removed(self, name: str, versions: tuple[int, ...] = (0,)) -> None:
        for version in versions:
            await self._marker(name, version, mesh_pb2.UNAVAILABLE, REMOVED_REASON)
        if self._states is not None:
            gone = await self._states.keys_of(name) if versions == (0,) else versions
            await self._states.delete(name, gone)

    async def _record(self, name: str, versions: tuple[int, ...], state: str, reason: str = "") -> None:
        if self._states is not None:
            await self._states.put_versions(name, versions, state, reason)

    # -- requests -----------------------------------------------------------------------------------
    async def _on_request(self, msg: Msg) -> None:
        request = mesh_pb2.ControlRequest()
        reply = mesh_pb2.ControlReply()
        try:
            request.ParseFromString(msg.data)
            check_model_name(
                request.model_name, "load" if request.load else "unload"
            )  # the gateway checked too; NATS may have other clients
            if self._mode == "poll":
                raise Unavailable(POLL_REFUSAL)
            if request.load:  # serialized per model inside (_model_lock), concurrent across models
                await self._load(request.model_name, request.config_json, dict(request.files))
            else:
                await self._unload(request.model_name, request.unload_dependents)
        except MeshError as exc:
            reply.error.code, reply.error.message = exc.code, exc.message
        except Exception as exc:
            log.exception("model control failed")
            err = Internal(f"{type(exc).__name__}: {exc}")
            reply.error.code, reply.error.message = err.code, err.message
        if msg.reply and self._nc is not None:
            await self._nc.publish(msg.reply, reply.SerializeToString())

    async def _load(self, name: str, config_json: str = "", files: dict[str, bytes] | None = None) -> None:
        """(Re)load ``name`` — with an override config and files when given — after the models it
        composes (an ensemble's steps) that are not loaded yet."""
        files = files or {}
        root: Path | None = None
        if config_json or files:
            if not config_json:
                raise InvalidArgument(
                    f"failed to load '{name}': 'file:' parameters need a 'config' parameter "
                    "(the override model directory's configuration)"
                )
            config = parse_override_config(name, config_json)
            source = self._owner.repository / name
            if self._managed is None:
                self._managed = Path(tempfile.mkdtemp(prefix="meshserve-override-"))
            self._load_seq += 1
            root = materialize(
                self._managed / str(self._load_seq),
                name,
                config,
                files,
                source if source.is_dir() and not files else None,
            )
        try:
            target = self._owner.read_entry(name, root)

            def config_of(model: str) -> mc.ModelConfig | None:
                if model == name:
                    return target.config if target is not None else None
                return self._config_of(model)

            for dep in load_order(name, config_of)[:-1]:
                async with self._model_lock(dep):
                    if dep not in self._loaded:
                        log.info("loading '%s', composed by '%s'", dep, name)
                        await self._load_one(dep, None)
            async with self._model_lock(name):
                await self._load_one(name, root)
                old_dir = self._override_dirs.pop(name, None)
                if root is not None:
                    self._override_dirs[name] = root
        except BaseException:
            if root is not None:
                shutil.rmtree(root, ignore_errors=True)
            raise
        if old_dir is not None:
            shutil.rmtree(old_dir, ignore_errors=True)

    def _model_lock(self, name: str) -> asyncio.Lock:
        lock = self._model_locks.get(name)
        if lock is None:
            lock = self._model_locks[name] = asyncio.Lock()
        return lock

    def _config_of(self, name: str) -> mc.ModelConfig | None:
        if name in self._loaded:
            return self._loaded[name]
        entry = self._owner.read_entry(name)
        return entry.config if entry is not None else None

    async def _load_one(self, name: str, root: Path | None) -> None:
        before = self._owner.entry(name) if name in self._loaded else None
        entry = self._unloaded.pop(name, None)
        if entry is not None:
            await self._clear_unloaded(entry)
        log.info("loading model '%s'%s", name, " (override)" if root is not None else "")
        target = self._owner.read_entry(name, root)
        versions = target.versions if target is not None else ()
        if before is None:  # a reload keeps serving: it stays READY throughout
            await self._record(name, versions, "LOADING")
        try:
            async with self._load_slots:
                readies = await self._owner.start_model(name, root)
        except MeshError as exc:
            if entry is not None:  # still not loaded
                self._unloaded[name] = entry
                await self._announce_unloaded()
                await self._record(name, entry.versions, "UNAVAILABLE", UNLOADED_REASON)
            elif before is None:
                await self._record(name, versions, "UNAVAILABLE", exc.message)
            raise
        after = self._owner.entry(name)
        failed = [r for r in readies if r.get("state") != "READY"]
        # an ensemble may have no worker of its own: its steps run on its composing models' workers
        workerless = after is not None and bool(composing_models(after.config))
        if failed or not (readies or workerless):
            reason = failed[0].get("reason", "") if failed else "it has no version to serve"
            if before is None:
                await self._record(name, versions, "UNAVAILABLE", reason)
            raise Internal(f"failed to load '{name}': {reason}")
        self._loaded[name] = after.config if after is not None else None
        await self._record(name, after.versions if after is not None else versions, "READY")
        if before is not None and after is not None:
            gone = tuple(v for v in before.versions if v not in after.versions)
            if gone:
                await self._announce_removed(name, gone)

    async def _unload(self, name: str, dependents: bool = False) -> None:
        entry = self._owner.entry(name)
        if entry is None and name not in self._loaded:
            raise ModelNotFound(f"failed to unload '{name}': no model of that name in the repository")
        names = [name]
        if dependents:
            names += dependents_to_unload(name, self._loaded)
        for model in names:
            async with self._model_lock(model):
                await self._unload_one(model, name)
        await self._announce_unloaded()

    async def _unload_one(self, model: str, name: str) -> None:
        """Unload one model (its lock held): the repository's "unloaded" marker stays, an override's goes."""
        log.info("unloading model '%s'%s", model, f" (composed by '{name}')" if model != name else "")
        loaded = self._owner.entry(model)
        await self._record(model, loaded.versions if loaded is not None else (), "UNLOADING")
        await self._owner.stop_model(model)
        self._loaded.pop(model, None)
        override = self._override_dirs.pop(model, None)
        if override is not None:
            shutil.rmtree(override, ignore_errors=True)
        marker = self._owner.read_entry(model)  # the repository's, not an override's
        if marker is not None:
            self._unloaded[model] = marker
            if loaded is not None and loaded.versions != marker.versions:
                await self._announce_removed(model)  # the override's versions go; the repository's stay
            await self._record(model, marker.versions, "UNAVAILABLE", UNLOADED_REASON)
        else:  # known only from an override: nothing left to show
            await self._announce_removed(model)

    # -- poll mode ----------------------------------------------------------------------------------
    async def _poll(self, watcher: RepositoryWatcher) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                current = await loop.run_in_executor(None, snapshot, self._owner.repository)
                changes = watcher.update(current)
                if changes:
                    async with self._lock:
                        await self._apply(changes)
            except Exception:  # the loop must outlive one bad poll
                log.exception("polling the model repository failed")

    async def _apply(self, changes: RepositoryChanges) -> None:
        for name in changes.removed:
            log.info("model '%s' left the repository: unloading it", name)
            await self._owner.stop_model(name)
            self._loaded.pop(name, None)
            self._owner.forget(name)
            await self._announce_removed(name)
        for name in changes.added + changes.changed:
            log.info("model '%s' %s: loading it", name, "is new" if name in changes.added else "changed")
            try:
                await self._load(name)
            except MeshError as exc:
                log.error("%s", exc.message)
                entry = self._owner.read_entry(name)
                if name not in self._loaded and entry is not None:
                    await self._announce_failed(entry)
                    if entry.error:
                        await self._record(name, entry.versions, "UNAVAILABLE", entry.error)
