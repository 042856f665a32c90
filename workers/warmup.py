"""``model_warmup``: sample requests a model runs before its instance is announced READY (Triton's rule:
a model whose warm-up fails does not load).  Runs on the compute thread, through the backend itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meshserve import tensors
from meshserve.errors import Internal, InvalidArgument, MeshError
from meshserve.pb import model_config_pb2 as mc
from workers.backends.base import Backend, Request, Result

__all__ = ["run_warmup", "warmup_requests"]

WARMUP_DIR = "warmup"
"""Where ``input_data_file`` paths point, under the model directory (Triton's layout)."""


def _sample(
    name: str, spec: mc.ModelWarmup.Input, shape: list[int], model_dir: Path, seed: int
) -> np.ndarray:
    datatype = tensors.config_type_to_datatype(mc.DataType.Name(spec.data_type))
    info = tensors.DATATYPES.get(datatype)
    if info is None:
        raise InvalidArgument(f"warm-up input '{name}': unknown data_type")
    count = tensors.element_count(shape)
    which = spec.WhichOneof("input_data_type")
    if which == "input_data_file":
        path = model_dir / WARMUP_DIR / spec.input_data_file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"warm-up input '{name}': cannot read {path}: {exc}") from exc
        return tensors.to_numpy(name, datatype, shape, data).copy()
    if datatype == "BYTES":
        value = b"" if which != "random_data" else b"warmup"
        return np.array([value] * count, dtype=object).reshape(shape)
    if info.numpy is None:
        raise InvalidArgument(f"warm-up input '{name}': {datatype} needs input_data_file")
    if which == "random_data":
        rng = np.random.default_rng(seed)
        if info.numpy.kind == "f":
            return rng.standard_normal(count).astype(info.numpy).reshape(shape)
        if info.numpy.kind == "b":
            return rng.integers(0, 2, count).astype(bool).reshape(shape)
        return rng.integers(0, 16, count).astype(info.numpy).reshape(shape)
    return np.zeros(shape, dtype=info.numpy)


def warmup_requests(config: mc.ModelConfig, model_dir: Path) -> list[tuple[str, int, list[Request]]]:
    """Each warm-up sample as ``(name, repetitions, requests)``: one request of ``batch_size`` rows."""
    out = []
    for index, sample in enumerate(config.model_warmup):
        name = sample.name or f"warmup_{index}"
        rows = max(1, sample.batch_size)
        inputs = {}
        for input_name, spec in sample.inputs.items():
            shape = ([rows] if config.max_batch_size > 0 else []) + list(spec.dims)
            inputs[input_name] = _sample(input_name, spec, shape, model_dir, seed=index)
        batch_rows = rows if config.max_batch_size > 0 else 0
        out.append(
            (name, max(1, sample.count), [Request(request_id=name, inputs=inputs, batch_size=batch_rows)])
        )
    return out


def run_warmup(backend: Backend, config: mc.ModelConfig, model_dir: Path) -> int:
    """Run every sample; raise :class:`Internal` naming the sample that failed.  Returns runs done."""
    runs = 0
    for name, count, requests in warmup_requests(config, model_dir):
        for _ in range(count):
            errors: list[MeshError] = []
            for request in requests:  # decoupled models answer through emit
                request.emit = lambda result, final, errors=errors: _note(errors, result)
            for result in backend.execute(requests):
                _note(errors, result)
            if errors:
                raise Internal(f"warm-up sample '{name}' failed: {errors[0]}")
            runs += 1
    return runs


def _note(errors: list[MeshError], result: Result) -> None:
    if result.error is not None:
        errors.append(result.error)
