"""Build the example Caffe model with a fixed seed, without Caffe: ``lenet_caffe``.

python examples/build_caffe.py [--repository examples/caffe_repository]

Writes ``lenet_caffe/config.pbtxt``, ``lenet_caffe/1/model.prototxt`` (the net, text) and
``lenet_caffe/1/model.caffemodel`` (the weights: a binary ``NetParameter`` written with the few
Caffe messages of ``protos/meshserve/pb/caffe_net.proto``, one layer per weighted layer, matched to
the prototxt by layer name as Caffe and OpenCV do).  The net is a small LeNet:

    data [N,1,28,28] -> conv1 (4 filters 5x5) -> relu1 -> pool1 (max 2x2/2) -> conv2 (8 filters 3x3)
    -> relu2 -> pool2 (average 2x2/2) -> ip1 (10) -> prob (softmax)   prob [N,10]

The model is served by the ``caffe`` backend (OpenCV, the optional extra ``meshserve[caffe]``); it
lives in its own repository so that the main example repository comes up READY without OpenCV.
``lenet_reference`` computes the same net in numpy from the same seeded weights: the tests compare
the served outputs against it.  Needs only numpy and meshserve itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

HERE = Path(__file__).resolve().parent
SEED = 0
Array = NDArray[np.float32]

PROTOTXT = """\
# Built by examples/build_caffe.py: a small LeNet, weights in model.caffemodel.
name: "LeNetSmall"
input: "data"
input_shape { dim: 1 dim: 1 dim: 28 dim: 28 }
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 5 stride: 1 }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 stride: 1 }
}
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer {
  name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 }
}
layer {
  name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  inner_product_param { num_output: 10 }
}
layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }
"""

CONFIG = """\
# Built by examples/build_caffe.py.  A Caffe net (model.prototxt + model.caffemodel) served by the
# caffe backend through OpenCV's DNN module: pip install 'meshserve[caffe]'.
name: "lenet_caffe"
backend: "caffe"
max_batch_size: 8
input [ { name: "data" data_type: TYPE_FP32 dims: [ 1, 28, 28 ] } ]
output [ { name: "prob" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "num_threads" value: { string_value: "1" } }
"""


def lenet_weights(seed: int = SEED) -> dict[str, list[Array]]:
    """Each weighted layer's blobs in Caffe's layout: convolution [out, in, kh, kw] + bias [out],
    inner product [out, in] + bias [out]."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float) -> Array:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {
        "conv1": [normal(4, 1, 5, 5, scale=0.2), normal(4, scale=0.1)],
        "conv2": [normal(8, 4, 3, 3, scale=0.2), normal(8, scale=0.1)],
        "ip1": [normal(10, 200, scale=0.1), normal(10, scale=0.1)],
    }


def caffemodel_bytes(seed: int = SEED) -> bytes:
    """The weights as a serialized Caffe ``NetParameter``."""
    from meshserve.pb import caffe_net_pb2 as cp

    net = cp.NetParameter(name="LeNetSmall")
    kinds = {"conv1": "Convolution", "conv2": "Convolution", "ip1": "InnerProduct"}
    for name, blobs in lenet_weights(seed).items():
        layer = net.layer.add(name=name, type=kinds[name])
        for array in blobs:
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
    return net.SerializeToString()


def _conv(x: Array, weight: Array, bias: Array) -> Array:
    """Caffe's convolution, stride 1, no padding: x [N,C,H,W], weight [O,C,kh,kw] -> [N,O,H',W']."""
    windows = sliding_window_view(x, weight.shape[2:], axis=(2, 3))  # N, C, H', W', kh, kw
    out: Array = np.einsum("nchwij,ocij->nohw", windows, weight) + bias[None, :, None, None]
    return out


def _pool(x: Array, reduce: str) -> Array:
    """2x2, stride 2 pooling of even-sized maps (max or average)."""
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // 2, 2, w // 2, 2)
    pooled: Array = blocks.max(axis=(3, 5)) if reduce == "max" else blocks.mean(axis=(3, 5))
    return pooled


def lenet_reference(x: Array, seed: int = SEED) -> Array:
    """The net's ``prob`` for ``x`` [N,1,28,28], computed in numpy from the seeded weights."""
    weights = lenet_weights(seed)
    x = x.astype(np.float64)  # type: ignore[assignment]
    h = _pool(np.maximum(_conv(x, *weights["conv1"]), 0), "max")
    h = _pool(np.maximum(_conv(h, *weights["conv2"]), 0), "mean")
    ip_weight, ip_bias = weights["ip1"]
    logits = h.reshape(h.shape[0], -1) @ ip_weight.T + ip_bias
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob: Array = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return prob


def build(repository: Path) -> Path:
    model = repository / "lenet_caffe"
    version = model / "1"
    version.mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(CONFIG)
    (version / "model.prototxt").write_text(PROTOTXT)
    (version / "model.caffemodel").write_bytes(caffemodel_bytes())
    print(f"wrote {version}/model.prototxt, model.caffemodel and {model}/config.pbtxt")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=HERE / "caffe_repository")
    build(parser.parse_args().repository)


if __name__ == "__main__":
    main()
