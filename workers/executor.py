"""Runs one batch: decode each request, call the backend on the compute thread, publish each reply.

The worker answers every request of the batch itself, straight to the requester's reply subject;
the batcher only learns that the batch is done.  Whatever goes wrong, each request gets exactly one
reply: its result, or an error naming the cause.  Every reply, errors included, carries the batch's
``Timing`` (Triton's compute_input / compute_infer / compute_output split, plus the request's own
queue and transfer times); exactly one reply per executed batch counts the execution.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from meshserve import tracing
from meshserve.errors import Internal, MeshError, PayloadTooLarge
from meshserve.pb import mesh_pb2
from workers.backends.base import Backend, Request, Result
from workers.cancels import CancelBook
from workers.codec import decode_request, encode_error, encode_result

log = logging.getLogger(__name__)

__all__ = ["BatchExecutor", "Publish"]

Publish = Callable[[str, bytes], Awaitable[None]]


@dataclass(slots=True)
class _Slot:
    """One request of the batch on its way through: decoded, then answered."""

    item: mesh_pb2.BatchItem
    message: mesh_pb2.InferRequest
    request: Request | None = None
    response: mesh_pb2.InferResponse | None = None
    finished: bool = False
    """Decoupled: the final response went out."""


class BatchExecutor:
    def __init__(
        self,
        backend: Backend,
        publish: Publish,
        compute: ThreadPoolExecutor,
        max_message_bytes: int,
        decoupled: bool = False,
        cancels: CancelBook | None = None,
    ) -> None:
        self._backend = backend
        self.cancels = cancels if cancels is not None else CancelBook()
        """Requests whose requesters went away: not run when not started yet; a running python model
        sees ``request.is_cancelled()`` turn true (decoupled or not) and the cancelled request's
        responses are dropped here (backends without the call finish the batch, as Triton's do)."""
        self.skipped = 0
        """Requests not run because they were cancelled before their batch started."""
        self.dropped = 0
        """Responses not sent because their request was cancelled while its batch ran."""
        self._publish = publish
        self._compute = compute
        self._max_message_bytes = max_message_bytes
        self._decoupled = decoupled
        self.emit_timeout_s = 30.0
        """How long a model thread's ``send`` may wait for the event loop to publish its response."""

    async def run(self, batch: mesh_pb2.Batch) -> mesh_pb2.BatchDone:
        """Decode (compute_input), execute (compute_infer), encode (compute_output), then reply to each
        request with the batch's :class:`mesh_pb2.Timing`."""
        start_unix_ns = time.time_ns()
        t0 = time.perf_counter_ns()
        slots = [self._decode(batch.batch_id, item) for item in batch.items]
        live = [slot for slot in slots if slot.item.reply_to not in self.cancels]
        self.skipped += len(slots) - len(live)
        slots = live
        if self._decoupled:
            return await self._run_decoupled(batch, slots, start_unix_ns, time.perf_counter_ns() - t0)
        executed = [(slot, slot.request) for slot in slots if slot.request is not None]
        for slot, request in executed:
            request.is_cancelled = functools.partial(self.cancels.__contains__, slot.item.reply_to)
        t1 = t2 = time.perf_counter_ns()
        if executed:
            results = await self._execute([request for _, request in executed])
            t2 = time.perf_counter_ns()
            for (slot, _), result in zip(executed, results, strict=True):
                slot.response = self._encode(slot.message, result)
        t3 = time.perf_counter_ns()
        timing = mesh_pb2.Timing(
            compute_input_ns=t1 - t0,
            compute_infer_ns=t2 - t1,
            compute_output_ns=t3 - t2,
            batch_rows=sum(max(1, slot.message.batch_size) for slot, _ in executed),
        )
        if tracing.enabled():
            for slot, _ in executed:
                tracing.record_span(
                    "worker compute",
                    slot.message,
                    start_unix_ns,
                    start_unix_ns + t3 - t0,
                    _span_timing(timing),
                )
        first = executed[0][0] if executed else None
        for slot in slots:
            assert slot.response is not None
            slot.response.timing.CopyFrom(timing)
            slot.response.timing.queue_ns = slot.item.queue_ns
            slot.response.timing.transfer_ns = _transfer_ns(slot.item, start_unix_ns)
            slot.response.timing.counts_execution = slot is first
            if slot.item.reply_to in self.cancels:
                self.dropped += 1  # its requester is gone: nobody reads the answer
                continue
            await self._reply(slot.item.reply_to, slot.response)
        return mesh_pb2.BatchDone(batch_id=batch.batch_id)

    async def _run_decoupled(
        self, batch: mesh_pb2.Batch, slots: list[_Slot], start_unix_ns: int, input_ns: int
    ) -> mesh_pb2.BatchDone:
        """Decoupled models answer through ``Request.emit`` (0..N responses, the last one final), while
        ``execute`` runs or after it returns; the batch is done when ``execute`` returns."""
        loop = asyncio.get_running_loop()
        first_emit = [True]
        execute_start_ns = [0]
        """When ``execute`` began (0: not yet): each response says how long after that it left, so the
        final one carries the request's compute_infer (Triton counts the whole execute)."""

        def stamp(slot: _Slot, response: mesh_pb2.InferResponse) -> None:
            response.timing.queue_ns = slot.item.queue_ns
            response.timing.transfer_ns = _transfer_ns(slot.item, start_unix_ns)
            response.timing.compute_input_ns = input_ns
            if execute_start_ns[0]:
                response.timing.compute_infer_ns = time.perf_counter_ns() - execute_start_ns[0]
            response.timing.counts_execution = first_emit[0]
            first_emit[0] = False

        def emitter(slot: _Slot) -> Callable[[Result, bool], None]:
            def emit(result: Result, final: bool) -> None:
                if slot.finished or slot.item.reply_to in self.cancels:
                    return
                response = self._encode(slot.message, result)
                response.more = not final and result.error is None
                slot.finished = not response.more
                stamp(slot, response)
                future = asyncio.run_coroutine_threadsafe(self._reply(slot.item.reply_to, response), loop)
                future.result(timeout=self.emit_timeout_s)

            return emit

        executed = []
        for slot in slots:
            if slot.request is None:
                assert slot.response is not None
                stamp(slot, slot.response)
                await self._reply(slot.item.reply_to, slot.response)
            else:
                slot.request.emit = emitter(slot)
                slot.request.is_cancelled = functools.partial(self.cancels.__contains__, slot.item.reply_to)
                executed.append(slot)
        if executed:
            execute_start_ns[0] = time.perf_counter_ns()
            results = await self._execute_decoupled([slot.request for slot in executed if slot.request])
            if tracing.enabled():
                for slot in executed:
                    tracing.record_span("worker compute", slot.message, start_unix_ns, time.time_ns())
            for slot, result in zip(executed, results, strict=False):
                if result.error is not None and not slot.finished:
                    slot.finished = True
                    response = self._encode(slot.message, result)
                    stamp(slot, response)
                    await self._reply(slot.item.reply_to, response)
        return mesh_pb2.BatchDone(batch_id=batch.batch_id)

    async def _execute_decoupled(self, requests: list[Request]) -> list[Result]:
        """Like :meth:`_execute`, but an empty result list is the normal answer."""
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._compute, self._backend.execute, requests)
        except MeshError as exc:
            return [Result(error=exc) for _ in requests]
        except Exception as exc:
            log.exception("backend execute failed")
            return [
                Result(error=Internal(f"model execution failed: {type(exc).__name__}: {exc}"))
                for _ in requests
            ]
        return results

    @staticmethod
    def _decode(batch_id: int, item: mesh_pb2.BatchItem) -> _Slot:
        slot = _Slot(item, mesh_pb2.InferRequest())
        try:
            slot.message.ParseFromString(item.request)
        except Exception:
            log.warning("batch %d: undecodable request dropped (reply to %s)", batch_id, item.reply_to)
            slot.response = encode_error(slot.message, Internal("undecodable mesh request"))
            return slot
        try:
            slot.request = decode_request(slot.message)
        except MeshError as exc:
            slot.response = encode_error(slot.message, exc)
        return slot

    async def _execute(self, requests: list[Request]) -> list[Result]:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._compute, self._backend.execute, requests)
        except MeshError as exc:
            return [Result(error=exc) for _ in requests]
        except Exception as exc:
            log.exception("backend execute failed")
            error = Internal(f"model execution failed: {type(exc).__name__}: {exc}")
            return [Result(error=error) for _ in requests]
        if len(results) != len(requests):
            error = Internal(f"backend returned {len(results)} results for {len(requests)} requests")
            return [Result(error=error) for _ in requests]
        return results

    @staticmethod
    def _encode(message: mesh_pb2.InferRequest, result: Result) -> mesh_pb2.InferResponse:
        try:
            return encode_result(message, result)
        except MeshError as exc:
            return encode_error(message, exc)
        except Exception as exc:
            return encode_error(message, Internal(f"cannot encode outputs: {type(exc).__name__}: {exc}"))

    async def _reply(self, reply_to: str, response: mesh_pb2.InferResponse) -> None:
        if not reply_to:
            return
        data = response.SerializeToString()
        if len(data) > self._max_message_bytes:
            too_large = PayloadTooLarge(
                f"response of {len(data)} bytes exceeds the limit of {self._max_message_bytes} bytes "
                "(raise --max-message-bytes / MESHSERVE_MAX_MESSAGE_BYTES)"
            )
            data = mesh_pb2.InferResponse(
                request_id=response.request_id,
                model_name=response.model_name,
                model_version=response.model_version,
                error=mesh_pb2.Error(code=too_large.code, message=too_large.message),
                timing=response.timing,
            ).SerializeToString()
        try:
            await self._publish(reply_to, data)
        except Exception:
            log.exception("cannot publish the reply for request %r", response.request_id)


def _transfer_ns(item: mesh_pb2.BatchItem, start_unix_ns: int) -> int:
    """Batcher dispatch → this worker starting the batch (wall clocks of two processes, so ≥ 0)."""
    if not item.dispatch_unix_ns:
        return 0
    return max(0, start_unix_ns - item.dispatch_unix_ns)


def _span_timing(timing: mesh_pb2.Timing) -> dict[str, int]:
    return {
        "meshserve.batch_rows": timing.batch_rows,
        "meshserve.compute_input_ns": timing.compute_input_ns,
        "meshserve.compute_infer_ns": timing.compute_infer_ns,
        "meshserve.compute_output_ns": timing.compute_output_ns,
    }
