"""Triton's generate extension over HTTP: ``/generate`` (one JSON object) and ``/generate_stream``
(server-sent events), on regular and decoupled models, with a plain HTTP client."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import pytest

from meshserve.harness import Mesh

SIMPLE = {"INPUT0": list(range(16)), "INPUT1": [1] * 16}


def post(mesh: Mesh, path: str, body: Any) -> tuple[int, str, bytes]:
    """Status, Content-Type and the whole body of a POST (a dict is sent as JSON, bytes/str as is)."""
    raw = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    host, port = mesh.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def generate(mesh: Mesh, model: str, body: Any) -> tuple[int, dict[str, Any]]:
    status, content_type, raw = post(mesh, f"/v2/models/{model}/generate", body)
    assert content_type.startswith("application/json"), content_type
    return status, json.loads(raw)


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The ``data:`` events of an SSE body; every event must be exactly one ``data: {json}`` line."""
    assert raw == b"" or raw.endswith(b"\n\n"), raw
    events = []
    for chunk in raw.split(b"\n\n")[:-1]:
        assert chunk.startswith(b"data: ") and b"\n" not in chunk, chunk
        events.append(json.loads(chunk[len(b"data: ") :]))
    return events


def generate_stream(mesh: Mesh, model: str, body: Any) -> tuple[int, list[dict[str, Any]]]:
    status, content_type, raw = post(mesh, f"/v2/models/{model}/generate_stream", body)
    if status != 200:
        assert content_type.startswith("application/json"), content_type
        return status, [json.loads(raw)]
    assert content_type.startswith("text/event-stream"), content_type
    return status, sse_events(raw)


def repeat(values: list[int], delay_ms: int = 5, wait_ms: int = 5, **extra: Any) -> dict[str, Any]:
    return {"IN": values, "DELAY": [delay_ms] * len(values), "WAIT": wait_ms, **extra}


# -- /generate ----------------------------------------------------------------------------------------


def test_generate_simple(mesh: Mesh) -> None:
    status, body = generate(mesh, "simple", {**SIMPLE, "id": "g-1"})
    assert status == 200, body
    assert body["model_name"] == "simple" and body["model_version"] == "1" and body["id"] == "g-1"
    assert body["OUTPUT0"] == [i + 1 for i in range(16)]
    assert body["OUTPUT1"] == [i - 1 for i in range(16)]


def test_generate_versioned_url_and_no_id(mesh: Mesh) -> None:
    status, _, raw = post(mesh, "/v2/models/simple/versions/1/generate", SIMPLE)
    body = json.loads(raw)
    assert status == 200 and "id" not in body and body["model_version"] == "1"


def test_generate_bytes_model_single_element_is_a_scalar(mesh: Mesh) -> None:
    status, body = generate(mesh, "simple_identity", {"INPUT0": "héllo wörld"})
    assert status == 200, body
    assert body["OUTPUT0"] == "héllo wörld"
    status, body = generate(mesh, "simple_identity", {"INPUT0": ["a", "bc", ""]})
    assert status == 200, body
    assert body["OUTPUT0"] == ["a", "bc", ""]


def test_generate_inputs_and_parameters_inside_parameters_object(mesh: Mesh) -> None:
    body = {
        "INPUT0": SIMPLE["INPUT0"],
        "parameters": {"INPUT1": SIMPLE["INPUT1"], "temperature": 0.7, "stream": False, "timeout": 5_000_000},
    }
    status, out = generate(mesh, "simple", body)
    assert status == 200, out
    assert out["OUTPUT0"] == [i + 1 for i in range(16)]


def test_generate_timing_parameter_becomes_top_level_fields(mesh: Mesh) -> None:
    status, body = generate(mesh, "simple", {**SIMPLE, "meshserve_timing": True})
    assert status == 200, body
    assert body["meshserve_gateway_ns"] > 0


def test_generate_on_decoupled_model_with_exactly_one_response(mesh: Mesh) -> None:
    status, body = generate(mesh, "repeat_int32", repeat([42], id="one"))
    assert status == 200, body
    assert body["OUT"] == 42 and body["IDX"] == 0 and body["id"] == "one"


@pytest.mark.parametrize("values", [[1, 2, 3], []], ids=["three", "zero"])
def test_generate_on_decoupled_model_refuses_other_counts(mesh: Mesh, values: list[int]) -> None:
    status, body = generate(mesh, "repeat_int32", repeat(values))
    assert status == 400
    assert "generate expects model to produce exactly 1 response" in body["error"]


# -- /generate_stream ---------------------------------------------------------------------------------


def test_generate_stream_decoupled_one_event_per_response_in_order(mesh: Mesh) -> None:
    status, events = generate_stream(mesh, "repeat_int32", repeat([7, 8, 9, 10], id="s-1"))
    assert status == 200, events
    assert [e["OUT"] for e in events] == [7, 8, 9, 10]
    assert [e["IDX"] for e in events] == [0, 1, 2, 3]
    assert all(e["id"] == "s-1" and e["model_name"] == "repeat_int32" for e in events)


def test_generate_stream_regular_model_one_event(mesh: Mesh) -> None:
    status, events = generate_stream(mesh, "simple", SIMPLE)
    assert status == 200
    assert len(events) == 1
    assert events[0]["OUTPUT1"] == [i - 1 for i in range(16)]


def test_generate_stream_zero_responses_is_an_empty_stream(mesh: Mesh) -> None:
    status, events = generate_stream(mesh, "repeat_int32", repeat([]))
    assert (status, events) == (200, [])


def test_generate_stream_events_arrive_as_they_are_produced(mesh: Mesh) -> None:
    """The first event reaches the client while the model is still sleeping before the second."""
    host, port = mesh.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    body = {"IN": [1, 2], "DELAY": [0, 800], "WAIT": 0}
    try:
        start = time.monotonic()
        conn.request("POST", "/v2/models/repeat_int32/generate_stream", body=json.dumps(body).encode())
        response = conn.getresponse()
        assert response.status == 200
        first = response.readline()
        first_at = time.monotonic() - start
        rest = response.read()
        done_at = time.monotonic() - start
    finally:
        conn.close()
    assert json.loads(first[len(b"data: ") :])["OUT"] == 1
    assert [e["OUT"] for e in sse_events(rest.lstrip(b"\n"))] == [2]
    assert done_at - first_at > 0.5, (first_at, done_at)


def test_generate_stream_error_before_first_event_is_a_json_error(mesh: Mesh) -> None:
    """The model answers an error as its first response: nothing was streamed yet, so the status
    carries it."""
    status, events = generate_stream(mesh, "repeat_int32", {"IN": [1, 2], "DELAY": [1], "WAIT": 0})
    assert status == 400
    assert "IN and DELAY must have the same shape" in events[0]["error"]


def test_generate_stream_error_after_first_event_is_an_error_event(mesh: Mesh) -> None:
    """never_final sends one response and never the final flag: the request's deadline ends it in-band."""
    start = time.monotonic()
    status, events = generate_stream(mesh, "never_final", {"IN": 5, "timeout": 500_000})
    assert status == 200
    assert events[0]["OUT"] == 5
    assert len(events) == 2 and "Request timeout expired" in events[1]["error"]
    assert time.monotonic() - start < 10


# -- bad requests -------------------------------------------------------------------------------------

BAD: dict[str, tuple[str, Any, int, str]] = {
    "array body": ("simple", "[1, 2]", 400, "must be a JSON object"),
    "not json": ("simple", "INPUT0=1", 400, "failed to parse the generate request JSON"),
    "missing input": ("simple", {"INPUT0": list(range(16))}, 400, "missing required input(s) ['INPUT1']"),
    "number for BYTES": ("simple_identity", {"INPUT0": 5}, 400, "send strings"),
    "strings for INT32": ("simple", {**SIMPLE, "INPUT0": ["x"] * 16}, 400, "send integers"),
    "float for INT32": ("simple", {**SIMPLE, "INPUT0": [0.5] * 16}, 400, "send integers"),
    "out of range": ("simple", {**SIMPLE, "INPUT0": [2**40] * 16}, 400, "does not fit INT32"),
    "wrong count": (
        "simple",
        {**SIMPLE, "INPUT0": list(range(15))},
        400,
        "cannot take the input's shape [-1,16]",
    ),
    "object input": ("simple_identity", {"INPUT0": {"a": "b"}}, 400, "got object"),
    "object parameter": (
        "simple",
        {**SIMPLE, "PARAMS": {"a": 1}},
        400,
        "parameter 'PARAMS' has invalid type",
    ),
    "parameters not object": ("simple", {**SIMPLE, "parameters": "x"}, 400, "'parameters' of a generate"),
    "id not string": ("simple", {**SIMPLE, "id": 7}, 400, "'id' must be a string"),
    "duplicate key": (
        "simple_identity",
        '{"INPUT0": "a", "INPUT0": "b"}',
        400,
        "'INPUT0' appears more than once",
    ),
    "input twice": ("simple_identity", {"INPUT0": "a", "parameters": {"INPUT0": "b"}}, 400, "more than once"),
    "decoupled shape": ("repeat_int32", {"IN": [1], "DELAY": [1], "WAIT": [1, 2]}, 400, "cannot take"),
    "unknown model": ("no_such_model", {"x": 1}, 404, "Request for unknown model"),
}


@pytest.mark.parametrize("route", ["generate", "generate_stream"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_generate_request(mesh: Mesh, route: str, case: str) -> None:
    model, body, code, message = BAD[case]
    status, content_type, raw = post(mesh, f"/v2/models/{model}/{route}", body)
    assert status == code, raw
    assert content_type.startswith("application/json")
    assert message in json.loads(raw)["error"]
    # the service keeps serving
    status, out = generate(mesh, "simple_identity", {"INPUT0": "still here"})
    assert (status, out["OUTPUT0"]) == (200, "still here")
