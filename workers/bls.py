"""Business logic scripting: a python model's ``pb_utils.InferenceRequest(...).exec()`` and
``async_exec()`` become mesh requests (NATS → the target model's batcher → one of its workers),
exactly like a client's request through a gateway — never a shortcut inside this process.

Threads and loops.  A model's ``execute`` runs on the worker's compute thread (an ``async def
execute`` on the backend's own loop, on that same thread); NATS lives on the worker's event loop,
another thread.  ``exec()`` hands the request to the event loop (``run_coroutine_threadsafe``) and
blocks the compute thread on the answer; ``async_exec()`` awaits the same future from the model's
loop, so several can run at once (``asyncio.gather``).  The event loop never waits on the compute
thread, so the hand-over cannot deadlock.

Bounds.  Every call waits at most until the calling request's deadline (the latest deadline of the
batch being executed; the worker's ``--request-timeout-secs`` outside ``execute``), or sooner when
the BLS request sets ``timeout`` (µs).  A model that calls itself is served only by another of its
instances: with one instance, that instance is busy running the caller, so the call waits in the
batcher's queue until the deadline and returns a DEADLINE_EXCEEDED error that says why.  Decoupled
calls buffer at most ``stream_queue_size`` responses not yet read by the model.

Errors never raise: ``exec()`` returns a response whose ``has_error()`` is true (unknown model, no
live instance, the callee's own error, deadline), as Triton's BLS does.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from meshserve import subjects, tensors
from meshserve.errors import DeadlineExceeded, Internal, MeshError, PayloadTooLarge, Unavailable, Unsupported
from meshserve.params import param_value, set_param
from meshserve.pb import mesh_pb2
from workers.backends import pb_utils

log = logging.getLogger(__name__)

__all__ = ["CALLER_DEADLINE_NS", "BlsClient", "install"]

CALLER_DEADLINE_NS: contextvars.ContextVar[int] = contextvars.ContextVar("bls_caller_deadline_ns", default=0)
"""Absolute deadline (unix ns) of the requests whose ``execute`` is running; 0 = none known.  Set by
the python backend around ``execute`` (an ``async def execute``'s tasks inherit it)."""

_CODES = {wire: code for code, wire in pb_utils.TritonError.WIRE_CODES.items()}
_GRACE_S = 1.0
"""Beyond the deadline, how long a blocked ``exec()`` waits for the event loop's own timeout."""

Sink = Callable[[mesh_pb2.InferResponse, bool], None]


def install(client: BlsClient) -> None:
    """Make ``pb_utils.InferenceRequest.exec/async_exec`` go through ``client``."""
    pb_utils._set_bls(client)


class BlsClient:
    def __init__(
        self,
        nc: Client,
        loop: asyncio.AbstractEventLoop,
        caller: str,
        default_timeout_s: float,
        max_message_bytes: int,
        stream_queue_size: int = 1024,
    ) -> None:
        self._nc = nc
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._caller = caller
        self._default_timeout_s = default_timeout_s
        self._max_message_bytes = max_message_bytes
        self._stream_queue_size = stream_queue_size
        self._ids = 0

    # -- what pb_utils calls ----------------------------------------------------------------------
    def exec(self, request: pb_utils.InferenceRequest, decoupled: bool) -> Any:
        """From the compute thread (or any thread but the event loop's): block until answered."""
        if threading.get_ident() == self._loop_thread:
            raise pb_utils.TritonModelException(
                "InferenceRequest.exec() cannot block the worker's event loop; use async_exec()"
            )
        try:
            message, timeout_s = self._message(request)
        except MeshError as exc:
            return _error_response(exc)
        if decoupled:
            return self._iterate(message, timeout_s)
        future = asyncio.run_coroutine_threadsafe(self._request(message, timeout_s), self._loop)
        try:
            response = future.result(timeout_s + _GRACE_S)
        except TimeoutError:
            future.cancel()
            response = self._deadline_response(message, timeout_s)
        return self._to_pb(response)

    async def async_exec(self, request: pb_utils.InferenceRequest, decoupled: bool) -> Any:
        """From the model's own event loop (``async def execute``): await the answer there."""
        try:
            message, timeout_s = self._message(request)
        except MeshError as exc:
            return _error_response(exc)
        if decoupled:
            collected = asyncio.run_coroutine_threadsafe(self._collect(message, timeout_s), self._loop)
            responses = await asyncio.wrap_future(collected)
            return iter([self._to_pb(r) for r in responses])
        future = asyncio.run_coroutine_threadsafe(self._request(message, timeout_s), self._loop)
        return self._to_pb(await asyncio.wrap_future(future))

    # -- building the request -----------------------------------------------------------------------
    def _message(self, request: pb_utils.InferenceRequest) -> tuple[mesh_pb2.InferRequest, float]:
        name = request.model_name()
        if not name:
            raise Unavailable("InferenceRequest needs a model_name to call")
        timeout_s = self._timeout_s(request.timeout())
        self._ids += 1
        message = mesh_pb2.InferRequest(
            request_id=request.request_id() or f"bls-{self._caller}-{self._ids}",
            model_name=name,
            model_version=max(0, request.model_version()),
            requested_outputs=request.requested_output_names(),
            deadline_unix_ns=time.time_ns() + int(timeout_s * 1e9),
            trace_id=request.request_id() or f"bls-{self._caller}-{self._ids}",
            timeout_us=max(0, request.timeout()),
        )
        total = 0
        for tensor in request.inputs():
            if not isinstance(tensor, pb_utils.Tensor):
                raise Unavailable(f"BLS inputs must be pb_utils.Tensor, got {type(tensor).__name__}")
            datatype, shape, data = tensors.from_numpy(tensor._array)
            total += len(data)
            message.inputs.append(
                mesh_pb2.Tensor(name=tensor.name(), datatype=datatype, shape=shape, data=data)
            )
        if total > self._max_message_bytes:
            raise PayloadTooLarge(
                f"BLS request to '{name}' holds {total} bytes of tensors, over the limit of "
                f"{self._max_message_bytes} (raise --max-message-bytes / MESHSERVE_MAX_MESSAGE_BYTES)"
            )
        for key, value in request._parameter_dict().items():
            try:
                set_param(message.parameters[key], value)
            except (TypeError, ValueError) as exc:
                raise Unavailable(f"BLS request parameter '{key}': {exc}") from exc
        return message, timeout_s

    def _timeout_s(self, request_timeout_us: int) -> float:
        """What is left of the caller's deadline, capped by the BLS request's own ``timeout``."""
        caller = CALLER_DEADLINE_NS.get()
        left = (caller - time.time_ns()) / 1e9 if caller else self._default_timeout_s
        if request_timeout_us > 0:
            left = min(left, request_timeout_us / 1e6)
        return max(0.0, left)

    # -- on the event loop ----------------------------------------------------------------------------
    async def _request(self, message: mesh_pb2.InferRequest, timeout_s: float) -> mesh_pb2.InferResponse:
        if timeout_s <= 0:
            return self._deadline_response(message, timeout_s)
        subject = subjects.infer(message.model_name, message.model_version)
        try:
            msg = await self._nc.request(subject, message.SerializeToString(), timeout=timeout_s)
        except nats.errors.TimeoutError:
            return self._deadline_response(message, timeout_s)
        except nats.errors.NoRespondersError:
            return _error(message, _no_responders(message))
        except Exception as exc:
            return _error(message, Unavailable(f"cannot send the BLS request: {type(exc).__name__}: {exc}"))
        response = _parse(message, msg.data)
        if (
            response.HasField("error")
            and message.model_name == self._caller
            and "timeout expired" in response.error.message.lower()
        ):  # the batcher's deadline may answer before ours: say why either way
            response.error.message += f" ({self._calls_itself()})"
        if response.more and not response.HasField("error"):
            # the callee is decoupled: its first response came, the rest would go nowhere
            return _error(
                message,
                Unsupported(
                    f"model '{message.model_name}' is decoupled (0..N responses): call it with "
                    "exec(decoupled=True) / async_exec(decoupled=True)"
                ),
            )
        return response

    async def _stream(self, message: mesh_pb2.InferRequest, timeout_s: float, sink: Sink) -> None:
        """Publish a decoupled request; ``sink`` gets each response, the last one with ``True``
        (the callee's final one, an error, or the deadline)."""
        inbox = self._nc.new_inbox()
        done = False

        def finish(response: mesh_pb2.InferResponse) -> None:
            nonlocal done
            if done:
                return
            done = True
            timer.cancel()
            sink(response, True)
            self._loop.create_task(_quietly(subscription.unsubscribe()))

        async def on_reply(msg: Msg) -> None:
            if done:
                return
            headers = getattr(msg, "headers", None)
            if headers and headers.get("Status") == "503":  # nobody took the request (no responders)
                finish(_error(message, _no_responders(message)))
                return
            response = _parse(message, msg.data)
            if response.more and not response.HasField("error"):
                sink(response, False)
            else:
                finish(response)

        subscription = await self._nc.subscribe(inbox, cb=on_reply)
        timer = self._loop.call_later(
            max(0.0, timeout_s), lambda: finish(self._deadline_response(message, timeout_s))
        )
        try:
            await self._nc.publish(
                subjects.infer(message.model_name, message.model_version),
                message.SerializeToString(),
                reply=inbox,
            )
        except Exception as exc:
            finish(_error(message, Unavailable(f"cannot send the BLS request: {type(exc).__name__}: {exc}")))

    async def _collect(
        self, message: mesh_pb2.InferRequest, timeout_s: float
    ) -> list[mesh_pb2.InferResponse]:
        responses: list[mesh_pb2.InferResponse] = []
        finished: asyncio.Future[None] = self._loop.create_future()

        def sink(response: mesh_pb2.InferResponse, final: bool) -> None:
            if len(responses) >= self._stream_queue_size and not final:
                return  # bounded: the overflow error arrives as the final response below
            responses.append(response)
            if final and not finished.done():
                finished.set_result(None)

        await self._stream(message, timeout_s, sink)
        await finished
        return responses

    # -- on the compute thread ------------------------------------------------------------------------
    def _iterate(
        self, message: mesh_pb2.InferRequest, timeout_s: float
    ) -> Iterator[pb_utils.InferenceResponse]:
        """The decoupled call's responses as they arrive (the request is sent now, not at the first
        ``next``); the last one is the callee's final (possibly empty) response, or an error."""
        waiting: queue.Queue[tuple[mesh_pb2.InferResponse, bool]] = queue.Queue(self._stream_queue_size + 1)
        overflowed = threading.Event()

        def sink(response: mesh_pb2.InferResponse, final: bool) -> None:
            if overflowed.is_set():
                return
            if waiting.qsize() >= self._stream_queue_size and not final:
                overflowed.set()
                error = Unavailable(
                    f"more than {self._stream_queue_size} responses of '{message.model_name}' were waiting "
                    "to be read by the calling model"
                )
                waiting.put_nowait((_error(message, error), True))
                return
            waiting.put_nowait((response, final))

        started = asyncio.run_coroutine_threadsafe(self._stream(message, timeout_s, sink), self._loop)
        started.result(timeout_s + _GRACE_S)
        deadline = time.monotonic() + timeout_s + _GRACE_S
        return self._drain(waiting, deadline, message, timeout_s)

    def _drain(
        self,
        waiting: queue.Queue[tuple[mesh_pb2.InferResponse, bool]],
        deadline: float,
        message: mesh_pb2.InferRequest,
        timeout_s: float,
    ) -> Iterator[pb_utils.InferenceResponse]:
        while True:
            try:
                response, final = waiting.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                yield self._to_pb(self._deadline_response(message, timeout_s))
                return
            yield self._to_pb(response)
            if final:
                return

    # -- answers ----------------------------------------------------------------------------------------
    def _deadline_response(self, message: mesh_pb2.InferRequest, timeout_s: float) -> mesh_pb2.InferResponse:
        why = f"BLS request to model '{message.model_name}' got no response within {timeout_s:g} s"
        if message.model_name == self._caller:
            why += f" ({self._calls_itself()})"
        return _error(message, DeadlineExceeded(f"Request timeout expired: {why}"))

    def _calls_itself(self) -> str:
        return (
            f"model '{self._caller}' called itself: only another instance of it can serve the call "
            "while this one runs the caller's execute"
        )

    @staticmethod
    def _to_pb(response: mesh_pb2.InferResponse) -> pb_utils.InferenceResponse:
        if response.HasField("error"):
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(response.error.message, _CODES.get(response.error.code, 1))
            )
        try:
            outputs = [
                pb_utils.Tensor._wrap(t.name, tensors.to_numpy(t.name, t.datatype, t.shape, t.data))
                for t in response.outputs
            ]
        except MeshError as exc:
            return _error_response(exc)
        return pb_utils.InferenceResponse(output_tensors=outputs, parameters=_params(response))


def _no_responders(message: mesh_pb2.InferRequest) -> MeshError:
    """Nobody took the request: no batcher, or (passed on by a batcher that has no instance of the
    model, for a gateway to run it as an ensemble) no gateway."""
    return Unavailable(
        f"model '{message.model_name}' is not served: no batcher is subscribed on NATS, or the model has "
        "no live instance and no gateway is there to run it as an ensemble"
    )


def _params(response: mesh_pb2.InferResponse) -> dict[str, Any]:
    return {key: param_value(p) for key, p in response.parameters.items()}


def _parse(message: mesh_pb2.InferRequest, data: bytes) -> mesh_pb2.InferResponse:
    response = mesh_pb2.InferResponse()
    try:
        response.ParseFromString(data)
    except Exception:
        return _error(message, Internal(f"undecodable response from model '{message.model_name}'"))
    return response


def _error(message: mesh_pb2.InferRequest, error: MeshError) -> mesh_pb2.InferResponse:
    return mesh_pb2.InferResponse(
        request_id=message.request_id,
        model_name=message.model_name,
        model_version=message.model_version,
        error=mesh_pb2.Error(code=error.code, message=error.message),
    )


def _error_response(error: MeshError) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(error.message, _CODES.get(error.code, 1)))


async def _quietly(coro: Any) -> None:
    try:
        await coro
    except Exception as exc:  # the connection may be closing; the subscription dies with it
        log.debug("BLS unsubscribe failed: %s", exc)
