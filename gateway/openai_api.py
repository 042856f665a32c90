"""OpenAI-compatible ``/v1/completions``, ``/v1/chat/completions`` (``stream: true`` as server-sent
events) and ``/v1/models``, for the sharded language models (``backend: "llm"``, docs/llm.md).

Each call becomes one request to the model's ``text_input`` with the sampling fields as request
parameters, through the same ``InferenceCore.stream_infer`` as gRPC ModelStreamInfer (so statistics,
deadlines and validation are shared).  The model checks the values (a bad one is a 400 here, in
OpenAI's error shape).  When the client reads slower than tokens arrive, the chunks waiting for it are
sent as one event (text concatenated), so a slow reader never builds a backlog of tiny events.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from gateway.json_body import loads_checked
from gateway.validate import InferCall, InputTensor, ParamValue
from meshserve import tensors
from meshserve.errors import InvalidArgument, MeshError, ModelNotFound
from meshserve.pb import mesh_pb2

if TYPE_CHECKING:
    from gateway.core import InferenceCore

__all__ = ["add_routes", "chat_prompt"]

LLM_PLATFORM = "llm"
SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "seed", "ignore_eos")
DONE = b"data: [DONE]\n\n"


def chat_prompt(messages: Any) -> str:
    """A plain chat template (the example tokenizer has none): one ``role: content`` line per message,
    then ``assistant:`` for the model to continue."""
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("messages must be a non-empty list of {role, content} objects")
    lines = []
    for m in messages:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise InvalidArgument("each message must be an object with string 'role' and 'content'")
        lines.append(f"{m['role']}: {m['content']}")
    return "\n".join(lines) + "\nassistant:"


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status)


def _call(body: dict[str, Any], prompt: str, stream: bool) -> InferCall:
    params: dict[str, ParamValue] = {"stream": stream}
    for key in SAMPLING:
        value = body.get(key)
        if value is not None:
            if not isinstance(value, (bool, int, float, str)):
                raise InvalidArgument(f"{key} must be a number")
            params[key] = value
    stop = body.get("stop")
    if stop is not None:
        params["stop"] = json.dumps([stop] if isinstance(stop, str) else stop)
    n = body.get("n", 1)
    if n != 1:
        raise InvalidArgument("only n = 1 is supported")
    data = tensors.serialize_bytes(np.array([prompt.encode()], dtype=object))
    return InferCall(
        request_id=str(body.get("user") or ""),
        inputs=[InputTensor("text_input", "BYTES", [1], data)],
        parameters=params,
    )


def _text(response: mesh_pb2.InferResponse) -> str:
    for t in response.outputs:
        if t.name == "text_output":
            values = tensors.to_numpy(t.name, t.datatype, t.shape, t.data).reshape(-1)
            return b"".join(v if isinstance(v, bytes) else str(v).encode() for v in values).decode(
                errors="replace"
            )
    return ""


def _param(response: mesh_pb2.InferResponse, key: str) -> Any:
    p = response.parameters.get(key)
    if p is None:
        return None
    which = p.WhichOneof("choice")
    return getattr(p, which) if which else None


def add_routes(app: web.Application, core: InferenceCore) -> None:
    async def models(_request: web.Request) -> web.Response:
        data = [
            {"id": v.name, "object": "model", "created": 0, "owned_by": "meshserve"}
            for v in core.models.all_views()
            if v.platform == LLM_PLATFORM
        ]
        return web.json_response({"object": "list", "data": data})

    async def completions(request: web.Request) -> web.StreamResponse:
        return await _serve(request, chat=False)

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        return await _serve(request, chat=True)

    async def _serve(request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = loads_checked(await request.read(), "the request JSON")
            if not isinstance(body, dict):
                raise InvalidArgument("the request body must be a JSON object")
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise InvalidArgument("'model' is required (the name of a served language model)")
            view = core.models.ready_view(model, "")
            if view.platform != LLM_PLATFORM:
                raise InvalidArgument(f"model '{model}' is not a language model (backend 'llm')")
            if chat:
                prompt = chat_prompt(body.get("messages"))
            else:
                given = body.get("prompt")
                if isinstance(given, list) and len(given) == 1 and isinstance(given[0], str):
                    given = given[0]
                if not isinstance(given, str):
                    raise InvalidArgument("prompt must be a string (or a list of one string)")
                prompt = given
            stream = bool(body.get("stream", False))
            body.setdefault("temperature", 1.0)  # OpenAI's default
            call = _call(body, prompt, stream)
        except ValueError as exc:
            return _error(400, f"invalid JSON body: {exc}")
        except ModelNotFound as exc:
            return _error(404, exc.message, "not_found_error")
        except MeshError as exc:
            return _error(exc.http_status, exc.message)
        meta = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "created": int(time.time()),
            "model": model,
        }
        stream_it = core.stream_infer(model, "", call)
        if not stream:
            return await _whole(stream_it, meta, chat)
        return await _sse(request, stream_it, meta, chat)

    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)


async def _whole(stream_it: Any, meta: dict[str, Any], chat: bool) -> web.Response:
    text, last = "", None
    try:
        async with aclosing(stream_it) as responses:
            async for _view, response in responses:
                text += _text(response)
                last = response
    except MeshError as exc:
        return _error(
            exc.http_status,
            exc.message,
            "server_error" if exc.http_status >= 500 else "invalid_request_error",
        )
    finish = _param(last, "finish_reason") if last is not None else None
    prompt_tokens = int(_param(last, "prompt_tokens") or 0) if last is not None else 0
    completion_tokens = int(_param(last, "completion_tokens") or 0) if last is not None else 0
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice.update(text=text, logprobs=None)
    body = {
        **meta,
        "object": "chat.completion" if chat else "text_completion",
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    return web.json_response(body)


async def _sse(request: web.Request, stream_it: Any, meta: dict[str, Any], chat: bool) -> web.StreamResponse:
    """Chunks as server-sent events; whatever piled up while the client was slow goes as one event."""
    pending: asyncio.Queue[mesh_pb2.InferResponse | BaseException | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async with aclosing(stream_it) as responses:
                async for _view, response in responses:
                    pending.put_nowait(response)
            pending.put_nowait(None)
        except BaseException as exc:  # the error goes to the writer; cancellation ends the request
            pending.put_nowait(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    task = asyncio.create_task(pump())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def event(text: str | None, finish: Any) -> bytes:
        if chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return b"data: " + json.dumps({**meta, "object": obj, "choices": [choice]}).encode() + b"\n\n"

    first = await pending.get()
    if isinstance(first, MeshError):  # refused before any byte went out: a plain error with its status
        task.cancel()
        return _error(first.http_status, first.message)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await response.prepare(request)
        if chat:
            await response.write(
                b"data: "
                + json.dumps(
                    {
                        **meta,
                        "object": obj,
                        "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
                    }
                ).encode()
                + b"\n\n"
            )
        item: mesh_pb2.InferResponse | BaseException | None = first
        while True:
            group = [item]
            while not pending.empty():  # the client fell behind: merge what waits into one event
                group.append(pending.get_nowait())
            text, finish, end, error = "", None, False, None
            for g in group:
                if g is None:
                    end = True
                elif isinstance(g, BaseException):
                    error, end = g, True
                else:
                    text += _text(g)
                    finish = _param(g, "finish_reason") or finish
            if text or finish:
                await response.write(event(text, None))
                if finish:
                    await response.write(event(None, finish))
            if error is not None:
                message = (
                    error.message if isinstance(error, MeshError) else f"{type(error).__name__}: {error}"
                )
                await response.write(
                    b"data: "
                    + json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
                    + b"\n\n"
                )
            if end:
                await response.write(DONE)
                break
            item = await pending.get()
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away: cancelling the pump ends the request (and frees its KV cache)
    finally:
        if not task.done():
            task.cancel()
    return response
