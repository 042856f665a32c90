"""TensorFlow SavedModels through the whole mesh with tritonclient (grpc, grpc.aio, http).

One mesh for the module, on its own repository: the example TensorFlow models (`add_sub_tf` with a
config.pbtxt, `dense_tf` without one: completed from its signature), a broken SavedModel, and the
python `simple` model that must keep serving beside it.  Skipped only when tensorflow is not
installed (the test extra installs it)."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh, start_mesh

if importlib.util.find_spec("tensorflow") is None:
    pytest.skip(
        "tensorflow is not installed (pip install -e '.[tensorflow]'; the test extra has it)",
        allow_module_level=True,
    )

RNG = np.random.default_rng(17)
BROKEN_CONFIG = 'platform: "tensorflow_savedmodel" max_batch_size: 4\n'


@pytest.fixture(scope="module")
def tf_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("tf_mesh")
    repository = base / "models"
    shutil.copytree(ROOT / "examples" / "tf_model_repository", repository)
    shutil.copytree(ROOT / "examples" / "model_repository" / "simple", repository / "simple")
    broken = repository / "broken_tf"
    (broken / "1" / "model.savedmodel").mkdir(parents=True)
    (broken / "1" / "model.savedmodel" / "saved_model.pb").write_bytes(b"\x00 not a SavedModel")
    (broken / "config.pbtxt").write_text(BROKEN_CONFIG)
    mesh = start_mesh(
        repository,
        base / "mesh.log",
        "--strict-readiness=false",
        "--request-timeout-secs",
        "30",
        timeout_s=240,
    )
    try:
        yield mesh
    finally:
        code = mesh.stop()
        assert code == 0, f"meshserve up exited with {code}; log tail:\n{mesh.log()[-3000:]}"


@pytest.fixture(scope="module")
def build_models() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_models", ROOT / "examples" / "build_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_sub_inputs(module: ModuleType, rows: int) -> tuple[np.ndarray, np.ndarray, list[object]]:
    a = RNG.standard_normal((rows, 16), dtype=np.float32)
    b = RNG.standard_normal((rows, 16), dtype=np.float32)
    inputs = [
        module.InferInput("INPUT0", [rows, 16], "FP32"),
        module.InferInput("INPUT1", [rows, 16], "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return a, b, inputs


def test_add_sub_tf_grpc_and_http_with_and_without_a_version(tf_mesh: Mesh) -> None:
    for module, url in ((grpcclient, tf_mesh.grpc_url), (httpclient, tf_mesh.http_url)):
        client = module.InferenceServerClient(url)
        a, b, inputs = add_sub_inputs(module, 3)
        for version in ("", "1"):
            result = client.infer("add_sub_tf", inputs, model_version=version)
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
            np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
        only = [module.InferRequestedOutput("OUTPUT1")]
        result = client.infer("add_sub_tf", inputs, outputs=only)
        assert result.as_numpy("OUTPUT0") is None
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
        with pytest.raises(InferenceServerException):
            client.infer("add_sub_tf", inputs, model_version="2")  # only version 1 exists


def test_add_sub_tf_metadata_and_config_are_the_written_ones(tf_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(tf_mesh.grpc_url)
    metadata = client.get_model_metadata("add_sub_tf", as_json=True)
    assert (metadata["platform"], metadata["versions"]) == ("tensorflow_savedmodel", ["1"])
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("INPUT0", "FP32", ["-1", "16"]),
        ("INPUT1", "FP32", ["-1", "16"]),
    ]
    config = client.get_model_config("add_sub_tf").config
    assert (config.backend, config.max_batch_size) == ("tensorflow", 8)
    assert config.parameters["TF_NUM_INTRA_THREADS"].string_value == "1"


def test_concurrent_requests_are_batched_and_split_back(tf_mesh: Mesh) -> None:
    """Many 1-2 row requests at once: the batcher groups them (up to 8 rows), the backend calls the
    signature once per group and hands each request its own rows."""
    sent = [add_sub_inputs(grpcaio, rows) for rows in [1, 2, 1, 1, 2, 1, 1, 1] * 3]

    async def infer_all() -> list[object]:
        client = grpcaio.InferenceServerClient(tf_mesh.grpc_url)
        try:
            return await asyncio.gather(*(client.infer("add_sub_tf", inputs) for _, _, inputs in sent))
        finally:
            await client.close()

    before = _stats(tf_mesh, "add_sub_tf")
    results = asyncio.run(infer_all())
    for (a, b, _), result in zip(sent, results, strict=True):
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)  # type: ignore[attr-defined]
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)  # type: ignore[attr-defined]
    after = _stats(tf_mesh, "add_sub_tf")
    assert after["inference_count"] - before["inference_count"] == sum(a.shape[0] for a, _, _ in sent)
    executions = after["execution_count"] - before["execution_count"]
    assert 0 < executions <= len(sent)


def _stats(mesh: Mesh, model: str) -> dict[str, int]:
    stats = grpcclient.InferenceServerClient(mesh.grpc_url).get_inference_statistics(model, "1")
    entry = stats.model_stats[0]
    return {"inference_count": entry.inference_count, "execution_count": entry.execution_count}


def test_config_less_dense_tf_is_completed_and_matches_the_numpy_reference(
    tf_mesh: Mesh, build_models: ModuleType
) -> None:
    client = grpcclient.InferenceServerClient(tf_mesh.grpc_url)
    assert client.is_model_ready("dense_tf")
    config = client.get_model_config("dense_tf").config
    assert (config.platform, config.backend, config.max_batch_size) == (
        "tensorflow_savedmodel",
        "tensorflow",
        4,
    )
    assert config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [16])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [8])]
    x = RNG.standard_normal((3, 16), dtype=np.float32)
    for module, url in ((grpcclient, tf_mesh.grpc_url), (httpclient, tf_mesh.http_url)):
        tensor = module.InferInput("x", [3, 16], "FP32")
        tensor.set_data_from_numpy(x)
        got = module.InferenceServerClient(url).infer("dense_tf", [tensor], model_version="1").as_numpy("y")
        np.testing.assert_allclose(got, build_models.dense_reference(x), rtol=1e-5, atol=1e-6)


def test_bad_request_gets_invalid_argument_and_the_model_keeps_serving(tf_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(tf_mesh.grpc_url)
    tensor = grpcclient.InferInput("x", [2, 15], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 15), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("dense_tf", [tensor])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "Expected [-1,16], got [2,15]" in err.value.message()
    _, _, inputs = add_sub_inputs(grpcclient, 1)
    assert client.infer("add_sub_tf", inputs).as_numpy("OUTPUT0").shape == (1, 16)


def test_a_broken_savedmodel_is_unavailable_with_the_reason_and_the_others_serve(tf_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(tf_mesh.grpc_url)
    assert not client.is_model_ready("broken_tf")
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("broken_tf")
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert "tensorflow cannot load SavedModel" in err.value.message()
    index = {
        m["name"]: m for m in httpclient.InferenceServerClient(tf_mesh.http_url).get_model_repository_index()
    }
    assert index["broken_tf"]["state"] == "UNAVAILABLE"
    assert "tensorflow cannot load SavedModel" in index["broken_tf"]["reason"]
    assert all(index[name]["state"] == "READY" for name in ("add_sub_tf", "dense_tf", "simple"))
    data = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(data)
    inputs[1].set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), data * 2)
