"""``inference.GRPCInferenceService`` on the mesh.

Each RPC is a few lines over :class:`InferenceCore`; every ``MeshError`` becomes a gRPC status in
one place (:func:`_rpc`), with the error class deciding the code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from gateway.core import InferenceCore
from gateway.grpc_codec import decode_infer, encode_infer
from gateway.repository_params import ParamValue
from gateway.runtime_settings import RuntimeSettings
from gateway.shm import cuda_register_refusal, cuda_status
from meshserve import tracing
from meshserve.errors import Internal, MeshError, Unavailable
from meshserve.pb import grpc_service_pb2 as pb
from meshserve.pb import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

__all__ = ["InferenceServicer"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Ctx = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Req, Ctx], Awaitable[Resp]]

_COMPRESSION = {"gzip": grpc.Compression.Gzip, "deflate": grpc.Compression.Deflate}


def _repository_params(params: Mapping[str, pb.ModelRepositoryParameter]) -> dict[str, ParamValue]:
    """A load/unload request's parameter map as plain values (files stay bytes)."""
    values: dict[str, ParamValue] = {}
    for name, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is not None:
            values[name] = getattr(param, which)
    return values


def _rpc(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Map any error to a status once; mirror the client's request compression on the response."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: Ctx) -> Resp:
        _mirror_compression(context)
        try:
            return await method(self, request, context)
        except MeshError as exc:
            await context.abort(exc.grpc_status, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            log.exception("unexpected error in %s", method.__name__)
            err = Internal(f"{type(exc).__name__}: {exc}")
            await context.abort(err.grpc_status, err.message)
        raise AssertionError("unreachable")  # abort() always raises

    return wrapper


def _mirror_compression(context: Ctx) -> None:
    for key, value in context.invocation_metadata() or ():
        if key == "grpc-encoding" and value in _COMPRESSION:
            context.set_compression(_COMPRESSION[str(value)])
            return


def _adopt_client_trace(context: Ctx) -> None:
    """A client's W3C ``traceparent`` metadata: this request's spans join the client's trace."""
    if tracing.enabled():
        for key, value in context.invocation_metadata() or ():
            if key == "traceparent":
                tracing.adopt_client_context(value if isinstance(value, str) else value.decode("latin-1"))
                return


def _trace_response(settings: Mapping[str, str | list[str]]) -> pb.TraceSettingResponse:
    response = pb.TraceSettingResponse()
    for key, value in settings.items():
        response.settings[key].value.extend(value if isinstance(value, list) else [value])
    return response


def _log_response(settings: Mapping[str, Any]) -> pb.LogSettingsResponse:
    response = pb.LogSettingsResponse()
    for key, value in settings.items():
        if isinstance(value, bool):
            response.settings[key].bool_param = value
        elif isinstance(value, int):
            response.settings[key].uint32_param = value
        else:
            response.settings[key].string_param = str(value)
    return response


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self._core = core

    @_rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Ctx) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._core.live())

    @_rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Ctx) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._core.ready())

    @_rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Ctx) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._core.model_ready(request.name, request.version))

    @_rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Ctx
    ) -> pb.ServerMetadataResponse:
        return json_format.ParseDict(self._core.server_metadata(), pb.ServerMetadataResponse())

    @_rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Ctx) -> pb.ModelMetadataResponse:
        return json_format.ParseDict(
            self._core.model_metadata(request.name, request.version), pb.ModelMetadataResponse()
        )

    @_rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Ctx) -> pb.ModelConfigResponse:
        view = self._core.model_config(request.name, request.version)
        return pb.ModelConfigResponse(config=view.config)

    @_rpc
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Ctx
    ) -> pb.ModelStatisticsResponse:
        stats = await self._core.statistics(request.name, request.version)
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    @_rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Ctx
    ) -> pb.RepositoryIndexResponse:
        rows = self._core.repository_index(request.ready)
        return json_format.ParseDict({"models": rows}, pb.RepositoryIndexResponse())

    @_rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Ctx) -> pb.ModelInferResponse:
        _adopt_client_trace(context)
        return await self._infer(request, context.time_remaining())

    async def _infer(
        self, request: pb.ModelInferRequest, client_timeout_s: float | None
    ) -> pb.ModelInferResponse:
        call = decode_infer(request)
        outcome = await self._core.infer(request.model_name, request.model_version, call, client_timeout_s)
        return encode_infer(outcome.response, outcome.view.version, call.output_shm)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Ctx
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; each gets its responses in-band: one for a regular
        model, 0..N for a decoupled one (each tagged ``triton_final_response``; the flag-only final
        response is sent when the request set ``triton_enable_empty_final_response``), or an
        ``error_message``."""
        # bounded: a client that stops reading holds up its requests' streams, which then overflow
        # their own bounded inboxes and end with an error (no unbounded buffering in the gateway)
        results: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue(maxsize=256)
        _adopt_client_trace(context)  # the stream's requests join the client's trace (tasks copy it)

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                view = self._core.models.ready_view(request.model_name, request.model_version)
                if not view.decoupled:
                    response = await self._infer(request, None)
                    await results.put(pb.ModelStreamInferResponse(infer_response=response))
                    return
                call = decode_infer(request)
                empty_final = call.parameters.get("triton_enable_empty_final_response") is True
                async for served, partial in self._core.stream_infer(
                    request.model_name, request.model_version, call
                ):
                    final = not partial.more
                    if final and not partial.outputs and not empty_final:
                        continue
                    out = encode_infer(partial, served.version)
                    out.parameters["triton_final_response"].bool_param = final
                    await results.put(pb.ModelStreamInferResponse(infer_response=out))
            except Exception as exc:  # every request on the stream gets its answer, whatever went wrong
                error = exc if isinstance(exc, MeshError) else Internal(f"{type(exc).__name__}: {exc}")
                if not isinstance(exc, MeshError):
                    log.exception("stream request for %r failed", request.model_name)
                failed = pb.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version, id=request.id
                )
                await results.put(
                    pb.ModelStreamInferResponse(error_message=error.message, infer_response=failed)
                )

        # bounded: past this many requests in flight the stream is not read until one ends
        # (HTTP/2 flow control then holds the client back; --grpc-stream-inflight)
        slots = asyncio.Semaphore(self._core.settings.request_limits.grpc_stream_inflight or 1)

        async def one_in_slot(request: pb.ModelInferRequest) -> None:
            try:
                await one(request)
            finally:
                slots.release()

        async def read_all(tg: asyncio.TaskGroup) -> None:
            async for request in request_iterator:
                await slots.acquire()
                tg.create_task(one_in_slot(request))

        async def pump() -> None:
            try:
                async with asyncio.TaskGroup() as tg:
                    await read_all(tg)
            except asyncio.CancelledError:
                raise  # the client is gone: nobody reads the end marker
            except Exception:
                log.exception("reading the request stream failed")
            await results.put(None)

        pump_task = asyncio.create_task(pump())
        try:
            while (item := await results.get()) is not None:
                yield item
        finally:
            pump_task.cancel()

    @_rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Ctx
    ) -> pb.RepositoryModelLoadResponse:
        await self._core.control(request.model_name, load=True, params=_repository_params(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Ctx
    ) -> pb.RepositoryModelUnloadResponse:
        await self._core.control(
            request.model_name, load=False, params=_repository_params(request.parameters)
        )
        return pb.RepositoryModelUnloadResponse()

    # -- shared memory (gateway/shm.py; docs/shared-memory.md) -----------------------------------------
    @_rpc
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Ctx
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self._core.shm.status(request.name):
            response.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size
                )
            )
        return response

    @_rpc
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Ctx
    ) -> pb.SystemSharedMemoryRegisterResponse:
        await self._core.shm_control.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Ctx
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        await self._core.shm_control.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_rpc
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Ctx
    ) -> pb.CudaSharedMemoryStatusResponse:
        cuda_status(self._core.shm, request.name)  # none registered: empty, or NOT_FOUND for a name
        return pb.CudaSharedMemoryStatusResponse()

    @_rpc
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Ctx
    ) -> pb.CudaSharedMemoryRegisterResponse:
        raise cuda_register_refusal(request.name)

    @_rpc
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Ctx
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()  # nothing can be registered: nothing to do

    @_rpc
    async def TraceSetting(self, request: pb.TraceSettingRequest, context: Ctx) -> pb.TraceSettingResponse:
        """An empty settings map reads; a key with no values clears it (tritonclient's ``None``)."""
        raw = {key: list(value.value) for key, value in request.settings.items()} or None
        return _trace_response(await self._runtime().trace_setting(request.model_name, raw))

    @_rpc
    async def LogSettings(self, request: pb.LogSettingsRequest, context: Ctx) -> pb.LogSettingsResponse:
        raw: dict[str, Any] = {}
        for key, value in request.settings.items():
            which = value.WhichOneof("parameter_choice")
            raw[key] = getattr(value, which) if which is not None else None
        return _log_response(await self._runtime().log_setting(raw or None))

    def _runtime(self) -> RuntimeSettings:
        if self._core.runtime is None:
            raise Unavailable("runtime trace and log settings are not available on this gateway")
        return self._core.runtime
