"""What both client protocols share: resolve the model, validate, dispatch, count, describe.

The gRPC and HTTP front ends only translate their wire formats to and from these calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gateway.dispatcher import Dispatcher
from gateway.models import ModelState, ModelTable, ModelView
from gateway.stats import StatsBook
from gateway.validate import InferCall, build_request
from meshserve import __version__
from meshserve.errors import MeshError
from meshserve.pb import mesh_pb2
from meshserve.settings import GatewaySettings

__all__ = ["EXTENSIONS", "SERVER_NAME", "InferOutcome", "InferenceCore"]

SERVER_NAME = "triton"
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "parameters", "meshserve")
"""Only what meshserve implements; see docs/architecture.md "How meshserve identifies itself"."""


@dataclass(frozen=True, slots=True)
class InferOutcome:
    view: ModelView
    response: mesh_pb2.InferResponse


class InferenceCore:
    def __init__(self, settings: GatewaySettings, models: ModelTable, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.models = models
        self.stats = StatsBook()
        self._dispatcher = dispatcher
        self.shutting_down = False

    async def infer(
        self, model: str, version: str, call: InferCall, client_timeout_s: float | None = None
    ) -> InferOutcome:
        view = self.models.ready_view(model, version)
        limits = self.settings.limits
        start = time.perf_counter_ns()
        rows = 0
        try:
            prepared = build_request(call, view, limits.request_timeout_s, limits.max_message_bytes)
            rows = prepared.message.batch_size
            timeout_s = (
                prepared.timeout_s if client_timeout_s is None else min(prepared.timeout_s, client_timeout_s)
            )
            response = await self._dispatcher.infer(prepared.message, timeout_s)
        except MeshError:
            self.stats.record(view.name, view.version, False, time.perf_counter_ns() - start, rows)
            raise
        self.stats.record(view.name, view.version, True, time.perf_counter_ns() - start, rows)
        return InferOutcome(view, response)

    # -- health and metadata ------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return not self.shutting_down and self.models.server_ready(self.settings.strict_readiness)

    def model_ready(self, model: str, version: str) -> bool:
        try:
            view = self.models.find(model, version)
        except MeshError:
            return False
        return self.models.state(view) is ModelState.READY

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        view = self.models.ready_view(model, version)
        batch = [-1] if view.max_batch_size > 0 else []
        ready_versions = [
            str(v.version) for v in self.models.versions_of(model) if self.models.state(v) is ModelState.READY
        ]
        return {
            "name": view.name,
            "versions": ready_versions,
            "platform": view.platform,
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": batch + list(s.dims)}
                for s in view.inputs.values()
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": batch + list(s.dims)}
                for s in view.outputs.values()
            ],
        }

    def model_config(self, model: str, version: str) -> ModelView:
        return self.models.find(model, version)

    def repository_index(self, ready_only: bool) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = []
        seen: set[str] = set()
        for view in self.models.all_views():
            seen.add(view.name)
            state = self.models.state(view)
            if ready_only and state is not ModelState.READY:
                continue
            rows.append(
                {
                    "name": view.name,
                    "version": str(view.version),
                    "state": state.value,
                    "reason": view.reason(),
                }
            )
        for name in self.models.names():
            if name not in seen and not ready_only:
                rows.append(
                    {
                        "name": name,
                        "version": "",
                        "state": "UNAVAILABLE",
                        "reason": self.models.declared_error(name),
                    }
                )
        return rows

    def statistics(self, model: str, version: str) -> list[dict[str, Any]]:
        views = [self.models.find(model, version)] if model else self.models.all_views()
        if model and not version:
            views = self.models.versions_of(model)
        out = []
        for view in views:
            s = self.stats.get(view.name, view.version)
            out.append(
                {
                    "name": view.name,
                    "version": str(view.version),
                    "last_inference": s.last_inference_ms,
                    "inference_count": s.inference_count,
                    "execution_count": 0,
                    "inference_stats": {
                        "success": {"count": s.success_count, "ns": s.success_ns},
                        "fail": {"count": s.fail_count, "ns": s.fail_ns},
                        "queue": {"count": 0, "ns": 0},
                        "compute_input": {"count": 0, "ns": 0},
                        "compute_infer": {"count": 0, "ns": 0},
                        "compute_output": {"count": 0, "ns": 0},
                        "cache_hit": {"count": 0, "ns": 0},
                        "cache_miss": {"count": 0, "ns": 0},
                    },
                    "batch_stats": [],
                }
            )
        return out
