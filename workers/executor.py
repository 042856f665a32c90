"""Runs one batch: decode each request, call the backend on the compute thread, publish each reply.

The worker answers every request of the batch itself, straight to the requester's reply subject;
the batcher only learns that the batch is done.  Whatever goes wrong, each request gets exactly one
reply: its result, or an error naming the cause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from meshserve.errors import Internal, MeshError, PayloadTooLarge
from meshserve.pb import mesh_pb2
from workers.backends.base import Backend, Request, Result
from workers.codec import decode_request, encode_error, encode_result

log = logging.getLogger(__name__)

__all__ = ["BatchExecutor", "Publish"]

Publish = Callable[[str, bytes], Awaitable[None]]


class BatchExecutor:
    def __init__(
        self, backend: Backend, publish: Publish, compute: ThreadPoolExecutor, max_message_bytes: int
    ) -> None:
        self._backend = backend
        self._publish = publish
        self._compute = compute
        self._max_message_bytes = max_message_bytes

    async def run(self, batch: mesh_pb2.Batch) -> mesh_pb2.BatchDone:
        pending: list[tuple[mesh_pb2.InferRequest, str, Request]] = []
        for item in batch.items:
            message = mesh_pb2.InferRequest()
            try:
                message.ParseFromString(item.request)
            except Exception:
                log.warning(
                    "batch %d: undecodable request dropped (reply to %s)", batch.batch_id, item.reply_to
                )
                await self._reply(item.reply_to, encode_error(message, Internal("undecodable mesh request")))
                continue
            try:
                pending.append((message, item.reply_to, decode_request(message)))
            except MeshError as exc:
                await self._reply(item.reply_to, encode_error(message, exc))
        if pending:
            results = await self._execute([request for _, _, request in pending])
            for (message, reply_to, _), result in zip(pending, results, strict=True):
                await self._reply(reply_to, self._encode(message, result))
        return mesh_pb2.BatchDone(batch_id=batch.batch_id)

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
            ).SerializeToString()
        try:
            await self._publish(reply_to, data)
        except Exception:
            log.exception("cannot publish the reply for request %r", response.request_id)
