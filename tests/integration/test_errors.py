"""Bad input gets a clear error with Triton's status code, and the mesh keeps serving afterwards."""

from __future__ import annotations

import json
import struct
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from meshserve.harness import Mesh
from tests.integration.conftest import MAX_MESSAGE_BYTES

GOOD = np.arange(16, dtype=np.int32).reshape(1, 16)


def assert_still_serving(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(GOOD)
    inputs[1].set_data_from_numpy(GOOD)
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), GOOD * 2)


@pytest.fixture
def stub(mesh: Mesh):  # type: ignore[no-untyped-def]
    channel = grpc.insecure_channel(mesh.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def raw_request(model: str = "simple", **overrides: object) -> service_pb2.ModelInferRequest:
    """A valid request for `simple`; `overrides` replace tensors: name -> (datatype, shape, bytes)."""
    tensors = {"INPUT0": ("INT32", [1, 16], GOOD.tobytes()), "INPUT1": ("INT32", [1, 16], GOOD.tobytes())}
    tensors.update(overrides)  # type: ignore[arg-type]
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, spec in tensors.items():
        if spec is None:
            continue
        datatype, shape, data = spec  # type: ignore[misc]
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(data)
    return request


def grpc_error(stub, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=20)
    return err.value


GRPC_CASES = {
    "unknown model": (
        raw_request("no_such_model"),
        grpc.StatusCode.NOT_FOUND,
        "Request for unknown model: 'no_such_model'",
    ),
    "wrong input name": (
        raw_request(INPUT9=("INT32", [1, 16], GOOD.tobytes())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unexpected inference input 'INPUT9'",
    ),
    "missing input": (
        raw_request(INPUT1=None),
        grpc.StatusCode.INVALID_ARGUMENT,
        "missing required input(s) ['INPUT1']",
    ),
    "wrong dtype": (
        raw_request(INPUT0=("FP32", [1, 16], GOOD.astype(np.float32).tobytes())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data-type is 'FP32', but model 'simple' expects 'INT32'",
    ),
    "wrong shape": (
        raw_request(INPUT0=("INT32", [1, 8], GOOD[:, :8].tobytes())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expected [-1,16], got [1,8]",
    ),
    "batch too large": (
        raw_request(
            INPUT0=("INT32", [9, 16], np.zeros((9, 16), np.int32).tobytes()),
            INPUT1=("INT32", [9, 16], np.zeros((9, 16), np.int32).tobytes()),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch-size must be <= 8",
    ),
    "byte size mismatch": (
        raw_request(INPUT0=("INT32", [1, 16], GOOD.tobytes()[:-4])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected 64 bytes",
    ),
}


@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_grpc_bad_request(mesh: Mesh, stub, case: str) -> None:  # type: ignore[no-untyped-def]
    request, code, message = GRPC_CASES[case]
    error = grpc_error(stub, request)
    assert error.code() == code, error.details()
    assert message in error.details()
    assert_still_serving(mesh)


def test_grpc_unknown_version(mesh: Mesh, stub) -> None:  # type: ignore[no-untyped-def]
    request = raw_request()
    request.model_version = "7"
    error = grpc_error(stub, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "version 7 is not found" in error.details()


def test_grpc_bad_bytes_length_prefix(mesh: Mesh, stub) -> None:  # type: ignore[no-untyped-def]
    good = b"".join(struct.pack("<I", 1) + b"1" for _ in range(16))
    bad = struct.pack("<I", 1000) + b"1" + good[5:]
    request = raw_request("simple_string", INPUT0=("BYTES", [1, 16], bad), INPUT1=("BYTES", [1, 16], good))
    error = grpc_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "length prefix 1000 runs past the end" in error.details()
    assert_still_serving(mesh)


def test_grpc_extra_raw_contents(mesh: Mesh, stub) -> None:  # type: ignore[no-untyped-def]
    request = raw_request()
    request.raw_input_contents.append(b"extra")
    error = grpc_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in error.details()


def test_grpc_payload_over_limit(mesh: Mesh, stub) -> None:  # type: ignore[no-untyped-def]
    rows = MAX_MESSAGE_BYTES // 4 + 16
    big = np.zeros(rows, dtype=np.float32).tobytes()
    request = service_pb2.ModelInferRequest(model_name="raises")
    request.inputs.add(name="IN", datatype="FP32", shape=[rows // 4, 4])
    request.raw_input_contents.append(big)
    error = grpc_error(stub, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_still_serving(mesh)


def test_model_execute_raises(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    tensor = grpcclient.InferInput("IN", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("raises", [tensor])
    assert err.value.status() == "StatusCode.INTERNAL"
    assert "model bug: cannot handle this input" in err.value.message()
    http = httpclient.InferenceServerClient(mesh.http_url)
    htensor = httpclient.InferInput("IN", [1, 4], "FP32")
    htensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as herr:
        http.infer("raises", [htensor])
    assert herr.value.status() == "500"
    assert_still_serving(mesh)


def test_model_returns_wrong_number_of_responses(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    tensor = grpcclient.InferInput("IN", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("wrong_count", [tensor])
    assert err.value.status() == "StatusCode.INTERNAL"
    assert "2 responses for 1 requests" in err.value.message()
    assert_still_serving(mesh)


def test_infer_on_model_that_failed_to_load(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    tensor = grpcclient.InferInput("IN", [4], "FP32")
    tensor.set_data_from_numpy(np.ones(4, np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("fails_to_load", [tensor])
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert "weights file is corrupt" in err.value.message()


def test_timeout_parameter_bounds_the_wait(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    tensor = grpcclient.InferInput("IN", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    start = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        client.infer("slow", [tensor], timeout=300_000)  # µs: the model takes 2 s
    waited = time.monotonic() - start
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert waited < 1.5, f"waited {waited:.2f} s past a 0.3 s timeout"
    # the slow model still answers a request that gives it enough time
    result = client.infer("slow", [tensor], timeout=10_000_000)
    np.testing.assert_array_equal(result.as_numpy("OUT"), np.ones((1, 4), np.float32))


def test_client_deadline_is_honoured(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    tensor = grpcclient.InferInput("IN", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("slow", [tensor], client_timeout=0.3)
    assert "DEADLINE_EXCEEDED" in err.value.status()
    assert_still_serving(mesh)


# -- HTTP ---------------------------------------------------------------------------------------------
def post(
    mesh: Mesh, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"http://{mesh.http_url}{path}", data=body, headers=headers or {}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def json_body(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
        ]
    }
    body.update(overrides)
    return json.dumps(body).encode()


def test_http_json_infer_with_curl_style_body(mesh: Mesh) -> None:
    status, body = post(mesh, "/v2/models/simple/infer", json_body())
    assert status == 200
    outputs = {o["name"]: o for o in body["outputs"]}  # type: ignore[union-attr, index]
    assert outputs["OUTPUT0"]["data"] == [i + 1 for i in range(16)]
    assert outputs["OUTPUT1"]["shape"] == [1, 16]


HTTP_CASES = {
    "malformed json": ("/v2/models/simple/infer", b"{not json", {}, 400, "failed to parse the request JSON"),
    "unknown model": ("/v2/models/nope/infer", json_body(), {}, 404, "Request for unknown model: 'nope'"),
    "unknown version": ("/v2/models/simple/versions/3/infer", json_body(), {}, 404, "version 3 is not found"),
    "data of wrong length": (
        "/v2/models/simple/infer",
        json_body(
            inputs=[
                {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [1, 2, 3]},
                {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
            ]
        ),
        {},
        400,
        "JSON data holds 3 values but shape [1, 16] needs 16",
    ),
    "data of wrong type": (
        "/v2/models/simple/infer",
        json_body(
            inputs=[
                {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": ["a"] * 16},
                {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
            ]
        ),
        {},
        400,
        "INT32 data in JSON must be numbers",
    ),
    "binary header past body": (
        "/v2/models/simple/infer",
        json_body(),
        {"Inference-Header-Content-Length": "100000"},
        400,
        "Inference-Header-Content-Length is 100000 but the body has only",
    ),
    "binary size past body": (
        "/v2/models/simple/infer",
        json_body(
            inputs=[
                {
                    "name": "INPUT0",
                    "datatype": "INT32",
                    "shape": [1, 16],
                    "parameters": {"binary_data_size": 64},
                },
                {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
            ]
        ),
        {"Inference-Header-Content-Length": "-"},
        400,
        "binary_data_size 64 runs past the end of the body",
    ),
    "missing inputs list": ("/v2/models/simple/infer", b"{}", {}, 400, "needs an 'inputs' list"),
}


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_http_bad_request(mesh: Mesh, case: str) -> None:
    path, body, headers, code, message = HTTP_CASES[case]
    if headers.get("Inference-Header-Content-Length") == "-":
        headers = {"Inference-Header-Content-Length": str(len(body))}
    status, reply = post(mesh, path, body, headers)
    assert status == code, reply
    assert message in str(reply["error"])
    assert_still_serving(mesh)


def test_http_payload_over_limit_is_413(mesh: Mesh) -> None:
    status, reply = post(mesh, "/v2/models/simple/infer", b"x" * (MAX_MESSAGE_BYTES + 2 * 1024 * 1024))
    assert status == 413
    assert "MESHSERVE_MAX_MESSAGE_BYTES" in str(reply["error"])
    assert_still_serving(mesh)


def test_http_unknown_route_is_json_404(mesh: Mesh) -> None:
    status, reply = post(mesh, "/v2/not/a/route", b"{}")
    assert status == 404
    assert "error" in reply


def test_grpc_contents_mixed_with_raw_uses_tritons_wording(mesh: Mesh, stub) -> None:  # type: ignore[no-untyped-def]
    request = service_pb2.ModelInferRequest(model_name="simple")
    first = request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    first.contents.int_contents.extend(range(16))
    request.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 16])
    request.raw_input_contents.append(GOOD.tobytes())
    error = grpc_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'simple'"
        in (error.details())
    )
    assert_still_serving(mesh)


@pytest.mark.parametrize("version", ["wrong_specification", "-1"])
def test_non_numeric_or_negative_version_is_invalid_argument(mesh: Mesh, stub, version: str) -> None:  # type: ignore[no-untyped-def]
    request = raw_request()
    request.model_version = version
    error = grpc_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "version should be an integral value > 0" in error.details()
    status, reply = post(mesh, f"/v2/models/simple/versions/{version}/infer", json_body())
    assert status == 400
    assert "version should be an integral value > 0" in str(reply["error"])
