"""HTTP routes of Triton's trace and logging extensions (``gateway/runtime_settings.py`` does the work):

``GET|POST /v2/trace/setting``, ``GET|POST /v2/models/{model}/trace/setting``, ``GET|POST /v2/logging``.
A POST with a model and an empty object clears every setting of that model (Triton's rule).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.json_body import loads_checked
from gateway.runtime_settings import RuntimeSettings
from meshserve.errors import InvalidArgument, Unavailable
from meshserve.trace_settings import KEYS as TRACE_KEYS

__all__ = ["add_routes"]


def _json(value: Any) -> web.Response:
    return web.Response(body=json.dumps(value, separators=(",", ":")), content_type="application/json")


async def _body(request: web.Request, what: str) -> dict[str, Any] | None:
    """The POSTed object (None for a GET)."""
    if request.method == "GET":
        return None
    raw = await request.read()
    try:
        value = loads_checked(raw, f"the {what} request body") if raw.strip() else {}
    except ValueError as exc:
        raise InvalidArgument(f"the {what} request body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"the {what} request body must be a JSON object")
    return value


def add_routes(app: web.Application, runtime: RuntimeSettings | None) -> None:
    def settings() -> RuntimeSettings:
        if runtime is None:
            raise Unavailable("runtime trace and log settings are not available on this gateway")
        return runtime

    async def trace(request: web.Request) -> web.Response:
        model = request.match_info.get("model", "")
        body = await _body(request, "trace setting")
        if model and body == {}:  # Triton: a model with no settings = remove the model's settings
            body = {key: None for key in TRACE_KEYS}
        return _json(await settings().trace_setting(model, body))

    async def logging_(request: web.Request) -> web.Response:
        return _json(await settings().log_setting(await _body(request, "log setting")))

    for path in ("/v2/trace/setting", "/v2/models/{model}/trace/setting"):
        app.router.add_get(path, trace)
        app.router.add_post(path, trace)
    app.router.add_get("/v2/logging", logging_)
    app.router.add_post("/v2/logging", logging_)
