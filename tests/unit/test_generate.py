"""The generate extension's mapping (gateway/generate.py): flat JSON → InferCall, response → flat JSON."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import numpy as np
import pytest

from gateway.generate import (
    decode_generate,
    encode_generate,
    fit_shape,
    parse_generate_body,
    sse_event,
)
from gateway.models import ModelView
from meshserve import tensors
from meshserve.errors import InvalidArgument, InvalidInput
from meshserve.model_config import complete_config, parse_config
from meshserve.pb import mesh_pb2


def view(max_batch_size: int, inputs: str, name: str = "m") -> ModelView:
    config = parse_config(
        f"""
        backend: "python"
        max_batch_size: {max_batch_size}
        input [ {inputs} ]
        output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        """
    )
    complete_config(config, name)
    return ModelView.from_config(name, 1, config)


SIMPLE = view(
    8,
    '{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }',
)
TEXT = view(8, '{ name: "text_input" data_type: TYPE_STRING dims: [ -1 ] }')
MIXED = view(
    0,
    '{ name: "IN" data_type: TYPE_INT32 dims: [ -1 ] }, { name: "FLAG" data_type: TYPE_BOOL dims: [ 1 ] },'
    '{ name: "X" data_type: TYPE_FP32 dims: [ 2, -1 ] }',
)


def decode(body: Any, model: ModelView) -> Any:
    return decode_generate(json.dumps(body).encode(), model)


def test_text_input_becomes_bytes_with_batch_dim() -> None:
    call = decode({"text_input": "hello", "temperature": 0.5, "max_tokens": 8, "stream": True}, TEXT)
    (tensor,) = call.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("text_input", "BYTES", [1, 1])
    assert bytes(tensor.data) == struct.pack("<I", 5) + b"hello"
    assert call.parameters == {"temperature": 0.5, "max_tokens": 8, "stream": True}


def test_numbers_take_the_model_shape() -> None:
    call = decode({"INPUT0": list(range(16)), "INPUT1": [[1] * 8, [2] * 8]}, SIMPLE)
    assert [t.shape for t in call.inputs] == [[1, 16], [1, 16]]
    assert np.frombuffer(call.inputs[0].data, "<i4").tolist() == list(range(16))
    assert np.frombuffer(call.inputs[1].data, "<i4").tolist() == [1] * 8 + [2] * 8


def test_scalar_bool_and_float_inputs_without_batching() -> None:
    call = decode({"IN": 3, "FLAG": True, "X": [1, 2.5, 3, 4]}, MIXED)
    by_name = {t.name: t for t in call.inputs}
    assert by_name["IN"].shape == [1] and np.frombuffer(by_name["IN"].data, "<i4").tolist() == [3]
    assert by_name["FLAG"].shape == [1] and bytes(by_name["FLAG"].data) == b"\x01"
    assert by_name["X"].shape == [2, 2]
    assert np.frombuffer(by_name["X"].data, "<f4").tolist() == [1, 2.5, 3, 4]


def test_parameters_object_holds_inputs_and_parameters_and_id_is_the_request_id() -> None:
    call = decode({"id": "r7", "parameters": {"text_input": ["a", "b"], "top_k": 3}}, TEXT)
    assert call.request_id == "r7"
    assert call.inputs[0].shape == [1, 2]
    assert call.parameters == {"top_k": 3}


@pytest.mark.parametrize(
    ("metadata", "count", "expected"),
    [
        ([-1, 16], 16, [1, 16]),
        ([-1, 16], 32, [2, 16]),
        ([-1, -1], 3, [1, 3]),
        ([-1], 0, [0]),
        ([2, -1], 6, [2, 3]),
        ([-1, 2, -1], 4, [1, 2, 2]),
        ([1], 1, [1]),
        ([], 1, []),
    ],
)
def test_fit_shape(metadata: list[int], count: int, expected: list[int]) -> None:
    assert fit_shape("IN", metadata, count) == expected


@pytest.mark.parametrize(("metadata", "count"), [([-1, 16], 15), ([4], 3), ([], 2), ([2, 2], 0)])
def test_fit_shape_refuses(metadata: list[int], count: int) -> None:
    with pytest.raises(InvalidInput, match="cannot take the input's shape"):
        fit_shape("IN", metadata, count)


@pytest.mark.parametrize(
    ("body", "model", "error", "message"),
    [
        (b"[1]", TEXT, InvalidArgument, "must be a JSON object, got array"),
        (b"{", TEXT, InvalidArgument, "failed to parse"),
        (b'{"a": 1, "a": 2}', TEXT, InvalidArgument, "'a' appears more than once"),
        (b'{"parameters": {"x": 1, "x": 2}}', TEXT, InvalidArgument, "'x' appears more than once"),
        (
            b'{"top_k": 1, "parameters": {"top_k": 2}}',
            TEXT,
            InvalidArgument,
            "'top_k' appears more than once",
        ),
        (b'{"text_input": 5}', TEXT, InvalidInput, "send strings, got number"),
        (b'{"text_input": null}', TEXT, InvalidInput, "got null"),
        (b'{"INPUT0": [true]}', SIMPLE, InvalidInput, "send integers, got boolean"),
        (b'{"INPUT0": [1.5]}', SIMPLE, InvalidInput, "send integers, got number"),
        (b'{"FLAG": 1}', MIXED, InvalidInput, "send booleans"),
        (b'{"X": ["1", "2"]}', MIXED, InvalidInput, "send numbers, got string"),
        (b'{"IN": [4294967296]}', MIXED, InvalidInput, "does not fit INT32"),
        (b'{"opts": {"a": 1}}', TEXT, InvalidArgument, "parameter 'opts' has invalid type object"),
        (b'{"opts": [1]}', TEXT, InvalidArgument, "inputs: 'text_input'"),
        (b'{"parameters": [1]}', TEXT, InvalidArgument, "'parameters' of a generate request"),
        (b'{"id": 1}', TEXT, InvalidArgument, "'id' must be a string"),
    ],
)
def test_bad_requests(body: bytes, model: ModelView, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        decode_generate(body, model)


def test_parse_body_keeps_order() -> None:
    assert list(parse_generate_body(b'{"b": 1, "a": {"c": 2}}')) == ["b", "a"]


def _tensor(name: str, array: np.ndarray, datatype: str | None = None) -> mesh_pb2.Tensor:
    dt, shape, data = tensors.from_numpy(array, datatype)
    return mesh_pb2.Tensor(name=name, datatype=dt, shape=shape, data=data)


def test_encode_response() -> None:
    response = mesh_pb2.InferResponse(request_id="r1", model_name="m", model_version=3)
    response.outputs.append(_tensor("text_output", np.array([["héllo".encode()]], dtype=object), "BYTES"))
    response.outputs.append(_tensor("scores", np.array([[0.5, 1.5]], dtype=np.float32)))
    response.outputs.append(_tensor("empty", np.zeros((1, 0), dtype=np.int32)))
    response.parameters["finish_reason"].string_param = "stop"
    response.parameters["model_name"].string_param = "not me"
    assert encode_generate(response, 3) == {
        "model_name": "m",
        "model_version": "3",
        "id": "r1",
        "finish_reason": "stop",
        "text_output": "héllo",
        "scores": [0.5, 1.5],
        "empty": [],
    }


def test_sse_event_is_one_data_line() -> None:
    event = sse_event({"text_output": "a\nb"})
    assert event == b'data: {"text_output":"a\\nb"}\n\n'
