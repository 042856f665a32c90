"""A stage process of an ``llm`` model: ``meshserve worker … --stage K``.

Every stage loads its layer range, opens its ``PipelineStage`` gRPC service and announces itself on
NATS; each links to the next stage it hears of.  Stage 0 is also the model's one instance as the rest
of the mesh sees it: it announces like any worker, takes batches from the batcher over the usual TCP
frames, admits each request into its generation loop (``engine.py``) and answers at once, so the
batcher keeps feeding it (continuous batching); it announces READY only once the ring is complete, and
UNAVAILABLE while a stage is missing.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from meshserve import subjects
from meshserve.lifecycle import close_nats, install_stop_signals
from meshserve.logs import announce_ready
from meshserve.messaging import connect_nats
from meshserve.model_config import load_config
from meshserve.netaddr import advertised_host
from meshserve.pb import mesh_pb2
from meshserve.settings import WorkerSettings
from meshserve.settings_follow import start_following
from workers.app import Announcer
from workers.llm import discovery
from workers.llm.engine import Engine
from workers.llm.node import StageNode
from workers.llm.params import LlmParams
from workers.llm.stage import StageRuntime
from workers.llm.text import load_tokenizer
from workers.server import BatchServer

log = logging.getLogger(__name__)

__all__ = ["run"]


class EngineBatches:
    """Batches from the batcher: each request is admitted (or refused) at once; the batch is done."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def run(self, batch: mesh_pb2.Batch) -> mesh_pb2.BatchDone:
        for item in batch.items:
            message = mesh_pb2.InferRequest()
            try:
                message.ParseFromString(item.request)
            except Exception:
                continue
            await self._engine.submit(message, item.reply_to)
        return mesh_pb2.BatchDone(batch_id=batch.batch_id)


def _metrics(node: StageNode, host: str, advertise: str, port: int = 0) -> str:
    """The stage's own Prometheus endpoint: KV cache use (a cancelled or finished stream shows here)."""
    registry = CollectorRegistry()
    labels = {"model": node.model, "version": str(node.version), "stage": str(node.stage)}

    def gauge(name: str, doc: str, fn: object) -> None:
        g = Gauge(name, doc, list(labels), registry=registry)
        g.labels(**labels).set_function(fn)  # type: ignore[arg-type]

    gauge(
        "meshserve_llm_kv_sequences",
        "Sequences holding KV cache in this stage",
        lambda: node.rt.pool.sequences,
    )
    gauge(
        "meshserve_llm_kv_tokens_reserved",
        "KV cache tokens reserved in this stage",
        lambda: node.rt.pool.tokens_reserved,
    )
    gauge(
        "meshserve_llm_kv_tokens_capacity",
        "KV cache tokens this stage may reserve",
        lambda: node.rt.pool.max_tokens,
    )
    gauge("meshserve_llm_steps", "Steps (micro-batches) this stage computed", lambda: node.rt.steps)
    gauge(
        "meshserve_llm_compute_seconds", "Seconds this stage spent computing steps", lambda: node.rt.compute_s
    )
    gauge(
        "meshserve_llm_step_sequences",
        "Sequences over all steps (divided by steps: mean micro-batch)",
        lambda: node.rt.step_seqs,
    )
    gauge(
        "meshserve_llm_step_tokens",
        "Tokens over all steps (prefill counts every prompt token)",
        lambda: node.rt.step_tokens,
    )
    gauge("meshserve_llm_hops", "Steps received from the previous stage", lambda: node.hops)
    gauge(
        "meshserve_llm_hop_seconds",
        "Sum of send-to-receive times of those steps (wall clocks)",
        lambda: node.hop_s,
    )
    gauge("meshserve_llm_faults", "Faults this stage has seen", lambda: node.faults)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return f"http://{advertise}:{server.server_port}/metrics"


async def run(settings: WorkerSettings) -> None:
    stop = install_stop_signals(settings.exit_with_parent)
    stage = settings.stage
    nc = await connect_nats(settings.nats_url, f"llm-{settings.model_name}-stage{stage}")
    follow = start_following(nc, "worker")  # LogSettings / TraceSetting of the mesh
    compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
    loop = asyncio.get_running_loop()
    model_dir = settings.model_repository / settings.model_name
    announcer: Announcer | None = None
    node: StageNode | None = None
    server: BatchServer | None = None
    stages = 0
    try:
        config = load_config(model_dir)
        params = LlmParams.from_config(config)
        stages = params.stages
        if stage == 0:
            announcer = Announcer(nc, settings, address="")
            announcer.message.platform = "llm"
            announcer.message.model_config = config.SerializeToString()
            await announcer.publish(mesh_pb2.LOADING)
        if not settings.device.startswith("cuda"):
            torch.set_num_threads(params.threads())
        checkpoint = model_dir / str(settings.model_version)
        rt = await loop.run_in_executor(
            compute,
            lambda: StageRuntime(
                checkpoint, stage, params.stages, settings.device, params.dtype,
                params.max_sequences, params.max_kv_tokens,
            ),
        )  # fmt: skip
        log.info(
            "stage %d/%d: layers [%d, %d) on %s, %.1f MB of parameters",
            stage, params.stages, rt.start, rt.end, settings.device, rt.parameter_bytes() / 1e6,
        )  # fmt: skip
        advertise = advertised_host(settings.host, settings.advertise_host, settings.nats_url)
        node = StageNode(
            nc, rt, params, compute, settings.model_name, settings.model_version, settings.host, advertise
        )
        node.metrics_url = _metrics(node, settings.host, advertise)
        engine: Engine | None = None
        if stage == 0:
            engine = Engine(
                rt, load_tokenizer(checkpoint), params, compute, nc.publish, node.send,
                settings.model_name, settings.model_version, lambda: nc.pending_data_size,
            )  # fmt: skip
            node.on_tokens = engine.on_tokens
            node.on_reset = engine.reset
            eng = engine

            async def on_ring(ok: bool) -> None:
                assert node is not None
                if ok and node.faults:
                    # the ring re-formed after a fault: steps that were in flight then may have left KV
                    # cache behind in a stage; every stage starts clean (stage 0 holds no sequence now)
                    await node.fault("the pipeline re-formed; every stage starts clean")
                await eng.set_available(ok, "" if ok else "a stage of the pipeline is missing")
                if announcer is not None and announcer.message.address:  # not before the endpoint is open
                    state = mesh_pb2.READY if ok else mesh_pb2.UNAVAILABLE
                    await announcer.publish(state, "" if ok else f"stage(s) {node_missing()} not connected")

            def node_missing() -> list[int]:
                assert node is not None
                return node.table.missing()

            node.on_ring_change = on_ring

            async def on_cancel(msg: Msg) -> None:
                # the gateway's cancel: the payload is the request's reply subject (gateway/dispatcher.py)
                eng.cancel(msg.data.decode(errors="replace"))

            await nc.subscribe(subjects.cancel(settings.model_name, settings.model_version), cb=on_cancel)
        await node.start()
        async with asyncio.TaskGroup() as tg:
            if engine is not None and announcer is not None:
                tg.create_task(engine.run())
                tg.create_task(announcer.heartbeat(stop))
                await _wait_ring(node, params.ring_timeout_s, stop)
                server = BatchServer(EngineBatches(engine), settings.limits.frame_bytes)
                port = await server.start(settings.host, settings.port)
                announcer.message.address = f"{advertise}:{port}"
                ok = node.ring_ok
                await engine.set_available(ok)
                await announcer.publish(
                    mesh_pb2.READY if ok else mesh_pb2.UNAVAILABLE,
                    ""
                    if ok
                    else "; ".join(node.table.failed.values())
                    or f"stage(s) {node.table.missing()} of {params.stages} did not connect",
                )
            announce_ready(
                "worker", model=settings.model_name, version=settings.model_version,
                instance=settings.instance_index, stage=stage, stages=params.stages,
                layers=[rt.start, rt.end], address=node.address, metrics=node.metrics_url,
                state="READY" if announcer is None else mesh_pb2.InstanceState.Name(announcer.message.state),
                reason="" if announcer is None else announcer.message.reason, pid=os.getpid(),
            )  # fmt: skip
            await stop.wait()
            if announcer is not None:
                await announcer.publish(mesh_pb2.STOPPING)
            if server is not None:
                await asyncio.sleep(min(settings.stop_notice_s, settings.exit_timeout_s))
                await server.stop(settings.exit_timeout_s)
            await node.stop()
            raise _Stop
    except* _Stop:
        pass
    except* Exception as group:
        reason = "; ".join(f"{type(e).__name__}: {e}" for e in group.exceptions)
        log.error("stage %d of model %s failed: %s", stage, settings.model_name, reason)
        if announcer is not None:
            await announcer.publish(mesh_pb2.UNAVAILABLE, f"failed to load: {reason}")
        announce_ready(
            "worker", model=settings.model_name, version=settings.model_version, instance=settings.instance_index,
            stage=stage, state="UNAVAILABLE", reason=reason,
        )  # fmt: skip
        if stages:
            await _announce_failure(nc, settings, stage, stages, reason, stop)
        await stop.wait()
    finally:
        follow.cancel()
        compute.shutdown(wait=False)
        await close_nats(nc)


class _Stop(Exception):
    """Leaves the task group (its background tasks run forever) once the stage has stopped."""


async def _announce_failure(
    nc: Client, settings: WorkerSettings, stage: int, stages: int, reason: str, stop: asyncio.Event
) -> None:
    """A stage that cannot load says so (every second, so a stage 0 that starts later hears it too):
    stage 0 then reports the model UNAVAILABLE with this reason instead of waiting for the ring."""
    message = mesh_pb2.StageAnnouncement(
        instance_id=f"{settings.model_name}-{settings.model_version}-stage{stage}-failed",
        model_name=settings.model_name, model_version=settings.model_version, stage=stage, stages=stages,
        state=mesh_pb2.UNAVAILABLE, reason=f"stage {stage} failed to load: {reason}",
    )  # fmt: skip
    while not stop.is_set():
        try:
            await nc.publish(discovery.announce_subject(), message.SerializeToString())
        except Exception as exc:
            log.warning("cannot announce: %s", exc)
        try:
            async with asyncio.timeout(1.0):
                await stop.wait()
        except TimeoutError:
            pass


async def _wait_ring(node: StageNode, timeout_s: float, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    def waiting() -> bool:
        return not (node.ring_ok or node.table.failed or stop.is_set() or loop.time() >= deadline)

    while waiting():  # noqa: ASYNC110 (the ring's state changes in announcement callbacks)
        await asyncio.sleep(0.05)
