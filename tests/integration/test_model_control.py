"""Model control, Triton's EXPLICIT mode: load at start only what is named, then load/unload by API."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh, start_mesh, wait_for


@pytest.fixture(scope="module")
def explicit_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("explicit")
    repository = base / "models"
    repository.mkdir()
    for name in ("simple", "simple_identity"):
        (repository / name).symlink_to(ROOT / "examples" / "model_repository" / name)
    (repository / "fails_to_load").symlink_to(ROOT / "tests" / "models" / "fails_to_load")
    mesh = start_mesh(
        repository, base / "mesh.log", "--model-control-mode", "explicit", "--load-model", "simple"
    )
    try:
        yield mesh
    finally:
        assert mesh.stop() == 0


def _infer_simple(client: grpcclient.InferenceServerClient) -> np.ndarray:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return client.infer("simple", inputs).as_numpy("OUTPUT0")  # type: ignore[no-any-return]


def _index(client: grpcclient.InferenceServerClient) -> dict[str, dict[str, str]]:
    return {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}


def test_only_named_models_load_at_start(explicit_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(explicit_mesh.grpc_url)
    assert client.is_model_ready("simple")
    assert wait_for(lambda: _index(client)["simple_identity"]["state"] == "UNAVAILABLE", timeout_s=10)
    assert _index(client)["simple_identity"]["reason"] == "unloaded"
    assert client.is_server_ready()  # unloaded models do not count against readiness


def test_load_infer_unload_through_the_api(explicit_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(explicit_mesh.grpc_url)
    client.load_model("simple_identity")
    assert client.is_model_ready("simple_identity")
    tensor = grpcclient.InferInput("INPUT0", [1, 2], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=object))
    assert list(client.infer("simple_identity", [tensor]).as_numpy("OUTPUT0").reshape(-1)) == [b"a", b"b"]
    client.unload_model("simple_identity")
    assert wait_for(lambda: not client.is_model_ready("simple_identity"), timeout_s=10)
    with pytest.raises(InferenceServerException) as err:
        client.infer("simple_identity", [tensor])
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    np.testing.assert_array_equal(_infer_simple(client), 2 * np.arange(16, dtype=np.int32).reshape(1, 16))


def test_http_load_and_unload(explicit_mesh: Mesh) -> None:
    client = httpclient.InferenceServerClient(explicit_mesh.http_url)
    client.load_model("simple_identity")
    assert client.is_model_ready("simple_identity")
    client.unload_model("simple_identity")
    assert wait_for(lambda: not client.is_model_ready("simple_identity"), timeout_s=10)


def test_a_model_that_cannot_load_says_why_and_others_keep_serving(explicit_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(explicit_mesh.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        client.load_model("fails_to_load")
    assert "weights file is corrupt" in err.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        client.load_model("no_such_model")
    assert "no_such_model" in unknown.value.message()
    assert client.is_model_ready("simple")


def test_none_mode_refuses_model_control(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        client.load_model("simple")
    assert "--model-control-mode explicit" in err.value.message()


def test_a_reload_serves_throughout(explicit_mesh: Mesh) -> None:
    """Loading a loaded model reloads it: new workers start beside the old, which stop only once the
    new ones are READY — requests sent during the reload all succeed."""
    import threading

    client = grpcclient.InferenceServerClient(explicit_mesh.grpc_url)
    failures: list[BaseException] = []
    served = [0]
    stop = threading.Event()

    def traffic() -> None:
        own = grpcclient.InferenceServerClient(explicit_mesh.grpc_url)
        while not stop.is_set():
            try:
                _infer_simple(own)
                served[0] += 1
            except InferenceServerException as exc:
                failures.append(exc)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        client.load_model("simple")
    finally:
        stop.set()
        thread.join(30)
    assert client.is_model_ready("simple")
    assert served[0] > 0
    assert [str(f) for f in failures] == []


OVERRIDE_CONFIG = {
    "backend": "python",
    "max_batch_size": 4,
    "input": [
        {"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]},
        {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [16]},
    ],
    "output": [
        {"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16]},
        {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [16]},
    ],
}
SIMPLE_MODEL_PY = (ROOT / "examples" / "model_repository" / "simple" / "1" / "model.py").read_bytes()


def _infer(client: grpcclient.InferenceServerClient, model: str) -> np.ndarray:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return client.infer(model, inputs).as_numpy("OUTPUT0")  # type: ignore[no-any-return]


def test_grpc_load_with_config_and_files_creates_a_model(explicit_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(explicit_mesh.grpc_url)
    client.load_model(
        "uploaded", config=json.dumps(OVERRIDE_CONFIG), files={"file:1/model.py": SIMPLE_MODEL_PY}
    )
    assert client.is_model_ready("uploaded")
    np.testing.assert_array_equal(
        _infer(client, "uploaded"), 2 * np.arange(16, dtype=np.int32).reshape(1, 16)
    )
    assert client.get_model_config("uploaded", as_json=True)["config"]["max_batch_size"] == 4
    client.unload_model("uploaded")
    assert wait_for(lambda: "uploaded" not in _index(client), timeout_s=10)  # it was never in the repository


def test_http_load_with_config_and_files_creates_a_model(explicit_mesh: Mesh) -> None:
    client = httpclient.InferenceServerClient(explicit_mesh.http_url)
    client.load_model(
        "uploaded_http", config=json.dumps(OVERRIDE_CONFIG), files={"file:1/model.py": SIMPLE_MODEL_PY}
    )
    assert client.is_model_ready("uploaded_http")
    assert client.get_model_config("uploaded_http")["max_batch_size"] == 4
    client.unload_model("uploaded_http")
    assert wait_for(lambda: not client.is_model_ready("uploaded_http"), timeout_s=10)


@pytest.mark.parametrize("path", ["../escaped.py", "/tmp/absolute.py", "1/../../escaped.py", "1/a\\b"])
def test_override_file_paths_outside_the_model_are_refused(explicit_mesh: Mesh, path: str) -> None:
    client = grpcclient.InferenceServerClient(explicit_mesh.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        client.load_model("evil", config=json.dumps(OVERRIDE_CONFIG), files={f"file:{path}": b"x = 1\n"})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "relative" in err.value.message() or "NUL" in err.value.message()
    assert not Path("/tmp/absolute.py").exists()


def test_override_errors_say_what_is_wrong(explicit_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(explicit_mesh.grpc_url)
    with pytest.raises(InferenceServerException) as no_config:
        client.load_model("orphan", files={"file:1/model.py": SIMPLE_MODEL_PY})
    assert "'config' parameter" in no_config.value.message()
    with pytest.raises(InferenceServerException) as bad_json:
        client.load_model("simple", config="{not json")
    assert "not JSON" in bad_json.value.message()
    with pytest.raises(InferenceServerException) as no_files:
        client.load_model("not_in_repo", config=json.dumps(OVERRIDE_CONFIG))
    assert "file:<version>/<name>" in no_files.value.message()
    for outside in ("../models", "simple/1", ".hidden"):  # never a path outside the repository
        with pytest.raises(InferenceServerException) as escaped:
            client.load_model(outside)
        assert "failed to load" in escaped.value.message()
    assert client.is_model_ready("simple")  # a failed override load leaves the loaded model alone


def test_http_load_body_with_bad_base64_is_a_400(explicit_mesh: Mesh) -> None:
    import urllib.error
    import urllib.request

    body = json.dumps({"parameters": {"config": json.dumps(OVERRIDE_CONFIG), "file:1/model.py": "%%%"}})
    request = urllib.request.Request(
        f"http://{explicit_mesh.http_url}/v2/repository/models/b64/load", data=body.encode(), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 400
    assert "base64" in json.loads(err.value.read())["error"]
    good = json.dumps(
        {
            "parameters": {
                "config": json.dumps(OVERRIDE_CONFIG),
                "file:1/model.py": base64.b64encode(SIMPLE_MODEL_PY).decode(),
            }
        }
    )
    request = urllib.request.Request(
        f"http://{explicit_mesh.http_url}/v2/repository/models/b64/load", data=good.encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200


def test_unload_dependents_of_a_plain_model_unloads_just_it(explicit_mesh: Mesh) -> None:
    client = httpclient.InferenceServerClient(explicit_mesh.http_url)
    client.load_model("simple_identity")
    client.unload_model("simple_identity", unload_dependents=True)
    assert wait_for(lambda: not client.is_model_ready("simple_identity"), timeout_s=10)
    assert client.is_model_ready("simple")


def test_server_metadata_lists_the_model_repository_extension(explicit_mesh: Mesh) -> None:
    extensions = grpcclient.InferenceServerClient(explicit_mesh.grpc_url).get_server_metadata(as_json=True)[
        "extensions"
    ]
    assert "model_repository" in extensions and "model_repository(unload_dependents)" in extensions


def test_a_partial_override_config_is_completed_as_tritons_example_expects(explicit_mesh: Mesh) -> None:
    """An override config replaces config.pbtxt until the next plain load.  Triton's
    simple_*_model_control examples send only ``{"max_batch_size":"16"}``: the backend comes from
    the model file, the tensors from the model's auto_complete_config."""
    client = grpcclient.InferenceServerClient(explicit_mesh.grpc_url)
    client.load_model("simple", config='{"max_batch_size":"16"}')
    assert client.get_model_config("simple").config.max_batch_size == 16
    np.testing.assert_array_equal(_infer(client, "simple"), 2 * np.arange(16, dtype=np.int32).reshape(1, 16))
    with pytest.raises(InferenceServerException) as err:
        client.load_model("simple", config="{}", files={"file:" + "A" * 256: b"a"})
    assert "Invalid file path" in err.value.message()
    assert client.is_server_live()
    client.load_model("simple")
    assert client.get_model_config("simple").config.max_batch_size == 8
