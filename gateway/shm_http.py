"""HTTP routes of Triton's shared-memory extension: ``/v2/systemsharedmemory/...`` and
``/v2/cudasharedmemory/...`` (status, register, unregister), over the gateway's one registry."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.json_body import loads_checked
from gateway.shm import SharedMemoryRegistry, cuda_register_refusal, cuda_status
from gateway.shm_mirror import ShmMirror
from meshserve.errors import InvalidArgument

__all__ = ["add_shm_routes", "register_body"]


def _json(value: Any) -> web.Response:
    return web.Response(body=json.dumps(value, separators=(",", ":")), content_type="application/json")


def register_body(raw: bytes) -> tuple[str, int, int]:
    """``{"key": str, "offset": int (default 0), "byte_size": int}`` → (key, offset, byte_size)."""
    try:
        body = loads_checked(raw, "the register request body")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the register request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the register request body must be a JSON object")
    key = body.get("key")
    if not isinstance(key, str):
        raise InvalidArgument("the register request needs 'key' (string): the shared memory object's key")
    values = []
    for field, default in (("offset", 0), ("byte_size", None)):
        value = body.get(field, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"the register request needs '{field}' as a non-negative integer")
        values.append(value)
    return key, values[0], values[1]


def add_shm_routes(app: web.Application, registry: SharedMemoryRegistry, control: ShmMirror) -> None:
    """Add before any catch-all ``/v2/...`` route."""

    def region(request: web.Request) -> str:
        return request.match_info.get("region", "")

    async def system_status(request: web.Request) -> web.Response:
        return _json(
            [
                {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in registry.status(region(request))
            ]
        )

    async def system_register(request: web.Request) -> web.Response:
        key, offset, byte_size = register_body(await request.read())
        await control.register(region(request), key, offset, byte_size)
        return web.Response(status=200)

    async def system_unregister(request: web.Request) -> web.Response:
        await control.unregister(region(request))
        return web.Response(status=200)

    async def cuda_status_route(request: web.Request) -> web.Response:
        return _json(cuda_status(registry, region(request)))

    async def cuda_register(request: web.Request) -> web.Response:
        raise cuda_register_refusal(region(request))

    async def cuda_unregister(request: web.Request) -> web.Response:
        return web.Response(status=200)  # nothing can be registered: nothing to do

    for kind, status, register, unregister in (
        ("systemsharedmemory", system_status, system_register, system_unregister),
        ("cudasharedmemory", cuda_status_route, cuda_register, cuda_unregister),
    ):
        base = f"/v2/{kind}"
        app.router.add_get(f"{base}/status", status)
        app.router.add_get(f"{base}/region/{{region}}/status", status)
        app.router.add_post(f"{base}/region/{{region}}/register", register)
        app.router.add_post(f"{base}/unregister", unregister)
        app.router.add_post(f"{base}/region/{{region}}/unregister", unregister)
