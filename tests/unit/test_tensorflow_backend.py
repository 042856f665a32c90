"""The tensorflow backend on SavedModels built here (and the example ones): load, signature choice,
auto-complete, batching, reshape, strings, and each way a model fails to load or run."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from meshserve.errors import Internal, InvalidArgument, Unsupported
from meshserve.harness import ROOT
from meshserve.model_config import CONFIG_FILENAME, ConfigError, complete_config, config_to_json, load_config
from meshserve.pb import model_config_pb2 as mc
from workers.backends.base import ConfigCompleter, LoadContext, Request

if importlib.util.find_spec("tensorflow") is None:
    pytest.skip(
        "tensorflow is not installed (pip install -e '.[tensorflow]'; the test extra has it)",
        allow_module_level=True,
    )

from workers.backends import create_backend
from workers.backends.tensorflow_backend import TensorFlowBackend, thread_counts

tf: Any = pytest.importorskip("tensorflow")

EXAMPLES = ROOT / "examples" / "tf_model_repository"
RNG = np.random.default_rng(5)


def fp32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def save(directory: Path, module: Any, signatures: dict[str, Any], config: str | None = None) -> Path:
    tf.saved_model.save(module, str(directory / "1" / "model.savedmodel"), signatures=signatures)
    if config is not None:
        (directory / CONFIG_FILENAME).write_text(config)
    return directory


def copy_example(tmp_path: Path, name: str, config: str | None = None) -> Path:
    directory = tmp_path / name
    shutil.copytree(EXAMPLES / name, directory)
    if config is not None:
        (directory / CONFIG_FILENAME).write_text(config)
    return directory


def loaded(directory: Path, device: str = "cpu") -> tuple[TensorFlowBackend, mc.ModelConfig]:
    """What the worker does: auto-complete (when needed), re-check, load."""
    config = load_config(directory)
    backend = create_backend(config.backend)
    assert isinstance(backend, TensorFlowBackend) and isinstance(backend, ConfigCompleter)
    ctx = LoadContext(directory.name, 1, directory, config, config_to_json(config), "m_0", device)
    backend.auto_complete_config(ctx)
    complete_config(config, directory.name)
    backend.load(ctx)
    return backend, config


def dense_reference() -> Callable[[np.ndarray], np.ndarray]:
    spec = importlib.util.spec_from_file_location("build_models", ROOT / "examples" / "build_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dense_reference  # type: ignore[no-any-return]


# -- the example models --------------------------------------------------------------------------------


def test_add_sub_batch_runs_as_one_call_and_splits_by_rows(tmp_path: Path) -> None:
    backend, config = loaded(copy_example(tmp_path, "add_sub_tf"))
    assert config.max_batch_size == 8
    calls = 0
    function = backend._function

    def counting(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return function(**kwargs)

    backend._function = counting
    a, b = [fp32(1, 16), fp32(3, 16)], [fp32(1, 16), fp32(3, 16)]
    requests = [
        Request("r0", {"INPUT0": a[0], "INPUT1": b[0]}, batch_size=1),
        Request("r1", {"INPUT0": a[1], "INPUT1": b[1]}, requested_outputs=["OUTPUT1"], batch_size=3),
    ]
    first, second = backend.execute(requests)
    assert calls == 1
    assert first.error is None and second.error is None
    np.testing.assert_allclose(first.outputs["OUTPUT0"], a[0] + b[0], rtol=1e-6)
    np.testing.assert_allclose(first.outputs["OUTPUT1"], a[0] - b[0], rtol=1e-6)
    assert list(second.outputs) == ["OUTPUT1"]
    np.testing.assert_allclose(second.outputs["OUTPUT1"], a[1] - b[1], rtol=1e-6)


def test_config_less_dense_is_completed_from_the_signature_and_matches_numpy(tmp_path: Path) -> None:
    directory = copy_example(tmp_path, "dense_tf")
    assert not (directory / CONFIG_FILENAME).exists()
    backend, config = loaded(directory)
    assert (config.platform, config.max_batch_size) == ("tensorflow_savedmodel", 4)
    assert [(io.name, list(io.dims)) for io in [*config.input, *config.output]] == [("x", [16]), ("y", [8])]
    assert config.HasField("dynamic_batching")
    x = fp32(3, 16)
    [result] = backend.execute([Request("r", {"x": x}, batch_size=3)])
    np.testing.assert_allclose(result.outputs["y"], dense_reference()(x), rtol=1e-5, atol=1e-6)


def test_thread_parameters_are_read_and_checked() -> None:
    config = mc.ModelConfig()
    config.parameters["TF_NUM_INTRA_THREADS"].string_value = "2"
    assert thread_counts(config) == (2, 0)
    config.parameters["TF_NUM_INTER_THREADS"].string_value = "-1"
    with pytest.raises(
        InvalidArgument, match="'TF_NUM_INTER_THREADS' must be a non-negative integer, got -1"
    ):
        thread_counts(config)
    config.parameters["TF_NUM_INTER_THREADS"].string_value = "two"
    with pytest.raises(InvalidArgument, match="got 'two'"):
        thread_counts(config)


# -- signatures, shapes, strings ------------------------------------------------------------------------


class TwoSignatures(tf.Module):  # type: ignore[misc]
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def double(self, x: Any) -> dict[str, Any]:
        return {"y": x * 2}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def negate(self, x: Any) -> dict[str, Any]:
        return {"y": -x}


def two_signatures(tmp_path: Path, config: str) -> Path:
    module = TwoSignatures()
    return save(tmp_path / "two", module, {"serving_default": module.double, "negate": module.negate}, config)


def test_parameter_tf_signature_def_picks_the_signature_and_scalars_per_row_reshape(tmp_path: Path) -> None:
    """Each row is a scalar: auto-complete writes dims [1] with reshape [] and the backend applies it."""
    directory = two_signatures(
        tmp_path,
        'platform: "tensorflow_savedmodel" '
        'parameters { key: "TF_SIGNATURE_DEF" value: { string_value: "negate" } }',
    )
    backend, config = loaded(directory)
    assert (config.max_batch_size, list(config.input[0].dims)) == (4, [1])
    assert config.input[0].HasField("reshape")
    x = fp32(3, 1)
    [result] = backend.execute([Request("r", {"x": x}, batch_size=3)])
    np.testing.assert_allclose(result.outputs["y"], -x)
    assert result.outputs["y"].shape == (3, 1)


def test_an_unknown_signature_is_refused_naming_the_ones_there(tmp_path: Path) -> None:
    directory = two_signatures(
        tmp_path,
        'backend: "tensorflow" parameters { key: "TF_SIGNATURE_DEF" value: { string_value: "nope" } }',
    )
    with pytest.raises(
        InvalidArgument, match="has no signature 'nope' \\(its signatures: negate, serving_default\\)"
    ):
        loaded(directory)


class Strings(tf.Module):  # type: ignore[misc]
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.string, name="text")])
    def serve(self, text: Any) -> dict[str, Any]:
        return {"upper": tf.strings.upper(text), "length": tf.strings.length(text)}


def test_bytes_tensors_are_tensorflow_strings(tmp_path: Path) -> None:
    module = Strings()
    backend, config = loaded(
        save(tmp_path / "s", module, {"serving_default": module.serve}, 'backend: "tensorflow"')
    )
    assert [mc.DataType.Name(io.data_type) for io in [*config.input, *config.output]] == [
        "TYPE_STRING",
        "TYPE_INT32",
        "TYPE_STRING",
    ]
    text = np.array([[b"ab", b"xyz"]], dtype=object)
    [result] = backend.execute([Request("r", {"text": text}, batch_size=1)])
    assert result.outputs["upper"].tolist() == [[b"AB", b"XYZ"]]
    assert result.outputs["length"].tolist() == [[2, 3]]


class UnknownRank(tf.Module):  # type: ignore[misc]
    @tf.function(input_signature=[tf.TensorSpec(None, tf.int32, name="x")])
    def serve(self, x: Any) -> dict[str, Any]:
        return {"y": x + 1}


def test_unknown_rank_needs_the_config_and_then_serves(tmp_path: Path) -> None:
    module = UnknownRank()
    directory = save(tmp_path / "u", module, {"serving_default": module.serve}, 'backend: "tensorflow"')
    with pytest.raises(ConfigError, match="input 'x' has no known rank in the model"):
        loaded(directory)
    (directory / CONFIG_FILENAME).write_text(
        'backend: "tensorflow" input [ { name: "x" data_type: TYPE_INT32 dims: [ 2 ] } ] '
        'output [ { name: "y" data_type: TYPE_INT32 dims: [ 2 ] } ]'
    )
    backend, _ = loaded(directory)
    [result] = backend.execute([Request("r", {"x": np.array([1, 2], np.int32)})])
    assert result.outputs["y"].tolist() == [2, 3]


# -- bad models and bad configs ----------------------------------------------------------------------


def test_config_contradicting_the_signature_fails_the_load(tmp_path: Path) -> None:
    directory = copy_example(tmp_path, "add_sub_tf")
    text = (directory / CONFIG_FILENAME).read_text()
    (directory / CONFIG_FILENAME).write_text(
        text.replace('name: "INPUT1" data_type: TYPE_FP32', 'name: "INPUT1" data_type: TYPE_INT32')
    )
    with pytest.raises(
        ConfigError, match="input 'INPUT1': the config says TYPE_INT32, the model has TYPE_FP32"
    ):
        loaded(directory)


def test_missing_or_broken_savedmodel(tmp_path: Path) -> None:
    directory = tmp_path / "m"
    (directory / "1").mkdir(parents=True)
    (directory / CONFIG_FILENAME).write_text('platform: "tensorflow_savedmodel" max_batch_size: 2')
    with pytest.raises(InvalidArgument, match=r"SavedModel .*/m/1/model.savedmodel not found"):
        loaded(directory)
    (directory / "1" / "model.savedmodel").write_bytes(b"a file")
    with pytest.raises(InvalidArgument, match="is a file, not a SavedModel directory"):
        loaded(directory)
    (directory / "1" / "model.savedmodel").unlink()
    (directory / "1" / "model.savedmodel").mkdir()
    (directory / "1" / "model.savedmodel" / "saved_model.pb").write_bytes(b"\x00not a saved model")
    with pytest.raises(InvalidArgument, match=r"tensorflow cannot load SavedModel .*model.savedmodel: "):
        loaded(directory)


def test_graphdef_is_refused(tmp_path: Path) -> None:
    directory = copy_example(tmp_path, "add_sub_tf")
    text = (directory / CONFIG_FILENAME).read_text()
    (directory / CONFIG_FILENAME).write_text(text.replace("tensorflow_savedmodel", "tensorflow_graphdef"))
    with pytest.raises(
        Unsupported, match="GraphDef models \\(platform tensorflow_graphdef\\) are not served"
    ):
        loaded(directory)


def test_a_failing_call_answers_every_request_of_the_batch_with_internal(tmp_path: Path) -> None:
    backend, _ = loaded(copy_example(tmp_path, "add_sub_tf"))
    good = {"INPUT0": fp32(1, 16), "INPUT1": fp32(1, 16)}
    bad = {"INPUT0": fp32(1, 15), "INPUT1": fp32(1, 16)}  # past the gateway's checks: add fails
    results = backend.execute([Request("a", bad, batch_size=1), Request("b", bad, batch_size=1)])
    for result in results:
        assert isinstance(result.error, Internal)
        assert str(result.error).startswith("tensorflow model failed: ")
    [alone] = backend.execute([Request("c", good, batch_size=1)])
    assert alone.error is None  # the model keeps serving
