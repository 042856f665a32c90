"""Request tensors for a model, from its metadata and config: random values, zeros, or a JSON file.

Shapes come from the metadata; a variable dim (-1) needs ``--shape NAME:d1,d2`` (without the batch
dim, as perf_analyzer's).  When the model batches (``max_batch_size`` > 0) each tensor gets ``[batch]``
in front.  The JSON file is perf_analyzer's ``--input-data`` layout::

    {"data": [{"INPUT0": [1, 2, 3], "INPUT1": {"content": [4, 5, 6], "shape": [3]}}, ...]}

one object per request (used in turn); a flat list takes the shape from ``--shape`` or the metadata,
``b64`` instead of ``content`` holds raw bytes, base64-encoded.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MAX_INPUT_FILE_BYTES",
    "InputError",
    "InputSpec",
    "Payload",
    "generate_payloads",
    "input_specs",
    "load_input_file",
    "parse_shapes",
]

Payload = dict[str, NDArray[Any]]
InputMode = Literal["random", "zero"]
MAX_INPUT_FILE_BYTES = 256 * 1024 * 1024
"""An --input-data file larger than this is refused (it is held in memory by every process)."""

NP_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}


class InputError(ValueError):
    """Inputs that cannot be built; the message says what to pass."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]
    """Without the batch dim; -1 where variable."""
    batching: bool


def _dims(values: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def input_specs(metadata: Mapping[str, Any], config: Mapping[str, Any]) -> list[InputSpec]:
    """From the model metadata (``inputs``) and config (``max_batch_size``), either protocol's JSON."""
    cfg = config.get("config", config)
    batching = int(cfg.get("max_batch_size", 0) or 0) > 0
    specs = []
    for entry in metadata.get("inputs", []):
        shape = _dims(entry.get("shape", []))
        if batching:
            shape = shape[1:]
        specs.append(InputSpec(str(entry["name"]), str(entry["datatype"]), shape, batching))
    if not specs:
        raise InputError("the model metadata lists no inputs")
    return specs


def parse_shapes(values: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """``["IN:8", "IMG:3,224,224"]`` → {"IN": (8,), "IMG": (3, 224, 224)}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        if not sep or not name:
            raise InputError(f"--shape: expected NAME:d1,d2,..., got '{value}'")
        try:
            parsed = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
        except ValueError:
            raise InputError(f"--shape {value}: dims must be whole numbers") from None
        if any(d < 0 for d in parsed):
            raise InputError(f"--shape {value}: dims must be >= 0")
        shapes[name] = parsed
    return shapes


def _shape(spec: InputSpec, shapes: Mapping[str, tuple[int, ...]], batch_size: int) -> tuple[int, ...]:
    dims = shapes.get(spec.name, spec.dims)
    if len(dims) != len(spec.dims) or any(s not in (-1, d) for s, d in zip(spec.dims, dims, strict=True)):
        raise InputError(
            f"--shape {spec.name}:{','.join(map(str, dims))} does not fit the model's dims "
            f"{list(spec.dims)} (give the shape without the batch dim)"
        )
    if any(d < 0 for d in dims):
        raise InputError(
            f"input '{spec.name}' has a variable shape {list(spec.dims)}: "
            f"pass --shape {spec.name}:<dims> (without the batch dim)"
        )
    return (batch_size, *dims) if spec.batching else dims


def _np_dtype(spec: InputSpec) -> Any:
    dtype = NP_DTYPES.get(spec.datatype)
    if dtype is None:
        raise InputError(f"input '{spec.name}': datatype {spec.datatype} is not supported by the load tool")
    return dtype


def _random(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator, string_length: int) -> Any:
    dtype = _np_dtype(spec)
    if spec.datatype == "BYTES":
        alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", dtype=np.uint8)
        flat = [bytes(rng.choice(alphabet, size=string_length).tolist()) for _ in range(int(np.prod(shape)))]
        return np.array(flat, dtype=np.object_).reshape(shape)
    if spec.datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 100, size=shape).astype(dtype)  # small: no overflow in add/sub models
    return rng.random(size=shape).astype(dtype)


def _zero(spec: InputSpec, shape: tuple[int, ...]) -> Any:
    if spec.datatype == "BYTES":
        return np.full(shape, b"0", dtype=np.object_)
    return np.zeros(shape, dtype=_np_dtype(spec))


def generate_payloads(
    specs: Sequence[InputSpec],
    mode: InputMode,
    *,
    batch_size: int = 1,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    count: int = 1,
    seed: int = 0,
    string_length: int = 16,
) -> list[Payload]:
    """``count`` distinct requests (random) or one (zero); requests cycle through them."""
    if batch_size < 1:
        raise InputError(f"-b: the batch size must be at least 1, got {batch_size}")
    if batch_size > 1 and not all(s.batching for s in specs):
        raise InputError(f"-b {batch_size}: the model does not batch (max_batch_size 0); use -b 1")
    shapes = shapes or {}
    unknown = set(shapes) - {s.name for s in specs}
    if unknown:
        raise InputError(
            f"--shape names unknown inputs {sorted(unknown)}; the model has {[s.name for s in specs]}"
        )
    rng = np.random.default_rng(seed)
    payloads = []
    for _ in range(count if mode == "random" else 1):
        payload: Payload = {}
        for spec in specs:
            shape = _shape(spec, shapes, batch_size)
            payload[spec.name] = (
                _random(spec, shape, rng, string_length) if mode == "random" else _zero(spec, shape)
            )
        payloads.append(payload)
    return payloads


def _file_tensor(
    spec: InputSpec, value: Any, shapes: Mapping[str, tuple[int, ...]], batch_size: int, where: str
) -> Any:
    shape: tuple[int, ...] | None = None
    if isinstance(value, dict):
        if "shape" in value:
            shape = _dims(value["shape"])
            if spec.batching:
                shape = (batch_size, *shape)
        if "b64" in value:
            raw = base64.b64decode(value["b64"])
            if spec.datatype == "BYTES":
                content: Any = [raw]
            else:
                content = np.frombuffer(raw, dtype=_np_dtype(spec))
        elif "content" in value:
            content = value["content"]
        else:
            raise InputError(f"{where}: input '{spec.name}' needs 'content' or 'b64'")
    else:
        content = value
    if shape is None:
        shape = _shape(spec, shapes, batch_size) if spec.name in shapes or -1 not in spec.dims else None
    dtype = _np_dtype(spec)
    if spec.datatype == "BYTES":
        flat = [
            c if isinstance(c, bytes) else str(c).encode() for c in np.asarray(content, dtype=object).ravel()
        ]
        array: Any = np.array(flat, dtype=np.object_)
    else:
        array = np.asarray(content, dtype=dtype).ravel()
    if shape is None:  # a variable dim and no --shape: the values say how long it is
        shape = _infer_shape(spec, array.size, batch_size, where)
    if spec.batching and batch_size > 1 and array.size * batch_size == int(np.prod(shape)):
        array = np.tile(array, batch_size)  # one row given: the same row batch_size times
    if array.size != int(np.prod(shape)):
        raise InputError(
            f"{where}: input '{spec.name}' has {array.size} values, shape {list(shape)} needs {int(np.prod(shape))}"
        )
    return array.reshape(shape)


def _infer_shape(spec: InputSpec, size: int, batch_size: int, where: str) -> tuple[int, ...]:
    """The one variable dim takes what the fixed ones leave (a flat list in the file, no --shape)."""
    if spec.dims.count(-1) != 1:
        raise InputError(
            f"{where}: input '{spec.name}' has dims {list(spec.dims)}; give its \"shape\" in the file or --shape"
        )
    fixed = int(np.prod([d for d in spec.dims if d != -1]))
    rows = batch_size if spec.batching else 1
    if fixed == 0 or size % fixed:
        raise InputError(
            f"{where}: input '{spec.name}' has {size} values, not a whole number of {list(spec.dims)}"
        )
    dims = tuple(size // fixed if d == -1 else d for d in spec.dims)
    return (rows, *dims) if spec.batching else dims


def load_input_file(
    path: Path,
    specs: Sequence[InputSpec],
    *,
    batch_size: int = 1,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> list[Payload]:
    """The requests of a perf_analyzer-style JSON file (see the module docstring)."""
    try:
        if path.stat().st_size > MAX_INPUT_FILE_BYTES:
            raise InputError(f"--input-data {path}: larger than {MAX_INPUT_FILE_BYTES} bytes")
        document = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"--input-data {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"--input-data {path}: not valid JSON ({exc})") from None
    entries = document.get("data") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InputError(
            f'--input-data {path}: expected {{"data": [{{input: values}}, ...]}} with at least one entry'
        )
    shapes = shapes or {}
    payloads = []
    for i, entry in enumerate(entries):
        where = f"--input-data {path} data[{i}]"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected an object of input name → values")
        missing = [s.name for s in specs if s.name not in entry]
        if missing:
            raise InputError(f"{where}: missing inputs {missing}")
        payloads.append({s.name: _file_tensor(s, entry[s.name], shapes, batch_size, where) for s in specs})
    return payloads
