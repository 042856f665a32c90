"""The gateway process: gRPC :8001 and HTTP :8000 in front, NATS behind, Prometheus on :8002."""

from __future__ import annotations

import asyncio
import logging

import grpc
from aiohttp import web
from nats.aio.msg import Msg

from gateway.auth import GrpcAuthInterceptor
from gateway.core import InferenceCore
from gateway.dispatcher import Dispatcher
from gateway.grpc_parse import ParseRequestsInterceptor
from gateway.grpc_service import InferenceServicer
from gateway.http_service import build_app
from gateway.mesh_ensembles import MeshEnsembles
from gateway.metrics import build_registry, start_metrics_server
from gateway.models import ModelTable
from gateway.peers import GatewayPeers
from gateway.runtime_settings import RuntimeSettings
from gateway.tls import grpc_server_credentials, http_ssl_context
from meshserve import subjects
from meshserve.lifecycle import close_nats, install_stop_signals
from meshserve.listen import bind_listener
from meshserve.logs import announce_ready
from meshserve.messaging import NatsEvents, connect_service
from meshserve.model_states import ModelStateStore
from meshserve.pb import grpc_service_pb2_grpc as pb_grpc
from meshserve.pb import mesh_pb2
from meshserve.settings import GatewaySettings
from meshserve.settings_store import SettingsStore

log = logging.getLogger(__name__)

__all__ = ["run"]


async def run(settings: GatewaySettings) -> None:
    stop = install_stop_signals(settings.exit_with_parent)
    events = NatsEvents(gave_up=[stop.set])
    nc = await connect_service(settings.nats_url, "gateway", settings.limits, events)
    models = ModelTable(settings.instance_stale_after_s)
    if settings.model_repository is not None:
        models.load_repository(settings.model_repository)

    async def on_announce(msg: Msg) -> None:
        ann = mesh_pb2.WorkerAnnouncement()
        try:
            ann.ParseFromString(msg.data)
        except Exception:
            log.warning("undecodable worker announcement dropped")
            return
        models.apply(ann)

    await nc.subscribe(subjects.worker_announce(), cb=on_announce)
    await nc.publish(subjects.worker_query(), b"")
    states = await ModelStateStore.open(nc)
    watch = (
        asyncio.create_task(states.watch(models.apply_record, models.drop_record))
        if states is not None
        else None
    )
    dispatcher = Dispatcher(nc, batcher_timeout_s=settings.limits.batcher_timeout_s)
    events.disconnected.append(dispatcher.connection_lost)
    events.reconnected.append(dispatcher.connection_back)
    core = InferenceCore(settings, models, dispatcher)
    core.peers = GatewayPeers(nc, core.local_statistics, collect_timeout_s=settings.stats_collect_timeout_s)
    await core.peers.start()
    mesh_ensembles = MeshEnsembles(nc, core)  # BLS calls to ensembles (gateway/mesh_ensembles.py)
    await mesh_ensembles.start()
    await core.shm_control.attach(nc, core.peers.live_peers)
    core.runtime = RuntimeSettings(await SettingsStore.open(nc), lambda name: name in models.names())
    runtime_watch = asyncio.create_task(core.runtime.watch())  # TraceSetting / LogSettings of any gateway

    limit = settings.limits.grpc_message_bytes
    request_limits = settings.request_limits
    grpc_server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
            # gRPC has a soft limit (refuses with a probability growing past it) and a hard one
            ("grpc.max_metadata_size", request_limits.grpc_max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", request_limits.grpc_max_metadata_bytes),
            ("grpc.max_concurrent_streams", request_limits.grpc_max_concurrent_streams),
        ],
        interceptors=_interceptors(settings),
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), grpc_server)
    grpc_address = f"{settings.host}:{settings.grpc_port}"
    credentials = grpc_server_credentials(settings.grpc_tls)
    if credentials is None:
        grpc_port = grpc_server.add_insecure_port(grpc_address)
    else:
        grpc_port = grpc_server.add_secure_port(grpc_address, credentials)
    if grpc_port == 0:
        raise SystemExit(f"gateway: cannot bind gRPC on {settings.host}:{settings.grpc_port}")
    await grpc_server.start()

    # handler_cancellation: a client that disconnects cancels its handler, so its request is
    # cancelled through the mesh (the batcher drops it from its queue) instead of running for nobody
    runner = web.AppRunner(
        build_app(core),
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        max_line_size=request_limits.http_max_field_bytes,
        max_field_size=request_limits.http_max_field_bytes,
        max_headers=request_limits.http_max_headers,
    )
    await runner.setup()
    http_socket = bind_listener("HTTP", settings.host, settings.http_port, settings.reuse_port)
    await web.SockSite(runner, http_socket, ssl_context=http_ssl_context(settings.http_tls)).start()
    http_port = http_socket.getsockname()[1]

    metrics_socket = bind_listener(
        "metrics", settings.metrics_address or settings.host, settings.metrics_port
    )
    metrics_runner = await start_metrics_server(
        build_registry(core.stats, models.live_instances), metrics_socket
    )
    metrics_port = metrics_socket.getsockname()[1]
    announce_ready(
        "gateway",
        host=settings.host,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        nats=settings.nats_url,
        grpc_tls=settings.grpc_tls.use_ssl,
        http_tls=settings.http_tls.enabled,
    )
    try:
        await stop.wait()
        core.shutting_down = True
    finally:
        if watch is not None:
            watch.cancel()
        runtime_watch.cancel()
        # stop listening at once (another gateway on the same port takes new connections) and let the
        # RPCs in flight finish, up to their deadline; at most 10 s, so that an idle stream a client
        # keeps open cannot hold the shutdown past the launcher's exit timeout
        await grpc_server.stop(grace=min(settings.limits.request_timeout_s, 10.0))
        await runner.cleanup()
        await metrics_runner.cleanup()
        await core.shm_control.detach()
        await core.peers.stop()
        await mesh_ensembles.stop()
        await close_nats(nc)


def _interceptors(settings: GatewaySettings) -> list[grpc.aio.ServerInterceptor]:
    """Token check first (a refused call is not even parsed; only when tokens are configured, so an
    open gateway pays nothing for it), then our own parsing of each message."""
    auth = settings.auth
    checks: list[grpc.aio.ServerInterceptor] = []
    if auth.inference_tokens or auth.control_tokens:
        checks.append(GrpcAuthInterceptor(auth))
    checks.append(ParseRequestsInterceptor())
    return checks
