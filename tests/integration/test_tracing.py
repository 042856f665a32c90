"""OpenTelemetry across the real mesh, through the real OTLP exporter: with ``MESHSERVE_TRACING=otlp``
every service process sends its spans (OTLP/HTTP protobuf) to a small collector run by the test; one
request's spans (gateway, NATS, batcher queue, worker compute) form one trace and carry the request id."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the tracing extra is not installed")

import tritonclient.grpc as grpcclient
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from meshserve.harness import Mesh, build_repository, start_mesh, wait_for

HOPS = {"gateway", "nats request", "batcher queue", "worker compute"}


class Collector:
    """Receives ``POST /v1/traces`` (OTLP/HTTP, protobuf) on 127.0.0.1 and keeps the spans as dicts."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _traces(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in span.attributes}
                    with self._lock:
                        self.spans.append(
                            {
                                "name": span.name,
                                "service": resource.get("service.name"),
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_id": span.parent_span_id.hex(),
                                "attributes": attributes,
                                "status": span.status.code,
                            }
                        )
        return web.Response(content_type="application/x-protobuf", body=b"")

    def of(self, request_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.spans if s["attributes"].get("meshserve.request_id") == request_id]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def traced_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Collector]]:
    base = tmp_path_factory.mktemp("traced")
    repository = base / "models"
    repository.mkdir()
    source = build_repository(base / "all")
    for model in ("simple", "repeat_int32"):
        (source / model).rename(repository / model)
    collector = Collector()
    env = {
        "MESHSERVE_TRACING": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: the batch processor sends soon, the test waits less
    }
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        mesh = start_mesh(repository, base / "mesh.log")
    except BaseException:
        collector.close()
        raise
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield mesh, collector
    finally:
        code = mesh.stop()
        collector.close()
        assert code == 0, mesh.log()[-3000:]


def check_one_trace(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == HOPS, sorted(by_name)
    assert len({s["trace_id"] for s in spans}) == 1
    gateway, nats = by_name["gateway"], by_name["nats request"]
    assert gateway["parent_id"] == ""
    assert nats["parent_id"] == gateway["span_id"]
    for hop in ("batcher queue", "worker compute"):
        assert by_name[hop]["parent_id"] == nats["span_id"]
    assert {name: s["service"] for name, s in by_name.items()} == {
        "gateway": "meshserve-gateway",
        "nats request": "meshserve-gateway",
        "batcher queue": "meshserve-batcher",
        "worker compute": "meshserve-worker",
    }
    return by_name


def test_an_inference_is_one_trace_through_every_hop(traced_mesh: tuple[Mesh, Collector]) -> None:
    mesh, collector = traced_mesh
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    result = client.infer("simple", inputs, request_id="traced-1")
    assert (result.as_numpy("OUTPUT0") == 2 * a).all()
    client.close()
    assert wait_for(lambda: len(collector.of("traced-1")) >= len(HOPS), timeout_s=30), collector.of(
        "traced-1"
    )
    by_name = check_one_trace(collector.of("traced-1"))
    assert by_name["worker compute"]["attributes"]["meshserve.batch_rows"] == 1
    assert by_name["gateway"]["attributes"]["meshserve.model"] == "simple"
    assert by_name["gateway"]["status"] == 0  # STATUS_CODE_UNSET: no error


def test_a_streamed_request_is_one_trace_too(traced_mesh: tuple[Mesh, Collector]) -> None:
    import http.client

    mesh, collector = traced_mesh
    host, port = mesh.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    body = json.dumps({"IN": [1, 2], "DELAY": [1, 1], "WAIT": 0, "id": "traced-2"})
    conn.request("POST", "/v2/models/repeat_int32/generate_stream", body=body)
    response = conn.getresponse()
    assert response.status == 200 and response.read().count(b"data:") == 2
    conn.close()
    assert wait_for(lambda: len(collector.of("traced-2")) >= len(HOPS), timeout_s=30), collector.of(
        "traced-2"
    )
    check_one_trace(collector.of("traced-2"))
