"""The ``python`` backend: runs a Triton python-backend ``model.py`` (``class TritonPythonModel``) as is.

The model runs in the worker process itself (Triton runs it in a stub process that talks to the
server through shared memory; a meshserve worker already is one process per model instance).  Our
:mod:`workers.backends.pb_utils` is registered as ``triton_python_backend_utils`` so the model's
``import triton_python_backend_utils as pb_utils`` works.

Behaviour that follows Triton:

* ``initialize(args)`` gets string values: ``model_config`` (JSON), ``model_instance_kind``
  (``CPU``/``GPU``), ``model_instance_name``, ``model_instance_device_id``, ``model_repository`` (the
  model's directory), ``model_version``, ``model_name``.
* ``execute`` must return a list with exactly one ``InferenceResponse`` per request; otherwise every
  request of the batch fails with an error that says what was returned.
* A request that asked for no outputs sees every configured output in ``requested_output_names()``;
  outputs the model returns but the request did not ask for are dropped.
* The reserved request parameters ``sequence_id``, ``sequence_start``, ``sequence_end``, ``timeout``
  and ``priority`` become ``correlation_id()``, ``flags()`` and ``timeout()`` and are not repeated in
  ``parameters()``.

``async def execute`` (and ``async def initialize`` / ``finalize``) run on one event loop owned by
this backend, on the calling thread; it persists across calls so loop-bound objects a model keeps
(client sessions, queues) stay usable.

BLS (``pb_utils.InferenceRequest(...).exec()`` / ``await ...async_exec()``) goes through the mesh
(``workers/bls.py``); calls made during ``execute`` are bounded by the batch's latest deadline.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import itertools
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from google.protobuf import json_format

from meshserve.errors import Internal, Unavailable, from_wire
from meshserve.model_config import config_to_json
from workers.backends import pb_utils
from workers.backends.base import LoadContext, ParamValue, Request, Result
from workers.bls import CALLER_DEADLINE_NS

__all__ = ["PB_UTILS_MODULE", "PythonBackend", "create"]

PB_UTILS_MODULE = "triton_python_backend_utils"
_RESERVED_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end", "timeout", "priority"})
_LOG = logging.getLogger("workers.python_backend")
_module_ids = itertools.count(1)


def create() -> PythonBackend:
    return PythonBackend()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PythonBackend:
    """One loaded ``TritonPythonModel`` instance."""

    def __init__(self) -> None:
        self._model: Any = None
        self._module_name: str | None = None
        self._sys_path_entry: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._model_name = ""
        self._model_version = -1
        self._model_file: Path | None = None
        self._all_outputs: list[str] = []
        self._declared_outputs: frozenset[str] = frozenset()
        self._decoupled = False
        self._imported: ModuleType | None = None
        """The model module, when ``auto_complete_config`` already imported it (load reuses it)."""

    # -- auto-complete ------------------------------------------------------------------------------

    def auto_complete_config(self, ctx: LoadContext) -> None:
        """Triton's ``TritonPythonModel.auto_complete_config(auto_complete_model_config)``: the model
        may add inputs/outputs, set max_batch_size, dynamic batching or the transaction policy."""
        path = ctx.version_dir / (ctx.config.default_model_filename or "model.py")
        if not path.is_file():
            return  # load() reports the missing file
        self._model_name, self._model_version = ctx.model_name, ctx.model_version
        where = f"python model '{ctx.model_name}' version {ctx.model_version} ({path})"
        self._imported = self._import(path, where)
        hook = getattr(getattr(self._imported, "TritonPythonModel", None), "auto_complete_config", None)
        if hook is None:
            return
        wrapper = pb_utils.ModelConfig(config_to_json(ctx.config))
        try:
            result = hook(wrapper)
        except Exception as exc:
            raise Internal(f"{where}: auto_complete_config raised {_describe(exc)}") from exc
        completed = (result if isinstance(result, pb_utils.ModelConfig) else wrapper).as_dict()
        try:
            fresh = json_format.ParseDict(completed, type(ctx.config)())
        except json_format.ParseError as exc:
            raise Internal(f"{where}: auto_complete_config produced an invalid config: {exc}") from exc
        ctx.config.CopyFrom(fresh)

    # -- load / unload ------------------------------------------------------------------------------

    def load(self, ctx: LoadContext) -> None:
        if self._model is not None:
            raise Internal(f"python model '{self._model_name}' is already loaded in this backend")
        self._model_name = ctx.model_name
        self._model_version = ctx.model_version
        self._all_outputs = [output.name for output in ctx.config.output]
        self._declared_outputs = frozenset(self._all_outputs)
        path = ctx.version_dir / (ctx.config.default_model_filename or "model.py")
        self._model_file = path
        where = f"python model '{ctx.model_name}' version {ctx.model_version} ({path})"

        self._decoupled = ctx.config.model_transaction_policy.decoupled
        if not path.is_file():
            raise Internal(f"{where}: model file not found")

        module = self._imported if self._imported is not None else self._import(path, where)
        self._imported = None
        model_class = getattr(module, "TritonPythonModel", None)
        if model_class is None or not callable(model_class):
            self._forget_module()
            raise Internal(f"{where}: the file defines no class TritonPythonModel")
        try:
            model = model_class()
        except Exception as exc:
            self._forget_module()
            raise Internal(f"{where}: TritonPythonModel() raised {_describe(exc)}") from exc
        if not callable(getattr(model, "execute", None)):
            self._forget_module()
            raise Internal(f"{where}: TritonPythonModel has no execute() method")

        initialize = getattr(model, "initialize", None)
        if callable(initialize):
            try:
                self._resolve(initialize(self._initialize_args(ctx)))
            except (Exception, SystemExit) as exc:
                self._close_loop()
                self._forget_module()
                raise Internal(f"{where}: initialize() raised {_describe(exc)}") from exc
        self._model = model
        _LOG.info("loaded %s", where)

    def _initialize_args(self, ctx: LoadContext) -> dict[str, str]:
        on_gpu = ctx.device.startswith("cuda")
        device_id = (ctx.device.partition(":")[2] or "0") if on_gpu else "0"
        return {
            "model_config": json.dumps(ctx.config_json),
            "model_instance_kind": "GPU" if on_gpu else "CPU",
            "model_instance_name": ctx.instance_name,
            "model_instance_device_id": device_id,
            "model_repository": str(ctx.model_dir),
            "model_version": str(ctx.model_version),
            "model_name": ctx.model_name,
        }

    def _import(self, path: Path, where: str) -> ModuleType:
        """Import ``path`` under a module name of its own, so two models' ``model.py`` never clash."""
        sys.modules[PB_UTILS_MODULE] = pb_utils
        safe = re.sub(r"\W", "_", self._model_name)
        module_name = f"_meshserve_model_{safe}_v{self._model_version}_{next(_module_ids)}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise Internal(f"{where}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        # The model's own sibling modules (``from helpers import x``) are found next to it.
        entry = str(path.parent)
        sys.path.insert(0, entry)
        self._sys_path_entry = entry
        sys.modules[module_name] = module
        self._module_name = module_name
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            self._forget_module()
            raise Internal(f"{where}: import failed: {_describe(exc)}") from exc
        return module

    def _forget_module(self) -> None:
        if self._module_name is not None:
            sys.modules.pop(self._module_name, None)
            self._module_name = None
        if self._sys_path_entry is not None:
            try:
                sys.path.remove(self._sys_path_entry)
            except ValueError:
                pass
            self._sys_path_entry = None

    def unload(self) -> None:
        model, self._model = self._model, None
        error: BaseException | None = None
        finalize = getattr(model, "finalize", None) if model is not None else None
        if callable(finalize):
            try:
                self._resolve(finalize())
            except (Exception, SystemExit) as exc:
                error = exc
        self._close_loop()
        self._forget_module()
        if error is not None:
            where = f"python model '{self._model_name}' ({self._model_file})"
            raise Internal(f"{where}: finalize() raised {_describe(error)}") from error

    # -- execute ------------------------------------------------------------------------------------

    def execute(self, requests: list[Request]) -> list[Result]:
        if self._model is None:
            err = Unavailable(f"python model '{self._model_name}' is not loaded")
            return [Result(error=err) for _ in requests]
        if not requests:
            return []
        pb_requests = [self._to_pb_request(request) for request in requests]
        for request, pb_request in zip(requests, pb_requests, strict=True):
            pb_request._cancelled = request.is_cancelled
        # BLS calls made while this batch runs wait at most until its last requester stops waiting
        deadlines = [r.deadline_unix_ns for r in requests]
        token = CALLER_DEADLINE_NS.set(0 if 0 in deadlines else max(deadlines))
        try:
            return self._execute_batch(requests, pb_requests)
        finally:
            CALLER_DEADLINE_NS.reset(token)

    def _execute_batch(
        self, requests: list[Request], pb_requests: list[pb_utils.InferenceRequest]
    ) -> list[Result]:
        if self._decoupled:
            return self._execute_decoupled(requests, pb_requests)
        try:
            responses = self._resolve(self._model.execute(pb_requests))
        except pb_utils.TritonError as exc:
            # Not possible in Triton (its TritonError is no exception); honour the code a model chose.
            return [Result(error=from_wire(exc.wire_code(), exc.message())) for _ in requests]
        except (Exception, SystemExit) as exc:
            _LOG.error("python model '%s': execute() raised", self._model_name, exc_info=exc)
            message = f"python model '{self._model_name}': execute() raised {_describe(exc)}"
            return [Result(error=Internal(message)) for _ in requests]

        problem = self._check_responses(responses, len(requests))
        if problem is not None:
            message = f"python model '{self._model_name}': {problem}"
            _LOG.error("%s", message)
            return [Result(error=Internal(message)) for _ in requests]
        return [
            self._to_result(index, response, request)
            for index, (response, request) in enumerate(zip(responses, requests, strict=True))
        ]

    def _execute_decoupled(
        self, requests: list[Request], pb_requests: list[pb_utils.InferenceRequest]
    ) -> list[Result]:
        """Responses leave through each request's sender (``Request.emit``), during ``execute`` or after
        it returns; ``execute`` itself returns None.  Returns [] — or one error per request when
        ``execute`` raised (the executor ends the streams that are still open with it)."""
        for index, (request, pb_request) in enumerate(zip(requests, pb_requests, strict=True)):
            pb_request._sender = pb_utils.InferenceResponseSender(
                self._deliver_to(index, request), request.is_cancelled
            )
        try:
            returned = self._resolve(self._model.execute(pb_requests))
        except (Exception, SystemExit) as exc:
            _LOG.error("python model '%s': execute() raised", self._model_name, exc_info=exc)
            message = f"python model '{self._model_name}': execute() raised {_describe(exc)}"
            return [Result(error=Internal(message)) for _ in requests]
        if returned is not None:
            _LOG.warning(
                "python model '%s' is decoupled: execute() should return None (its return value is ignored)",
                self._model_name,
            )
        return []

    def _deliver_to(
        self, index: int, request: Request
    ) -> Callable[[pb_utils.InferenceResponse | None, bool], None]:
        emit = request.emit
        if emit is None:
            raise Internal(
                f"python model '{self._model_name}' is decoupled but the request has no response path"
            )

        def deliver(response: pb_utils.InferenceResponse | None, final: bool) -> None:
            result = Result() if response is None else self._to_result(index, response, request)
            emit(result, final)

        return deliver

    def _to_pb_request(self, request: Request) -> pb_utils.InferenceRequest:
        params = request.parameters
        flags = 0
        if params.get("sequence_start") is True:
            flags |= pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
        if params.get("sequence_end") is True:
            flags |= pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END
        correlation_id = params.get("sequence_id", 0)
        if isinstance(correlation_id, bool) or not isinstance(correlation_id, (int, str)):
            correlation_id = 0
        timeout = params.get("timeout", 0)
        if isinstance(timeout, bool) or not isinstance(timeout, int):
            timeout = 0
        custom = {k: v for k, v in params.items() if k not in _RESERVED_PARAMETERS} if params else {}
        return pb_utils.InferenceRequest(
            inputs=[pb_utils.Tensor._wrap(name, array) for name, array in request.inputs.items()],
            requested_output_names=request.requested_outputs or self._all_outputs,
            model_name=self._model_name,
            model_version=self._model_version,
            request_id=request.request_id,
            correlation_id=correlation_id,
            flags=flags,
            timeout=timeout,
            parameters=custom,
        )

    @staticmethod
    def _check_responses(responses: Any, expected: int) -> str | None:
        """What is wrong with ``execute``'s return value as a whole, or None."""
        if responses is None:
            return (
                f"execute returned None for {expected} requests (decoupled models, which return None, "
                "are not supported yet)"
            )
        if not isinstance(responses, list):
            return (
                f"execute returned a {type(responses).__name__}, expected a list of "
                f"{expected} pb_utils.InferenceResponse"
            )
        if len(responses) != expected:
            return f"execute returned {len(responses)} responses for {expected} requests"
        for index, response in enumerate(responses):
            if response is None:
                return (
                    f"execute returned None as response {index} (request rescheduling is not "
                    "supported yet; every request needs an InferenceResponse)"
                )
            if not isinstance(response, pb_utils.InferenceResponse):
                return (
                    f"execute returned a {type(response).__name__} as response {index}, "
                    "expected pb_utils.InferenceResponse"
                )
        return None

    def _to_result(self, index: int, response: pb_utils.InferenceResponse, request: Request) -> Result:
        error = response.error()
        if error is not None:
            return Result(error=from_wire(error.wire_code(), error.message()))
        wanted = set(request.requested_outputs) if request.requested_outputs else None
        outputs: dict[str, np.ndarray] = {}
        seen: set[str] = set()
        for tensor in response.output_tensors():
            if not isinstance(tensor, pb_utils.Tensor):
                return self._bad_response(
                    index, f"output_tensors holds a {type(tensor).__name__}, expected pb_utils.Tensor"
                )
            name = tensor.name()
            if name not in self._declared_outputs:
                declared = ", ".join(self._all_outputs) or "none"
                return self._bad_response(
                    index, f"output '{name}' is not declared in the model config (declared: {declared})"
                )
            if name in seen:
                return self._bad_response(index, f"output '{name}' appears twice")
            seen.add(name)
            if wanted is not None and name not in wanted:
                continue
            array = tensor._array
            if array.dtype.kind == "S":
                array = array.astype(object)
            outputs[name] = array
        parameters: dict[str, ParamValue] = {}
        for key, value in response._parameter_dict().items():
            if not isinstance(value, (bool, int, float, str)):
                return self._bad_response(
                    index,
                    f"response parameter '{key}' is a {type(value).__name__}; "
                    "parameters must be bool, int, float or str",
                )
            parameters[key] = value
        return Result(outputs=outputs, parameters=parameters)

    def _bad_response(self, index: int, problem: str) -> Result:
        message = f"python model '{self._model_name}': response {index}: {problem}"
        _LOG.error("%s", message)
        return Result(error=Internal(message))

    # -- async support --------------------------------------------------------------------------------

    def _resolve(self, value: Any) -> Any:
        """``value``, or what it resolves to when the model's method was ``async def``."""
        if not inspect.isawaitable(value):
            return value
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(value)

    def _close_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None or loop.is_closed():
            return
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
