"""The per-request time breakdown a client asks for with the request parameter ``meshserve_timing``.

The answer travels as int64 response parameters (gRPC ``ModelInferResponse.parameters``, HTTP
``"parameters"``): the gateway's end-to-end time and the parts the worker reported.
"""

from __future__ import annotations

from collections.abc import Mapping

from meshserve.pb import mesh_pb2

__all__ = [
    "BATCH_ROWS",
    "COMPUTE_INFER_NS",
    "COMPUTE_INPUT_NS",
    "COMPUTE_OUTPUT_NS",
    "GATEWAY_NS",
    "QUEUE_NS",
    "TIMING_PARAMETER",
    "TRANSFER_NS",
    "add_breakdown",
    "breakdown",
    "wants_timing",
]

TIMING_PARAMETER = "meshserve_timing"
"""Request parameter: ``true`` asks for the breakdown.  Reserved: it never reaches the model."""

GATEWAY_NS = "meshserve_gateway_ns"
QUEUE_NS = "meshserve_queue_ns"
TRANSFER_NS = "meshserve_transfer_ns"
COMPUTE_INPUT_NS = "meshserve_compute_input_ns"
COMPUTE_INFER_NS = "meshserve_compute_infer_ns"
COMPUTE_OUTPUT_NS = "meshserve_compute_output_ns"
BATCH_ROWS = "meshserve_batch_rows"


def wants_timing(parameters: Mapping[str, object]) -> bool:
    """True for ``true`` (bool), a non-zero integer, or the string ``"true"``/``"1"``."""
    value = parameters.get(TIMING_PARAMETER, False)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return isinstance(value, bool | int) and bool(value)


def breakdown(gateway_ns: int, timing: mesh_pb2.Timing | None) -> dict[str, int]:
    """The response parameters; the worker's parts are 0 when the reply carried no timing."""
    t = timing if timing is not None else mesh_pb2.Timing()
    return {
        GATEWAY_NS: gateway_ns,
        QUEUE_NS: t.queue_ns,
        TRANSFER_NS: t.transfer_ns,
        COMPUTE_INPUT_NS: t.compute_input_ns,
        COMPUTE_INFER_NS: t.compute_infer_ns,
        COMPUTE_OUTPUT_NS: t.compute_output_ns,
        BATCH_ROWS: t.batch_rows,
    }


def add_breakdown(response: mesh_pb2.InferResponse, gateway_ns: int) -> None:
    """Put the breakdown into the response's parameters (both front ends encode those)."""
    timing = response.timing if response.HasField("timing") else None
    for key, value in breakdown(gateway_ns, timing).items():
        response.parameters[key].int64_param = value
