"""The ``onnxruntime`` backend: ``<version>/model.onnx`` (or ``default_model_filename``) in an
onnxruntime ``InferenceSession``.

- Providers: ``CUDAExecutionProvider`` (then CPU) when the worker's device is ``cuda:N`` and the
  installed onnxruntime has it; ``CPUExecutionProvider`` otherwise.
- Session options from the config as Triton's onnxruntime backend reads them: ``parameters``
  ``intra_op_thread_count``, ``inter_op_thread_count``, ``execution_mode`` (0 sequential, 1
  parallel), ``enable_mem_arena``, ``enable_mem_pattern``,
  ``session.use_device_allocator_for_initializers``, ``memory.enable_memory_arena_shrinkage`` (a
  run option), and ``optimization { graph { level } }`` (-1 basic, 1 extended, 2 none, else all).
- Tensors are fed and read by name (ONNX tensors are named); a config tensor with ``reshape`` is
  reshaped on the way in and back to its ``dims`` on the way out.  BYTES (ONNX string) and BF16
  tensors are refused at load.
- A batch runs as one ``session.run``: with ``max_batch_size`` > 0 the requests are concatenated
  on dimension 0 and each output is split back by rows.
- Config auto-complete (``auto_complete_config``) reads the graph's inputs and outputs from the
  same session that ``load`` then serves; the rules live in ``onnxruntime_config``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnxruntime as ort
from numpy.typing import NDArray

from meshserve.errors import Internal, InvalidArgument
from meshserve.model_config import needs_auto_complete
from meshserve.pb import model_config_pb2 as mc
from workers.backends.base import LoadContext, Request, Result
from workers.backends.onnxruntime_config import (
    GraphTensor,
    check_against_graph,
    complete_from_graph,
    config_type_of,
)
from workers.backends.stacking import ConfigTensor, execute_stacked

log = logging.getLogger(__name__)

__all__ = ["OnnxRuntimeBackend", "create", "providers_for", "session_options"]

_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
_UNSUPPORTED_TYPES = {
    mc.TYPE_STRING: "BYTES (ONNX string)",
    mc.TYPE_BF16: "BF16 (numpy has no bfloat16)",
}
_TRUE, _FALSE = {"true", "1", "on"}, {"false", "0", "off"}


def create() -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend()


def providers_for(device: str) -> list[Any]:
    """Execution providers for the worker's device, in order of preference."""
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            device_id = device.partition(":")[2] or "0"
            return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        log.warning("device %s asked for, but this onnxruntime has no CUDAExecutionProvider: CPU", device)
    return ["CPUExecutionProvider"]


def session_options(config: mc.ModelConfig) -> tuple[ort.SessionOptions, ort.RunOptions]:
    """Session and run options from the config's ``parameters`` and ``optimization.graph.level``."""
    params = {key: value.string_value for key, value in config.parameters.items()}
    options = ort.SessionOptions()
    options.graph_optimization_level = _GRAPH_LEVELS.get(
        config.optimization.graph.level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    mode = _int_param(params, "execution_mode")
    if mode not in (0, 1):
        raise InvalidArgument(
            f"parameter 'execution_mode' must be 0 (sequential) or 1 (parallel), got {mode}"
        )
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL if mode == 1 else ort.ExecutionMode.ORT_SEQUENTIAL
    intra = _int_param(params, "intra_op_thread_count")
    if intra > 0:
        options.intra_op_num_threads = intra
    inter = _int_param(params, "inter_op_thread_count")
    if inter > 0:
        options.inter_op_num_threads = inter
    if "enable_mem_arena" in params:
        options.enable_cpu_mem_arena = _bool_param(params, "enable_mem_arena")
    if "enable_mem_pattern" in params:
        options.enable_mem_pattern = _bool_param(params, "enable_mem_pattern")
    key = "session.use_device_allocator_for_initializers"
    if key in params:
        options.add_session_config_entry(key, params[key])
    run_options = ort.RunOptions()
    key = "memory.enable_memory_arena_shrinkage"
    if key in params:
        run_options.add_run_config_entry(key, params[key])
    return options, run_options


def _int_param(params: dict[str, str], key: str) -> int:
    raw = params.get(key, "0").strip() or "0"
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"parameter '{key}' must be an integer, got '{raw}'") from None


def _bool_param(params: dict[str, str], key: str) -> bool:
    raw = params[key].strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise InvalidArgument(f"parameter '{key}' must be true/false (or 1/0, on/off), got '{params[key]}'")


def _describe(args: list[Any]) -> list[GraphTensor]:
    """Graph inputs or outputs (onnxruntime ``NodeArg``s) as names, config types and dims."""
    return [
        GraphTensor(
            arg.name,
            config_type_of(arg.type, arg.name),
            tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape),
        )
        for arg in args
    ]


class OnnxRuntimeBackend:
    def __init__(self) -> None:
        self._session: Any = None
        self._path: Path | None = None
        self._run_options: Any = None
        self._inputs: list[ConfigTensor] = []
        self._outputs: list[ConfigTensor] = []
        self._batching = False

    # -- load ---------------------------------------------------------------------------------------
    def auto_complete_config(self, ctx: LoadContext) -> None:
        if not needs_auto_complete(ctx.config):
            return
        session = self._open(ctx)
        if complete_from_graph(ctx.config, _describe(session.get_inputs()), _describe(session.get_outputs())):
            log.info(
                "config of %s completed from %s: max_batch_size %d, inputs %s, outputs %s",
                ctx.model_name,
                self._path,
                ctx.config.max_batch_size,
                [(t.name, list(t.dims)) for t in ctx.config.input],
                [(t.name, list(t.dims)) for t in ctx.config.output],
            )

    def load(self, ctx: LoadContext) -> None:
        for kind, tensors in (("input", ctx.config.input), ("output", ctx.config.output)):
            for tensor in tensors:
                if tensor.data_type in _UNSUPPORTED_TYPES:
                    raise InvalidArgument(
                        f"{kind} '{tensor.name}': the onnxruntime backend has no "
                        f"{_UNSUPPORTED_TYPES[tensor.data_type]} tensors"
                    )
        session = self._open(ctx)
        check_against_graph(ctx.config, _describe(session.get_inputs()), _describe(session.get_outputs()))
        self._inputs = [ConfigTensor(t) for t in ctx.config.input]
        self._outputs = [ConfigTensor(t) for t in ctx.config.output]
        self._batching = ctx.config.max_batch_size > 0
        log.info("loaded %s with %s", self._path, session.get_providers())

    def _open(self, ctx: LoadContext) -> Any:
        """The session for this model file, opened once (auto-complete and load share it)."""
        path = ctx.version_dir / (ctx.config.default_model_filename or "model.onnx")
        if path.is_dir():  # Triton's layout for a model with external data: model.onnx/model.onnx
            path = path / "model.onnx"
        if self._session is not None and path == self._path:
            return self._session
        if not path.is_file():
            raise InvalidArgument(f"model file {path} not found")
        options, self._run_options = session_options(ctx.config)
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers_for(ctx.device)
            )
        except Exception as exc:
            raise InvalidArgument(f"onnxruntime cannot load {path}: {exc}") from exc
        self._path = path
        return self._session

    # -- execute -------------------------------------------------------------------------------------
    def execute(self, requests: list[Request]) -> list[Result]:
        return execute_stacked(requests, self._run_shaped, [t.name for t in self._inputs], self._batching)

    def unload(self) -> None:
        self._session = None
        self._path = None

    def _run_shaped(self, inputs: dict[str, NDArray[Any]], rows: int) -> dict[str, NDArray[Any]]:
        """One ``session.run``: inputs reshaped in, outputs checked for ``rows`` and reshaped out."""
        feed = {t.name: t.shape_in(inputs[t.name], rows) for t in self._inputs}
        return {t.name: t.shape_out(out, rows) for t, out in zip(self._outputs, self._run(feed), strict=True)}

    def _run(self, feed: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
        try:
            outputs: list[NDArray[Any]] = self._session.run(
                [t.name for t in self._outputs], feed, self._run_options
            )
        except Exception as exc:
            raise Internal(f"onnxruntime model failed: {type(exc).__name__}: {exc}") from exc
        return outputs
