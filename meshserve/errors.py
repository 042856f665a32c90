"""The one error hierarchy a client may see, mapped once to gRPC status and HTTP code.

Errors cross process boundaries (NATS, gRPC) as ``(code, message)``; :func:`from_wire` rebuilds the
same class on the other side.  HTTP codes follow Triton's mapping: INTERNAL→500, NOT_FOUND→404,
UNAVAILABLE→503, UNSUPPORTED→501, everything else→400 (body ``{"error": msg}``).
"""

from __future__ import annotations

from typing import ClassVar

import grpc

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "Internal",
    "InvalidArgument",
    "InvalidInput",
    "MeshError",
    "ModelNotFound",
    "ModelNotReady",
    "PayloadTooLarge",
    "PermissionDenied",
    "QueueFull",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
    "WorkerLost",
    "from_wire",
]


class MeshError(Exception):
    """Base of every error a client may see.

    ``code`` is the stable wire name (Triton's vocabulary where Triton has one), so a python model's
    ``pb_utils.TritonError`` code maps straight in.
    """

    code: ClassVar[str] = "INTERNAL"
    grpc_status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(MeshError):
    """The request is malformed (JSON, protobuf, parameters) — the client must change it."""

    code = "INVALID_ARG"
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class InvalidInput(InvalidArgument):
    """One input tensor does not match the model's metadata (name, dtype, shape, byte size)."""

    def __init__(self, tensor: str, problem: str) -> None:
        self.tensor, self.problem = tensor, problem
        super().__init__(f"input '{tensor}': {problem}")


class ModelNotFound(MeshError):
    """Unknown model or version.  Triton's wording ("Request for unknown model") is kept: clients match it."""

    code = "NOT_FOUND"
    grpc_status = grpc.StatusCode.NOT_FOUND
    http_status = 404


class Unavailable(MeshError):
    """The server cannot serve this now (not ready, no live instance, shutting down)."""

    code = "UNAVAILABLE"
    grpc_status = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class ModelNotReady(Unavailable):
    """The model exists but is not ready (loading, or failed to load: the message says why)."""


class WorkerLost(Unavailable):
    """The worker executing the request went away before it answered."""


class QueueFull(Unavailable):
    """A bounded queue is full; the request was not accepted."""


class DeadlineExceeded(MeshError):
    """The request's deadline (``timeout`` parameter or the server default) passed before a result."""

    code = "DEADLINE_EXCEEDED"
    grpc_status = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class PayloadTooLarge(MeshError):
    """The request is larger than a configured limit; the message names the setting to raise."""

    code = "RESOURCE_EXHAUSTED"
    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413


class Unauthenticated(MeshError):
    """No bearer token, or one the gateway does not know (``--auth-token-file``)."""

    code = "UNAUTHENTICATED"
    grpc_status = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(MeshError):
    """A valid token that does not open this endpoint (an inference token on repository control)."""

    code = "PERMISSION_DENIED"
    grpc_status = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class Unsupported(MeshError):
    """The call exists in the protocol but meshserve does not implement it (yet)."""

    code = "UNSUPPORTED"
    grpc_status = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


class Cancelled(MeshError):
    """The client went away or the request was cancelled."""

    code = "CANCELLED"
    grpc_status = grpc.StatusCode.CANCELLED
    http_status = 400


class Internal(MeshError):
    """A fault inside meshserve or inside the model; the message carries the cause."""


_BY_CODE: dict[str, type[MeshError]] = {
    "INTERNAL": Internal,
    "UNKNOWN": Internal,
    "INVALID_ARG": InvalidArgument,
    "NOT_FOUND": ModelNotFound,
    "UNAVAILABLE": Unavailable,
    "UNSUPPORTED": Unsupported,
    "ALREADY_EXISTS": InvalidArgument,
    "CANCELLED": Cancelled,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "RESOURCE_EXHAUSTED": PayloadTooLarge,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
}


def from_wire(code: str, message: str) -> MeshError:
    """Rebuild the error class that ``code`` names (unknown codes become :class:`Internal`)."""
    cls = _BY_CODE.get(code, Internal)
    err = MeshError.__new__(cls)
    MeshError.__init__(err, message)
    return err
