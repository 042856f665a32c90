"""What Triton's own decoupled and BLS example clients check, against one mesh serving the models
they expect (tests/triton_example_models, our own code, plus `repeat_int32`): python_backend's
`decoupled/square_client.py`, `bls/{sync,async}_client.py`, `bls_decoupled/{sync,async}_client.py`
and the client repository's `simple_grpc_custom_repeat.py`.  The clients themselves are Triton's
files and are not kept here; docs/ensembles-and-bls.md records how they fare run unchanged."""

from __future__ import annotations

import queue
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh, start_mesh, wait_for

MODELS = ROOT / "tests" / "triton_example_models"


@pytest.fixture(scope="module")
def examples_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("examples")
    repository = base / "models"
    repository.mkdir()
    for model in [*MODELS.iterdir(), ROOT / "examples" / "model_repository" / "repeat_int32"]:
        if model.is_dir():
            shutil.copytree(model, repository / model.name)
    mesh = start_mesh(repository, base / "mesh.log", "--request-timeout-secs", "20")
    try:
        client = grpcclient.InferenceServerClient(mesh.grpc_url)
        names = [p.name for p in repository.iterdir()]
        assert wait_for(lambda: all(client.is_model_ready(m) for m in names), timeout_s=90), mesh.log()[
            -3000:
        ]
        yield mesh
    finally:
        code = mesh.stop()
        assert code == 0, f"meshserve up exited with {code}; log tail:\n{mesh.log()[-3000:]}"


def _stream(mesh: Mesh, calls: list[dict[str, Any]], count: int) -> list[Any]:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    results: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put(error if error is not None else result))
    try:
        for call in calls:
            client.async_stream_infer(**call)
        got = [results.get(timeout=30) for _ in range(count)]
        with pytest.raises(queue.Empty):
            results.get(timeout=0.3)
        return got
    finally:
        client.stop_stream()
        client.close()


def test_square_client_checks(examples_mesh: Mesh) -> None:
    """square_client.py: requests [4], [2], [0], [1] on one stream; n responses of [n] for each, by id."""
    values = [4, 2, 0, 1]
    calls = []
    for i, value in enumerate(values):
        tensor = grpcclient.InferInput("IN", [1], "INT32")
        tensor.set_data_from_numpy(np.array([value], dtype=np.int32))
        calls.append({"model_name": "square_int32", "inputs": [tensor], "request_id": str(i)})
    got = _stream(examples_mesh, calls, sum(values))
    assert not [r for r in got if isinstance(r, Exception)]
    by_id: dict[str, list[int]] = {}
    for result in got:
        by_id.setdefault(result.get_response().id, []).append(int(result.as_numpy("OUT")[0]))
    assert by_id == {str(i): [v] * v for i, v in enumerate(values) if v}


def test_custom_repeat_client_checks(examples_mesh: Mesh) -> None:
    """simple_grpc_custom_repeat.py: 10 responses 100..109, in order."""
    inputs = [
        grpcclient.InferInput("IN", [10], "INT32"),
        grpcclient.InferInput("DELAY", [10], "UINT32"),
        grpcclient.InferInput("WAIT", [1], "UINT32"),
    ]
    inputs[0].set_data_from_numpy(np.arange(100, 110, dtype=np.int32))
    inputs[1].set_data_from_numpy(np.full(10, 20, dtype=np.uint32))
    inputs[2].set_data_from_numpy(np.array([20], dtype=np.uint32))
    got = _stream(examples_mesh, [{"model_name": "repeat_int32", "inputs": inputs}], 10)
    assert [int(r.as_numpy("OUT")[0]) for r in got] == list(range(100, 110))


@pytest.mark.parametrize(("model", "factor"), [("bls_decoupled_sync", 1), ("bls_decoupled_async", 2)])
def test_bls_decoupled_clients_check(examples_mesh: Mesh, model: str, factor: int) -> None:
    """bls_decoupled/{sync,async}_client.py over HTTP: SUM = n * n (sync), 2 * n * n (async)."""
    client = httpclient.InferenceServerClient(examples_mesh.http_url)
    for value in (4, 2, 0, 1):
        tensor = httpclient.InferInput("IN", [1], "INT32")
        tensor.set_data_from_numpy(np.array([value], dtype=np.int32))
        result = client.infer(
            model, [tensor], request_id="1", outputs=[httpclient.InferRequestedOutput("SUM")]
        )
        assert result.as_numpy("SUM").tolist() == [factor * value * value]


def _bls_inputs(a: np.ndarray, b: np.ndarray, callee: str | None) -> list[Any]:
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"), httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    if callee is not None:
        inputs.append(httpclient.InferInput("MODEL_NAME", [1], "BYTES"))
        inputs[2].set_data_from_numpy(np.array([callee], dtype=np.object_))
    return inputs


def test_bls_sync_client_checks(examples_mesh: Mesh) -> None:
    """bls/sync_client.py: through `add_sub`, then `pytorch`; an undefined model is an error."""
    client = httpclient.InferenceServerClient(examples_mesh.http_url)
    rng = np.random.default_rng(5)
    a, b = rng.random(4, dtype=np.float32), rng.random(4, dtype=np.float32)
    for callee in ("add_sub", "pytorch"):
        result = client.infer("bls_sync", _bls_inputs(a, b, callee))
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    with pytest.raises(InferenceServerException) as info:
        client.infer("bls_sync", _bls_inputs(a, b, "undefined_model"))
    assert "model 'undefined_model' is not served" in info.value.message()


def test_bls_async_client_checks(examples_mesh: Mesh) -> None:
    """bls/async_client.py: the sum from `add_sub` and the difference from `pytorch`, called at once."""
    client = httpclient.InferenceServerClient(examples_mesh.http_url)
    rng = np.random.default_rng(6)
    a, b = rng.random(4, dtype=np.float32), rng.random(4, dtype=np.float32)
    result = client.infer("bls_async", _bls_inputs(a, b, None))
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
