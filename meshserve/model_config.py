"""config.pbtxt → Triton's ``ModelConfig`` message, completed and checked.

Parsing is protobuf's own text format (no hand-written parser).  Completion fills what Triton
fills before a model loads: the name from the directory, the backend from a legacy ``platform``,
the default model file name, and a default ``preferred_batch_size`` rule is left to the batcher.

A model directory without config.pbtxt is accepted when a version directory holds a
``model.onnx`` or a ``model.savedmodel/`` (Triton: the config is optional for ONNX and TensorFlow
SavedModel models): its config starts as name,
backend and platform, and the worker completes inputs, outputs and ``max_batch_size`` from the
graph before it announces the model (``needs_auto_complete``).  This module never opens the model
file itself: the core does not import onnx, onnxruntime or tensorflow.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from meshserve.ensemble import check_structure, is_ensemble
from meshserve.errors import InvalidArgument
from meshserve.pb import model_config_pb2 as mc

__all__ = [
    "AUTO_COMPLETE_OFF_ENV",
    "CONFIG_FILENAME",
    "ConfigError",
    "auto_complete_disabled",
    "complete_config",
    "config_from_bytes",
    "config_to_json",
    "load_config",
    "needs_auto_complete",
    "parse_config",
]

CONFIG_FILENAME = "config.pbtxt"

_PLATFORM_TO_BACKEND = {
    "pytorch_libtorch": "pytorch",
    "onnxruntime_onnx": "onnxruntime",
    "tensorflow_savedmodel": "tensorflow",
    "tensorflow_graphdef": "tensorflow",
    "tensorrt_plan": "tensorrt",
    "caffe": "caffe",
}
_BACKEND_TO_PLATFORM = {
    "pytorch": "pytorch_libtorch",
    "onnxruntime": "onnxruntime_onnx",
    "tensorflow": "tensorflow_savedmodel",
}
_BACKEND_TO_PLATFORM["caffe"] = "caffe"  # Triton never had one: backend and platform are both "caffe"
_DEFAULT_FILENAME = {
    "python": "model.py",
    "pytorch": "model.pt",
    "onnxruntime": "model.onnx",
    "tensorflow": "model.savedmodel",
    "tensorrt": "model.plan",
    "caffe": "model.caffemodel",
}
_PLATFORM_FILENAME = {"tensorflow_graphdef": "model.graphdef"}
"""Platforms whose default model file is not their backend's."""
_AUTO_COMPLETE_BACKENDS = frozenset({"onnxruntime", "tensorflow", "caffe"})
"""Backends whose worker derives inputs/outputs/max_batch_size from the model file (Triton's MR8)."""
_CONFIGLESS_MODEL_FILES = {"model.onnx": "onnxruntime", "model.savedmodel": "tensorflow"}
"""A model file that stands in for a missing config.pbtxt, and the backend it names."""
_CONFIGLESS_MODEL_FILES["model.caffemodel"] = "caffe"  # with model.prototxt beside it


class ConfigError(InvalidArgument):
    """A config.pbtxt that cannot be parsed or does not describe a loadable model."""


def parse_config(text: str, source: str = CONFIG_FILENAME) -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return config


def load_config(model_dir: Path) -> mc.ModelConfig:
    """Read, complete and check ``<model_dir>/config.pbtxt``."""
    path = model_dir / CONFIG_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        config = _config_from_model_file(model_dir)
        if config is None:
            raise ConfigError(
                f"{path}: missing (every model directory needs a config.pbtxt, unless a version "
                f"directory holds a {' or '.join(_CONFIGLESS_MODEL_FILES)} to complete it from)"
            ) from None
        complete_config(config, model_dir.name, str(path))
        return config
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    config = parse_config(text, str(path))
    if not config.backend and not config.platform:
        config.backend = _backend_from_model_files(model_dir)
    complete_config(config, model_dir.name, str(path))
    return config


_MODEL_FILE_BACKENDS = {
    "model.py": "python",
    "model.onnx": "onnxruntime",
    "model.pt": "pytorch",
    "model.savedmodel": "tensorflow",
}
"""Triton fills a config's missing backend from the default model file it finds in a version directory."""
_MODEL_FILE_BACKENDS["model.caffemodel"] = "caffe"


def _backend_from_model_files(model_dir: Path) -> str:
    """The backend a version directory's default model file names, "" when none does."""
    try:
        versions = sorted(c for c in model_dir.iterdir() if c.is_dir() and c.name.isdigit())
    except OSError:
        return ""
    for version in versions:
        for filename, backend in _MODEL_FILE_BACKENDS.items():
            if (version / filename).exists():
                return backend
    return ""


def _config_from_model_file(model_dir: Path) -> mc.ModelConfig | None:
    """The minimal config (name, backend, platform) of a config-less model directory whose version
    directories hold a model file that auto-complete can describe; None when there is none."""
    try:
        children = sorted(model_dir.iterdir())
    except OSError:
        return None
    for child in children:
        if not (child.is_dir() and child.name.isascii() and child.name.isdigit()):
            continue
        for filename, backend in _CONFIGLESS_MODEL_FILES.items():
            if (child / filename).exists():
                return mc.ModelConfig(
                    name=model_dir.name, backend=backend, platform=_BACKEND_TO_PLATFORM[backend]
                )
    return None


AUTO_COMPLETE_OFF_ENV = "MESHSERVE_DISABLE_AUTO_COMPLETE_CONFIG"
"""Set (to true) by ``--disable-auto-complete-config`` / ``--strict-model-config=true``; every process
``meshserve up`` starts inherits it, and workers read it before they load."""


def auto_complete_disabled() -> bool:
    """Triton's ``--disable-auto-complete-config``: no backend completes a config (``auto_complete_config``
    of python models is not called either); a config that lists no inputs or outputs cannot load."""
    return os.environ.get(AUTO_COMPLETE_OFF_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def needs_auto_complete(config: mc.ModelConfig) -> bool:
    """True when the worker must complete this config from the model file before serving it:
    its backend can, and the config lists no inputs or no outputs (Triton's rule)."""
    has_inputs = bool(config.input) or bool(config.batch_input)
    return config.backend in _AUTO_COMPLETE_BACKENDS and not (has_inputs and config.output)


def complete_config(config: mc.ModelConfig, model_name: str, source: str = CONFIG_FILENAME) -> None:
    """Fill Triton's defaults in place and reject configs that cannot be served."""
    if not config.name:
        config.name = model_name
    elif config.name != model_name:
        raise ConfigError(f"{source}: name '{config.name}' does not match its directory '{model_name}'")
    if is_ensemble(config):
        _complete_ensemble(config, source)
        return
    if not config.backend:
        config.backend = _PLATFORM_TO_BACKEND.get(config.platform, "")
    if not config.backend:
        raise ConfigError(
            f"{source}: set 'backend' (python, pytorch, onnxruntime, tensorflow, caffe) or 'platform'"
        )
    if not config.platform and config.backend in _BACKEND_TO_PLATFORM:
        config.platform = _BACKEND_TO_PLATFORM[config.backend]
    if not config.default_model_filename:
        config.default_model_filename = _PLATFORM_FILENAME.get(
            config.platform, _DEFAULT_FILENAME.get(config.backend, "")
        )
    if config.max_batch_size < 0:
        raise ConfigError(f"{source}: max_batch_size must be >= 0, got {config.max_batch_size}")
    _check_tensors(config, source)
    _check_file_names(config, source)
    if config.HasField("dynamic_batching") and config.max_batch_size > 0:
        for size in config.dynamic_batching.preferred_batch_size:
            if not 0 < size <= config.max_batch_size:
                raise ConfigError(
                    f"{source}: preferred_batch_size {size} must be in 1..max_batch_size "
                    f"({config.max_batch_size})"
                )
    if not config.instance_group:
        group = config.instance_group.add()
        group.count = 1
        group.kind = mc.ModelInstanceGroup.KIND_AUTO
    for group in config.instance_group:
        if group.count == 0:
            group.count = 1
        if not group.name:
            group.name = config.name


def _check_file_names(config: mc.ModelConfig, source: str) -> None:
    """Files a config names (the model file, warm-up data) stay inside the model's directory: a
    relative path without ``..``, so ``model.py`` is only ever loaded from the repository."""
    named = [("default_model_filename", config.default_model_filename)] + [
        (f"model_warmup input '{key}' input_data_file", spec.input_data_file)
        for sample in config.model_warmup
        for key, spec in sample.inputs.items()
        if spec.WhichOneof("input_data_type") == "input_data_file"
    ]
    for what, name in named:
        path = PurePosixPath(name.replace("\\", "/"))
        if "\0" in name or path.is_absolute() or ".." in path.parts:
            raise ConfigError(f"{source}: {what} '{name}' must be a path inside the model directory")


def _complete_ensemble(config: mc.ModelConfig, source: str) -> None:
    """An ensemble runs no code of its own: no backend, no instances (``meshserve up`` starts no
    worker for it); its steps must form a pipeline (:func:`meshserve.ensemble.check_structure`)."""
    if config.backend:
        raise ConfigError(f"{source}: an ensemble has no backend (remove backend '{config.backend}')")
    if config.max_batch_size < 0:
        raise ConfigError(f"{source}: max_batch_size must be >= 0, got {config.max_batch_size}")
    _check_tensors(config, source)
    problem = check_structure(config)
    if problem:
        raise ConfigError(f"{source}: {problem}")
    del config.instance_group[:]


def _check_tensors(config: mc.ModelConfig, source: str) -> None:
    seen: set[str] = set()
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            if not tensor.name:
                raise ConfigError(f"{source}: an {kind} has no name")
            if tensor.name in seen:
                raise ConfigError(f"{source}: {kind} '{tensor.name}' is declared twice")
            seen.add(tensor.name)
            if tensor.data_type == mc.TYPE_INVALID:
                raise ConfigError(f"{source}: {kind} '{tensor.name}' has no data_type")
            if any(d < -1 or d == 0 for d in tensor.dims) and not tensor.HasField("reshape"):
                bad = [d for d in tensor.dims if d < -1 or d == 0]
                raise ConfigError(f"{source}: {kind} '{tensor.name}' has invalid dims {bad}")


def config_from_bytes(data: bytes) -> mc.ModelConfig:
    config = mc.ModelConfig()
    config.ParseFromString(data)
    return config


def config_to_json(config: Message) -> dict[str, Any]:
    """The config as Triton shows it in JSON: proto field names, every field, 64-bit ints as numbers."""
    raw = json_format.MessageToDict(
        config,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return _ints_as_numbers(raw, config.DESCRIPTOR)  # type: ignore[arg-type]


_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}


def _ints_as_numbers(value: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    """protobuf's JSON writes 64-bit integers as strings; Triton's JSON writes numbers."""
    for name, item in value.items():
        fd = descriptor.fields_by_name.get(name)
        if fd is None:
            continue
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                value_fd = fd.message_type.fields_by_name["value"]
                if value_fd.message_type is not None:
                    for key, sub in item.items():
                        item[key] = _ints_as_numbers(sub, value_fd.message_type)
            elif isinstance(item, list):
                value[name] = [_ints_as_numbers(sub, fd.message_type) for sub in item]
            elif isinstance(item, dict):
                value[name] = _ints_as_numbers(item, fd.message_type)
        elif fd.type in _INT64_TYPES:
            value[name] = [int(v) for v in item] if isinstance(item, list) else int(item)
    return value
