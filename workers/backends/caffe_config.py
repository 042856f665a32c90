"""The caffe backend's config rules: auto-complete from the prototxt and the load-time check.

Pure functions over a ``NetDescription`` (the prototxt) and a *probe*: a callable that runs the net
on zeros of given input shapes and returns the shapes of the named blobs (the backend's probe is
one OpenCV forward pass; tests pass a fake).  Caffe stores output shapes nowhere, so a dry run is
how they are known.

- **Types**: every tensor is ``TYPE_FP32`` (OpenCV runs Caffe nets in FP32); ``reshape`` is refused.
- **Batch dim**: a Caffe blob's first dim is N, which the net may change at run time.  With
  ``max_batch_size`` > 0 the config's dims leave it out; with 0 they include it.  Either way the
  prototxt's own N is not compared (deploy prototxts often say 1 or 10).
- **Auto-complete** (the config lists no inputs or no outputs): missing inputs come from the
  prototxt (its shapes are needed then), missing outputs are the unconsumed tops (those OpenCV can
  return: first tops) with the shapes of a dry run.  When the config lists no inputs and ``max_batch_size`` is 0, the net batches if dry
  runs with 1 and 2 rows give every output that many rows; then ``max_batch_size`` becomes
  ``DEFAULT_MAX_BATCH_SIZE`` and a scheduler-less config gets ``dynamic_batching {}``.  A config
  that lists its inputs keeps its ``max_batch_size`` (its dims were written for it).
- **Check** (always, at load): config inputs are exactly the net's inputs with the prototxt's
  dims (``-1`` in the config matches any); each config output is a blob the net produces, the first
  top of its layer (OpenCV returns no other), and the dry run's shape matches its dims.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

from meshserve.model_config import ConfigError
from meshserve.pb import model_config_pb2 as mc
from workers.backends.caffe_net import NetDescription

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "Probe", "check_against_net", "check_types", "complete_from_net"]

DEFAULT_MAX_BATCH_SIZE: Final = 4
"""``max_batch_size`` an auto-completed config gets when the net batches (onnxruntime's default)."""

Probe = Callable[[Mapping[str, tuple[int, ...]], Sequence[str]], dict[str, tuple[int, ...]]]
"""(input shapes with N, output blob names) -> each output's shape; raises when the net cannot run."""


def check_types(config: mc.ModelConfig) -> None:
    """FP32 tensors only, no ``reshape``: ConfigError naming the first tensor that breaks it."""
    for kind, tensors in (("input", config.input), ("output", config.output)):
        for tensor in tensors:
            if tensor.data_type != mc.TYPE_FP32:
                raise ConfigError(
                    f"{kind} '{tensor.name}' is {mc.DataType.Name(tensor.data_type)}: the caffe backend "
                    "serves TYPE_FP32 tensors only (OpenCV runs Caffe nets in FP32)"
                )
            if tensor.HasField("reshape"):
                raise ConfigError(f"{kind} '{tensor.name}': the caffe backend does not support 'reshape'")


def complete_from_net(config: mc.ModelConfig, net: NetDescription, probe: Probe) -> bool:
    """Fill missing inputs/outputs (and ``max_batch_size``) in place; True when the config changed."""
    if config.input and config.output:
        return False
    check_types(config)
    _check_inputs(config, net)
    _check_outputs(config, net)
    outputs = [io.name for io in config.output] or net.servable_outputs()
    if not outputs:
        raise ConfigError(
            f"the net's outputs {list(net.outputs)} are all non-first tops of their layers, which "
            "OpenCV's DNN module does not return: list the outputs in config.pbtxt"
        )
    if not config.input:
        unknown = [i.name for i in net.inputs if i.dims is None]
        if unknown:
            raise ConfigError(
                f"the prototxt gives no shape for input(s) {unknown}: list the inputs in config.pbtxt"
            )
        prototxt_shapes = {i.name: (i.dims or ())[1:] for i in net.inputs}
        if config.max_batch_size == 0 and _net_batches(prototxt_shapes, outputs, probe):
            config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        elif config.max_batch_size > 0 and not _net_batches(prototxt_shapes, outputs, probe):
            raise ConfigError(
                f"autofill failed for model '{config.name}': the net does not run with a variable "
                "batch size while non-zero max_batch_size is specified"
            )
        batching = config.max_batch_size > 0
        for net_input in net.inputs:
            dims = net_input.dims or ()
            _add(config.input.add(), net_input.name, dims[1:] if batching else dims)
    batching = config.max_batch_size > 0
    if not config.output:
        shapes = probe(_feed_shapes(config, net, 1), outputs)
        for name in outputs:
            _add(config.output.add(), name, shapes[name][1:] if batching else shapes[name])
    if batching and config.max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
        config.dynamic_batching.SetInParent()
    return True


def check_against_net(config: mc.ModelConfig, net: NetDescription, probe: Probe) -> None:
    """Refuse a config that contradicts the net (rules in the module docstring)."""
    check_types(config)
    _check_inputs(config, net)
    missing = [i.name for i in net.inputs if i.name not in {io.name for io in config.input}]
    if missing:
        raise ConfigError(f"the net's input(s) {missing} are missing from the config")
    if not config.output:
        raise ConfigError("the config lists no outputs")
    _check_outputs(config, net)
    batching = config.max_batch_size > 0
    shapes = probe(_feed_shapes(config, net, 1), [io.name for io in config.output])
    for io in config.output:
        _check_dims("output", io, shapes[io.name], batching, "the net's")
    if batching:
        row_shapes = {name: shape[1:] for name, shape in _feed_shapes(config, net, 1).items()}
        if not _net_batches(row_shapes, [io.name for io in config.output], probe):
            raise ConfigError(
                f"max_batch_size is {config.max_batch_size} but the net does not run with a variable "
                "batch size (dry runs with 1 and 2 rows): set max_batch_size 0"
            )


def _check_inputs(config: mc.ModelConfig, net: NetDescription) -> None:
    """Each config input is a net input with the prototxt's dims (where it gives them)."""
    by_name = {i.name: i for i in net.inputs}
    for io in config.input:
        net_input = by_name.get(io.name)
        if net_input is None:
            raise ConfigError(
                f"input '{io.name}' is not an input of the net (its inputs: {', '.join(by_name)})"
            )
        if net_input.dims is not None:
            _check_dims("input", io, net_input.dims, config.max_batch_size > 0, "the prototxt's")


def _check_outputs(config: mc.ModelConfig, net: NetDescription) -> None:
    """Each config output is a blob the net produces, the first top of its layer."""
    for io in config.output:
        source = net.producers.get(io.name)
        if source is None:
            raise ConfigError(
                f"output '{io.name}' is not a blob of the net (its outputs: "
                f"{', '.join(net.outputs) or 'none'}; any layer's top may be served)"
            )
        if source.top_index != 0:
            raise ConfigError(
                f"output '{io.name}' is top {source.top_index} of layer '{source.layer}': OpenCV's DNN "
                "module returns a layer's first top only"
            )


def _net_batches(row_shapes: Mapping[str, tuple[int, ...]], outputs: Sequence[str], probe: Probe) -> bool:
    """True when dry runs with 1 and 2 rows of ``row_shapes`` give every output that many rows."""
    for rows in (1, 2):
        shapes = {name: (rows, *shape) for name, shape in row_shapes.items()}
        try:
            found = probe(shapes, outputs)
        except Exception:
            return False
        if any(not shape or shape[0] != rows for shape in found.values()):
            return False
    return True


def _feed_shapes(config: mc.ModelConfig, net: NetDescription, rows: int) -> dict[str, tuple[int, ...]]:
    """Input shapes for a dry run: the config's dims (N = ``rows`` when batching), a ``-1`` taken
    from the prototxt (1 where the prototxt gives no shape)."""
    batching = config.max_batch_size > 0
    by_name = {i.name: i for i in net.inputs}
    shapes = {}
    for io in config.input:
        declared = by_name[io.name].dims
        known = (declared[1:] if batching else declared) if declared is not None else ()
        dims = [
            d if d != -1 else (known[k] if k < len(known) and (k > 0 or batching) else 1)
            for k, d in enumerate(io.dims)
        ]
        shapes[io.name] = (rows, *dims) if batching else tuple(dims)
    return shapes


def _check_dims(
    kind: str, io: mc.ModelInput | mc.ModelOutput, shape: tuple[int, ...], batching: bool, whose: str
) -> None:
    """The config's dims against a net shape (N first); the N is never compared.  A net shape with
    nothing after N matches dims ``[1]`` (the backend serves it as one value per row)."""
    declared = list(io.dims)
    compared = (shape[1:] if batching else shape) or (1,)
    if len(declared) != len(compared) or any(
        d not in (-1, s) and not (k == 0 and not batching)
        for k, (d, s) in enumerate(zip(declared, compared, strict=True))
    ):
        raise ConfigError(
            f"{kind} '{io.name}': the config's dims {declared} do not match {whose} shape "
            f"{[-1, *shape[1:]]}" + (" (with max_batch_size > 0 the dims leave out N)" if batching else "")
        )


def _add(io: mc.ModelInput | mc.ModelOutput, name: str, dims: Sequence[int]) -> None:
    io.name = name
    io.data_type = mc.TYPE_FP32
    io.dims.extend(dims if dims else [1])
