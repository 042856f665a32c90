"""meshserve: a Triton-class inference server built as an async gRPC + NATS microservice mesh.

This package is the shared core: settings, errors, NATS subject names, the tensor codec, the
model-repository reader and the generated protobuf code.  Services (`gateway`, `batcher`,
`workers`) import it; it imports none of them, and never torch or a web framework.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
