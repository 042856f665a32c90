"""Bearer tokens at the gateway: which call needs which token, checked before any handler runs.

Health (live, ready, model ready) stays open for Kubernetes probes; repository control (index, load,
unload) and the trace and log settings need the control token when one is configured; everything else needs the inference token
when one is configured.  gRPC reads the ``authorization`` metadata, HTTP the ``Authorization`` header
(``Bearer <token>`` in both).  Refusals: UNAUTHENTICATED / 401, PERMISSION_DENIED / 403.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web

from meshserve.errors import MeshError
from meshserve.security import AuthSettings, Need, check_token

__all__ = ["GrpcAuthInterceptor", "grpc_need", "http_auth_middleware", "http_need"]

_GRPC_OPEN = frozenset({"ServerLive", "ServerReady", "ModelReady"})
_GRPC_CONTROL = frozenset(
    {"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload", "TraceSetting", "LogSettings"}
)
_GRPC_STREAMING = frozenset({"ModelStreamInfer"})


def grpc_need(method: str) -> Need:
    """``/inference.GRPCInferenceService/ModelInfer`` → what it needs (unknown methods: inference)."""
    name = method.rsplit("/", 1)[-1]
    if name in _GRPC_OPEN:
        return Need.OPEN
    if name in _GRPC_CONTROL:
        return Need.CONTROL
    return Need.INFERENCE


_HTTP_OPEN = re.compile(r"^/v2/health/(live|ready)$|^/v2/models/[^/]+(/versions/[^/]+)?/ready$")


_HTTP_SETTINGS = re.compile(r"^/v2/logging$|^/v2(/models/[^/]+)?/trace/setting$")
"""Trace and log settings change the server's behaviour (and may name files): control, like load."""


def http_need(path: str) -> Need:
    if _HTTP_OPEN.match(path):
        return Need.OPEN
    if path.startswith("/v2/repository/") or _HTTP_SETTINGS.match(path):
        return Need.CONTROL
    return Need.INFERENCE


def _refusal(error: MeshError, streaming: bool) -> grpc.RpcMethodHandler[Any, Any]:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(error.grpc_status, error.message)

    async def stream(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(error.grpc_status, error.message)

    if streaming:
        return grpc.stream_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


class GrpcAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, auth: AuthSettings) -> None:
        self._auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        authorization = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode("latin-1")
                break
        try:
            check_token(self._auth, grpc_need(method), authorization)
        except MeshError as exc:
            return _refusal(exc, method.rsplit("/", 1)[-1] in _GRPC_STREAMING)
        return await continuation(handler_call_details)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def http_auth_middleware(auth: AuthSettings) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        check_token(auth, http_need(request.path), request.headers.get("Authorization"))
        return await handler(request)

    return check
