"""RepositoryModelUnload with ``unload_dependents``, and loads of an ensemble (explicit mode)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import tritonclient.grpc as grpcclient

from meshserve.harness import ROOT, Mesh, start_mesh, wait_for

PIPE_CONFIG = """
name: "pipe"
platform: "ensemble"
max_batch_size: 8
input [ { name: "A" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "B" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "SUM" data_type: TYPE_INT32 dims: [ 16 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "step_a"
      model_version: -1
      input_map { key: "INPUT0" value: "A" }
      input_map { key: "INPUT1" value: "B" }
      output_map { key: "OUTPUT0" value: "SUM" }
    }
  ]
}
"""


@pytest.fixture(scope="module")
def explicit_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("dependents")
    repository = base / "models"
    step = repository / "step_a"
    shutil.copytree(ROOT / "examples" / "model_repository" / "simple", step)
    text = (step / "config.pbtxt").read_text().replace('name: "simple"', 'name: "step_a"')
    (step / "config.pbtxt").write_text(text)
    (repository / "pipe" / "1").mkdir(parents=True)
    (repository / "pipe" / "config.pbtxt").write_text(PIPE_CONFIG)
    mesh = start_mesh(repository, base / "mesh.log", "--model-control-mode", "explicit")
    try:
        yield mesh
    finally:
        assert mesh.stop() == 0


def _index(client: grpcclient.InferenceServerClient) -> dict[str, dict[str, str]]:
    return {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}


def test_unload_dependents_unloads_an_ensembles_composing_models(explicit_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(explicit_mesh.grpc_url)
    client.load_model("pipe")
    assert wait_for(lambda: client.is_model_ready("pipe"), timeout_s=10)
    assert client.is_model_ready("step_a")  # loading an ensemble loads what it composes (Triton)
    client.unload_model("pipe")
    assert client.is_model_ready("step_a")  # without unload_dependents, the steps stay
    client.load_model("pipe")
    client.unload_model("pipe", unload_dependents=True)
    assert wait_for(lambda: not client.is_model_ready("step_a"), timeout_s=10)
    assert _index(client)["step_a"]["reason"] == "unloaded"
