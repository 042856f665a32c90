"""Ensemble requests that arrive over NATS, not through a client API: a python model's BLS call
(``pb_utils.InferenceRequest(model_name=<ensemble>).exec()``) goes to the batchers like any BLS
call; a batcher that has no instance of the model passes it on to ``meshserve.ensemble.<model>.<v>``
unchanged, with its reply subject, and one gateway (queue group ``meshserve-gateways``) runs the
pipeline as for a client (``InferenceCore``: validation, statistics, deadline) and publishes the
answer to the caller's inbox — one response, or for a decoupled ensemble each response with
``more`` set and then the final flag.

A model that is not an ensemble here gets the batcher's own "not served" answer (the batcher passed
it on because no instance of it is live).  Requests in flight are bounded (:data:`MAX_IN_FLIGHT`;
beyond: UNAVAILABLE at once); each ends at the deadline its caller set.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.core import InferenceCore
from gateway.validate import InferCall, InputTensor
from meshserve import subjects
from meshserve.errors import DeadlineExceeded, Internal, MeshError, Unavailable
from meshserve.params import param_value
from meshserve.pb import mesh_pb2

log = logging.getLogger(__name__)

__all__ = ["MAX_IN_FLIGHT", "MeshEnsembles", "call_of", "not_served"]

MAX_IN_FLIGHT = 1024
"""Ensemble requests from the mesh one gateway runs at once."""


def not_served(request: mesh_pb2.InferRequest) -> Unavailable:
    """The batcher's wording for a model with no live instance (callers match on it)."""
    if request.model_version <= 0:
        return Unavailable(f"model '{request.model_name}' is not served: no live instance of any version")
    return Unavailable(f"model '{request.model_name}' version {request.model_version} has no live instance")


def call_of(request: mesh_pb2.InferRequest) -> InferCall:
    """A mesh request as the protocol-neutral call a client's request becomes."""
    return InferCall(
        request_id=request.request_id,
        inputs=[InputTensor(t.name, t.datatype, list(t.shape), t.data) for t in request.inputs],
        outputs=list(request.requested_outputs),
        parameters={key: param_value(p) for key, p in request.parameters.items()},
    )


class MeshEnsembles:
    def __init__(self, nc: Client, core: InferenceCore) -> None:
        self._nc = nc
        self._core = core
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            subjects.ensemble_all(), queue=subjects.GATEWAY_QUEUE_GROUP, cb=self._on_request
        )

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # the connection may be closing
                log.debug("ensemble subscription: %s", exc)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_request(self, msg: Msg) -> None:
        request = mesh_pb2.InferRequest()
        try:
            request.ParseFromString(msg.data)
        except Exception:
            log.warning("undecodable ensemble request on %s dropped", msg.subject)
            return
        if not msg.reply:
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            await self._answer(
                msg.reply,
                _error(request, Unavailable(f"the gateway runs {MAX_IN_FLIGHT} ensemble requests already")),
            )
            return
        task = asyncio.get_running_loop().create_task(self._serve(request, msg.reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: mesh_pb2.InferRequest, reply: str) -> None:
        version = str(request.model_version) if request.model_version > 0 else ""
        try:
            try:
                view = self._core.models.find(request.model_name, version)
            except MeshError:
                raise not_served(request) from None
            if view.ensemble is None:
                raise not_served(request)
            view = self._core.models.ready_view(request.model_name, version)
            timeout_s: float | None = None
            if request.deadline_unix_ns:
                timeout_s = (request.deadline_unix_ns - time.time_ns()) / 1e9
                if timeout_s <= 0:
                    raise DeadlineExceeded("Request timeout expired before the ensemble could start")
            call = call_of(request)
            if view.decoupled:
                async for _, response in self._core.stream_infer(
                    request.model_name, version, call, timeout_s
                ):
                    await self._answer(reply, response)
            else:
                outcome = await self._core.infer(request.model_name, version, call, timeout_s)
                await self._answer(reply, outcome.response)
        except MeshError as exc:
            await self._answer(reply, _error(request, exc))
        except Exception as exc:  # every request gets its answer
            log.exception("ensemble request for %r failed", request.model_name)
            await self._answer(reply, _error(request, Internal(f"{type(exc).__name__}: {exc}")))

    async def _answer(self, reply: str, response: mesh_pb2.InferResponse) -> None:
        try:
            await self._nc.publish(reply, response.SerializeToString())
        except Exception as exc:
            log.warning("cannot answer ensemble request %r: %s", response.request_id, exc)


def _error(request: mesh_pb2.InferRequest, error: MeshError) -> mesh_pb2.InferResponse:
    return mesh_pb2.InferResponse(
        request_id=request.request_id,
        model_name=request.model_name,
        model_version=request.model_version,
        error=mesh_pb2.Error(code=error.code, message=error.message),
    )
