"""KServe v2 HTTP bodies (http_codec.py): JSON and binary-extension requests in, JSON or binary responses out."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from gateway.http_codec import HttpInfer, decode_infer, encode_infer
from gateway.models import ModelView
from gateway.validate import InferCall
from meshserve.errors import InvalidArgument, InvalidInput
from meshserve.model_config import complete_config, parse_config
from meshserve.pb import mesh_pb2

SIMPLE = """
backend: "python"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
"""


def one_input(datatype: str, dims: str, max_batch_size: int = 8) -> ModelView:
    config = parse_config(
        f"""
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {{ name: "IN" data_type: {datatype} dims: [ {dims} ] }} ]
        output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        """
    )
    complete_config(config, "one")
    return ModelView.from_config("one", 1, config)


def simple_view() -> ModelView:
    config = parse_config(SIMPLE)
    complete_config(config, "simple")
    return ModelView.from_config("simple", 1, config)


def body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, str | None]:
    """A request body and its Inference-Header-Content-Length (None without binary chunks)."""
    head = json.dumps(header).encode()
    if not chunks:
        return head, None
    return head + b"".join(chunks), str(len(head))


def decode(header: dict[str, Any], *chunks: bytes, view: ModelView | None = None) -> HttpInfer:
    raw, length = body(header, *chunks)
    return decode_infer(raw, length, view or simple_view())


def json_input(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def binary_input(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


# --------------------------------------------------------------------------------------------------
# JSON data
# --------------------------------------------------------------------------------------------------


def test_flat_json_data_becomes_little_endian_bytes() -> None:
    result = decode(
        {
            "id": "abc",
            "inputs": [json_input("INPUT0", "INT32", [1, 4], [1, -2, 3, 2**31 - 1])],
            "parameters": {"priority": 1, "custom": "x"},
        }
    )
    call = result.call
    assert call.request_id == "abc"
    assert call.parameters == {"priority": 1, "custom": "x"}
    (tensor,) = call.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("INPUT0", "INT32", [1, 4])
    assert bytes(tensor.data) == struct.pack("<4i", 1, -2, 3, 2**31 - 1)
    assert call.outputs == []
    assert result.binary_outputs == {}
    assert result.binary_default is False


def test_nested_json_data_is_flattened_row_major() -> None:
    data = [[[1.5, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.25]]]
    (tensor,) = decode({"inputs": [json_input("X", "FP32", [2, 2, 2], data)]}).call.inputs
    assert bytes(tensor.data) == np.array(data, dtype="<f4").tobytes()
    assert np.frombuffer(tensor.data, dtype="<f4").tolist() == [1.5, 2, 3, 4, 5, 6, 7, 8.25]


def test_ints_are_accepted_for_floating_point_inputs() -> None:
    (tensor,) = decode({"inputs": [json_input("X", "FP64", [3], [1, 2, 3])]}).call.inputs
    assert np.frombuffer(tensor.data, dtype="<f8").tolist() == [1.0, 2.0, 3.0]


def test_bools_for_a_bool_input() -> None:
    (tensor,) = decode({"inputs": [json_input("B", "BOOL", [3], [True, False, True])]}).call.inputs
    assert bytes(tensor.data) == b"\x01\x00\x01"


def test_bytes_json_strings_use_tritons_length_prefixed_encoding() -> None:
    (tensor,) = decode({"inputs": [json_input("S", "BYTES", [1, 2], ["hé", ""])]}).call.inputs
    assert bytes(tensor.data) == struct.pack("<I", 3) + "hé".encode() + struct.pack("<I", 0)


def test_missing_id_is_empty() -> None:
    assert decode({"inputs": [json_input("X", "INT8", [1], [1])]}).call.request_id == ""


@pytest.mark.parametrize(
    ("datatype", "data", "problem"),
    [
        ("INT32", ["1", "2"], "INT32 data in JSON must be numbers"),
        ("INT32", [1.0, 2.5], "JSON values of kind 'f' do not fit INT32"),
        ("UINT8", [1, 2.0], "JSON values of kind 'f' do not fit UINT8"),
        ("BOOL", [1, 0], "JSON values of kind 'i' do not fit BOOL"),
        ("FP32", [None, 1.0], "FP32 data in JSON must be numbers"),
        ("BYTES", ["a", 1], "BYTES data in JSON must be strings"),
        ("BF16", [1.0, 2.0], "BF16 data must be sent as binary data"),
    ],
)
def test_json_values_of_the_wrong_type_are_refused(datatype: str, data: list[Any], problem: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode({"inputs": [json_input("X", datatype, [2], data)]})
    assert str(err.value) == f"input 'X': {problem}"


@pytest.mark.parametrize(("datatype", "value"), [("UINT32", -1), ("INT8", 128), ("INT32", 2**40)])
def test_json_values_out_of_range_are_refused(datatype: str, value: int) -> None:
    with pytest.raises(InvalidInput, match=rf"input 'X': a value does not fit {datatype}"):
        decode({"inputs": [json_input("X", datatype, [1], [value])]})


@pytest.mark.parametrize(
    ("shape", "data", "problem"),
    [
        ([1, 3], [1, 2], "JSON data holds 2 values but shape [1, 3] needs 3"),
        ([2], [[1, 2], [3]], "JSON data holds 3 values but shape [2] needs 2"),
        ([-1], [1], "JSON data holds 1 values but shape [-1] needs -1"),
    ],
)
def test_wrong_value_counts_are_refused(shape: list[int], data: list[Any], problem: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode({"inputs": [json_input("X", "INT32", shape, data)]})
    assert str(err.value) == f"input 'X': {problem}"


@pytest.mark.parametrize(
    ("raw_input", "problem"),
    [
        (
            {"name": "X", "datatype": "FP128", "shape": [1], "data": [1]},
            "unknown or missing datatype 'FP128'",
        ),
        ({"name": "X", "shape": [1], "data": [1]}, "unknown or missing datatype None"),
        (
            {"name": "X", "datatype": "INT32", "shape": [1.0], "data": [1]},
            "'shape' must be a list of integers",
        ),
        (
            {"name": "X", "datatype": "INT32", "shape": [True], "data": [1]},
            "'shape' must be a list of integers",
        ),
        ({"name": "X", "datatype": "INT32", "shape": [1]}, "needs 'data' or parameters.binary_data_size"),
        ({"name": "X", "datatype": "INT32", "shape": [1], "data": 5}, "'data' must be a JSON array"),
        (
            {
                "name": "X",
                "datatype": "INT32",
                "shape": [1],
                "data": [1],
                "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4},
            },
            "takes its data from shared memory; 'data' or binary data must not be set",
        ),
    ],
)
def test_malformed_inputs_are_refused(raw_input: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidInput) as err:
        decode({"inputs": [raw_input]})
    assert str(err.value) == f"input 'X': {problem}"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "failed to parse the request JSON"),
        (b"[1, 2]", "the request JSON must be an object"),
        (b'{"inputs": {}}', "the request JSON needs an 'inputs' list"),
        (b'{"inputs": [], "id": 5}', "'id' must be a string"),
        (b'{"inputs": [], "outputs": {}}', "'outputs' must be a list"),
        (b'{"inputs": [], "outputs": [{}]}', "each requested output needs a 'name'"),
        (b'{"inputs": [], "parameters": []}', "'parameters' of the request must be an object"),
        (b'{"inputs": [], "parameters": {"a": [1]}}', "parameter 'a' of the request must be a bool"),
        (
            b'{"inputs": [], "outputs": [{"name": "O", "parameters": {"classification": 0}}]}',
            "the 'classification' parameter of output 'O' must be a positive integer",
        ),
    ],
)
def test_malformed_requests_are_invalid_arguments(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        decode_infer(raw, None, simple_view())
    assert str(err.value).startswith(message)


def test_classification_parameter_is_carried() -> None:
    raw = b'{"inputs": [], "outputs": [{"name": "O", "parameters": {"classification": 3, "binary_data": true}}]}'
    decoded = decode_infer(raw, None, simple_view())
    assert decoded.call.classification == {"O": 3}
    assert decoded.binary_outputs == {"O": True}


# --------------------------------------------------------------------------------------------------
# Outputs requested and binary_data flags
# --------------------------------------------------------------------------------------------------


def test_outputs_binary_flags_default_to_json() -> None:
    result = decode(
        {
            "inputs": [],
            "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT1", "parameters": {"binary_data": True}}],
        }
    )
    assert result.call.outputs == ["OUTPUT0", "OUTPUT1"]
    assert result.binary_outputs == {"OUTPUT0": False, "OUTPUT1": True}
    assert result.binary_default is False


def test_request_level_binary_data_output_applies_unless_an_output_says_otherwise() -> None:
    result = decode(
        {
            "inputs": [],
            "parameters": {"binary_data_output": True, "keep": 1},
            "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT1", "parameters": {"binary_data": False}}],
        }
    )
    assert result.binary_default is True
    assert result.binary_outputs == {"OUTPUT0": True, "OUTPUT1": False}
    assert result.call.parameters == {"keep": 1}


# --------------------------------------------------------------------------------------------------
# Binary tensor extension
# --------------------------------------------------------------------------------------------------


def test_binary_inputs_take_their_bytes_in_input_order() -> None:
    a = np.arange(16, dtype="<i4").tobytes()
    b = np.arange(100, 116, dtype="<i4").tobytes()
    result = decode(
        {
            "inputs": [
                binary_input("INPUT0", "INT32", [1, 16], len(a)),
                json_input("MIDDLE", "INT8", [2], [7, 8]),
                binary_input("INPUT1", "INT32", [1, 16], len(b)),
            ]
        },
        a,
        b,
    )
    first, middle, second = result.call.inputs
    assert bytes(first.data) == a
    assert bytes(middle.data) == b"\x07\x08"
    assert bytes(second.data) == b
    assert (first.shape, second.shape) == ([1, 16], [1, 16])


def test_binary_input_of_zero_bytes() -> None:
    (tensor,) = decode({"inputs": [binary_input("X", "FP32", [0], 0)]}, b"").call.inputs
    assert bytes(tensor.data) == b""


def test_leftover_binary_bytes_are_refused() -> None:
    raw, length = body({"inputs": [binary_input("X", "INT8", [2], 2)]}, b"\x01\x02\x03")
    with pytest.raises(InvalidArgument) as err:
        decode_infer(raw, length, simple_view())
    assert str(err.value) == "the body carries 3 bytes of binary data but the inputs use 2"


def test_binary_data_size_past_the_end_is_refused() -> None:
    raw, length = body(
        {"inputs": [binary_input("A", "INT8", [2], 2), binary_input("B", "INT8", [4], 4)]}, b"\x01\x02\x03"
    )
    with pytest.raises(InvalidInput) as err:
        decode_infer(raw, length, simple_view())
    assert str(err.value) == "input 'B': binary_data_size 4 runs past the end of the body (1 bytes left)"


@pytest.mark.parametrize("size", [-1, "4", 1.5, True])
def test_bad_binary_data_size_is_refused(size: Any) -> None:
    header = {
        "inputs": [{"name": "A", "datatype": "INT8", "shape": [1], "parameters": {"binary_data_size": size}}]
    }
    raw, length = body(header, b"\x01")
    with pytest.raises(InvalidInput, match="'binary_data_size' must be a non-negative integer"):
        decode_infer(raw, length, simple_view())


def test_header_length_equal_to_the_body_means_no_binary_part() -> None:
    raw, _ = body({"inputs": [json_input("X", "INT8", [1], [5])]})
    (tensor,) = decode_infer(raw, str(len(raw)), simple_view()).call.inputs
    assert bytes(tensor.data) == b"\x05"


@pytest.mark.parametrize("length", ["1000", "-1"])
def test_header_length_outside_the_body_is_refused(length: str) -> None:
    raw, _ = body({"inputs": []})
    with pytest.raises(InvalidArgument) as err:
        decode_infer(raw, length, simple_view())
    assert (
        str(err.value)
        == f"Inference-Header-Content-Length is {length} but the body has only {len(raw)} bytes"
    )


@pytest.mark.parametrize("length", ["abc", "1.5", ""])
def test_non_integer_header_length_is_refused(length: str) -> None:
    raw, _ = body({"inputs": []})
    with pytest.raises(InvalidArgument) as err:
        decode_infer(raw, length, simple_view())
    assert str(err.value) == f"Inference-Header-Content-Length must be an integer, got '{length}'"


def test_header_length_cutting_the_json_short_is_a_parse_error() -> None:
    raw, _ = body({"inputs": []})
    with pytest.raises(InvalidArgument, match="failed to parse the request JSON"):
        decode_infer(raw, str(len(raw) - 1), simple_view())


# --------------------------------------------------------------------------------------------------
# Raw binary request: Inference-Header-Content-Length 0
# --------------------------------------------------------------------------------------------------


def test_raw_binary_request_fills_the_only_input_with_batch_one() -> None:
    payload = np.arange(4, dtype="<f4").tobytes()
    result = decode_infer(payload, "0", one_input("TYPE_FP32", "4"))
    (tensor,) = result.call.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("IN", "FP32", [1, 4])
    assert bytes(tensor.data) == payload
    assert result.call.request_id == ""
    assert result.binary_default is True
    assert result.binary_outputs == {}


def test_raw_binary_request_infers_one_variable_dim_from_the_length() -> None:
    payload = np.arange(6, dtype="<i2").tobytes()
    (tensor,) = decode_infer(payload, "0", one_input("TYPE_INT16", "-1")).call.inputs
    assert tensor.shape == [1, 6]
    (tensor,) = decode_infer(payload, "0", one_input("TYPE_INT16", "-1", max_batch_size=0)).call.inputs
    assert tensor.shape == [6]


def test_raw_binary_request_on_a_non_batching_model_has_no_batch_dim() -> None:
    payload = bytes(6)
    (tensor,) = decode_infer(payload, "0", one_input("TYPE_UINT8", "2, 3", max_batch_size=0)).call.inputs
    assert tensor.shape == [2, 3]


@pytest.mark.parametrize(("datatype", "dims"), [("TYPE_STRING", "-1"), ("TYPE_FP32", "-1, 4")])
def test_raw_binary_request_cannot_guess_other_variable_shapes(datatype: str, dims: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        decode_infer(b"\x00" * 16, "0", one_input(datatype, dims))
    assert str(err.value) == "input 'IN' has variable dims; a raw binary request cannot give its shape"


def test_raw_binary_request_is_refused_for_a_two_input_model() -> None:
    with pytest.raises(InvalidArgument) as err:
        decode_infer(bytes(64), "0", simple_view())
    assert str(err.value) == "a raw binary request needs a model with exactly one input; 'simple' has 2"


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


def response(request_id: str = "") -> mesh_pb2.InferResponse:
    return mesh_pb2.InferResponse(
        request_id=request_id,
        model_name="simple",
        model_version=1,
        outputs=[
            mesh_pb2.Tensor(
                name="OUTPUT0", datatype="INT32", shape=[1, 3], data=struct.pack("<3i", 1, -2, 3)
            ),
            mesh_pb2.Tensor(
                name="TEXT",
                datatype="BYTES",
                shape=[2],
                data=struct.pack("<I", 2) + b"ok" + struct.pack("<I", 3) + "é!".encode(),
            ),
        ],
    )


def http_request(binary_outputs: dict[str, bool], binary_default: bool = False) -> HttpInfer:
    return HttpInfer(InferCall("", []), binary_outputs, binary_default)


def test_json_response_carries_values_and_no_header_length() -> None:
    raw, length = encode_infer(response(), 3, http_request({}))
    assert length is None
    assert json.loads(raw) == {
        "model_name": "simple",
        "model_version": "3",
        "outputs": [
            {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 3], "data": [1, -2, 3]},
            {"name": "TEXT", "datatype": "BYTES", "shape": [2], "data": ["ok", "é!"]},
        ],
    }


def test_id_is_echoed_only_when_set() -> None:
    raw, _ = encode_infer(response("req-9"), 1, http_request({}))
    assert json.loads(raw)["id"] == "req-9"
    raw, _ = encode_infer(response(""), 1, http_request({}))
    assert "id" not in json.loads(raw)


def test_binary_outputs_follow_the_json_header() -> None:
    resp = response()
    raw, length = encode_infer(resp, 1, http_request({"OUTPUT0": True, "TEXT": False}))
    assert length is not None
    header = json.loads(raw[:length])
    out0, text = header["outputs"]
    assert out0 == {
        "name": "OUTPUT0",
        "datatype": "INT32",
        "shape": [1, 3],
        "parameters": {"binary_data_size": 12},
    }
    assert text["data"] == ["ok", "é!"]
    assert raw[length:] == resp.outputs[0].data


def test_binary_default_sends_every_output_binary_in_order() -> None:
    resp = response()
    raw, length = encode_infer(resp, 1, http_request({}, binary_default=True))
    assert length is not None
    header = json.loads(raw[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [12, 13]
    assert all("data" not in o for o in header["outputs"])
    assert raw[length:] == resp.outputs[0].data + resp.outputs[1].data


def test_bf16_and_fp16_outputs_as_json_numbers() -> None:
    bf16 = (np.array([1.5, -2.0], dtype="<f4").view("<u4") >> 16).astype("<u2").tobytes()
    resp = mesh_pb2.InferResponse(
        model_name="m",
        outputs=[
            mesh_pb2.Tensor(name="B", datatype="BF16", shape=[2], data=bf16),
            mesh_pb2.Tensor(name="H", datatype="FP16", shape=[1], data=np.array([0.5], "<f2").tobytes()),
        ],
    )
    raw, _ = encode_infer(resp, 1, http_request({}))
    outputs = json.loads(raw)["outputs"]
    assert outputs[0]["data"] == [1.5, -2.0]
    assert outputs[1]["data"] == [0.5]


# found by tests/unit/test_properties.py: valid JSON, but a lone surrogate escape cannot become UTF-8
# (UnicodeEncodeError → 500), and nesting past the parser's recursion guard (RecursionError → 500)
@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "\\ud800", "inputs": []}',
        b'{"inputs": [{"name": "IN", "datatype": "BYTES", "shape": [1, 1], "data": ["\\udc00"]}]}',
        b'{"inputs": [], "parameters": {"\\uDBFF": 1}}',
        b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_json_that_is_not_unicode_text_or_too_deep_is_invalid_argument(body: bytes) -> None:
    with pytest.raises(InvalidArgument, match=r"surrogate|nested too deeply"):
        decode_infer(body, None, one_input("TYPE_STRING", "-1"))


def test_surrogate_pairs_are_text() -> None:
    body = b'{"inputs": [{"name": "IN", "datatype": "BYTES", "shape": [1, 1], "data": ["\\ud83d\\ude00"]}]}'
    decoded = decode_infer(body, None, one_input("TYPE_STRING", "-1"))
    assert bytes(decoded.call.inputs[0].data)[4:] == "\U0001f600".encode()
