"""OpenTelemetry traces of a request through the mesh: one span per hop, all in one trace.

Off by default, and then every call here is a cheap no-op (OpenTelemetry is not even imported).
``MESHSERVE_TRACING`` turns it on in each service process (``meshserve up`` passes its environment
to the processes it starts):

- ``otlp``: OTLP over HTTP/protobuf to a collector (Jaeger, Tempo, the OpenTelemetry Collector...),
  endpoint and headers from the standard ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` / ``..._HEADERS``
  (default ``http://localhost:4318/v1/traces``); spans are sent in batches;
- ``file:PATH``: one JSON object per span, appended to PATH (every process of the mesh may share
  one file) — for tests and for a look without a collector;
- ``console``: spans printed to stderr.

The spans (each carries ``meshserve.request_id``, the id every log line about the request has):

``gateway``          the gateway's round trip for the request: into NATS and back (SERVER)
``nats request``     the hop out over NATS until the (final) reply came back (PRODUCER), child of ``gateway``
``batcher queue``    arrival at the batcher → dispatch to a worker, child of ``nats request``
``worker compute``   the worker's decode + execute + encode of the batch holding it, child of ``nats request``

The context crosses processes as a W3C ``traceparent`` string in ``InferRequest.traceparent``; the
batcher and the worker record their spans after the fact, from the times they already keep.
Needs the ``tracing`` extra (``pip install 'meshserve[tracing]'``); asked for without it, the
service logs why and runs untraced.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from meshserve.settings import env_default

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, Tracer
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

__all__ = [
    "REQUEST_ID",
    "adopt_client_context",
    "enabled",
    "file_path",
    "record_span",
    "record_step_span",
    "set_sampler",
    "setup",
    "shutdown",
    "start_file",
    "traced_call",
    "traced_stream",
]

log = logging.getLogger(__name__)

REQUEST_ID = "meshserve.request_id"
_tracer: Tracer | None = None
_provider: Any = None
_service = ""
_file_target: list[str] = []
"""The file exporter's path, when it is the exporter (a list so that ``start_file`` can move it)."""
_sampler: Callable[[str], bool] | None = None
_client_parent: ContextVar[str] = ContextVar("meshserve_client_traceparent", default="")

AttrValue = str | int | float | bool
R = TypeVar("R")
S = TypeVar("S")
Q = TypeVar("Q")


def enabled() -> bool:
    return _tracer is not None


def setup(service: str, exporter: SpanExporter | None = None, mode: str | None = None) -> bool:
    """Start tracing in this process when ``MESHSERVE_TRACING`` (or ``mode``) asks for it, or with
    ``exporter`` (tests); True when on.  Called once per process, before serving."""
    global _tracer, _provider, _service
    _service = service
    mode = (env_default("tracing", "off") if mode is None else mode).strip()
    if exporter is None and mode.lower() in ("", "off", "0", "false", "none"):
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        log.warning(
            "MESHSERVE_TRACING=%s but OpenTelemetry is not installed (pip install 'meshserve[tracing]')", mode
        )
        return False
    processor: Any
    if exporter is not None:
        processor = SimpleSpanProcessor(exporter)
    elif mode.lower() == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    elif mode.lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        processor = SimpleSpanProcessor(ConsoleSpanExporter())
    elif mode.startswith("file:") and len(mode) > len("file:"):
        _file_target[:] = [mode[len("file:") :]]
        processor = SimpleSpanProcessor(_file_exporter())
    else:
        log.warning(
            "MESHSERVE_TRACING=%r is not one of off, otlp, console, file:PATH; tracing stays off", mode
        )
        return False
    _provider = TracerProvider(resource=Resource.create({"service.name": f"meshserve-{service}"}))
    _provider.add_span_processor(processor)  # the provider flushes at interpreter exit
    _tracer = _provider.get_tracer("meshserve")
    log.info("tracing on (%s)", mode if exporter is None else type(exporter).__name__)
    return True


def shutdown() -> None:
    """Flush and stop (tests; services rely on the provider's own exit hook)."""
    global _tracer, _provider, _sampler
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = _sampler = None
    _file_target.clear()


def file_path() -> str:
    """Where the file exporter writes; empty when it is not the exporter."""
    return _file_target[0] if _file_target else ""


def start_file(path: str, service: str = "") -> bool:
    """Trace to the JSON-lines file ``path`` from now on (Triton's ``trace_file`` set at run time):
    starts tracing with the file exporter when this process had none, or moves the file exporter's
    output; False (logged) when another exporter is on or OpenTelemetry is missing."""
    if _file_target:
        _file_target[0] = path
        return True
    if _tracer is not None:
        log.warning(
            "trace_file %s not used: this process exports its spans elsewhere (MESHSERVE_TRACING)", path
        )
        return False
    return setup(service or _service or "meshserve", mode=f"file:{path}")


def set_sampler(sampler: Callable[[str], bool] | None) -> None:
    """The gateway's per-request decision (model name → trace it?); None traces every request."""
    global _sampler
    _sampler = sampler


def adopt_client_context(traceparent: str | None) -> None:
    """A client's W3C ``traceparent`` (HTTP header, gRPC metadata): the request's spans join its
    trace.  Set in the handler's task; a malformed value is ignored (the trace starts here)."""
    if traceparent and _tracer is not None:
        _client_parent.set(traceparent.strip())


def _file_exporter() -> SpanExporter:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):
        """One JSON line per span, appended (O_APPEND: several processes may share the file)."""

        def __init__(self) -> None:
            self._lock = threading.Lock()

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            lines = "".join(json.dumps(json.loads(s.to_json()), separators=(",", ":")) + "\n" for s in spans)
            with self._lock:
                fd = os.open(_file_target[0], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, lines.encode())
                finally:
                    os.close(fd)
            return SpanExportResult.SUCCESS

    return JsonLinesExporter()


def _attributes(request: Any) -> dict[str, AttrValue]:
    return {
        REQUEST_ID: str(request.trace_id),
        "meshserve.model": str(request.model_name),
        "meshserve.model_version": int(request.model_version),
    }


def _context_of(traceparent: str) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if traceparent else None


def _traceparent_of(span: Span) -> str:
    from opentelemetry.trace import set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(span))
    return carrier.get("traceparent", "")


class _Hop:
    """The gateway's two spans for one request; sets ``request.traceparent`` for the next hops."""

    def __init__(self, tracer: Tracer, request: Any) -> None:
        from opentelemetry.trace import SpanKind, set_span_in_context

        attributes = _attributes(request)
        client = _client_parent.get()
        self.gateway = tracer.start_span(
            "gateway",
            context=_context_of(client) if client else None,
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        self.nats = tracer.start_span(
            "nats request",
            context=set_span_in_context(self.gateway),
            kind=SpanKind.PRODUCER,
            attributes=attributes | {"messaging.system": "nats"},
        )
        request.traceparent = _traceparent_of(self.nats)

    def end(self, error: BaseException | None = None) -> None:
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            for span in (self.nats, self.gateway):
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self.nats.end()
        self.gateway.end()


def _is_sampled(traceparent: str) -> bool:
    """W3C ``version-traceid-spanid-flags``: bit 0 of the flags is "sampled"."""
    try:
        return len(traceparent) >= 55 and bool(int(traceparent[-2:], 16) & 1)
    except ValueError:
        return False


def _sampled(request: Any) -> bool:
    """The gateway's decision; an untraced request carries no ``traceparent``, so the batcher and
    the worker record nothing for it."""
    if _sampler is None or _sampler(str(request.model_name)):
        return True
    if request.traceparent:
        request.traceparent = ""
    return False


def traced_call(method: Callable[[S, Q, float], Awaitable[R]]) -> Callable[[S, Q, float], Awaitable[R]]:
    """For ``Dispatcher.infer(self, request, timeout_s)``: the gateway's spans around the round trip."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Q, timeout_s: float) -> R:
        if _tracer is None or not _sampled(request):
            return await method(self, request, timeout_s)
        hop = _Hop(_tracer, request)
        try:
            result = await method(self, request, timeout_s)
        except BaseException as exc:
            hop.end(exc)
            raise
        hop.end()
        return result

    return wrapper


def traced_stream(
    method: Callable[[S, Q, float], AsyncIterator[R]],
) -> Callable[[S, Q, float], AsyncIterator[R]]:
    """For ``stream(self, request, timeout_s)`` (an async iterator of responses): the same spans,
    ended with the stream."""

    @functools.wraps(method)
    async def wrapper(self: S, request: Q, timeout_s: float) -> AsyncIterator[R]:
        if _tracer is None or not _sampled(request):
            async for item in method(self, request, timeout_s):
                yield item
            return
        hop = _Hop(_tracer, request)
        error: BaseException | None = None
        try:
            async for item in method(self, request, timeout_s):
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            hop.end(error)

    return wrapper


def record_step_span(
    name: str,
    traceparent: str,
    start_unix_ns: int,
    end_unix_ns: int,
    attributes: Mapping[str, AttrValue],
) -> None:
    """A finished span of a pipeline stage's step (a micro-batch of a sharded LLM) under the context
    of one traced request in it; nothing unless that request was sampled at the gateway."""
    if _tracer is None or not _is_sampled(traceparent):
        return
    span = _tracer.start_span(
        name, context=_context_of(traceparent), attributes=dict(attributes), start_time=start_unix_ns
    )
    span.end(end_time=max(end_unix_ns, start_unix_ns))


def record_span(
    name: str,
    request: Any,
    start_unix_ns: int,
    end_unix_ns: int,
    attributes: Mapping[str, AttrValue] | None = None,
) -> None:
    """A finished span of ``request`` (an ``InferRequest``) under the context in its ``traceparent``:
    the batcher's and the worker's hops, recorded from the times they keep anyway."""
    traceparent = str(request.traceparent)
    if _tracer is None or not _is_sampled(traceparent):  # not sampled at the gateway
        return
    span = _tracer.start_span(
        name,
        context=_context_of(traceparent),
        attributes=_attributes(request) | dict(attributes or {}),
        start_time=start_unix_ns,
    )
    span.end(end_time=max(end_unix_ns, start_unix_ns))
