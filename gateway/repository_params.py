"""RepositoryModelLoad / Unload parameters (gRPC map or HTTP JSON) → the mesh's ``ControlRequest``.

Triton's load parameters: ``config`` (a string: the model config as JSON) and ``file:<path>`` (the
model's files: gRPC ``bytes_param``, HTTP base64 text).  Unload: ``unload_dependents`` (bool).
Other parameters are ignored, as Triton ignores them.  Paths are checked again by the controller,
which is the one writing them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from meshserve.errors import InvalidArgument, PayloadTooLarge
from meshserve.model_override import FILE_PREFIX, check_file_path
from meshserve.pb import mesh_pb2

__all__ = ["ParamValue", "control_request"]

ParamValue = str | bytes | bool | int


def control_request(
    model: str,
    load: bool,
    params: Mapping[str, ParamValue],
    max_bytes: int,
    base64_files: bool = False,
) -> mesh_pb2.ControlRequest:
    """``params`` as the wire gave them; ``base64_files`` when file contents came as base64 text (HTTP)."""
    request = mesh_pb2.ControlRequest(model_name=model, load=load)
    if not load:
        dependents = params.get("unload_dependents", False)
        if not isinstance(dependents, bool):
            raise InvalidArgument("unload parameter 'unload_dependents' must be a boolean")
        request.unload_dependents = dependents
        return request
    config = params.get("config")
    if config is not None:
        if not isinstance(config, str):
            raise InvalidArgument("load parameter 'config' must be a string holding the model config as JSON")
        request.config_json = config
    total = len(request.config_json)
    for name, value in params.items():
        if not name.startswith(FILE_PREFIX):
            continue
        path = name[len(FILE_PREFIX) :]
        check_file_path(path)
        data = _file_bytes(name, value, base64_files)
        total += len(data)
        if total > max_bytes:
            raise PayloadTooLarge(
                f"the load request's files exceed {max_bytes} bytes "
                "(raise --max-message-bytes / MESHSERVE_MAX_MESSAGE_BYTES)"
            )
        request.files[path] = data
    return request


def _file_bytes(name: str, value: ParamValue, base64_files: bool) -> bytes:
    if base64_files:
        if not isinstance(value, str):
            raise InvalidArgument(f"load parameter '{name}' must be the file's contents in base64")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"load parameter '{name}' is not valid base64") from None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise InvalidArgument(f"load parameter '{name}' must carry the file's contents as bytes")
