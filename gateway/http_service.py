"""KServe v2 HTTP/REST on the mesh (aiohttp), with the binary tensor extension and gzip/deflate.

Every ``MeshError`` becomes ``{"error": msg}`` with the class's HTTP code in one middleware.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.auth import http_auth_middleware
from gateway.core import InferenceCore
from gateway.generate import decode_generate, generate_events, generate_one, sse_event
from gateway.http_codec import HEADER_LENGTH, decode_infer, encode_infer
from gateway.http_settings import add_routes as add_settings_routes
from gateway.json_body import loads_checked
from gateway.openai_api import add_routes as add_openai_routes
from gateway.shm_http import add_shm_routes
from meshserve import tracing
from meshserve.errors import InvalidArgument, MeshError, ModelNotFound, Unsupported
from meshserve.model_config import config_to_json

log = logging.getLogger(__name__)

__all__ = ["build_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(value, separators=(",", ":")), status=status, content_type="application/json"
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _make_error_middleware(max_body_bytes: int) -> Any:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except MeshError as exc:
            return _error(exc.http_status, exc.message)
        except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on a body that is not
            # the connection closes after the answer: its parser state is not to be trusted
            response = _error(400, f"the request body cannot be read: {exc}")
            response.force_close()
            return response
        except web.HTTPRequestEntityTooLarge:
            return _error(
                413,
                f"request body exceeds the limit of {max_body_bytes} bytes "
                "(raise --max-message-bytes / MESHSERVE_MAX_MESSAGE_BYTES)",
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(exc.status, exc.reason if exc.status != 404 else f"Not Found: {request.path}")
        except Exception as exc:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return _error(500, f"{type(exc).__name__}: {exc}")

    return errors


def _client_fault_in_one_line(record: logging.LogRecord) -> bool:
    """aiohttp logs a malformed request (header over --http-max-header-bytes, too many headers, a body
    that cannot be decoded while it drains one the handler did not read) with a traceback at ERROR.
    The client has its 400 and the connection is closed: one INFO line is what it is worth."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, (HttpProcessingError, web.RequestPayloadError)):
        record.msg, record.args = "refused a malformed HTTP request: %s", (str(exc).replace("\n", " "),)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True


logging.getLogger("aiohttp.server").addFilter(_client_fault_in_one_line)


def _wants_compression(request: web.Request) -> bool:
    accepted = request.headers.get("Accept-Encoding", "")
    return "gzip" in accepted or "deflate" in accepted


SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def _status(ok: bool) -> web.Response:
    return web.Response(status=200 if ok else 400)


def build_app(core: InferenceCore) -> web.Application:
    max_body = core.settings.limits.max_message_bytes + 1024 * 1024
    auth = core.settings.auth
    middlewares = [_make_error_middleware(max_body)]
    if auth.inference_tokens or auth.control_tokens:  # an open gateway pays nothing for the check
        middlewares.append(http_auth_middleware(auth))
    app = web.Application(client_max_size=max_body, middlewares=middlewares)

    def version(request: web.Request) -> str:
        return request.match_info.get("version", "")

    async def live(request: web.Request) -> web.Response:
        return _status(core.live())

    async def ready(request: web.Request) -> web.Response:
        return _status(core.ready())

    async def server_metadata(request: web.Request) -> web.Response:
        return _json(core.server_metadata())

    async def model_metadata(request: web.Request) -> web.Response:
        return _json(core.model_metadata(request.match_info["model"], version(request)))

    async def model_ready(request: web.Request) -> web.Response:
        return _status(core.model_ready(request.match_info["model"], version(request)))

    async def model_config(request: web.Request) -> web.Response:
        view = core.model_config(request.match_info["model"], version(request))
        return _json(config_to_json(view.config))

    async def statistics(request: web.Request) -> web.Response:
        model = request.match_info.get("model", "")
        return _json({"model_stats": await core.statistics(model, version(request))})

    async def repository_index(request: web.Request) -> web.Response:
        body = await request.read()
        ready_only = False
        if body.strip():
            try:
                ready_only = bool(loads_checked(body, "the repository index body").get("ready", False))
            except (ValueError, AttributeError):
                raise InvalidArgument("the repository index body must be a JSON object") from None
        return _json(core.repository_index(ready_only))

    async def repository_params(request: web.Request, what: str) -> dict[str, Any]:
        body = await request.read()
        if not body.strip():
            return {}
        try:
            params = loads_checked(body, f"the {what} request body").get("parameters") or {}
        except (ValueError, AttributeError):
            raise InvalidArgument(f"the {what} request body must be a JSON object") from None
        if not isinstance(params, dict):
            raise InvalidArgument(f"the {what} request's 'parameters' must be a JSON object")
        return params

    async def load_model(request: web.Request) -> web.Response:
        params = await repository_params(request, "load")
        await core.control(request.match_info["model"], load=True, params=params, base64_files=True)
        return web.Response(status=200)

    async def unload_model(request: web.Request) -> web.Response:
        params = await repository_params(request, "unload")
        await core.control(request.match_info["model"], load=False, params=params)
        return web.Response(status=200)

    async def not_yet(request: web.Request) -> web.Response:
        raise Unsupported(f"{request.path} is not implemented by meshserve yet")

    async def infer(request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        tracing.adopt_client_context(request.headers.get("traceparent"))  # no-op when tracing is off
        view = core.models.ready_view(model, version(request))
        body = await request.read()
        decoded = decode_infer(body, request.headers.get(HEADER_LENGTH), view, core.settings.request_limits)
        outcome = await core.infer(model, version(request), decoded.call, api="HTTP end point")
        payload, header_length = encode_infer(outcome.response, outcome.view.version, decoded)
        if header_length is None:
            response = web.Response(body=payload, content_type="application/json")
        else:
            response = web.Response(
                body=payload,
                content_type="application/octet-stream",
                headers={HEADER_LENGTH: str(header_length)},
            )
        if _wants_compression(request):
            response.enable_compression()
        return response

    async def generate(request: web.Request) -> web.Response:
        """Triton's generate extension, one response (``gateway/generate.py`` does the mapping)."""
        model = request.match_info["model"]
        tracing.adopt_client_context(request.headers.get("traceparent"))  # no-op when tracing is off
        view = core.models.ready_view(model, version(request))
        call = decode_generate(await request.read(), view)
        response = _json(await generate_one(core, model, version(request), call))
        if _wants_compression(request):
            response.enable_compression()
        return response

    async def generate_stream(request: web.Request) -> web.StreamResponse:
        """Server-sent events, one per response.  The status is fixed by the first event: an error
        before it is a plain JSON error with its own code, one after it is an ``{"error": …}`` event."""
        model = request.match_info["model"]
        tracing.adopt_client_context(request.headers.get("traceparent"))  # no-op when tracing is off
        view = core.models.ready_view(model, version(request))
        call = decode_generate(await request.read(), view)
        if view.platform == "llm":  # a sharded language model streams its tokens here unless told not to
            call.parameters.setdefault("stream", True)
        response = web.StreamResponse(headers=SSE_HEADERS)
        trailer = b""
        async with aclosing(generate_events(core, model, version(request), call)) as events:
            first = await anext(events, None)  # raises (→ the error middleware) before any byte is sent
            try:
                await response.prepare(request)
                if first is not None:
                    await response.write(sse_event(first))
                    async for event in events:
                        await response.write(sse_event(event))
            except ConnectionError:  # the client went away; closing the events cancels the request
                return response
            except MeshError as exc:
                trailer = sse_event({"error": exc.message})
            except Exception as exc:
                log.exception("unexpected error in the event stream of %s", request.path)
                trailer = sse_event({"error": f"{type(exc).__name__}: {exc}"})
        try:
            if trailer:
                await response.write(trailer)
            await response.write_eof()
        except ConnectionError:
            pass
        return response

    async def unknown_model_route(request: web.Request) -> web.Response:
        raise ModelNotFound(f"Not Found: {request.path}")

    base = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/models/stats", statistics)
    app.router.add_post("/v2/repository/index", repository_index)
    app.router.add_post("/v2/repository/models/{model}/load", load_model)
    app.router.add_post("/v2/repository/models/{model}/unload", unload_model)
    for prefix in (base, versioned):
        app.router.add_get(prefix, model_metadata)
        app.router.add_get(prefix + "/ready", model_ready)
        app.router.add_get(prefix + "/config", model_config)
        app.router.add_get(prefix + "/stats", statistics)
        app.router.add_post(prefix + "/infer", infer)
        app.router.add_post(prefix + "/generate", generate)
        app.router.add_post(prefix + "/generate_stream", generate_stream)
    add_openai_routes(app, core)  # /v1/completions, /v1/chat/completions, /v1/models (docs/llm.md)
    # /v2/systemsharedmemory/..., /v2/cudasharedmemory/... (docs/shared-memory.md)
    add_shm_routes(app, core.shm, core.shm_control)
    add_settings_routes(app, core.runtime)  # /v2[/models/{m}]/trace/setting, /v2/logging
    app.router.add_route("*", "/v2/{tail:.*}", unknown_model_route)
    return app
