"""Stage 0's generation loop: admission, continuous batching, micro-batches in flight, streaming text.

Sequences wait (bounded) until the KV cache has room for prompt + ``max_tokens``, then join the
*ready* set.  Whenever fewer than ``inflight`` micro-batches are out, the loop takes ready sequences
(new ones bring their whole prompt — prefill — the others their last token — decode), runs stage 0's
layers and sends the step down the ring; the last stage's tokens come back, each sequence's text is
streamed to its requester, and the sequence is ready again — so new sequences join at any step
boundary, and with ``inflight`` ≥ stages every stage has a micro-batch to work on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from tokenizers import Tokenizer

from meshserve import tensors, tracing
from meshserve.errors import InvalidArgument, MeshError, Unavailable
from meshserve.params import param_value, set_param
from meshserve.pb import mesh_pb2
from workers.llm.params import LlmParams
from workers.llm.sampling import SamplingParams
from workers.llm.stage import StageRuntime, encode_hidden
from workers.llm.text import Detokenizer

log = logging.getLogger(__name__)

__all__ = ["Engine", "Sequence"]

Publish = Callable[[str, bytes], Awaitable[None]]
OUTPUT = "text_output"


@dataclass(slots=True)
class Sequence:
    seq_id: int
    reply_to: str
    request_id: str
    prompt: list[int]
    params: SamplingParams
    stream: bool
    detok: Detokenizer
    capacity: int
    pos: int = 0
    """Tokens already in the KV cache."""
    next_input: list[int] = field(default_factory=list)
    generated: int = 0
    pending_text: str = ""
    started: bool = False
    cancelled: bool = False
    done: bool = False
    admitted_ns: int = 0
    traceparent: str = ""
    """Set when the gateway sampled the request for tracing: each stage's span of its steps joins it."""


class Engine:
    def __init__(
        self,
        runtime: StageRuntime,
        tokenizer: Tokenizer,
        params: LlmParams,
        compute: ThreadPoolExecutor,
        publish: Publish,
        send: Callable[[mesh_pb2.StageFrame], Awaitable[None]] | None,
        model: str,
        version: int,
        pending_bytes: Callable[[], int] = lambda: 0,
    ) -> None:
        self.rt, self.tok, self.params, self.compute = runtime, tokenizer, params, compute
        self._publish, self._send, self._pending_bytes = publish, send, pending_bytes
        self.model, self.version = model, version
        self.context = runtime.config.max_position_embeddings
        self.eos = set(runtime.config.eos_token_id)
        self._ids = itertools.count(1)
        self._steps = itertools.count(1)
        self.waiting: deque[Sequence] = deque()
        self.ready: deque[Sequence] = deque()
        self.inflight: dict[int, list[Sequence]] = {}
        self.by_reply: dict[str, Sequence] = {}
        self.reserved_tokens = 0
        self.active = 0
        self.pending_free: list[int] = []
        self._wake = asyncio.Event()
        self.available = runtime.stages == 1
        self.unavailable_reason = "the pipeline's stages are not all connected yet"
        self.tokens_out = 0
        self.epoch = 0
        """Bumped by every reset: a step computed across a reset is dropped, not sent."""

    # -- admission ---------------------------------------------------------------------------------
    def parse(self, message: mesh_pb2.InferRequest) -> tuple[list[int], SamplingParams, bool]:
        """The prompt's token ids, sampling and streaming of one request; InvalidArgument when bad."""
        text_input = next((t for t in message.inputs if t.name == "text_input"), None)
        if text_input is None:
            raise InvalidArgument("expected the input 'text_input' (the prompt)")
        values = tensors.to_numpy(text_input.name, text_input.datatype, text_input.shape, text_input.data)
        if values.size != 1:
            raise InvalidArgument(f"text_input must hold exactly one string, got {values.size} elements")
        raw = values.reshape(-1)[0]
        try:
            prompt = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"text_input is not valid UTF-8: {exc}") from None
        if not prompt:
            raise InvalidArgument("text_input is empty: give a prompt of at least one character")
        raw_params = {k: param_value(p) for k, p in message.parameters.items()}
        stream = raw_params.get("stream", False)
        stream_input = next((t for t in message.inputs if t.name == "stream"), None)
        if stream_input is not None:
            arr = tensors.to_numpy(
                stream_input.name, stream_input.datatype, stream_input.shape, stream_input.data
            )
            stream = bool(arr.reshape(-1)[0]) if arr.size else False
        if not isinstance(stream, bool):
            raise InvalidArgument(f"stream must be a boolean, got {stream!r}")
        sampling = SamplingParams.parse(
            raw_params, self.params.max_tokens_limit, self.params.default_max_tokens
        )
        ids = self.tok.encode(prompt, add_special_tokens=False).ids
        bos = self.rt.config.bos_token_id
        if self.params.add_bos_token and bos is not None:
            ids = [bos, *ids]
        if len(ids) + sampling.max_tokens > self.context:
            raise InvalidArgument(
                f"the prompt ({len(ids)} tokens) plus max_tokens ({sampling.max_tokens}) exceeds the model's "
                f"context of {self.context} tokens"
            )
        if len(ids) + sampling.max_tokens > self.params.max_kv_tokens:
            raise InvalidArgument(
                f"the prompt ({len(ids)} tokens) plus max_tokens ({sampling.max_tokens}) exceeds the KV cache "
                f"of {self.params.max_kv_tokens} tokens (max_kv_tokens)"
            )
        return ids, sampling, stream

    async def submit(self, message: mesh_pb2.InferRequest, reply_to: str) -> None:
        """Admit one request, or answer it at once with the reason it cannot run."""
        try:
            if not self.available:
                raise Unavailable(f"model '{self.model}' cannot generate now: {self.unavailable_reason}")
            ids, sampling, stream = self.parse(message)
            if len(self.waiting) >= self.params.max_waiting:
                raise Unavailable(
                    f"{len(self.waiting)} requests are already waiting for KV cache room (max_waiting); try again"
                )
        except MeshError as exc:
            await self._reply(reply_to, self._response(message.request_id, error=exc))
            return
        seq = Sequence(
            seq_id=next(self._ids), reply_to=reply_to, request_id=message.request_id, prompt=ids,
            params=sampling, stream=stream, detok=Detokenizer(self.tok, sampling.stop),
            capacity=len(ids) + sampling.max_tokens, next_input=list(ids), admitted_ns=time.monotonic_ns(),
            traceparent=message.traceparent,
        )  # fmt: skip
        if reply_to:
            self.by_reply[reply_to] = seq
        self.waiting.append(seq)
        self._admit()
        self._wake.set()

    def _admit(self) -> None:
        while self.waiting:
            seq = self.waiting[0]
            if (
                self.active >= self.params.max_sequences
                or self.reserved_tokens + seq.capacity > self.params.max_kv_tokens
            ):
                return
            self.waiting.popleft()
            self.active += 1
            self.reserved_tokens += seq.capacity
            self.ready.append(seq)

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (
                self.available
                and len(self.inflight) < self.params.inflight
                and (self.ready or self.pending_free)
            ):
                await self._launch(self._take())

    def _take(self) -> list[Sequence]:
        """Up to an even share of the ready sequences (so the in-flight micro-batches are balanced)."""
        share = -(-(self.active) // self.params.inflight)
        batch: list[Sequence] = []
        tokens = 0
        while self.ready and len(batch) < max(1, share):
            seq = self.ready[0]
            if batch and tokens + len(seq.next_input) > self.params.max_step_tokens:
                break
            self.ready.popleft()
            if seq.cancelled or seq.done:
                continue
            batch.append(seq)
            tokens += len(seq.next_input)
        return batch

    async def _launch(self, batch: list[Sequence]) -> None:
        step = mesh_pb2.StageStep(step_id=next(self._steps) if batch else 0, free=self.pending_free)
        self.pending_free = []
        ids: list[int] = []
        for seq in batch:
            s = mesh_pb2.StageSeq(seq_id=seq.seq_id, start=seq.pos, length=len(seq.next_input))
            if not seq.started:
                p = seq.params
                s.capacity = seq.capacity
                s.reply_to, s.request_id = seq.reply_to, seq.request_id
                s.sampling.CopyFrom(
                    mesh_pb2.StageSampling(
                        temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                        has_seed=p.seed is not None, seed=p.seed or 0,
                    )
                )  # fmt: skip
                seq.started = True
            step.seqs.append(s)
            ids.extend(seq.next_input)
        if batch:
            self.inflight[step.step_id] = batch
        traced = next((seq for seq in batch if seq.traceparent), None) if tracing.enabled() else None
        if traced is not None:  # the later stages record their spans of this step under it too
            step.traceparent = traced.traceparent
        loop = asyncio.get_running_loop()
        epoch = self.epoch
        start_ns = time.time_ns()
        try:
            out = await loop.run_in_executor(self.compute, self._compute, step, ids)
        except Exception as exc:
            log.exception("stage 0: step failed")
            await self.reset(f"stage 0 failed a step: {type(exc).__name__}: {exc}")
            return
        if traced is not None:
            tracing.record_step_span(
                "llm stage",
                traced.traceparent,
                start_ns,
                time.time_ns(),
                step_attributes(self.model, 0, step, len(ids)) | {tracing.REQUEST_ID: traced.request_id},
            )
        if epoch != self.epoch:
            return  # a fault ended these sequences while the step ran
        if isinstance(out, mesh_pb2.StageTokens):
            await self.on_tokens(out)
        elif self._send is not None:
            try:
                await self._send(mesh_pb2.StageFrame(step=out))
            except MeshError:
                pass  # the link's fault ends these sequences

    def _compute(self, step: mesh_pb2.StageStep, ids: list[int]) -> mesh_pb2.StageStep | mesh_pb2.StageTokens:
        out = self.rt.run(step, torch.tensor(ids, dtype=torch.long))
        if isinstance(out, list):
            return mesh_pb2.StageTokens(
                step_id=step.step_id, seq_ids=[s.seq_id for s in step.seqs], tokens=out
            )
        data, dtype = encode_hidden(out)
        step.hidden, step.dtype, step.sent_unix_ns = data, dtype, time.time_ns()
        return step

    async def on_tokens(self, result: mesh_pb2.StageTokens) -> None:
        batch = self.inflight.pop(result.step_id, None)
        if batch is None:
            return  # a step from before a reset
        by_id = {seq.seq_id: seq for seq in batch}
        behind = self._pending_bytes() > self.params.stream_pending_bytes
        for seq_id, token in zip(result.seq_ids, result.tokens, strict=True):
            seq = by_id.get(seq_id)
            if seq is None:
                continue
            seq.pos += len(seq.next_input)
            if seq.cancelled:
                self._finish(seq)
                continue
            seq.generated += 1
            self.tokens_out += 1
            reason = ""
            if token in self.eos and not seq.params.ignore_eos:
                reason = "stop"
            else:
                seq.pending_text += seq.detok.add(token)
                if seq.detok.stopped:
                    reason = "stop"
                elif seq.generated >= seq.params.max_tokens:
                    reason = "length"
            if reason:
                seq.pending_text += seq.detok.flush()
                await self._reply(seq.reply_to, self._response(seq.request_id, seq.pending_text, reason, seq))
                self._finish(seq)
                continue
            if seq.stream and seq.pending_text and not behind:
                await self._reply(seq.reply_to, self._response(seq.request_id, seq.pending_text, more=True))
                seq.pending_text = ""
            seq.next_input = [token]
            self.ready.append(seq)
        self._admit()
        self._wake.set()

    def _finish(self, seq: Sequence) -> None:
        if seq.done:
            return
        seq.done = True
        self.by_reply.pop(seq.reply_to, None)
        if seq.started:
            self.pending_free.append(seq.seq_id)
        self.active -= 1
        self.reserved_tokens -= seq.capacity
        self._wake.set()

    # -- cancel and faults --------------------------------------------------------------------------
    def cancel(self, reply_to: str) -> bool:
        """The requester went away: stop generating for it and free its KV cache in every stage."""
        seq = self.by_reply.pop(reply_to, None)
        if seq is None:
            return False
        seq.cancelled = True
        if seq in self.waiting:
            self.waiting.remove(seq)
            seq.done = True
            return True
        in_flight = any(seq in b for b in self.inflight.values())
        if not in_flight:
            self._finish(seq)  # the loop skips it in `ready`; the free goes out with the next step
        self._admit()
        self._wake.set()
        return True

    async def reset(self, message: str) -> None:
        """A stage failed: every sequence ends with ``message``; every stage frees everything."""
        seqs = {
            s.seq_id: s for s in [*self.waiting, *self.ready, *[s for b in self.inflight.values() for s in b]]
        }
        self.waiting.clear()
        self.ready.clear()
        self.inflight.clear()
        self.by_reply.clear()
        self.pending_free = []
        self.active = 0
        self.reserved_tokens = 0
        await asyncio.get_running_loop().run_in_executor(self.compute, self.rt.clear)
        error = Unavailable(f"model '{self.model}' failed: {message}")
        for seq in seqs.values():
            if not seq.done and not seq.cancelled:
                seq.done = True
                await self._reply(seq.reply_to, self._response(seq.request_id, error=error))
        if seqs:
            log.warning("ended %d sequence(s): %s", len(seqs), message)

    async def set_available(self, ok: bool, reason: str = "") -> None:
        self.available = ok
        if reason:
            self.unavailable_reason = reason
        self._wake.set()

    # -- responses -----------------------------------------------------------------------------------
    def _response(
        self, request_id: str, text: str = "", finish: str = "", seq: Sequence | None = None,
        more: bool = False, error: MeshError | None = None,
    ) -> mesh_pb2.InferResponse:  # fmt: skip
        r = mesh_pb2.InferResponse(request_id=request_id, model_name=self.model, model_version=self.version)
        if error is not None:
            r.error.code, r.error.message = error.code, error.message
            return r
        datatype, shape, data = tensors.from_numpy(np.array([text.encode()], dtype=object))
        r.outputs.append(mesh_pb2.Tensor(name=OUTPUT, datatype=datatype, shape=shape, data=data))
        r.more = more
        if finish and seq is not None:
            set_param(r.parameters["finish_reason"], finish)
            set_param(r.parameters["prompt_tokens"], len(seq.prompt))
            set_param(r.parameters["completion_tokens"], seq.generated)
        return r

    async def _reply(self, reply_to: str, response: mesh_pb2.InferResponse) -> None:
        if not reply_to:
            return
        try:
            await self._publish(reply_to, response.SerializeToString())
        except Exception as exc:
            log.warning("cannot publish to %s: %s", reply_to, exc)


def step_attributes(model: str, stage: int, step: mesh_pb2.StageStep, tokens: int) -> dict[str, str | int]:
    """What an ``llm stage`` span says about the step: which stage, which micro-batch, how big."""
    return {
        "meshserve.model": model,
        "meshserve.stage": stage,
        "meshserve.step_id": step.step_id,
        "meshserve.sequences": len(step.seqs),
        "meshserve.tokens": tokens,
    }
