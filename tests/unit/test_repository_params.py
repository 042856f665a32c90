"""RepositoryModelLoad / Unload parameters → ControlRequest (gRPC values and HTTP JSON)."""

from __future__ import annotations

import base64

import pytest

from gateway.repository_params import control_request
from meshserve.errors import InvalidArgument, PayloadTooLarge


def test_grpc_load_with_config_and_files() -> None:
    request = control_request("m", True, {"config": "{}", "file:1/model.onnx": b"\x08\x01", "other": 3}, 1024)
    assert request.load and request.config_json == "{}"
    assert dict(request.files) == {"1/model.onnx": b"\x08\x01"}


def test_http_files_are_base64() -> None:
    data = base64.b64encode(b"\x00\xff").decode()
    request = control_request("m", True, {"config": "{}", "file:1/model.onnx": data}, 1024, base64_files=True)
    assert request.files["1/model.onnx"] == b"\x00\xff"
    with pytest.raises(InvalidArgument, match="base64"):
        control_request("m", True, {"file:1/model.onnx": "not base64!"}, 1024, base64_files=True)


def test_bad_paths_and_types_are_refused_before_anything_travels() -> None:
    with pytest.raises(InvalidArgument):
        control_request("m", True, {"file:../x": b""}, 1024)
    with pytest.raises(InvalidArgument, match="string"):
        control_request("m", True, {"config": True}, 1024)
    with pytest.raises(InvalidArgument, match="boolean"):
        control_request("m", False, {"unload_dependents": "yes"}, 1024)


def test_files_are_bounded_by_the_message_limit() -> None:
    with pytest.raises(PayloadTooLarge, match="--max-message-bytes"):
        control_request("m", True, {"config": "{}", "file:1/a": b"x" * 600, "file:1/b": b"y" * 600}, 1024)


def test_unload_dependents() -> None:
    assert control_request("m", False, {"unload_dependents": True}, 1024).unload_dependents
    assert not control_request("m", False, {}, 1024).unload_dependents
