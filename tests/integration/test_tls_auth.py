"""TLS, mutual TLS and bearer tokens on a real mesh, through tritonclient's own ssl and header options.

One mesh: gRPC with Triton's ``--grpc-use-ssl-mutual`` flags, HTTPS that requires a client
certificate, an inference token and a control token, explicit model control, and the metrics port on
a separate address.  The CA and every certificate are made here, at test time (trustme).
"""

from __future__ import annotations

import http.client
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import trustme
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh, start_mesh, wait_for

INFER_TOKEN, CONTROL_TOKEN = "infer-7f3a", "control-91bc"
# tritonclient.http adds its own headers to the dict it is given: every call gets a copy
INFER = {"authorization": f"Bearer {INFER_TOKEN}"}
CONTROL = {"authorization": f"Bearer {CONTROL_TOKEN}"}
GOOD = np.arange(16, dtype=np.int32).reshape(1, 16)
METRICS_HOST = "127.0.0.2"  # still loopback on Linux, but not the address the client ports bind


@dataclass
class Pki:
    ca: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA that signed nothing the server knows."""
    rogue_cert: Path
    rogue_key: Path
    """A client certificate from the other CA."""


@dataclass
class Secured:
    mesh: Mesh
    pki: Pki


def _write(base: Path, name: str, blob: Any) -> Path:
    path = base / name
    blob.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    base = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client, rogue = ca.issue_cert("client.meshserve.test"), other.issue_cert("client.meshserve.test")
    server_chain = base / "server.pem"
    server_chain.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    pki = Pki(
        ca=_write(base, "ca.pem", ca.cert_pem),
        client_cert=_write(base, "client.pem", client.cert_chain_pems[0]),
        client_key=_write(base, "client.key", client.private_key_pem),
        other_ca=_write(base, "other-ca.pem", other.cert_pem),
        rogue_cert=_write(base, "rogue.pem", rogue.cert_chain_pems[0]),
        rogue_key=_write(base, "rogue.key", rogue.private_key_pem),
    )
    server_key = _write(base, "server.key", server.private_key_pem)
    (base / "infer.tokens").write_text(f"# inference clients\n{INFER_TOKEN}\n")
    (base / "control.tokens").write_text(f"{CONTROL_TOKEN}\n")
    repository = base / "models"
    repository.mkdir()
    for name in ("simple", "simple_identity"):
        (repository / name).symlink_to(ROOT / "examples" / "model_repository" / name)
    mesh = start_mesh(
        repository,
        base / "mesh.log",
        "--model-control-mode", "explicit", "--load-model", "simple",
        "--grpc-use-ssl-mutual", "--grpc-server-cert", str(server_chain), "--grpc-server-key", str(server_key),
        "--grpc-root-cert", str(pki.ca),
        "--http-ssl-cert", str(server_chain), "--http-ssl-key", str(server_key), "--http-ssl-client-ca", str(pki.ca),
        "--auth-token-file", str(base / "infer.tokens"), "--control-token-file", str(base / "control.tokens"),
        "--metrics-address", METRICS_HOST,
    )  # fmt: skip
    try:
        yield Secured(mesh, pki)
    finally:
        assert mesh.stop() == 0, mesh.log()[-3000:]


def grpc_client(s: Secured, *, ca: Path | None = None, cert: bool = True) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(
        s.mesh.grpc_url,
        ssl=True,
        root_certificates=str(ca or s.pki.ca),
        private_key=str(s.pki.client_key) if cert else None,
        certificate_chain=str(s.pki.client_cert) if cert else None,
    )


def http_client(s: Secured, **options: str) -> httpclient.InferenceServerClient:
    ssl_options = {
        "ca_certs": str(s.pki.ca),
        "certfile": str(s.pki.client_cert),
        "keyfile": str(s.pki.client_key),
    }
    ssl_options.update(options)
    return httpclient.InferenceServerClient(s.mesh.http_url, ssl=True, ssl_options=ssl_options)


def grpc_inputs() -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(GOOD)
    return inputs


def http_inputs() -> list[httpclient.InferInput]:
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "INT32"),
        httpclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(GOOD)
    return inputs


def grpc_status(call: Any) -> str:
    with pytest.raises(InferenceServerException) as err:
        call()
    return str(err.value.status())


# -- TLS ----------------------------------------------------------------------------------------------


def test_grpc_over_mutual_tls_with_the_token(secured: Secured) -> None:
    client = grpc_client(secured)
    result = client.infer("simple", grpc_inputs(), headers={**INFER})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), GOOD * 2)
    client.close()


def test_grpc_client_without_a_certificate_or_trusting_another_ca_is_refused(secured: Secured) -> None:
    for client in (grpc_client(secured, cert=False), grpc_client(secured, ca=secured.pki.other_ca)):
        status = grpc_status(lambda c=client: c.is_server_live(client_timeout=10))
        assert status in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"), status
        client.close()
    rogue = grpcclient.InferenceServerClient(
        secured.mesh.grpc_url, ssl=True, root_certificates=str(secured.pki.ca),
        private_key=str(secured.pki.rogue_key), certificate_chain=str(secured.pki.rogue_cert),
    )  # fmt: skip
    assert grpc_status(lambda: rogue.is_server_live(client_timeout=10)) in (
        "StatusCode.UNAVAILABLE",
        "StatusCode.DEADLINE_EXCEEDED",
    )
    rogue.close()


def test_plaintext_grpc_is_refused(secured: Secured) -> None:
    channel = grpc.insecure_channel(secured.mesh.grpc_url)
    with pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=3)
    channel.close()


def test_https_with_a_client_certificate_and_the_token(secured: Secured) -> None:
    client = http_client(secured)
    result = client.infer("simple", http_inputs(), headers={**INFER})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), GOOD * 2)
    assert client.is_server_live()
    client.close()


def test_https_client_without_a_certificate_or_the_ca_is_refused(secured: Secured) -> None:
    host, port = secured.mesh.http_url.rsplit(":", 1)
    no_cert = ssl.create_default_context(cafile=str(secured.pki.ca))
    wrong_ca = ssl.create_default_context(cafile=str(secured.pki.other_ca))
    wrong_ca.load_cert_chain(str(secured.pki.client_cert), str(secured.pki.client_key))
    for context in (no_cert, wrong_ca):
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            connection.request("GET", "/v2/health/live")
            connection.getresponse().read()
        connection.close()
    with pytest.raises(ConnectionError):  # plain HTTP on the HTTPS port
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", "/v2/health/live")
        connection.getresponse().read()


# -- tokens -------------------------------------------------------------------------------------------


def test_health_is_open_without_a_token(secured: Secured) -> None:
    grpc_c, http_c = grpc_client(secured), http_client(secured)
    assert grpc_c.is_server_live() and grpc_c.is_server_ready() and grpc_c.is_model_ready("simple")
    assert http_c.is_server_live() and http_c.is_server_ready() and http_c.is_model_ready("simple")
    grpc_c.close()
    http_c.close()


def test_inference_without_or_with_a_wrong_token_is_unauthenticated(secured: Secured) -> None:
    grpc_c, http_c = grpc_client(secured), http_client(secured)
    for headers in (None, {"authorization": "Bearer nope"}, {"authorization": INFER_TOKEN}):
        assert (
            grpc_status(lambda h=headers: grpc_c.infer("simple", grpc_inputs(), headers=h))
            == "StatusCode.UNAUTHENTICATED"
        )
        assert (
            grpc_status(lambda h=headers: grpc_c.get_model_metadata("simple", headers=h))
            == "StatusCode.UNAUTHENTICATED"
        )
        with pytest.raises(InferenceServerException) as err:
            http_c.infer("simple", http_inputs(), headers=headers)
        assert err.value.status() == "401"
    # a stream is refused as a whole
    refused: list[Any] = []
    grpc_c.start_stream(callback=lambda result, error: refused.append(error))
    try:
        grpc_c.async_stream_infer("simple", grpc_inputs())
    except InferenceServerException:
        pass  # the stream may already be closed by the refusal
    assert wait_for(lambda: bool(refused), timeout_s=10)
    grpc_c.stop_stream()
    assert "UNAUTHENTICATED" in str(refused[0].status())
    # the control token opens inference too
    np.testing.assert_array_equal(
        grpc_c.infer("simple", grpc_inputs(), headers={**CONTROL}).as_numpy("OUTPUT0"), GOOD * 2
    )
    grpc_c.close()
    http_c.close()


def test_control_needs_the_control_token(secured: Secured) -> None:
    grpc_c, http_c = grpc_client(secured), http_client(secured)
    assert (
        grpc_status(lambda: grpc_c.load_model("simple_identity", headers={**INFER}))
        == "StatusCode.PERMISSION_DENIED"
    )
    assert (
        grpc_status(lambda: grpc_c.get_model_repository_index(headers={**INFER}))
        == "StatusCode.PERMISSION_DENIED"
    )
    assert grpc_status(lambda: grpc_c.unload_model("simple", headers=None)) == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as err:
        http_c.load_model("simple_identity", headers={**INFER})
    assert err.value.status() == "403"
    with pytest.raises(InferenceServerException) as err:
        http_c.unload_model("simple")
    assert err.value.status() == "401"
    assert grpc_c.is_model_ready("simple")  # nothing was unloaded
    grpc_c.load_model("simple_identity", headers={**CONTROL})
    assert grpc_c.is_model_ready("simple_identity")
    http_c.unload_model("simple_identity", headers={**CONTROL})
    index = {
        m["name"]: m for m in grpc_c.get_model_repository_index(headers={**CONTROL}, as_json=True)["models"]
    }
    assert index["simple"]["state"] == "READY"
    grpc_c.close()
    http_c.close()


def test_trace_and_log_settings_need_the_control_token(secured: Secured) -> None:
    grpc_c, http_c = grpc_client(secured), http_client(secured)
    assert (
        grpc_status(lambda: grpc_c.update_trace_settings(settings={"trace_rate": "5"}, headers={**INFER}))
        == "StatusCode.PERMISSION_DENIED"
    )
    assert grpc_status(lambda: grpc_c.get_log_settings(headers=None)) == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as err:
        http_c.update_log_settings({"log_verbose_level": 1}, headers={**INFER})
    assert err.value.status() == "403"
    assert (
        http_c.get_trace_settings(headers={**CONTROL})["trace_rate"] != "5"
    )  # the refused call changed nothing
    assert grpc_c.get_log_settings(headers={**CONTROL}, as_json=True)["settings"]["log_format"] == {
        "string_param": "default"
    }
    grpc_c.close()
    http_c.close()


HOSTILE_NAMES = ["..", "../simple", "simple/../simple", "/etc/passwd", "a\\b", ".hidden", "x\ny"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_model_names_are_refused_over_the_control_api(secured: Secured, name: str) -> None:
    grpc_c = grpc_client(secured)
    for call in (grpc_c.load_model, grpc_c.unload_model):
        with pytest.raises(InferenceServerException) as err:
            call(name, headers={**CONTROL})
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "invalid model name" in err.value.message()
    grpc_c.close()
    host, port = secured.mesh.http_url.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(secured.pki.ca))
    context.load_cert_chain(str(secured.pki.client_cert), str(secured.pki.client_key))
    quoted = urllib.request.quote(name, safe="")
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=20)
    connection.request("POST", f"/v2/repository/models/{quoted}/load", body=b"", headers={**CONTROL})
    response = connection.getresponse()
    # the router never matches a name with '/'; anything else reaches the name check
    assert response.status in (400, 404), (name, response.status)
    response.read()
    connection.close()


def test_grpc_nul_in_a_model_name_is_refused(secured: Secured) -> None:
    channel = grpc.secure_channel(
        secured.mesh.grpc_url,
        grpc.ssl_channel_credentials(
            secured.pki.ca.read_bytes(),
            secured.pki.client_key.read_bytes(),
            secured.pki.client_cert.read_bytes(),
        ),
    )
    load = channel.unary_unary("/inference.GRPCInferenceService/RepositoryModelLoad")
    raw = b"\x0a\x03a\x00b"  # RepositoryModelLoadRequest{model_name: "a\0b"}, field 1
    with pytest.raises(grpc.RpcError) as err:
        load(raw, metadata=tuple(CONTROL.items()), timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    channel.close()


def test_metrics_bind_their_own_address(secured: Secured) -> None:
    port = secured.mesh.metrics_url.rsplit(":", 1)[1].split("/")[0]
    text = urllib.request.urlopen(f"http://{METRICS_HOST}:{port}/metrics", timeout=10).read().decode()
    assert "nv_inference_request_success" in text
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
