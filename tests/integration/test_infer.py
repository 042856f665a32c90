"""Inference through the whole mesh with the real tritonclient: gRPC and HTTP, sync, callback and asyncio."""

from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from meshserve.harness import ROOT, Mesh

RNG = np.random.default_rng(7)


def simple_inputs(module, rows: int = 1, binary: bool = True):  # type: ignore[no-untyped-def]
    a = RNG.integers(-1000, 1000, size=(rows, 16), dtype=np.int32)
    b = RNG.integers(-1000, 1000, size=(rows, 16), dtype=np.int32)
    inputs = [
        module.InferInput("INPUT0", [rows, 16], "INT32"),
        module.InferInput("INPUT1", [rows, 16], "INT32"),
    ]
    if module is httpclient or module is httpaio:
        inputs[0].set_data_from_numpy(a, binary_data=binary)
        inputs[1].set_data_from_numpy(b, binary_data=binary)
    else:
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
    return a, b, inputs


def test_grpc_infer_simple(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    a, b, inputs = simple_inputs(grpcclient, rows=3)
    result = client.infer("simple", inputs, request_id="req-42")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    response = result.get_response()
    assert response.id == "req-42"
    assert response.model_name == "simple"
    assert response.model_version == "1"


def test_grpc_infer_requested_output_only(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    a, b, inputs = simple_inputs(grpcclient)
    result = client.infer(
        "simple", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")], model_version="1"
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None


def test_grpc_async_infer_callback(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    expected = []
    for _ in range(8):
        a, b, inputs = simple_inputs(grpcclient)
        expected.append(a + b)
        client.async_infer("simple", inputs, callback=lambda result, error: results.put((result, error)))
    got = [results.get(timeout=20) for _ in range(8)]
    assert all(error is None for _, error in got)
    sums = sorted(r.as_numpy("OUTPUT0").tobytes() for r, _ in got)  # type: ignore[attr-defined]
    assert sums == sorted(e.tobytes() for e in expected)


def test_grpc_aio_infer_concurrent(mesh: Mesh) -> None:
    async def run() -> None:
        client = grpcaio.InferenceServerClient(mesh.grpc_url)
        try:
            cases = [simple_inputs(grpcaio, rows=1 + i % 4) for i in range(24)]
            results = await asyncio.gather(*(client.infer("simple", inputs) for _, _, inputs in cases))
            for (a, b, _), result in zip(cases, results, strict=True):
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        finally:
            await client.close()

    asyncio.run(run())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_infer_simple(mesh: Mesh, binary: bool) -> None:
    client = httpclient.InferenceServerClient(mesh.http_url)
    a, b, inputs = simple_inputs(httpclient, rows=2, binary=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    result = client.infer("simple", inputs, outputs=outputs, request_id="h1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.get_response()["id"] == "h1"


def test_http_infer_without_requested_outputs_returns_all(mesh: Mesh) -> None:
    client = httpclient.InferenceServerClient(mesh.http_url)
    a, b, inputs = simple_inputs(httpclient)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_http_async_and_aio(mesh: Mesh) -> None:
    client = httpclient.InferenceServerClient(mesh.http_url, concurrency=4)
    a, b, inputs = simple_inputs(httpclient)
    handle = client.async_infer("simple", inputs)
    np.testing.assert_array_equal(handle.get_result().as_numpy("OUTPUT0"), a + b)

    async def run() -> None:
        aio = httpaio.InferenceServerClient(mesh.http_url)
        try:
            a2, b2, inputs2 = simple_inputs(httpaio, rows=4)
            result = await aio.infer("simple", inputs2)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a2 - b2)
        finally:
            await aio.close()

    asyncio.run(run())


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compression(mesh: Mesh, algorithm: str) -> None:
    grpc_client = grpcclient.InferenceServerClient(mesh.grpc_url)
    a, b, inputs = simple_inputs(grpcclient, rows=8)
    result = grpc_client.infer("simple", inputs, compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    http_client = httpclient.InferenceServerClient(mesh.http_url)
    a, b, inputs = simple_inputs(httpclient, rows=8)
    result = http_client.infer(
        "simple", inputs, request_compression_algorithm=algorithm, response_compression_algorithm=algorithm
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_bytes_model_grpc_and_http(mesh: Mesh) -> None:
    a = np.arange(16, dtype=np.int64).reshape(1, 16)
    b = np.full((1, 16), 5, dtype=np.int64)
    as_bytes = lambda x: np.array([str(v).encode() for v in x.reshape(-1)], dtype=object).reshape(x.shape)  # noqa: E731
    grpc_client = grpcclient.InferenceServerClient(mesh.grpc_url)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "BYTES"),
        grpcclient.InferInput("INPUT1", [1, 16], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(as_bytes(a))
    inputs[1].set_data_from_numpy(as_bytes(b))
    result = grpc_client.infer("simple_string", inputs)
    assert [int(v) for v in result.as_numpy("OUTPUT0").reshape(-1)] == list((a + b).reshape(-1))
    for binary in (True, False):
        http_client = httpclient.InferenceServerClient(mesh.http_url)
        hinputs = [
            httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
            httpclient.InferInput("INPUT1", [1, 16], "BYTES"),
        ]
        hinputs[0].set_data_from_numpy(as_bytes(a), binary_data=binary)
        hinputs[1].set_data_from_numpy(as_bytes(b), binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
        hresult = http_client.infer("simple_string", hinputs, outputs=outputs)
        assert [int(v) for v in hresult.as_numpy("OUTPUT1").reshape(-1)] == list((a - b).reshape(-1))


def test_torchscript_model_matches_in_process_reference(mesh: Mesh) -> None:
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("build_models", ROOT / "examples" / "build_models.py")
    assert spec is not None and spec.loader is not None
    build_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_models)
    x = RNG.standard_normal((5, 16), dtype=np.float32)
    with torch.no_grad():
        expected = build_models.linear_torch()(torch.from_numpy(x)).numpy()
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    tensor = grpcclient.InferInput("INPUT__0", [5, 16], "FP32")
    tensor.set_data_from_numpy(x)
    got = client.infer("linear_torch", [tensor]).as_numpy("OUTPUT__0")
    assert got.shape == (5, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert (got >= 0).all() and (got > 0).any()


def test_grpc_typed_contents_instead_of_raw(mesh: Mesh) -> None:
    """Requests may carry typed `contents` (grpc_explicit_int_content_client style) instead of raw bytes."""
    channel = grpc.insecure_channel(mesh.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, values in (("INPUT0", range(16)), ("INPUT1", [2] * 16)):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.contents.int_contents.extend(values)
    response = stub.ModelInfer(request, timeout=20)
    out0 = np.frombuffer(response.raw_output_contents[0], dtype=np.int32)
    assert list(out0) == [i + 2 for i in range(16)]
    channel.close()


def test_grpc_stream_infer_non_decoupled(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        a, b, inputs = simple_inputs(grpcclient)
        client.async_stream_infer("simple", inputs, request_id="s1")
        result, error = results.get(timeout=20)
        assert error is None
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)  # type: ignore[attr-defined]
        client.async_stream_infer("no_such_model", inputs)
        _, error = results.get(timeout=20)
        assert error is not None and "unknown model" in str(error)
    finally:
        client.stop_stream()


def test_bytes_identity_keeps_arbitrary_bytes(mesh: Mesh) -> None:
    data = np.array([b"he\x00llo", b"\x00\x01\x02\x03", b"", "ünïcode".encode()] * 4, dtype=object).reshape(
        1, 16
    )
    grpc_client = grpcclient.InferenceServerClient(mesh.grpc_url)
    tensor = grpcclient.InferInput("INPUT0", [1, 16], "BYTES")
    tensor.set_data_from_numpy(data)
    assert list(grpc_client.infer("simple_identity", [tensor]).as_numpy("OUTPUT0").reshape(-1)) == list(
        data.reshape(-1)
    )
    http_client = httpclient.InferenceServerClient(mesh.http_url)
    htensor = httpclient.InferInput("INPUT0", [1, 16], "BYTES")
    htensor.set_data_from_numpy(data, binary_data=True)
    result = http_client.infer("simple_identity", [htensor])
    assert list(result.as_numpy("OUTPUT0").reshape(-1)) == list(data.reshape(-1))


def test_int8_model_wraps_like_int8(mesh: Mesh) -> None:
    a = np.full((1, 16), 100, dtype=np.int8)
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT8"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT8"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    result = client.infer("simple_int8", inputs)
    assert result.as_numpy("OUTPUT0").dtype == np.int8
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (a.astype(np.int16) * 2).astype(np.int8))
