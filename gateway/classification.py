"""Triton's classification extension: an output returned as its top-N classes instead of its values.

A requested output with the parameter ``classification`` = N (tritonclient's
``InferRequestedOutput(name, class_count=N)``) comes back as a BYTES tensor: per batch row (the whole
tensor for a model without batching) the min(N, C) largest of its C values, largest first, each as
``"<value>:<index>"`` or ``"<value>:<index>:<label>"`` when the output's config names a
``label_filename`` (one label per line, line k for index k).  Values are printed as C++
``std::to_string`` prints them (six decimals for floating point, plain integers otherwise), as
Triton does.  Equal values keep index order (Triton leaves ties unspecified).  Shape: ``[B, n]`` for a
batched model, ``[n]`` otherwise.  Only numeric outputs can be classified; BYTES is refused.

Label files are read by the gateway from its model repository, once per model config, and bounded:
at most :data:`MAX_LABEL_FILE_BYTES` bytes, the path confined to the model's directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshserve import tensors
from meshserve.errors import InvalidArgument
from meshserve.pb import model_config_pb2 as mc

__all__ = [
    "MAX_LABEL_FILE_BYTES",
    "LabelCache",
    "class_count",
    "classify",
    "format_value",
    "read_labels",
]

MAX_LABEL_FILE_BYTES = 4 * 1024 * 1024
"""A label file larger than this is refused (an ImageNet label file is ~20 KiB)."""

_NUMERIC = frozenset(tensors.DATATYPES) - {"BYTES"}


def class_count(value: object, output: str) -> int:
    """The ``classification`` parameter of a requested output: a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgument(
            f"the 'classification' parameter of output '{output}' must be a positive integer "
            f"(the number of classes to return), got {value!r}"
        )
    return value


def format_value(value: object, datatype: str) -> str:
    """One value as Triton writes it in a class string (C++ ``std::to_string``)."""
    if datatype in ("FP16", "FP32", "FP64", "BF16"):
        return f"{float(value):f}"  # type: ignore[arg-type]
    if datatype == "BOOL":
        return "1" if value else "0"
    return str(int(value))  # type: ignore[call-overload]


def classify(
    name: str,
    datatype: str,
    shape: list[int],
    data: bytes,
    count: int,
    batched: bool,
    labels: tuple[str, ...] = (),
) -> tuple[list[int], bytes]:
    """The top-``count`` classes of one output: (its new shape, its serialized BYTES data)."""
    if datatype not in _NUMERIC:
        raise InvalidArgument(
            f"output '{name}' is {datatype}: the classification extension needs a numeric output"
        )
    if batched and not shape:
        raise InvalidArgument(f"output '{name}' has no batch dimension to classify per row")
    values = tensors.to_numpy(name, datatype, shape, data)
    if datatype == "BF16":  # the raw 16-bit words: the high half of an FP32
        values = (values.astype(np.uint32) << 16).view(np.float32)
    rows = int(shape[0]) if batched else 1
    classes = tensors.element_count(shape[1:] if batched else shape)
    flat = values.reshape(rows, classes)
    n = min(count, classes)
    out: list[bytes] = []
    for row in flat:
        # a stable sort on the descending key: largest first, equal values in index order
        order = np.lexsort((np.arange(classes), _descending_key(row)))[:n]
        for index in order:
            text = f"{format_value(row[index], datatype)}:{int(index)}"
            if int(index) < len(labels) and labels[int(index)]:
                text += f":{labels[int(index)]}"
            out.append(text.encode())
    new_shape = [rows, n] if batched else [n]
    array = np.empty(len(out), dtype=object)
    array[:] = out
    return new_shape, tensors.serialize_bytes(array)


def _descending_key(row: np.ndarray) -> np.ndarray:
    """A key whose ascending order is ``row``'s descending order, exact for 64-bit integers."""
    if row.dtype == np.bool_:
        return ~row
    if row.dtype.kind == "u":
        return np.iinfo(row.dtype).max - row
    if row.dtype.kind == "i":
        inverted: np.ndarray = np.invert(row)  # ~x = -x - 1: order reversed, exact
        return inverted
    key: np.ndarray = -(row.astype(np.float64))
    return key


def read_labels(model_dir: Path, filename: str, max_bytes: int = MAX_LABEL_FILE_BYTES) -> tuple[str, ...]:
    """The labels of one output: ``filename`` inside ``model_dir`` only, at most ``max_bytes`` bytes
    (``--max-label-file-bytes``), one label per line."""
    root = model_dir.resolve()
    path = (root / filename).resolve()
    if not path.is_relative_to(root) or path == root:
        raise InvalidArgument(f"label_filename '{filename}' must name a file inside the model directory")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidArgument(
                f"label file '{filename}' holds {size} bytes, more than the {max_bytes} allowed "
                "(--max-label-file-bytes)"
            )
        text = path.read_bytes()[:max_bytes].decode("utf-8", errors="replace")
    except OSError as exc:
        raise InvalidArgument(f"cannot read label file '{filename}': {exc.strerror or exc}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return tuple(line.rstrip("\r") for line in lines)


@dataclass(slots=True)
class LabelCache:
    """Labels per (model, version, output), read once per model config (a reload re-reads them)."""

    repository: Path | None
    max_bytes: int = MAX_LABEL_FILE_BYTES
    _entries: dict[tuple[str, int, str], tuple[mc.ModelConfig, tuple[str, ...]]] = field(default_factory=dict)

    def labels(self, model: str, version: int, config: mc.ModelConfig, output: str) -> tuple[str, ...]:
        """No repository (a gateway started without one) or no ``label_filename``: no labels."""
        key = (model, version, output)
        cached = self._entries.get(key)
        if cached is not None and cached[0] is config:
            return cached[1]
        filename = next((o.label_filename for o in config.output if o.name == output), "")
        labels: tuple[str, ...] = ()
        if filename and self.repository is not None:
            labels = read_labels(self.repository / model, filename, self.max_bytes)
        self._entries[key] = (config, labels)
        return labels
