"""What both client protocols share: resolve the model, validate, dispatch, count, describe.

The gRPC and HTTP front ends only translate their wire formats to and from these calls.  Every
request that reaches a ready model version is counted once in the :class:`StatsBook` (success, or
failure with Triton's reason), which the statistics routes and the Prometheus collector read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.classification import LabelCache, classify
from gateway.dispatcher import Dispatcher
from gateway.ensemble import EnsembleRunner
from gateway.models import ModelState, ModelTable, ModelView
from gateway.ordering import OrderedReleases
from gateway.peers import GatewayPeers
from gateway.repository_params import ParamValue, control_request
from gateway.runtime_settings import RuntimeSettings
from gateway.shm import SharedMemoryRegistry
from gateway.shm_mirror import ShmMirror
from gateway.stats import FailureReason, StatsBook, failure_reason
from gateway.timing import add_breakdown, wants_timing
from gateway.validate import InferCall, build_request
from meshserve import __version__
from meshserve.errors import InvalidArgument, MeshError, Unsupported, from_wire
from meshserve.pb import mesh_pb2
from meshserve.security import check_model_name
from meshserve.settings import GatewaySettings

__all__ = ["EXTENSIONS", "SERVER_NAME", "InferOutcome", "InferenceCore"]

SERVER_NAME = "triton"
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "parameters",
    "model_repository",
    "model_repository(unload_dependents)",
    "system_shared_memory",
    "classification",
    "trace",
    "logging",
    "meshserve",
)
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
        self._ensembles = EnsembleRunner(models, dispatcher, self.stats, settings.limits.max_message_bytes)
        self.shutting_down = False
        self._ordering = OrderedReleases()
        self.peers: GatewayPeers | None = None
        """Set by the gateway process: statistics then add up every gateway's counts."""
        self.shm = SharedMemoryRegistry(settings.request_limits.max_shm_regions)
        """Clients' system shared memory regions (``gateway/shm.py``, docs/shared-memory.md)."""
        self.shm_control = ShmMirror(self.shm, settings.stats_collect_timeout_s)
        """Register / unregister here and on the peer gateways (attached by the gateway process)."""
        self.runtime: RuntimeSettings | None = None
        """Set by the gateway process: TraceSetting / LogSettings (``gateway/runtime_settings.py``)."""
        self.labels = LabelCache(settings.model_repository, settings.request_limits.max_label_file_bytes)
        """Outputs' ``label_filename`` files, for the classification extension."""

    async def infer(
        self,
        model: str,
        version: str,
        call: InferCall,
        client_timeout_s: float | None = None,
        api: str = "ModelInfer RPC",
    ) -> InferOutcome:
        """One request, one response.  A decoupled model (a decoupled ensemble too) is refused with
        Triton's UNSUPPORTED and its wording, ``api`` naming the endpoint as Triton does."""
        view = self.models.ready_view(model, version)
        if view.decoupled:
            raise Unsupported(
                f"{api} doesn't support models with decoupled transaction policy (model '{view.name}' "
                "sends 0..N responses per request: call it with gRPC ModelStreamInfer or HTTP "
                "generate_stream)"
            )
        # shared memory: inputs are read into the call now, output regions stay pinned (gateway/shm.py)
        with self.shm.lease(call, self.settings.limits.max_message_bytes) as lease:
            start = time.perf_counter_ns()
            with self.stats.in_flight(view.name, view.version):
                if _preserves_ordering(view):
                    response = await self._ordered_round_trip(view, call, client_timeout_s, start)
                else:
                    response = await self._round_trip(view, call, client_timeout_s, start)
            self._classify(view, call, response)
            lease.write_outputs(response)
        if wants_timing(call.parameters):
            add_breakdown(response, time.perf_counter_ns() - start)
        return InferOutcome(view, response)

    def _classify(self, view: ModelView, call: InferCall, response: mesh_pb2.InferResponse) -> None:
        """Outputs requested with ``classification`` = N become their top-N classes (BYTES)."""
        if not call.classification:
            return
        for tensor in response.outputs:
            count = call.classification.get(tensor.name)
            if count is None:
                continue
            labels = self.labels.labels(view.name, view.version, view.config, tensor.name)
            shape, data = classify(
                tensor.name,
                tensor.datatype,
                list(tensor.shape),
                tensor.data,
                count,
                view.max_batch_size > 0,
                labels,
            )
            tensor.datatype = "BYTES"
            del tensor.shape[:]
            tensor.shape.extend(shape)
            tensor.data = data

    async def _ordered_round_trip(
        self, view: ModelView, call: InferCall, client_timeout_s: float | None, start: int
    ) -> mesh_pb2.InferResponse:
        """``preserve_ordering``: the response (or error) waits for every earlier request's (``ordering.py``)."""
        place = self._ordering.enter((view.name, view.version))
        deadline = time.monotonic() + (client_timeout_s or self.settings.limits.request_timeout_s)
        try:
            response = await self._round_trip(view, call, client_timeout_s, start)
        except MeshError:
            await place.wait_turn(deadline - time.monotonic())
            raise
        except BaseException:
            place.leave()
            raise
        await place.wait_turn(deadline - time.monotonic())
        return response

    async def _round_trip(
        self, view: ModelView, call: InferCall, client_timeout_s: float | None, start: int
    ) -> mesh_pb2.InferResponse:
        """Validate, send into the mesh, await the reply; count the outcome in the statistics."""
        limits = self.settings.limits
        try:
            prepared = build_request(
                call, view, limits.request_timeout_s, limits.max_message_bytes, self.settings.request_limits
            )
            timeout_s = (
                prepared.timeout_s if client_timeout_s is None else min(prepared.timeout_s, client_timeout_s)
            )
            if view.ensemble is not None:  # the gateway runs the pipeline (gateway/ensemble.py)
                response = await self._ensembles.run(
                    view, prepared.message, timeout_s, step_timing=wants_timing(call.parameters)
                )
            else:
                response = await self._dispatcher.infer(prepared.message, timeout_s)
        except MeshError as exc:
            reason = failure_reason(exc, from_worker=False, from_mesh=False)
            self.stats.record_failure(view.name, view.version, time.perf_counter_ns() - start, reason)
            raise
        except asyncio.CancelledError:
            self.stats.record_failure(
                view.name, view.version, time.perf_counter_ns() - start, FailureReason.CANCELED
            )
            raise
        elapsed_ns = time.perf_counter_ns() - start
        timing = response.timing if response.HasField("timing") else None
        if response.HasField("error"):
            error = from_wire(response.error.code, response.error.message)
            reason = failure_reason(error, from_worker=timing is not None, from_mesh=True)
            self.stats.record_failure(view.name, view.version, elapsed_ns, reason, timing)
            raise error
        self.stats.record_success(view.name, view.version, elapsed_ns, prepared.message.batch_size, timing)
        return response

    async def stream_infer(
        self, model: str, version: str, call: InferCall, client_timeout_s: float | None = None
    ) -> AsyncGenerator[tuple[ModelView, mesh_pb2.InferResponse], None]:
        """A decoupled model's responses to one request, as they come; the last one is final
        (``more`` false).  An error ends the stream (raised after the responses before it).  A
        decoupled ensemble's responses come from its pipeline (``gateway/ensemble.py``)."""
        view = self.models.ready_view(model, version)
        limits = self.settings.limits
        if call.output_shm:
            raise InvalidArgument(
                f"model '{view.name}' is decoupled: its outputs cannot be written into shared memory "
                "(its responses stream); request them without shared_memory parameters"
            )
        with self.shm.lease(call, limits.max_message_bytes):
            pass  # shared-memory inputs are read into the call here
        start = time.perf_counter_ns()
        timing: mesh_pb2.Timing | None = None
        with self.stats.in_flight(view.name, view.version):
            try:
                prepared = build_request(
                    call,
                    view,
                    limits.request_timeout_s,
                    limits.max_message_bytes,
                    self.settings.request_limits,
                )
                timeout_s = (
                    prepared.timeout_s
                    if client_timeout_s is None
                    else min(prepared.timeout_s, client_timeout_s)
                )
                responses = (
                    self._ensembles.stream(view, prepared.message, timeout_s)
                    if view.ensemble is not None
                    else self._dispatcher.stream(prepared.message, timeout_s)
                )
                async for response in responses:
                    if response.HasField("timing"):
                        timing = _stream_timing(timing, response.timing)
                    if response.HasField("error"):
                        raise from_wire(response.error.code, response.error.message)
                    self._classify(view, call, response)
                    yield view, response
            except MeshError as exc:
                reason = failure_reason(exc, from_worker=timing is not None, from_mesh=True)
                self.stats.record_failure(
                    view.name, view.version, time.perf_counter_ns() - start, reason, timing
                )
                raise
            except (asyncio.CancelledError, GeneratorExit):
                self.stats.record_failure(
                    view.name, view.version, time.perf_counter_ns() - start, FailureReason.CANCELED
                )
                raise
        self.stats.record_success(view.name, view.version, time.perf_counter_ns() - start, 0, timing)

    async def control(
        self,
        model: str,
        load: bool,
        params: Mapping[str, ParamValue] | None = None,
        base64_files: bool = False,
    ) -> None:
        """RepositoryModelLoad / Unload through the model controller (explicit mode); ``params`` are
        the request's parameters (``config``, ``file:<path>``, ``unload_dependents``)."""
        check_model_name(
            model, "load" if load else "unload"
        )  # before the name travels anywhere near the repository
        request = control_request(
            model, load, params or {}, self.settings.limits.max_message_bytes, base64_files
        )
        await self._dispatcher.control(request, self.settings.control_timeout_s)
        # the workers' announcements travel on their own NATS connections: wait (briefly) until this
        # gateway has seen the new state, so a client's next call sees what its load/unload did
        for _ in range(250):
            if self.model_ready(model, "") == load:
                return
            await asyncio.sleep(0.02)

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
        return self.models.index_rows(ready_only)

    async def statistics(self, model: str, version: str) -> list[dict[str, Any]]:
        """Triton's ``model_stats`` for one version, a model's versions, or every model: this gateway's
        counts plus every peer gateway's (``gateway/peers.py``) when there are several."""
        views = [self.models.find(model, version)] if model else self.models.all_views()
        if model and not version:
            views = self.models.versions_of(model)
        keys = [(view.name, view.version) for view in views]
        if self.peers is None:
            return self.local_statistics(keys)
        return await self.peers.statistics(keys)

    def local_statistics(self, keys: list[tuple[str, int]]) -> list[dict[str, Any]]:
        """What this gateway alone counted for ``keys``."""
        return [self.stats.get(name, version).as_dict(name, version) for name, version in keys]


def _preserves_ordering(view: ModelView) -> bool:
    config = view.config
    return config.HasField("dynamic_batching") and config.dynamic_batching.preserve_ordering


def _stream_timing(first: mesh_pb2.Timing | None, latest: mesh_pb2.Timing) -> mesh_pb2.Timing:
    """A stream's statistics: the first response's timing (queue, compute_input, the execution it
    counts), with the compute_infer of the latest one (a decoupled model's responses carry the time since
    its execute began, so the final one's is the request's whole compute)."""
    if first is None:
        merged = mesh_pb2.Timing()
        merged.CopyFrom(latest)
        return merged
    first.compute_infer_ns = max(first.compute_infer_ns, latest.compute_infer_ns)
    return first
