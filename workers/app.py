"""The worker process: load one model version, serve batches over TCP frames, announce itself on NATS."""

from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg

from meshserve import subjects
from meshserve.errors import MeshError
from meshserve.lifecycle import close_nats, install_stop_signals
from meshserve.logs import announce_ready
from meshserve.messaging import NatsEvents, connect_service
from meshserve.model_config import (
    ConfigError,
    auto_complete_disabled,
    complete_config,
    config_from_bytes,
    config_to_json,
    load_config,
    needs_auto_complete,
)
from meshserve.netaddr import advertised_host
from meshserve.pb import mesh_pb2
from meshserve.pb import model_config_pb2 as mc
from meshserve.settings import WorkerSettings
from meshserve.settings_follow import start_following
from workers.backends import create_backend
from workers.backends.base import Backend, ConfigCompleter, LoadContext
from workers.bls import BlsClient, install
from workers.cancels import CancelBook
from workers.executor import BatchExecutor
from workers.server import BatchServer
from workers.warmup import run_warmup

log = logging.getLogger(__name__)

__all__ = ["run"]


class Announcer:
    """Publishes this instance's state now and every heartbeat interval."""

    def __init__(self, nc: Client, settings: WorkerSettings, address: str) -> None:
        self._nc = nc
        self._settings = settings
        self.message = mesh_pb2.WorkerAnnouncement(
            instance_id=f"{settings.model_name}-{settings.model_version}-{settings.instance_index}-"
            f"{uuid.uuid4().hex[:8]}",
            model_name=settings.model_name,
            model_version=settings.model_version,
            state=mesh_pb2.LOADING,
            address=address,
            max_inflight_batches=1,
            heartbeat_interval_s=settings.heartbeat_interval_s,
        )

    async def publish(self, state: mesh_pb2.InstanceState | None = None, reason: str | None = None) -> None:
        if state is not None:
            self.message.state = state
        if reason is not None:
            self.message.reason = reason
        try:
            await self._nc.publish(subjects.worker_announce(), self.message.SerializeToString())
        except Exception as exc:  # NATS down: the next heartbeat tries again
            log.warning("cannot announce: %s", exc)

    async def heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.publish()
            try:
                async with asyncio.timeout(self._settings.heartbeat_interval_s):
                    await stop.wait()
            except TimeoutError:
                pass


def _load_context(settings: WorkerSettings, model_dir: Path, config: mc.ModelConfig) -> LoadContext:
    return LoadContext(
        model_name=settings.model_name,
        model_version=settings.model_version,
        model_dir=model_dir,
        config=config,
        config_json=config_to_json(config),
        instance_name=f"{settings.model_name}_{settings.instance_index}",
        device=settings.device,
    )


async def _load(
    settings: WorkerSettings, compute: ThreadPoolExecutor, announcer: Announcer
) -> Backend | None:
    """Load the model on the compute thread; on failure announce UNAVAILABLE with the reason."""
    model_dir = settings.model_repository / settings.model_name
    loop = asyncio.get_running_loop()
    try:
        config = load_config(model_dir)
        announcer.message.platform = config.platform or config.backend
        backend = create_backend(config.backend)
        ctx = _load_context(settings, model_dir, config)
        if isinstance(backend, ConfigCompleter) and auto_complete_disabled():
            if needs_auto_complete(config):
                raise ConfigError(
                    f"{model_dir}: the config lists no inputs or no outputs, and auto-complete is off "
                    "(--disable-auto-complete-config / --strict-model-config=true): list them in config.pbtxt"
                )
        elif isinstance(backend, ConfigCompleter):
            # Before the config is announced: gateways and batchers only ever see the completed one.
            await loop.run_in_executor(compute, backend.auto_complete_config, ctx)
            complete_config(config, settings.model_name, f"{model_dir} (auto-completed)")
            ctx = _load_context(settings, model_dir, config)
        announcer.message.model_config = config.SerializeToString()
        await announcer.publish(mesh_pb2.LOADING)
        await loop.run_in_executor(compute, backend.load, ctx)
        try:
            runs = await loop.run_in_executor(compute, run_warmup, backend, config, model_dir)
        except BaseException:
            await loop.run_in_executor(compute, backend.unload)
            raise
        if runs:
            log.info("model %s: %d warm-up runs done", settings.model_name, runs)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, MeshError) else f"{type(exc).__name__}: {exc}"
        log.error(
            "model %s version %d failed to load: %s", settings.model_name, settings.model_version, reason
        )
        await announcer.publish(mesh_pb2.UNAVAILABLE, f"failed to load: {reason}")
        return None
    return backend


async def run(settings: WorkerSettings) -> None:
    stop = install_stop_signals(settings.exit_with_parent)
    nc = await connect_service(
        settings.nats_url,
        f"worker-{settings.model_name}-{settings.instance_index}",
        settings.limits,
        NatsEvents(gave_up=[stop.set]),
    )
    # NATS is reachable now, so is the route to it that a wildcard --host announces
    host = advertised_host(settings.host, settings.advertise_host, settings.nats_url)
    compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
    announcer = Announcer(nc, settings, address="")  # the batch endpoint opens once the model is loaded
    server: BatchServer | None = None

    async def on_query(_msg: object) -> None:
        await announcer.publish()

    await nc.subscribe(subjects.worker_query(), cb=on_query)
    cancels = CancelBook()

    async def on_cancel(msg: Msg) -> None:
        cancels.add(msg.data.decode(errors="replace"))

    await nc.subscribe(subjects.cancel(settings.model_name, settings.model_version), cb=on_cancel)
    # python models' BLS requests go out on this worker's NATS connection (workers/bls.py)
    install(
        BlsClient(
            nc,
            asyncio.get_running_loop(),
            settings.model_name,
            settings.limits.request_timeout_s,
            settings.limits.max_message_bytes,
        )
    )
    backend: Backend | None = None
    follow = start_following(nc, "worker")  # LogSettings / TraceSetting of the mesh
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(announcer.heartbeat(stop))
            backend = await _load(settings, compute, announcer)
            if backend is not None:
                loaded = config_from_bytes(announcer.message.model_config)  # as completed by the load
                executor = BatchExecutor(
                    backend,
                    nc.publish,
                    compute,
                    settings.limits.max_message_bytes,
                    decoupled=loaded.model_transaction_policy.decoupled,
                    cancels=cancels,
                )
                server = BatchServer(executor, settings.limits.frame_bytes)
                port = await server.start(settings.host, settings.port)
                announcer.message.address = f"{host}:{port}"
                await announcer.publish(mesh_pb2.READY, "")
            announce_ready(
                "worker",
                model=settings.model_name,
                version=settings.model_version,
                instance=settings.instance_index,
                address=announcer.message.address,
                state=mesh_pb2.InstanceState.Name(announcer.message.state),
                reason=announcer.message.reason,
            )
            await stop.wait()
            await announcer.publish(mesh_pb2.STOPPING)
            if server is not None:
                # batchers route around this instance once they see the goodbye; a batch already on
                # its way in that moment must still find the endpoint open
                await asyncio.sleep(min(settings.stop_notice_s, settings.exit_timeout_s))
                await server.stop(settings.exit_timeout_s)
    finally:
        follow.cancel()
        if backend is not None:
            await asyncio.get_running_loop().run_in_executor(compute, backend.unload)
        compute.shutdown(wait=False)
        await close_nats(nc)
