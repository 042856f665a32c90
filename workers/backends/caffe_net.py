"""What a Caffe deploy prototxt says about its net: inputs with their shapes, and its blob graph.

Pure (protobuf's text format and the few messages of ``protos/meshserve/pb/caffe_net.proto``; no
OpenCV), so the caffe backend's config rules are tested without a model file or OpenCV.

- **Inputs** are declared as Caffe allows: top-level ``input: "data"`` with one ``input_shape { dim
  ... }`` per input or four ``input_dim`` values per input (N, C, H, W), or ``layer { type: "Input"
  top: ... input_param { shape { ... } } }`` (one shape per top, or one shape for all tops).  An
  input with no shape has ``dims`` None.
- **Blobs** are the layers' tops.  A blob's *producer* is the last layer that writes it, so an
  in-place layer (``ReLU`` with ``bottom: "conv1" top: "conv1"``) is the producer of ``conv1``: the
  value a client gets is the one after it, as in Caffe.  OpenCV's DNN module addresses a result by
  its producing layer's name, and returns a layer's first top only (``top_index`` 0).
- **Outputs** are the tops no later layer consumes (Caffe's own rule for a net's outputs), in the
  order they were produced.

Fields the net description does not need (layer parameters, phases, weights) are skipped when
parsing; OpenCV reads the full net itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format

from meshserve.errors import InvalidArgument
from meshserve.pb import caffe_net_pb2 as cp

__all__ = ["BlobSource", "NetDescription", "NetInput", "read_prototxt"]

_INPUT_LAYER = "Input"


@dataclass(frozen=True, slots=True)
class NetInput:
    """A net input: its blob name and the shape the prototxt gives it (N first), None when none."""

    name: str
    dims: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class BlobSource:
    """Where a blob's final value comes from: the layer that last writes it, and which of its tops."""

    layer: str
    top_index: int


@dataclass(frozen=True, slots=True)
class NetDescription:
    name: str
    inputs: tuple[NetInput, ...]
    outputs: tuple[str, ...]
    """Tops no later layer consumes, in order."""
    producers: dict[str, BlobSource]
    """Every blob a layer writes (not the inputs), by name."""

    def servable_outputs(self) -> list[str]:
        """The outputs OpenCV's DNN module can return: each the first top of its layer."""
        return [name for name in self.outputs if self.producers[name].top_index == 0]


def read_prototxt(text: str, source: str) -> NetDescription:
    """The description of a deploy prototxt; InvalidArgument naming ``source`` when it is not one."""
    net = cp.NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise InvalidArgument(f"{source} is not a Caffe prototxt: {exc}") from exc
    if net.layer and net.layers:
        raise InvalidArgument(f"{source} mixes 'layer' and the deprecated 'layers': use one of them")
    inputs = _top_level_inputs(net, source)
    producers: dict[str, BlobSource] = {}
    unconsumed: dict[str, None] = {}  # an ordered set
    layers: list[cp.LayerParameter] | list[cp.V1LayerParameter] = list(net.layer) or list(net.layers)
    for layer in layers:
        if isinstance(layer, cp.LayerParameter) and layer.type == _INPUT_LAYER:
            inputs.extend(_input_layer(layer, source))
            continue
        for bottom in layer.bottom:
            unconsumed.pop(bottom, None)
        for index, top in enumerate(layer.top):
            producers[top] = BlobSource(layer.name, index)
            unconsumed.pop(top, None)
            unconsumed[top] = None
    names = [i.name for i in inputs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InvalidArgument(f"{source} declares input(s) {duplicated} more than once")
    if not inputs:
        raise InvalidArgument(
            f"{source} declares no input (a deploy prototxt has 'input: \"data\"' or an 'Input' layer)"
        )
    return NetDescription(net.name, tuple(inputs), tuple(unconsumed), producers)


def _top_level_inputs(net: cp.NetParameter, source: str) -> list[NetInput]:
    names = list(net.input)
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise InvalidArgument(
                f"{source} has {len(names)} input(s) but {len(net.input_shape)} input_shape(s)"
            )
        return [NetInput(n, _dims(s, n, source)) for n, s in zip(names, net.input_shape, strict=True)]
    if net.input_dim:
        if len(net.input_dim) != 4 * len(names):
            raise InvalidArgument(
                f"{source} has {len(names)} input(s) but {len(net.input_dim)} input_dim values "
                "(four per input: N, C, H, W)"
            )
        return [
            NetInput(n, _checked(tuple(net.input_dim[4 * i : 4 * i + 4]), n, source))
            for i, n in enumerate(names)
        ]
    return [NetInput(n, None) for n in names]


def _input_layer(layer: cp.LayerParameter, source: str) -> list[NetInput]:
    shapes = list(layer.input_param.shape)
    if shapes and len(shapes) not in (1, len(layer.top)):
        raise InvalidArgument(
            f"{source}: Input layer '{layer.name}' has {len(layer.top)} top(s) but {len(shapes)} shapes"
        )
    found = []
    for index, top in enumerate(layer.top):
        shape = shapes[index if len(shapes) > 1 else 0] if shapes else None
        found.append(NetInput(top, _dims(shape, top, source) if shape is not None else None))
    return found


def _dims(shape: cp.BlobShape, name: str, source: str) -> tuple[int, ...]:
    return _checked(tuple(shape.dim), name, source)


def _checked(dims: tuple[int, ...], name: str, source: str) -> tuple[int, ...]:
    if not dims or any(d <= 0 for d in dims):
        raise InvalidArgument(f"{source}: input '{name}' has shape {list(dims)}; every dim must be > 0")
    return dims
