"""ONNX models through the whole mesh with tritonclient: `add_sub_onnx` (explicit config.pbtxt) and
`dense_onnx` (no config.pbtxt: the worker auto-completes it from the graph)."""

from __future__ import annotations

import asyncio
import importlib.util
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh

RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def build_models() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_models", ROOT / "examples" / "build_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dense_input(module, rows: int):  # type: ignore[no-untyped-def]
    x = RNG.standard_normal((rows, 16), dtype=np.float32)
    tensor = module.InferInput("x", [rows, 16], "FP32")
    tensor.set_data_from_numpy(x)
    return x, tensor


def test_add_sub_onnx_grpc_and_http(mesh: Mesh) -> None:
    a = RNG.standard_normal((3, 16), dtype=np.float32)
    b = RNG.standard_normal((3, 16), dtype=np.float32)
    for module, url in ((grpcclient, mesh.grpc_url), (httpclient, mesh.http_url)):
        client = module.InferenceServerClient(url)
        inputs = [module.InferInput("INPUT0", [3, 16], "FP32"), module.InferInput("INPUT1", [3, 16], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("add_sub_onnx", inputs)
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
        only = [module.InferRequestedOutput("OUTPUT1")]
        result = client.infer("add_sub_onnx", inputs, outputs=only)
        assert result.as_numpy("OUTPUT0") is None
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


def test_add_sub_onnx_config_is_the_written_one(mesh: Mesh) -> None:
    config = grpcclient.InferenceServerClient(mesh.grpc_url).get_model_config("add_sub_onnx").config
    assert (config.platform, config.backend, config.max_batch_size) == ("onnxruntime_onnx", "onnxruntime", 8)
    assert config.parameters["intra_op_thread_count"].string_value == "1"


def test_dense_onnx_matches_the_numpy_reference(mesh: Mesh, build_models: ModuleType) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    x, tensor = dense_input(grpcclient, 3)
    got = client.infer("dense_onnx", [tensor]).as_numpy("y")
    assert got.shape == (3, 8)
    np.testing.assert_allclose(got, build_models.dense_reference(x), rtol=1e-5, atol=1e-6)
    assert (got >= 0).all() and (got > 0).any()


def test_concurrent_requests_are_batched_and_split_back(mesh: Mesh, build_models: ModuleType) -> None:
    """Many requests of 1-2 rows at once: the batcher groups them (up to 4 rows), the backend runs
    each group as one session.run and hands every request its own rows back."""
    sent = [dense_input(grpcaio, rows) for rows in [1, 2, 1, 1, 2, 1, 1, 1] * 3]

    async def infer_all() -> list[object]:
        client = grpcaio.InferenceServerClient(mesh.grpc_url)
        try:
            return await asyncio.gather(*(client.infer("dense_onnx", [t]) for _, t in sent))
        finally:
            await client.close()

    before = _stats(mesh)
    results = asyncio.run(infer_all())
    for (x, _), result in zip(sent, results, strict=True):
        got = result.as_numpy("y")  # type: ignore[attr-defined]
        np.testing.assert_allclose(got, build_models.dense_reference(x), rtol=1e-5, atol=1e-6)
    after = _stats(mesh)
    assert after["inference_count"] - before["inference_count"] == sum(x.shape[0] for x, _ in sent)
    executions = after["execution_count"] - before["execution_count"]
    assert 0 < executions <= len(sent)


def _stats(mesh: Mesh) -> dict[str, int]:
    stats = grpcclient.InferenceServerClient(mesh.grpc_url).get_inference_statistics("dense_onnx", "1")
    model = stats.model_stats[0]
    return {"inference_count": model.inference_count, "execution_count": model.execution_count}


def test_auto_completed_metadata_and_config(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    assert client.is_model_ready("dense_onnx")
    metadata = client.get_model_metadata("dense_onnx", as_json=True)
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("x", "FP32", ["-1", "16"])
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("y", "FP32", ["-1", "8"])
    ]
    config = client.get_model_config("dense_onnx").config
    assert (config.name, config.backend, config.max_batch_size) == ("dense_onnx", "onnxruntime", 4)
    assert config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [16])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [8])]
    http_config = httpclient.InferenceServerClient(mesh.http_url).get_model_config("dense_onnx")
    assert http_config["max_batch_size"] == 4
    [http_input] = http_config["input"]
    assert (http_input["name"], http_input["data_type"], http_input["dims"]) == ("x", "TYPE_FP32", [16])


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("X9", [1, 16], "unexpected inference input 'X9'"),
        ("x", [1, 15], "Expected [-1,16], got [1,15]"),
        ("x", [5, 16], "batch-size must be <= 4"),
    ],
)
def test_bad_requests_get_invalid_argument_and_the_model_keeps_serving(
    mesh: Mesh, build_models: ModuleType, name: str, shape: list[int], message: str
) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    tensor = grpcclient.InferInput(name, shape, "FP32")
    tensor.set_data_from_numpy(np.zeros(shape, np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("dense_onnx", [tensor])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in err.value.message()
    x, good = dense_input(grpcclient, 2)
    np.testing.assert_allclose(
        client.infer("dense_onnx", [good]).as_numpy("y"),
        build_models.dense_reference(x),
        rtol=1e-5,
        atol=1e-6,
    )


def test_config_that_contradicts_the_model_file_makes_it_unavailable(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    assert not client.is_model_ready("onnx_wrong_config")
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("onnx_wrong_config")
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert "input 'INPUT0': the config says TYPE_INT32, the model has TYPE_FP32" in err.value.message()
    assert client.is_model_ready("add_sub_onnx")  # the others keep serving
