"""meshserve's ``triton_python_backend_utils``: the API a Triton python-backend ``model.py`` imports.

The python backend registers this module under the name ``triton_python_backend_utils`` before it
imports a model, so ``import triton_python_backend_utils as pb_utils`` in an unchanged Triton model
gets these classes.  Everything is written from the documented surface of Triton's python backend;
tensors live in host memory as numpy arrays (there is no shared-memory stub process here).

BLS (``InferenceRequest(model_name=...).exec()`` / ``async_exec()``) goes through the mesh to the
other model: the worker installs its :mod:`workers.bls` client here at start-up (:func:`_set_bls`).

Parts of Triton's API that meshserve does not implement yet (request rescheduling, the
model-loading API) exist and raise :class:`TritonModelException` with a message that says so, so a
model fails with a clear error instead of an ``AttributeError``.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final, Protocol

import numpy as np

__all__ = [
    "TRITONSERVER_MEMORY_CPU",
    "TRITONSERVER_MEMORY_CPU_PINNED",
    "TRITONSERVER_MEMORY_GPU",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START",
    "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL",
    "TRITON_STRING_TO_NUMPY",
    "InferenceRequest",
    "InferenceResponse",
    "InferenceResponseSender",
    "LogLevel",
    "Logger",
    "ModelConfig",
    "PreferredMemory",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "deserialize_bytes_tensor",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "is_model_ready",
    "load_model",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "unload_model",
    "using_decoupled_model_transaction_policy",
]

# Values of Triton's C API enums (TRITONSERVER_RequestFlag, _ResponseCompleteFlag, ...).
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START: Final = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END: Final = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL: Final = 1
TRITONSERVER_REQUEST_RELEASE_ALL: Final = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE: Final = 2
TRITONSERVER_MEMORY_CPU: Final = 0
TRITONSERVER_MEMORY_CPU_PINNED: Final = 1
TRITONSERVER_MEMORY_GPU: Final = 2

_LOG = logging.getLogger("workers.python_model")


class TritonModelException(Exception):
    """What a model raises (and what this module raises) to fail the current call."""

    def __init__(self, msg: str = "") -> None:
        super().__init__(msg)
        self._msg = msg

    def message(self) -> str:
        return self._msg

    def __str__(self) -> str:
        return self._msg


class TritonError(Exception):
    """A per-response error: ``InferenceResponse(error=TritonError("why", TritonError.NOT_FOUND))``.

    Codes are ints like Triton's ``TRITONSERVER_Error_Code``; :attr:`WIRE_CODES` maps them to
    meshserve's wire codes (:func:`meshserve.errors.from_wire`).  Triton's TritonError is not an
    exception class; this one is, so a model that *raises* it still gets its code honoured.
    """

    UNKNOWN: ClassVar[int] = 0
    INTERNAL: ClassVar[int] = 1
    NOT_FOUND: ClassVar[int] = 2
    INVALID_ARG: ClassVar[int] = 3
    UNAVAILABLE: ClassVar[int] = 4
    UNSUPPORTED: ClassVar[int] = 5
    ALREADY_EXISTS: ClassVar[int] = 6
    CANCELLED: ClassVar[int] = 7

    WIRE_CODES: ClassVar[dict[int, str]] = {
        0: "UNKNOWN",
        1: "INTERNAL",
        2: "NOT_FOUND",
        3: "INVALID_ARG",
        4: "UNAVAILABLE",
        5: "UNSUPPORTED",
        6: "ALREADY_EXISTS",
        7: "CANCELLED",
    }

    def __init__(self, msg: str = "", code: int = INTERNAL) -> None:
        super().__init__(msg)
        self._msg = "" if msg is None else str(msg)
        self._code = int(code)

    def message(self) -> str:
        return self._msg

    def code(self) -> int:
        return self._code

    def wire_code(self) -> str:
        """The meshserve wire code for :meth:`code` (unknown ints become ``INTERNAL``)."""
        return self.WIRE_CODES.get(self._code, "INTERNAL")

    def __str__(self) -> str:
        return self._msg

    def __repr__(self) -> str:
        return f"TritonError({self._msg!r}, code={self.wire_code()})"


# ---------------------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------------------

TRITON_STRING_TO_NUMPY: Final[dict[str, type]] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

# TRITONSERVER_DataType values (0 is INVALID, 14 is BF16 which numpy cannot represent).
_TRITON_TYPE_TO_NUMPY: Final[dict[int, type]] = {
    1: np.bool_,
    2: np.uint8,
    3: np.uint16,
    4: np.uint32,
    5: np.uint64,
    6: np.int8,
    7: np.int16,
    8: np.int32,
    9: np.int64,
    10: np.float16,
    11: np.float32,
    12: np.float64,
    13: np.object_,
}
_NUMPY_NAME_TO_TRITON_TYPE: Final[dict[str, int]] = {
    np.dtype(t).name: code for code, t in _TRITON_TYPE_TO_NUMPY.items() if t is not np.object_
}
_TRITON_TYPE_BYTES: Final = 13


def triton_string_to_numpy(triton_type_string: str) -> type:
    """``"TYPE_FP32"`` → ``np.float32``; ``"TYPE_STRING"`` → ``np.object_``; ``"TYPE_BOOL"`` → ``bool``."""
    try:
        return TRITON_STRING_TO_NUMPY[triton_type_string]
    except KeyError:
        raise KeyError(f"no numpy type for Triton data type {triton_type_string!r}") from None


def triton_to_numpy_type(data_type: int) -> type | None:
    """A ``TRITONSERVER_DataType`` int → numpy type (None when numpy has none, e.g. BF16)."""
    return _TRITON_TYPE_TO_NUMPY.get(int(data_type))


def numpy_to_triton_type(data_type: Any) -> int | None:
    """A numpy dtype (or type) → ``TRITONSERVER_DataType`` int; object/bytes/str → BYTES (13)."""
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    if dtype.kind in ("O", "S", "U"):
        return _TRITON_TYPE_BYTES
    return _NUMPY_NAME_TO_TRITON_TYPE.get(dtype.name)


def serialize_byte_tensor(input_tensor: np.ndarray) -> bytes | None:
    """Triton's BYTES encoding (4-byte little-endian length, then the bytes) of every element, C order.

    Returns None for a non-BYTES array, as Triton does.
    """
    if input_tensor.dtype.kind not in ("O", "S"):
        return None
    parts: list[bytes] = []
    for item in np.asarray(input_tensor, dtype=object).reshape(-1):
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes_tensor(encoded_tensor: bytes | bytearray | memoryview) -> np.ndarray:
    """The inverse of :func:`serialize_byte_tensor`: a 1-D object array of ``bytes``."""
    view = memoryview(encoded_tensor).cast("B")
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise TritonModelException("truncated BYTES tensor: incomplete 4-byte length prefix")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise TritonModelException("truncated BYTES tensor: element runs past the end of the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


# ---------------------------------------------------------------------------------------------------
# Tensor
# ---------------------------------------------------------------------------------------------------

_DLPACK_CPU: Final = 1


class _CapsuleHolder:
    """Lets ``np.from_dlpack`` consume a bare DLPack capsule (it only accepts ``__dlpack__`` objects).

    The device reported here is only a hint; numpy reads the real device from the capsule and refuses
    non-CPU memory, which is when :meth:`Tensor.from_dlpack` falls back to torch.
    """

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, **_kwargs: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_DLPACK_CPU, 0)


class Tensor:
    """A named tensor in host memory, backed by a numpy array.

    ``is_cpu()`` is always True: tensors a model builds from GPU memory (``from_dlpack``) are copied
    to the host, because meshserve's workers hand results on as host bytes.  Inputs may be read-only
    views of the received bytes; :meth:`as_numpy` hands the model a writable copy in that case, as
    Triton's inputs are writable and models may modify them in place.
    """

    __slots__ = ("_array", "_name", "_triton_dtype")

    def __init__(self, name: str, numpy_array: Any, triton_dtype: int | None = None) -> None:
        if not isinstance(name, str):
            raise TritonModelException(f"Tensor name must be a str, got {type(name).__name__}")
        array = numpy_array if isinstance(numpy_array, np.ndarray) else np.asarray(numpy_array)
        if array.dtype.kind == "U":
            # Triton rejects str arrays; encoding them is harmless and saves the model a step.
            array = _str_array_to_bytes(array)
        elif array.dtype.kind == "V":
            raise TritonModelException(
                f"Tensor '{name}': numpy dtype {array.dtype} is not supported; use np.object_ for BYTES"
            )
        if triton_dtype is not None:
            target = triton_to_numpy_type(triton_dtype)
            if target is None:
                raise TritonModelException(f"Tensor '{name}': unsupported triton_dtype {triton_dtype}")
            if array.dtype != np.dtype(target):
                array = array.view(target)  # Triton reinterprets the bytes, it does not convert
        else:
            triton_dtype = numpy_to_triton_type(array.dtype)
            if triton_dtype is None:
                raise TritonModelException(f"Tensor '{name}': numpy dtype {array.dtype} has no Triton type")
        self._name = name
        self._array = array
        self._triton_dtype = triton_dtype

    @classmethod
    def _wrap(cls, name: str, array: np.ndarray) -> Tensor:
        """An input tensor over an already-decoded array (no checks: the codec produced it)."""
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._array = array
        tensor._triton_dtype = numpy_to_triton_type(array.dtype) or 0
        return tensor

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        if not self._array.flags.writeable:
            self._array = self._array.copy()
        return self._array

    def triton_dtype(self) -> int:
        return int(self._triton_dtype)

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        """A DLPack capsule over the (host) data; BYTES tensors have no DLPack form."""
        if self._array.dtype == np.object_:
            raise TritonModelException(f"Tensor '{self._name}': BYTES tensors cannot be exported to DLPack")
        array = np.ascontiguousarray(self.as_numpy())
        return array.__dlpack__()

    def __dlpack__(self, **kwargs: Any) -> Any:
        return np.ascontiguousarray(self.as_numpy()).__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_DLPACK_CPU, 0)

    @staticmethod
    def from_dlpack(name: str, dlpack_tensor: Any) -> Tensor:
        """A Tensor from a DLPack capsule or an object with ``__dlpack__`` (torch, cupy, ...).

        Host memory is shared without a copy; device memory is copied to the host through torch.
        """
        source = dlpack_tensor if hasattr(dlpack_tensor, "__dlpack__") else _CapsuleHolder(dlpack_tensor)
        try:
            array = np.from_dlpack(source)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            array = _from_dlpack_via_torch(name, dlpack_tensor, exc)
        if not array.flags.c_contiguous:
            raise TritonModelException(f"Tensor '{name}': from_dlpack needs a C-contiguous tensor")
        return Tensor(name, array)

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={self.shape()}, dtype={self._array.dtype})"


def _str_array_to_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        flat[i] = str(item).encode("utf-8")
    return out


def _from_dlpack_via_torch(name: str, dlpack_tensor: Any, cause: Exception) -> np.ndarray:
    """Device (or otherwise numpy-incompatible) DLPack data, copied to host memory with torch."""
    try:
        import torch
        from torch.utils import dlpack as torch_dlpack
    except ImportError:
        raise TritonModelException(f"Tensor '{name}': from_dlpack failed: {cause}") from cause
    try:
        tensor = torch_dlpack.from_dlpack(dlpack_tensor)
        if tensor.dtype == torch.bfloat16:
            raise TritonModelException(f"Tensor '{name}': BF16 tensors are not supported by from_dlpack")
        result: np.ndarray = tensor.detach().cpu().contiguous().numpy()
    except TritonModelException:
        raise
    except Exception as exc:
        raise TritonModelException(f"Tensor '{name}': from_dlpack failed: {exc}") from exc
    return result


# ---------------------------------------------------------------------------------------------------
# Requests and responses
# ---------------------------------------------------------------------------------------------------


class PreferredMemory:
    """Accepted for BLS signatures; BLS outputs always arrive in host memory here."""

    def __init__(self, preferred_memory_type: int = TRITONSERVER_MEMORY_CPU, preferred_device_id: int = 0):
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


_DECOUPLED_MSG = (
    "get_response_sender() needs a decoupled model: set model_transaction_policy { decoupled: true } "
    "in config.pbtxt"
)


class InferenceResponseSender:
    """Sends a decoupled request's responses as they are ready (any number, from any thread); the last
    ``send`` carries ``flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL`` (its response may be None)."""

    __slots__ = ("_cancelled", "_closed", "_deliver")

    def __init__(
        self,
        deliver: Callable[[InferenceResponse | None, bool], None],
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        self._deliver = deliver
        self._closed = False
        self._cancelled = cancelled

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if self._closed:
            raise TritonModelException("this request's final response was already sent")
        if response is None and not final:
            raise TritonModelException(
                "send() needs a response, or flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL"
            )
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(
                f"send() takes a pb_utils.InferenceResponse, got {type(response).__name__}"
            )
        self._closed = final
        self._deliver(response, final)

    def is_cancelled(self) -> bool:
        """True once the client went away (the gateway's cancel reached this worker)."""
        return self._cancelled is not None and self._cancelled()


_BLS_MSG = (
    "business logic scripting (InferenceRequest.exec / async_exec) needs a meshserve worker: "
    "this process has no mesh connection"
)


class _Bls(Protocol):
    """What ``exec`` / ``async_exec`` hand the request to (``workers.bls.BlsClient``)."""

    def exec(self, request: InferenceRequest, decoupled: bool) -> Any: ...

    async def async_exec(self, request: InferenceRequest, decoupled: bool) -> Any: ...


_bls: _Bls | None = None


def _set_bls(client: _Bls | None) -> None:
    global _bls
    _bls = client


class InferenceRequest:
    """A request as the model sees it in ``execute``.

    The constructor takes Triton's keyword arguments (the BLS form: ``model_name``, ``inputs``,
    ``requested_output_names``, ``model_version`` (-1: the latest), ``timeout`` (µs), ``parameters``;
    ``preferred_memory`` and ``trace`` are accepted and ignored).  ``exec()`` sends it to that model
    through the mesh and blocks until the response; ``async_exec()`` is its awaitable form;
    ``decoupled=True`` gives an iterator over the callee's responses (the last one may be empty:
    the final flag).  Failures come back as a response with ``has_error()``, never as an exception.

    ``requested_output_names()`` follows Triton: when the client asked for no outputs, it lists every
    output the model config declares.
    """

    __slots__ = (
        "_cancelled",
        "_correlation_id",
        "_flags",
        "_inputs",
        "_model_name",
        "_model_version",
        "_parameters",
        "_request_id",
        "_requested_output_names",
        "_sender",
        "_timeout",
    )

    def __init__(
        self,
        *,
        inputs: Sequence[Tensor] = (),
        requested_output_names: Sequence[str] = (),
        model_name: str | bytes = "",
        model_version: int = -1,
        request_id: str = "",
        correlation_id: int | str = 0,
        flags: int = 0,
        timeout: int = 0,
        parameters: Mapping[str, Any] | str | None = None,
        **_unsupported: Any,
    ) -> None:
        self._inputs = list(inputs)
        self._requested_output_names = list(requested_output_names)
        # Triton's examples pass a BYTES input's element (``as_numpy()[0]``, bytes) as the name
        self._model_name = model_name.decode("utf-8") if isinstance(model_name, bytes) else model_name
        self._model_version = model_version
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._flags = flags
        self._timeout = timeout
        self._sender: InferenceResponseSender | None = None
        self._cancelled: Callable[[], bool] | None = None
        if isinstance(parameters, str):
            self._parameters: dict[str, Any] = json.loads(parameters) if parameters else {}
        else:
            self._parameters = dict(parameters or {})

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        """The request's timeout in microseconds (0: none)."""
        return self._timeout

    def parameters(self) -> str:
        """The request parameters as a JSON object string (Triton's form: parse it with ``json.loads``)."""
        return json.dumps(self._parameters)

    def requested_output_names(self) -> list[str]:
        return list(self._requested_output_names)

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def is_cancelled(self) -> bool:
        """True once the client went away (the gateway's cancel reached this worker)."""
        return self._cancelled is not None and self._cancelled()

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            raise TritonModelException(_DECOUPLED_MSG)
        return self._sender

    def set_release_flags(self, flags: int) -> None:
        if flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException("request rescheduling is not supported yet by meshserve")

    def exec(self, decoupled: bool = False) -> Any:
        if _bls is None:
            raise TritonModelException(_BLS_MSG)
        return _bls.exec(self, decoupled)

    async def async_exec(self, decoupled: bool = False) -> Any:
        if _bls is None:
            raise TritonModelException(_BLS_MSG)
        return await _bls.async_exec(self, decoupled)

    def _parameter_dict(self) -> dict[str, Any]:
        return self._parameters

    def __repr__(self) -> str:
        names = [t.name() for t in self._inputs]
        return f"InferenceRequest(id={self._request_id!r}, inputs={names})"


class InferenceResponse:
    """The model's answer to one request: output tensors, or an error (outputs are then ignored)."""

    __slots__ = ("_error", "_output_tensors", "_parameters")

    def __init__(
        self,
        output_tensors: Iterable[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: Mapping[str, Any] | str | None = None,
    ) -> None:
        if output_tensors is None:
            output_tensors = []
        if not isinstance(output_tensors, (list, tuple)):
            raise TritonModelException('"output_tensors" must be a list.')
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException(f'"error" must be a TritonError, got {type(error).__name__}')
        self._output_tensors = list(output_tensors)
        self._error = error
        if isinstance(parameters, str):
            self._parameters: dict[str, Any] = json.loads(parameters) if parameters else {}
        else:
            self._parameters = dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._output_tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def _parameter_dict(self) -> dict[str, Any]:
        return self._parameters

    def __repr__(self) -> str:
        if self._error is not None:
            return f"InferenceResponse(error={self._error!r})"
        return f"InferenceResponse(outputs={[t.name() for t in self._output_tensors]})"


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    """The request's input called ``name``, or None."""
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    """The response's output called ``name``, or None."""
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def _config_entry(model_config: Mapping[str, Any], key: str, name: str) -> dict[str, Any] | None:
    for entry in model_config.get(key) or ():
        if entry.get("name") == name:
            return entry  # type: ignore[no-any-return]
    return None


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The ``input`` entry of a parsed model config (``json.loads(args['model_config'])``) called ``name``."""
    return _config_entry(model_config, "input", name)


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The ``output`` entry of a parsed model config called ``name``, or None."""
    return _config_entry(model_config, "output", name)


def using_decoupled_model_transaction_policy(model_config: Mapping[str, Any]) -> bool:
    policy = model_config.get("model_transaction_policy") or {}
    return bool(policy.get("decoupled", False))


# ---------------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------------


class LogLevel:
    """Triton's log levels for :meth:`Logger.log`."""

    INFO: ClassVar[int] = 0
    WARNING: ClassVar[int] = 1
    ERROR: ClassVar[int] = 2
    VERBOSE: ClassVar[int] = 3


_LEVELS: Final[dict[int, int]] = {
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
    LogLevel.VERBOSE: logging.DEBUG,
}


class Logger:
    """``pb_utils.Logger.log_info("...")`` (Triton's usage: the class itself, no instance needed).

    Messages go to the Python logger ``workers.python_model``; VERBOSE maps to DEBUG.  The record's
    file and line are the model's call site.
    """

    INFO: ClassVar[int] = LogLevel.INFO
    WARNING: ClassVar[int] = LogLevel.WARNING
    ERROR: ClassVar[int] = LogLevel.ERROR
    VERBOSE: ClassVar[int] = LogLevel.VERBOSE

    @staticmethod
    def log(msg: str, level: int = LogLevel.INFO) -> None:
        _LOG.log(_LEVELS.get(level, logging.INFO), "%s", msg, stacklevel=2)

    @staticmethod
    def log_info(msg: str) -> None:
        _LOG.info("%s", msg, stacklevel=2)

    @staticmethod
    def log_warn(msg: str) -> None:
        _LOG.warning("%s", msg, stacklevel=2)

    @staticmethod
    def log_error(msg: str) -> None:
        _LOG.error("%s", msg, stacklevel=2)

    @staticmethod
    def log_verbose(msg: str) -> None:
        _LOG.debug("%s", msg, stacklevel=2)


# ---------------------------------------------------------------------------------------------------
# Model loading API (Triton: explicit model control from inside a model) — not supported yet.
# ---------------------------------------------------------------------------------------------------

_MODEL_API_MSG = "the model loading API (is_model_ready / load_model / unload_model) is not supported yet"


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    raise TritonModelException(_MODEL_API_MSG)


def load_model(model_name: str, config: str = "", files: Mapping[str, bytes] | None = None) -> None:
    raise TritonModelException(_MODEL_API_MSG)


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    raise TritonModelException(_MODEL_API_MSG)


class ModelConfig:
    """What ``TritonPythonModel.auto_complete_config(auto_complete_model_config)`` receives: the model's
    config as Triton's JSON, with the setters Triton documents.  Adding a tensor the config already
    declares is accepted when it agrees with the declaration and refused when it contradicts it."""

    def __init__(self, model_config: Mapping[str, Any]) -> None:
        self._config: dict[str, Any] = json.loads(json.dumps(dict(model_config)))

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = int(self._config.get("max_batch_size", 0) or 0)
        if current not in (0, max_batch_size):
            raise ValueError(
                f"set_max_batch_size({max_batch_size}): the config already sets max_batch_size {current}"
            )
        self._config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self) -> None:
        if not self._config.get("sequence_batching"):
            self._config.setdefault("dynamic_batching", {})

    def set_model_transaction_policy(self, transaction_policy_dict: Mapping[str, Any]) -> None:
        self._config["model_transaction_policy"] = {
            "decoupled": bool(transaction_policy_dict.get("decoupled"))
        }

    def add_input(self, input: Mapping[str, Any]) -> None:
        self._add("input", input)

    def add_output(self, output: Mapping[str, Any]) -> None:
        self._add("output", output)

    def _add(self, kind: str, tensor: Mapping[str, Any]) -> None:
        missing = [key for key in ("name", "data_type", "dims") if key not in tensor]
        if missing:
            raise ValueError(f"add_{kind}: the {kind} needs {', '.join(missing)}")
        wanted = dict(tensor)
        wanted["dims"] = [int(d) for d in wanted["dims"]]
        existing = next(
            (t for t in self._config.setdefault(kind, []) if t.get("name") == wanted["name"]), None
        )
        if existing is None:
            self._config[kind].append(wanted)
            return
        for key in ("data_type", "dims"):
            if key in existing and existing[key] not in (wanted[key], [], "TYPE_INVALID"):
                raise ValueError(
                    f"add_{kind}: '{wanted['name']}' {key} {wanted[key]} contradicts the config's {existing[key]}"
                )
        existing.update(wanted)
