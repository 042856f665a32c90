"""A load with Triton's override parameters: ``config`` (a model config as JSON) and
``file:<version>/<name>`` (the model's files as bytes).

The override becomes a model directory of its own under a directory the controller owns (never a
path taken from the request as is): ``<managed>/<model>/config.pbtxt`` written from the JSON, and
either the request's files (an override model directory, as Triton builds one) or, with a config
alone, links to the repository's version directories and other files, so only the config differs.
File names are checked before anything is written: relative, no ``..``, no NUL, no backslash, not
the config itself, at most :data:`MAX_FILE_DEPTH` levels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from google.protobuf import json_format, text_format

from meshserve.errors import InvalidArgument
from meshserve.model_config import CONFIG_FILENAME
from meshserve.pb import model_config_pb2 as mc

__all__ = [
    "FILE_PREFIX",
    "MAX_FILE_DEPTH",
    "NAME_MAX",
    "check_file_path",
    "materialize",
    "parse_override_config",
]

FILE_PREFIX = "file:"
"""Load parameters named ``file:<path>`` carry one file of the override model directory."""
NAME_MAX = 255
"""Longest file or directory name (bytes) Linux file systems take."""
MAX_FILE_DEPTH = 8
"""Deepest file path accepted in an override directory (``1/model.savedmodel/variables/x`` is 4)."""


def check_file_path(name: str) -> PurePosixPath:
    """The relative path a ``file:`` parameter names, or InvalidArgument saying what is wrong
    (the message starts "Invalid file path", Triton's words)."""
    shown = name.replace("\0", "\\0")
    if len(shown) > 120:
        shown = shown[:120] + "…"
    where = f"Invalid file path in load parameter 'file:{shown}'"
    if not name or "\0" in name or "\\" in name:
        raise InvalidArgument(f"{where}: the name is empty or holds NUL or '\\'")
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("..", ".", "") for part in name.split("/")):
        raise InvalidArgument(
            f"{where}: give a path relative to the model directory, like '1/model.onnx' "
            "(no leading '/', no '.' or '..' parts)"
        )
    if any(len(part.encode()) > NAME_MAX for part in path.parts):
        raise InvalidArgument(f"{where}: a name is longer than {NAME_MAX} bytes")
    if len(path.parts) > MAX_FILE_DEPTH:
        raise InvalidArgument(f"{where}: deeper than {MAX_FILE_DEPTH} levels")
    if path.parts == (CONFIG_FILENAME,):
        raise InvalidArgument(f"{where}: pass the configuration as the 'config' parameter")
    return path


def parse_override_config(model: str, config_json: str) -> mc.ModelConfig:
    """The ``config`` load parameter as a ModelConfig (Triton's JSON: proto field names)."""
    try:
        json.loads(config_json)
    except ValueError as exc:
        raise InvalidArgument(
            f"failed to load '{model}': the 'config' parameter is not JSON: {exc}"
        ) from None
    config = mc.ModelConfig()
    try:
        json_format.Parse(config_json, config)
    except json_format.ParseError as exc:
        raise InvalidArgument(
            f"failed to load '{model}': the 'config' parameter is not a model config: {exc}"
        ) from None
    if config.name and config.name != model:
        raise InvalidArgument(f"failed to load '{model}': the 'config' parameter names model '{config.name}'")
    config.name = model
    return config


def materialize(
    managed: Path,
    model: str,
    config: mc.ModelConfig,
    files: Mapping[str, bytes],
    source: Path | None,
) -> Path:
    """Write the override model directory ``managed/<model>`` and return ``managed`` (the repository
    root its workers read).  ``files`` keys are paths relative to the model directory; with none,
    everything in ``source`` (the repository's model directory) but its config is linked in."""
    checked = {check_file_path(name): data for name, data in files.items()}
    if not checked and source is None:
        raise InvalidArgument(
            f"failed to load '{model}': it is not in the model repository; give its files as "
            "'file:<version>/<name>' parameters"
        )
    if "/" in model or model in ("", ".", "..") or "\0" in model:
        raise InvalidArgument(f"failed to load '{model}': not a usable model directory name")
    target = managed / model
    try:
        target.mkdir(parents=True, exist_ok=False)
        (target / CONFIG_FILENAME).write_text(text_format.MessageToString(config), encoding="utf-8")
        if checked:
            for rel, data in checked.items():
                path = target.joinpath(*rel.parts)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        else:
            assert source is not None
            for child in sorted(source.iterdir()):
                if child.name != CONFIG_FILENAME and not child.name.startswith("."):
                    (target / child.name).symlink_to(child.resolve())
    except OSError as exc:  # e.g. 'file:1/a' and 'file:1/a/b' in one request
        raise InvalidArgument(f"failed to load '{model}': cannot write its override files: {exc}") from None
    return managed
