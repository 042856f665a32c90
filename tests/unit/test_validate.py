"""The gateway's request checks (validate.py): the mesh InferRequest it builds and each error's wording."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from gateway.models import ModelView
from gateway.validate import InferCall, InputTensor, ParamValue, build_request
from meshserve.errors import InvalidArgument, InvalidInput, PayloadTooLarge
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

VARIABLE = """
backend: "python"
max_batch_size: 4
input [
  { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "MASK" data_type: TYPE_BOOL dims: [ -1, 2 ] optional: true }
]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""

NOBATCH = """
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2, 3 ] } ]
"""

MAX_BYTES = 1 << 20


def view_of(text: str, name: str = "m", version: int = 1) -> ModelView:
    config = parse_config(text)
    complete_config(config, name)
    return ModelView.from_config(name, version, config)


def i32(name: str, shape: list[int], start: int = 0) -> InputTensor:
    count = int(np.prod(shape)) if shape else 1
    data = np.arange(start, start + count, dtype="<i4").tobytes()
    return InputTensor(name, "INT32", shape, data)


def simple_call(rows: int = 1, **parameters: ParamValue) -> InferCall:
    return InferCall(
        request_id="req-1",
        inputs=[i32("INPUT0", [rows, 16]), i32("INPUT1", [rows, 16], start=100)],
        parameters=dict(parameters),
    )


def bytes_tensor(name: str, items: list[bytes], shape: list[int]) -> InputTensor:
    data = b"".join(struct.pack("<I", len(item)) + item for item in items)
    return InputTensor(name, "BYTES", shape, data)


def build(call: InferCall, view: ModelView, default_timeout_s: float = 60.0, max_bytes: int = MAX_BYTES):
    return build_request(call, view, default_timeout_s, max_bytes)


# --------------------------------------------------------------------------------------------------
# The InferRequest that enters the mesh
# --------------------------------------------------------------------------------------------------


def test_builds_the_mesh_request_with_model_inputs_and_batch_size() -> None:
    view = view_of(SIMPLE, name="simple", version=3)
    call = simple_call(rows=2)
    call.outputs = ["OUTPUT1"]
    message = build(call, view).message

    assert message.request_id == "req-1"
    assert message.trace_id == "req-1"
    assert message.model_name == "simple"
    assert message.model_version == 3
    assert message.batch_size == 2
    assert list(message.requested_outputs) == ["OUTPUT1"]
    assert [t.name for t in message.inputs] == ["INPUT0", "INPUT1"]
    first, second = message.inputs
    assert first.datatype == "INT32"
    assert list(first.shape) == [2, 16]
    assert first.data == np.arange(32, dtype="<i4").tobytes()
    assert list(second.shape) == [2, 16]
    assert second.data == np.arange(100, 132, dtype="<i4").tobytes()
    # it survives the NATS hop unchanged
    assert mesh_pb2.InferRequest.FromString(message.SerializeToString()) == message


def test_memoryview_data_is_copied_into_the_message() -> None:
    view = view_of(SIMPLE)
    raw = np.arange(16, dtype="<i4").tobytes()
    call = InferCall("", [InputTensor("INPUT0", "INT32", [1, 16], memoryview(raw)), i32("INPUT1", [1, 16])])
    message = build(call, view).message
    assert message.inputs[0].data == raw


def test_empty_request_id_gets_a_fresh_trace_id() -> None:
    view = view_of(SIMPLE)
    call = simple_call()
    call.request_id = ""
    one = build(call, view).message
    two = build(call, view).message
    assert one.request_id == ""
    assert len(one.trace_id) == 32
    assert one.trace_id != two.trace_id


def test_reserved_parameters_are_removed_and_the_rest_forwarded_by_type() -> None:
    view = view_of(SIMPLE)
    call = simple_call(
        priority=2,
        timeout=5_000_000,
        binary_data_output=True,
        sequence_id=7,
        sequence_start=True,
        sequence_end=False,
        headers="x",
        triton_enable_empty_final_response=True,
        meshserve_timing=True,
        temperature=0.5,
        top_k=3,
        stream=False,
        mode="fast",
    )
    message = build(call, view).message

    assert sorted(message.parameters) == ["mode", "stream", "temperature", "top_k"]
    assert message.parameters["temperature"].WhichOneof("choice") == "double_param"
    assert message.parameters["temperature"].double_param == 0.5
    assert message.parameters["top_k"].WhichOneof("choice") == "int64_param"
    assert message.parameters["top_k"].int64_param == 3
    # bool is an int in Python: it must still travel as a bool
    assert message.parameters["stream"].WhichOneof("choice") == "bool_param"
    assert message.parameters["stream"].bool_param is False
    assert message.parameters["mode"].string_param == "fast"
    assert message.priority == 2


def test_priority_defaults_to_zero() -> None:
    assert build(simple_call(), view_of(SIMPLE)).message.priority == 0


def test_deadline_uses_the_default_timeout_when_none_is_given() -> None:
    before = time.time_ns()
    prepared = build(simple_call(), view_of(SIMPLE), default_timeout_s=60.0)
    after = time.time_ns()
    assert prepared.timeout_s == 60.0
    assert before + 60 * 10**9 <= prepared.message.deadline_unix_ns <= after + 60 * 10**9


def test_timeout_parameter_in_microseconds_shortens_the_deadline() -> None:
    before = time.time_ns()
    prepared = build(simple_call(timeout=250_000), view_of(SIMPLE), default_timeout_s=60.0)
    after = time.time_ns()
    assert prepared.timeout_s == pytest.approx(0.25)
    assert before + 250_000_000 <= prepared.message.deadline_unix_ns <= after + 250_000_000


def test_timeout_parameter_is_capped_by_the_default() -> None:
    prepared = build(simple_call(timeout=3_600_000_000), view_of(SIMPLE), default_timeout_s=2.0)
    assert prepared.timeout_s == 2.0
    assert prepared.message.deadline_unix_ns <= time.time_ns() + 2 * 10**9


def test_timeout_zero_means_the_default() -> None:
    assert build(simple_call(timeout=0), view_of(SIMPLE), default_timeout_s=7.0).timeout_s == 7.0


@pytest.mark.parametrize("key", ["timeout", "priority"])
@pytest.mark.parametrize("value", ["5", 1.5, True])
def test_non_integer_timeout_or_priority_is_refused(key: str, value: ParamValue) -> None:
    with pytest.raises(InvalidArgument) as err:
        build(simple_call(**{key: value}), view_of(SIMPLE))
    assert str(err.value) == f"parameter '{key}' must be an integer, got {value!r}"


def test_negative_timeout_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"parameter 'timeout' must be >= 0 microseconds, got -1"):
        build(simple_call(timeout=-1), view_of(SIMPLE))


@pytest.mark.parametrize("priority", [-1, 2**32])
def test_priority_out_of_range_is_an_invalid_argument(priority: int) -> None:
    with pytest.raises(InvalidArgument) as err:
        build(simple_call(priority=priority), view_of(SIMPLE))
    assert str(err.value) == f"parameter 'priority' must be in 0..4294967295, got {priority}"
    # and the next good request still builds
    assert build(simple_call(priority=1), view_of(SIMPLE)).message.priority == 1


# --------------------------------------------------------------------------------------------------
# Inputs: names, datatypes, shapes
# --------------------------------------------------------------------------------------------------


def test_unexpected_input_uses_tritons_wording() -> None:
    call = simple_call()
    call.inputs.append(i32("INPUT9", [1, 16]))
    with pytest.raises(InvalidArgument) as err:
        build(call, view_of(SIMPLE, name="simple"))
    assert str(err.value) == "unexpected inference input 'INPUT9' for model 'simple'"


def test_duplicate_input_is_refused() -> None:
    call = InferCall("", [i32("INPUT0", [1, 16]), i32("INPUT0", [1, 16]), i32("INPUT1", [1, 16])])
    with pytest.raises(InvalidArgument) as err:
        build(call, view_of(SIMPLE, name="simple"))
    assert str(err.value) == "input 'INPUT0' appears more than once in the request for model 'simple'"


def test_wrong_datatype_is_refused() -> None:
    data = np.zeros((1, 16), dtype="<f4").tobytes()
    call = InferCall("", [InputTensor("INPUT0", "FP32", [1, 16], data), i32("INPUT1", [1, 16])])
    with pytest.raises(InvalidArgument) as err:
        build(call, view_of(SIMPLE, name="simple"))
    assert str(err.value) == (
        "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'"
    )


@pytest.mark.parametrize(
    ("shape", "shown"),
    [([1, 15], "[1,15]"), ([16], "[16]"), ([1, 16, 1], "[1,16,1]"), ([], "[]")],
)
def test_wrong_shape_is_refused_with_expected_and_given(shape: list[int], shown: str) -> None:
    call = InferCall("", [i32("INPUT0", shape), i32("INPUT1", [1, 16])])
    with pytest.raises(InvalidArgument) as err:
        build(call, view_of(SIMPLE, name="simple"))
    assert str(err.value) == (
        f"unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got {shown}"
    )


def test_variable_dims_accept_any_size() -> None:
    view = view_of(VARIABLE)
    text = bytes_tensor("TEXT", [b"a", b"bc", b"", b"def", b"g", b"h"], [2, 3])
    mask = InputTensor("MASK", "BOOL", [2, 5, 2], bytes(20))
    message = build(InferCall("", [text, mask]), view).message
    assert message.batch_size == 2
    assert [list(t.shape) for t in message.inputs] == [[2, 3], [2, 5, 2]]


@pytest.mark.parametrize("shape", [[1, -1], [-1, 2]])
def test_negative_given_dims_are_refused_even_where_the_model_has_minus_one(shape: list[int]) -> None:
    view = view_of(VARIABLE)
    call = InferCall("", [InputTensor("TEXT", "BYTES", shape, b"")])
    with pytest.raises(
        InvalidArgument, match=r"unexpected shape for input 'TEXT' for model 'm'\. Expected \[-1,-1\]"
    ):
        build(call, view)


def test_inconsistent_batch_sizes_are_refused() -> None:
    call = InferCall("", [i32("INPUT0", [2, 16]), i32("INPUT1", [3, 16])])
    with pytest.raises(InvalidArgument) as err:
        build(call, view_of(SIMPLE, name="simple"))
    assert str(err.value) == ("input 'INPUT1' has batch size 3 but other inputs have 2 for model 'simple'")


@pytest.mark.parametrize("rows", [0, 9])
def test_batch_size_outside_one_to_max_is_refused(rows: int) -> None:
    with pytest.raises(InvalidArgument) as err:
        build(simple_call(rows=rows), view_of(SIMPLE, name="simple"))
    assert str(err.value) == (
        f"inference request batch-size must be <= 8 for 'simple' (and at least 1), got {rows}"
    )


def test_batch_size_at_max_is_accepted() -> None:
    assert build(simple_call(rows=8), view_of(SIMPLE)).message.batch_size == 8


def test_byte_size_mismatch_is_an_invalid_input() -> None:
    short = InputTensor("INPUT0", "INT32", [1, 16], bytes(60))
    call = InferCall("", [short, i32("INPUT1", [1, 16])])
    with pytest.raises(InvalidInput) as err:
        build(call, view_of(SIMPLE, name="simple"))
    assert err.value.tensor == "INPUT0"
    assert str(err.value) == (
        "input 'INPUT0': input byte size mismatch for model 'simple': "
        "expected 64 bytes for shape [1,16] of INT32, got 60"
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x01\x00\x00", "BYTES element 0: data ends before its 4-byte length prefix"),
        (struct.pack("<I", 10) + b"abc", "BYTES element 0: length prefix 10 runs past the end of the data"),
        (struct.pack("<I", 1) + b"a" + b"zz", "2 bytes left over after 1 BYTES elements"),
    ],
)
def test_bad_bytes_encoding_is_refused(data: bytes, problem: str) -> None:
    call = InferCall("", [InputTensor("TEXT", "BYTES", [1, 1], data)])
    with pytest.raises(InvalidInput) as err:
        build(call, view_of(VARIABLE))
    assert str(err.value) == f"input 'TEXT': {problem}"


def test_good_bytes_encoding_is_forwarded_verbatim() -> None:
    tensor = bytes_tensor("TEXT", [b"hello", b""], [1, 2])
    message = build(InferCall("", [tensor]), view_of(VARIABLE)).message
    assert message.inputs[0].data == tensor.data


def test_missing_required_input_is_refused() -> None:
    call = InferCall("", [i32("INPUT1", [1, 16])])
    with pytest.raises(InvalidArgument) as err:
        build(call, view_of(SIMPLE, name="simple"))
    assert str(err.value) == (
        "expected 2 inputs but got 1 inputs for model 'simple'. Got input(s) ['INPUT1'], "
        "but missing required input(s) ['INPUT0']. Please provide all required input(s)."
    )


def test_optional_input_may_be_left_out() -> None:
    call = InferCall("", [bytes_tensor("TEXT", [b"x"], [1, 1])])
    message = build(call, view_of(VARIABLE)).message
    assert [t.name for t in message.inputs] == ["TEXT"]
    assert message.batch_size == 1


# --------------------------------------------------------------------------------------------------
# Outputs and size limit
# --------------------------------------------------------------------------------------------------


def test_unknown_requested_output_is_refused() -> None:
    call = simple_call()
    call.outputs = ["OUTPUT0", "NOPE"]
    with pytest.raises(InvalidArgument) as err:
        build(call, view_of(SIMPLE, name="simple"))
    assert str(err.value) == "unexpected inference output 'NOPE' for model 'simple'"


def test_payload_over_the_limit_names_the_setting() -> None:
    call = simple_call(rows=2)  # 2 * 2 * 16 * 4 = 256 bytes
    with pytest.raises(PayloadTooLarge) as err:
        build(call, view_of(SIMPLE), max_bytes=255)
    assert "256 bytes" in str(err.value)
    assert "255 bytes" in str(err.value)
    assert "MESHSERVE_MAX_MESSAGE_BYTES" in str(err.value)
    assert err.value.http_status == 413
    # exactly at the limit is fine
    assert build(call, view_of(SIMPLE), max_bytes=256).message.batch_size == 2


# --------------------------------------------------------------------------------------------------
# A model without batching: shapes are the dims exactly, batch_size 0
# --------------------------------------------------------------------------------------------------


def test_non_batching_model_takes_the_dims_as_the_full_shape() -> None:
    view = view_of(NOBATCH)
    data = np.arange(6, dtype="<f4").tobytes()
    message = build(InferCall("", [InputTensor("X", "FP32", [2, 3], data)]), view).message
    assert message.batch_size == 0
    assert list(message.inputs[0].shape) == [2, 3]
    assert message.inputs[0].data == data


@pytest.mark.parametrize(("shape", "shown"), [([1, 2, 3], "[1,2,3]"), ([3, 2], "[3,2]"), ([6], "[6]")])
def test_non_batching_model_refuses_a_batch_dim_or_other_shape(shape: list[int], shown: str) -> None:
    data = bytes(4 * int(np.prod(shape)))
    with pytest.raises(InvalidArgument) as err:
        build(InferCall("", [InputTensor("X", "FP32", shape, data)]), view_of(NOBATCH, name="nb"))
    assert str(err.value) == f"unexpected shape for input 'X' for model 'nb'. Expected [2,3], got {shown}"
