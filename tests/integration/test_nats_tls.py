"""The mesh on an external NATS that requires TLS and a token: every service connects with
``--nats-tls-ca`` and the token in the URL, and serves; without the CA the mesh does not come up."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import trustme

from meshserve.harness import ROOT, start_mesh, wait_for
from meshserve.logs import READY_MARKER
from meshserve.nats_server import find_nats_server

TOKEN = "nats-s3cret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    base = tmp_path_factory.mktemp("nats-tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(base / "server.pem"))
    server.private_key_pem.write_to_path(str(base / "server.key"))
    port = _free_port()
    (base / "nats.conf").write_text(
        f'listen: "127.0.0.1:{port}"\nmax_payload: 8388608\n'
        f'authorization {{ token: "{TOKEN}" }}\n'
        f'tls {{\n  cert_file: "{base / "server.pem"}"\n  key_file: "{base / "server.key"}"\n}}\n'
    )
    process = subprocess.Popen(
        [find_nats_server(None), "-c", str(base / "nats.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    assert process.poll() is None, (base / "nats.log").read_text()
    try:
        yield f"tls://{TOKEN}@127.0.0.1:{port}", base / "ca.pem", base
    finally:
        process.terminate()
        process.wait(10)


def _repository(base: Path) -> Path:
    repository = base / "models"
    repository.mkdir(exist_ok=True)
    if not (repository / "simple").exists():
        (repository / "simple").symlink_to(ROOT / "examples" / "model_repository" / "simple")
    return repository


def test_every_service_connects_with_tls_and_a_token(tls_nats: tuple[str, Path, Path]) -> None:
    url, ca, base = tls_nats
    mesh = start_mesh(
        _repository(base),
        base / "mesh.log",
        "--nats-url",
        url,
        "--nats-tls-ca",
        str(ca),
        "--max-message-bytes",
        "4194304",
    )
    try:
        client = grpcclient.InferenceServerClient(mesh.grpc_url)
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [
            grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
            grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        for tensor in inputs:
            tensor.set_data_from_numpy(a)
        np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), 2 * a)
        client.close()
    finally:
        assert mesh.stop() == 0, mesh.log()[-3000:]


def test_without_the_ca_a_service_is_refused_and_says_why(tls_nats: tuple[str, Path, Path]) -> None:
    url, _, base = tls_nats
    log = base / "refused.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "meshserve.cli", "batcher", "--nats-url", url],
            stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
        )  # fmt: skip
    try:
        assert wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in log.read_text(), timeout_s=20), log.read_text()
    finally:
        process.kill()
        stdout, _ = process.communicate(timeout=10)
    assert READY_MARKER.encode() not in stdout  # it never served
