"""meshserve/tracing.py with an in-memory exporter: the hops' spans form one trace, keyed by the
request id, with the context carried in ``InferRequest.traceparent``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the tracing extra (OpenTelemetry) is not installed")

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshserve import tracing
from meshserve.pb import mesh_pb2


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    assert tracing.setup("test", exporter=memory)
    try:
        yield memory
    finally:
        tracing.shutdown()


def request() -> mesh_pb2.InferRequest:
    return mesh_pb2.InferRequest(trace_id="req-42", model_name="simple", model_version=1)


class FakeDispatcher:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen_traceparent = ""

    @tracing.traced_call
    async def infer(self, message: mesh_pb2.InferRequest, timeout_s: float) -> str:
        self.seen_traceparent = message.traceparent
        # what the batcher and the worker do in their processes, from the bytes on the wire
        wire = mesh_pb2.InferRequest.FromString(message.SerializeToString())
        now = time.time_ns()
        tracing.record_span("batcher queue", wire, now - 1_000_000, now)
        tracing.record_span("worker compute", wire, now, now + 2_000_000, {"meshserve.batch_rows": 3})
        if self.fail:
            raise RuntimeError("worker lost")
        return "ok"

    @tracing.traced_stream
    async def stream(self, message: mesh_pb2.InferRequest, timeout_s: float) -> AsyncIterator[int]:
        for i in range(3):
            yield i


def test_off_by_default_is_a_no_op() -> None:
    assert not tracing.setup("test", mode="off")
    assert not tracing.enabled()
    message = request()
    assert asyncio.run(FakeDispatcher().infer(message, 1.0)) == "ok"
    assert message.traceparent == ""  # nothing added to the mesh messages


def test_one_trace_across_the_hops(exporter: InMemorySpanExporter) -> None:
    dispatcher = FakeDispatcher()
    assert asyncio.run(dispatcher.infer(request(), 1.0)) == "ok"
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"gateway", "nats request", "batcher queue", "worker compute"}
    trace_ids = {s.context.trace_id for s in spans.values()}
    assert len(trace_ids) == 1
    gateway, nats = spans["gateway"], spans["nats request"]
    assert gateway.parent is None and gateway.kind is SpanKind.SERVER
    assert nats.parent is not None and nats.parent.span_id == gateway.context.span_id
    for hop in ("batcher queue", "worker compute"):
        assert spans[hop].parent is not None and spans[hop].parent.span_id == nats.context.span_id
    for span in spans.values():
        assert span.attributes is not None
        assert span.attributes[tracing.REQUEST_ID] == "req-42"
        assert span.attributes["meshserve.model"] == "simple"
    assert spans["worker compute"].attributes["meshserve.batch_rows"] == 3  # type: ignore[index]
    assert spans["worker compute"].end_time - spans["worker compute"].start_time == 2_000_000  # type: ignore[operator]
    trace_hex = f"{nats.context.trace_id:032x}"
    assert dispatcher.seen_traceparent.startswith(f"00-{trace_hex}-{nats.context.span_id:016x}-")


def test_a_failed_request_marks_the_gateway_spans(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError, match="worker lost"):
        asyncio.run(FakeDispatcher(fail=True).infer(request(), 1.0))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["gateway"].status.status_code is StatusCode.ERROR
    assert "worker lost" in (spans["nats request"].status.description or "")


def test_a_stream_ends_its_spans_with_the_stream(exporter: InMemorySpanExporter) -> None:
    async def consume() -> list[int]:
        return [i async for i in FakeDispatcher().stream(request(), 1.0)]

    assert asyncio.run(consume()) == [0, 1, 2]
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["gateway", "nats request"]


def test_file_exporter_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    assert tracing.setup("worker", mode=f"file:{path}")
    try:
        message = request()
        message.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        tracing.record_span("worker compute", message, 1_000, 2_000)
        tracing.record_span("worker compute", message, 3_000, 4_000)
    finally:
        tracing.shutdown()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0]["context"]["trace_id"] == "0x0af7651916cd43dd8448eb211c80319c"
    assert lines[0]["parent_id"] == "0xb7ad6b7169203331"
    assert lines[0]["resource"]["attributes"]["service.name"] == "meshserve-worker"


def test_unknown_mode_stays_off() -> None:
    assert not tracing.setup("test", mode="jaeger")
    assert not tracing.enabled()


def test_an_unsampled_request_carries_no_context_and_records_nothing(exporter: InMemorySpanExporter) -> None:
    decisions = iter([False, True])
    tracing.set_sampler(lambda model: next(decisions))
    message = request()
    message.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # stale, from elsewhere
    dispatcher = FakeDispatcher()
    assert asyncio.run(dispatcher.infer(message, 1.0)) == "ok"
    assert dispatcher.seen_traceparent == "" and exporter.get_finished_spans() == ()
    assert asyncio.run(dispatcher.infer(request(), 1.0)) == "ok"
    assert len(exporter.get_finished_spans()) == 4


def test_batcher_and_worker_follow_the_sampled_flag(exporter: InMemorySpanExporter) -> None:
    message = request()
    for flags in ("00", ""):
        message.traceparent = f"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flags}".rstrip("-")
        tracing.record_span("worker compute", message, 1_000, 2_000)
    assert exporter.get_finished_spans() == ()
    message.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    tracing.record_span("worker compute", message, 1_000, 2_000)
    assert len(exporter.get_finished_spans()) == 1


def test_a_client_traceparent_is_the_parent_of_the_gateway_span(exporter: InMemorySpanExporter) -> None:
    async def call() -> None:
        tracing.adopt_client_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        await FakeDispatcher().infer(request(), 1.0)

    asyncio.run(call())
    spans = {s.name: s for s in exporter.get_finished_spans()}
    gateway = spans["gateway"]
    assert f"{gateway.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert gateway.parent is not None and f"{gateway.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert len({s.context.trace_id for s in spans.values()}) == 1


def test_a_malformed_client_traceparent_starts_a_new_trace(exporter: InMemorySpanExporter) -> None:
    async def call() -> None:
        tracing.adopt_client_context("not-a-traceparent")
        await FakeDispatcher().infer(request(), 1.0)

    asyncio.run(call())
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["gateway"].parent is None and len(spans) == 4


def test_start_file_turns_tracing_on_and_moves_the_file(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert not tracing.enabled()
    try:
        assert tracing.start_file(str(first), "worker")
        assert tracing.enabled() and tracing.file_path() == str(first)
        message = request()
        message.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        tracing.record_span("worker compute", message, 1_000, 2_000)
        assert tracing.start_file(str(second))
        tracing.record_span("worker compute", message, 3_000, 4_000)
    finally:
        tracing.shutdown()
    assert len(first.read_text().splitlines()) == 1 and len(second.read_text().splitlines()) == 1


def test_start_file_leaves_another_exporter_alone(exporter: InMemorySpanExporter, tmp_path: Path) -> None:
    assert not tracing.start_file(str(tmp_path / "x.jsonl"))
    assert tracing.file_path() == ""
