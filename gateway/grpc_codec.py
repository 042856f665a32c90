"""KServe v2 gRPC messages ↔ the gateway's protocol-neutral calls.

Inputs may come as ``raw_input_contents`` (what tritonclient sends: one bytes per input, in input
order) or as typed ``contents``; outputs always go back as ``raw_output_contents``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meshserve import tensors
from meshserve.errors import InvalidArgument, InvalidInput
from meshserve.pb import grpc_service_pb2 as pb
from meshserve.pb import mesh_pb2
from gateway.validate import InferCall, InputTensor, ParamValue

__all__ = ["decode_infer", "encode_infer", "param_to_python", "python_to_param"]

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def param_to_python(param: pb.InferParameter) -> ParamValue:
    which = param.WhichOneof("parameter_choice")
    if which is None:
        return ""
    value: ParamValue = getattr(param, which)
    return value


def python_to_param(param: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = str(value)


def decode_infer(request: pb.ModelInferRequest) -> InferCall:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"expected {len(request.inputs)} raw_input_contents (one per input), got {len(raw)}"
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        for key in tensor.parameters:
            if key.startswith("shared_memory"):
                raise InvalidArgument(
                    f"input '{tensor.name}': shared memory inputs are not supported by meshserve; send the data"
                )
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"input '{tensor.name}': contents must not be specified when using raw_input_contents"
                )
            data: bytes = raw[i]
        else:
            data = _contents_to_bytes(tensor)
        inputs.append(InputTensor(tensor.name, tensor.datatype, list(tensor.shape), data))
    return InferCall(
        request_id=request.id,
        inputs=inputs,
        outputs=[o.name for o in request.outputs],
        parameters={key: param_to_python(p) for key, p in request.parameters.items()},
    )


def _contents_to_bytes(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes:
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        if tensor.datatype in tensors.DATATYPES:
            raise InvalidInput(tensor.name, f"{tensor.datatype} data must be sent in raw_input_contents")
        raise InvalidInput(tensor.name, f"unknown datatype '{tensor.datatype}'")
    values = getattr(tensor.contents, field)
    count = tensors.element_count(tensor.shape)
    if len(values) != count:
        raise InvalidInput(
            tensor.name, f"contents hold {len(values)} values, shape {list(tensor.shape)} needs {count}"
        )
    if tensor.datatype == "BYTES":
        return tensors.serialize_bytes(np.array(list(values), dtype=object))
    info = tensors.DATATYPES[tensor.datatype]
    assert info.numpy is not None
    try:
        return np.asarray(values, dtype=info.numpy).tobytes()
    except OverflowError as exc:
        raise InvalidInput(tensor.name, f"a value does not fit {tensor.datatype}: {exc}") from exc


def encode_infer(response: mesh_pb2.InferResponse, model_version: int) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(
        model_name=response.model_name, model_version=str(model_version), id=response.request_id
    )
    for tensor in response.outputs:
        out.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        out.raw_output_contents.append(tensor.data)
    for key, param in response.parameters.items():
        which = param.WhichOneof("choice")
        if which is not None:
            python_to_param(out.parameters[key], getattr(param, which))
    return out
