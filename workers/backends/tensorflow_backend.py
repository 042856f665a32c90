"""The ``tensorflow`` backend: a TensorFlow 2 SavedModel (``<version>/model.savedmodel/``, or
``default_model_filename``) served through one of its signatures.

TensorFlow is an optional extra (``pip install 'meshserve[tensorflow]'``, which brings
``tensorflow-cpu``).  This module is imported only by a worker whose model asks for the backend;
without TensorFlow that model is UNAVAILABLE with a reason that says what to install, and the
other models serve.

- Config ``parameters`` as Triton's TensorFlow backend reads them: ``TF_SIGNATURE_DEF`` (the
  signature to serve, ``serving_default`` by default), ``TF_GRAPH_TAG`` (the meta graph's tag,
  ``serve`` by default), ``TF_NUM_INTRA_THREADS`` / ``TF_NUM_INTER_THREADS`` (0 or absent:
  TensorFlow's choice).  Threads are per process in TensorFlow 2, which is one model instance here.
- Tensors by name: a config tensor's ``name`` is the signature's key; a ``reshape`` is applied on
  the way in and undone on the way out.  BYTES tensors are TensorFlow strings; BF16 is refused.
- A batch runs as one call of the signature (``workers/backends/stacking.py``).
- Device: an instance on ``cuda:N`` sees only that GPU (memory growth on) when TensorFlow sees one,
  else runs on the CPU with a warning; a CPU instance hides the GPUs from TensorFlow.
- Config auto-complete reads the signature of the same loaded model that ``load`` then serves; the
  rules live in ``tensorflow_config``.  GraphDef models (``tensorflow_graphdef``) are refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from meshserve.errors import Internal, InvalidArgument, Unsupported
from meshserve.model_config import needs_auto_complete
from meshserve.pb import model_config_pb2 as mc
from workers.backends.base import LoadContext, Request, Result
from workers.backends.stacking import ConfigTensor, execute_stacked
from workers.backends.tensorflow_config import (
    SignatureTensor,
    check_against_signature,
    complete_from_signature,
    config_type_of,
)

INSTALL_HINT = (
    "the tensorflow backend needs TensorFlow, which is not installed in this worker's Python: "
    "install meshserve[tensorflow] (pip install 'meshserve[tensorflow]')"
)

# TensorFlow's C++ start-up lines (CPU features, oneDNN) would fill every worker log; a user's
# own TF_CPP_MIN_LOG_LEVEL wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:
    import tensorflow as tf
except ImportError as exc:
    raise Unsupported(INSTALL_HINT) from exc

log = logging.getLogger(__name__)

__all__ = ["INSTALL_HINT", "TensorFlowBackend", "create", "thread_counts"]

DEFAULT_SIGNATURE = "serving_default"


def create() -> TensorFlowBackend:
    return TensorFlowBackend()


def thread_counts(config: mc.ModelConfig) -> tuple[int, int]:
    """``(intra, inter)`` op threads from ``TF_NUM_INTRA_THREADS`` / ``TF_NUM_INTER_THREADS`` (0: unset)."""
    counts = []
    for key in ("TF_NUM_INTRA_THREADS", "TF_NUM_INTER_THREADS"):
        raw = config.parameters[key].string_value.strip() if key in config.parameters else ""
        try:
            value = int(raw or "0")
        except ValueError:
            raise InvalidArgument(f"parameter '{key}' must be a non-negative integer, got '{raw}'") from None
        if value < 0:
            raise InvalidArgument(f"parameter '{key}' must be a non-negative integer, got {value}")
        counts.append(value)
    return counts[0], counts[1]


def _string_param(config: mc.ModelConfig, key: str, default: str) -> str:
    if key in config.parameters:
        return config.parameters[key].string_value.strip() or default
    return default


def _apply_threads(config: mc.ModelConfig) -> None:
    """Set TensorFlow's op thread pools; possible only before its runtime starts (the first load
    in a worker).  A later different setting is logged and ignored."""
    intra, inter = thread_counts(config)
    threading = tf.config.threading
    for name, wanted, get, set_ in (
        (
            "intra",
            intra,
            threading.get_intra_op_parallelism_threads,
            threading.set_intra_op_parallelism_threads,
        ),
        (
            "inter",
            inter,
            threading.get_inter_op_parallelism_threads,
            threading.set_inter_op_parallelism_threads,
        ),
    ):
        if wanted and get() != wanted:
            try:
                set_(wanted)
            except RuntimeError:
                log.warning(
                    "TensorFlow already started: %s-op threads stay %d (asked %d)", name, get(), wanted
                )


def _pin_device(device: str) -> str:
    """The TensorFlow device to run on for the worker's ``cpu`` / ``cuda:N``."""
    gpus = tf.config.list_physical_devices("GPU")
    try:
        if device.startswith("cuda"):
            index = int(device.partition(":")[2] or "0")
            if index < len(gpus):
                tf.config.set_visible_devices(gpus[index], "GPU")
                tf.config.experimental.set_memory_growth(gpus[index], True)
                return "/GPU:0"
            log.warning("device %s asked for, but TensorFlow sees %d GPU(s): CPU", device, len(gpus))
        elif gpus:
            tf.config.set_visible_devices([], "GPU")
    except RuntimeError as exc:  # the runtime started earlier in this process
        log.warning("TensorFlow devices already set (%s)", exc)
    return "/CPU:0"


def _dims(shape: Any) -> tuple[int, ...] | None:
    if shape.rank is None:
        return None
    return tuple(-1 if d is None else int(d) for d in shape.as_list())


def describe_signature(function: Any) -> tuple[list[SignatureTensor], list[SignatureTensor]]:
    """A signature's inputs and outputs as keys, config types and dims."""
    _args, kwargs = function.structured_input_signature
    inputs = [
        SignatureTensor(key, config_type_of(spec.dtype.name, key), _dims(spec.shape))
        for key, spec in kwargs.items()
    ]
    outputs = [
        SignatureTensor(key, config_type_of(spec.dtype.name, key), _dims(spec.shape))
        for key, spec in function.structured_outputs.items()
    ]
    return inputs, outputs


class TensorFlowBackend:
    def __init__(self) -> None:
        self._loaded: Any = None
        self._function: Any = None
        self._path: Path | None = None
        self._signature = DEFAULT_SIGNATURE
        self._device = "/CPU:0"
        self._inputs: list[ConfigTensor] = []
        self._outputs: list[ConfigTensor] = []
        self._batching = False

    # -- load ---------------------------------------------------------------------------------------
    def auto_complete_config(self, ctx: LoadContext) -> None:
        if not needs_auto_complete(ctx.config):
            return
        inputs, outputs = describe_signature(self._open(ctx))
        if complete_from_signature(ctx.config, inputs, outputs, self._signature):
            log.info(
                "config of %s completed from %s signature '%s': max_batch_size %d, inputs %s, outputs %s",
                ctx.model_name,
                self._path,
                self._signature,
                ctx.config.max_batch_size,
                [(t.name, list(t.dims)) for t in ctx.config.input],
                [(t.name, list(t.dims)) for t in ctx.config.output],
            )

    def load(self, ctx: LoadContext) -> None:
        for kind, tensors in (("input", ctx.config.input), ("output", ctx.config.output)):
            for tensor in tensors:
                if tensor.data_type == mc.TYPE_BF16:
                    raise InvalidArgument(
                        f"{kind} '{tensor.name}': the tensorflow backend has no BF16 tensors "
                        "(numpy has no bfloat16)"
                    )
        inputs, outputs = describe_signature(self._open(ctx))
        check_against_signature(ctx.config, inputs, outputs, self._signature)
        self._inputs = [ConfigTensor(t) for t in ctx.config.input]
        self._outputs = [ConfigTensor(t) for t in ctx.config.output]
        self._batching = ctx.config.max_batch_size > 0
        log.info("loaded %s signature '%s' on %s", self._path, self._signature, self._device)

    def _open(self, ctx: LoadContext) -> Any:
        """The signature's function of this SavedModel, loaded once (auto-complete and load share it)."""
        if ctx.config.platform == "tensorflow_graphdef":
            raise Unsupported(
                "GraphDef models (platform tensorflow_graphdef) are not served: save the model as a "
                "SavedModel (platform tensorflow_savedmodel, <version>/model.savedmodel/)"
            )
        path = ctx.version_dir / (ctx.config.default_model_filename or "model.savedmodel")
        if self._function is not None and path == self._path:
            return self._function
        if not path.is_dir():
            what = "is a file, not a SavedModel directory" if path.exists() else "not found"
            raise InvalidArgument(f"SavedModel {path} {what} (a directory holding saved_model.pb)")
        self._signature = _string_param(ctx.config, "TF_SIGNATURE_DEF", DEFAULT_SIGNATURE)
        tag = _string_param(ctx.config, "TF_GRAPH_TAG", "")
        _apply_threads(ctx.config)
        self._device = _pin_device(ctx.device)
        try:
            with tf.device(self._device):
                loaded = tf.saved_model.load(str(path), tags=[tag] if tag else None)
        except Exception as exc:
            raise InvalidArgument(
                f"tensorflow cannot load SavedModel {path}: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        signatures = getattr(loaded, "signatures", {})
        if self._signature not in signatures:
            raise InvalidArgument(
                f"SavedModel {path} has no signature '{self._signature}' (its signatures: "
                f"{', '.join(sorted(signatures)) or 'none'}); name one with parameter TF_SIGNATURE_DEF"
            )
        self._loaded, self._function, self._path = loaded, signatures[self._signature], path
        return self._function

    # -- execute -------------------------------------------------------------------------------------
    def execute(self, requests: list[Request]) -> list[Result]:
        return execute_stacked(requests, self._run, [t.name for t in self._inputs], self._batching)

    def unload(self) -> None:
        self._function = None
        self._loaded = None
        self._path = None

    def _run(self, inputs: dict[str, NDArray[Any]], rows: int) -> dict[str, NDArray[Any]]:
        """One call of the signature: inputs reshaped in, outputs checked for ``rows`` and reshaped out."""
        feed = {t.name: t.shape_in(inputs[t.name], rows) for t in self._inputs}
        try:
            with tf.device(self._device):
                result = self._function(**{name: tf.constant(array) for name, array in feed.items()})
            outputs = {t.name: result[t.name].numpy() for t in self._outputs}
        except Exception as exc:
            raise Internal(f"tensorflow model failed: {type(exc).__name__}: {_first_line(exc)}") from exc
        return {t.name: t.shape_out(outputs[t.name], rows) for t in self._outputs}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
