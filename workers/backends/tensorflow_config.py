"""What a SavedModel's serving signature says about its config: auto-complete and the load-time check.

Pure functions over the signature's tensor descriptions (``SignatureTensor``, read by the backend
from the loaded signature), so the rules are tested without TensorFlow.

Names: a config tensor's ``name`` is the signature's *key* (``INPUT0`` in ``serve(INPUT0=...)``),
not the graph tensor behind it (``serving_default_INPUT0:0``), as in Triton's TensorFlow backend.

The rules are the onnxruntime backend's (``onnxruntime_config``), which are Triton's common
auto-complete rules (``shared/notes/triton-reference.md`` §3.2 MR8); what differs for TensorFlow:

- tensors are listed in the order of their signature keys (a signature is a map; sorted keys make
  the completed config the same on every load);
- a signature tensor of unknown rank (``TensorSpec(shape=None)``) has no dims to complete from:
  the config must list it (Triton's TF backend cannot complete it either), and then its dims are
  taken from the config, with the batch dim in front when ``max_batch_size`` > 0;
- ``DEFAULT_MAX_BATCH_SIZE`` is Triton's ``--backend-config=tensorflow,default-max-batch-size`` (4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from meshserve.model_config import ConfigError
from meshserve.pb import model_config_pb2 as mc
from workers.backends.onnxruntime_config import GraphTensor, check_against_graph, complete_from_graph

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "SignatureTensor",
    "check_against_signature",
    "complete_from_signature",
    "config_type_of",
]

DEFAULT_MAX_BATCH_SIZE: Final = 4

_TF_TYPES: Final[dict[str, str]] = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
    "string": "TYPE_STRING",
}


@dataclass(frozen=True, slots=True)
class SignatureTensor:
    """One signature input or output: its key, config data type (``TYPE_FP32``) and dims (-1 =
    variable; ``None`` = unknown rank)."""

    name: str
    data_type: str
    dims: tuple[int, ...] | None


def config_type_of(tf_dtype: str, tensor: str) -> str:
    """The config ``TYPE_*`` of a TensorFlow dtype name such as ``float32``."""
    try:
        return _TF_TYPES[tf_dtype]
    except KeyError:
        raise ConfigError(
            f"tensor '{tensor}' has type {tf_dtype}, which the tensorflow backend does not serve"
        ) from None


def complete_from_signature(
    config: mc.ModelConfig,
    inputs: Sequence[SignatureTensor],
    outputs: Sequence[SignatureTensor],
    signature: str = "serving_default",
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> bool:
    """Fill the config from the signature in place (rules in the module docstring); True when it
    changed.  A ``ConfigError`` names the signature."""
    try:
        return complete_from_graph(
            config,
            _as_graph(config, "input", config.input, inputs, fill=True),
            _as_graph(config, "output", config.output, outputs, fill=True),
            default_max_batch_size,
        )
    except ConfigError as exc:
        raise ConfigError(f"SavedModel signature '{signature}': {exc}") from None


def check_against_signature(
    config: mc.ModelConfig,
    inputs: Sequence[SignatureTensor],
    outputs: Sequence[SignatureTensor],
    signature: str = "serving_default",
) -> None:
    """Refuse a config that contradicts the signature: names that are not its keys, other data
    types or dims, signature inputs the config leaves out, ``max_batch_size`` > 0 on tensors
    without a variable first dim."""
    try:
        check_against_graph(
            config,
            _as_graph(config, "input", config.input, inputs, fill=False),
            _as_graph(config, "output", config.output, outputs, fill=False),
        )
    except ConfigError as exc:
        raise ConfigError(f"SavedModel signature '{signature}': {exc}") from None


def _as_graph(
    config: mc.ModelConfig,
    kind: str,
    declared: Sequence[mc.ModelInput] | Sequence[mc.ModelOutput],
    tensors: Sequence[SignatureTensor],
    fill: bool,
) -> list[GraphTensor]:
    """The signature's tensors in key order, unknown ranks replaced by the config's dims."""
    listed = {io.name: io for io in declared}
    found = []
    for tensor in sorted(tensors, key=lambda t: t.name):
        dims = tensor.dims
        if dims is None:
            io = listed.get(tensor.name)
            if io is None:
                if fill and not declared:
                    raise ConfigError(
                        f"{kind} '{tensor.name}' has no known rank in the model, so its dims cannot "
                        f"be completed: list it in config.pbtxt with its dims"
                    )
                if fill or kind == "output":
                    continue  # not filled from here; an output the config does not serve
                dims = ()  # the check reports it missing from the config
            else:
                shape = tuple(io.reshape.shape) if io.HasField("reshape") else tuple(io.dims)
                dims = (-1, *shape) if config.max_batch_size > 0 else shape
        found.append(GraphTensor(tensor.name, tensor.data_type, dims))
    return found
