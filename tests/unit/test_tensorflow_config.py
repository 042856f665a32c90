"""The tensorflow backend's config rules without TensorFlow: signature -> config auto-complete, the
load-time check against the signature, and how the core reads a config-less SavedModel directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshserve.harness import ROOT
from meshserve.model_config import ConfigError, load_config, needs_auto_complete, parse_config
from meshserve.pb import model_config_pb2 as mc
from meshserve.repository import scan_repository
from workers.backends.tensorflow_config import (
    DEFAULT_MAX_BATCH_SIZE,
    SignatureTensor,
    check_against_signature,
    complete_from_signature,
    config_type_of,
)


def t(name: str, dims: tuple[int, ...] | None, data_type: str = "TYPE_FP32") -> SignatureTensor:
    return SignatureTensor(name, data_type, dims)


def bare(text: str = "") -> mc.ModelConfig:
    return parse_config('name: "m" platform: "tensorflow_savedmodel" backend: "tensorflow" ' + text)


ADD_SUB_IN = [t("INPUT1", (-1, 16)), t("INPUT0", (-1, 16))]  # a signature is a map: any order
ADD_SUB_OUT = [t("OUTPUT1", (-1, 16)), t("OUTPUT0", (-1, 16))]

ADD_SUB_CONFIG = """
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
"""


def described(config: mc.ModelConfig) -> list[tuple[str, str, list[int]]]:
    return [
        (io.name, mc.DataType.Name(io.data_type), list(io.dims)) for io in [*config.input, *config.output]
    ]


# -- auto-complete ----------------------------------------------------------------------------------


def test_batchable_signature_completes_in_key_order_with_default_batching() -> None:
    config = bare()
    assert complete_from_signature(config, ADD_SUB_IN, ADD_SUB_OUT)
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE == 4
    assert described(config) == [
        ("INPUT0", "TYPE_FP32", [16]),
        ("INPUT1", "TYPE_FP32", [16]),
        ("OUTPUT0", "TYPE_FP32", [16]),
        ("OUTPUT1", "TYPE_FP32", [16]),
    ]
    assert config.HasField("dynamic_batching")


def test_fixed_first_dim_does_not_batch_and_keeps_full_dims() -> None:
    config = bare()
    complete_from_signature(config, [t("x", (3, 16), "TYPE_INT64")], [t("y", (3,), "TYPE_BOOL")])
    assert config.max_batch_size == 0
    assert described(config) == [("x", "TYPE_INT64", [3, 16]), ("y", "TYPE_BOOL", [3])]
    assert config.WhichOneof("scheduling_choice") is None


def test_non_batching_signature_with_max_batch_size_names_the_signature() -> None:
    config = bare("max_batch_size: 8")
    with pytest.raises(ConfigError) as err:
        complete_from_signature(config, [t("x", (3,))], [t("y", (3,))], "serving2")
    assert str(err.value).startswith("SavedModel signature 'serving2': ")
    assert "does not support batching while non-zero max_batch_size" in str(err.value)


def test_only_outputs_are_filled_when_inputs_are_listed() -> None:
    config = bare('max_batch_size: 2 input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]')
    assert needs_auto_complete(config)
    complete_from_signature(config, ADD_SUB_IN, ADD_SUB_OUT)
    assert [io.name for io in config.input] == ["INPUT0"]
    assert [io.name for io in config.output] == ["OUTPUT0", "OUTPUT1"]


def test_unknown_rank_cannot_be_completed_but_a_listed_one_takes_the_config_dims() -> None:
    with pytest.raises(ConfigError, match="input 'x' has no known rank in the model"):
        complete_from_signature(bare(), [t("x", None)], [t("y", (-1, 2))])
    config = bare('max_batch_size: 4 input [ { name: "x" data_type: TYPE_FP32 dims: [ 5 ] } ]')
    complete_from_signature(config, [t("x", None)], [t("y", (-1, 2))])
    assert [(io.name, list(io.dims)) for io in config.output] == [("y", [2])]
    check_against_signature(config, [t("x", None)], [t("y", (-1, 2))])


def test_strings_complete_as_type_string() -> None:
    config = bare()
    complete_from_signature(config, [t("text", (-1,), "TYPE_STRING")], [t("n", (-1,), "TYPE_INT32")])
    assert described(config) == [("text", "TYPE_STRING", [1]), ("n", "TYPE_INT32", [1])]
    assert config.input[0].HasField("reshape")  # one string per row: dims [1], reshape []


def test_tensorflow_dtypes_map_to_config_types() -> None:
    assert [config_type_of(d, "x") for d in ("float32", "float16", "int64", "uint8", "bool", "string")] == [
        "TYPE_FP32",
        "TYPE_FP16",
        "TYPE_INT64",
        "TYPE_UINT8",
        "TYPE_BOOL",
        "TYPE_STRING",
    ]
    with pytest.raises(ConfigError, match="tensor 'x' has type complex64, which the tensorflow backend"):
        config_type_of("complex64", "x")


# -- the check at load --------------------------------------------------------------------------------


def test_matching_config_passes() -> None:
    check_against_signature(bare(ADD_SUB_CONFIG), ADD_SUB_IN, ADD_SUB_OUT)


def test_a_config_may_serve_fewer_outputs_than_the_signature_has() -> None:
    config = bare(ADD_SUB_CONFIG.replace(',\n  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }', ""))
    assert [io.name for io in config.output] == ["OUTPUT0"]
    check_against_signature(config, ADD_SUB_IN, ADD_SUB_OUT)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('name: "INPUT1"', 'name: "INPUT9"'),
            "input 'INPUT9' is not an input of the model (the model's inputs: INPUT0, INPUT1)",
        ),
        (
            ('name: "OUTPUT0" data_type: TYPE_FP32', 'name: "OUTPUT0" data_type: TYPE_INT32'),
            "output 'OUTPUT0': the config says TYPE_INT32, the model has TYPE_FP32",
        ),
        (
            (
                'name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ]',
                'name: "INPUT0" data_type: TYPE_FP32 dims: [ 8 ]',
            ),
            "input 'INPUT0': the config's dims [8] do not match the model's shape [-1, 16]",
        ),
    ],
)
def test_contradicting_config_is_refused_with_the_signature_named(
    change: tuple[str, str], message: str
) -> None:
    config = bare(ADD_SUB_CONFIG.replace(*change))
    with pytest.raises(ConfigError) as err:
        check_against_signature(config, ADD_SUB_IN, ADD_SUB_OUT)
    assert str(err.value).startswith("SavedModel signature 'serving_default': ")
    assert message in str(err.value)


def test_a_signature_input_left_out_of_the_config_is_refused() -> None:
    config = bare(ADD_SUB_CONFIG.replace('{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },', ""))
    with pytest.raises(ConfigError, match=r"the model's input\(s\) \['INPUT0'\] are missing from the config"):
        check_against_signature(config, ADD_SUB_IN, ADD_SUB_OUT)
    with pytest.raises(ConfigError, match=r"\['INPUT0', 'x'\] are missing"):
        check_against_signature(config, [*ADD_SUB_IN, t("x", None)], ADD_SUB_OUT)


def test_batching_needs_a_variable_first_dim() -> None:
    config = bare(ADD_SUB_CONFIG)
    with pytest.raises(ConfigError, match="max_batch_size > 0 needs a variable first dimension"):
        check_against_signature(config, [t("INPUT0", (8, 16)), t("INPUT1", (8, 16))], ADD_SUB_OUT)


# -- the core: a config-less SavedModel directory -----------------------------------------------------


def savedmodel_dir(root: Path, name: str = "m", config: str | None = None) -> Path:
    directory = root / name
    (directory / "1" / "model.savedmodel" / "variables").mkdir(parents=True)
    (directory / "1" / "model.savedmodel" / "saved_model.pb").write_bytes(b"")
    if config is not None:
        (directory / "config.pbtxt").write_text(config)
    return directory


def test_a_directory_with_a_savedmodel_and_no_config_is_a_tensorflow_model(tmp_path: Path) -> None:
    config = load_config(savedmodel_dir(tmp_path))
    assert (config.name, config.backend, config.platform) == ("m", "tensorflow", "tensorflow_savedmodel")
    assert config.default_model_filename == "model.savedmodel"
    assert needs_auto_complete(config)
    [entry] = scan_repository(tmp_path)
    assert entry.auto_complete and entry.error == "" and entry.versions == (1,)


def test_platform_and_backend_fill_each_other_and_the_default_file(tmp_path: Path) -> None:
    by_platform = load_config(savedmodel_dir(tmp_path, "a", 'platform: "tensorflow_savedmodel"'))
    assert (by_platform.backend, by_platform.default_model_filename) == ("tensorflow", "model.savedmodel")
    by_backend = load_config(savedmodel_dir(tmp_path, "b", 'backend: "tensorflow"'))
    assert by_backend.platform == "tensorflow_savedmodel"
    graphdef = load_config(savedmodel_dir(tmp_path, "c", 'platform: "tensorflow_graphdef"'))
    assert (graphdef.backend, graphdef.default_model_filename) == ("tensorflow", "model.graphdef")
    no_backend = load_config(savedmodel_dir(tmp_path, "d", "max_batch_size: 2"))
    assert no_backend.backend == "tensorflow"  # from the model file, as Triton does


def test_without_tensorflow_the_backend_says_what_to_install() -> None:
    """A worker whose Python lacks TensorFlow: creating the backend raises Unsupported with the
    install hint (the model goes UNAVAILABLE with it).  A fresh interpreter that cannot import
    tensorflow stands in for one without the extra."""
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "from meshserve.errors import Unsupported\n"
        "from workers.backends import create_backend\n"
        "try:\n"
        "    create_backend('tensorflow')\n"
        "except Unsupported as exc:\n"
        "    print('UNSUPPORTED', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "UNSUPPORTED the tensorflow backend needs TensorFlow" in done.stdout
    assert "install meshserve[tensorflow]" in done.stdout


def test_no_service_imports_tensorflow_unless_a_model_asks_for_it() -> None:
    """The gateway, the batcher, `meshserve up` and a worker of another backend never import it
    (it is optional and heavy: seconds and hundreds of MB per process)."""
    code = (
        "import sys, meshserve.cli, meshserve.launcher, gateway.app, batcher.app, workers.app\n"
        "from workers.backends import create_backend\n"
        "create_backend('onnxruntime'); create_backend('python')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
