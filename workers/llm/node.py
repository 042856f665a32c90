"""One stage process's place in the ring: its gRPC ``PipelineStage`` service (frames from the previous
stage), its stream to the next stage, its announcements on NATS, and what happens when a link breaks.

Steps flow 0 → 1 → … → N-1 and the last stage's tokens go back to stage 0, each hop one long-lived
gRPC bidi stream (``PipelineStage.Forward``) that the sender opens to the next stage's announced
address, so stages may run on different machines.  A stage that loses a link (the next stage's stream
errors or ends, the previous one's stream ends, a step fails) publishes a ``StageFault``: every stage
of the model then ends all its sequences with that error (to each requester's reply subject, so the
client hears even when stage 0 is the one that died) and frees their KV cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch
from nats.aio.client import Client
from nats.aio.msg import Msg

from meshserve import tracing
from meshserve.errors import Unavailable
from meshserve.pb import mesh_pb2, mesh_pb2_grpc
from workers.llm import discovery
from workers.llm.engine import step_attributes
from workers.llm.params import LlmParams
from workers.llm.stage import SeqInfo, StageRuntime, decode_hidden, encode_hidden

log = logging.getLogger(__name__)

__all__ = ["StageNode"]

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
]


class StageNode(mesh_pb2_grpc.PipelineStageServicer):
    def __init__(
        self,
        nc: Client,
        runtime: StageRuntime,
        params: LlmParams,
        compute: ThreadPoolExecutor,
        model: str,
        version: int,
        host: str,
        advertise: str = "",
    ) -> None:
        self.nc, self.rt, self.params, self.compute = nc, runtime, params, compute
        self.model, self.version, self.host = model, version, host
        self.advertise = advertise or host
        """The address other stages dial (``--advertise-host``; the bind address may be 0.0.0.0)."""
        self.stage, self.stages = runtime.stage, runtime.stages
        self.next_stage = (self.stage + 1) % self.stages
        self.table = discovery.StageTable(model, version, self.stages, params.stage_stale_s)
        self.instance_id = f"{model}-{version}-stage{self.stage}-{uuid.uuid4().hex[:8]}"
        self.address = ""
        self.metrics_url = ""
        self.state = mesh_pb2.LOADING
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall[mesh_pb2.StageFrame, mesh_pb2.StageAck] | None = None
        self._call_peer = ""
        self._inbox: asyncio.Queue[mesh_pb2.StageStep] = asyncio.Queue(maxsize=32)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._linking = asyncio.Lock()
        self.on_tokens: Callable[[mesh_pb2.StageTokens], Awaitable[None]] | None = None
        """Stage 0: where the last stage's tokens go (the engine)."""
        self.on_reset: Callable[[str], Awaitable[None]] | None = None
        """Stage 0: the engine ends its sequences (it knows more about them than the runtime)."""
        self.on_ring_change: Callable[[bool], Awaitable[None]] | None = None
        self.ring_ok = self.stages == 1
        self.faults = 0
        self.hops = 0
        self.hop_s = 0.0
        """Sum of (receipt - send) wall-clock times of the steps that reached this stage."""

    # -- start / stop ------------------------------------------------------------------------------
    async def start(self, port: int = 0) -> None:
        if self.stages > 1:
            self._server = grpc.aio.server(options=GRPC_OPTIONS)
            mesh_pb2_grpc.add_PipelineStageServicer_to_server(self, self._server)
            bound = self._server.add_insecure_port(f"{self.host}:{port}")
            await self._server.start()
            self.address = f"{self.advertise}:{bound}"
        await self.nc.subscribe(discovery.announce_subject(), cb=self._on_announcement)
        await self.nc.subscribe(discovery.query_subject(), cb=self._on_query)
        await self.nc.subscribe(discovery.fault_subject(self.model, self.version), cb=self._on_fault)
        self.state = mesh_pb2.READY
        self._spawn(self._heartbeat())
        if self.stage != 0:
            self._spawn(self._process())
        await self.nc.publish(discovery.query_subject(), b"")
        await self.announce()

    async def stop(self) -> None:
        self._stopping = True
        self.state = mesh_pb2.STOPPING
        await self.announce()
        for task in list(self._tasks):
            task.cancel()
        if self._call is not None:
            self._call.cancel()
        if self._channel is not None:
            await self._channel.close()
        if self._server is not None:
            await self._server.stop(0.5)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- announcements -----------------------------------------------------------------------------
    def announcement(self) -> mesh_pb2.StageAnnouncement:
        return mesh_pb2.StageAnnouncement(
            instance_id=self.instance_id, model_name=self.model, model_version=self.version,
            stage=self.stage, stages=self.stages, state=self.state, address=self.address,
            kv_sequences=self.rt.pool.sequences, kv_tokens=self.rt.pool.tokens_reserved,
            layer_start=self.rt.start, layer_end=self.rt.end, metrics=self.metrics_url,
            linked=self.stages == 1 or self._call is not None,
        )  # fmt: skip

    async def announce(self) -> None:
        a = self.announcement()
        self.table.update(a)
        try:
            await self.nc.publish(discovery.announce_subject(), a.SerializeToString())
        except Exception as exc:
            log.warning("cannot announce: %s", exc)

    async def _heartbeat(self) -> None:
        while True:
            await self.announce()
            await self._check_ring()
            await asyncio.sleep(self.params.heartbeat_s)

    async def _on_query(self, _msg: Msg) -> None:
        await self.announce()

    async def _on_announcement(self, msg: Msg) -> None:
        try:
            a = mesh_pb2.StageAnnouncement.FromString(msg.data)
        except Exception:
            return
        if a.instance_id == self.instance_id or not self.table.update(a):
            return
        if a.stage == self.next_stage and self.stages > 1:
            if self._call is None or a.address != self._call_peer:
                if a.state == mesh_pb2.READY:
                    self._spawn(self._link())
        await self._check_ring()

    async def _check_ring(self) -> None:
        ok = self.stages == 1 or (
            not self.table.missing()
            and self._call is not None
            and all(p.announcement.linked for p in self.table.peers.values())
        )
        if ok != self.ring_ok:
            self.ring_ok = ok
            missing = self.table.missing()
            log.info(
                "ring %s%s",
                "complete" if ok else "incomplete",
                f" (missing stages {missing})" if missing else "",
            )
            if not ok and self.stage == 0:
                await self.fault(f"stage(s) {missing or [self.next_stage]} of {self.stages} are gone")
            if self.on_ring_change is not None:
                await self.on_ring_change(ok)

    # -- the link to the next stage -------------------------------------------------------------------
    async def _link(self) -> None:
        async with self._linking:
            peer = self.table.live(self.next_stage)
            if peer is None or (self._call is not None and peer.address == self._call_peer):
                return
            if self._channel is not None:
                await self._channel.close()
            self._channel = grpc.aio.insecure_channel(peer.address, options=GRPC_OPTIONS)
            stub = mesh_pb2_grpc.PipelineStageStub(self._channel)
            call = stub.Forward()
            self._call, self._call_peer = call, peer.address
            log.info("stage %d → stage %d at %s: linked", self.stage, self.next_stage, peer.address)
            self._spawn(self._watch(call, peer.address))
        await self.announce()
        await self._check_ring()

    async def _watch(
        self, call: grpc.aio.StreamStreamCall[mesh_pb2.StageFrame, mesh_pb2.StageAck], peer: str
    ) -> None:
        """The reply stream stays silent: it ending, or failing, means the next stage is gone."""
        try:
            while True:
                ack = await call.read()
                if ack is grpc.aio.EOF:
                    break
            reason = "closed its stream"
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and self._stopping:
                raise
            reason = f"{exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else 'cancelled'}"
        if self._stopping or self._call is not call:
            return
        self._call, self._call_peer = None, ""
        await self.fault(
            f"lost the link from stage {self.stage} to stage {self.next_stage} at {peer} ({reason})"
        )
        await self._check_ring()

    async def send(self, frame: mesh_pb2.StageFrame) -> None:
        call = self._call
        if call is None:
            raise Unavailable(f"stage {self.stage} has no link to stage {self.next_stage}")
        try:
            await call.write(frame)
        except Exception as exc:
            if self._call is call:
                self._call, self._call_peer = None, ""
                await self.fault(f"cannot send to stage {self.next_stage}: {type(exc).__name__}: {exc}")
            raise Unavailable(f"stage {self.next_stage} is gone") from exc

    # -- frames from the previous stage ---------------------------------------------------------------
    async def Forward(
        self,
        request_iterator: AsyncIterator[mesh_pb2.StageFrame],
        context: grpc.aio.ServicerContext[mesh_pb2.StageFrame, mesh_pb2.StageAck],
    ) -> AsyncIterator[mesh_pb2.StageAck]:
        prev = (self.stage - 1) % self.stages
        log.info("stage %d: stream from stage %d opened", self.stage, prev)
        try:
            async for frame in request_iterator:
                kind = frame.WhichOneof("kind")
                if kind == "step":
                    if frame.step.sent_unix_ns and frame.step.seqs:
                        self.hops += 1
                        self.hop_s += max(0, time.time_ns() - frame.step.sent_unix_ns) / 1e9
                    await self._inbox.put(frame.step)
                elif kind == "tokens" and self.on_tokens is not None:
                    await self.on_tokens(frame.tokens)
        except Exception as exc:
            if not self._stopping:
                await self.fault(f"lost the stream from stage {prev} ({type(exc).__name__})")
            return
        if not self._stopping:
            await self.fault(f"stage {prev} closed its stream to stage {self.stage}")
        return
        yield  # an async generator (the reply stream), silent by design

    async def _process(self) -> None:
        """Stages 1..N-1: run each step on the compute thread, pass the result on."""
        loop = asyncio.get_running_loop()
        while True:
            step = await self._inbox.get()
            start_ns = time.time_ns()
            try:
                out = await loop.run_in_executor(self.compute, self._compute, step)
            except Exception as exc:
                log.exception("stage %d: step %d failed", self.stage, step.step_id)
                await self.fault(f"stage {self.stage} failed a step: {type(exc).__name__}: {exc}")
                continue
            if step.traceparent:  # set only when tracing is on and the step holds a traced request
                tokens = sum(s.length for s in step.seqs)
                attributes = step_attributes(self.model, self.stage, step, tokens)
                tracing.record_step_span("llm stage", step.traceparent, start_ns, time.time_ns(), attributes)
            if isinstance(out, mesh_pb2.StageTokens):
                if step.seqs:
                    await self._send_quiet(mesh_pb2.StageFrame(tokens=out))
            else:
                await self._send_quiet(mesh_pb2.StageFrame(step=out))  # frees travel on, too

    async def _send_quiet(self, frame: mesh_pb2.StageFrame) -> None:
        try:
            await self.send(frame)
        except Unavailable:
            pass  # already a fault

    def _compute(self, step: mesh_pb2.StageStep) -> mesh_pb2.StageStep | mesh_pb2.StageTokens:
        """On the compute thread: decode, run, encode."""
        length = sum(s.length for s in step.seqs)
        x = (
            decode_hidden(step.hidden, step.dtype, self.rt.config.hidden_size)
            if length
            else torch.empty((0, self.rt.config.hidden_size))
        )
        out = self.rt.run(step, x)
        if isinstance(out, list):
            return mesh_pb2.StageTokens(
                step_id=step.step_id, seq_ids=[s.seq_id for s in step.seqs], tokens=out
            )
        data, dtype = encode_hidden(out)
        forwarded = mesh_pb2.StageStep(
            step_id=step.step_id, hidden=data, dtype=dtype, free=step.free, sent_unix_ns=time.time_ns(),
            traceparent=step.traceparent,
        )  # fmt: skip
        for s in step.seqs:
            forwarded.seqs.append(s)
        return forwarded

    # -- faults ----------------------------------------------------------------------------------------
    async def fault(self, message: str) -> None:
        """Tell every stage (and do it here): drop all sequences with ``message``."""
        log.warning("stage %d: fault: %s", self.stage, message)
        fault = mesh_pb2.StageFault(
            model_name=self.model, model_version=self.version, stage=self.stage, message=message
        )
        try:
            await self.nc.publish(
                discovery.fault_subject(self.model, self.version), fault.SerializeToString()
            )
        except Exception as exc:
            log.warning("cannot publish the fault: %s", exc)
        await self.reset(message)

    async def _on_fault(self, msg: Msg) -> None:
        try:
            fault = mesh_pb2.StageFault.FromString(msg.data)
        except Exception:
            return
        if fault.stage != self.stage:
            await self.reset(fault.message)

    async def reset(self, message: str) -> None:
        self.faults += 1
        while not self._inbox.empty():
            self._inbox.get_nowait()
        if self.on_reset is not None:
            await self.on_reset(message)
            return
        dropped: dict[int, SeqInfo] = await asyncio.get_running_loop().run_in_executor(
            self.compute, self.rt.clear
        )
        error = mesh_pb2.Error(code=Unavailable.code, message=f"model '{self.model}' failed: {message}")
        for info in dropped.values():
            if info.reply_to:
                response = mesh_pb2.InferResponse(
                    request_id=info.request_id, model_name=self.model, model_version=self.version, error=error
                )
                try:
                    await self.nc.publish(info.reply_to, response.SerializeToString())
                except Exception:
                    pass
        if dropped:
            log.warning("stage %d: ended %d sequence(s): %s", self.stage, len(dropped), message)
