"""The seam between the worker and a model backend: ``load / execute / unload``.

A backend sees decoded requests (numpy arrays, BYTES as object arrays) and returns one result per
request, in order.  It never sees NATS, gRPC or protobuf.  ``execute`` runs on the worker's one
compute thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from meshserve.errors import MeshError
from meshserve.params import ParamValue
from meshserve.pb import model_config_pb2 as mc

__all__ = ["Backend", "ConfigCompleter", "LoadContext", "ParamValue", "Request", "Result"]


@dataclass(frozen=True, slots=True)
class LoadContext:
    """What a backend needs to load one model version on one device."""

    model_name: str
    model_version: int
    model_dir: Path
    config: mc.ModelConfig
    config_json: dict[str, Any]
    instance_name: str
    device: str = "cpu"
    """``cpu`` or ``cuda:N``."""

    @property
    def version_dir(self) -> Path:
        return self.model_dir / str(self.model_version)

    @property
    def repository(self) -> Path:
        return self.model_dir.parent


@dataclass(slots=True)
class Request:
    """One inference request of a batch, decoded.  Arrays may be read-only views of the wire bytes."""

    request_id: str
    inputs: dict[str, np.ndarray]
    requested_outputs: list[str] = field(default_factory=list)
    """Names the client asked for; empty means all outputs."""
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    batch_size: int = 0
    """Rows this request holds on the batch dimension (0 when the model does not batch)."""
    deadline_unix_ns: int = 0
    """When the requester stops waiting (0: no deadline); bounds the model's BLS calls."""
    emit: Callable[[Result, bool], None] | None = None
    """Decoupled models only: deliver one response now, from any thread; ``True`` marks it final.
    A decoupled backend's ``execute`` returns an empty list and answers through ``emit``."""
    is_cancelled: Callable[[], bool] | None = None
    """True once the requester went away (python models see it as ``request.is_cancelled()``); a
    long generation should stop.  Safe to call from any thread."""


@dataclass(slots=True)
class Result:
    """The answer to one request: outputs by name, or the error that request gets."""

    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: MeshError | None = None
    parameters: dict[str, ParamValue] = field(default_factory=dict)


class Backend(Protocol):
    def load(self, ctx: LoadContext) -> None:
        """Load the model; raise a MeshError (or any exception) saying why it cannot be served."""

    def execute(self, requests: list[Request]) -> list[Result]:
        """Run one batch; return exactly one Result per request, in order."""

    def unload(self) -> None:
        """Release the model (python: ``finalize``)."""


@runtime_checkable
class ConfigCompleter(Protocol):
    """A backend that can fill a config from its model file (Triton's auto-complete, MR8).

    The worker calls ``auto_complete_config`` on its compute thread before it announces the model
    and before ``load``; it completes ``ctx.config`` in place (inputs, outputs, ``max_batch_size``,
    a default ``dynamic_batching``) and leaves a config that already lists inputs and outputs alone.
    """

    def auto_complete_config(self, ctx: LoadContext) -> None: ...
