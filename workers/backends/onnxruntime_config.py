"""What an ONNX graph says about its config: Triton's auto-complete rules and the load-time check.

Pure functions over the graph's tensor descriptions (``GraphTensor``, read by the backend from an
onnxruntime session), so the rules are tested without a model file.

Auto-complete (Triton's onnxruntime backend, ``shared/notes/triton-reference.md`` §3.2 MR8):

- nothing is done when the config already lists inputs (or batch inputs) *and* outputs;
- the model can batch when every graph input and output has a variable first dimension; then
  ``max_batch_size`` 0 becomes ``DEFAULT_MAX_BATCH_SIZE`` (Triton's ``default-max-batch-size``),
  that first dimension is left out of ``dims``, and a model with ``max_batch_size`` > 1 and no
  scheduler gets ``dynamic_batching {}``; a model that cannot batch but whose config sets
  ``max_batch_size`` is an error;
- the missing list (inputs, outputs or both) is filled in graph order with name, ``TYPE_*`` and
  dims; a tensor with no dims left becomes ``dims: [1]`` with ``reshape { shape: [] }``.  (Triton
  adds that reshape only when the model batches; here a non-batching scalar gets it too, since the
  backend honours ``reshape`` and the graph could not be fed otherwise.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, cast

from meshserve.model_config import ConfigError
from meshserve.pb import model_config_pb2 as mc

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "GraphTensor",
    "check_against_graph",
    "complete_from_graph",
    "config_type_of",
]

DEFAULT_MAX_BATCH_SIZE: Final = 4
"""Triton's ``--backend-config=onnxruntime,default-max-batch-size`` default."""

_ORT_TYPES: Final[dict[str, str]] = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(string)": "TYPE_STRING",
}


@dataclass(frozen=True, slots=True)
class GraphTensor:
    """One graph input or output: its name, config data type (``TYPE_FP32``) and dims (-1 = variable)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def config_type_of(ort_type: str, tensor: str) -> str:
    """The config ``TYPE_*`` of an onnxruntime type string such as ``tensor(float)``."""
    try:
        return _ORT_TYPES[ort_type]
    except KeyError:
        raise ConfigError(
            f"tensor '{tensor}' has type {ort_type}, which the onnxruntime backend does not serve"
        ) from None


def complete_from_graph(
    config: mc.ModelConfig,
    inputs: Sequence[GraphTensor],
    outputs: Sequence[GraphTensor],
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> bool:
    """Fill the config from the graph in place (rules in the module docstring); True when it changed."""
    listed_inputs = len(config.input) + len(config.batch_input)
    if listed_inputs and config.output:
        return False
    _complete_max_batch_size(config, [*inputs, *outputs], default_max_batch_size)
    if not listed_inputs:
        for tensor in inputs:
            _fill(config.input.add(), tensor, config.max_batch_size > 0)
    if not config.output:
        for tensor in outputs:
            _fill(config.output.add(), tensor, config.max_batch_size > 0)
    return True


def _complete_max_batch_size(
    config: mc.ModelConfig, tensors: Sequence[GraphTensor], default_max_batch_size: int
) -> None:
    can_batch = all(t.dims and t.dims[0] == -1 for t in tensors)
    if not can_batch:
        if config.max_batch_size != 0:
            raise ConfigError(
                f"autofill failed for model '{config.name}': model does not support batching while "
                "non-zero max_batch_size is specified"
            )
        return
    if config.max_batch_size == 0:
        config.max_batch_size = max(default_max_batch_size, 0)
    if config.max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
        config.dynamic_batching.SetInParent()


def _fill(io: mc.ModelInput | mc.ModelOutput, tensor: GraphTensor, batching: bool) -> None:
    io.name = tensor.name
    io.data_type = cast("mc.DataType", mc.DataType.Value(tensor.data_type))
    dims = tensor.dims[1:] if batching else tensor.dims
    if dims:
        io.dims.extend(dims)
    else:
        io.dims.append(1)
        io.reshape.SetInParent()  # shape [] : a scalar per batch row (or a scalar model tensor)


def check_against_graph(
    config: mc.ModelConfig, inputs: Sequence[GraphTensor], outputs: Sequence[GraphTensor]
) -> None:
    """Refuse a config that contradicts the graph: unknown names, other data types or dims, graph
    inputs the config leaves out, or ``max_batch_size`` > 0 on tensors without a variable first dim."""
    batching = config.max_batch_size > 0
    graph_inputs = {t.name: t for t in inputs}
    graph_outputs = {t.name: t for t in outputs}
    for kind, declared, graph in (
        ("input", config.input, graph_inputs),
        ("output", config.output, graph_outputs),
    ):
        for io in declared:
            found = graph.get(io.name)
            if found is None:
                raise ConfigError(
                    f"{kind} '{io.name}' is not an {kind} of the model (the model's {kind}s: "
                    f"{', '.join(graph) or 'none'})"
                )
            _check_tensor(kind, io, found, batching)
    missing = [name for name in graph_inputs if name not in {io.name for io in config.input}]
    if missing:
        raise ConfigError(f"the model's input(s) {missing} are missing from the config")


def _check_tensor(kind: str, io: mc.ModelInput | mc.ModelOutput, graph: GraphTensor, batching: bool) -> None:
    declared_type = mc.DataType.Name(io.data_type)
    if declared_type != graph.data_type:
        raise ConfigError(
            f"{kind} '{io.name}': the config says {declared_type}, the model has {graph.data_type}"
        )
    model_dims = graph.dims
    if batching:
        if not model_dims or model_dims[0] != -1:
            raise ConfigError(
                f"{kind} '{io.name}': max_batch_size > 0 needs a variable first dimension, the model "
                f"has {list(model_dims)}"
            )
        model_dims = model_dims[1:]
    declared = tuple(io.reshape.shape) if io.HasField("reshape") else tuple(io.dims)
    if len(declared) != len(model_dims) or any(
        m != -1 and m != d for m, d in zip(model_dims, declared, strict=True)
    ):
        what = "reshape" if io.HasField("reshape") else "dims"
        full = [-1, *model_dims] if batching else list(model_dims)
        raise ConfigError(
            f"{kind} '{io.name}': the config's {what} {list(declared)} do not match the model's "
            f"shape {full}" + (" (its first dim is the batch dim)" if batching else "")
        )
