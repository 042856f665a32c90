"""config.pbtxt parsing, Triton's completion rules, the errors (with the file path) and the JSON view."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshserve.errors import InvalidArgument
from meshserve.model_config import (
    CONFIG_FILENAME,
    ConfigError,
    complete_config,
    config_from_bytes,
    config_to_json,
    load_config,
    parse_config,
)
from meshserve.pb import model_config_pb2 as mc

RESNET_CONFIG = """
# A realistic Triton config: every block the parser must keep.
platform: "pytorch_libtorch"
max_batch_size: 8
version_policy: { latest { num_versions: 2 } }
input [
  {
    name: "INPUT__0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
  },
  {
    name: "MASK"
    data_type: TYPE_BOOL
    dims: [ -1 ]
    optional: true
  },
  {
    name: "FLAT"
    data_type: TYPE_FP32
    dims: [ 1, 16 ]
    reshape: { shape: [ 16 ] }
  }
]
output [
  {
    name: "OUTPUT__0"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    label_filename: "labels.txt"
  }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { default_timeout_microseconds: 5000000 max_queue_size: 16 }
  priority_levels: 2
  priority_queue_policy { key: 1 value { default_timeout_microseconds: 7000 } }
}
instance_group [
  { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] },
  { kind: KIND_CPU }
]
parameters { key: "ENABLE_JIT" value: { string_value: "false" } }
parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "4" } }
"""


def _write_model(root: Path, name: str, config: str | None) -> Path:
    model_dir = root / name
    model_dir.mkdir(parents=True)
    if config is not None:
        (model_dir / CONFIG_FILENAME).write_text(config, encoding="utf-8")
    return model_dir


def _complete(text: str, name: str = "m") -> mc.ModelConfig:
    config = parse_config(text)
    complete_config(config, name)
    return config


# --------------------------------------------------------------------------------------------------
# Parsing a realistic config
# --------------------------------------------------------------------------------------------------


def test_parses_every_block_of_a_realistic_config(tmp_path: Path) -> None:
    config = load_config(_write_model(tmp_path, "resnet", RESNET_CONFIG))

    assert config.name == "resnet"
    assert config.platform == "pytorch_libtorch"
    assert config.max_batch_size == 8
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert config.version_policy.latest.num_versions == 2

    assert [i.name for i in config.input] == ["INPUT__0", "MASK", "FLAT"]
    first, mask, flat = config.input
    assert first.data_type == mc.TYPE_FP32
    assert first.format == mc.ModelInput.FORMAT_NCHW
    assert list(first.dims) == [3, 224, 224]
    assert not first.optional
    assert mask.optional
    assert list(mask.dims) == [-1]
    assert mask.data_type == mc.TYPE_BOOL
    assert flat.HasField("reshape")
    assert list(flat.reshape.shape) == [16]
    assert not first.HasField("reshape")

    (out,) = config.output
    assert (out.name, out.data_type, list(out.dims)) == ("OUTPUT__0", mc.TYPE_FP32, [1000])
    assert out.label_filename == "labels.txt"

    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    db = config.dynamic_batching
    assert list(db.preferred_batch_size) == [4, 8]
    assert db.max_queue_delay_microseconds == 100
    assert db.default_queue_policy.default_timeout_microseconds == 5_000_000
    assert db.default_queue_policy.max_queue_size == 16
    assert db.priority_levels == 2
    assert db.priority_queue_policy[1].default_timeout_microseconds == 7000

    gpu, cpu = config.instance_group
    assert (gpu.kind, gpu.count, list(gpu.gpus)) == (mc.ModelInstanceGroup.KIND_GPU, 2, [0, 1])
    assert cpu.kind == mc.ModelInstanceGroup.KIND_CPU
    assert cpu.count == 1  # completion: an unset count is 1
    assert gpu.name and cpu.name  # completion names every group

    assert dict(config.parameters.items()).keys() == {"ENABLE_JIT", "INTRA_OP_THREAD_COUNT"}
    assert config.parameters["ENABLE_JIT"].string_value == "false"
    assert config.parameters["INTRA_OP_THREAD_COUNT"].string_value == "4"


def test_serialized_config_round_trips() -> None:
    config = _complete(RESNET_CONFIG, "resnet")
    assert config_from_bytes(config.SerializeToString()) == config


# --------------------------------------------------------------------------------------------------
# Completion
# --------------------------------------------------------------------------------------------------


def test_name_comes_from_the_directory(tmp_path: Path) -> None:
    config = load_config(_write_model(tmp_path, "my_model", 'backend: "python"'))
    assert config.name == "my_model"


def test_matching_name_is_kept() -> None:
    assert _complete('name: "m" backend: "python"', "m").name == "m"


def test_name_mismatch_is_an_error_with_the_path(tmp_path: Path) -> None:
    model_dir = _write_model(tmp_path, "dirname", 'name: "other" backend: "python"')
    with pytest.raises(ConfigError) as info:
        load_config(model_dir)
    message = str(info.value)
    assert str(model_dir / CONFIG_FILENAME) in message
    assert "'other'" in message
    assert "'dirname'" in message


@pytest.mark.parametrize(
    ("platform", "backend", "filename"),
    [
        ("pytorch_libtorch", "pytorch", "model.pt"),
        ("onnxruntime_onnx", "onnxruntime", "model.onnx"),
        ("tensorrt_plan", "tensorrt", "model.plan"),
    ],
)
def test_backend_and_default_filename_from_platform(platform: str, backend: str, filename: str) -> None:
    config = _complete(f'platform: "{platform}"')
    assert config.backend == backend
    assert config.platform == platform
    assert config.default_model_filename == filename


@pytest.mark.parametrize(
    ("backend", "platform", "filename"),
    [
        ("pytorch", "pytorch_libtorch", "model.pt"),
        ("onnxruntime", "onnxruntime_onnx", "model.onnx"),
        ("python", "", "model.py"),
    ],
)
def test_platform_and_default_filename_from_backend(backend: str, platform: str, filename: str) -> None:
    config = _complete(f'backend: "{backend}"')
    assert config.backend == backend
    assert config.platform == platform
    assert config.default_model_filename == filename


def test_explicit_backend_and_filename_are_kept() -> None:
    config = _complete('platform: "onnxruntime_onnx" backend: "onnxruntime" default_model_filename: "x.onnx"')
    assert (config.backend, config.default_model_filename) == ("onnxruntime", "x.onnx")


def test_no_backend_and_no_platform_is_an_error() -> None:
    with pytest.raises(ConfigError, match="set 'backend'"):
        _complete("max_batch_size: 1")
    with pytest.raises(ConfigError, match="set 'backend'"):
        _complete('platform: "unknown_platform"')


def test_default_instance_group_is_one_auto_instance() -> None:
    config = _complete('backend: "python"', "solo")
    (group,) = config.instance_group
    assert group.count == 1
    assert group.kind == mc.ModelInstanceGroup.KIND_AUTO
    assert group.name.startswith("solo")


def test_explicit_instance_group_is_not_replaced() -> None:
    config = _complete('backend: "python" instance_group [{ count: 3 kind: KIND_CPU name: "g" }]')
    (group,) = config.instance_group
    assert (group.count, group.kind, group.name) == (3, mc.ModelInstanceGroup.KIND_CPU, "g")


def test_preferred_batch_size_within_max_is_accepted() -> None:
    config = _complete(
        'backend: "python" max_batch_size: 4 dynamic_batching { preferred_batch_size: [2, 4] }'
    )
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]


def test_zero_max_batch_size_is_valid() -> None:
    assert _complete('backend: "python" max_batch_size: 0').max_batch_size == 0


# --------------------------------------------------------------------------------------------------
# Errors carry the file path
# --------------------------------------------------------------------------------------------------


def _load_error(tmp_path: Path, config: str | None) -> tuple[str, Path]:
    model_dir = _write_model(tmp_path, "m", config)
    with pytest.raises(ConfigError) as info:
        load_config(model_dir)
    assert isinstance(info.value, InvalidArgument)
    message = str(info.value)
    path = model_dir / CONFIG_FILENAME
    assert str(path) in message
    return message, path


def test_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    message, path = _load_error(tmp_path, 'backend: "python"\nmax_batch_size: [oops')
    assert message.startswith(f"{path}: ")
    assert "2:" in message  # protobuf's parse error carries the line number


def test_unknown_field_is_a_syntax_error(tmp_path: Path) -> None:
    message, _ = _load_error(tmp_path, 'backend: "python"\nmax_batch: 4')
    assert "max_batch" in message


def test_missing_config_is_an_error(tmp_path: Path) -> None:
    message, _ = _load_error(tmp_path, None)
    assert "missing" in message


def test_unreadable_config_is_an_error(tmp_path: Path) -> None:
    model_dir = _write_model(tmp_path, "m", None)
    (model_dir / CONFIG_FILENAME).write_bytes(b'backend: "\xff\xfe"')
    with pytest.raises(ConfigError, match="cannot be read") as info:
        load_config(model_dir)
    assert str(model_dir / CONFIG_FILENAME) in str(info.value)


def test_missing_data_type_is_an_error(tmp_path: Path) -> None:
    message, _ = _load_error(tmp_path, 'backend: "python" input [{ name: "IN" dims: [1] }]')
    assert "input 'IN' has no data_type" in message


def test_missing_output_data_type_is_an_error(tmp_path: Path) -> None:
    message, _ = _load_error(tmp_path, 'backend: "python" output [{ name: "OUT" dims: [1] }]')
    assert "output 'OUT' has no data_type" in message


def test_tensor_without_name_is_an_error(tmp_path: Path) -> None:
    message, _ = _load_error(tmp_path, 'backend: "python" input [{ data_type: TYPE_FP32 dims: [1] }]')
    assert "has no name" in message


@pytest.mark.parametrize(
    ("tensors", "expected"),
    [
        (
            'input [{ name: "X" data_type: TYPE_FP32 dims: [1] }, '
            '{ name: "X" data_type: TYPE_FP32 dims: [1] }]',
            "input 'X' is declared twice",
        ),
        (
            'output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }, '
            '{ name: "Y" data_type: TYPE_FP32 dims: [1] }]',
            "output 'Y' is declared twice",
        ),
        (
            'input [{ name: "Z" data_type: TYPE_FP32 dims: [1] }] '
            'output [{ name: "Z" data_type: TYPE_FP32 dims: [1] }]',
            "output 'Z' is declared twice",
        ),
    ],
)
def test_duplicate_tensor_names_are_an_error(tmp_path: Path, tensors: str, expected: str) -> None:
    message, _ = _load_error(tmp_path, f'backend: "python" {tensors}')
    assert expected in message


def test_invalid_dims_are_an_error(tmp_path: Path) -> None:
    message, _ = _load_error(
        tmp_path, 'backend: "python" input [{ name: "X" data_type: TYPE_FP32 dims: [2, 0, -3] }]'
    )
    assert "input 'X' has invalid dims [0, -3]" in message


def test_preferred_batch_size_above_max_is_an_error(tmp_path: Path) -> None:
    message, _ = _load_error(
        tmp_path, 'backend: "python" max_batch_size: 4 dynamic_batching { preferred_batch_size: [2, 8] }'
    )
    assert "preferred_batch_size 8" in message
    assert "(4)" in message


def test_zero_preferred_batch_size_is_an_error(tmp_path: Path) -> None:
    message, _ = _load_error(
        tmp_path, 'backend: "python" max_batch_size: 4 dynamic_batching { preferred_batch_size: [0] }'
    )
    assert "preferred_batch_size 0" in message


def test_negative_max_batch_size_is_an_error(tmp_path: Path) -> None:
    message, _ = _load_error(tmp_path, 'backend: "python" max_batch_size: -1')
    assert "max_batch_size must be >= 0, got -1" in message


def test_parse_config_error_uses_the_given_source() -> None:
    with pytest.raises(ConfigError, match=r"^models/x/config\.pbtxt: "):
        parse_config("not a config", "models/x/config.pbtxt")


# --------------------------------------------------------------------------------------------------
# JSON as Triton shows it
# --------------------------------------------------------------------------------------------------


def test_config_to_json_uses_proto_field_names_and_int_dims() -> None:
    data = config_to_json(_complete(RESNET_CONFIG, "resnet"))

    assert data["name"] == "resnet"
    assert data["max_batch_size"] == 8
    assert data["default_model_filename"] == "model.pt"  # proto name, not defaultModelFilename
    assert "defaultModelFilename" not in data and "maxBatchSize" not in data

    first, mask, flat = data["input"]
    assert first["dims"] == [3, 224, 224]  # int64 → numbers, not strings
    assert all(type(d) is int for d in first["dims"])
    assert first["data_type"] == "TYPE_FP32"
    assert first["format"] == "FORMAT_NCHW"
    assert mask["dims"] == [-1]
    assert mask["optional"] is True
    assert flat["reshape"] == {"shape": [16]}
    assert type(flat["reshape"]["shape"][0]) is int
    assert data["output"][0]["dims"] == [1000]
    assert data["output"][0]["label_filename"] == "labels.txt"
    assert data["version_policy"] == {"latest": {"num_versions": 2}}


def test_config_to_json_nests_dynamic_batching_with_numeric_uint64() -> None:
    db = config_to_json(_complete(RESNET_CONFIG, "resnet"))["dynamic_batching"]
    assert db["preferred_batch_size"] == [4, 8]
    assert db["max_queue_delay_microseconds"] == 100  # uint64: a number
    assert db["priority_levels"] == 2
    assert db["default_priority_level"] == 0
    assert db["preserve_ordering"] is False
    assert db["default_queue_policy"]["default_timeout_microseconds"] == 5_000_000
    assert db["default_queue_policy"]["max_queue_size"] == 16
    assert db["default_queue_policy"]["timeout_action"] == "REJECT"
    # a map whose values are messages holding uint64 fields
    assert db["priority_queue_policy"]["1"]["default_timeout_microseconds"] == 7000


def test_config_to_json_prints_every_field_even_when_default() -> None:
    data = config_to_json(_complete('backend: "python"', "tiny"))
    for key, value in {
        "name": "tiny",
        "platform": "",
        "backend": "python",
        "runtime": "",
        "max_batch_size": 0,
        "input": [],
        "output": [],
        "batch_input": [],
        "batch_output": [],
        "default_model_filename": "model.py",
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": {},
        "model_warmup": [],
    }.items():
        assert data[key] == value, key
    (group,) = data["instance_group"]
    assert group["count"] == 1
    assert group["kind"] == "KIND_AUTO"
    assert group["gpus"] == []
    assert group["passive"] is False


def test_config_to_json_parameters_and_instance_groups() -> None:
    data = config_to_json(_complete(RESNET_CONFIG, "resnet"))
    assert data["parameters"]["ENABLE_JIT"] == {"string_value": "false"}
    gpu, cpu = data["instance_group"]
    assert gpu["gpus"] == [0, 1]
    assert gpu["count"] == 2
    assert gpu["kind"] == "KIND_GPU"
    assert cpu["kind"] == "KIND_CPU"


def test_config_to_json_converts_int64_inside_message_maps() -> None:
    config = _complete(
        'backend: "python" optimization { cuda { graph_spec { batch_size: 2 '
        'input { key: "X" value { dim: [4, 5] } } } } }'
    )
    spec = config_to_json(config)["optimization"]["cuda"]["graph_spec"][0]
    assert spec["input"]["X"]["dim"] == [4, 5]
    assert all(type(d) is int for d in spec["input"]["X"]["dim"])


def test_config_to_json_specific_versions_are_numbers() -> None:
    config = _complete('backend: "python" version_policy { specific { versions: [1, 3] } }')
    assert config_to_json(config)["version_policy"] == {"specific": {"versions": [1, 3]}}
