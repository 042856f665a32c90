"""The error hierarchy: Triton's gRPC status and HTTP code for each class, and the wire round trip."""

from __future__ import annotations

import grpc
import pytest

from meshserve import errors
from meshserve.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    InvalidInput,
    MeshError,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    PermissionDenied,
    QueueFull,
    Unauthenticated,
    Unavailable,
    Unsupported,
    WorkerLost,
    from_wire,
)

# class → (wire code, gRPC status, HTTP code).  Triton: INTERNAL→500, NOT_FOUND→404, UNAVAILABLE→503,
# UNSUPPORTED→501, INVALID_ARG→400.
EXPECTED: dict[type[MeshError], tuple[str, grpc.StatusCode, int]] = {
    MeshError: ("INTERNAL", grpc.StatusCode.INTERNAL, 500),
    Internal: ("INTERNAL", grpc.StatusCode.INTERNAL, 500),
    InvalidArgument: ("INVALID_ARG", grpc.StatusCode.INVALID_ARGUMENT, 400),
    InvalidInput: ("INVALID_ARG", grpc.StatusCode.INVALID_ARGUMENT, 400),
    ModelNotFound: ("NOT_FOUND", grpc.StatusCode.NOT_FOUND, 404),
    Unavailable: ("UNAVAILABLE", grpc.StatusCode.UNAVAILABLE, 503),
    ModelNotReady: ("UNAVAILABLE", grpc.StatusCode.UNAVAILABLE, 503),
    WorkerLost: ("UNAVAILABLE", grpc.StatusCode.UNAVAILABLE, 503),
    QueueFull: ("UNAVAILABLE", grpc.StatusCode.UNAVAILABLE, 503),
    Unsupported: ("UNSUPPORTED", grpc.StatusCode.UNIMPLEMENTED, 501),
    DeadlineExceeded: ("DEADLINE_EXCEEDED", grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    PayloadTooLarge: ("RESOURCE_EXHAUSTED", grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    Cancelled: ("CANCELLED", grpc.StatusCode.CANCELLED, 400),
    Unauthenticated: ("UNAUTHENTICATED", grpc.StatusCode.UNAUTHENTICATED, 401),
    PermissionDenied: ("PERMISSION_DENIED", grpc.StatusCode.PERMISSION_DENIED, 403),
}


def _all_error_classes() -> set[type[MeshError]]:
    found = {MeshError}
    stack = [MeshError]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub.__module__ == errors.__name__:
                found.add(sub)
                stack.append(sub)
    return found


def test_every_class_in_the_module_is_covered() -> None:
    assert _all_error_classes() == set(EXPECTED)
    assert {getattr(errors, name) for name in errors.__all__ if name != "from_wire"} == set(EXPECTED)


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_code_grpc_status_and_http_status(cls: type[MeshError]) -> None:
    code, status, http = EXPECTED[cls]
    assert cls.code == code
    assert cls.grpc_status == status
    assert cls.http_status == http


@pytest.mark.parametrize(
    ("code", "http"),
    [("INTERNAL", 500), ("NOT_FOUND", 404), ("UNAVAILABLE", 503), ("UNSUPPORTED", 501), ("INVALID_ARG", 400)],
)
def test_triton_http_mapping_by_wire_code(code: str, http: int) -> None:
    assert from_wire(code, "m").http_status == http


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_from_wire_round_trips_code_and_message(cls: type[MeshError]) -> None:
    original = InvalidInput("IN0", "bad shape") if cls is InvalidInput else cls("something went wrong: ünï")
    rebuilt = from_wire(original.code, original.message)
    assert rebuilt.code == original.code
    assert rebuilt.message == original.message
    assert str(rebuilt) == str(original)
    assert rebuilt.grpc_status == original.grpc_status
    assert rebuilt.http_status == original.http_status
    # the class the code names: an ancestor of (or equal to) the original class; the bare base is Internal
    assert isinstance(original, type(rebuilt)) or (cls is MeshError and type(rebuilt) is Internal)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("INTERNAL", Internal),
        ("INVALID_ARG", InvalidArgument),
        ("NOT_FOUND", ModelNotFound),
        ("UNAVAILABLE", Unavailable),
        ("UNSUPPORTED", Unsupported),
        ("CANCELLED", Cancelled),
        ("DEADLINE_EXCEEDED", DeadlineExceeded),
        ("RESOURCE_EXHAUSTED", PayloadTooLarge),
        ("UNKNOWN", Internal),
        ("ALREADY_EXISTS", InvalidArgument),
    ],
)
def test_from_wire_gives_exactly_the_named_class(code: str, cls: type[MeshError]) -> None:
    err = from_wire(code, "msg")
    assert type(err) is cls
    assert isinstance(err, MeshError)
    assert err.message == "msg"


@pytest.mark.parametrize("code", ["", "BOGUS", "not_found", "404"])
def test_unknown_code_becomes_internal(code: str) -> None:
    err = from_wire(code, "what happened")
    assert type(err) is Internal
    assert err.code == "INTERNAL"
    assert err.http_status == 500
    assert err.grpc_status == grpc.StatusCode.INTERNAL
    assert str(err) == "what happened"


def test_from_wire_error_can_be_raised_and_caught() -> None:
    with pytest.raises(ModelNotFound, match="Request for unknown model: 'x' is not found"):
        raise from_wire("NOT_FOUND", "Request for unknown model: 'x' is not found")


def test_invalid_input_names_the_tensor() -> None:
    err = InvalidInput("INPUT0", "unexpected shape [3]")
    assert (err.tensor, err.problem) == ("INPUT0", "unexpected shape [3]")
    assert str(err) == "input 'INPUT0': unexpected shape [3]"
    assert err.message == str(err)
    assert isinstance(err, InvalidArgument)


def test_str_is_the_bare_message() -> None:
    assert str(Unavailable("server is shutting down")) == "server is shutting down"
    assert Unavailable("x").args == ("x",)
