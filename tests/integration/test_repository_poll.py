"""Model control, Triton's POLL mode: the mesh follows the repository while it runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh, start_mesh, wait_for
from meshserve.logs import READY_MARKER

SIMPLE = ROOT / "examples" / "model_repository" / "simple"
POLL_S = 0.5
CHANGE_S = 60.0
"""How long a change may take to show: two polls to settle, then worker start-up (generous: shared CI)."""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("poll") / "models"
    repository.mkdir()
    shutil.copytree(SIMPLE, repository / "simple")
    return repository


@pytest.fixture(scope="module")
def poll_mesh(repo: Path) -> Iterator[Mesh]:
    mesh = start_mesh(
        repo,
        repo.parent / "mesh.log",
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        str(POLL_S),
        "--strict-readiness=false",
    )
    try:
        yield mesh
    finally:
        assert mesh.stop() == 0, mesh.log()[-3000:]


def _add_model(repo: Path, name: str, max_batch_size: int = 8) -> Path:
    """A copy of ``simple`` named ``name``, written elsewhere and moved in at once (as a careful
    deployment does; the settle rule also covers a slow copy)."""
    staging = repo.parent / f"staging-{name}"
    shutil.copytree(SIMPLE, staging)
    _write_config(staging, name, max_batch_size)
    os.replace(staging, repo / name)
    return repo / name


def _write_config(model_dir: Path, name: str, max_batch_size: int) -> None:
    text = (SIMPLE / "config.pbtxt").read_text()
    text = text.replace('name: "simple"', f'name: "{name}"').replace(
        "max_batch_size: 8", f"max_batch_size: {max_batch_size}"
    )
    tmp = model_dir / ".config.pbtxt.tmp"
    tmp.write_text(text)
    os.replace(tmp, model_dir / "config.pbtxt")


def _infer(client: grpcclient.InferenceServerClient, model: str) -> np.ndarray:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return client.infer(model, inputs).as_numpy("OUTPUT0")  # type: ignore[no-any-return]


def _index(client: grpcclient.InferenceServerClient) -> dict[str, dict[str, str]]:
    return {m["name"]: m for m in client.get_model_repository_index(as_json=True).get("models", [])}


def _max_batch(client: grpcclient.InferenceServerClient, model: str) -> int:
    config = client.get_model_config(model, as_json=True)["config"]
    return int(config.get("max_batch_size", 0))


def test_a_model_copied_in_loads_reloads_on_edit_without_failures_and_leaves_when_deleted(
    poll_mesh: Mesh, repo: Path
) -> None:
    client = grpcclient.InferenceServerClient(poll_mesh.grpc_url)
    model_dir = _add_model(repo, "polled")
    assert wait_for(lambda: client.is_model_ready("polled"), timeout_s=CHANGE_S), poll_mesh.log()[-3000:]
    np.testing.assert_array_equal(_infer(client, "polled"), 2 * np.arange(16, dtype=np.int32).reshape(1, 16))
    assert _max_batch(client, "polled") == 8

    # edit the config while a client keeps sending: the reload must not fail one request
    failures: list[str] = []
    served = [0]
    stop = threading.Event()

    def traffic() -> None:
        own = grpcclient.InferenceServerClient(poll_mesh.grpc_url)
        while not stop.is_set():
            try:
                _infer(own, "polled")
                served[0] += 1
            except InferenceServerException as exc:
                failures.append(str(exc))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        assert wait_for(lambda: served[0] > 5, timeout_s=20)
        _write_config(model_dir, "polled", 4)
        changed = wait_for(lambda: _max_batch(client, "polled") == 4, timeout_s=CHANGE_S)
        before = served[0]
        assert wait_for(lambda: served[0] > before + 20, timeout_s=20)  # and keeps serving after
    finally:
        stop.set()
        thread.join(30)
    assert changed, poll_mesh.log()[-3000:]
    assert failures == []
    assert served[0] > 25

    # a new version directory: the policy (latest 1) now serves version 2 only
    shutil.copytree(model_dir / "1", repo.parent / "v2")
    os.replace(repo.parent / "v2", model_dir / "2")
    metadata = lambda: client.get_model_metadata("polled", as_json=True)["versions"]  # noqa: E731
    assert wait_for(lambda: metadata() == ["2"], timeout_s=CHANGE_S), metadata()
    assert client.is_model_ready("polled", "2")
    assert wait_for(lambda: not client.is_model_ready("polled", "1"), timeout_s=10)

    # the directory leaves: the model leaves the index and stops taking requests
    shutil.rmtree(model_dir)
    assert wait_for(lambda: "polled" not in _index(client), timeout_s=CHANGE_S), _index(client)
    assert not client.is_model_ready("polled")
    with pytest.raises(InferenceServerException) as err:
        _infer(client, "polled")
    assert "polled" in err.value.message()
    np.testing.assert_array_equal(_infer(client, "simple"), 2 * np.arange(16, dtype=np.int32).reshape(1, 16))


def test_explicit_load_and_unload_are_refused_as_triton_refuses_them(poll_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(poll_mesh.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        client.load_model("simple")
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert "explicit model load / unload is not allowed if polling is enabled" in err.value.message()
    http = httpclient.InferenceServerClient(poll_mesh.http_url)
    with pytest.raises(InferenceServerException) as http_err:
        http.unload_model("simple")
    assert http_err.value.status() == "503"
    assert client.is_model_ready("simple")


def test_a_broken_model_shows_why_and_the_rest_keeps_serving(poll_mesh: Mesh, repo: Path) -> None:
    client = grpcclient.InferenceServerClient(poll_mesh.grpc_url)
    broken = repo.parent / "staging-broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text("this is { not a config")
    os.replace(broken, repo / "broken")
    state = lambda: _index(client).get("broken", {}).get("state")  # noqa: E731
    assert wait_for(lambda: state() == "UNAVAILABLE", timeout_s=CHANGE_S), _index(client)  # LOADING first
    assert "config.pbtxt" in _index(client)["broken"]["reason"]
    assert client.is_model_ready("simple")
    # fixed in place: it loads
    _write_config(repo / "broken", "broken", 8)
    shutil.copy(SIMPLE / "1" / "model.py", repo / "broken" / "1" / "model.py")
    assert wait_for(lambda: client.is_model_ready("broken"), timeout_s=CHANGE_S), poll_mesh.log()[-3000:]


def test_a_gateway_started_by_hand_later_reads_the_states_from_jetstream(poll_mesh: Mesh, repo: Path) -> None:
    """A broken model is reported once, by the controller, before this gateway exists and with no worker
    to speak for it; the gateway has no --model-repository either.  It learns it from the KV bucket."""
    client = grpcclient.InferenceServerClient(poll_mesh.grpc_url)
    staging = repo.parent / "staging-unreadable"
    staging.mkdir()
    (staging / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: -3\n')
    os.replace(staging, repo / "unreadable")
    state = lambda: _index(client).get("unreadable", {}).get("state")  # noqa: E731
    assert wait_for(lambda: state() == "UNAVAILABLE", timeout_s=CHANGE_S), _index(client)

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshserve.cli",
            "gateway",
            "--nats-url",
            poll_mesh.nats_url,
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        ready = next(
            json.loads(line[len(READY_MARKER) :]) for line in process.stdout if line.startswith(READY_MARKER)
        )
        late = grpcclient.InferenceServerClient(f"127.0.0.1:{ready['grpc_port']}")
        assert wait_for(lambda: "unreadable" in _index(late), timeout_s=10), _index(late)
        row = _index(late)["unreadable"]
        assert row["state"] == "UNAVAILABLE" and "max_batch_size" in row["reason"]
        assert wait_for(lambda: late.is_model_ready("simple"), timeout_s=10)  # workers answer its query
        with pytest.raises(InferenceServerException) as err:
            late.get_model_metadata("unreadable")
        assert "max_batch_size" in err.value.message()
    finally:
        process.terminate()
        process.wait(30)
