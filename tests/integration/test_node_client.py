"""The Node.js example client (examples/node_client: @grpc/grpc-js + @grpc/proto-loader, stubs from
protos/) calls ServerReady and ModelInfer on `simple` against a real mesh.

Runs when ``node`` is installed and the npm modules are there or ``npm install`` can fetch them
(into the example's own, git-ignored ``node_modules``); skips with the reason otherwise."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from meshserve.harness import ROOT, Mesh

EXAMPLE = ROOT / "examples" / "node_client"
NPM_INSTALL_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def node_client() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        pytest.skip("node is not installed (the Node.js example needs node >= 18)")
    modules = EXAMPLE / "node_modules"
    if not ((modules / "@grpc" / "grpc-js").is_dir() and (modules / "@grpc" / "proto-loader").is_dir()):
        if npm is None:
            pytest.skip("npm is not installed and examples/node_client/node_modules is missing")
        try:
            # the lock file pins every module; `ci` would refuse a lock file that drifted
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=EXAMPLE,
                capture_output=True,
                text=True,
                timeout=NPM_INSTALL_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm ci did not finish in {NPM_INSTALL_TIMEOUT_S}s (no npm registry reachable?)")
        if result.returncode != 0:
            pytest.skip(f"npm ci failed (no npm registry reachable?): {result.stderr.strip()[-500:]}")
    return node


def test_node_client_calls_server_ready_and_model_infer(node_client: str, mesh: Mesh) -> None:
    result = subprocess.run(
        [node_client, "client.js", mesh.grpc_url], cwd=EXAMPLE, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["ready"] is True and answer["ok"] is True
    assert answer["model_name"] == "simple" and answer["model_version"] == "1" and answer["id"] == "node-1"
    assert answer["outputs"]["OUTPUT0"] == [i + 1 for i in range(16)]
    assert answer["outputs"]["OUTPUT1"] == [i - 1 for i in range(16)]


def test_node_client_reports_an_unreachable_server(node_client: str) -> None:
    result = subprocess.run(
        [node_client, "client.js", "127.0.0.1:1"], cwd=EXAMPLE, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "gRPC status 14" in result.stderr  # UNAVAILABLE, said in one line, no stack trace
