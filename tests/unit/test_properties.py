"""Property-based tests (hypothesis) over what a client controls: the tensor codec, the HTTP JSON and
binary parsers, the generate mapping and the request validation.

Two kinds of property: well-formed input survives the round trip bit for bit, and *any* input ends in
either a result or a :class:`MeshError` (a clear client error), never another exception (which
would be a 500).  The protobuf side (gateway/grpc_codec.py) is covered by test_properties_grpc.py.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.generate import decode_generate
from gateway.http_codec import HEADER_LENGTH, decode_infer
from gateway.models import ModelView
from gateway.validate import InferCall, InputTensor, build_request
from meshserve import tensors
from meshserve.errors import InvalidInput, MeshError
from meshserve.model_config import complete_config, parse_config
from meshserve.security import RequestLimits

assert HEADER_LENGTH  # the header the binary tests below emulate

# Bounded so the whole module stays within a few seconds on a shared 2-core machine; the deadline is
# generous for the same reason (a slow example is not a failure here, a wrong one is).
PROPS = settings(
    max_examples=150,
    deadline=2000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HEAVY = settings(PROPS, max_examples=80)
"""For the strategies that build whole JSON documents (costly to generate, not to check)."""

NUMERIC = [name for name, info in tensors.DATATYPES.items() if info.numpy is not None]
ALL_TYPES = list(tensors.DATATYPES)

MODEL = """
backend: "python"
max_batch_size: 8
input [
  { name: "T" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "F" data_type: TYPE_FP32 dims: [ -1 ] optional: true },
  { name: "I" data_type: TYPE_INT64 dims: [ 2, -1 ] optional: true },
  { name: "B" data_type: TYPE_BOOL dims: [ -1 ] optional: true }
]
output [ { name: "O" data_type: TYPE_STRING dims: [ -1 ] } ]
"""


def _view() -> ModelView:
    config = parse_config(MODEL)
    complete_config(config, "m")
    return ModelView.from_config("m", 1, config)


VIEW = _view()
LIMITS = RequestLimits(max_tensor_elements=1 << 16)


def only_client_errors(fn: Any, *args: Any) -> Any:
    """Run ``fn``; a MeshError with a 4xx code is fine, anything else fails the property."""
    try:
        return fn(*args)
    except MeshError as exc:
        assert exc.http_status < 500, f"{type(exc).__name__} ({exc.http_status}): {exc}"
        return None


# -- strategies ---------------------------------------------------------------------------------------

shapes = st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=4)
wild_ints = st.one_of(
    st.integers(min_value=-5, max_value=20), st.integers(min_value=-(2**70), max_value=2**70)
)
wild_shapes = st.lists(wild_ints, max_size=6)
unicode_text = st.text(max_size=12)  # any code point but surrogates (what a decoded protobuf string can be)
text = st.one_of(  # JSON strings: also lone UTF-16 surrogates, which JSON can spell as escapes
    unicode_text, st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2).map(lambda s: "a" + s)
)
json_scalars = st.one_of(
    st.none(), st.booleans(), wild_ints, st.floats(allow_nan=True, allow_infinity=True), text
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(text, st.sampled_from(["name", "data"])), children, max_size=5),
    ),
    max_leaves=12,
)


@st.composite
def wild_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """One entry of ``inputs``: mostly shaped like a real one, each field possibly wrong."""
    entry: dict[str, Any] = {}
    if draw(st.booleans()):
        entry["name"] = draw(st.one_of(st.sampled_from(["T", "F", "I", "B", "X"]), text, json_values))
    if draw(st.booleans()):
        entry["datatype"] = draw(st.one_of(st.sampled_from(ALL_TYPES), text, json_values))
    if draw(st.booleans()):
        entry["shape"] = draw(st.one_of(wild_shapes, json_values))
    choice = draw(st.integers(0, 2))
    if choice == 0:
        entry["data"] = draw(json_values)
    elif choice == 1:
        entry["parameters"] = {"binary_data_size": draw(st.one_of(wild_ints, json_values))}
    if draw(st.booleans()):
        entry.setdefault("parameters", {})[draw(text)] = draw(json_values)
    return entry


@st.composite
def wild_bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    header: dict[str, Any] = {}
    if draw(st.booleans()):
        header["id"] = draw(st.one_of(text, json_values))
    header["inputs"] = draw(st.one_of(st.lists(wild_inputs(), max_size=4), json_values))
    if draw(st.booleans()):
        header["outputs"] = draw(
            st.one_of(st.lists(st.fixed_dictionaries({"name": text}), max_size=3), json_values)
        )
    if draw(st.booleans()):
        header["parameters"] = draw(st.one_of(st.dictionaries(text, json_scalars, max_size=4), json_values))
    raw = json.dumps(header, allow_nan=True).encode("utf-8", "surrogatepass")
    binary = draw(st.binary(max_size=64))
    mode = draw(st.integers(0, 3))
    if mode == 0:
        return raw, None
    if mode == 1:
        return raw + binary, str(len(raw))
    if mode == 2:
        return raw + binary, draw(st.one_of(st.integers(-5, len(raw) + 80).map(str), text))
    return binary, "0"


# -- tensor codec -------------------------------------------------------------------------------------


@PROPS
@given(
    st.sampled_from(NUMERIC).flatmap(
        lambda dt: st.tuples(st.just(dt), hnp.arrays(tensors.DATATYPES[dt].numpy, shapes))
    )
)  # type: ignore[arg-type]
def test_numeric_tensors_round_trip(case: tuple[str, np.ndarray]) -> None:
    datatype, array = case
    wire_type, shape, data = tensors.from_numpy(array, datatype)
    assert wire_type == datatype and shape == list(array.shape)
    assert len(data) == tensors.expected_byte_size(datatype, shape)
    back = tensors.to_numpy("x", datatype, shape, data)
    assert back.shape == array.shape
    assert back.tobytes() == np.ascontiguousarray(array).tobytes()  # bit for bit, NaN payloads included


@PROPS
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_bytes_elements_round_trip(items: list[bytes]) -> None:
    data = tensors.serialize_bytes(np.array(items, dtype=object))
    tensors.validate_bytes("x", data, len(items))
    assert list(tensors.deserialize_bytes("x", data, len(items))) == items


@PROPS
@given(st.binary(max_size=80), st.integers(min_value=0, max_value=30), st.integers(0, 64))
def test_bytes_validation_agrees_with_decoding(data: bytes, count: int, max_element: int) -> None:
    """validate_bytes (gateway) accepts exactly what deserialize_bytes (worker) can decode."""
    try:
        decoded = tensors.deserialize_bytes("x", data, count)
    except InvalidInput:
        decoded = None
    try:
        tensors.validate_bytes("x", data, count)
        valid = True
    except InvalidInput:
        valid = False
    assert valid == (decoded is not None)
    if decoded is not None and max_element:
        too_long = any(len(item) > max_element for item in decoded)
        raised = only_client_errors(tensors.validate_bytes, "x", data, count, max_element) is None
        assert raised or not too_long


@PROPS
@given(st.sampled_from([*ALL_TYPES, "FP8", "", "int32"]), wild_shapes, st.binary(max_size=64))
def test_decoding_anything_is_an_array_or_a_clear_error(datatype: str, shape: list[int], data: bytes) -> None:
    result = only_client_errors(tensors.to_numpy, "x", datatype, shape, data)
    if result is not None:
        assert list(result.shape) == shape


@PROPS
@given(st.sampled_from(NUMERIC), st.lists(st.one_of(st.booleans(), wild_ints, st.floats()), max_size=8))
def test_typed_values_are_converted_exactly_or_refused(datatype: str, values: list[Any]) -> None:
    data = only_client_errors(tensors.values_to_bytes, "x", datatype, values)
    if data is not None:
        info = tensors.DATATYPES[datatype]
        assert len(data) == len(values) * info.itemsize
        if info.numpy is not None and info.numpy.kind in "iu":
            assert np.frombuffer(data, info.numpy).tolist() == [int(v) for v in values]


# -- HTTP JSON and binary parser ----------------------------------------------------------------------


@HEAVY
@given(wild_bodies())
def test_any_http_body_is_decoded_or_refused_clearly(case: tuple[bytes, str | None]) -> None:
    body, header_length = case
    decoded = only_client_errors(decode_infer, body, header_length, VIEW, LIMITS)
    if decoded is not None:
        only_client_errors(build_request, decoded.call, VIEW, 10.0, 1 << 20, LIMITS)


@PROPS
@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(-3, 250).map(str)))
def test_random_bytes_as_a_body(body: bytes, header_length: str | None) -> None:
    decoded = only_client_errors(decode_infer, body, header_length, VIEW, LIMITS)
    if decoded is not None:
        only_client_errors(build_request, decoded.call, VIEW, 10.0, 1 << 20, LIMITS)


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    rows = draw(st.integers(1, 8))
    width = draw(st.integers(0, 6))
    strings = draw(st.lists(st.text(max_size=10), min_size=rows * width, max_size=rows * width))
    encoded = [s.encode() for s in strings]
    floats = draw(
        hnp.arrays(np.float32, (rows, draw(st.integers(0, 5))), elements=st.floats(width=32, allow_nan=False))
    )
    ints = draw(hnp.arrays(np.int64, (rows, 2, draw(st.integers(0, 4)))))
    return encoded, np.array(encoded, dtype=object).reshape(rows, width), floats, ints  # type: ignore[return-value]


@PROPS
@given(valid_requests(), st.booleans(), st.text(max_size=8).filter(lambda s: s.isprintable()))
def test_valid_requests_survive_json_and_binary_encoding(case: Any, binary: bool, request_id: str) -> None:
    _, strings, floats, ints = case
    arrays = {"T": ("BYTES", strings), "F": ("FP32", floats), "I": ("INT64", ints)}
    header: dict[str, Any] = {"id": request_id, "inputs": []}
    tail = b""
    for name, (datatype, array) in arrays.items():
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        _, _, raw = tensors.from_numpy(array, datatype)
        if binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail += raw
        elif datatype == "BYTES":
            entry["data"] = [v.decode() for v in array.reshape(-1)]
        else:
            entry["data"] = array.tolist()  # nested, row-major
        header["inputs"].append(entry)
    head = json.dumps(header).encode()
    decoded = decode_infer(head + tail, str(len(head)) if binary else None, VIEW, LIMITS)
    prepared = build_request(decoded.call, VIEW, 10.0, 1 << 20, LIMITS)
    assert prepared.message.request_id == request_id
    assert prepared.message.batch_size == strings.shape[0]
    for tensor in prepared.message.inputs:
        datatype, array = arrays[tensor.name]
        assert list(tensor.shape) == list(array.shape)
        assert tensor.data == tensors.from_numpy(array, datatype)[2]


@HEAVY
@given(json_values)
def test_any_generate_body_is_mapped_or_refused_clearly(value: Any) -> None:
    body = json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")
    call = only_client_errors(decode_generate, body, VIEW)
    if call is not None:
        only_client_errors(build_request, call, VIEW, 10.0, 1 << 20, LIMITS)


@HEAVY
@given(
    st.dictionaries(st.sampled_from(["T", "F", "I", "B", "id", "parameters"]) | text, json_values, max_size=4)
)
def test_generate_objects_are_mapped_or_refused_clearly(value: dict[str, Any]) -> None:
    body = json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")
    call = only_client_errors(decode_generate, body, VIEW)
    if call is not None:
        only_client_errors(build_request, call, VIEW, 10.0, 1 << 20, LIMITS)


# -- request validation (what both protocols produce) -------------------------------------------------


# no lone surrogate reaches an InferCall: the HTTP parser refuses them, a protobuf string cannot hold one
@st.composite
def wild_calls(draw: st.DrawFn) -> InferCall:
    inputs = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.one_of(st.sampled_from(["T", "F", "I", "B"]), unicode_text))
        datatype = draw(st.one_of(st.sampled_from(ALL_TYPES), unicode_text))
        shape = draw(st.one_of(shapes, wild_shapes))
        if draw(st.booleans()) and datatype == "BYTES":
            data = tensors.serialize_bytes(
                np.array(draw(st.lists(st.binary(max_size=8), max_size=6)), dtype=object)
            )
        else:
            data = draw(st.binary(max_size=64))
        inputs.append(InputTensor(name, datatype, shape, data))
    return InferCall(
        request_id=draw(unicode_text),
        inputs=inputs,
        outputs=draw(st.lists(st.one_of(st.just("O"), unicode_text), max_size=3)),
        parameters=draw(
            st.dictionaries(
                unicode_text, st.one_of(st.booleans(), wild_ints, st.floats(), unicode_text), max_size=4
            )
        ),
    )


@PROPS
@given(wild_calls())
def test_any_call_becomes_a_mesh_request_or_a_clear_error(call: InferCall) -> None:
    prepared = only_client_errors(build_request, call, VIEW, 10.0, 1 << 20, LIMITS)
    if prepared is not None:
        message = prepared.message
        assert message.model_name == "m"
        for tensor in message.inputs:  # what the worker will decode, it can decode
            tensors.to_numpy(tensor.name, tensor.datatype, list(tensor.shape), tensor.data)


def test_strategy_sanity() -> None:
    """The BYTES helper used above is Triton's framing (4-byte LE length, then the bytes)."""
    assert tensors.serialize_bytes(np.array([b"ab"], dtype=object)) == struct.pack("<I", 2) + b"ab"


@PROPS
@given(st.lists(text, min_size=1, max_size=6))
def test_bytes_strings_are_utf8_of_the_text_or_refused(strings: list[str]) -> None:
    body = json.dumps(
        {"inputs": [{"name": "T", "datatype": "BYTES", "shape": [1, len(strings)], "data": strings}]}
    ).encode()
    decoded = only_client_errors(decode_infer, body, None, VIEW, LIMITS)
    parsed = json.loads(json.dumps(strings))  # escaped high + low surrogates join into one character
    valid = all(not any(0xD800 <= ord(c) <= 0xDFFF for c in s) for s in parsed)
    assert (decoded is not None) == valid
    if decoded is not None:
        got = tensors.deserialize_bytes("T", decoded.call.inputs[0].data, len(strings))
        assert list(got) == [s.encode() for s in parsed]
