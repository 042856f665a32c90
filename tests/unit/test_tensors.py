"""The tensor codec: numpy ↔ raw little-endian bytes, Triton's BYTES encoding, datatype names."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from meshserve.errors import InvalidArgument, InvalidInput
from meshserve.tensors import (
    DATATYPES,
    config_type_to_datatype,
    datatype_to_config_type,
    deserialize_bytes,
    element_count,
    expected_byte_size,
    from_numpy,
    numpy_to_datatype,
    serialize_bytes,
    to_numpy,
    validate_bytes,
)

# Every fixed-size datatype with values that exercise its range (extremes, sign, fractions).
FIXED_SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]], dtype=np.bool_),
    "UINT8": np.array([[0, 1, 255], [7, 128, 254]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 256, 65534]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 2**16, 2**31]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [7, 2**32, 2**63]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [-1, 1, 5]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767], [-1, 1, 300]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [-1, 1, 70000]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [-1, 1, 2**40]], dtype=np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0], [0.000061035, np.inf, -np.inf]], dtype=np.float16),
    "FP32": np.array([[-1.25, 0.0, 3.4e38], [1e-38, np.inf, -0.0]], dtype=np.float32),
    "FP64": np.array([[-1.25, 0.0, 1.7e308], [5e-324, np.inf, np.pi]], dtype=np.float64),
}


def test_every_datatype_is_covered_by_these_tests() -> None:
    assert set(DATATYPES) == set(FIXED_SAMPLES) | {"BF16", "BYTES"}


# --------------------------------------------------------------------------------------------------
# Fixed-size round trips
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", sorted(FIXED_SAMPLES))
def test_fixed_size_round_trip_keeps_values_dtype_and_shape(datatype: str) -> None:
    array = FIXED_SAMPLES[datatype]
    dt, shape, raw = from_numpy(array)
    assert dt == datatype
    assert shape == [2, 3]
    assert len(raw) == array.size * DATATYPES[datatype].itemsize
    assert len(raw) == expected_byte_size(datatype, shape)

    back = to_numpy("x", dt, shape, raw)
    assert back.dtype == DATATYPES[datatype].numpy
    assert back.dtype == array.dtype
    assert back.shape == (2, 3)
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("datatype", sorted(FIXED_SAMPLES))
def test_fixed_size_bytes_are_little_endian(datatype: str) -> None:
    array = FIXED_SAMPLES[datatype]
    _, _, raw = from_numpy(array)
    assert raw == array.astype(array.dtype.newbyteorder("<")).tobytes()


def test_big_endian_input_is_written_little_endian() -> None:
    array = np.array([1, 256, -2], dtype=">i4")
    dt, shape, raw = from_numpy(array)
    assert (dt, shape) == ("INT32", [3])
    assert raw == struct.pack("<3i", 1, 256, -2)
    np.testing.assert_array_equal(to_numpy("x", dt, shape, raw), [1, 256, -2])


def test_non_contiguous_input_is_serialized_row_major() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T  # Fortran-ordered view
    dt, shape, raw = from_numpy(array)
    assert shape == [4, 3]
    np.testing.assert_array_equal(to_numpy("x", dt, shape, raw), array)


def test_explicit_datatype_casts_to_it() -> None:
    dt, shape, raw = from_numpy(np.array([1.0, 2.5]), "FP32")
    assert (dt, shape) == ("FP32", [2])
    assert raw == struct.pack("<2f", 1.0, 2.5)


def test_bf16_travels_as_raw_16_bit_words() -> None:
    # bfloat16 bit patterns for 1.0, -2.0, 0.5
    words = np.array([0x3F80, 0xC000, 0x3F00], dtype=np.uint16)
    dt, shape, raw = from_numpy(words, "BF16")
    assert (dt, shape) == ("BF16", [3])
    assert raw == struct.pack("<3H", 0x3F80, 0xC000, 0x3F00)
    back = to_numpy("x", "BF16", [3], raw)
    assert back.dtype == np.dtype("<u2")
    np.testing.assert_array_equal(back, words)
    assert expected_byte_size("BF16", [3]) == 6


def test_scalar_shape_is_one_element() -> None:
    back = to_numpy("x", "INT64", [], struct.pack("<q", -5))
    assert back.shape == ()
    assert int(back) == -5


def test_zero_sized_tensor() -> None:
    back = to_numpy("x", "FP32", [0, 4], b"")
    assert back.shape == (0, 4)
    assert back.dtype == np.float32


# --------------------------------------------------------------------------------------------------
# Views, not copies
# --------------------------------------------------------------------------------------------------


def test_to_numpy_is_a_view_over_a_bytearray() -> None:
    buffer = bytearray(struct.pack("<4i", 1, 2, 3, 4))
    array = to_numpy("x", "INT32", [2, 2], memoryview(buffer))
    assert np.shares_memory(array, np.frombuffer(buffer, dtype=np.uint8))
    buffer[0:4] = struct.pack("<i", 99)  # a change to the source shows through: no copy was made
    assert array[0, 0] == 99


def test_to_numpy_is_a_view_over_a_memoryview_slice() -> None:
    buffer = bytearray(b"\xff" * 4 + struct.pack("<2f", 1.5, -2.0))
    array = to_numpy("x", "FP32", [2], memoryview(buffer)[4:])
    assert np.shares_memory(array, np.frombuffer(buffer, dtype=np.uint8))
    np.testing.assert_array_equal(array, [1.5, -2.0])


def test_to_numpy_over_bytes_is_read_only_view() -> None:
    raw = struct.pack("<3d", 1.0, 2.0, 3.0)
    array = to_numpy("x", "FP64", [3], raw)
    assert not array.flags.writeable
    assert array.base is not None  # a view (over the bytes object), not an owned copy
    assert not array.flags.owndata
    with pytest.raises(ValueError):
        array[0] = 5.0


def test_bf16_is_a_view_too() -> None:
    buffer = bytearray(struct.pack("<2H", 0x3F80, 0x4000))
    array = to_numpy("x", "BF16", [2], memoryview(buffer))
    assert np.shares_memory(array, np.frombuffer(buffer, dtype=np.uint8))


# --------------------------------------------------------------------------------------------------
# Byte-size mismatch and unknown datatypes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 9, 0])
def test_byte_size_mismatch_is_invalid_input_with_a_helpful_message(size: int) -> None:
    with pytest.raises(InvalidInput) as info:
        to_numpy("INPUT0", "FP32", [2], b"\x00" * size)
    err = info.value
    assert isinstance(err, InvalidArgument)
    assert err.tensor == "INPUT0"
    assert err.http_status == 400
    message = str(err)
    assert "INPUT0" in message
    assert f"unexpected byte size {size}" in message
    assert "expected 8" in message
    assert "[2]" in message
    assert "FP32" in message


def test_byte_size_mismatch_for_multi_dim_shape_names_the_shape() -> None:
    with pytest.raises(InvalidInput, match=r"expected 24 for shape \[2, 3\] of INT32"):
        to_numpy("t", "INT32", [2, 3], b"\x00" * 20)


def test_unknown_datatype_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="unknown datatype 'FP8'") as info:
        to_numpy("x", "FP8", [1], b"\x00")
    assert info.value.tensor == "x"


def test_numpy_to_datatype_names_and_rejects() -> None:
    assert numpy_to_datatype(np.dtype(np.float32)) == "FP32"
    assert numpy_to_datatype(np.dtype(">i8")) == "INT64"
    assert numpy_to_datatype(np.dtype(np.bool_)) == "BOOL"
    for kind in (object, "S5", "U3"):
        assert numpy_to_datatype(np.dtype(kind)) == "BYTES"
    with pytest.raises(InvalidInput, match="complex128"):
        numpy_to_datatype(np.dtype(np.complex128))


# --------------------------------------------------------------------------------------------------
# BYTES
# --------------------------------------------------------------------------------------------------


def _encode(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_bytes_encoding_is_length_prefixed_little_endian() -> None:
    raw = serialize_bytes(np.array([b"ab", b"", b"xyz"], dtype=object))
    assert raw == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00xyz"


def test_bytes_round_trip_with_empty_and_non_ascii_strings() -> None:
    items = ["", "héllo", "日本語", "🙂", "plain", ""]
    array = np.array(items, dtype=object).reshape(2, 3)
    dt, shape, raw = from_numpy(array)
    assert (dt, shape) == ("BYTES", [2, 3])
    assert expected_byte_size("BYTES", shape) is None

    back = to_numpy("s", dt, shape, raw)
    assert back.dtype == object
    assert back.shape == (2, 3)
    assert [b.decode("utf-8") for b in back.reshape(-1)] == items
    assert back[0, 1] == "héllo".encode()
    assert len(raw) == sum(4 + len(s.encode()) for s in items)


def test_bytes_accepts_numpy_string_arrays_and_raw_bytes() -> None:
    assert serialize_bytes(np.array(["añ", "b"])) == _encode("añ".encode(), b"b")
    assert serialize_bytes(np.array([b"\x00\xff", b"q"], dtype=object)) == _encode(b"\x00\xff", b"q")
    assert serialize_bytes(np.array([bytearray(b"ba"), 12], dtype=object)) == _encode(b"ba", b"12")


def test_bytes_with_binary_payload_round_trips_exactly() -> None:
    payload = bytes(range(256))
    back = deserialize_bytes("b", serialize_bytes(np.array([payload], dtype=object)), 1)
    assert back[0] == payload


def test_zero_bytes_elements() -> None:
    assert deserialize_bytes("b", b"", 0).shape == (0,)
    validate_bytes("b", b"", 0)


BAD_BYTES = {
    "truncated prefix": (
        _encode(b"ab") + b"\x01\x00",
        2,
        "element 1: data ends before its 4-byte length prefix",
    ),
    "empty data": (b"", 1, "element 0: data ends before its 4-byte length prefix"),
    "length past end": (b"\x05\x00\x00\x00abc", 1, "element 0: length prefix 5 runs past the end"),
    "huge length": (b"\xff\xff\xff\xffabc", 1, "length prefix 4294967295 runs past the end"),
    "trailing bytes": (_encode(b"ab") + b"zz", 1, "2 bytes left over after 1 BYTES elements"),
    "too many elements": (_encode(b"a", b"b"), 1, "5 bytes left over after 1 BYTES elements"),
    "too few elements": (_encode(b"a"), 2, "element 1: data ends before"),
}


@pytest.mark.parametrize("case", sorted(BAD_BYTES))
def test_bad_bytes_encoding_is_invalid_input(case: str) -> None:
    data, count, expected = BAD_BYTES[case]
    with pytest.raises(InvalidInput) as info:
        deserialize_bytes("TEXT", data, count)
    assert expected in str(info.value)
    assert info.value.tensor == "TEXT"
    with pytest.raises(InvalidInput) as info:
        to_numpy("TEXT", "BYTES", [count], data)
    assert expected in str(info.value)


GOOD_BYTES = {
    "one": (_encode(b"abc"), 1),
    "empties": (_encode(b"", b"", b""), 3),
    "mixed": (_encode("ü".encode(), b"", b"x" * 300), 3),
    "none": (b"", 0),
}


@pytest.mark.parametrize(
    ("data", "count"),
    [*GOOD_BYTES.values(), *((d, c) for d, c, _ in BAD_BYTES.values())],
    ids=[*GOOD_BYTES, *BAD_BYTES],
)
def test_validate_bytes_agrees_with_deserialize_bytes(data: bytes, count: int) -> None:
    try:
        decoded = deserialize_bytes("t", data, count)
    except InvalidInput as exc:
        with pytest.raises(InvalidInput) as info:
            validate_bytes("t", data, count)
        assert str(info.value) == str(exc)
    else:
        validate_bytes("t", data, count)  # does not raise
        assert len(decoded) == count
        assert serialize_bytes(decoded) == bytes(data)


def test_deserialize_bytes_accepts_a_memoryview() -> None:
    buffer = bytearray(b"pad" + _encode(b"hi", b"there"))
    back = deserialize_bytes("t", memoryview(buffer)[3:], 2)
    assert list(back) == [b"hi", b"there"]


# --------------------------------------------------------------------------------------------------
# Datatype names and sizes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", sorted(DATATYPES))
def test_config_type_round_trip(datatype: str) -> None:
    config_type = datatype_to_config_type(datatype)
    assert config_type.startswith("TYPE_")
    assert config_type_to_datatype(config_type) == datatype


def test_type_string_is_bytes() -> None:
    assert config_type_to_datatype("TYPE_STRING") == "BYTES"
    assert datatype_to_config_type("BYTES") == "TYPE_STRING"
    assert config_type_to_datatype("TYPE_FP32") == "FP32"
    assert datatype_to_config_type("FP32") == "TYPE_FP32"
    assert datatype_to_config_type("BF16") == "TYPE_BF16"


def test_config_types_exist_in_the_model_config_enum() -> None:
    from meshserve.pb import model_config_pb2 as mc

    for datatype in DATATYPES:
        assert mc.DataType.Value(datatype_to_config_type(datatype)) != mc.TYPE_INVALID


@pytest.mark.parametrize(
    ("datatype", "shape", "size"),
    [
        ("FP32", [2, 3], 24),
        ("FP64", [5], 40),
        ("BOOL", [7], 7),
        ("INT8", [1, 1, 1], 1),
        ("FP16", [4, 4], 32),
        ("UINT64", [0, 9], 0),
        ("INT32", [], 4),
        ("BF16", [10], 20),
        ("BYTES", [3], None),
    ],
)
def test_expected_byte_size(datatype: str, shape: list[int], size: int | None) -> None:
    assert expected_byte_size(datatype, shape) == size


def test_element_count() -> None:
    assert element_count([]) == 1
    assert element_count([2, 3, 4]) == 24
    assert element_count([5, 0]) == 0


# found by tests/unit/test_properties.py: a shape no data could fill made numpy raise (a 500) or try to
# allocate the claimed element count before looking at the data
@pytest.mark.parametrize(
    ("datatype", "shape", "data"),
    [
        ("BYTES", [-1], b""),
        ("BYTES", [5, 2**40], b"\0\0\0\0"),
        ("FP32", [0, 2**70], b""),
        ("INT8", [-2, -3], b"\0" * 6),
    ],
)
def test_shapes_no_data_can_fill_are_invalid_input(datatype: str, shape: list[int], data: bytes) -> None:
    with pytest.raises(InvalidInput):
        to_numpy("X", datatype, shape, data)
