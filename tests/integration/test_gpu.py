"""GPU instances end to end: ``KIND_GPU`` workers compute on CUDA, batched, through the whole mesh.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``python -m pytest tests/integration/test_gpu.py`` (``scripts/gpu_check.sh`` does it with the
figures of ``bench/gpu_batching.py``).
"""

from __future__ import annotations

import concurrent.futures
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from meshserve.harness import Mesh, start_mesh

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch sees no GPU)")

TORCH_CONFIG = """
name: "on_gpu_torch"
backend: "pytorch"
max_batch_size: 16
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [
  { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ 1 ] }
]
instance_group [ { count: 2 kind: KIND_GPU } ]
dynamic_batching { max_queue_delay_microseconds: 20000 }
"""

PYTHON_CONFIG = """
name: "on_gpu_python"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "KIND" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_GPU } ]
"""

PYTHON_MODEL = """
import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.kind = args["model_instance_kind"]
        self.device_id = args["model_instance_device_id"]

    def execute(self, requests):
        seen = f"{self.kind}:{self.device_id}:{torch.cuda.is_available()}:{torch.cuda.device_count()}"
        out = np.array([seen.encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("KIND", out)]) for _ in requests]
"""


class FlagDevice(torch.nn.Module):
    """Doubles its input and says, per row, whether it ran on a CUDA tensor."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flag = torch.ones_like(x[:, :1]) if x.is_cuda else torch.zeros_like(x[:, :1])
        return x * 2.0, flag


def _repository(root: Path) -> Path:
    torch_dir = root / "on_gpu_torch"
    (torch_dir / "1").mkdir(parents=True)
    (torch_dir / "config.pbtxt").write_text(TORCH_CONFIG)
    torch.jit.script(FlagDevice()).save(str(torch_dir / "1" / "model.pt"))
    python_dir = root / "on_gpu_python"
    (python_dir / "1").mkdir(parents=True)
    (python_dir / "config.pbtxt").write_text(PYTHON_CONFIG)
    (python_dir / "1" / "model.py").write_text(textwrap.dedent(PYTHON_MODEL))
    return root


@pytest.fixture(scope="module")
def gpu_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("gpu")
    mesh = start_mesh(_repository(base / "models"), base / "mesh.log")
    try:
        yield mesh
    finally:
        assert mesh.stop() == 0, mesh.log()[-3000:]


def _infer_torch(client: object, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import tritonclient.grpc as grpcclient

    assert isinstance(client, grpcclient.InferenceServerClient)
    inp = grpcclient.InferInput("INPUT__0", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    result = client.infer("on_gpu_torch", [inp])
    return result.as_numpy("OUTPUT__0"), result.as_numpy("OUTPUT__1")


def test_torch_gpu_instances_compute_on_cuda_and_batch(gpu_mesh: Mesh) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(gpu_mesh.grpc_url)
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(48)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda rows: _infer_torch(client, rows), inputs))
    for rows, (doubled, on_cuda) in zip(inputs, results, strict=True):
        np.testing.assert_allclose(doubled, rows * 2.0, rtol=1e-6)
        assert on_cuda.shape == (rows.shape[0], 1)
        assert bool(np.all(on_cuda == 1.0)), "the batch ran on a CPU tensor"
    stats = client.get_inference_statistics("on_gpu_torch", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) == sum(r.shape[0] for r in inputs)
    # 16 clients, 20 ms queue delay: some requests must have shared a batch.
    assert int(stats["execution_count"]) < len(inputs), stats


def test_python_gpu_instance_sees_its_device(gpu_mesh: Mesh) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(gpu_mesh.grpc_url)
    inp = grpcclient.InferInput("IN", [1], "FP32")
    inp.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    seen = client.infer("on_gpu_python", [inp]).as_numpy("KIND")[0].decode()
    # The worker gets CUDA_VISIBLE_DEVICES=<its gpu>, so torch inside it sees exactly one device.
    assert seen == "GPU:0:True:1", seen
