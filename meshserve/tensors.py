"""The tensor codec: KServe datatypes, raw little-endian bytes and numpy views.

Tensors travel as raw bytes plus datatype and shape.  Decoding makes numpy *views* over the
received buffer (no copy) except for BYTES, whose elements are length-prefixed strings
(Triton's encoding: 4-byte little-endian length, then the bytes) and become an object array.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from meshserve.errors import InvalidInput, PayloadTooLarge

__all__ = [
    "DATATYPES",
    "DatatypeInfo",
    "config_type_to_datatype",
    "datatype_to_config_type",
    "deserialize_bytes",
    "element_count",
    "expected_byte_size",
    "from_numpy",
    "numpy_to_datatype",
    "serialize_bytes",
    "to_numpy",
    "validate_bytes",
    "values_to_bytes",
]


@dataclass(frozen=True, slots=True)
class DatatypeInfo:
    """One KServe datatype: its numpy dtype (None when numpy has none) and element size (0 = variable)."""

    name: str
    numpy: np.dtype | None
    itemsize: int


def _info(name: str, dtype: str | None, itemsize: int) -> DatatypeInfo:
    return DatatypeInfo(name, np.dtype(dtype) if dtype else None, itemsize)


DATATYPES: Final[dict[str, DatatypeInfo]] = {
    info.name: info
    for info in (
        _info("BOOL", "?", 1),
        _info("UINT8", "<u1", 1),
        _info("UINT16", "<u2", 2),
        _info("UINT32", "<u4", 4),
        _info("UINT64", "<u8", 8),
        _info("INT8", "<i1", 1),
        _info("INT16", "<i2", 2),
        _info("INT32", "<i4", 4),
        _info("INT64", "<i8", 8),
        _info("FP16", "<f2", 2),
        _info("FP32", "<f4", 4),
        _info("FP64", "<f8", 8),
        _info("BF16", None, 2),
        _info("BYTES", None, 0),
    )
}

_NUMPY_KIND_TO_DATATYPE: Final[dict[str, str]] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}


def config_type_to_datatype(config_type: str) -> str:
    """``TYPE_FP32`` (config.pbtxt) → ``FP32`` (wire); ``TYPE_STRING`` → ``BYTES``."""
    name = config_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def datatype_to_config_type(datatype: str) -> str:
    """``FP32`` → ``TYPE_FP32``; ``BYTES`` → ``TYPE_STRING``."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def numpy_to_datatype(dtype: np.dtype) -> str:
    """The KServe datatype for a numpy dtype; object, bytes and str arrays are BYTES."""
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _NUMPY_KIND_TO_DATATYPE[dtype.name]
    except KeyError:
        raise InvalidInput("<output>", f"numpy dtype {dtype} has no KServe datatype") from None


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def expected_byte_size(datatype: str, shape: Sequence[int]) -> int | None:
    """Bytes a fixed-size tensor occupies; None for BYTES (variable-size elements)."""
    info = DATATYPES[datatype]
    if info.itemsize == 0:
        return None
    return element_count(shape) * info.itemsize


def to_numpy(name: str, datatype: str, shape: Sequence[int], data: bytes | memoryview) -> np.ndarray:
    """A numpy array over ``data`` (a read-only view for fixed-size types); checks the byte size."""
    info = DATATYPES.get(datatype)
    if info is None:
        raise InvalidInput(name, f"unknown datatype '{datatype}'")
    if any(dim < 0 for dim in shape):
        raise InvalidInput(name, f"shape {list(shape)} has a negative dim")
    if datatype == "BYTES":
        return deserialize_bytes(name, data, element_count(shape)).reshape(tuple(shape))
    expected = element_count(shape) * info.itemsize
    if len(data) != expected:
        raise InvalidInput(
            name,
            f"unexpected byte size {len(data)}, expected {expected} for shape {list(shape)} of {datatype}",
        )
    dtype = info.numpy if info.numpy is not None else np.dtype("<u2")  # BF16: the raw 16-bit words
    try:
        return np.frombuffer(data, dtype=dtype).reshape(tuple(shape))
    except (ValueError, OverflowError) as exc:  # an empty tensor whose other dims numpy cannot hold
        raise InvalidInput(name, f"shape {list(shape)} cannot be held: {exc}") from None


def from_numpy(array: np.ndarray, datatype: str | None = None) -> tuple[str, list[int], bytes]:
    """``(datatype, shape, raw bytes)`` for an array; fixed-size types are made little-endian."""
    dt = datatype or numpy_to_datatype(array.dtype)
    shape = list(array.shape)
    if dt == "BYTES":
        return dt, shape, serialize_bytes(array)
    info = DATATYPES[dt]
    target = info.numpy if info.numpy is not None else np.dtype("<u2")
    contiguous = np.ascontiguousarray(array, dtype=target)
    return dt, shape, contiguous.tobytes()


def serialize_bytes(array: np.ndarray) -> bytes:
    """Triton's BYTES encoding of every element, row-major: 4-byte LE length + bytes."""
    parts: list[bytes] = []
    for item in np.asarray(array, dtype=object).reshape(-1):
        if isinstance(item, bytes):
            raw = item
        elif isinstance(item, str):
            raw = item.encode("utf-8")
        elif isinstance(item, (bytearray, memoryview)):
            raw = bytes(item)
        else:
            raw = str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes(name: str, data: bytes | memoryview, count: int) -> np.ndarray:
    """Decode ``count`` length-prefixed elements; a bad prefix is an :class:`InvalidInput`."""
    view = memoryview(data)
    if count < 0:
        raise InvalidInput(name, f"a BYTES tensor cannot have {count} elements")
    # room for the elements grows with what the data really holds, never with what ``count`` claims
    out = np.empty(min(count, len(view) // 4), dtype=object)
    offset, end = 0, len(view)
    for i in range(count):
        if offset + 4 > end:
            raise InvalidInput(name, f"BYTES element {i}: data ends before its 4-byte length prefix")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                name, f"BYTES element {i}: length prefix {length} runs past the end of the data"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != end:
        raise InvalidInput(name, f"{end - offset} bytes left over after {count} BYTES elements")
    return out  # every element took >= 4 bytes, so ``count`` fit in ``out``


def validate_bytes(name: str, data: bytes | memoryview, count: int, max_element_bytes: int = 0) -> None:
    """Check Triton's BYTES encoding of ``count`` elements without decoding them; an element longer
    than ``max_element_bytes`` (0 = no bound) is :class:`PayloadTooLarge`."""
    view = memoryview(data)
    offset, end = 0, len(view)
    for i in range(count):
        if offset + 4 > end:
            raise InvalidInput(name, f"BYTES element {i}: data ends before its 4-byte length prefix")
        (length,) = struct.unpack_from("<I", view, offset)
        if max_element_bytes and length > max_element_bytes:
            raise PayloadTooLarge(
                f"input '{name}': BYTES element {i} is {length} bytes, over the limit of "
                f"{max_element_bytes} (--max-bytes-element-bytes)"
            )
        offset += 4 + length
        if offset > end:
            raise InvalidInput(
                name, f"BYTES element {i}: length prefix {length} runs past the end of the data"
            )
    if offset != end:
        raise InvalidInput(name, f"{end - offset} bytes left over after {count} BYTES elements")


def values_to_bytes(name: str, datatype: str, values: Sequence[bool | int | float]) -> bytes:
    """Raw bytes of typed values (JSON ``data``, gRPC ``contents``): integers are range-checked
    explicitly, so an out-of-range value is refused the same way on every numpy version."""
    info = DATATYPES[datatype]
    if info.numpy is None:
        raise InvalidInput(name, f"{datatype} data must be sent as raw bytes")
    if info.numpy.kind in "iu" and len(values) > 0:
        limits = np.iinfo(info.numpy)
        low, high = min(values), max(values)
        if low < limits.min or high > limits.max:
            bad = low if low < limits.min else high
            raise InvalidInput(
                name, f"a value does not fit {datatype}: {bad} is outside {limits.min}..{limits.max}"
            )
    try:
        return np.asarray(values, dtype=info.numpy).tobytes()
    except (OverflowError, ValueError, TypeError) as exc:
        raise InvalidInput(name, f"a value does not fit {datatype}: {exc}") from exc
