"""The pytorch backend on real TorchScript and torch.export programs (built here, fixed seed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from meshserve.errors import Internal, InvalidArgument
from meshserve.model_config import complete_config, config_to_json, parse_config
from workers.backends.base import LoadContext, Request
from workers.backends.pytorch_backend import PyTorchBackend

CONFIG = """
name: "m"
platform: "pytorch_libtorch"
max_batch_size: 8
{filename}
input [ {{ name: "INPUT__0", data_type: TYPE_FP32, dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 3 ] }},
         {{ name: "OUTPUT__1", data_type: TYPE_FP32, dims: [ 1 ] }} ]
"""


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.linear(x)
        return y, y.sum(dim=1, keepdim=True)


def _context(tmp_path: Path, filename: str) -> LoadContext:
    config = parse_config(
        CONFIG.format(filename=f'default_model_filename: "{filename}"' if filename != "model.pt" else "")
    )
    complete_config(config, "m")
    (tmp_path / "m" / "1").mkdir(parents=True)
    return LoadContext("m", 1, tmp_path / "m", config, config_to_json(config), "m_0")


def _save(ctx: LoadContext, kind: str) -> TwoHeads:
    module = TwoHeads().eval()
    path = ctx.version_dir / ctx.config.default_model_filename
    if kind == "script":
        torch.jit.script(module).save(str(path))
    else:
        batch = torch.export.Dim("batch", min=1, max=8)
        program = torch.export.export(module, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    return module


@pytest.mark.parametrize(("kind", "filename"), [("script", "model.pt"), ("export", "model.pt2")])
def test_a_batch_runs_as_one_call_and_is_split_back(tmp_path: Path, kind: str, filename: str) -> None:
    ctx = _context(tmp_path, filename)
    reference = _save(ctx, kind)
    backend = PyTorchBackend()
    backend.load(ctx)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((rows, 4), dtype=np.float32) for rows in (1, 3, 2)]
    requests = [
        Request(request_id=str(i), inputs={"INPUT__0": x}, batch_size=x.shape[0])
        for i, x in enumerate(inputs)
    ]
    results = backend.execute(requests)
    assert len(results) == 3
    for x, result in zip(inputs, results, strict=True):
        assert result.error is None
        with torch.no_grad():
            y, total = reference(torch.from_numpy(x))
        np.testing.assert_allclose(result.outputs["OUTPUT__0"], y.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.outputs["OUTPUT__1"], total.numpy(), rtol=1e-5, atol=1e-6)
        assert result.outputs["OUTPUT__0"].shape == (x.shape[0], 3)


def test_requested_outputs_are_the_only_ones_returned(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "model.pt")
    _save(ctx, "script")
    backend = PyTorchBackend()
    backend.load(ctx)
    x = np.ones((1, 4), np.float32)
    [result] = backend.execute([Request("r", {"INPUT__0": x}, requested_outputs=["OUTPUT__1"], batch_size=1)])
    assert set(result.outputs) == {"OUTPUT__1"}


def test_missing_model_file_is_a_clear_load_error(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "model.pt")
    with pytest.raises(InvalidArgument, match=r"model\.pt not found"):
        PyTorchBackend().load(ctx)


def test_a_model_returning_the_wrong_number_of_outputs_fails_each_request(tmp_path: Path) -> None:
    ctx = _context(tmp_path, "model.pt")

    class OneHead(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    torch.jit.script(OneHead()).save(str(ctx.version_dir / "model.pt"))
    backend = PyTorchBackend()
    backend.load(ctx)
    results = backend.execute(
        [Request(str(i), {"INPUT__0": np.ones((1, 4), np.float32)}, batch_size=1) for i in range(2)]
    )
    assert all(isinstance(r.error, Internal) for r in results)
    assert "returned 1 outputs, config declares 2" in str(results[0].error)
