"""What Triton's own decoupled and BLS example clients check, against one mesh serving the models
they expect (tests/triton_example_models, our own code, plus `repeat_int32`): python_backend's
`decoupled/square_client.py`, `bls/{sync,async}_client.py`, `bls_decoupled/{sync,async}_client.py`
and the client repository's `simple_grpc_custom_repeat.py`.  The clients themselves are Triton's
files and are not kept here; docs/ensembles-and-bls.md records how they fare run unchanged."""

from __future__ import annotations

import queue
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh, start_mesh, wait_for

MODELS = ROOT / "tests" / "triton_example_models"


@pytest.fixture(scope="module")
def examples_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("examples")
    repository = base / "models"
    repository.mkdir()
    for model in [*MODELS.iterdir(), ROOT / "examples" / "model_repository" / "repeat_int32"]:
        if model.is_dir():
            shutil.copytree(model, repository / model.name)
    mesh = start_mesh(repository, base / "mesh.log", "--request-timeout-secs", "20")
    try:
        client = grpcclient.InferenceServerClient(mesh.grpc_url)
        names = [p.name for p in repository.iterdir()]
        assert wait_for(lambda: all(client.is_model_ready(m) for m in names), timeout_s=90), mesh.log()[
            -3000:
        ]
        yield mesh
    finally:
        code = mesh.stop()
        assert code == 0, f"meshserve up exited with {code}; log tail:\n{mesh.log()[-3000:]}"


def _stream(mesh: Mesh, calls: list[dict[str, Any]], count: int) -> list[Any]:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    results: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put(error if error is not None else result))
    try:
        for call in calls:
            client.async_stream_infer(**call)
        got = [results.get(timeout=30) for _ in range(count)]
        with pytest.raises(queue.Empty):
            results.get(timeout=0.3)
        return got
    finally:
        client.stop_stream()
        client.close()


def test_square_client_checks(examples_mesh: Mesh) -> None:
    """square_client.py: requests [4], [2], [0], [1] on one stream; n responses of [n] for each, by id."""
    values = [4, 2, 0, 1]
    calls = []
    for i, value in enumerate(values):
        tensor = grpcclient.InferInput("IN", [1], "INT32")
        tensor.set_data_from_numpy(np.array([value], dtype=np.int32))
        calls.append({"model_name": "square_int32", "inputs": [tensor], "request_id": str(i)})
    got = _stream(examples_mesh, calls, sum(values))
    assert not [r for r in got if isinstance(r, Exception)]
    by_id: dict[str, list[int]] = {}
    for result in got:
        by_id.setdefault(result.get_response().id, []).append(int(result.as_numpy("OUT")[0]))
    assert by_id == {str(i): [v] * v for i, v in enumerate(values) if v}


def test_custom_repeat_client_checks(examples_mesh: Mesh) -> None:
    """simple_grpc_custom_repeat.py: 10 responses 100..109, in order."""
    inputs = [
        grpcclient.InferInput("IN", [10], "INT32"),
        grpcclient.InferInput("DELAY", [10], "UINT32"),
        grpcclient.InferInput("WAIT", [1], "UINT32"),
    ]
    inputs[0].set_data_from_numpy(np.arange(100, 110, dtype=np.int32))
    inputs[1].set_data_from_numpy(np.full(10, 20, dtype=np.uint32))
    inputs[2].set_data_from_numpy(np.array([20], dtype=np.uint32))
    got = _stream(examples_mesh, [{"model_name": "repeat_int32", "inputs": inputs}], 10)
    assert [int(r.as_numpy("OUT")[0]) for r in got] == list(range(100, 110))


@pytest.mark.parametrize(("model", "factor"), [("bls_decoupled_sync", 1), ("bls_decoupled_async", 2)])
def test_bls_decoupled_clients_check(examples_mesh: Mesh, model: str, factor: int) -> None:
    """bls_decoupled/{sync,async}_client.py over HTTP: SUM = n * n (sync), 2 * n * n (async)."""
    client = httpclient.InferenceServerClient(examples_mesh.http_url)
    for value in (4, 2, 0, 1):
        tensor = httpclient.InferInput("IN", [1], "INT32")
        tensor.set_data_from_numpy(np.array([value], dtype=np.int32))
        result = client.infer(
            model, [tensor], request_id="1", outputs=[httpclient.InferRequestedOutput("SUM")]
        )
        assert result.as_numpy("SUM").tolist() == [factor * value * value]


def _bls_inputs(a: np.ndarray, b: np.ndarray, callee: str | None) -> list[Any]:
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"), httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    if callee is not None:
        inputs.append(httpclient.InferInput("MODEL_NAME", [1], "BYTES"))
        inputs[2].set_data_from_numpy(np.array([callee], dtype=np.object_))
    return inputs


def test_bls_sync_client_checks(examples_mesh: Mesh) -> None:
    """bls/sync_client.py: through `add_sub`, then `pytorch`; an undefined model is an error."""
    client = httpclient.InferenceServerClient(examples_mesh.http_url)
    rng = np.random.default_rng(5)
    a, b = rng.random(4, dtype=np.float32), rng.random(4, dtype=np.float32)
    for callee in ("add_sub", "pytorch"):
        result = client.infer("bls_sync", _bls_inputs(a, b, callee))
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    with pytest.raises(InferenceServerException) as info:
        client.infer("bls_sync", _bls_inputs(a, b, "undefined_model"))
    assert "model 'undefined_model' is not served" in info.value.message()


def test_bls_async_client_checks(examples_mesh: Mesh) -> None:
    """bls/async_client.py: the sum from `add_sub` and the difference from `pytorch`, called at once."""
    client = httpclient.InferenceServerClient(examples_mesh.http_url)
    rng = np.random.default_rng(6)
    a, b = rng.random(4, dtype=np.float32), rng.random(4, dtype=np.float32)
    result = client.infer("bls_async", _bls_inputs(a, b, None))
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# ensemble_image_client.py: preprocess_inception_ensemble (image bytes → top classes, with labels)
# --------------------------------------------------------------------------------------------------

LABELS = ("red", "green", "blue", "dark")
COLOURS = {"a_red.ppm": (200, 30, 90), "b_green.ppm": (10, 240, 60), "c_grey.pgm": (20, 20, 20)}
"""Solid images, so their scores are exact: channel means and 1 - the overall mean."""


def _image_file(path: Any, rgb: tuple[int, int, int]) -> bytes:
    """A solid 13x10 binary PPM (or PGM for a grey .pgm), written to ``path``; its bytes."""
    if str(path).endswith(".pgm"):
        data = b"P5\n# grey\n13 10\n255\n" + bytes([rgb[0]]) * 130
    else:
        data = b"P6 13 10 255\n" + bytes(rgb) * 130
    path.write_bytes(data)
    return data


def _expected(rgb: tuple[int, int, int], count: int) -> list[tuple[float, int, str]]:
    scores = [c / 255 for c in rgb] + [1 - sum(rgb) / (3 * 255)]
    order = sorted(range(4), key=lambda i: (-scores[i], i))[:count]
    return [(scores[i], i, LABELS[i]) for i in order]


def _check_classes(got: np.ndarray, rgbs: list[tuple[int, int, int]], count: int) -> None:
    assert got.shape == (len(rgbs), min(count, 4))
    for row, rgb in zip(got, rgbs, strict=True):
        parsed = [(item.decode() if isinstance(item, bytes) else item).split(":") for item in row]
        expected = _expected(rgb, count)
        assert [(int(p[1]), p[2]) for p in parsed] == [(i, label) for _, i, label in expected]
        for p, (value, _, _) in zip(parsed, expected, strict=True):
            assert len(p) == 3 and p[0] == f"{float(p[0]):f}"  # six decimals, as Triton prints
            assert abs(float(p[0]) - value) < 1e-5


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("count", [1, 3])
def test_ensemble_image_client_checks(examples_mesh: Mesh, tmp_path: Any, protocol: str, count: int) -> None:
    """ensemble_image_client.py: 1 input in metadata and config, [batch, 1] BYTES of image files,
    every output requested with class_count; prints value (index) = label per class."""
    model = "preprocess_inception_ensemble"
    files = sorted(COLOURS)
    batch = np.stack([np.array([_image_file(tmp_path / f, COLOURS[f])], dtype=bytes) for f in files])
    rgbs = [COLOURS[f] for f in files]
    if protocol == "grpc":
        gclient = grpcclient.InferenceServerClient(examples_mesh.grpc_url)
        metadata, config = gclient.get_model_metadata(model), gclient.get_model_config(model).config
        assert len(metadata.inputs) == 1 and len(config.input) == 1 and config.max_batch_size >= 3
        names = [o.name for o in metadata.outputs]
        ginput = grpcclient.InferInput(metadata.inputs[0].name, list(batch.shape), "BYTES")
        ginput.set_data_from_numpy(batch)
        outputs = [grpcclient.InferRequestedOutput(n, class_count=count) for n in names]
        result: Any = gclient.infer(model, [ginput], outputs=outputs)
    else:
        hclient = httpclient.InferenceServerClient(examples_mesh.http_url)
        hmeta, hconfig = hclient.get_model_metadata(model), hclient.get_model_config(model)
        assert len(hmeta["inputs"]) == 1 and len(hconfig["input"]) == 1 and hconfig["max_batch_size"] >= 3
        names = [o["name"] for o in hmeta["outputs"]]
        hinput = httpclient.InferInput(hmeta["inputs"][0]["name"], list(batch.shape), "BYTES")
        hinput.set_data_from_numpy(batch, binary_data=True)
        houtputs = [httpclient.InferRequestedOutput(n, binary_data=True, class_count=count) for n in names]
        result = hclient.infer(model, [hinput], outputs=houtputs)
    assert names == ["OUTPUT"]
    _check_classes(result.as_numpy("OUTPUT"), rgbs, count)


def test_classification_of_a_plain_model_json_and_more_classes_than_exist(examples_mesh: Mesh) -> None:
    """tiny_classifier called directly: labels from its own directory; N > C gives all C classes;
    HTTP without binary_data answers the class strings in JSON."""
    rgbs = [(90, 180, 30), (250, 250, 240)]
    pixels = np.stack(
        [np.ones((3, 8, 8), dtype=np.float32) * (np.array(c) / 255)[:, None, None] for c in rgbs]
    )
    client = httpclient.InferenceServerClient(examples_mesh.http_url)
    tensor = httpclient.InferInput("PIXELS", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels.astype(np.float32))
    result = client.infer(
        "tiny_classifier",
        [tensor],
        outputs=[httpclient.InferRequestedOutput("SCORES", binary_data=False, class_count=10)],
    )
    assert result.get_output("SCORES")["datatype"] == "BYTES"
    _check_classes(result.as_numpy("SCORES"), rgbs, 10)
    plain = client.infer("tiny_classifier", [tensor]).as_numpy("SCORES")  # without it: the numbers
    assert plain.dtype == np.float32 and plain.shape == (2, 4)


def test_classification_errors_and_metadata(examples_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(examples_mesh.grpc_url)
    assert "classification" in client.get_server_metadata().extensions
    tensor = grpcclient.InferInput("PIXELS", [1, 3, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer(
            "tiny_classifier", [tensor], outputs=[grpcclient.InferRequestedOutput("SCORES", class_count=-2)]
        )
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "must be a positive integer" in info.value.message()
    bad = grpcclient.InferInput("INPUT", [1, 1], "BYTES")
    bad.set_data_from_numpy(np.array([[b"GIF89a not a PPM"]], dtype=bytes))
    with pytest.raises(InferenceServerException) as info:
        client.infer("preprocess_inception_ensemble", [bad])
    assert "binary PGM (P5) or PPM (P6)" in info.value.message()


def test_image_client_checks_on_a_stream(examples_mesh: Mesh) -> None:
    """image_client.py --streaming on tiny_classifier (FORMAT_NCHW, FP32 vector output): the classes
    come back on the stream too (pixels 0..255, the client's scaling NONE)."""
    config = (
        grpcclient.InferenceServerClient(examples_mesh.grpc_url).get_model_config("tiny_classifier").config
    )
    assert config.input[0].format == config.input[0].FORMAT_NCHW
    rgbs = [(12, 200, 7), (128, 64, 250)]
    pixels = np.stack(
        [np.ones((3, 8, 8), dtype=np.float32) * np.array(c, dtype=np.float32)[:, None, None] for c in rgbs]
    )
    tensor = grpcclient.InferInput("PIXELS", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    call = {
        "model_name": "tiny_classifier",
        "inputs": [tensor],
        "outputs": [grpcclient.InferRequestedOutput("SCORES", class_count=2)],
        "request_id": "1",
    }
    (result,) = _stream(examples_mesh, [call], 1)
    assert not isinstance(result, Exception), result
    got = [[item.decode() for item in row] for row in result.as_numpy("SCORES")]
    assert got == [["200.000000:1:green", "12.000000:0:red"], ["250.000000:2:blue", "128.000000:0:red"]]
