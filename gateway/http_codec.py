"""KServe v2 HTTP/REST bodies ↔ the gateway's protocol-neutral calls, with the binary tensor extension.

A body is JSON, or JSON followed by raw tensor bytes when ``Inference-Header-Content-Length`` gives the
JSON's length.  Inputs with ``parameters.binary_data_size`` take their bytes from that tail, in input
order; the others carry ``data`` (flat or nested, row-major).  Outputs go back as binary when the
request asks (``binary_data`` per output, or ``binary_data_output`` for all).  Inputs and outputs with
``shared_memory_*`` parameters live in a registered shared memory region (``gateway/shm.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.classification import class_count
from gateway.json_body import loads_checked
from gateway.models import ModelView
from gateway.shm_params import ShmRef, parse_shm_params
from gateway.validate import InferCall, InputTensor, ParamValue, check_counts, check_tensor_size
from meshserve import tensors
from meshserve.errors import InvalidArgument, InvalidInput
from meshserve.pb import mesh_pb2
from meshserve.security import RequestLimits

__all__ = ["HEADER_LENGTH", "HttpInfer", "decode_infer", "encode_infer", "tensor_json_values"]

HEADER_LENGTH = "Inference-Header-Content-Length"
_DEFAULT_LIMITS = RequestLimits()


@dataclass(slots=True)
class HttpInfer:
    call: InferCall
    binary_outputs: dict[str, bool]
    """Output name → send as binary; empty = all outputs, with ``binary_default``."""
    binary_default: bool


def decode_infer(
    body: bytes, header_length: str | None, view: ModelView, limits: RequestLimits = _DEFAULT_LIMITS
) -> HttpInfer:
    """Limits that bound the decoding itself (tensor count, elements, nesting) are checked before
    the work they bound; the rest of validation is ``validate.build_request``'s."""
    if header_length is not None:
        try:
            json_length = int(header_length)
        except ValueError:
            raise InvalidArgument(f"{HEADER_LENGTH} must be an integer, got '{header_length}'") from None
        if json_length < 0 or json_length > len(body):
            raise InvalidArgument(f"{HEADER_LENGTH} is {json_length} but the body has only {len(body)} bytes")
        if json_length == 0:
            return _raw_binary_request(body, view)
    else:
        json_length = len(body)
    header = _parse_json(body[:json_length])
    return _decode_header(header, memoryview(body)[json_length:], limits)


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        value = loads_checked(raw, "the request JSON")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"failed to parse the request JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument("the request JSON must be an object")
    return value


def _decode_header(header: dict[str, Any], binary: memoryview, limits: RequestLimits) -> HttpInfer:
    parameters = _parameters(header.get("parameters"), "request")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidArgument("the request JSON needs an 'inputs' list")
    raw_outputs = header.get("outputs", [])
    check_counts(
        len(raw_inputs), len(raw_outputs) if isinstance(raw_outputs, list) else 0, len(parameters), limits
    )
    offset = 0
    inputs = []
    for raw in raw_inputs:
        tensor, used = _decode_input(raw, binary, offset, limits)
        offset += used
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidArgument(
            f"the body carries {len(binary)} bytes of binary data but the inputs use {offset}"
        )
    binary_default = bool(parameters.pop("binary_data_output", False))
    outputs: dict[str, bool] = {}
    output_shm: dict[str, ShmRef] = {}
    classification: dict[str, int] = {}
    if not isinstance(raw_outputs, list):
        raise InvalidArgument("'outputs' must be a list")
    for raw in raw_outputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InvalidArgument("each requested output needs a 'name'")
        out_params = _parameters(raw.get("parameters"), f"output '{raw['name']}'")
        if "classification" in out_params:
            classification[raw["name"]] = class_count(out_params["classification"], raw["name"])
        outputs[raw["name"]] = bool(out_params.get("binary_data", binary_default))
        ref = parse_shm_params(out_params, f"output '{raw['name']}'")
        if ref is not None:
            output_shm[raw["name"]] = ref
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    call = InferCall(
        request_id=request_id,
        inputs=inputs,
        outputs=list(outputs),
        parameters=parameters,
        output_shm=output_shm,
        classification=classification,
    )
    return HttpInfer(call, outputs, binary_default)


def _parameters(value: Any, where: str) -> dict[str, ParamValue]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"'parameters' of the {where} must be an object")
    for key, item in value.items():
        if not isinstance(item, (bool, int, float, str)):
            raise InvalidArgument(f"parameter '{key}' of the {where} must be a bool, number or string")
    return dict(value)


def _decode_input(
    raw: Any, binary: memoryview, offset: int, limits: RequestLimits
) -> tuple[InputTensor, int]:
    if not isinstance(raw, dict):
        raise InvalidArgument("each input must be a JSON object")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str):
        raise InvalidArgument("an input has no 'name'")
    if not isinstance(datatype, str) or datatype not in tensors.DATATYPES:
        raise InvalidInput(name, f"unknown or missing datatype {datatype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidInput(name, "'shape' must be a list of integers")
    check_tensor_size(name, shape, limits)
    params = _parameters(raw.get("parameters"), f"input '{name}'")
    shm = parse_shm_params(params, f"input '{name}'")
    if shm is not None:
        if "data" in raw or "binary_data_size" in params:
            raise InvalidInput(
                name, "takes its data from shared memory; 'data' or binary data must not be set"
            )
        return InputTensor(name, datatype, shape, b"", shm), 0  # read by gateway/shm.py
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(name, "'binary_data_size' must be a non-negative integer")
        if offset + size > len(binary):
            raise InvalidInput(
                name,
                f"binary_data_size {size} runs past the end of the body ({len(binary) - offset} bytes left)",
            )
        return InputTensor(name, datatype, shape, binary[offset : offset + size]), size
    if "data" not in raw:
        raise InvalidInput(name, "needs 'data' or parameters.binary_data_size")
    data = _json_data_to_bytes(name, datatype, shape, raw["data"], limits.max_json_depth)
    return InputTensor(name, datatype, shape, data), 0


_KINDS_ACCEPTED = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
"""JSON values numpy may turn into each kind; booleans only for BOOL (Triton refuses them elsewhere)."""


def _json_data_to_bytes(name: str, datatype: str, shape: list[int], data: Any, max_depth: int) -> bytes:
    count = tensors.element_count(shape) if all(d >= 0 for d in shape) else -1
    flat = _flatten(name, data, max_depth)
    if len(flat) != count:
        raise InvalidInput(name, f"JSON data holds {len(flat)} values but shape {shape} needs {count}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise InvalidInput(name, "BYTES data in JSON must be strings")
        return tensors.serialize_bytes(np.array(flat, dtype=object))
    info = tensors.DATATYPES[datatype]
    if info.numpy is None:
        raise InvalidInput(name, f"{datatype} data must be sent as binary data")
    if not all(isinstance(v, (bool, int, float)) for v in flat):
        raise InvalidInput(name, f"{datatype} data in JSON must be numbers")
    guess = np.array(flat) if flat else np.array([], dtype=info.numpy)
    allowed = _KINDS_ACCEPTED.get(info.numpy.kind, "biuf")
    if guess.dtype.kind not in allowed:
        raise InvalidInput(name, f"JSON values of kind '{guess.dtype.kind}' do not fit {datatype}")
    return tensors.values_to_bytes(name, datatype, flat)


def _flatten(name: str, data: Any, max_depth: int) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidInput(name, "'data' must be a JSON array")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= max_depth:
                    raise InvalidInput(
                        name, f"'data' is nested deeper than {max_depth} arrays (--max-json-depth)"
                    )
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _raw_binary_request(body: bytes, view: ModelView) -> HttpInfer:
    """``Inference-Header-Content-Length: 0``: the body is the only input's bytes, batch 1."""
    if len(view.inputs) != 1:
        raise InvalidArgument(
            f"a raw binary request needs a model with exactly one input; '{view.name}' has {len(view.inputs)}"
        )
    spec = next(iter(view.inputs.values()))
    shape = ([1] if view.max_batch_size > 0 else []) + list(spec.dims)
    if any(d < 0 for d in shape):
        if spec.datatype != "BYTES" and len(shape) == 1 + (view.max_batch_size > 0):
            itemsize = tensors.DATATYPES[spec.datatype].itemsize
            shape[-1] = len(body) // itemsize
        else:
            raise InvalidArgument(
                f"input '{spec.name}' has variable dims; a raw binary request cannot give its shape"
            )
    call = InferCall(request_id="", inputs=[InputTensor(spec.name, spec.datatype, shape, body)])
    return HttpInfer(call, {}, True)


def encode_infer(
    response: mesh_pb2.InferResponse, model_version: int, request: HttpInfer
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    header: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": str(model_version),
        "outputs": [],
    }
    if response.request_id:
        header["id"] = response.request_id
    parameters = {
        key: getattr(param, which)
        for key, param in response.parameters.items()
        if (which := param.WhichOneof("choice")) is not None
    }
    if parameters:
        header["parameters"] = parameters
    chunks: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        binary = request.binary_outputs.get(tensor.name, request.binary_default)
        ref = request.call.output_shm.get(tensor.name)
        if ref is not None:  # written into the region: metadata only, no data, no binary_data_size
            entry["parameters"] = shm_parameters(ref)
        elif binary:
            entry["parameters"] = {"binary_data_size": len(tensor.data)}
            chunks.append(tensor.data)
        else:
            entry["data"] = tensor_json_values(tensor)
        header["outputs"].append(entry)
    head = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def shm_parameters(ref: ShmRef) -> dict[str, Any]:
    """An output's shared memory placement, echoed in its response entry."""
    params: dict[str, Any] = {"shared_memory_region": ref.region, "shared_memory_byte_size": ref.byte_size}
    if ref.offset:
        params["shared_memory_offset"] = ref.offset
    return params


def tensor_json_values(tensor: mesh_pb2.Tensor) -> list[Any]:
    """A response tensor's elements, flat and row-major, as JSON values (BYTES as UTF-8 text)."""
    array = tensors.to_numpy(tensor.name, tensor.datatype, tensor.shape, tensor.data).reshape(-1)
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in array]
    if tensor.datatype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32).tolist()  # type: ignore[no-any-return]
    values: list[Any] = array.tolist()
    return values
