"""Tokens, model-name checks, request limits and the flags that carry them (meshserve/security*.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from gateway.auth import grpc_need, http_need
from gateway.http_codec import decode_infer
from gateway.models import ModelView
from gateway.validate import InferCall, InputTensor, build_request
from meshserve.cli import _gateway_settings, build_parser
from meshserve.errors import InvalidArgument, InvalidInput, PayloadTooLarge, PermissionDenied, Unauthenticated
from meshserve.model_config import ConfigError, complete_config, parse_config
from meshserve.security import AuthSettings, Need, RequestLimits, check_model_name, check_token, read_tokens
from meshserve.security_cli import gateway_flags

INFER, CONTROL = frozenset({"infer-token"}), frozenset({"control-token"})


@pytest.mark.parametrize(
    ("auth", "need", "header", "outcome"),
    [
        (AuthSettings(), Need.INFERENCE, None, None),
        (AuthSettings(), Need.CONTROL, None, None),
        (AuthSettings(INFER, CONTROL), Need.OPEN, None, None),
        (AuthSettings(INFER), Need.INFERENCE, None, Unauthenticated),
        (AuthSettings(INFER), Need.INFERENCE, "Bearer wrong", Unauthenticated),
        (AuthSettings(INFER), Need.INFERENCE, "Basic infer-token", Unauthenticated),
        (AuthSettings(INFER), Need.INFERENCE, "Bearer infer-token", None),
        (AuthSettings(INFER), Need.INFERENCE, "bearer  infer-token ", None),
        (AuthSettings(INFER), Need.CONTROL, "Bearer infer-token", None),  # no control token: same rule
        (AuthSettings(INFER, CONTROL), Need.CONTROL, "Bearer infer-token", PermissionDenied),
        (AuthSettings(INFER, CONTROL), Need.CONTROL, "Bearer control-token", None),
        (AuthSettings(INFER, CONTROL), Need.INFERENCE, "Bearer control-token", None),
        (AuthSettings(INFER, CONTROL), Need.CONTROL, None, Unauthenticated),
        (AuthSettings(frozenset(), CONTROL), Need.INFERENCE, None, None),
        (AuthSettings(frozenset(), CONTROL), Need.CONTROL, "Bearer nope", Unauthenticated),
    ],
)
def test_token_rules(auth: AuthSettings, need: Need, header: str | None, outcome: type | None) -> None:
    if outcome is None:
        check_token(auth, need, header)
    else:
        with pytest.raises(outcome):
            check_token(auth, need, header)


def test_which_calls_need_which_token() -> None:
    assert grpc_need("/inference.GRPCInferenceService/ServerLive") is Need.OPEN
    assert grpc_need("/inference.GRPCInferenceService/ModelReady") is Need.OPEN
    assert grpc_need("/inference.GRPCInferenceService/ModelInfer") is Need.INFERENCE
    assert grpc_need("/inference.GRPCInferenceService/ModelMetadata") is Need.INFERENCE
    assert grpc_need("/inference.GRPCInferenceService/RepositoryModelLoad") is Need.CONTROL
    assert grpc_need("/inference.GRPCInferenceService/RepositoryIndex") is Need.CONTROL
    assert http_need("/v2/health/ready") is Need.OPEN
    assert http_need("/v2/models/simple/versions/1/ready") is Need.OPEN
    assert http_need("/v2/models/simple/ready/x") is Need.INFERENCE
    assert http_need("/v2/models/simple/infer") is Need.INFERENCE
    assert http_need("/v2") is Need.INFERENCE
    assert http_need("/v2/repository/models/simple/load") is Need.CONTROL
    assert http_need("/v2/repository/index") is Need.CONTROL
    # trace and log settings change the server (and may name files): the control token, like load
    assert grpc_need("/inference.GRPCInferenceService/TraceSetting") is Need.CONTROL
    assert grpc_need("/inference.GRPCInferenceService/LogSettings") is Need.CONTROL
    assert http_need("/v2/trace/setting") is Need.CONTROL
    assert http_need("/v2/models/simple/trace/setting") is Need.CONTROL
    assert http_need("/v2/logging") is Need.CONTROL
    assert http_need("/v2/models/trace/setting/infer") is Need.INFERENCE


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../simple",
        "simple/../x",
        "/etc/passwd",
        "a\\b",
        "a\x00b",
        ".hidden",
        "a\nb",
        "x" * 256,
    ],
)
def test_hostile_model_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid model name"):
        check_model_name(name)


@pytest.mark.parametrize("name", ["simple", "simple_identity", "a.b", "модель", "x" * 255, "a-b c"])
def test_ordinary_model_names_pass(name: str) -> None:
    check_model_name(name)


def test_token_files(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# rotated monthly\nfirst\n\n  second  \n")
    assert read_tokens(path) == {"first", "second"}
    path.write_text("# nothing\n")
    with pytest.raises(SystemExit, match="holds no token"):
        read_tokens(path)


def test_meshserve_up_hands_every_gateway_flag_on(tmp_path: Path) -> None:
    """The flags ``meshserve up`` gives its gateways rebuild the very settings it was given."""
    for name in ("cert.pem", "key.pem", "ca.pem", "infer", "control"):
        (tmp_path / name).write_text("token\n")
    argv = [
        "up", "--model-repository", str(tmp_path), "--max-request-tensors", "3", "--max-tensor-elements", "99",
        "--max-bytes-element-bytes", "7", "--max-json-depth", "4", "--http-max-header-bytes", "1000",
        "--http-max-headers", "20", "--grpc-max-metadata-bytes", "2048", "--grpc-max-concurrent-streams", "5",
        "--grpc-stream-inflight", "6", "--max-request-parameters", "8",
        "--grpc-use-ssl-mutual", "--grpc-server-cert", str(tmp_path / "cert.pem"),
        "--grpc-server-key", str(tmp_path / "key.pem"), "--grpc-root-cert", str(tmp_path / "ca.pem"),
        "--http-ssl-cert", str(tmp_path / "cert.pem"), "--http-ssl-key", str(tmp_path / "key.pem"),
        "--http-ssl-client-ca", str(tmp_path / "ca.pem"), "--auth-token-file", str(tmp_path / "infer"),
        "--control-token-file", str(tmp_path / "control"), "--metrics-address", "127.0.0.2",
    ]  # fmt: skip
    given = _gateway_settings(build_parser().parse_args(argv), "nats://x")
    assert given.request_limits.max_tensors == 3 and given.grpc_tls.use_ssl and given.grpc_tls.use_ssl_mutual
    again = build_parser().parse_args(["gateway", "--nats-url", "nats://x", *gateway_flags(given)])
    rebuilt = _gateway_settings(again, "nats://x")
    for field in ("request_limits", "grpc_tls", "http_tls", "auth", "metrics_address"):
        assert getattr(rebuilt, field) == getattr(given, field), field


def test_tls_flags_that_do_not_fit_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    for argv, message in (
        (["--grpc-use-ssl"], "needs --grpc-server-cert"),
        (["--http-ssl-cert", str(tmp_path / "cert.pem")], "go together"),
        (["--auth-token-file", str(tmp_path / "missing")], "cannot read token file"),
    ):
        args = build_parser().parse_args(["gateway", "--nats-url", "nats://x", *argv])
        with pytest.raises(SystemExit, match=message):
            _gateway_settings(args, "nats://x")


# -- request limits ------------------------------------------------------------------------------------

TEXT = """
backend: "python"
max_batch_size: 0
input [ { name: "T" data_type: TYPE_STRING dims: [ -1 ] }, { name: "F" data_type: TYPE_FP32 dims: [ -1, -1 ] optional: true } ]
output [ { name: "O" data_type: TYPE_STRING dims: [ -1 ] } ]
"""


def _view() -> ModelView:
    config = parse_config(TEXT)
    complete_config(config, "m")
    return ModelView.from_config("m", 1, config)


def _strings(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def _build(call: InferCall, limits: RequestLimits) -> None:
    build_request(call, _view(), 10.0, 1 << 20, limits)


def test_too_many_tensors_outputs_or_parameters() -> None:
    limits = RequestLimits(max_tensors=1, max_parameters=1)
    t = InputTensor("T", "BYTES", [1], _strings(b"a"))
    with pytest.raises(
        InvalidArgument, match=r"2 input tensors, over the limit of 1 \(--max-request-tensors\)"
    ):
        _build(InferCall("", [t, t]), limits)
    with pytest.raises(InvalidArgument, match="2 requested outputs"):
        _build(InferCall("", [t], outputs=["O", "O"]), limits)
    with pytest.raises(InvalidArgument, match="--max-request-parameters"):
        _build(InferCall("", [t], parameters={"a": 1, "b": 2}), limits)
    _build(InferCall("", [t], outputs=["O"], parameters={"a": 1}), limits)


def test_elements_per_tensor_count_zero_dims_as_one() -> None:
    limits = RequestLimits(max_tensor_elements=10)
    with pytest.raises(PayloadTooLarge, match="--max-tensor-elements"):
        _build(InferCall("", [InputTensor("T", "BYTES", [11], _strings(*[b""] * 11))]), limits)
    with pytest.raises(PayloadTooLarge, match="--max-tensor-elements"):
        _build(InferCall("", [InputTensor("T", "BYTES", [1], _strings(b"")), InputTensor("F", "FP32", [0, 2**62], b"")]), limits)  # fmt: skip
    _build(InferCall("", [InputTensor("T", "BYTES", [10], _strings(*[b""] * 10))]), limits)


def test_bytes_element_length() -> None:
    limits = RequestLimits(max_bytes_element_bytes=4)
    with pytest.raises(PayloadTooLarge, match=r"BYTES element 1 is 5 bytes, over the limit of 4"):
        _build(InferCall("", [InputTensor("T", "BYTES", [2], _strings(b"abcd", b"abcde"))]), limits)
    _build(InferCall("", [InputTensor("T", "BYTES", [2], _strings(b"abcd", b"abcd"))]), limits)


def test_json_nesting_and_count_limits_hold_before_the_data_is_decoded() -> None:
    view = _view()
    deep: list[object] = [1.0]
    for _ in range(5):
        deep = [deep]
    body = json.dumps({"inputs": [{"name": "F", "datatype": "FP32", "shape": [1, 1], "data": deep}]}).encode()
    with pytest.raises(InvalidInput, match=r"nested deeper than 4 arrays \(--max-json-depth\)"):
        decode_infer(body, None, view, RequestLimits(max_json_depth=4))
    assert decode_infer(body, None, view, RequestLimits(max_json_depth=6)).call.inputs[0].shape == [1, 1]
    huge = json.dumps({"inputs": [{"name": "F", "datatype": "FP32", "shape": [10**9, 10**9], "data": []}]})
    with pytest.raises(PayloadTooLarge, match="--max-tensor-elements"):
        decode_infer(huge.encode(), None, view, RequestLimits())
    many = json.dumps({"inputs": [{"name": "T"}] * 3})
    with pytest.raises(InvalidArgument, match="3 input tensors"):
        decode_infer(many.encode(), None, view, RequestLimits(max_tensors=2))


def test_a_body_nested_past_the_parser_limit_is_a_client_error() -> None:
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidArgument, match="nested too deeply"):
        decode_infer(body, None, _view())


@pytest.mark.parametrize(
    "line",
    [
        'default_model_filename: "../../outside.py"',
        'default_model_filename: "/etc/model.py"',
        'default_model_filename: "sub\\\\..\\\\..\\\\x.py"',
        'model_warmup [{ name: "w" batch_size: 1 inputs { key: "T" value: { data_type: TYPE_STRING dims: [1] input_data_file: "../../secret" } } }]',
    ],
)
def test_a_config_cannot_name_files_outside_its_model_directory(line: str) -> None:
    config = parse_config(TEXT + line)
    with pytest.raises(ConfigError, match="must be a path inside the model directory"):
        complete_config(config, "m")


def test_files_inside_the_model_directory_are_fine() -> None:
    config = parse_config(TEXT + 'default_model_filename: "sub/model.py"')
    complete_config(config, "m")
