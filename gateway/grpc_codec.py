"""KServe v2 gRPC messages ↔ the gateway's protocol-neutral calls.

Inputs may come as ``raw_input_contents`` (what tritonclient sends: one bytes per input, in input
order), as typed ``contents``, or from a shared memory region (parameters ``shared_memory_*``, read by
``gateway/shm.py``); outputs go back as ``raw_output_contents`` or into a shared memory region.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gateway.classification import class_count
from gateway.shm_params import ShmRef, parse_shm_params
from gateway.validate import InferCall, InputTensor
from meshserve import tensors
from meshserve.errors import InvalidArgument, InvalidInput
from meshserve.params import param_value, set_param
from meshserve.pb import grpc_service_pb2 as pb
from meshserve.pb import mesh_pb2

__all__ = ["decode_infer", "encode_infer"]

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


def decode_infer(request: pb.ModelInferRequest) -> InferCall:
    """Inputs take typed ``contents`` or, in order, the next ``raw_input_contents`` entry (Triton's rule
    and wording: mixing both in one request is refused, since clients match on that message)."""
    raw = request.raw_input_contents
    model = request.model_name
    next_raw = 0
    inputs = []
    for tensor in request.inputs:
        shm = _shm_ref(tensor.parameters, f"input '{tensor.name}'")
        data: bytes
        if shm is not None:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    "unexpected 'content' provided when using shared memory for input tensor "
                    f"'{tensor.name}' for model '{model}'"
                )
            data = b""  # read from the region by gateway/shm.py; no raw_input_contents entry is used
        elif tensor.HasField("contents"):
            if raw:
                raise InvalidArgument(
                    "contents field must not be specified when using raw_input_contents for "
                    f"'{tensor.name}' for model '{model}'"
                )
            data = _contents_to_bytes(tensor)
        elif next_raw < len(raw):
            data = raw[next_raw]
            next_raw += 1
        else:
            raise InvalidArgument(
                f"unable to find data for input tensor '{tensor.name}' for model '{model}' in request."
            )
        inputs.append(InputTensor(tensor.name, tensor.datatype, list(tensor.shape), data, shm))
    if next_raw < len(raw):
        raise InvalidArgument(
            f"{len(raw)} raw_input_contents given for {next_raw} inputs that take raw data for model '{model}'"
        )
    output_shm = {}
    classification = {}
    for output in request.outputs:
        ref = _shm_ref(output.parameters, f"output '{output.name}'")
        if ref is not None:
            output_shm[output.name] = ref
        if "classification" in output.parameters:
            classification[output.name] = class_count(
                param_value(output.parameters["classification"]), output.name
            )
    return InferCall(
        request_id=request.id,
        inputs=inputs,
        outputs=[o.name for o in request.outputs],
        parameters={key: param_value(p) for key, p in request.parameters.items()},
        output_shm=output_shm,
        classification=classification,
    )


def _shm_ref(params: Mapping[str, pb.InferParameter], where: str) -> ShmRef | None:
    if not any(key.startswith("shared_memory") for key in params):
        return None
    return parse_shm_params({key: param_value(p) for key, p in params.items()}, where)


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
    return tensors.values_to_bytes(tensor.name, tensor.datatype, list(values))


def encode_infer(
    response: mesh_pb2.InferResponse,
    model_version: int,
    output_shm: Mapping[str, ShmRef] | None = None,
) -> pb.ModelInferResponse:
    """An output written into shared memory (``output_shm``) keeps its metadata and an empty
    ``raw_output_contents`` entry, as Triton answers, so the entries still line up with the outputs."""
    out = pb.ModelInferResponse(
        model_name=response.model_name, model_version=str(model_version), id=response.request_id
    )
    for tensor in response.outputs:
        added = out.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        ref = output_shm.get(tensor.name) if output_shm else None
        if ref is None:
            out.raw_output_contents.append(tensor.data)
            continue
        out.raw_output_contents.append(b"")
        added.parameters["shared_memory_region"].string_param = ref.region
        added.parameters["shared_memory_byte_size"].int64_param = ref.byte_size
        if ref.offset:
            added.parameters["shared_memory_offset"].int64_param = ref.offset
    for key, param in response.parameters.items():
        if param.WhichOneof("choice") is not None:
            set_param(out.parameters[key], param_value(param))
    return out
