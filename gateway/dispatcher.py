"""The gateway's one way into the mesh: publish a request on its model's subject, await one reply.

nats-py's request() uses one shared reply inbox per connection and resolves each reply by token,
so a reply costs no subscription.  Whoever answers (the worker, or the batcher on error) answers once.
A reply that carries an error is returned as it is: the caller counts it (with the worker's timing,
when there is one) before raising it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from meshserve import subjects
from meshserve.errors import (
    DeadlineExceeded,
    Internal,
    MeshError,
    PayloadTooLarge,
    QueueFull,
    Unavailable,
    Unsupported,
    from_wire,
)
from meshserve.pb import mesh_pb2

log = logging.getLogger(__name__)

__all__ = ["Dispatcher", "StreamInbox", "StreamOverflow"]


class Dispatcher:
    def __init__(self, nc: Client, stream_queue_size: int = 1024) -> None:
        self._nc = nc
        self._streams = StreamInbox(nc, stream_queue_size)

    async def control(self, request: mesh_pb2.ControlRequest, timeout_s: float) -> None:
        """Ask the model controller to load or unload; raise what it answers."""
        try:
            msg = await self._nc.request(subjects.control(), request.SerializeToString(), timeout=timeout_s)
        except nats.errors.NoRespondersError:
            raise Unsupported(
                "model control is disabled: start meshserve with --model-control-mode explicit"
            ) from None
        except nats.errors.TimeoutError:
            raise DeadlineExceeded(f"the model controller did not answer within {timeout_s:g} s") from None
        except nats.errors.MaxPayloadError as exc:
            raise PayloadTooLarge(
                f"the load request is larger than the NATS server's max_payload ({exc}); "
                "raise --max-message-bytes / MESHSERVE_MAX_MESSAGE_BYTES"
            ) from None
        reply = mesh_pb2.ControlReply.FromString(msg.data)
        if reply.HasField("error"):
            raise from_wire(reply.error.code, reply.error.message)

    def stream(
        self, request: mesh_pb2.InferRequest, timeout_s: float
    ) -> AsyncIterator[mesh_pb2.InferResponse]:
        """A decoupled request: its responses as they come (see :class:`StreamInbox`)."""
        return self._streams.stream(request, timeout_s)

    async def infer(self, request: mesh_pb2.InferRequest, timeout_s: float) -> mesh_pb2.InferResponse:
        subject = subjects.infer(request.model_name, request.model_version)
        data = fit_payload(self._nc, request)
        try:
            msg = await self._nc.request(subject, data, timeout=timeout_s)
        except nats.errors.TimeoutError:
            raise DeadlineExceeded(
                "Request timeout expired: no response from model "
                f"'{request.model_name}' within {timeout_s:g} s"
            ) from None
        except nats.errors.NoRespondersError:
            raise Unavailable("no batcher is serving requests (none is subscribed on NATS)") from None
        except nats.errors.MaxPayloadError as exc:
            raise Unavailable(f"request larger than the NATS server's max_payload: {exc}") from exc
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
            raise Unavailable(f"NATS connection is not available: {exc}") from exc
        except MeshError:
            raise
        except Exception as exc:
            raise Internal(f"cannot send the request into the mesh: {type(exc).__name__}: {exc}") from exc
        response = mesh_pb2.InferResponse()
        try:
            response.ParseFromString(msg.data)
        except Exception as exc:
            raise Internal("undecodable response from the mesh") from exc
        return response


def fit_payload(nc: Client, request: mesh_pb2.InferRequest) -> bytes:
    """The request's bytes, refused with RESOURCE_EXHAUSTED when NATS would not carry them (the
    tensor-bytes check happens earlier; names, shapes and parameters add a little)."""
    data = request.SerializeToString()
    limit = nc.max_payload
    if limit and len(data) > limit:
        raise PayloadTooLarge(
            f"request of {len(data)} bytes exceeds the NATS server's max_payload of {limit} bytes "
            "(raise --max-message-bytes / MESHSERVE_MAX_MESSAGE_BYTES)"
        )
    return data


class StreamOverflow(QueueFull):
    """More responses arrived for one stream than its buffer holds: the client reads too slowly."""


class StreamInbox:
    """Replies for decoupled requests (0..N responses each): one wildcard subscription per gateway,
    one bounded queue per request, routed by the last token of the reply subject."""

    def __init__(self, nc: Client, queue_size: int) -> None:
        self._nc = nc
        self._queue_size = queue_size
        self._prefix = ""
        self._tokens = itertools.count(1)
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._overflowed: set[str] = set()

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        queue = self._queues.get(token)
        if queue is None:
            return  # the requester gave up; late responses are dropped
        try:
            queue.put_nowait(msg.data)
        except asyncio.QueueFull:
            self._overflowed.add(token)

    async def stream(
        self, request: mesh_pb2.InferRequest, timeout_s: float
    ) -> AsyncIterator[mesh_pb2.InferResponse]:
        """Publish ``request``; yield its responses until the final one, an error, or the deadline."""
        if not self._prefix:
            await self.start()
        token = str(next(self._tokens))
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=self._queue_size)
        self._queues[token] = queue
        finished = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            subject = subjects.infer(request.model_name, request.model_version)
            data = fit_payload(self._nc, request)
            try:
                await self._nc.publish(subject, data, reply=f"{self._prefix}.{token}")
            except Exception as exc:
                raise Unavailable(
                    f"cannot send the request into the mesh: {type(exc).__name__}: {exc}"
                ) from exc
            while True:
                if token in self._overflowed:
                    raise StreamOverflow(
                        f"more than {self._queue_size} responses of model '{request.model_name}' were waiting "
                        "for this client; it reads too slowly (raise MESHSERVE_STREAM_QUEUE_SIZE)"
                    )
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        data = await queue.get()
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"Request timeout expired: model '{request.model_name}' did not send its final "
                        f"response within {timeout_s:g} s"
                    ) from None
                response = mesh_pb2.InferResponse()
                try:
                    response.ParseFromString(data)
                except Exception as exc:
                    raise Internal("undecodable response from the mesh") from exc
                if not response.more or response.HasField("error"):
                    finished = True
                yield response
                if finished:
                    return
        finally:
            self._queues.pop(token, None)
            self._overflowed.discard(token)
            if not finished:
                # the client went away, its deadline passed or it read too slowly: a model that is still
                # generating for this reply subject stops and frees what it holds (docs/llm.md)
                await self._notify_cancel(f"{self._prefix}.{token}", request.request_id)

    async def _notify_cancel(self, reply_to: str, request_id: str) -> None:
        notice = mesh_pb2.CancelNotice(reply_to=reply_to, request_id=request_id)
        try:
            await self._nc.publish(subjects.cancel(), notice.SerializeToString())
        except Exception as exc:
            log.debug("cannot publish the cancel notice: %s", exc)
