"""The caffe backend's pure parts: reading a deploy prototxt and the config rules (auto-complete and
the load-time check), with a fake probe in place of OpenCV."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from meshserve.errors import InvalidArgument
from meshserve.model_config import (
    ConfigError,
    complete_config,
    load_config,
    needs_auto_complete,
    parse_config,
)
from meshserve.pb import model_config_pb2 as mc
from workers.backends.caffe_config import (
    DEFAULT_MAX_BATCH_SIZE,
    check_against_net,
    check_types,
    complete_from_net,
)
from workers.backends.caffe_net import BlobSource, NetInput, read_prototxt

LENET = """
name: "LeNet"  # a comment
input: "data"
input_shape { dim: 10 dim: 1 dim: 28 dim: 28 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }
"""


class FakeProbe:
    """Output shapes of LeNet above as a function of the input's N; with ``fixed_rows`` the net
    runs with that N only (as a net with a Reshape to a fixed N would)."""

    def __init__(self, fixed_rows: int | None = None) -> None:
        self.fixed_rows = fixed_rows
        self.calls: list[dict[str, tuple[int, ...]]] = []

    def __call__(
        self, shapes: Mapping[str, tuple[int, ...]], outputs: Sequence[str]
    ) -> dict[str, tuple[int, ...]]:
        self.calls.append(dict(shapes))
        rows = shapes["data"][0]
        if self.fixed_rows is not None and rows != self.fixed_rows:
            raise InvalidArgument(f"the net does not run on {rows} rows")
        known = {
            "prob": (rows, 10),
            "ip1": (rows, 10),
            "conv1": (rows, 20, 24, 24),
            "pool1": (rows, 20, 12, 12),
        }
        return {name: known[name] for name in outputs}


def config(text: str = "") -> mc.ModelConfig:
    return parse_config('name: "m" backend: "caffe"\n' + text)


# --------------------------------------------------------------------------------------------------
# read_prototxt
# --------------------------------------------------------------------------------------------------


def test_lenet_description() -> None:
    net = read_prototxt(LENET, "deploy.prototxt")
    assert net.name == "LeNet"
    assert net.inputs == (NetInput("data", (10, 1, 28, 28)),)
    assert net.outputs == ("prob",)
    assert net.producers["conv1"] == BlobSource("relu1", 0)  # in place: the value after the ReLU
    assert net.producers["prob"] == BlobSource("prob", 0)
    assert "data" not in net.producers


def test_input_dim_input_layer_and_v1_layers() -> None:
    old = read_prototxt(
        'input: "a" input: "b" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8 '
        "input_dim: 2 input_dim: 1 input_dim: 4 input_dim: 4 "
        'layers { name: "c" type: CONCAT bottom: "a" bottom: "b" top: "c" blobs_lr: 1 }',
        "old",
    )
    assert old.inputs == (NetInput("a", (1, 3, 8, 8)), NetInput("b", (2, 1, 4, 4)))
    assert old.outputs == ("c",)
    layer = read_prototxt(
        'layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 1 dim: 6 } } } '
        'layer < name: "sl" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_point: [3] } > '
        'layer { name: "t" type: "TanH" bottom: "a" top: "ta" } '
        'layer { name: "s" type: "Eltwise" bottom: "b" bottom: "y" top: "s" }',
        "new",
    )
    assert layer.inputs == (NetInput("x", (1, 6)), NetInput("y", (1, 6)))  # one shape for both tops
    assert layer.outputs == ("ta", "s")
    assert layer.producers["b"] == BlobSource("sl", 1)
    assert read_prototxt('input: "z"', "p").inputs == (NetInput("z", None),)


def test_unconsumed_tops_in_order_are_the_outputs() -> None:
    net = read_prototxt(
        'input: "d" input_shape { dim: 1 dim: 4 } '
        'layer { name: "a" type: "ReLU" bottom: "d" top: "a" } '
        'layer { name: "b" type: "TanH" bottom: "a" top: "b" } '
        'layer { name: "c" type: "Sigmoid" bottom: "d" top: "c" } '
        'layer { name: "b2" type: "ReLU" bottom: "b" top: "b" }',
        "p",
    )
    assert net.outputs == ("c", "b")
    assert net.producers["b"] == BlobSource("b2", 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("layer { name: ", "p.prototxt is not a Caffe prototxt"),
        ('input: 3 input_dim: "x"', "p.prototxt is not a Caffe prototxt"),
        ('layer { name: "r" type: "ReLU" bottom: "x" top: "y" }', "declares no input"),
        ('input: "a" input: "b" input_shape { dim: 1 }', "2 input(s) but 1 input_shape(s)"),
        ('input: "a" input_dim: 1 input_dim: 2', "1 input(s) but 2 input_dim values"),
        ('input: "a" input_shape { dim: 1 dim: 0 }', "input 'a' has shape [1, 0]"),
        ('input: "a" input: "a"', "declares input(s) ['a'] more than once"),
        (
            'layer { name: "in" type: "Input" top: "x" top: "y" top: "z" '
            "input_param { shape { dim: 1 } shape { dim: 2 } } }",
            "Input layer 'in' has 3 top(s) but 2 shapes",
        ),
        ('input: "a" layers { name: "x" } layer { name: "y" }', "mixes 'layer' and the deprecated 'layers'"),
    ],
)
def test_bad_prototxts_say_why(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        read_prototxt(text, "p.prototxt")
    assert message in str(err.value)


# --------------------------------------------------------------------------------------------------
# auto-complete
# --------------------------------------------------------------------------------------------------


def test_empty_config_is_completed_as_a_batching_model() -> None:
    cfg, probe = config(), FakeProbe()
    assert complete_from_net(cfg, read_prototxt(LENET, "p"), probe)
    assert cfg.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert cfg.HasField("dynamic_batching")
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.input] == [("data", mc.TYPE_FP32, [1, 28, 28])]
    assert [(t.name, t.data_type, list(t.dims)) for t in cfg.output] == [("prob", mc.TYPE_FP32, [10])]
    assert {shape["data"][0] for shape in probe.calls} == {1, 2}  # it tried 1 and 2 rows


def test_a_net_that_cannot_batch_keeps_max_batch_size_0_and_full_dims() -> None:
    cfg = config()
    complete_from_net(cfg, read_prototxt(LENET, "p"), FakeProbe(fixed_rows=10))
    assert cfg.max_batch_size == 0
    assert not cfg.HasField("dynamic_batching")
    assert [list(t.dims) for t in cfg.input] == [[10, 1, 28, 28]]
    assert [list(t.dims) for t in cfg.output] == [[10, 10]]


def test_max_batch_size_on_a_net_that_cannot_batch_is_an_error() -> None:
    with pytest.raises(ConfigError, match="does not run with a variable batch size"):
        complete_from_net(config("max_batch_size: 8"), read_prototxt(LENET, "p"), FakeProbe(fixed_rows=10))


def test_listed_outputs_are_kept_and_listed_inputs_keep_max_batch_size() -> None:
    cfg = config('output [ { name: "conv1" data_type: TYPE_FP32 dims: [20, 24, 24] } ]')
    complete_from_net(cfg, read_prototxt(LENET, "p"), FakeProbe())
    assert [t.name for t in cfg.output] == ["conv1"] and [t.name for t in cfg.input] == ["data"]
    cfg = config('input [ { name: "data" data_type: TYPE_FP32 dims: [3, 1, 28, 28] } ]')
    complete_from_net(cfg, read_prototxt(LENET, "p"), FakeProbe())
    assert cfg.max_batch_size == 0
    assert [(t.name, list(t.dims)) for t in cfg.output] == [("prob", [3, 10])]


def test_a_complete_config_is_left_alone() -> None:
    text = 'input [ { name: "data" data_type: TYPE_FP32 dims: [1, 28, 28] } ] output [ { name: "prob" data_type: TYPE_FP32 dims: [10] } ]'
    cfg, probe = config(text), FakeProbe()
    assert not complete_from_net(cfg, read_prototxt(LENET, "p"), probe)
    assert cfg == config(text) and not probe.calls


def test_an_input_without_a_shape_cannot_be_completed() -> None:
    net = read_prototxt('input: "x" layer { name: "r" type: "ReLU" bottom: "x" top: "r" }', "p")
    with pytest.raises(ConfigError, match=r"no shape for input\(s\) \['x'\]: list the inputs"):
        complete_from_net(config(), net, FakeProbe())


def test_only_first_tops_are_auto_completed() -> None:
    net = read_prototxt(
        'input: "data" input_shape { dim: 1 dim: 6 } '
        'layer { name: "sl" type: "Slice" bottom: "data" top: "a" top: "b" }',
        "p",
    )
    assert net.servable_outputs() == ["a"]
    only_second = read_prototxt(
        'input: "data" input_shape { dim: 1 dim: 6 } '
        'layer { name: "sl" type: "Slice" bottom: "data" top: "a" top: "b" } '
        'layer { name: "r" type: "ReLU" bottom: "a" top: "a2" } layer { name: "s" type: "Silence" bottom: "a2" }',
        "p",
    )
    with pytest.raises(ConfigError, match="non-first tops"):
        complete_from_net(config(), only_second, FakeProbe())


def test_auto_complete_is_asked_for_caffe_models(tmp_path: Path) -> None:
    assert needs_auto_complete(config())
    legacy = parse_config('name: "m" platform: "caffe"')
    complete_config(legacy, "m")
    assert legacy.backend == "caffe" and needs_auto_complete(legacy)
    model = tmp_path / "net"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.caffemodel").write_bytes(b"")
    loaded = load_config(model)  # no config.pbtxt: the caffemodel names the backend
    assert (loaded.name, loaded.backend, loaded.platform) == ("net", "caffe", "caffe")
    assert loaded.default_model_filename == "model.caffemodel"
    (model / "config.pbtxt").write_text('platform: "caffe" default_model_filename: "w.caffemodel"')
    loaded = load_config(model)
    assert (loaded.backend, loaded.default_model_filename) == ("caffe", "w.caffemodel")


# --------------------------------------------------------------------------------------------------
# the load-time check
# --------------------------------------------------------------------------------------------------

GOOD = """
max_batch_size: 4
input [ { name: "data" data_type: TYPE_FP32 dims: [1, 28, 28] } ]
output [ { name: "prob" data_type: TYPE_FP32 dims: [10] } ]
"""


def test_a_config_that_matches_passes() -> None:
    check_against_net(config(GOOD), read_prototxt(LENET, "p"), FakeProbe())
    wildcard = GOOD.replace("dims: [1, 28, 28]", "dims: [1, -1, 28]").replace("dims: [10]", "dims: [-1]")
    check_against_net(config(wildcard), read_prototxt(LENET, "p"), FakeProbe())
    whole = GOOD.replace("max_batch_size: 4", "").replace("[1, 28, 28]", "[3, 1, 28, 28]")
    check_against_net(
        config(whole.replace("dims: [10]", "dims: [3, 10]")), read_prototxt(LENET, "p"), FakeProbe()
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name: "data"', 'name: "image"', "input 'image' is not an input of the net (its inputs: data)"),
        (
            "dims: [1, 28, 28]",
            "dims: [1, 32, 32]",
            "input 'data': the config's dims [1, 32, 32] do not match the prototxt's shape [-1, 1, 28, 28]",
        ),
        ("dims: [1, 28, 28]", "dims: [28, 28]", "do not match the prototxt's shape"),
        ('name: "prob"', 'name: "scores"', "output 'scores' is not a blob of the net (its outputs: prob"),
        (
            "dims: [10]",
            "dims: [12]",
            "output 'prob': the config's dims [12] do not match the net's shape [-1, 10]",
        ),
        (
            "TYPE_FP32 dims: [10]",
            "TYPE_FP16 dims: [10]",
            "output 'prob' is TYPE_FP16: the caffe backend serves TYPE_FP32 tensors only",
        ),
        ("TYPE_FP32 dims: [1, 28, 28]", "TYPE_UINT8 dims: [1, 28, 28]", "input 'data' is TYPE_UINT8"),
        ("dims: [10] }", "dims: [10] reshape { shape: [10] } }", "does not support 'reshape'"),
    ],
)
def test_a_config_that_contradicts_the_net_is_refused(old: str, new: str, message: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError) as err:
        check_against_net(config(GOOD.replace(old, new, 1)), read_prototxt(LENET, "p"), FakeProbe())
    assert message in str(err.value)


def test_missing_inputs_non_first_tops_and_batching_are_checked() -> None:
    two = read_prototxt(
        'input: "a" input_shape { dim: 1 dim: 6 } input: "b" input_shape { dim: 1 dim: 6 } '
        'layer { name: "sl" type: "Slice" bottom: "a" top: "p" top: "q" }',
        "p",
    )
    cfg = config(
        'input [ { name: "a" data_type: TYPE_FP32 dims: [1, 6] } ] output [ { name: "q" data_type: TYPE_FP32 dims: [1] } ]'
    )
    with pytest.raises(ConfigError, match=r"the net's input\(s\) \['b'\] are missing"):
        check_against_net(cfg, two, FakeProbe())
    cfg.input.add(name="b", data_type=mc.TYPE_FP32, dims=[1, 6])
    with pytest.raises(ConfigError, match="output 'q' is top 1 of layer 'sl'"):
        check_against_net(cfg, two, FakeProbe())
    with pytest.raises(
        ConfigError, match="max_batch_size is 4 but the net does not run with a variable batch size"
    ):
        check_against_net(config(GOOD), read_prototxt(LENET, "p"), FakeProbe(fixed_rows=1))


def test_check_types_alone() -> None:
    check_types(config(GOOD))
    with pytest.raises(ConfigError, match="TYPE_STRING"):
        check_types(config('input [ { name: "x" data_type: TYPE_STRING dims: [1] } ]'))
