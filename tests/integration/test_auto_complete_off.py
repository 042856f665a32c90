"""``--disable-auto-complete-config`` (and Triton's older ``--strict-model-config=true``): a config that
lists its inputs and outputs serves as before; one that leaves them to the model file (``dense_onnx``,
no config.pbtxt) is UNAVAILABLE with a reason that names the flag; without the flag the same model is
completed from its graph (tests/integration/test_onnx.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh, start_mesh

EXAMPLES = ROOT / "examples" / "model_repository"


@pytest.fixture(scope="module", params=["--disable-auto-complete-config", "--strict-model-config=true"])
def strict_mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("strict")
    repository = base / "models"
    for name in ("simple", "dense_onnx"):
        shutil.copytree(EXAMPLES / name, repository / name)
    mesh = start_mesh(repository, base / "mesh.log", "--strict-readiness=false", request.param)
    try:
        yield mesh
    finally:
        mesh.stop()


def test_a_complete_config_serves(strict_mesh: Mesh) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    client = grpcclient.InferenceServerClient(strict_mesh.grpc_url)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_a_config_left_to_the_model_file_is_unavailable_and_says_why(strict_mesh: Mesh) -> None:
    assert not httpclient.InferenceServerClient(strict_mesh.http_url).is_model_ready("dense_onnx")
    index = grpcclient.InferenceServerClient(strict_mesh.grpc_url).get_model_repository_index(as_json=True)
    dense = [m for m in index["models"] if m["name"] == "dense_onnx"]
    assert dense and dense[0]["state"] == "UNAVAILABLE", dense
    assert "auto-complete is off" in dense[0]["reason"], dense
    assert "--disable-auto-complete-config" in dense[0]["reason"], dense
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(strict_mesh.grpc_url).get_model_metadata("dense_onnx")
