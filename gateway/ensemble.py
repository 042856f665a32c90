"""Runs an ensemble's pipeline for one request, inside the gateway that received it.

Each step is an ordinary mesh request to its model (NATS → that model's batcher → a worker), built
and validated like a client's request to that model (``build_request``: names, datatypes, shapes,
batch size), with the ensemble request's deadline, priority, trace id and parameters.  A step starts
as soon as every tensor it reads exists, so independent steps run concurrently; intermediate
tensors stay in this gateway (never sent back to the client); only the ensemble's declared outputs
(those the client asked for) are returned.  The first step that fails fails the request: its error
keeps its code and names the ensemble and the step model; the steps still running are cancelled
(their replies, when they come, are dropped by the dispatcher).

Each step is counted in the step model's statistics, as Triton counts composing models; the
ensemble request itself is counted by the caller (``InferenceCore``).

With the request parameter ``meshserve_timing`` the response also carries, per step, the int64
parameter ``meshserve_step<N>_ns``: that step's round trip as the gateway saw it (N as in the config).

Bounds: at most one request in flight per step (a step runs once per ensemble request); every step
waits at most until the ensemble request's deadline; the tensors held for one request (inputs plus
every step's outputs) are capped at ``4 x --max-message-bytes`` (beyond: RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from gateway.dispatcher import Dispatcher
from gateway.models import ModelTable, ModelView
from gateway.stats import FailureReason, StatsBook, failure_reason
from gateway.validate import InferCall, InputTensor, build_request
from meshserve.ensemble import EnsemblePlan, Step
from meshserve.errors import DeadlineExceeded, Internal, MeshError, PayloadTooLarge, Unsupported, from_wire
from meshserve.params import param_value
from meshserve.pb import mesh_pb2

__all__ = ["POOL_FACTOR", "EnsembleRunner"]

POOL_FACTOR = 4
"""The tensors one ensemble request holds may reach this many times ``--max-message-bytes``."""


@dataclass(frozen=True, slots=True)
class _Held:
    """An ensemble tensor: what a step produced (or the client sent), under its ensemble name."""

    datatype: str
    shape: tuple[int, ...]
    data: bytes


class EnsembleRunner:
    def __init__(
        self, models: ModelTable, dispatcher: Dispatcher, stats: StatsBook, max_message_bytes: int
    ) -> None:
        self._models = models
        self._dispatcher = dispatcher
        self._stats = stats
        self._max_message_bytes = max_message_bytes

    async def run(
        self, view: ModelView, request: mesh_pb2.InferRequest, timeout_s: float, step_timing: bool = False
    ) -> mesh_pb2.InferResponse:
        """The ensemble's response to ``request`` (already validated against the ensemble's inputs)."""
        plan = view.ensemble
        if plan is None:
            raise Internal(f"model '{view.name}' is not an ensemble")
        deadline = time.monotonic() + timeout_s
        pool = {t.name: _Held(t.datatype, tuple(t.shape), t.data) for t in request.inputs}
        budget = POOL_FACTOR * self._max_message_bytes
        held = sum(len(t.data) for t in pool.values())
        will_exist = set(pool) | {tensor for step in plan.steps for _, tensor in step.outputs}
        waiting = list(plan.steps)
        running: dict[asyncio.Task[dict[str, _Held]], Step] = {}
        finished: list[asyncio.Task[dict[str, _Held]]] = []
        started: dict[int, int] = {}
        took: dict[int, int] = {}
        try:
            while waiting or running:
                for step in [s for s in waiting if _can_start(s, pool, will_exist)]:
                    waiting.remove(step)
                    task = asyncio.create_task(self._call_step(plan, step, request, pool, deadline))
                    running[task] = step
                    started[step.index] = time.perf_counter_ns()
                if not running:
                    names = ", ".join(s.label for s in waiting)
                    raise Internal(f"ensemble '{plan.name}': {names} can never start (inputs missing)")
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                finished.extend(done)
                for task in done:
                    step = running.pop(task)
                    took[step.index] = time.perf_counter_ns() - started[step.index]
                    for output, tensor in step.outputs:
                        produced = task.result().get(output)
                        if produced is None:
                            will_exist.discard(tensor)
                            continue
                        held += len(produced.data)
                        if held > budget:
                            raise PayloadTooLarge(
                                f"ensemble '{plan.name}': the tensors of one request passed {budget} bytes "
                                f"at {step.label} ({POOL_FACTOR} x --max-message-bytes)"
                            )
                        pool[tensor] = produced
        finally:
            for task in running:
                task.cancel()
            # every step's outcome is collected (a second step failing with the first is not logged
            # as "exception never retrieved")
            await asyncio.gather(*running, *finished, return_exceptions=True)
        response = _response(view, plan, request, pool)
        if step_timing:
            for index, ns in sorted(took.items()):
                response.parameters[f"meshserve_step{index}_ns"].int64_param = ns
        return response

    async def _call_step(
        self,
        plan: EnsemblePlan,
        step: Step,
        request: mesh_pb2.InferRequest,
        pool: dict[str, _Held],
        deadline: float,
    ) -> dict[str, _Held]:
        where = f"in ensemble '{plan.name}', {step.label}"
        try:
            step_view = self._models.ready_view(step.model, str(step.version) if step.version > 0 else "")
            if step_view.decoupled:
                raise Unsupported("the model is decoupled, which ensembles do not support")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded("Request timeout expired before the step could start")
            message = self._step_request(step, step_view, request, pool, remaining)
        except MeshError as exc:
            raise from_wire(exc.code, f"{where}: {exc.message}") from None
        start = time.perf_counter_ns()
        with self._stats.in_flight(step_view.name, step_view.version):
            try:
                if step_view.ensemble is not None:  # a nested ensemble runs here too
                    response = await self.run(step_view, message, remaining)
                else:
                    response = await self._dispatcher.infer(message, remaining)
            except MeshError as exc:
                self._record_failure(step_view, start, exc, None, from_mesh=False)
                raise from_wire(exc.code, f"{where}: {exc.message}") from None
            except asyncio.CancelledError:
                self._stats.record_failure(
                    step_view.name,
                    step_view.version,
                    time.perf_counter_ns() - start,
                    FailureReason.CANCELED,
                )
                raise
        timing = response.timing if response.HasField("timing") else None
        if response.HasField("error"):
            error = from_wire(response.error.code, response.error.message)
            self._record_failure(step_view, start, error, timing, from_mesh=True)
            raise from_wire(error.code, f"{where}: {error.message}")
        self._stats.record_success(
            step_view.name, step_view.version, time.perf_counter_ns() - start, message.batch_size, timing
        )
        return {t.name: _Held(t.datatype, tuple(t.shape), t.data) for t in response.outputs}

    def _step_request(
        self,
        step: Step,
        step_view: ModelView,
        request: mesh_pb2.InferRequest,
        pool: dict[str, _Held],
        remaining_s: float,
    ) -> mesh_pb2.InferRequest:
        """The step's request, checked against the step model like a client's request would be."""
        call = InferCall(
            request_id=request.request_id,
            inputs=[
                InputTensor(name, pool[tensor].datatype, list(pool[tensor].shape), pool[tensor].data)
                for name, tensor in step.inputs
                if tensor in pool
            ],
            outputs=[output for output, _ in step.outputs],
            parameters={key: param_value(p) for key, p in request.parameters.items()},
        )
        message = build_request(call, step_view, remaining_s, self._max_message_bytes).message
        message.deadline_unix_ns = request.deadline_unix_ns
        message.priority = request.priority
        message.timeout_us = request.timeout_us
        message.trace_id = request.trace_id
        return message

    def _record_failure(
        self,
        view: ModelView,
        start: int,
        error: MeshError,
        timing: mesh_pb2.Timing | None,
        from_mesh: bool,
    ) -> None:
        reason = failure_reason(error, from_worker=timing is not None, from_mesh=from_mesh)
        self._stats.record_failure(view.name, view.version, time.perf_counter_ns() - start, reason, timing)


def _can_start(step: Step, pool: dict[str, _Held], will_exist: set[str]) -> bool:
    """Every tensor the step reads is there (a tensor no step produced after all is left out: the
    step's own validation then names a missing required input)."""
    return all(tensor in pool for _, tensor in step.inputs if tensor in will_exist)


def _response(
    view: ModelView, plan: EnsemblePlan, request: mesh_pb2.InferRequest, pool: dict[str, _Held]
) -> mesh_pb2.InferResponse:
    response = mesh_pb2.InferResponse(
        request_id=request.request_id, model_name=view.name, model_version=view.version
    )
    for name in list(request.requested_outputs) or list(plan.outputs):
        held = pool.get(name)
        if held is None:
            raise Internal(f"ensemble '{plan.name}': no step produced output '{name}'")
        response.outputs.append(
            mesh_pb2.Tensor(name=name, datatype=held.datatype, shape=held.shape, data=held.data)
        )
    return response
