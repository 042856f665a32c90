"""Property-based tests over the protobuf side (gateway/grpc_codec.py + validation).

Run in a process of its own by test_properties_grpc.py: it imports ``meshserve.pb.grpc_service_pb2``,
which must never share a process with tritonclient (same proto package, descriptor clash).  Not
collected by pytest (no ``test_`` prefix); ``python -m tests.unit._grpc_properties`` runs it alone.
"""

from __future__ import annotations

import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.grpc_codec import decode_infer
from gateway.validate import build_request
from meshserve import tensors
from meshserve.errors import MeshError
from meshserve.pb import grpc_service_pb2 as pb
from tests.unit.test_properties import LIMITS, VIEW, only_client_errors, shapes, unicode_text

PROPS = settings(max_examples=200, deadline=2000, database=None, suppress_health_check=list(HealthCheck))

CONTENT_FIELDS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}
PARAM_FIELDS = {
    "bool_param": st.booleans(),
    "int64_param": st.integers(-(2**63), 2**63 - 1),
    "uint64_param": st.integers(0, 2**64 - 1),
    "double_param": st.floats(),
    "string_param": unicode_text,
}


@st.composite
def wild_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m", id=draw(unicode_text))
    for _ in range(draw(st.integers(0, 4))):
        tensor = request.inputs.add(
            name=draw(st.one_of(st.sampled_from(["T", "F", "I", "B"]), unicode_text)),
            datatype=draw(st.one_of(st.sampled_from(list(tensors.DATATYPES)), unicode_text)),
            shape=draw(st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 9), max_size=5)),
        )
        if draw(st.booleans()):
            field = draw(st.sampled_from(sorted(CONTENT_FIELDS)))
            getattr(tensor.contents, field).extend(draw(st.lists(CONTENT_FIELDS[field], max_size=10)))
        if draw(st.booleans()):
            key = draw(st.sampled_from(["shared_memory_region", "binary_data_size"]) | unicode_text)
            which = draw(st.sampled_from(sorted(PARAM_FIELDS)))
            setattr(tensor.parameters[key], which, draw(PARAM_FIELDS[which]))
    request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=48), max_size=4)))
    for name in draw(st.lists(st.sampled_from(["O", "X"]) | unicode_text, max_size=3)):
        request.outputs.add(name=name)
    for key in draw(
        st.lists(st.sampled_from(["timeout", "priority", "sequence_id"]) | unicode_text, max_size=4)
    ):
        which = draw(st.sampled_from(sorted(PARAM_FIELDS)))
        setattr(request.parameters[key], which, draw(PARAM_FIELDS[which]))
    return request


def _through(request: pb.ModelInferRequest) -> None:
    call = only_client_errors(decode_infer, request)
    if call is not None:
        prepared = only_client_errors(build_request, call, VIEW, 10.0, 1 << 20, LIMITS)
        if prepared is not None:
            for tensor in prepared.message.inputs:
                tensors.to_numpy(tensor.name, tensor.datatype, list(tensor.shape), tensor.data)


@PROPS
@given(wild_requests())
def any_request_is_decoded_or_refused_clearly(request: pb.ModelInferRequest) -> None:
    _through(request)


@PROPS
@given(st.binary(max_size=300))
def any_parsable_bytes_are_decoded_or_refused_clearly(raw: bytes) -> None:
    try:
        request = pb.ModelInferRequest.FromString(raw)
    except Exception:
        return  # gRPC refuses what protobuf cannot parse, before the gateway sees it
    _through(request)


@PROPS
@given(
    st.sampled_from(["INT32", "INT64", "FP32", "FP64", "UINT8", "BOOL"]).flatmap(
        lambda dt: st.tuples(st.just(dt), hnp.arrays(tensors.DATATYPES[dt].numpy, shapes))  # type: ignore[arg-type]
    )
)
def typed_contents_equal_raw_contents(case: tuple[str, np.ndarray]) -> None:
    datatype, array = case
    field = {"INT32": "int_contents", "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
             "UINT8": "uint_contents", "BOOL": "bool_contents"}[datatype]  # fmt: skip
    typed = pb.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="X", datatype=datatype, shape=list(array.shape))
    getattr(tensor.contents, field).extend(array.reshape(-1).tolist())
    raw = pb.ModelInferRequest(model_name="m")
    raw.inputs.add(name="X", datatype=datatype, shape=list(array.shape))
    raw.raw_input_contents.append(tensors.from_numpy(array, datatype)[2])
    assert bytes(decode_infer(typed).inputs[0].data) == bytes(decode_infer(raw).inputs[0].data)


def main() -> int:
    failures = 0
    for check in (
        any_request_is_decoded_or_refused_clearly,
        any_parsable_bytes_are_decoded_or_refused_clearly,
        typed_contents_equal_raw_contents,
    ):
        try:
            check()
            print(f"ok   {check.__name__}")
        except (AssertionError, MeshError, Exception) as exc:  # report every property, then fail
            failures += 1
            print(f"FAIL {check.__name__}: {type(exc).__name__}: {exc}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
