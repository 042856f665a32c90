"""The caffe backend on the example LeNet (examples/build_caffe.py) and on broken copies of it,
through OpenCV's DNN module; its outputs against the numpy reference of the same seeded weights."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from meshserve.errors import InvalidArgument, MeshError, Unavailable
from meshserve.model_config import CONFIG_FILENAME, complete_config, config_to_json, load_config
from meshserve.pb import caffe_net_pb2 as cp
from workers.backends import create_backend
from workers.backends.base import ConfigCompleter, LoadContext, Request
from workers.backends.caffe_backend import INSTALL_HINT, CaffeBackend, import_cv2, opencv_message

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "caffe_repository" / "lenet_caffe"
RNG = np.random.default_rng(5)
HAS_CV2 = importlib.util.find_spec("cv2") is not None
needs_cv2 = pytest.mark.skipif(not HAS_CV2, reason="cv2 is not importable (install meshserve[caffe])")


@pytest.fixture(scope="module")
def build_caffe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_caffe", ROOT / "examples" / "build_caffe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_example(tmp_path: Path, name: str = "lenet_caffe", config: str | None = None) -> Path:
    target = tmp_path / name
    shutil.copytree(EXAMPLE, target)
    if config is None:
        (target / CONFIG_FILENAME).unlink()
    else:
        (target / CONFIG_FILENAME).write_text(config)
    return target


def context(directory: Path) -> LoadContext:
    config = load_config(directory)
    return LoadContext(directory.name, 1, directory, config, config_to_json(config), f"{directory.name}_0")


def loaded(directory: Path) -> tuple[CaffeBackend, LoadContext]:
    backend = CaffeBackend()
    ctx = context(directory)
    backend.auto_complete_config(ctx)
    complete_config(ctx.config, directory.name)
    backend.load(ctx)
    return backend, ctx


def images(rows: int) -> np.ndarray:
    return RNG.standard_normal((rows, 1, 28, 28)).astype(np.float32)


def test_committed_example_is_what_the_script_builds(build_caffe: ModuleType, tmp_path: Path) -> None:
    built = build_caffe.build(tmp_path)
    for relative in ("config.pbtxt", "1/model.prototxt", "1/model.caffemodel"):
        assert (built / relative).read_bytes() == (EXAMPLE / relative).read_bytes(), (
            f"examples/caffe_repository/lenet_caffe/{relative} is stale: run `python examples/build_caffe.py`"
        )


def test_caffemodel_holds_the_seeded_weights_in_caffe_layout(build_caffe: ModuleType) -> None:
    net = cp.NetParameter()
    net.ParseFromString((EXAMPLE / "1" / "model.caffemodel").read_bytes())
    weights = build_caffe.lenet_weights()
    assert [layer.name for layer in net.layer] == list(weights)
    for layer in net.layer:
        for blob, array in zip(layer.blobs, weights[layer.name], strict=True):
            assert tuple(blob.shape.dim) == array.shape
            np.testing.assert_array_equal(np.array(blob.data, np.float32).reshape(array.shape), array)


def test_reference_is_a_probability_per_row(build_caffe: ModuleType) -> None:
    prob = build_caffe.lenet_reference(images(3))
    assert prob.shape == (3, 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1, rtol=1e-5)
    assert not np.allclose(prob[0], prob[1])


def test_without_opencv_the_model_is_unavailable_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    with pytest.raises(Unavailable) as err:
        import_cv2()
    assert INSTALL_HINT in str(err.value) and "meshserve[caffe]" in str(err.value)
    backend = create_backend("caffe")  # the module itself imports without OpenCV
    with pytest.raises(Unavailable, match=r"install meshserve\[caffe\]"):
        backend.load(context(copy_example(tmp_path, config=(EXAMPLE / CONFIG_FILENAME).read_text())))


def test_opencv_message_is_one_line_without_the_source_path() -> None:
    raw = "OpenCV(4.14.0) /io/opencv/modules/dnn/src/x.cpp:12: error: (-2:Unspecified error) FAILED:\n  bad   thing"
    assert opencv_message(Exception(raw)) == "(-2:Unspecified error) FAILED: bad thing"
    assert opencv_message(Exception("plain")) == "plain"


@needs_cv2
def test_example_matches_the_numpy_reference(build_caffe: ModuleType, tmp_path: Path) -> None:
    backend, _ = loaded(copy_example(tmp_path, config=(EXAMPLE / CONFIG_FILENAME).read_text()))
    assert isinstance(backend, ConfigCompleter)
    x = images(3)
    [result] = backend.execute([Request("r", {"data": x}, batch_size=3)])
    assert result.error is None
    np.testing.assert_allclose(result.outputs["prob"], build_caffe.lenet_reference(x), rtol=1e-4, atol=1e-6)
    assert result.outputs["prob"].dtype == np.float32


@needs_cv2
def test_a_batch_is_one_forward_pass_split_back_by_rows(build_caffe: ModuleType, tmp_path: Path) -> None:
    backend, _ = loaded(copy_example(tmp_path, config=(EXAMPLE / CONFIG_FILENAME).read_text()))
    sent = [images(rows) for rows in (1, 3, 2)]
    results = backend.execute([Request(f"r{i}", {"data": x}, batch_size=len(x)) for i, x in enumerate(sent)])
    firsts = [r.outputs["prob"].copy() for r in results]
    for x, result in zip(sent, results, strict=True):
        assert result.error is None and result.outputs["prob"].shape == (len(x), 10)
        np.testing.assert_allclose(
            result.outputs["prob"], build_caffe.lenet_reference(x), rtol=1e-4, atol=1e-6
        )
    backend.execute([Request("later", {"data": images(4)}, batch_size=4)])
    for first, result in zip(firsts, results, strict=True):  # outputs are not views OpenCV reuses
        np.testing.assert_array_equal(first, result.outputs["prob"])


@needs_cv2
def test_config_less_model_is_completed_from_the_prototxt(build_caffe: ModuleType, tmp_path: Path) -> None:
    backend, ctx = loaded(copy_example(tmp_path, "auto"))
    config = ctx.config
    assert (config.backend, config.platform, config.max_batch_size) == ("caffe", "caffe", 4)
    assert config.HasField("dynamic_batching")
    assert [(t.name, list(t.dims)) for t in config.input] == [("data", [1, 28, 28])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("prob", [10])]
    x = images(2)
    [result] = backend.execute([Request("r", {"data": x}, batch_size=2)])
    np.testing.assert_allclose(result.outputs["prob"], build_caffe.lenet_reference(x), rtol=1e-4, atol=1e-6)


@needs_cv2
def test_intermediate_blobs_and_other_file_names(tmp_path: Path) -> None:
    directory = copy_example(
        tmp_path,
        config='platform: "caffe" max_batch_size: 2 default_model_filename: "w.caffemodel" '
        'parameters { key: "prototxt_filename" value: { string_value: "deploy.prototxt" } } '
        'parameters { key: "num_threads" value: { string_value: "1" } } '
        'input [ { name: "data" data_type: TYPE_FP32 dims: [1, 28, 28] } ] '
        'output [ { name: "conv1" data_type: TYPE_FP32 dims: [4, 24, 24] }, '
        '{ name: "prob" data_type: TYPE_FP32 dims: [10] } ]',
    )
    (directory / "1" / "model.caffemodel").rename(directory / "1" / "w.caffemodel")
    (directory / "1" / "model.prototxt").rename(directory / "1" / "deploy.prototxt")
    backend, _ = loaded(directory)
    [result] = backend.execute([Request("r", {"data": images(2)}, requested_outputs=["conv1"], batch_size=2)])
    assert list(result.outputs) == ["conv1"]
    assert (result.outputs["conv1"] >= 0).all()  # conv1 is the blob after the in-place ReLU


def _expect_load_error(directory: Path, message: str) -> None:
    with pytest.raises(MeshError) as err:
        loaded(directory)
    assert message in str(err.value), str(err.value)


@needs_cv2
@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: (d / "1" / "model.caffemodel").unlink(), "model weights (caffemodel) file"),
        (lambda d: (d / "1" / "model.prototxt").unlink(), "model net (prototxt) file"),
        (
            lambda d: (d / "1" / "model.caffemodel").write_bytes(b"\x0a\xff\xff\xff not a NetParameter"),
            "OpenCV cannot load model.prototxt + model.caffemodel: (-2:Unspecified error) FAILED: "
            "ReadProtoFromBinaryFile",
        ),
        (
            lambda d: (d / "1" / "model.prototxt").write_text("layer { name: "),
            "model.prototxt is not a Caffe prototxt",
        ),
        (
            lambda d: (d / "1" / "model.prototxt").write_text(
                (d / "1" / "model.prototxt").read_text().replace("num_output: 10", "num_output: 12")
            ),
            "the net does not run on inputs of shape",
        ),
        (
            lambda d: (d / "1" / "model.prototxt").write_text(
                (d / "1" / "model.prototxt").read_text().replace('type: "ReLU"', 'type: "NoSuchLayer"', 1)
            ),
            'Can\'t create layer "relu1" of type "NoSuchLayer"',  # a layer OpenCV lacks
        ),
    ],
)
def test_broken_files_are_refused_with_the_reason(tmp_path: Path, break_it: object, message: str) -> None:
    directory = copy_example(tmp_path, config=(EXAMPLE / CONFIG_FILENAME).read_text())
    break_it(directory)  # type: ignore[operator]
    _expect_load_error(directory, message)


@needs_cv2
@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "dims: [ 10 ]",
            "dims: [ 12 ]",
            "output 'prob': the config's dims [12] do not match the net's shape [-1, 10]",
        ),
        (
            'name: "data"',
            'name: "INPUT__0"',
            "input 'INPUT__0' is not an input of the net (its inputs: data)",
        ),
        (
            "TYPE_FP32 dims: [ 10 ]",
            "TYPE_INT32 dims: [ 10 ]",
            "output 'prob' is TYPE_INT32: the caffe backend serves TYPE_FP32 tensors only",
        ),
        ('string_value: "1"', 'string_value: "many"', "parameter 'num_threads' must be an integer"),
    ],
)
def test_config_contradicting_the_net_is_refused(tmp_path: Path, old: str, new: str, message: str) -> None:
    text = (EXAMPLE / CONFIG_FILENAME).read_text()
    assert old in text
    _expect_load_error(copy_example(tmp_path, config=text.replace(old, new, 1)), message)


@needs_cv2
def test_prototxt_parameter_must_stay_inside_the_version_directory(tmp_path: Path) -> None:
    text = (EXAMPLE / CONFIG_FILENAME).read_text() + (
        'parameters { key: "prototxt_filename" value: { string_value: "../../x.prototxt" } }\n'
    )
    with pytest.raises(InvalidArgument, match="must be a path inside the version directory"):
        loaded(copy_example(tmp_path, config=text))
