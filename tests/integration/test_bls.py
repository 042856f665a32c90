"""BLS through the whole mesh: python models that call other models with
``pb_utils.InferenceRequest(...).exec()`` / ``async_exec()`` (examples/bls_simple, tests/models/bls_*)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import Mesh, wait_for


def _client(module: Any, mesh: Mesh) -> Any:
    return module.InferenceServerClient(mesh.grpc_url if module is grpcclient else mesh.http_url)


@pytest.mark.parametrize("model", ["bls_simple", "bls_async"])
@pytest.mark.parametrize("module", [grpcclient, httpclient], ids=["grpc", "http"])
def test_bls_calls_other_models_through_the_mesh(mesh: Mesh, module: Any, model: str) -> None:
    client = _client(module, mesh)
    assert wait_for(lambda: client.is_model_ready(model), timeout_s=30)
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    inputs = [module.InferInput("INPUT0", [2, 16], "INT32"), module.InferInput("INPUT1", [2, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer(model, inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)  # from `simple`
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)  # from `add_sub_onnx`


def _probe(mesh: Mesh, **parameters: Any) -> tuple[Any, float]:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    assert wait_for(lambda: client.is_model_ready("bls_probe"), timeout_s=30)
    tensor = grpcclient.InferInput("IN", [4], "FP32")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.float32))
    started = time.monotonic()
    try:
        result: Any = client.infer("bls_probe", [tensor], parameters=parameters, client_timeout=30)
    except InferenceServerException as exc:
        result = exc
    return result, time.monotonic() - started


def test_bls_returns_the_callees_output(mesh: Mesh) -> None:
    result, _ = _probe(mesh, target="slow")
    np.testing.assert_array_equal(result.as_numpy("OUT"), np.arange(4, dtype=np.float32))


def test_bls_error_from_the_callee_reaches_the_caller(mesh: Mesh) -> None:
    error, _ = _probe(mesh, target="raises")
    assert isinstance(error, InferenceServerException)
    assert "BLS call failed:" in error.message()
    assert "model bug: cannot handle this input" in error.message()


def test_bls_to_an_unknown_model_is_an_error_response(mesh: Mesh) -> None:
    error, _ = _probe(mesh, target="no_such_model")
    assert isinstance(error, InferenceServerException)
    assert "model 'no_such_model' is not served" in error.message()
    error, _ = _probe(mesh, target="slow", version=7)
    assert isinstance(error, InferenceServerException)
    assert "model 'slow' version 7 has no live instance" in error.message()


def test_bls_timeout_bounds_the_call(mesh: Mesh) -> None:
    error, elapsed = _probe(mesh, target="slow", timeout_us=300_000)  # `slow` takes 2 s
    assert isinstance(error, InferenceServerException)
    assert "Request timeout expired" in error.message()
    assert elapsed < 1.9


def test_a_model_calling_itself_is_bounded_and_says_why(mesh: Mesh) -> None:
    error, elapsed = _probe(mesh, target="bls_probe", timeout_us=500_000)
    assert isinstance(error, InferenceServerException)
    assert "called itself" in error.message()
    assert elapsed < 10
    result, _ = _probe(mesh, target="slow")  # the instance is free again
    np.testing.assert_array_equal(result.as_numpy("OUT"), np.arange(4, dtype=np.float32))


def test_bls_is_bounded_by_the_callers_deadline(mesh: Mesh) -> None:
    client = httpclient.InferenceServerClient(mesh.http_url)
    tensor = httpclient.InferInput("IN", [4], "FP32")
    tensor.set_data_from_numpy(np.ones(4, dtype=np.float32))
    started = time.monotonic()
    with pytest.raises(InferenceServerException):
        client.infer("bls_probe", [tensor], parameters={"target": "slow"}, timeout=400_000)
    assert time.monotonic() - started < 1.9


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_bls_to_a_decoupled_model_iterates_its_responses(mesh: Mesh, mode: str) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    assert wait_for(lambda: client.is_model_ready("bls_stream"), timeout_s=30)
    values = np.array([4, 8, 15, 16, 23, 42], dtype=np.int32)
    tensor = grpcclient.InferInput("IN", [6], "INT32")
    tensor.set_data_from_numpy(values)
    result = client.infer("bls_stream", [tensor], parameters={"mode": mode})
    np.testing.assert_array_equal(result.as_numpy("OUT"), values)
