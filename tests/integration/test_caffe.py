"""Caffe nets through the whole mesh with tritonclient (grpc and http): the example ``lenet_caffe``
(examples/caffe_repository), a config-less copy completed from its prototxt, and broken copies that
go UNAVAILABLE with the reason while the others keep serving.  Needs OpenCV (meshserve[caffe])."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh, start_mesh

pytest.importorskip("cv2", reason="cv2 is not importable: the caffe backend needs meshserve[caffe]")

EXAMPLE = ROOT / "examples" / "caffe_repository" / "lenet_caffe"
RNG = np.random.default_rng(23)


def _copy(repository: Path, name: str, config: str | None) -> Path:
    target = repository / name
    shutil.copytree(EXAMPLE, target)
    (target / "config.pbtxt").unlink()
    if config is not None:
        (target / "config.pbtxt").write_text(config)
    return target


@pytest.fixture(scope="module")
def caffe_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("caffe")
    repository = base / "models"
    repository.mkdir()
    example_config = (EXAMPLE / "config.pbtxt").read_text()
    # a queue delay, so the batching test does not depend on how fast a loaded machine sends
    batched = example_config.replace(
        "dynamic_batching { }", "dynamic_batching { max_queue_delay_microseconds: 50000 }"
    )
    assert batched != example_config
    _copy(repository, "lenet_caffe", batched)
    _copy(repository, "lenet_caffe_auto", None)  # no config.pbtxt: completed from the prototxt
    broken = _copy(repository, "caffe_broken", example_config.replace("lenet_caffe", "caffe_broken"))
    weights = broken / "1" / "model.caffemodel"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    wrong = example_config.replace("lenet_caffe", "caffe_wrong_config").replace(
        "dims: [ 10 ]", "dims: [ 12 ]"
    )
    _copy(repository, "caffe_wrong_config", wrong)
    mesh = start_mesh(
        repository, base / "mesh.log", "--strict-readiness=false", "--request-timeout-secs", "30"
    )
    try:
        yield mesh
    finally:
        code = mesh.stop()
        assert code == 0, f"meshserve up exited with {code}; log tail:\n{mesh.log()[-3000:]}"


@pytest.fixture(scope="module")
def build_caffe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_caffe", ROOT / "examples" / "build_caffe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def images(rows: int) -> np.ndarray:
    return RNG.standard_normal((rows, 1, 28, 28)).astype(np.float32)


def test_lenet_over_grpc_and_http_matches_the_numpy_reference(
    caffe_mesh: Mesh, build_caffe: ModuleType
) -> None:
    for module, url in ((grpcclient, caffe_mesh.grpc_url), (httpclient, caffe_mesh.http_url)):
        client = module.InferenceServerClient(url)
        x = images(3)
        tensor = module.InferInput("data", [3, 1, 28, 28], "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("lenet_caffe", [tensor]).as_numpy("prob")
        assert got.shape == (3, 10) and got.dtype == np.float32
        np.testing.assert_allclose(got, build_caffe.lenet_reference(x), rtol=1e-4, atol=1e-6)


def test_concurrent_requests_are_batched_and_split_back(caffe_mesh: Mesh, build_caffe: ModuleType) -> None:
    sent = [images(rows) for rows in [1, 2, 1, 1, 3, 1, 2, 1] * 3]

    async def infer_all() -> list[object]:
        client = grpcaio.InferenceServerClient(caffe_mesh.grpc_url)
        try:
            calls = []
            for x in sent:
                tensor = grpcaio.InferInput("data", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                calls.append(client.infer("lenet_caffe", [tensor]))
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    before = _stats(caffe_mesh)
    results = asyncio.run(infer_all())
    for x, result in zip(sent, results, strict=True):
        got = result.as_numpy("prob")  # type: ignore[attr-defined]
        np.testing.assert_allclose(got, build_caffe.lenet_reference(x), rtol=1e-4, atol=1e-6)
    after = _stats(caffe_mesh)
    assert after["inference_count"] - before["inference_count"] == sum(len(x) for x in sent)
    executions = after["execution_count"] - before["execution_count"]
    assert 0 < executions < len(sent)  # at least two requests shared a forward pass


def _stats(mesh: Mesh) -> dict[str, int]:
    stats = grpcclient.InferenceServerClient(mesh.grpc_url).get_inference_statistics("lenet_caffe", "1")
    model = stats.model_stats[0]
    return {"inference_count": model.inference_count, "execution_count": model.execution_count}


def test_config_less_model_is_completed_from_the_prototxt(caffe_mesh: Mesh, build_caffe: ModuleType) -> None:
    client = grpcclient.InferenceServerClient(caffe_mesh.grpc_url)
    metadata = client.get_model_metadata("lenet_caffe_auto", as_json=True)
    assert metadata["platform"] == "caffe"
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("data", "FP32", ["-1", "1", "28", "28"])
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("prob", "FP32", ["-1", "10"])
    ]
    config = httpclient.InferenceServerClient(caffe_mesh.http_url).get_model_config("lenet_caffe_auto")
    assert (config["backend"], config["max_batch_size"]) == ("caffe", 4)
    x = images(2)
    tensor = grpcclient.InferInput("data", [2, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(x)
    got = client.infer("lenet_caffe_auto", [tensor]).as_numpy("prob")
    np.testing.assert_allclose(got, build_caffe.lenet_reference(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("caffe_broken", "OpenCV cannot load model.prototxt + model.caffemodel"),
        ("caffe_wrong_config", "output 'prob': the config's dims [12] do not match the net's shape [-1, 10]"),
    ],
)
def test_broken_models_are_unavailable_with_the_reason_and_the_rest_serve(
    caffe_mesh: Mesh, model: str, reason: str
) -> None:
    client = grpcclient.InferenceServerClient(caffe_mesh.grpc_url)
    assert not client.is_model_ready(model)
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata(model)
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert reason in err.value.message()
    index = {
        m["name"]: m
        for m in httpclient.InferenceServerClient(caffe_mesh.http_url).get_model_repository_index()
    }
    assert index[model]["state"] == "UNAVAILABLE" and reason in index[model]["reason"]
    assert index["lenet_caffe"]["state"] == "READY" and index["lenet_caffe_auto"]["state"] == "READY"
    tensor = grpcclient.InferInput("data", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(images(1))
    assert client.infer("lenet_caffe", [tensor]).as_numpy("prob").shape == (1, 10)


def test_bad_requests_get_invalid_argument(caffe_mesh: Mesh) -> None:
    client = httpclient.InferenceServerClient(caffe_mesh.http_url)
    tensor = httpclient.InferInput("data", [1, 1, 32, 32], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 32, 32), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("lenet_caffe", [tensor])
    assert err.value.status() == "400"
    assert "Expected [-1,1,28,28], got [1,1,32,32]" in err.value.message()
