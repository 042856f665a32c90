"""The gateway's one way into the mesh: publish a request on its model's subject, await one reply.

:class:`ReplyInbox` does what nats-py's ``request()`` does (one wildcard reply subscription per
connection, each reply resolved by token: no subscription per request) plus what the mesh needs
from it: the gateway knows each request's reply subject, so when the requester goes away (or its
deadline passes) it publishes that subject on ``meshserve.cancel.<model>.<version>`` and the batcher
drops the request from its queue (the worker skips it, or a decoupled model sees ``is_cancelled()``);
and when the NATS connection drops, every request waiting for a reply fails at once with
``UNAVAILABLE`` instead of waiting for a reply that cannot come.
Whoever answers (the worker, or the batcher on error) answers once.  A reply that carries an error
is returned as it is: the caller counts it (with the worker's timing, when there is one) before
raising it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from gateway.custody import CustodyBook, Held
from meshserve import custody, subjects, tracing
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

__all__ = ["Dispatcher", "ReplyInbox", "StreamInbox", "StreamOverflow"]

NO_RESPONDERS_STATUS = "503"
"""The status header nats-server puts on the reply when nobody is subscribed to a request's subject."""

MIN_RESEND_S = 0.1
"""A request orphaned by a dead batcher is published again only with at least this much deadline left."""

_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Fire and forget (a cancel is best effort), keeping a reference until the task ends."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _publish_cancel(nc: Client, request: mesh_pb2.InferRequest, reply_to: str) -> None:
    try:
        await nc.publish(subjects.cancel(request.model_name, request.model_version), reply_to.encode())
    except Exception as exc:
        log.debug("cannot publish the cancel of %s: %s", reply_to, exc)


def _connection_down(nc: Client) -> Unavailable | None:
    if nc.is_connected:
        return None
    return Unavailable("the gateway's NATS connection is down (reconnecting); retry shortly")


async def _publish_again(nc: Client, inbox_prefix: str, token: str, held: Held) -> None:
    """Publish a request a silent batcher held once more, as it was first sent (same reply subject, so
    whichever final response comes first is the one the requester gets)."""
    await nc.publish(
        held.subject,
        held.data,
        reply=f"{inbox_prefix}.{token}",
        headers={custody.ACK_HEADER: custody.ack_subject(inbox_prefix)},
    )


def _orphan_error(held: Held, timeout_s: float, model: str) -> Unavailable:
    why = (
        "it was already sent again once"
        if held.resent
        else "too little of its deadline was left to resend it"
    )
    return Unavailable(
        f"the batcher holding this request for model '{model}' went silent (no heartbeat for "
        f"{timeout_s:g} s: it stopped or was killed) and {why}; retry"
    )


class BatcherWatch:
    """Batchers' heartbeats for every inbox's :class:`CustodyBook`, and a look every quarter of the
    timeout for requests whose batcher died (``meshserve/custody.py``)."""

    def __init__(self, nc: Client, timeout_s: float) -> None:
        self._nc = nc
        self.timeout_s = timeout_s
        self._books: list[tuple[CustodyBook, Callable[[list[tuple[str, Held]]], None]]] = []
        self._task: asyncio.Task[None] | None = None

    def book(self, on_orphans: Callable[[list[tuple[str, Held]]], None]) -> CustodyBook:
        book = CustodyBook(self.timeout_s)
        self._books.append((book, on_orphans))
        return book

    async def start(self) -> None:
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._look())
        await self._nc.subscribe(subjects.batcher_announce(), cb=self._on_announce)

    async def _on_announce(self, msg: Msg) -> None:
        beat = custody.decode_heartbeat(msg.data)
        if beat is None:
            return
        now = asyncio.get_running_loop().time()
        for book, _ in self._books:
            book.heartbeat(*beat, now)

    def reset_clock(self) -> None:
        now = asyncio.get_running_loop().time() if self._task is not None else 0.0
        for book, _ in self._books:
            book.reset_clock(now)

    async def _look(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.timeout_s / 4)
            for book, on_orphans in self._books:
                try:
                    orphans = book.orphans(loop.time())
                    if orphans:
                        on_orphans(orphans)
                except Exception:
                    log.exception("handling requests of a dead batcher failed")


class Dispatcher:
    def __init__(self, nc: Client, stream_queue_size: int = 1024, batcher_timeout_s: float = 3.0) -> None:
        self._nc = nc
        self._watch = BatcherWatch(nc, batcher_timeout_s)
        self._replies = ReplyInbox(nc, self._watch)
        self._streams = StreamInbox(nc, stream_queue_size, self._watch)

    def connection_lost(self) -> None:
        """NATS dropped: nothing in flight will get its reply; fail every waiting request now."""
        error = Unavailable("the gateway lost its NATS connection while the request was in flight")
        self._replies.fail_all(error)
        self._streams.fail_all(error)

    def connection_back(self) -> None:
        """NATS is back: the batchers' silence was ours; give each a fresh timeout."""
        self._watch.reset_clock()

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

    @tracing.traced_call
    async def infer(self, request: mesh_pb2.InferRequest, timeout_s: float) -> mesh_pb2.InferResponse:
        subject = subjects.infer(request.model_name, request.model_version)
        data = fit_payload(self._nc, request)
        try:
            msg = await self._replies.request(request, subject, data, timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                "Request timeout expired: no response from model "
                f"'{request.model_name}' within {timeout_s:g} s"
            ) from None
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


class ReplyInbox:
    """Replies to one-response requests: one wildcard subscription, one future per request."""

    def __init__(self, nc: Client, watch: BatcherWatch | None = None) -> None:
        self._nc = nc
        self._prefix = ""
        self._tokens = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._watch = watch if watch is not None else BatcherWatch(nc, 3.0)
        self._custody = self._watch.book(self._on_orphans)
        self._models: dict[str, str] = {}

    async def start(self) -> None:
        prefix = self._nc.new_inbox()
        await self._nc.subscribe(f"{prefix}.*", cb=self._on_reply)
        await self._watch.start()
        self._prefix = prefix

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        if token == custody.HELD_TOKEN:
            batcher_id, tokens = custody.decode_held(msg.data)
            if batcher_id:
                self._custody.acknowledged(batcher_id, tokens, asyncio.get_running_loop().time())
            return
        future = self._waiting.get(token)
        if future is not None and not future.done():
            future.set_result(msg)  # the first reply wins; a duplicate finds no waiter and is dropped

    def _on_orphans(self, orphans: list[tuple[str, Held]]) -> None:
        now = asyncio.get_running_loop().time()
        for token, held in orphans:
            future = self._waiting.get(token)
            if future is None or future.done():
                self._custody.release(token)
            elif not held.resent and held.deadline - now > MIN_RESEND_S:
                self._custody.resent(token, now)
                _spawn(self._resend(token, held, future))
            else:
                future.set_exception(_orphan_error(held, self._watch.timeout_s, self._models.get(token, "")))

    async def _resend(self, token: str, held: Held, future: asyncio.Future[Msg]) -> None:
        log.warning("the batcher holding request %s went silent; publishing it again", token)
        try:
            await _publish_again(self._nc, self._prefix, token, held)
        except Exception as exc:
            if not future.done():
                future.set_exception(Unavailable(f"cannot send the request into the mesh again: {exc}"))

    def fail_all(self, error: MeshError) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(type(error)(error.message))  # one instance per waiter

    async def request(
        self, request: mesh_pb2.InferRequest, subject: str, data: bytes, timeout_s: float
    ) -> Msg:
        """Publish and wait for the one reply; raise TimeoutError at ``timeout_s``, Unavailable when NATS
        is down or no batcher listens.  A requester that gives up (cancelled, timed out) is announced
        on the cancel subject."""
        down = _connection_down(self._nc)
        if down is not None:
            raise down
        if not self._prefix:
            await self.start()
        token = str(next(self._tokens))
        reply_to = f"{self._prefix}.{token}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        self._custody.track(token, Held(subject, data, loop.time() + timeout_s, loop.time()))
        self._models[token] = request.model_name
        answered = False
        try:
            ack = {custody.ACK_HEADER: custody.ack_subject(self._prefix)}
            await self._nc.publish(subject, data, reply=reply_to, headers=ack)
            async with asyncio.timeout(timeout_s):
                msg = await future
            answered = True
        finally:
            self._waiting.pop(token, None)
            self._custody.release(token)
            self._models.pop(token, None)
            if not answered:
                _spawn(_publish_cancel(self._nc, request, reply_to))
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS_STATUS:
            raise Unavailable("no batcher is serving requests (none is subscribed on NATS)")
        return msg


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

    def __init__(self, nc: Client, queue_size: int, watch: BatcherWatch | None = None) -> None:
        self._nc = nc
        self._queue_size = queue_size
        self._prefix = ""
        self._tokens = itertools.count(1)
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._overflowed: set[str] = set()
        self._failed: dict[str, MeshError] = {}
        self._watch = watch if watch is not None else BatcherWatch(nc, 3.0)
        # custody ends with the first response: from then on the worker streams to us directly
        self._custody = self._watch.book(self._on_orphans)

    def fail_all(self, error: MeshError) -> None:
        """End every open stream with ``error`` (the NATS connection dropped)."""
        for token in list(self._queues):
            self._fail(token, error)

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_reply)
        await self._watch.start()

    def _fail(self, token: str, error: MeshError) -> None:
        queue = self._queues.get(token)
        if queue is None:
            return
        self._failed[token] = error
        try:
            queue.put_nowait(b"")  # wake the reader; it finds the error first
        except asyncio.QueueFull:
            pass  # the reader is not waiting: it sees the error when it next looks

    def _on_orphans(self, orphans: list[tuple[str, Held]]) -> None:
        now = asyncio.get_running_loop().time()
        for token, held in orphans:
            if token not in self._queues:
                self._custody.release(token)
            elif not held.resent and held.deadline - now > MIN_RESEND_S:
                self._custody.resent(token, now)
                _spawn(self._resend(token, held))
            else:
                self._fail(token, _orphan_error(held, self._watch.timeout_s, held.subject.split(".")[2]))

    async def _resend(self, token: str, held: Held) -> None:
        log.warning("the batcher holding stream request %s went silent; publishing it again", token)
        try:
            await _publish_again(self._nc, self._prefix, token, held)
        except Exception as exc:
            self._fail(token, Unavailable(f"cannot send the request into the mesh again: {exc}"))

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        if token == custody.HELD_TOKEN:
            batcher_id, tokens = custody.decode_held(msg.data)
            if batcher_id:
                self._custody.acknowledged(batcher_id, tokens, asyncio.get_running_loop().time())
            return
        queue = self._queues.get(token)
        if queue is None:
            return  # the requester gave up; late responses are dropped
        self._custody.release(token)
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS_STATUS:
            self._failed[token] = Unavailable("no batcher is serving requests (none is subscribed on NATS)")
        try:
            queue.put_nowait(msg.data)
        except asyncio.QueueFull:
            self._overflowed.add(token)

    @tracing.traced_stream
    async def stream(
        self, request: mesh_pb2.InferRequest, timeout_s: float
    ) -> AsyncIterator[mesh_pb2.InferResponse]:
        """Publish ``request``; yield its responses until the final one, an error, or the deadline."""
        down = _connection_down(self._nc)
        if down is not None:
            raise down
        if not self._prefix:
            await self.start()
        token = str(next(self._tokens))
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=self._queue_size)
        self._queues[token] = queue
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        finished = False
        try:
            subject = subjects.infer(request.model_name, request.model_version)
            data = fit_payload(self._nc, request)
            self._custody.track(token, Held(subject, data, deadline, loop.time()))
            try:
                await self._nc.publish(
                    subject,
                    data,
                    reply=f"{self._prefix}.{token}",
                    headers={custody.ACK_HEADER: custody.ack_subject(self._prefix)},
                )
            except Exception as exc:
                raise Unavailable(
                    f"cannot send the request into the mesh: {type(exc).__name__}: {exc}"
                ) from exc
            while True:
                if token in self._failed:
                    raise self._failed[token]
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
                if token in self._failed:
                    raise self._failed[token]
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
            self._custody.release(token)
            self._overflowed.discard(token)
            self._failed.pop(token, None)
            if not finished:  # the client went away, too slow, or past its deadline: stop the work
                _spawn(_publish_cancel(self._nc, request, f"{self._prefix}.{token}"))
