"""Ensembles through the whole mesh with tritonclient: `simple_pipeline` (examples) chains a python
model, a python preprocessing model used twice (concurrently) and an ONNX model; the broken ensembles
of tests/models show UNAVAILABLE with their reason; a failing step fails the request naming it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh, start_mesh, wait_for

CLIENTS: list[Any] = [grpcclient, httpclient]


def _client(module: Any, mesh: Mesh) -> Any:
    return module.InferenceServerClient(mesh.grpc_url if module is grpcclient else mesh.http_url)


def _pipeline_inputs(module: Any, a: np.ndarray, b: np.ndarray) -> list[Any]:
    inputs = [
        module.InferInput("INPUT0", list(a.shape), "INT32"),
        module.InferInput("INPUT1", list(b.shape), "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


@pytest.mark.parametrize("module", CLIENTS, ids=["grpc", "http"])
def test_pipeline_runs_every_step(mesh: Mesh, module: Any) -> None:
    client = _client(module, mesh)
    assert wait_for(lambda: client.is_model_ready("simple_pipeline"), timeout_s=30)
    a = np.arange(48, dtype=np.int32).reshape(3, 16)
    b = np.full((3, 16), 5, dtype=np.int32)
    result = client.infer("simple_pipeline", _pipeline_inputs(module, a, b))
    # simple: sum, diff -> cast_fp32 (x2) -> add_sub_onnx: (a+b)+(a-b), (a+b)-(a-b)
    np.testing.assert_array_equal(result.as_numpy("SUM"), (2 * a).astype(np.float32))
    np.testing.assert_array_equal(result.as_numpy("DIFF"), (2 * b).astype(np.float32))
    assert result.as_numpy("sum") is None  # intermediate tensors never reach the client
    only = client.infer(
        "simple_pipeline", _pipeline_inputs(module, a, b), outputs=[module.InferRequestedOutput("DIFF")]
    )
    assert only.as_numpy("SUM") is None
    np.testing.assert_array_equal(only.as_numpy("DIFF"), (2 * b).astype(np.float32))


def test_pipeline_metadata_config_index_and_stats(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    assert wait_for(lambda: client.is_model_ready("simple_pipeline"), timeout_s=30)
    meta = client.get_model_metadata("simple_pipeline", as_json=True)
    assert meta["platform"] == "ensemble"
    assert [i["name"] for i in meta["inputs"]] == ["INPUT0", "INPUT1"]
    assert [o["name"] for o in meta["outputs"]] == ["SUM", "DIFF"]
    assert meta["outputs"][0]["shape"] == ["-1", "16"]
    config = client.get_model_config("simple_pipeline").config
    assert [s.model_name for s in config.ensemble_scheduling.step] == [
        "simple",
        "cast_fp32",
        "cast_fp32",
        "add_sub_onnx",
    ]
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["simple_pipeline"]["state"] == "READY"

    def counts(model: str) -> tuple[int, int]:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]
        return int(stats["success"].get("count", 0)), int(stats["fail"].get("count", 0))

    before_ens, before_cast = counts("simple_pipeline"), counts("cast_fp32")
    a = np.ones((1, 16), dtype=np.int32)
    client.infer("simple_pipeline", _pipeline_inputs(grpcclient, a, a))
    assert counts("simple_pipeline")[0] == before_ens[0] + 1
    assert counts("cast_fp32")[0] == before_cast[0] + 2  # its two steps count in the step model's stats


def test_pipeline_reports_each_steps_time_when_asked(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    a = np.ones((1, 16), dtype=np.int32)
    result = client.infer(
        "simple_pipeline", _pipeline_inputs(grpcclient, a, a), parameters={"meshserve_timing": True}
    )
    params = result.get_response().parameters
    steps = [params[f"meshserve_step{i}_ns"].int64_param for i in (1, 2, 3, 4)]
    assert all(ns > 0 for ns in steps)
    assert sum(steps) <= params["meshserve_gateway_ns"].int64_param * 2  # steps 2 and 3 overlap
    assert (
        "meshserve_step1_ns"
        not in client.infer("simple_pipeline", _pipeline_inputs(grpcclient, a, a)).get_response().parameters
    )


def test_an_ensemble_can_be_a_step_of_another(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    assert wait_for(lambda: client.is_model_ready("ens_nested"), timeout_s=30)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 2, dtype=np.int32)
    inputs = [grpcclient.InferInput("A", [1, 16], "INT32"), grpcclient.InferInput("B", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("ens_nested", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (2 * a + 2 * b).astype(np.float32))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), (2 * a - 2 * b).astype(np.float32))


def test_pipeline_checks_its_inputs_like_any_model(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    a = np.ones((1, 8), dtype=np.int32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("simple_pipeline", _pipeline_inputs(grpcclient, a, a))
    assert "unexpected shape for input 'INPUT0' for model 'simple_pipeline'" in info.value.message()


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("ens_missing_step", "no model 'no_such_model' in the model repository"),
        ("ens_cycle", "the steps form a cycle"),
        (
            "ens_bad_dtype",
            "step 1 (model 'add_sub_onnx') input 'INPUT0' reads 'A': ensemble input 'A' is TYPE_INT32",
        ),
    ],
)
def test_broken_ensembles_are_unavailable_with_their_reason(mesh: Mesh, model: str, reason: str) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)

    def row() -> dict[str, str]:
        index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
        return index[model]  # type: ignore[no-any-return]

    assert wait_for(lambda: row()["state"] == "UNAVAILABLE", timeout_s=30)
    assert reason in row()["reason"]
    assert not client.is_model_ready(model)
    tensor = grpcclient.InferInput("X", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [tensor])
    assert reason in info.value.message()
    http = httpclient.InferenceServerClient(mesh.http_url)
    assert not http.is_model_ready(model)


@pytest.mark.parametrize("module", CLIENTS, ids=["grpc", "http"])
def test_a_failing_step_fails_the_request_naming_the_step(mesh: Mesh, module: Any) -> None:
    client = _client(module, mesh)
    assert wait_for(lambda: client.is_model_ready("ens_failing_step"), timeout_s=30)
    tensor = module.InferInput("X", [1, 4], "INT32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.int32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("ens_failing_step", [tensor])
    message = info.value.message()
    assert "ensemble 'ens_failing_step', step 2 (model 'raises')" in message
    assert "model bug: cannot handle this input" in message


def test_the_request_deadline_bounds_the_steps(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    assert wait_for(lambda: client.is_model_ready("ens_slow"), timeout_s=30)
    tensor = grpcclient.InferInput("X", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("ens_slow", [tensor], client_timeout=0.5)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    http = httpclient.InferenceServerClient(mesh.http_url)
    tensor_http = httpclient.InferInput("X", [1, 4], "FP32")
    tensor_http.set_data_from_numpy(np.ones((1, 4), np.float32))
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as info:
        http.infer("ens_slow", [tensor_http], timeout=500_000)  # the request's own timeout, in µs
    assert time.monotonic() - started < 1.9  # the gateway gave up on the 2 s step at the deadline
    assert "slow" in info.value.message()
    ok = client.infer("ens_slow", [tensor], client_timeout=15)
    np.testing.assert_array_equal(ok.as_numpy("Y"), np.ones((1, 4), np.float32))


@pytest.fixture(scope="module")
def explicit_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("explicit-ensemble")
    repository = base / "models"
    repository.mkdir()
    for name in ("simple", "cast_fp32", "add_sub_onnx", "simple_pipeline"):
        (repository / name).symlink_to(ROOT / "examples" / "model_repository" / name)
    mesh = start_mesh(
        repository, base / "mesh.log", "--model-control-mode", "explicit", "--load-model", "simple"
    )
    try:
        yield mesh
    finally:
        assert mesh.stop() == 0


def test_loading_an_ensemble_loads_its_step_models(explicit_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(explicit_mesh.grpc_url)

    def index() -> dict[str, dict[str, str]]:
        return {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}

    assert wait_for(lambda: index()["simple_pipeline"]["state"] == "UNAVAILABLE", timeout_s=15)
    assert not client.is_model_ready("simple_pipeline")
    client.load_model("simple_pipeline")
    assert client.is_model_ready("simple_pipeline")
    assert client.is_model_ready("cast_fp32") and client.is_model_ready("add_sub_onnx")
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    result = client.infer("simple_pipeline", _pipeline_inputs(grpcclient, a, a))
    np.testing.assert_array_equal(result.as_numpy("SUM"), (2 * a).astype(np.float32))
    client.unload_model("simple_pipeline")  # the ensemble only: its step models keep serving
    assert wait_for(lambda: index()["simple_pipeline"]["reason"] == "unloaded", timeout_s=15)
    assert client.is_model_ready("simple")
    client.unload_model("cast_fp32")
    client.load_model("simple_pipeline")  # loads the step model that is missing again
    assert client.is_model_ready("simple_pipeline") and client.is_model_ready("cast_fp32")
