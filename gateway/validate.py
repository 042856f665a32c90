"""Check a decoded request against the model's metadata and turn it into the mesh's InferRequest.

Both protocol codecs (gRPC, HTTP) produce an :class:`InferCall`; everything a client can get wrong
about tensors is caught here, before the request enters the mesh, with Triton's wording where
clients match on it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from gateway.models import ModelView
from gateway.shm_params import ShmRef
from gateway.timing import TIMING_PARAMETER
from meshserve import tensors
from meshserve.errors import InvalidArgument, InvalidInput, PayloadTooLarge
from meshserve.params import INT64_MAX, INT64_MIN, ParamValue, set_param
from meshserve.pb import mesh_pb2
from meshserve.security import RequestLimits

__all__ = [
    "RESERVED_PARAMETERS",
    "InferCall",
    "InputTensor",
    "ParamValue",
    "build_request",
    "check_counts",
    "check_tensor_size",
]

_DEFAULT_LIMITS = RequestLimits()

RESERVED_PARAMETERS = frozenset(
    {
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
        "headers",
        "binary_data_output",
        TIMING_PARAMETER,
    }
)


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: bytes | memoryview
    shm: ShmRef | None = None
    """Set when the bytes are in a registered shared memory region; ``gateway/shm.py`` reads them
    into ``data`` (and clears this) before the request is built."""


@dataclass(slots=True)
class InferCall:
    """A request as the client sent it, protocol details removed."""

    request_id: str
    inputs: list[InputTensor]
    outputs: list[str] = field(default_factory=list)
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    output_shm: dict[str, ShmRef] = field(default_factory=dict)
    """Requested outputs to be written into a shared memory region instead of the response."""
    classification: dict[str, int] = field(default_factory=dict)
    """Requested output → top-N classes to return instead of its values (``gateway/classification.py``)."""


@dataclass(frozen=True, slots=True)
class Prepared:
    message: mesh_pb2.InferRequest
    timeout_s: float


def build_request(
    call: InferCall,
    view: ModelView,
    default_timeout_s: float,
    max_bytes: int,
    limits: RequestLimits = _DEFAULT_LIMITS,
) -> Prepared:
    total = sum(len(tensor.data) for tensor in call.inputs)
    if total > max_bytes:
        raise PayloadTooLarge(
            f"request tensors total {total} bytes, over the limit of {max_bytes} bytes "
            "(raise --max-message-bytes / MESHSERVE_MAX_MESSAGE_BYTES)"
        )
    check_counts(len(call.inputs), len(call.outputs), len(call.parameters), limits)
    for tensor in call.inputs:
        check_tensor_size(tensor.name, tensor.shape, limits)
    batch_size = _check_inputs(call, view, limits.max_bytes_element_bytes)
    _check_outputs(call, view)
    timeout_s = _timeout_s(call.parameters, default_timeout_s)
    message = mesh_pb2.InferRequest(
        request_id=call.request_id,
        model_name=view.name,
        model_version=view.version,
        requested_outputs=call.outputs,
        deadline_unix_ns=time.time_ns() + int(timeout_s * 1e9),
        priority=_priority(call.parameters),
        trace_id=call.request_id or uuid.uuid4().hex,
        batch_size=batch_size,
        timeout_us=_int_param(call.parameters, "timeout"),
    )
    for tensor in call.inputs:
        message.inputs.append(
            mesh_pb2.Tensor(
                name=tensor.name, datatype=tensor.datatype, shape=tensor.shape, data=bytes(tensor.data)
            )
        )
    for key, value in call.parameters.items():
        if key in RESERVED_PARAMETERS or key.startswith("triton_"):
            continue
        set_param(message.parameters[key], value)
    return Prepared(message, timeout_s)


def check_counts(inputs: int, outputs: int, parameters: int, limits: RequestLimits) -> None:
    """Tensors and parameters per request (``--max-request-tensors``, ``--max-request-parameters``)."""
    for what, count, limit, flag in (
        ("input tensors", inputs, limits.max_tensors, "--max-request-tensors"),
        ("requested outputs", outputs, limits.max_tensors, "--max-request-tensors"),
        ("parameters", parameters, limits.max_parameters, "--max-request-parameters"),
    ):
        if count > limit:
            raise InvalidArgument(f"the request has {count} {what}, over the limit of {limit} ({flag})")


def check_tensor_size(name: str, shape: list[int], limits: RequestLimits) -> None:
    """Elements of one tensor, counted as the product of its non-zero dims (so ``[0, 2**62]`` is
    refused here rather than by numpy in the worker); ``--max-tensor-elements``."""
    count = 1
    for dim in shape:
        count *= max(abs(dim), 1)
        if count > limits.max_tensor_elements:
            raise PayloadTooLarge(
                f"input '{name}': shape {_fmt(shape)} is over the limit of {limits.max_tensor_elements} "
                "elements per tensor (--max-tensor-elements)"
            )


def _check_inputs(call: InferCall, view: ModelView, max_element_bytes: int = 0) -> int:
    """Names, datatypes, shapes, byte sizes; returns the request's batch size (0 if not batching)."""
    seen: set[str] = set()
    batch_size: int | None = None
    for tensor in call.inputs:
        spec = view.inputs.get(tensor.name)
        if spec is None:
            raise InvalidArgument(f"unexpected inference input '{tensor.name}' for model '{view.name}'")
        if tensor.name in seen:
            raise InvalidArgument(
                f"input '{tensor.name}' appears more than once in the request for model '{view.name}'"
            )
        seen.add(tensor.name)
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', "
                f"but model '{view.name}' expects '{spec.datatype}'"
            )
        expected = ([-1] if view.max_batch_size > 0 else []) + list(spec.dims)
        if (
            len(tensor.shape) != len(expected)
            or any(e != -1 and e != g for e, g in zip(expected, tensor.shape, strict=True))
            or any(g < 0 for g in tensor.shape)
        ):
            raise InvalidArgument(
                f"unexpected shape for input '{tensor.name}' for model '{view.name}'. "
                f"Expected {_fmt(expected)}, got {_fmt(tensor.shape)}"
            )
        if view.max_batch_size > 0:
            rows = tensor.shape[0]
            if batch_size is not None and rows != batch_size:
                raise InvalidArgument(
                    f"input '{tensor.name}' has batch size {rows} but other inputs have {batch_size} "
                    f"for model '{view.name}'"
                )
            batch_size = rows
        _check_byte_size(tensor, view.name, max_element_bytes)
    missing = [name for name, spec in view.inputs.items() if name not in seen and not spec.optional]
    if missing:
        raise InvalidArgument(
            f"expected {len(view.inputs)} inputs but got {len(call.inputs)} inputs for model '{view.name}'. "
            f"Got input(s) {sorted(seen)}, but missing required input(s) {missing}. "
            "Please provide all required input(s)."
        )
    if batch_size is not None and not 1 <= batch_size <= view.max_batch_size:
        raise InvalidArgument(
            f"inference request batch-size must be <= {view.max_batch_size} for '{view.name}' "
            f"(and at least 1), got {batch_size}"
        )
    return batch_size or 0


def _check_byte_size(tensor: InputTensor, model: str, max_element_bytes: int) -> None:
    expected = tensors.expected_byte_size(tensor.datatype, tensor.shape)
    if expected is None:
        tensors.validate_bytes(
            tensor.name, tensor.data, tensors.element_count(tensor.shape), max_element_bytes
        )
    elif len(tensor.data) != expected:
        raise InvalidInput(
            tensor.name,
            f"input byte size mismatch for model '{model}': expected {expected} bytes for shape "
            f"{_fmt(tensor.shape)} of {tensor.datatype}, got {len(tensor.data)}",
        )


def _check_outputs(call: InferCall, view: ModelView) -> None:
    for name in call.outputs:
        if name not in view.outputs:
            raise InvalidArgument(f"unexpected inference output '{name}' for model '{view.name}'")


def _timeout_s(parameters: dict[str, ParamValue], default_s: float) -> float:
    timeout_us = _int_param(parameters, "timeout")
    if timeout_us < 0:
        raise InvalidArgument(f"parameter 'timeout' must be >= 0 microseconds, got {timeout_us}")
    return min(default_s, timeout_us / 1e6) if timeout_us else default_s


def _priority(parameters: dict[str, ParamValue]) -> int:
    priority = _int_param(parameters, "priority")
    if not 0 <= priority <= 0xFFFFFFFF:  # the mesh field is uint32
        raise InvalidArgument(f"parameter 'priority' must be in 0..{0xFFFFFFFF}, got {priority}")
    return priority


def _int_param(parameters: dict[str, ParamValue], key: str) -> int:
    value = parameters.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"parameter '{key}' must be an integer, got {value!r}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidArgument(f"parameter '{key}' is outside the 64-bit integer range: {value}")
    return value


def _fmt(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
