"""How a tensor backend runs a batch: one model call for the whole batch, split back by rows.

The onnxruntime, pytorch, tensorflow and caffe backends share it.  Each hands in a ``run(inputs, rows)``
that calls its model once on inputs by config name and returns outputs by config name; ``rows`` is
the number of batch rows (0 when the model does not batch).  With ``max_batch_size`` > 0 and more
than one request, the requests' inputs are concatenated on dimension 0, run once, and each output is
sliced back to each request's rows; an error of that one call (a ``MeshError``) answers every
request of the batch.  Otherwise each request runs alone and gets its own error.

``ConfigTensor`` applies a config tensor's ``reshape`` on the way in and its ``dims`` on the way
out, and checks that an output has one row per batch row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from meshserve.errors import Internal, MeshError
from meshserve.pb import model_config_pb2 as mc
from workers.backends.base import Request, Result

__all__ = ["ConfigTensor", "RunFn", "execute_stacked", "rows_of", "select_outputs"]

RunFn = Callable[[dict[str, NDArray[Any]], int], dict[str, NDArray[Any]]]
"""``run(inputs by config name, batch rows or 0) -> outputs by config name``; raises ``MeshError``."""


def execute_stacked(
    requests: list[Request], run: RunFn, input_names: Sequence[str], batching: bool
) -> list[Result]:
    """One Result per request, in order (rules in the module docstring)."""
    if batching and len(requests) > 1:
        try:
            return _run_stacked(requests, run, input_names)
        except MeshError as exc:
            return [Result(error=exc) for _ in requests]
    return [_run_one(request, run, input_names, batching) for request in requests]


def rows_of(request: Request, input_names: Sequence[str]) -> int:
    """The request's rows on the batch dimension (the batcher's count, else the first input's)."""
    return request.batch_size or int(request.inputs[input_names[0]].shape[0])


def select_outputs(outputs: dict[str, NDArray[Any]], request: Request) -> dict[str, NDArray[Any]]:
    """The outputs the request asked for (all when it named none)."""
    if not request.requested_outputs:
        return outputs
    return {name: outputs[name] for name in request.requested_outputs if name in outputs}


def _run_one(request: Request, run: RunFn, input_names: Sequence[str], batching: bool) -> Result:
    rows = rows_of(request, input_names) if batching else 0
    try:
        outputs = run(request.inputs, rows)
    except MeshError as exc:
        return Result(error=exc)
    return Result(outputs=select_outputs(outputs, request))


def _run_stacked(requests: list[Request], run: RunFn, input_names: Sequence[str]) -> list[Result]:
    counts = [rows_of(r, input_names) for r in requests]
    stacked = {name: np.concatenate([r.inputs[name] for r in requests], axis=0) for name in input_names}
    outputs = run(stacked, sum(counts))
    results = []
    start = 0
    for request, rows in zip(requests, counts, strict=True):
        sliced = {name: out[start : start + rows] for name, out in outputs.items()}
        results.append(Result(outputs=select_outputs(sliced, request)))
        start += rows
    return results


class ConfigTensor:
    """One config input or output as a backend feeds or reads it: its name, ``dims`` and ``reshape``."""

    __slots__ = ("dims", "name", "reshape")

    def __init__(self, io: mc.ModelInput | mc.ModelOutput) -> None:
        self.name = io.name
        self.dims = tuple(io.dims)
        self.reshape = tuple(io.reshape.shape) if io.HasField("reshape") else None

    def shape_in(self, array: NDArray[Any], rows: int) -> NDArray[Any]:
        """The array as the model takes it: reshaped to ``reshape`` (after the rows), contiguous."""
        if self.reshape is not None:
            shape = (rows, *self.reshape) if rows else self.reshape
            array = array.reshape(shape)
        return np.ascontiguousarray(array)

    def shape_out(self, array: NDArray[Any], rows: int) -> NDArray[Any]:
        """The model's output as the config declares it; ``Internal`` when it lacks the batch rows."""
        if rows and (array.ndim == 0 or array.shape[0] != rows):
            got = "a scalar" if array.ndim == 0 else f"{array.shape[0]} rows"
            raise Internal(f"output '{self.name}' has {got} for a batch of {rows}")
        if self.reshape is None:
            return array
        shape = (rows, *self.dims) if rows else self.dims
        try:
            return array.reshape(shape)
        except ValueError as exc:
            raise Internal(f"output '{self.name}' of shape {array.shape} cannot take dims {shape}") from exc
