"""Build the example models with fixed seeds (their outputs are reproducible).

python examples/build_models.py [--repository examples/model_repository] [--only torch|onnx|tensorflow]
                                [--tf-repository examples/tf_model_repository]

- ``linear_torch/1/model.pt``: TorchScript Linear(16, 8) + ReLU (torch).
- ``add_sub_onnx/1/model.onnx``: FP32 INPUT0, INPUT1 [batch, 16] -> OUTPUT0 = sum, OUTPUT1 =
  difference; its config.pbtxt is written here too (onnx, from the ``test`` extra).
- ``dense_onnx/1/model.onnx``: FP32 x [batch, 16] -> y = relu(x @ W + b) [batch, 8], seeded W and b,
  and *no* config.pbtxt: the onnxruntime backend auto-completes it from the graph.
- ``<tf-repository>/add_sub_tf/1/model.savedmodel/``: the same add/sub as ``add_sub_onnx`` as a
  TensorFlow SavedModel (signature ``serving_default``, keys INPUT0/INPUT1 -> OUTPUT0/OUTPUT1), with
  its config.pbtxt; ``<tf-repository>/dense_tf/1/model.savedmodel/``: ``dense_onnx``'s seeded
  dense layer with *no* config.pbtxt (the tensorflow backend completes it from the signature).
  They go to their own repository because TensorFlow is an optional extra (``meshserve[tensorflow]``):
  the main example repository serves every model without it.  Without TensorFlow installed they are
  skipped with a message, and the other models are still built.

onnx and tensorflow are imported only by the builders that need them; ``dense_reference`` (numpy
only) gives the reference that tests compare against.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

ONNX_OPSET = 17
"""Opset and IR version old enough for any onnxruntime >= 1.14 to load the files."""
ONNX_IR_VERSION = 8

ADD_SUB_ONNX_CONFIG = """\
# Built by examples/build_models.py.  Triton's onnxruntime backend reads the same file.
name: "add_sub_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
parameters { key: "inter_op_thread_count" value: { string_value: "1" } }
"""


class LinearRelu(torch.nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(inputs, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


def linear_torch(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return LinearRelu(16, 8).eval()


def dense_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``dense_onnx``'s W [16, 8] and b [8] (FP32)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((16, 8)).astype(np.float32) / 4
    bias = rng.standard_normal(8).astype(np.float32) / 4
    return weight, bias


def dense_reference(x: np.ndarray, seed: int = 0) -> np.ndarray:
    weight, bias = dense_weights(seed)
    return np.maximum(x @ weight + bias, 0).astype(np.float32)


def _onnx_model(graph: Any) -> Any:
    from onnx import checker, helper

    model = helper.make_model(
        graph,
        producer_name="meshserve examples/build_models.py",
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
    )
    model.ir_version = ONNX_IR_VERSION
    checker.check_model(model)
    return model


def add_sub_onnx() -> Any:
    from onnx import TensorProto, helper

    def tensor(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 16])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "add_sub",
        [tensor("INPUT0"), tensor("INPUT1")],
        [tensor("OUTPUT0"), tensor("OUTPUT1")],
    )
    return _onnx_model(graph)


def dense_onnx(seed: int = 0) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = dense_weights(seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xW"]),
            helper.make_node("Add", ["xW", "b"], ["xWb"]),
            helper.make_node("Relu", ["xWb"], ["y"]),
        ],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    return _onnx_model(graph)


def build_torch(repository: Path) -> None:
    target = repository / "linear_torch" / "1" / "model.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(linear_torch()).save(str(target))
    print(f"wrote {target}")


def build_onnx(repository: Path) -> None:
    import onnx

    target = repository / "add_sub_onnx" / "1" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(add_sub_onnx(), str(target))
    (repository / "add_sub_onnx" / "config.pbtxt").write_text(ADD_SUB_ONNX_CONFIG)
    print(f"wrote {target} and its config.pbtxt")
    target = repository / "dense_onnx" / "1" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(dense_onnx(), str(target))
    print(f"wrote {target} (no config.pbtxt: auto-completed from the graph)")


TF_INSTALL_HINT = "TensorFlow is not installed (pip install -e '.[tensorflow]' brings tensorflow-cpu)"

ADD_SUB_TF_CONFIG = """\
# Built by examples/build_models.py.  Triton's tensorflow backend reads the same file.
name: "add_sub_tf"
platform: "tensorflow_savedmodel"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "TF_NUM_INTRA_THREADS" value: { string_value: "1" } }
parameters { key: "TF_NUM_INTER_THREADS" value: { string_value: "1" } }
"""


def tensorflow_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def _tf() -> Any:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def save_add_sub_tf(target: Path) -> None:
    """A SavedModel whose ``serving_default`` maps INPUT0, INPUT1 [batch, 16] FP32 to OUTPUT0 = sum and
    OUTPUT1 = difference."""
    tf = _tf()

    class AddSub(tf.Module):  # type: ignore[misc]
        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[
                tf.TensorSpec([None, 16], tf.float32, name="INPUT0"),
                tf.TensorSpec([None, 16], tf.float32, name="INPUT1"),
            ]
        )
        def serve(self, a: Any, b: Any) -> dict[str, Any]:
            return {"OUTPUT0": a + b, "OUTPUT1": a - b}

    module = AddSub()
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})


def save_dense_tf(target: Path, seed: int = 0) -> None:
    """A SavedModel whose ``serving_default`` maps x [batch, 16] FP32 to y = relu(x @ W + b) [batch, 8],
    W and b from ``dense_weights(seed)`` held as variables."""
    tf = _tf()
    weight, bias = dense_weights(seed)

    class Dense(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(weight, name="W")
            self.b = tf.Variable(bias, name="b")

        @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="x")])  # type: ignore[untyped-decorator]
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": tf.nn.relu(tf.matmul(x, self.w) + self.b)}

    module = Dense()
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})


def build_tensorflow(repository: Path) -> bool:
    """Write the TensorFlow models; False (and a message) when TensorFlow is not installed."""
    if not tensorflow_available():
        print(f"skipped add_sub_tf and dense_tf: {TF_INSTALL_HINT}")
        return False
    import shutil

    for name, save in (("add_sub_tf", save_add_sub_tf), ("dense_tf", save_dense_tf)):
        target = repository / name / "1" / "model.savedmodel"
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        save(target)
        if name == "add_sub_tf":
            (repository / name / "config.pbtxt").write_text(ADD_SUB_TF_CONFIG)
            print(f"wrote {target} and its config.pbtxt")
        else:
            print(f"wrote {target} (no config.pbtxt: auto-completed from the signature)")
    return True


def build(repository: Path, only: str | None = None, tf_repository: Path | None = None) -> None:
    if only in (None, "torch"):
        build_torch(repository)
    if only in (None, "onnx"):
        build_onnx(repository)
    if only in (None, "tensorflow"):
        build_tensorflow(tf_repository or HERE / "tf_model_repository")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=HERE / "model_repository")
    parser.add_argument(
        "--tf-repository",
        type=Path,
        default=HERE / "tf_model_repository",
        help="where the TensorFlow models go (TensorFlow is an optional extra)",
    )
    parser.add_argument(
        "--only", choices=("torch", "onnx", "tensorflow"), help="build one format's models only"
    )
    args = parser.parse_args()
    build(args.repository, args.only, args.tf_repository)


if __name__ == "__main__":
    main()
