"""Model backends.  Each is imported only when a model asks for it (torch, onnxruntime and tensorflow
are heavy; tensorflow is an optional extra)."""

from __future__ import annotations

import importlib

from workers.backends.base import Backend

__all__ = ["create_backend"]

_MODULES = {
    "caffe": "workers.backends.caffe_backend",
    "onnxruntime": "workers.backends.onnxruntime_backend",
    "python": "workers.backends.python_backend",
    "pytorch": "workers.backends.pytorch_backend",
    "tensorflow": "workers.backends.tensorflow_backend",
}


def create_backend(name: str) -> Backend:
    """A fresh backend object for a config's ``backend`` name."""
    from meshserve.errors import Unsupported

    module_name = _MODULES.get(name)
    if module_name is None:
        raise Unsupported(
            f"backend '{name}' is not supported by this worker (supported: {', '.join(sorted(_MODULES))})"
        )
    module = importlib.import_module(module_name)
    backend: Backend = module.create()
    return backend
