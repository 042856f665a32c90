"""Triton's generate extension (``/generate``, ``/generate_stream``): flat JSON ↔ the gateway's calls.

A generate request is one JSON object with no tensor metadata.  As Triton does it (its
``ConvertGenerateRequest`` / ``ExactMappingInput``):

- a field named like a model input becomes that input: a string is one BYTES element, a number one
  element of the input's datatype, a (nested) list several; the shape is the model metadata's
  (``[-1] + dims`` when the model batches), each ``-1`` filled in: the fixed dims take their share
  of the element count, the innermost ``-1`` takes what remains and any other ``-1`` is 1 (so 16
  values for ``simple``'s ``[-1, 16]`` give ``[1, 16]``);
- ``parameters`` (an object) is opened and its fields mapped the same way (an input by name,
  otherwise a request parameter);
- ``id`` (a string) is the request id, echoed in every response (meshserve's addition: Triton
  passes it on as a parameter);
- any other field is a request parameter: a string, number or boolean.

A response is one JSON object: ``model_name``, ``model_version``, ``id`` when the request had one,
the response's parameters, then one field per output — its elements flat, BYTES as UTF-8 text, and a
one-element output as a bare value.  ``/generate`` answers exactly one such object (a decoupled
model must send exactly one response, else 400, as Triton refuses it); ``/generate_stream`` sends
each as a server-sent event ``data: {json}\\n\\n``.

This module imports neither the gRPC protocol code nor ``gateway.core`` at run time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.http_codec import tensor_json_values
from gateway.json_body import loads_checked
from gateway.models import ModelView, TensorSpec
from gateway.validate import InferCall, InputTensor, ParamValue
from meshserve import tensors
from meshserve.errors import InvalidArgument, InvalidInput
from meshserve.pb import mesh_pb2

if TYPE_CHECKING:
    from gateway.core import InferenceCore

__all__ = [
    "NOT_ONE_RESPONSE",
    "decode_generate",
    "encode_generate",
    "fit_shape",
    "generate_events",
    "generate_one",
    "parse_generate_body",
    "sse_event",
]

PARAMETERS_FIELD = "parameters"
ID_FIELD = "id"
RESERVED_RESPONSE_FIELDS = ("model_name", "model_version", "id")

NOT_ONE_RESPONSE = (
    "generate expects model to produce exactly 1 response, use generate stream for model that "
    "generates various number of responses"
)
"""Triton's wording, for ``/generate`` on a decoupled model that sent 0 or several responses."""


# -- request ------------------------------------------------------------------------------------------


def parse_generate_body(body: bytes) -> dict[str, Any]:
    """The request JSON object; a key given twice is refused (Triton: "… already exists in request")."""
    try:
        value = loads_checked(body, "the generate request JSON", object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as exc:
        raise InvalidArgument(f"'{exc.key}' appears more than once in the generate request") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"failed to parse the generate request JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"the generate request must be a JSON object, got {_json_type(value)}")
    return value


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def decode_generate(body: bytes, view: ModelView) -> InferCall:
    """The generate request body as an :class:`InferCall` for ``view`` (not yet validated against
    the model beyond the mapping: ``build_request`` still checks shapes, batch size, missing inputs)."""
    request = parse_generate_body(body)
    call = InferCall(request_id="", inputs=[])
    seen: set[str] = set()
    for key, value in request.items():
        if key == PARAMETERS_FIELD and key not in view.inputs:
            if not isinstance(value, dict):
                raise InvalidArgument(
                    f"'{PARAMETERS_FIELD}' of a generate request must be a JSON object, got {_json_type(value)}"
                )
            for inner_key, inner_value in value.items():
                _map_field(inner_key, inner_value, view, call, seen)
        elif key == ID_FIELD and key not in view.inputs:
            if not isinstance(value, str):
                raise InvalidArgument(f"'{ID_FIELD}' must be a string, got {_json_type(value)}")
            call.request_id = value
        else:
            _map_field(key, value, view, call, seen)
    return call


def _map_field(key: str, value: Any, view: ModelView, call: InferCall, seen: set[str]) -> None:
    if key in seen:
        raise InvalidArgument(f"'{key}' appears more than once in the generate request")
    seen.add(key)
    spec = view.inputs.get(key)
    if spec is not None:
        call.inputs.append(_input_tensor(spec, value, view))
    else:
        call.parameters[key] = _parameter(key, value, view)


def _parameter(key: str, value: Any, view: ModelView) -> ParamValue:
    if isinstance(value, (bool, int, float, str)):
        return value
    inputs = ", ".join(f"'{name}'" for name in view.inputs) or "none"
    raise InvalidArgument(
        f"parameter '{key}' has invalid type {_json_type(value)}: a generate request field that is not "
        f"an input of model '{view.name}' (inputs: {inputs}) must be a string, number or boolean"
    )


def _input_tensor(spec: TensorSpec, value: Any, view: ModelView) -> InputTensor:
    values = _flatten(spec.name, value)
    data = _to_bytes(spec.name, spec.datatype, values)
    shape = fit_shape(spec.name, ([-1] if view.max_batch_size > 0 else []) + list(spec.dims), len(values))
    return InputTensor(spec.name, spec.datatype, shape, data)


def fit_shape(name: str, metadata_shape: list[int], count: int) -> list[int]:
    """Triton's two passes: fixed dims take their factor of ``count``; the innermost ``-1`` gets the
    rest, every other ``-1`` is 1."""
    shape = list(metadata_shape)
    remaining = count
    fits = True
    for dim in reversed(shape):
        if dim < 0:
            continue
        if dim == 0:  # a zero-size dim holds nothing
            fits = fits and count == 0
            continue
        if remaining % dim:
            fits = False
            break
        remaining //= dim
    if fits:
        dynamic = [i for i, dim in enumerate(shape) if dim < 0]
        if dynamic:
            for i in dynamic:
                shape[i] = 1
            shape[dynamic[-1]] = remaining
            return shape
        if remaining == 1 or (count == 0 and 0 in shape):
            return shape
    raise InvalidInput(
        name,
        f"{count} value(s) cannot take the input's shape {_fmt(metadata_shape)} "
        "(send as many values as the fixed dims multiply to, or a multiple of that where a dim is -1)",
    )


def _flatten(name: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        value = [value]
    flat: list[Any] = []
    stack = [iter(value)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            if isinstance(item, dict) or item is None:
                raise InvalidInput(
                    name, f"a value must be a string, number or boolean, got {_json_type(item)}"
                )
            flat.append(item)
        else:
            stack.pop()
    return flat


def _to_bytes(name: str, datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        for item in values:
            if not isinstance(item, str):
                raise InvalidInput(name, f"the input is BYTES: send strings, got {_json_type(item)} {item!r}")
        return tensors.serialize_bytes(np.array(values, dtype=object))
    info = tensors.DATATYPES[datatype]
    if info.numpy is None:
        raise InvalidInput(name, f"{datatype} inputs cannot be given in a generate request; use /infer")
    kind = info.numpy.kind
    for item in values:
        if kind == "b":
            ok = isinstance(item, bool)
        elif kind in "iu":
            ok = isinstance(item, int) and not isinstance(item, bool)
        else:
            ok = isinstance(item, (int, float)) and not isinstance(item, bool)
        if not ok:
            wanted = "booleans" if kind == "b" else "integers" if kind in "iu" else "numbers"
            raise InvalidInput(
                name, f"the input is {datatype}: send {wanted}, got {_json_type(item)} {item!r}"
            )
    return tensors.values_to_bytes(name, datatype, values)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _fmt(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# -- response -----------------------------------------------------------------------------------------


def encode_generate(response: mesh_pb2.InferResponse, model_version: int) -> dict[str, Any]:
    """One response as Triton's generate object (reserved fields win over a same-named output)."""
    out: dict[str, Any] = {"model_name": response.model_name, "model_version": str(model_version)}
    if response.request_id:
        out["id"] = response.request_id
    for key, param in response.parameters.items():
        which = param.WhichOneof("choice")
        if which is not None and key not in RESERVED_RESPONSE_FIELDS:
            out[key] = getattr(param, which)
    for tensor in response.outputs:
        if tensor.name in RESERVED_RESPONSE_FIELDS:
            continue
        values = tensor_json_values(tensor)
        out[tensor.name] = values[0] if len(values) == 1 else values
    return out


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``payload`` (JSON escapes newlines, so it is one ``data:`` line)."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _flag_only(response: mesh_pb2.InferResponse) -> bool:
    return not response.more and not response.outputs


async def generate_events(
    core: InferenceCore, model: str, version: str, call: InferCall
) -> AsyncGenerator[dict[str, Any], None]:
    """Every response to ``call`` as a generate object: one for a regular model, 0..N for a decoupled
    one (its flag-only final response skipped).  Errors are raised where they happen."""
    view = core.models.ready_view(model, version)
    if not view.decoupled:
        outcome = await core.infer(model, version, call)
        yield encode_generate(outcome.response, outcome.view.version)
        return
    async with aclosing(core.stream_infer(model, version, call)) as stream:
        async for served, partial in stream:
            if not _flag_only(partial):
                yield encode_generate(partial, served.version)


async def generate_one(core: InferenceCore, model: str, version: str, call: InferCall) -> dict[str, Any]:
    """The single response ``/generate`` answers; a decoupled model that sends none, or a second one,
    is refused with Triton's message (without waiting for the rest of a long stream)."""
    first: dict[str, Any] | None = None
    async with aclosing(generate_events(core, model, version, call)) as events:
        async for event in events:
            if first is not None:
                raise InvalidArgument(NOT_ONE_RESPONSE)
            first = event
    if first is None:
        raise InvalidArgument(NOT_ONE_RESPONSE)
    return first
