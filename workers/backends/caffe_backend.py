"""The ``caffe`` backend: a Caffe net (deploy prototxt + caffemodel weights) run by OpenCV's DNN module.

- Files, in the version directory: ``model.prototxt`` (the net; another name with the config
  parameter ``prototxt_filename``) and ``model.caffemodel`` (the weights; another name with
  ``default_model_filename``).  Config ``backend: "caffe"`` or ``platform: "caffe"``.
- OpenCV comes from the optional extra ``meshserve[caffe]`` (``opencv-python-headless`` 4.x; OpenCV
  5 has no Caffe importer).  Without it the model is UNAVAILABLE with the install command as reason.
- One ``cv2.dnn.Net`` per instance (a worker process serves one instance, and its ``execute`` runs on
  the worker's one compute thread: Net objects are not thread-safe); the config parameter
  ``num_threads`` sets OpenCV's thread count for the process (0 or absent: OpenCV's default).  CPU
  only: the opencv-python-headless wheels have no CUDA, so a GPU instance runs on the CPU (logged).
- Tensors are FP32, fed by input blob name (``setInput``) and read by the name of the blob's last
  producing layer (``forward``); the rules and auto-complete live in ``caffe_config``.
- A batch runs as one forward pass: with ``max_batch_size`` > 0 the requests are concatenated on
  N and each output is split back by rows (``workers/backends/stacking.py``, shared with the other
  tensor backends).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from meshserve.errors import Internal, InvalidArgument, Unavailable
from meshserve.model_config import needs_auto_complete
from workers.backends.base import LoadContext, Request, Result
from workers.backends.caffe_config import check_against_net, complete_from_net
from workers.backends.caffe_net import NetDescription, read_prototxt
from workers.backends.stacking import execute_stacked

log = logging.getLogger(__name__)

__all__ = ["INSTALL_HINT", "CaffeBackend", "create", "opencv_message"]

PROTOTXT_PARAMETER = "prototxt_filename"
DEFAULT_PROTOTXT = "model.prototxt"
DEFAULT_CAFFEMODEL = "model.caffemodel"
INSTALL_HINT = (
    "the caffe backend needs OpenCV's DNN module: install meshserve[caffe] (pip install 'meshserve[caffe]')"
)


def create() -> CaffeBackend:
    return CaffeBackend()


def import_cv2() -> Any:
    """OpenCV, or Unavailable saying how to install it (also when the installed one has no Caffe
    importer, as OpenCV 5 does not)."""
    try:
        cv2: Any = importlib.import_module("cv2")  # by name: mypy needs no OpenCV where it is absent
    except ImportError as exc:
        raise Unavailable(f"{INSTALL_HINT} ({exc})") from None
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise Unavailable(f"{INSTALL_HINT}: OpenCV {cv2.__version__} has no Caffe importer")
    return cv2


def opencv_message(exc: BaseException) -> str:
    """An OpenCV error on one line, without the source-file prefix: ``(-2:...) what happened``."""
    text = " ".join(str(exc).split())
    match = re.search(r"error: (\(.*)", text)
    return match.group(1) if match else text


class CaffeBackend:
    def __init__(self) -> None:
        self._net: Any = None
        self._paths: tuple[Path, Path] | None = None
        self._description: NetDescription | None = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._layers: list[str] = []
        """The producing layer of each config output, in the same order."""
        self._output_dims: list[tuple[int, ...]] = []
        self._batching = False

    # -- load ---------------------------------------------------------------------------------------
    def auto_complete_config(self, ctx: LoadContext) -> None:
        if not needs_auto_complete(ctx.config):
            return
        description = self._open(ctx)
        if complete_from_net(ctx.config, description, self._probe):
            log.info(
                "config of %s completed from %s: max_batch_size %d, inputs %s, outputs %s",
                ctx.model_name,
                self._paths[0] if self._paths else "?",
                ctx.config.max_batch_size,
                [(t.name, list(t.dims)) for t in ctx.config.input],
                [(t.name, list(t.dims)) for t in ctx.config.output],
            )

    def load(self, ctx: LoadContext) -> None:
        description = self._open(ctx)
        check_against_net(ctx.config, description, self._probe)
        self._inputs = [t.name for t in ctx.config.input]
        self._outputs = [t.name for t in ctx.config.output]
        self._layers = [description.producers[name].layer for name in self._outputs]
        self._output_dims = [tuple(t.dims) for t in ctx.config.output]
        self._batching = ctx.config.max_batch_size > 0
        log.info("loaded %s with OpenCV %s", self._paths, import_cv2().__version__)

    def _open(self, ctx: LoadContext) -> NetDescription:
        """The net for this version's files, read once (auto-complete and load share it)."""
        cv2 = import_cv2()
        params = {key: value.string_value for key, value in ctx.config.parameters.items()}
        prototxt = ctx.version_dir / _file_name(params.get(PROTOTXT_PARAMETER, "") or DEFAULT_PROTOTXT)
        weights = ctx.version_dir / (ctx.config.default_model_filename or DEFAULT_CAFFEMODEL)
        if self._net is not None and self._paths == (prototxt, weights) and self._description is not None:
            return self._description
        for path, what in ((prototxt, "net (prototxt)"), (weights, "weights (caffemodel)")):
            if not path.is_file():
                raise InvalidArgument(f"model {what} file {path} not found")
        try:
            text = prototxt.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"cannot read {prototxt}: {exc}") from exc
        description = read_prototxt(text, prototxt.name)
        _set_threads(cv2, params)
        if ctx.device.startswith("cuda"):
            log.warning("device %s asked for, but the caffe backend runs on the CPU only", ctx.device)
        try:
            net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))
        except cv2.error as exc:
            raise InvalidArgument(
                f"OpenCV cannot load {prototxt.name} + {weights.name}: {opencv_message(exc)}"
            ) from exc
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self._net, self._paths, self._description = net, (prototxt, weights), description
        return description

    def _probe(
        self, shapes: Mapping[str, tuple[int, ...]], outputs: Sequence[str]
    ) -> dict[str, tuple[int, ...]]:
        """One forward pass on zeros of ``shapes``: the shape of each named blob."""
        assert self._description is not None
        layers = [self._description.producers[name].layer for name in outputs]
        feed = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
        try:
            results = self._forward(feed, layers)
        except Internal as exc:
            shown = {name: list(shape) for name, shape in shapes.items()}
            raise InvalidArgument(f"the net does not run on inputs of shape {shown}: {exc}") from None
        return {name: tuple(int(d) for d in out.shape) for name, out in zip(outputs, results, strict=True)}

    # -- execute -------------------------------------------------------------------------------------
    def execute(self, requests: list[Request]) -> list[Result]:
        return execute_stacked(requests, self._run_named, self._inputs, self._batching)

    def unload(self) -> None:
        self._net = None
        self._paths = None
        self._description = None

    def _run_named(self, inputs: dict[str, NDArray[Any]], rows: int) -> dict[str, NDArray[Any]]:
        outputs = self._run({name: inputs[name] for name in self._inputs}, rows)
        return dict(zip(self._outputs, outputs, strict=True))

    def _run(self, feed: dict[str, NDArray[Any]], rows: int) -> list[NDArray[Any]]:
        """Forward ``feed``; each output shaped as the config says (``rows`` first when batching)."""
        shaped = []
        for name, dims, out in zip(
            self._outputs, self._output_dims, self._forward(feed, self._layers), strict=True
        ):
            shape = (rows, *dims) if self._batching else dims
            if self._batching and (out.ndim == 0 or out.shape[0] != rows):
                raise Internal(f"output '{name}' has shape {list(out.shape)} for a batch of {rows}")
            if -1 not in shape and out.shape != shape:
                try:
                    out = out.reshape(shape)
                except ValueError:
                    raise Internal(
                        f"output '{name}' of shape {list(out.shape)} cannot take dims {list(shape)}"
                    ) from None
            shaped.append(out)
        return shaped

    def _forward(self, feed: Mapping[str, NDArray[Any]], layers: list[str]) -> list[NDArray[Any]]:
        cv2 = import_cv2()
        try:
            for name, array in feed.items():
                self._net.setInput(np.ascontiguousarray(array, dtype=np.float32), name)
            outputs: Sequence[NDArray[Any]] = self._net.forward(layers)
        except cv2.error as exc:
            raise Internal(f"OpenCV failed to run the net: {opencv_message(exc)}") from exc
        return list(outputs)


def _file_name(name: str) -> str:
    """A file name from a config parameter: a path inside the version directory, no ``..``."""
    parts = Path(name.replace("\\", "/")).parts
    if not parts or Path(name).is_absolute() or ".." in parts or "\0" in name:
        raise InvalidArgument(
            f"parameter '{PROTOTXT_PARAMETER}' '{name}' must be a path inside the version directory"
        )
    return name


def _set_threads(cv2: Any, params: dict[str, str]) -> None:
    raw = params.get("num_threads", "").strip()
    if not raw:
        return
    try:
        threads = int(raw)
    except ValueError:
        raise InvalidArgument(f"parameter 'num_threads' must be an integer, got '{raw}'") from None
    if threads < 0:
        raise InvalidArgument(f"parameter 'num_threads' must be >= 0, got {threads}")
    if threads > 0:
        cv2.setNumThreads(threads)
