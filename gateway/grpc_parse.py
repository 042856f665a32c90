"""Parse each gRPC request message ourselves, so an undecodable one is INVALID_ARGUMENT.

Left to grpc, a message protobuf cannot parse ends the call with UNKNOWN ("Unexpected DecodeError"),
which reads as a server fault.  This interceptor takes the raw bytes and runs the method's own
deserializer: a unary call that fails is refused with INVALID_ARGUMENT; on a stream, the requests
before the bad message are answered and the stream then ends with INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

__all__ = ["ParseRequestsInterceptor"]

Ctx = grpc.aio.ServicerContext[Any, Any]


def _problem(method: str, exc: Exception) -> str:
    return f"the request is not a valid message for {method.rsplit('/', 1)[-1]}: {exc}"


class ParseRequestsInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        method: str = handler_call_details.method
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary  # a coroutine function under grpc.aio (the stubs say sync)

            async def unary(raw: bytes, context: Ctx) -> Any:
                try:
                    request = parse(raw)
                except Exception as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _problem(method, exc))
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, None, handler.response_serializer)
        if handler.stream_stream is not None:
            inner_stream: Any = handler.stream_stream  # an async generator function under grpc.aio

            async def stream(raw_requests: AsyncIterator[bytes], context: Ctx) -> AsyncIterator[Any]:
                bad: list[str] = []

                async def requests() -> AsyncIterator[Any]:
                    async for raw in raw_requests:
                        try:
                            request = parse(raw)
                        except Exception as exc:
                            bad.append(_problem(method, exc))
                            return  # ends the request stream; what came before is answered
                        yield request

                async for response in inner_stream(requests(), context):
                    yield response
                if bad:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad[0])

            return grpc.stream_stream_rpc_method_handler(stream, None, handler.response_serializer)
        return handler
