"""The models `bench/batching.py` serves, built at run time (fixed seeds) into a temporary directory.

- `simple`: Triton's classic example (python backend, INT32[16] add/sub), copied from
  examples/model_repository: pure serving overhead.
- `mlp`: FP32 [1024] -> 4 x (Linear 1024x1024 + ReLU), TorchScript, max_batch_size 64 and
  dynamic_batching { preferred_batch_size [16, 32, 64], max_queue_delay_microseconds 2000 }.
- `mlp_large`: the same at 4096 wide (compute dominates).

Each MLP is written twice from one TorchScript file: for meshserve as a `pytorch_libtorch` model
(INPUT__0/OUTPUT__0), and for real Triton as a python-backend model whose model.py loads the same file
with torch and runs it on the stacked batch, with the same max_batch_size and dynamic_batching.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]

LAYERS = 4
MLP_WIDTHS = {"mlp": 1024, "mlp_large": 4096}
WORKLOADS = ("simple", "mlp", "mlp_large")
MAX_BATCH_SIZE = 64
DYNAMIC_BATCHING = """dynamic_batching {
  preferred_batch_size: [ 16, 32, 64 ]
  max_queue_delay_microseconds: 2000
}"""


class MLP(torch.nn.Module):
    def __init__(self, width: int, layers: int = LAYERS) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            *[module for _ in range(layers) for module in (torch.nn.Linear(width, width), torch.nn.ReLU())]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


def build_mlp(width: int, seed: int = 0) -> torch.jit.ScriptModule:
    torch.manual_seed(seed)
    scripted: torch.jit.ScriptModule = torch.jit.script(MLP(width).eval())
    return scripted


@dataclass(frozen=True)
class Workload:
    name: str
    width: int
    """Row width: 16 for `simple`, the MLP's width otherwise."""

    @property
    def is_mlp(self) -> bool:
        return self.name in MLP_WIDTHS

    def inputs(self, seed: int = 1) -> dict[str, NDArray[Any]]:
        """One request's inputs (one row), by input name."""
        rng = np.random.default_rng(seed)
        if self.is_mlp:
            return {"INPUT__0": rng.standard_normal((1, self.width), dtype=np.float32)}
        a = rng.integers(0, 100, (1, 16), dtype=np.int32)
        b = rng.integers(0, 100, (1, 16), dtype=np.int32)
        return {"INPUT0": a, "INPUT1": b}

    def output_name(self) -> str:
        return "OUTPUT__0" if self.is_mlp else "OUTPUT0"


def workload(name: str) -> Workload:
    if name == "simple":
        return Workload("simple", 16)
    if name in MLP_WIDTHS:
        return Workload(name, MLP_WIDTHS[name])
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")


def _mlp_config(name: str, width: int, engine: str) -> str:
    return f"""name: "{name}"
{engine}
max_batch_size: {MAX_BATCH_SIZE}
input [ {{ name: "INPUT__0", data_type: TYPE_FP32, dims: [ {width} ] }} ]
output [ {{ name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ {width} ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
{DYNAMIC_BATCHING}
"""


TRITON_MLP_MODEL_PY = '''"""Runs the TorchScript MLP (model.pt beside this file) on the stacked batch of requests."""

import os

import numpy as np
from numpy.typing import NDArray
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.module = torch.jit.load(path).eval()

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, "INPUT__0").as_numpy() for r in requests]
        # one copy either way: the request tensors are read-only views of shared memory
        batch = np.concatenate(arrays, axis=0) if len(arrays) > 1 else np.array(arrays[0])
        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch)).numpy()
        responses = []
        start = 0
        for array in arrays:
            rows = array.shape[0]
            tensor = pb_utils.Tensor("OUTPUT__0", out[start : start + rows])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += rows
        return responses
'''


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def build_repositories(root: Path, names: list[str]) -> tuple[Path, Path]:
    """Write meshserve's repository and Triton's (same models) under `root`; returns both paths."""
    mesh_repo, triton_repo = root / "mesh_models", root / "triton_models"
    mesh_repo.mkdir(parents=True)
    triton_repo.mkdir(parents=True)
    for name in names:
        wl = workload(name)
        if not wl.is_mlp:
            source = ROOT / "examples" / "model_repository" / name
            shutil.copytree(source, mesh_repo / name)
            shutil.copytree(source, triton_repo / name)
            continue
        model_file = mesh_repo / name / "1" / "model.pt"
        model_file.parent.mkdir(parents=True)
        build_mlp(wl.width).save(str(model_file))
        (mesh_repo / name / "config.pbtxt").write_text(
            _mlp_config(name, wl.width, 'platform: "pytorch_libtorch"')
        )
        _link_or_copy(model_file, triton_repo / name / "1" / "model.pt")
        (triton_repo / name / "1" / "model.py").write_text(TRITON_MLP_MODEL_PY)
        (triton_repo / name / "config.pbtxt").write_text(_mlp_config(name, wl.width, 'backend: "python"'))
    return mesh_repo, triton_repo
