"""Hostile input against a real mesh: every request limit, compressed bombs, and a few hundred random
malformed HTTP bodies and gRPC messages.  Each must end in a clear 4xx / non-INTERNAL status, quickly,
and the mesh must answer correctly afterwards.  Limits are set low here so the tests stay cheap."""

from __future__ import annotations

import gzip
import http.client
import json
import random
import re
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh, start_mesh

LIMIT_FLAGS = {
    "--max-message-bytes": 1 << 20,
    "--max-request-tensors": 4,
    "--max-request-parameters": 8,
    "--max-tensor-elements": 4096,
    "--max-bytes-element-bytes": 1000,
    "--max-json-depth": 6,
    "--http-max-header-bytes": 2048,
    "--http-max-headers": 40,
    "--grpc-max-metadata-bytes": 4096,
    "--grpc-max-concurrent-streams": 2,
    "--grpc-stream-inflight": 2,
}
GOOD = np.arange(16, dtype=np.int32).reshape(1, 16)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("hostile")
    repository = base / "models"
    repository.mkdir()
    for name in ("simple", "simple_identity", "repeat_int32"):
        (repository / name).symlink_to(ROOT / "examples" / "model_repository" / name)
    slow = repository / "slow"
    (slow / "1").mkdir(parents=True)
    (slow / "1" / "model.py").symlink_to(ROOT / "tests" / "models" / "slow" / "1" / "model.py")
    config = (ROOT / "tests" / "models" / "slow" / "config.pbtxt").read_text()
    (slow / "config.pbtxt").write_text(config.replace('"2.0"', '"0.4"'))
    flags = [str(x) for kv in LIMIT_FLAGS.items() for x in kv]
    mesh = start_mesh(repository, base / "mesh.log", "--request-timeout-secs", "20", *flags)
    try:
        yield mesh
    finally:
        code = mesh.stop()
        log = mesh.log()
        assert code == 0, log[-3000:]
        # a client's mistake is never logged as a fault of ours
        assert "Traceback" not in log and "unexpected error" not in log, log[-6000:]


def infer_ok(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(GOOD)
    inputs[1].set_data_from_numpy(GOOD)
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), GOOD * 2)
    client.close()


def post(mesh: Mesh, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(mesh.http_url, timeout=20)
    try:
        connection.request("POST", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def strings(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


@pytest.fixture
def stub(mesh: Mesh) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(mesh.grpc_url, options=[("grpc.max_send_message_length", 64 << 20)])
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def identity_request(*tensors: tuple[list[int], bytes], **params: int) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="simple_identity")
    for shape, data in tensors:
        request.inputs.add(name="INPUT0", datatype="BYTES", shape=shape)
        request.raw_input_contents.append(data)
    for key, value in params.items():
        request.parameters[key].int64_param = value
    return request


def grpc_status(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, request: object
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=20)
    return err.value.code(), err.value.details() or ""


# -- each limit, over both protocols ------------------------------------------------------------------


def test_too_many_tensors(mesh: Mesh, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    one = ([1, 1], strings(b"a"))
    code, details = grpc_status(stub, identity_request(*[one] * 5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max-request-tensors" in details
    inputs = [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 1], "data": ["a"]}] * 5
    status, body = post(mesh, "/v2/models/simple_identity/infer", json.dumps({"inputs": inputs}).encode())
    assert status == 400 and b"--max-request-tensors" in body


def test_too_many_parameters(mesh: Mesh, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    params = {f"p{i}": i for i in range(9)}
    code, details = grpc_status(stub, identity_request(([1, 1], strings(b"a")), **params))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max-request-parameters" in details
    body = {
        "inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 1], "data": ["a"]}],
        "parameters": params,
    }
    status, text = post(mesh, "/v2/models/simple_identity/infer", json.dumps(body).encode())
    assert status == 400 and b"--max-request-parameters" in text


def test_too_many_elements(mesh: Mesh, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    code, details = grpc_status(stub, identity_request(([1, 4097], strings(*[b""] * 4097))))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-tensor-elements" in details
    # a zero dim does not hide a huge one
    code, details = grpc_status(stub, identity_request(([0, 2**40], b"")))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-tensor-elements" in details
    tensor = {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 10**12], "data": []}
    status, body = post(mesh, "/v2/models/simple_identity/infer", json.dumps({"inputs": [tensor]}).encode())
    assert status == 413 and b"--max-tensor-elements" in body


def test_bytes_element_too_long(mesh: Mesh, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    code, details = grpc_status(stub, identity_request(([1, 2], strings(b"x", b"y" * 1001))))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-bytes-element-bytes" in details
    tensor = {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 1], "data": ["y" * 1001]}
    status, body = post(mesh, "/v2/models/simple_identity/infer", json.dumps({"inputs": [tensor]}).encode())
    assert status == 413 and b"--max-bytes-element-bytes" in body
    ok = stub.ModelInfer(identity_request(([1, 1], strings(b"y" * 1000))), timeout=20)
    assert ok.raw_output_contents[0] == strings(b"y" * 1000)


def test_json_nesting(mesh: Mesh) -> None:
    deep: object = [[1] * 16]
    for _ in range(6):
        deep = [deep]
    tensor = {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": deep}
    body = json.dumps({"inputs": [tensor, {**tensor, "name": "INPUT1"}]}).encode()
    status, text = post(mesh, "/v2/models/simple/infer", body)
    assert status == 400 and b"--max-json-depth" in text
    # past the parser's own recursion guard: still a 400
    status, text = post(mesh, "/v2/models/simple/infer", b'{"inputs":' + b"[" * 50_000 + b"]" * 50_000 + b"}")
    assert status == 400 and b"nested too deeply" in text


def test_request_size(mesh: Mesh, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    big = strings(b"z" * 900) * 1200  # ~1.1 MB, over --max-message-bytes 1 MiB
    code, _ = grpc_status(stub, identity_request(([1, 1200], big)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    status, body = post(mesh, "/v2/models/simple_identity/infer", b"{" + b" " * (3 << 20) + b"}")
    assert status == 413 and b"--max-message-bytes" in body


def test_compressed_bombs_are_bounded_after_decompression(
    mesh: Mesh, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    bomb = gzip.compress(b"{" + b" " * (8 << 20) + b"}")  # 8 MiB of JSON in ~8 KiB
    assert len(bomb) < 64 << 10
    status, body = post(mesh, "/v2/models/simple/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 413, body
    request = identity_request(([1, 1], strings(b"\0" * (4 << 20))))  # 4 MiB of zeros, gzip on the wire
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=20, compression=grpc.Compression.Gzip)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    infer_ok(mesh)


def test_http_header_limits(mesh: Mesh) -> None:
    status, _ = post(mesh, "/v2/models/simple/infer", b"{}", {"X-Big": "a" * 3000})
    assert status == 400
    status, _ = post(mesh, "/v2/models/simple/infer", b"{}", {f"X-H{i}": "v" for i in range(60)})
    assert status == 400
    status, _ = post(mesh, "/v2/models/simple/infer", b"{}", {"X-Fine": "a" * 1500})
    assert status == 400  # a 400 from the model check (empty body), not from the header limit
    infer_ok(mesh)


def test_grpc_metadata_limit(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        client.get_server_metadata(headers={"x-big": "a" * 8000})
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED", err.value
    assert client.get_server_metadata(headers={"x-fine": "a" * 1000}).name == "triton"
    client.close()


def _pending(mesh: Mesh, model: str) -> float:
    text = urllib.request.urlopen(mesh.metrics_url, timeout=10).read().decode()
    match = re.search(rf'nv_inference_pending_request_count{{model="{model}",version="1"}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def test_concurrent_streams_per_connection_are_capped(mesh: Mesh) -> None:
    """6 calls at once on one connection with --grpc-max-concurrent-streams 2: the gateway never holds
    more than 2 of them; the rest wait in the client (HTTP/2 flow control) and all succeed."""
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    data = np.ones((1, 4), dtype=np.float32)
    results: list[object] = []
    done = threading.Event()

    def callback(result: object, error: object) -> None:
        results.append(error or result)
        if len(results) == 6:
            done.set()

    for _ in range(6):
        tensor = grpcclient.InferInput("IN", [1, 4], "FP32")
        tensor.set_data_from_numpy(data)
        client.async_infer("slow", [tensor], callback)
    peak = 0.0
    while not done.wait(0.1):
        peak = max(peak, _pending(mesh, "slow"))
    assert all(not isinstance(r, Exception) for r in results), results
    assert 1 <= peak <= 2, peak
    client.close()


def test_requests_in_flight_per_stream_are_capped(mesh: Mesh) -> None:
    """6 requests on one ModelStreamInfer stream with --grpc-stream-inflight 2: the gateway works on
    at most 2 at a time (it stops reading the stream), and every request is answered."""
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    answers: list[object] = []
    client.start_stream(callback=lambda result, error: answers.append(error or result))
    for _ in range(6):
        tensor = grpcclient.InferInput("IN", [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        client.async_stream_infer("slow", [tensor])
    peak = 0.0
    deadline = time.monotonic() + 60
    while len(answers) < 6 and time.monotonic() < deadline:
        peak = max(peak, _pending(mesh, "slow"))
        time.sleep(0.1)
    client.stop_stream()
    client.close()
    assert len(answers) == 6 and all(not isinstance(a, Exception) for a in answers), answers
    assert 1 <= peak <= 2, peak


# -- random malformed input ---------------------------------------------------------------------------


def _random_json(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**63) - 1, 2**64, 16, 7])
    if kind == 3:
        return rng.choice([0.5, float("inf"), float("nan"), -1e308, 1e-320])
    if kind == 4:
        return rng.choice(["", "INPUT0", "INT32", "BYTES", "FP16", "\ud800", "\u202e", "x" * 300, "é", "\0"])
    if kind in (5, 6):
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = [
        "name",
        "datatype",
        "shape",
        "data",
        "parameters",
        "binary_data_size",
        "inputs",
        "outputs",
        "id",
        "ready",
    ]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def _malformed_infer_body(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    shape = rng.choice([[1, 16], [16], [1, 15], [-1, 16], [2, 16], [0, 16], [1, 2**40], []])
    data = rng.choice(
        [list(range(16)), [[list(range(16))]], ["a"] * 16, [1.5] * 16, [True] * 16, [], None, {}]
    )
    tensor = {
        "name": rng.choice(["INPUT0", "INPUT1", "X"]),
        "datatype": rng.choice(["INT32", "FP32", "BYTES", "??"]),
        "shape": shape,
    }
    if rng.random() < 0.3:
        tensor["parameters"] = {"binary_data_size": rng.choice([0, 4, 64, -1, 2**40, "x"])}
    else:
        tensor["data"] = data
    header = {"inputs": [tensor, _random_json(rng)] if rng.random() < 0.5 else [tensor] * rng.randrange(1, 3)}
    if rng.random() < 0.3:
        header[rng.choice(["outputs", "parameters", "id"])] = _random_json(rng)
    raw = json.dumps(header).encode()
    mode = rng.randrange(6)
    tail = rng.randbytes(rng.randrange(0, 80))
    if mode == 0:
        return raw, {}
    if mode == 1:
        return raw + tail, {"Inference-Header-Content-Length": str(len(raw))}
    if mode == 2:
        return raw + tail, {
            "Inference-Header-Content-Length": rng.choice(["-1", "x", "999999", "0", str(len(raw) - 1)])
        }
    if mode == 3:
        cut = rng.randrange(1, len(raw))
        return raw[:cut], {}
    if mode == 4:
        return json.dumps(_random_json(rng)).encode(), {}
    return rng.randbytes(rng.randrange(0, 200)), rng.choice([{}, {"Content-Encoding": "gzip"}])


def test_random_http_bodies_get_client_errors_and_the_mesh_keeps_serving(mesh: Mesh) -> None:
    rng = random.Random(20261127)
    paths = [
        "/v2/models/simple/infer",
        "/v2/models/simple_identity/infer",
        "/v2/models/simple/generate",
        "/v2/models/repeat_int32/generate_stream",
        "/v2/repository/index",
        "/v2/models/simple/versions/x/infer",
    ]
    statuses: dict[int, int] = {}
    started = time.monotonic()
    for _ in range(300):
        body, headers = _malformed_infer_body(rng)
        status, text = post(mesh, rng.choice(paths), body, headers)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (status, body[:200], headers, text[:300])
    assert time.monotonic() - started < 120, "300 small bad requests should not take minutes"
    print("http statuses", sorted(statuses.items()))
    assert sum(n for s, n in statuses.items() if 400 <= s < 500) > 200, statuses
    infer_ok(mesh)


def _malformed_grpc_request(rng: random.Random) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(
        model_name=rng.choice(["simple", "simple_identity", "repeat_int32", "nope", ""])
    )
    request.model_version = rng.choice(["", "1", "0", "-1", "x", "99"])
    for _ in range(rng.randrange(4)):
        tensor = request.inputs.add(
            name=rng.choice(["INPUT0", "INPUT1", "IN", "X", ""]),
            datatype=rng.choice(["INT32", "BYTES", "FP32", "BF16", "??"]),
            shape=rng.choice([[1, 16], [16], [1, -1], [1, 2**62], [0, 2**62], [1, 3]]),
        )
        if rng.random() < 0.3:
            tensor.contents.int_contents.extend(range(rng.randrange(20)))
        if rng.random() < 0.2:
            tensor.contents.bytes_contents.extend([b"a"] * rng.randrange(4))
        if rng.random() < 0.1:
            tensor.parameters["shared_memory_region"].string_param = "r"
    for _ in range(rng.randrange(4)):
        request.raw_input_contents.append(
            rng.choice(
                [
                    rng.randbytes(rng.randrange(80)),
                    b"\xff\xff\xff\x7f",
                    np.arange(16, dtype=np.int32).tobytes(),
                ]
            )
        )
    if rng.random() < 0.3:
        key = rng.choice(["timeout", "priority", "sequence_id", "x"])
        which = rng.choice(["int64_param", "uint64_param", "bool_param", "string_param", "double_param"])
        value = {
            "int64_param": -5,
            "uint64_param": 2**64 - 1,
            "bool_param": True,
            "string_param": "x",
            "double_param": 1e300,
        }[which]
        setattr(request.parameters[key], which, value)
    if rng.random() < 0.2:
        request.outputs.add(name=rng.choice(["OUTPUT0", "nope"]))
    return request


def test_random_grpc_messages_get_client_errors_and_the_mesh_keeps_serving(mesh: Mesh) -> None:
    rng = random.Random(1127)
    channel = grpc.insecure_channel(mesh.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    raw_infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
    faults = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
    codes: dict[str, int] = {}
    for i in range(300):
        try:
            if i % 3 == 0:
                raw_infer(rng.randbytes(rng.randrange(1, 120)), timeout=20)
            else:
                stub.ModelInfer(_malformed_grpc_request(rng), timeout=20)
            codes["OK"] = codes.get("OK", 0) + 1
        except grpc.RpcError as err:
            codes[err.code().name] = codes.get(err.code().name, 0) + 1
            assert err.code() not in faults, (i, err.code(), err.details())
    print("grpc codes", sorted(codes.items()))
    assert codes.get("INVALID_ARGUMENT", 0) > 100, codes
    channel.close()
    infer_ok(mesh)


def test_bad_requests_on_a_stream_are_answered_in_band(mesh: Mesh) -> None:
    rng = random.Random(7)
    channel = grpc.insecure_channel(mesh.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    requests = [_malformed_grpc_request(rng) for _ in range(60)]
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=60))
    print("stream answers", len(answers), sum(1 for a in answers if a.error_message))
    assert len(answers) == len(requests)  # every request answered, none lost
    channel.close()
    infer_ok(mesh)


def test_hostile_paths_never_reach_the_file_system(mesh: Mesh) -> None:
    for path in (
        "/v2/models/..%2F..%2Fetc%2Fpasswd/config",
        "/v2/models/%2e%2e/infer",
        "/v2/models/a%00b/ready",
    ):
        connection = http.client.HTTPConnection(mesh.http_url, timeout=20)
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status in (400, 404), (path, response.status)
        assert b"root:" not in response.read()
        connection.close()
