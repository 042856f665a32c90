"""One streamed LLM request, timed per response: Triton's ``generate_stream`` (server-sent events, one
event per model response) or OpenAI's ``/v1/completions`` with ``"stream": true``.

A *token* here is one streamed response that carries output (an SSE event; for OpenAI a chunk whose
``choices[0].text`` is not empty); no tokenizer is involved, so a server that packs several tokens in
one event is counted per event (genai-perf counts with a tokenizer).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

__all__ = ["MAX_EVENT_BYTES", "StreamError", "StreamTiming", "Streamer", "parse_sse_line", "timing_of"]

StreamEndpoint = Literal["generate", "openai"]
MAX_EVENT_BYTES = 1024 * 1024
"""A streamed line longer than this fails the request (aiohttp's read limit)."""
MAX_EVENTS = 1_000_000
"""Responses read from one stream at most."""


class StreamError(RuntimeError):
    pass


@dataclass(frozen=True)
class StreamTiming:
    ttft_ns: int
    """Send → first token."""
    tokens: int
    itl_ns: int
    """(last token - first token) / (tokens - 1); 0 for one token."""


def timing_of(start_ns: int, token_times: Sequence[int]) -> StreamTiming:
    """TTFT and mean inter-token gap of one stream (StreamError when no token came)."""
    if not token_times:
        raise StreamError("the stream ended without a token")
    n = len(token_times)
    itl = (token_times[-1] - token_times[0]) // (n - 1) if n > 1 else 0
    return StreamTiming(ttft_ns=token_times[0] - start_ns, tokens=n, itl_ns=itl)


def parse_sse_line(line: bytes) -> dict[str, Any] | Literal["done"] | None:
    """A ``data: {json}`` line → the object; ``data: [DONE]`` → "done"; blank/comment/other → None.
    A JSON ``error`` field raises StreamError with it."""
    text = line.strip()
    if not text.startswith(b"data:"):
        return None
    data = text[len(b"data:") :].strip()
    if data == b"[DONE]":
        return "done"
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise StreamError(f"a streamed event is not JSON: {data[:200]!r} ({exc})") from None
    if not isinstance(value, dict):
        raise StreamError(f"a streamed event is not a JSON object: {data[:200]!r}")
    if "error" in value:
        error = value["error"]
        raise StreamError(str(error.get("message", error) if isinstance(error, dict) else error))
    return value


def _has_token(endpoint: StreamEndpoint, event: dict[str, Any]) -> bool:
    if endpoint == "generate":
        return True
    choices = event.get("choices") or []
    if not choices:
        return False
    choice = choices[0]
    text = choice.get("text")
    if text is None:
        text = (choice.get("delta") or {}).get("content")
    return bool(text)


class Streamer:
    """Streamed requests with the bodies given (used in turn), on one aiohttp session."""

    def __init__(
        self,
        url: str,
        endpoint: StreamEndpoint,
        model: str,
        version: str,
        bodies: Sequence[dict[str, Any]],
        timeout_s: float,
        connections: int,
    ) -> None:
        self.endpoint = endpoint
        self._bodies = [json.dumps(b).encode() for b in bodies]
        if not self._bodies:
            raise ValueError("no request bodies")
        if endpoint == "generate":
            versioned = f"/versions/{version}" if version else ""
            self._url = f"http://{url}/v2/models/{model}{versioned}/generate_stream"
        else:
            self._url = f"http://{url}/v1/completions"
        self._timeout_s = timeout_s
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(connections, 1)),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            read_bufsize=MAX_EVENT_BYTES,
        )

    async def __call__(self, index: int) -> StreamTiming:
        body = self._bodies[index % len(self._bodies)]
        start = time.monotonic_ns()
        token_times: list[int] = []
        async with (
            asyncio.timeout(self._timeout_s),
            self._session.post(
                self._url, data=body, headers={"Content-Type": "application/json"}
            ) as response,
        ):
            if response.status != 200:
                text = (await response.content.read(4096)).decode(errors="replace")
                raise StreamError(f"HTTP {response.status}: {text}")
            events = 0
            async for line in response.content:
                parsed = parse_sse_line(line)
                if parsed is None:
                    continue
                if parsed == "done":
                    break
                events += 1
                if events > MAX_EVENTS:
                    raise StreamError(f"more than {MAX_EVENTS} events in one stream")
                if _has_token(self.endpoint, parsed):
                    token_times.append(time.monotonic_ns())
        return timing_of(start, token_times)

    async def close(self) -> None:
        await self._session.close()
