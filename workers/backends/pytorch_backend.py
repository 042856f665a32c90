"""The ``pytorch`` backend: TorchScript (``model.pt``) or torch.export (``model.pt2``) programs.

Inputs are passed to ``forward`` positionally in the order of the config's ``input`` list; the
result (one tensor, or a tuple/list of tensors) maps onto the config's ``output`` list in order.
A batch is run as one call: requests are concatenated on dimension 0 and the outputs split back.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from meshserve.errors import Internal, InvalidArgument
from meshserve.tensors import config_type_to_datatype
from workers.backends.base import LoadContext, Request, Result
from workers.backends.stacking import execute_stacked

log = logging.getLogger(__name__)

__all__ = ["PyTorchBackend", "create"]


def create() -> PyTorchBackend:
    return PyTorchBackend()


class PyTorchBackend:
    def __init__(self) -> None:
        self._module: Any = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._batching = False
        self._device = torch.device("cpu")

    def load(self, ctx: LoadContext) -> None:
        filename = ctx.config.default_model_filename or "model.pt"
        path = ctx.version_dir / filename
        if not path.is_file():
            raise InvalidArgument(f"model file {path} not found")
        self._device = torch.device(ctx.device)
        for tensor in ctx.config.input:
            if config_type_to_datatype(mc_type_name(tensor.data_type)) == "BYTES":
                raise InvalidArgument(f"input '{tensor.name}': the pytorch backend has no BYTES tensors")
        if path.suffix == ".pt2":
            self._module = torch.export.load(str(path)).module()
        else:
            self._module = torch.jit.load(str(path), map_location=self._device)
            self._module.eval()
        if hasattr(self._module, "to"):
            self._module.to(self._device)
        self._inputs = [t.name for t in ctx.config.input]
        self._outputs = [t.name for t in ctx.config.output]
        self._batching = ctx.config.max_batch_size > 0
        log.info("loaded %s on %s", path, self._device)

    def execute(self, requests: list[Request]) -> list[Result]:
        return execute_stacked(requests, self._run, self._inputs, self._batching)

    def unload(self) -> None:
        self._module = None

    def _run(self, inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        outputs = self._forward([inputs[name] for name in self._inputs])
        return dict(zip(self._outputs, outputs, strict=True))

    def _forward(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.array(a, copy=not a.flags.writeable)) for a in arrays]
        try:
            with torch.inference_mode():
                result = self._module(*[t.to(self._device) for t in tensors])
        except Exception as exc:
            raise Internal(f"pytorch model failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, torch.Tensor):
            result = (result,)
        if not isinstance(result, (tuple, list)) or len(result) != len(self._outputs):
            got = len(result) if isinstance(result, (tuple, list)) else type(result).__name__
            raise Internal(f"pytorch model returned {got} outputs, config declares {len(self._outputs)}")
        return [t.detach().cpu().numpy() for t in result]


def mc_type_name(data_type: int) -> str:
    from meshserve.pb import model_config_pb2 as mc

    return str(mc.DataType.Name(data_type))
