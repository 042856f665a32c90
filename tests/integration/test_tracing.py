"""OpenTelemetry across the real mesh: with ``MESHSERVE_TRACING=file:PATH`` every service process
appends its spans to one file; one request's spans (gateway, NATS, batcher queue, worker compute) form
one trace and carry the request id."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the tracing extra (OpenTelemetry) is not installed")

import tritonclient.grpc as grpcclient

from meshserve.harness import Mesh, build_repository, start_mesh, wait_for

HOPS = {"gateway", "nats request", "batcher queue", "worker compute"}


@pytest.fixture(scope="module")
def traced_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Path]]:
    base = tmp_path_factory.mktemp("traced")
    spans = base / "spans.jsonl"
    repository = base / "models"
    repository.mkdir()
    source = build_repository(base / "all")
    for model in ("simple", "repeat_int32"):
        (source / model).rename(repository / model)
    previous = os.environ.get("MESHSERVE_TRACING")
    os.environ["MESHSERVE_TRACING"] = f"file:{spans}"
    try:
        mesh = start_mesh(repository, base / "mesh.log")
    finally:
        if previous is None:
            os.environ.pop("MESHSERVE_TRACING")
        else:
            os.environ["MESHSERVE_TRACING"] = previous
    try:
        yield mesh, spans
    finally:
        assert mesh.stop() == 0, mesh.log()[-3000:]


def spans_of(path: Path, request_id: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        span = json.loads(line)
        if span["attributes"].get("meshserve.request_id") == request_id:
            found.append(span)
    return found


def check_one_trace(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == HOPS, sorted(by_name)
    assert len({s["context"]["trace_id"] for s in spans}) == 1
    gateway, nats = by_name["gateway"], by_name["nats request"]
    assert gateway["parent_id"] is None
    assert nats["parent_id"] == gateway["context"]["span_id"]
    for hop in ("batcher queue", "worker compute"):
        assert by_name[hop]["parent_id"] == nats["context"]["span_id"]
    services = {name: s["resource"]["attributes"]["service.name"] for name, s in by_name.items()}
    assert services == {
        "gateway": "meshserve-gateway",
        "nats request": "meshserve-gateway",
        "batcher queue": "meshserve-batcher",
        "worker compute": "meshserve-worker",
    }
    return by_name


def test_an_inference_is_one_trace_through_every_hop(traced_mesh: tuple[Mesh, Path]) -> None:
    mesh, path = traced_mesh
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
    assert wait_for(lambda: len(spans_of(path, "traced-1")) >= len(HOPS), timeout_s=20), spans_of(
        path, "traced-1"
    )
    by_name = check_one_trace(spans_of(path, "traced-1"))
    assert by_name["worker compute"]["attributes"]["meshserve.batch_rows"] == 1
    assert by_name["gateway"]["status"]["status_code"] == "UNSET"


def test_a_streamed_request_is_one_trace_too(traced_mesh: tuple[Mesh, Path]) -> None:
    import http.client

    mesh, path = traced_mesh
    host, port = mesh.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    body = json.dumps({"IN": [1, 2], "DELAY": [1, 1], "WAIT": 0, "id": "traced-2"})
    conn.request("POST", "/v2/models/repeat_int32/generate_stream", body=body)
    response = conn.getresponse()
    assert response.status == 200 and response.read().count(b"data:") == 2
    conn.close()
    assert wait_for(lambda: len(spans_of(path, "traced-2")) >= len(HOPS), timeout_s=20), spans_of(
        path, "traced-2"
    )
    check_one_trace(spans_of(path, "traced-2"))
