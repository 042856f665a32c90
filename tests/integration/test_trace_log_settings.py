"""Triton's trace and logging extensions through a real mesh with the real tritonclient (gRPC and HTTP):
global and per-model trace settings, clearing, Triton's errors, tracing turned on at run time into a
``trace_file`` in ``--log-dir`` with ``trace_rate`` / ``trace_count`` visible in the spans written,
a client's ``traceparent`` joining the gateway's span to the client's trace, and log settings applied by
every service of the mesh."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra is not installed")

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import Mesh, build_repository, start_mesh, wait_for


@pytest.fixture(scope="module")
def settings_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Path]]:
    base = tmp_path_factory.mktemp("settings")
    repository = base / "models"
    repository.mkdir()
    source = build_repository(base / "all")
    for model in ("simple", "simple_identity"):
        (source / model).rename(repository / model)
    log_dir = base / "logs"
    log_dir.mkdir()
    previous = os.environ.pop("MESHSERVE_TRACING", None)  # tracing starts off: a client turns it on
    try:
        mesh = start_mesh(repository, base / "mesh.log", "--log-dir", str(log_dir))
    finally:
        if previous is not None:
            os.environ["MESHSERVE_TRACING"] = previous
    try:
        yield mesh, log_dir
    finally:
        code = mesh.stop()
        assert code == 0, mesh.log()[-3000:]


def _grpc_settings(client: grpcclient.InferenceServerClient, model: str = "") -> dict[str, Any]:
    raw = client.get_trace_settings(model_name=model, as_json=True)["settings"]
    return {key: value.get("value", []) for key, value in raw.items()}


def _post(mesh: Mesh, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://{mesh.http_url}{path}", data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _infer(
    client: grpcclient.InferenceServerClient, request_id: str, headers: dict[str, str] | None = None
) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    result = client.infer("simple", inputs, request_id=request_id, headers=headers)
    assert (result.as_numpy("OUTPUT0") == 2 * a).all()


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    spans = []
    for line in path.read_text().splitlines():
        if line.strip():
            spans.append(json.loads(line))
    return spans


def _named(spans: list[dict[str, Any]], name: str, prefix: str) -> list[dict[str, Any]]:
    return [
        s
        for s in spans
        if s["name"] == name and str(s["attributes"].get("meshserve.request_id", "")).startswith(prefix)
    ]


def test_extensions_are_advertised(settings_mesh: tuple[Mesh, Path]) -> None:
    mesh, _ = settings_mesh
    client = httpclient.InferenceServerClient(mesh.http_url)
    extensions = client.get_server_metadata()["extensions"]
    client.close()
    assert "trace" in extensions and "logging" in extensions


def test_global_and_model_trace_settings_merge_and_clear(settings_mesh: tuple[Mesh, Path]) -> None:
    mesh, _ = settings_mesh
    grpc_client = grpcclient.InferenceServerClient(mesh.grpc_url)
    http_client = httpclient.InferenceServerClient(mesh.http_url)
    try:
        initial = http_client.get_trace_settings()
        assert initial["trace_level"] == ["OFF"]
        assert initial["trace_rate"] == "1000" and initial["trace_count"] == "-1"
        assert initial["trace_mode"] == "opentelemetry"

        # a model's own setting; the keys it did not set follow the global ones
        updated = grpc_client.update_trace_settings(
            model_name="simple_identity", settings={"trace_rate": "7"}, as_json=True
        )
        assert updated["settings"]["trace_rate"]["value"] == ["7"]
        assert http_client.get_trace_settings(model_name="simple_identity")["trace_rate"] == "7"
        assert http_client.get_trace_settings()["trace_rate"] == "1000"  # global untouched
        http_client.update_trace_settings(settings={"trace_count": "50"})
        model = _grpc_settings(grpc_client, "simple_identity")
        assert model["trace_rate"] == ["7"] and model["trace_count"] == ["50"]

        # clearing: the model's key falls back to the global value, the global key to its start value
        cleared = http_client.update_trace_settings(
            model_name="simple_identity", settings={"trace_rate": None}
        )
        assert cleared["trace_rate"] == "1000"
        grpc_client.update_trace_settings(settings={"trace_count": None})
        assert _grpc_settings(grpc_client)["trace_count"] == ["-1"]
        # HTTP: a model with an empty body removes every setting of the model
        http_client.update_trace_settings(model_name="simple_identity", settings={"trace_rate": "3"})
        status, body = _post(mesh, "/v2/models/simple_identity/trace/setting", {})
        assert status == 200 and body["trace_rate"] == "1000"
    finally:
        grpc_client.close()
        http_client.close()


def test_bad_trace_settings_are_refused_with_triton_words(settings_mesh: tuple[Mesh, Path]) -> None:
    mesh, _ = settings_mesh
    cases = [
        ("/v2/trace/setting", {"trace_rate": "often"}, "Unable to parse 'trace_rate', got: often"),
        ("/v2/trace/setting", {"trace_count": "-5"}, "Unable to parse 'trace_count', value is out of range"),
        ("/v2/trace/setting", {"trace_level": ["OFF", "TIMESTAMPS"]}, "Expect only one trace level 'OFF'"),
        ("/v2/trace/setting", {"trace_level": ["LOUD"]}, "unknown trace level 'LOUD'"),
        ("/v2/trace/setting", {"trace_colour": "1"}, "unknown trace setting 'trace_colour'"),
        ("/v2/trace/setting", {"trace_file": "../escape.jsonl"}, "outside the log directory"),
        (
            "/v2/models/no_such_model/trace/setting",
            {"trace_rate": "1"},
            "Request for unknown model : no_such_model",
        ),
    ]
    for path, body, expected in cases:
        status, answer = _post(mesh, path, body)
        assert status == 400 and expected in answer["error"], (body, status, answer)
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.update_trace_settings(settings={"trace_rate": "-1"})
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "Unable to parse 'trace_rate', value is out of range" in info.value.message()
    finally:
        client.close()


def test_tracing_turned_on_at_run_time_samples_by_rate_and_count(settings_mesh: tuple[Mesh, Path]) -> None:
    mesh, log_dir = settings_mesh
    trace_file = log_dir / "spans.jsonl"
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    try:
        answer = client.update_trace_settings(
            settings={
                "trace_file": "spans.jsonl",
                "trace_level": ["TIMESTAMPS"],
                "trace_rate": "2",
                "trace_count": "3",
            },
            as_json=True,
        )["settings"]
        assert answer["trace_file"]["value"] == [str(trace_file)]
        assert answer["trace_level"]["value"] == ["TIMESTAMPS"]
        time.sleep(1.0)  # the batcher and the worker start their exporters when their watch sees it
        for i in range(10):
            _infer(client, f"rate-{i}")
        # requests 0, 2, 4 are traced (one in two), then the count of 3 is spent
        assert wait_for(lambda: len(_named(_spans(trace_file), "worker compute", "rate-")) >= 3, timeout_s=20)
        time.sleep(0.5)
        spans = _spans(trace_file)
        traced = sorted(s["attributes"]["meshserve.request_id"] for s in _named(spans, "gateway", "rate-"))
        assert traced == ["rate-0", "rate-2", "rate-4"], traced
        for hop in ("nats request", "batcher queue", "worker compute"):
            assert len(_named(spans, hop, "rate-")) == 3, hop
        assert _grpc_settings(client)["trace_count"] == ["0"]  # none left on this gateway
    finally:
        client.update_trace_settings(
            settings={"trace_level": ["OFF"], "trace_count": None, "trace_rate": None}
        )
        client.close()


def test_a_client_traceparent_joins_its_trace(settings_mesh: tuple[Mesh, Path]) -> None:
    mesh, log_dir = settings_mesh
    trace_file = log_dir / "spans.jsonl"
    grpc_client = grpcclient.InferenceServerClient(mesh.grpc_url)
    try:
        grpc_client.update_trace_settings(
            settings={
                "trace_file": "spans.jsonl",
                "trace_level": ["TIMESTAMPS"],
                "trace_rate": "1",
                "trace_count": "-1",
            }
        )
        time.sleep(0.5)
        trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        _infer(grpc_client, "client-grpc", headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        http_trace = "0af7651916cd43dd8448eb211c80319c"
        request = urllib.request.Request(
            f"http://{mesh.http_url}/v2/models/simple/infer",
            data=json.dumps(
                {
                    "id": "client-http",
                    "inputs": [
                        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
                        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
                    ],
                }
            ).encode(),
            headers={"traceparent": f"00-{http_trace}-b7ad6b7169203331-01"},
        )
        with urllib.request.urlopen(request, timeout=20) as response:
            assert response.status == 200
        assert wait_for(
            lambda: len(_named(_spans(trace_file), "worker compute", "client-")) >= 2, timeout_s=20
        )
        spans = _spans(trace_file)
        (grpc_gateway,) = _named(spans, "gateway", "client-grpc")
        assert grpc_gateway["context"]["trace_id"] == f"0x{trace_id}"
        assert grpc_gateway["parent_id"] == f"0x{parent}"
        (worker,) = _named(spans, "worker compute", "client-grpc")
        assert worker["context"]["trace_id"] == f"0x{trace_id}"  # the whole mesh joined the client's trace
        (http_gateway,) = _named(spans, "gateway", "client-http")
        assert http_gateway["context"]["trace_id"] == f"0x{http_trace}"
    finally:
        grpc_client.update_trace_settings(
            settings={"trace_level": ["OFF"], "trace_rate": None, "trace_count": None}
        )
        grpc_client.close()


def test_trace_level_off_traces_nothing(settings_mesh: tuple[Mesh, Path]) -> None:
    mesh, log_dir = settings_mesh
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    try:
        client.update_trace_settings(settings={"trace_level": ["OFF"]})
        for i in range(3):
            _infer(client, f"off-{i}")
        time.sleep(1.0)
        assert _named(_spans(log_dir / "spans.jsonl"), "gateway", "off-") == []
        assert _named(_spans(log_dir / "spans.jsonl"), "worker compute", "off-") == []
    finally:
        client.close()


def test_log_settings_apply_to_every_service(settings_mesh: tuple[Mesh, Path]) -> None:
    mesh, log_dir = settings_mesh
    grpc_client = grpcclient.InferenceServerClient(mesh.grpc_url)
    http_client = httpclient.InferenceServerClient(mesh.http_url)
    log_file = log_dir / "mesh.log"
    try:
        initial = http_client.get_log_settings()
        assert initial == {
            "log_file": "",
            "log_info": True,
            "log_warning": True,
            "log_error": True,
            "log_verbose_level": 0,
            "log_format": "default",
        }
        updated = grpc_client.update_log_settings(
            {"log_file": "mesh.log", "log_format": "ISO8601", "log_verbose_level": 1}, as_json=True
        )["settings"]
        assert updated["log_file"]["string_param"] == str(log_file)
        assert updated["log_verbose_level"]["uint32_param"] == 1
        assert http_client.get_log_settings()["log_format"] == "ISO8601"

        def services_in_file() -> set[str]:
            if not log_file.exists():
                return set()
            return {
                line.split(" ", 2)[1].split("[")[0]
                for line in log_file.read_text().splitlines()
                if " " in line
            }

        # each process writes one line when it applies the settings: every service did
        assert wait_for(lambda: {"gateway", "batcher", "worker"} <= services_in_file(), timeout_s=20), (
            services_in_file()
        )
        first = log_file.read_text().splitlines()[0]
        assert first[:4].isdigit() and first[10] == "T" and first.split(" ")[0].endswith("Z"), first
    finally:
        http_client.update_log_settings({"log_file": "", "log_format": "default", "log_verbose_level": 0})
        grpc_client.close()
        http_client.close()


def test_bad_log_settings_are_refused(settings_mesh: tuple[Mesh, Path]) -> None:
    mesh, _ = settings_mesh
    cases = [
        ({"log_verbose_level": "loud"}, "'log_verbose_level' must be an integer >= 0"),
        ({"log_verbose_level": -1}, "'log_verbose_level' must be an integer >= 0"),
        ({"log_info": "yes"}, "'log_info' must be a boolean"),
        ({"log_format": "xml"}, "invalid argument for --log_format, got: xml"),
        ({"log_file": "/etc/passwd"}, "outside the log directory"),
        ({"log_colour": True}, "unknown log setting 'log_colour'"),
    ]
    for body, expected in cases:
        status, answer = _post(mesh, "/v2/logging", body)
        assert status == 400 and expected in answer["error"], (body, status, answer)
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.update_log_settings({"log_format": "xml"})
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        client.close()
    assert _post(mesh, "/v2/logging", {})[1]["log_format"] == "default"  # nothing changed


def test_a_gateway_started_later_picks_the_settings_up(
    settings_mesh: tuple[Mesh, Path], tmp_path: Path
) -> None:
    """Settings are the mesh's, not one gateway's: a second gateway started by hand on the same NATS
    reads them at start, and a call on it reaches the first."""
    import subprocess
    import sys
    import threading

    from meshserve.logs import parse_ready_line

    mesh, log_dir = settings_mesh
    first = httpclient.InferenceServerClient(mesh.http_url)
    first.update_trace_settings(model_name="simple", settings={"trace_rate": "11"})
    first.update_log_settings({"log_verbose_level": 2})
    env = {**os.environ, "MESHSERVE_LOG_DIR": str(log_dir)}
    env.pop("MESHSERVE_TRACING", None)
    second = subprocess.Popen(
        [sys.executable, "-m", "meshserve.cli", "gateway", "--nats-url", mesh.nats_url, "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=(tmp_path / "second.log").open("w"), text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    ready: dict[str, Any] = {}

    def read() -> None:
        assert second.stdout is not None
        for line in second.stdout:
            ready.update(parse_ready_line(line) or {})

    threading.Thread(target=read, daemon=True).start()
    try:
        assert wait_for(lambda: "http_port" in ready, timeout_s=60), (tmp_path / "second.log").read_text()[
            -2000:
        ]
        other = httpclient.InferenceServerClient(f"127.0.0.1:{ready['http_port']}")

        def model_rate() -> str:
            try:
                return str(other.get_trace_settings(model_name="simple")["trace_rate"])
            except InferenceServerException:  # it learns the models from NATS a moment after it is up
                return ""

        assert wait_for(lambda: model_rate() == "11", timeout_s=20), model_rate()
        assert other.get_log_settings()["log_verbose_level"] == 2
        other.update_trace_settings(settings={"trace_count": "77"})
        assert wait_for(lambda: first.get_trace_settings()["trace_count"] == "77", timeout_s=10)
        other.close()
    finally:
        second.terminate()
        second.wait(30)
        first.update_trace_settings(model_name="simple", settings={"trace_rate": None})
        first.update_trace_settings(settings={"trace_count": None})
        first.update_log_settings({"log_verbose_level": 0})
        first.close()
    assert second.returncode == 0
