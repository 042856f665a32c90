"""Runs an ensemble's pipeline for one request, inside the gateway that received it.

Each step is an ordinary mesh request to its model (NATS → that model's batcher → a worker), built
and validated like a client's request to that model (``build_request``: names, datatypes, shapes,
batch size), with the ensemble request's deadline, priority, trace id and parameters.  Every step
waits for the tensors it reads and starts as soon as they exist, so independent steps run
concurrently; intermediate tensors stay in this gateway (never sent back to the client); only the
ensemble's declared outputs (those the client asked for) are returned.  The first step that fails
fails the request: its error keeps its code and names the ensemble and the step model; the steps
still running are cancelled (their replies, when they come, are dropped by the dispatcher).

Decoupled steps (``meshserve/ensemble.py`` :func:`scopes_of`): each response of a decoupled step
opens a *branch* that runs the steps of its scope with that response's tensors (and reads the
tensors of the enclosing branches); the ensemble answers once per branch of its response scope,
as each one's outputs are complete, and then sends its final (flag-only) response.  At most
``max_inflight_responses`` branches of one decoupled step run at a time, across all requests to the
ensemble in this gateway (the config's ``ensemble_scheduling``, as Triton's ``max_inflight_requests``;
:data:`DEFAULT_INFLIGHT` when 0): past that the decoupled step's responses wait in its bounded stream
inbox (a step that overflows it fails the request).

Each step is counted in the step model's statistics, as Triton counts composing models; the
ensemble request itself is counted by the caller (``InferenceCore``).

With the request parameter ``meshserve_timing`` the response also carries, per step, the int64
parameter ``meshserve_step<N>_ns``: that step's (first) round trip as the gateway saw it.

Bounds: every step waits at most until the ensemble request's deadline, and so does the whole run;
the tensors held for one request (inputs plus every live branch's outputs) are capped at
``4 x --max-message-bytes`` (beyond: RESOURCE_EXHAUSTED); responses wait for the reader in a queue
of :data:`ANSWER_QUEUE` (then the branches stop, and with them the decoupled steps' reading).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.models import ModelTable, ModelView
from gateway.stats import FailureReason, StatsBook, failure_reason
from gateway.validate import InferCall, InputTensor, build_request
from meshserve.ensemble import EnsemblePlan, Scopes, Step, scopes_of
from meshserve.errors import DeadlineExceeded, Internal, MeshError, PayloadTooLarge, Unsupported, from_wire
from meshserve.params import param_value
from meshserve.pb import mesh_pb2

if TYPE_CHECKING:  # unit tests drive the runner with a stand-in (and must not import the dispatcher)
    from gateway.dispatcher import Dispatcher

__all__ = ["ANSWER_QUEUE", "DEFAULT_INFLIGHT", "POOL_FACTOR", "EnsembleRunner"]

POOL_FACTOR = 4
"""The tensors one ensemble request holds may reach this many times ``--max-message-bytes``."""
DEFAULT_INFLIGHT = 16
"""Branches of one decoupled step running at once (all requests together), when the config sets no
``max_inflight_responses``."""
_GRACE_S = 0.25
ANSWER_QUEUE = 16
"""Responses of one decoupled ensemble request waiting for their reader."""


@dataclass(frozen=True, slots=True)
class _Held:
    """An ensemble tensor: what a step produced (or the client sent), under its ensemble name."""

    datatype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(slots=True)
class _Branch:
    """One run of a scope: the tensors its steps produce (None: a step left an optional output out)."""

    scope: int
    parent: _Branch | None
    tensors: dict[str, asyncio.Future[_Held | None]] = field(default_factory=dict)
    held: int = 0

    def find(self, tensor: str) -> asyncio.Future[_Held | None] | None:
        branch: _Branch | None = self
        while branch is not None:
            found = branch.tensors.get(tensor)
            if found is not None:
                return found
            branch = branch.parent
        return None


class EnsembleRunner:
    def __init__(
        self, models: ModelTable, dispatcher: Dispatcher, stats: StatsBook, max_message_bytes: int
    ) -> None:
        self._models = models
        self._dispatcher = dispatcher
        self._stats = stats
        self._max_message_bytes = max_message_bytes
        self._slots: dict[tuple[str, int, int, int], asyncio.Semaphore] = {}

    def slots(self, view: ModelView, step: int, limit: int) -> asyncio.Semaphore:
        """The branches of one decoupled step that may run at once, across all requests to the
        ensemble version (Triton's ``max_inflight_requests``); a new limit (a reload) gets new slots."""
        key = (view.name, view.version, step, limit)
        found = self._slots.get(key)
        if found is None:
            found = self._slots[key] = asyncio.Semaphore(limit)
        return found

    async def run(
        self, view: ModelView, request: mesh_pb2.InferRequest, timeout_s: float, step_timing: bool = False
    ) -> mesh_pb2.InferResponse:
        """The response of a (non-decoupled) ensemble to ``request`` (already validated against the
        ensemble's inputs)."""
        answers: list[mesh_pb2.InferResponse] = []
        async with aclosing(self.stream(view, request, timeout_s, step_timing)) as responses:
            async for response in responses:
                if response.more:
                    answers.append(response)
                    continue
                if len(answers) != 1:
                    raise Unsupported(
                        f"ensemble '{view.name}' sent {len(answers)} responses to one request (it has a "
                        "decoupled step): call it with the streaming API (gRPC ModelStreamInfer)"
                    )
                answer = answers[0]
                answer.more = False
                answer.parameters.MergeFrom(response.parameters)
                return answer
        raise Internal(f"ensemble '{view.name}' ended without its final response")

    async def stream(
        self, view: ModelView, request: mesh_pb2.InferRequest, timeout_s: float, step_timing: bool = False
    ) -> AsyncGenerator[mesh_pb2.InferResponse, None]:
        """Every response of the ensemble (``more`` set) as it is complete, then the final flag-only
        one (``more`` unset; with the step timings when asked)."""
        plan = view.ensemble
        if plan is None:
            raise Internal(f"model '{view.name}' is not an ensemble")
        scopes = scopes_of(plan, self._decoupled_steps(plan))
        if isinstance(scopes, str):
            raise Unsupported(scopes)
        inflight = view.config.ensemble_scheduling.max_inflight_responses or DEFAULT_INFLIGHT
        run = _Run(self, view, plan, scopes, request, timeout_s, inflight)
        task = asyncio.create_task(run.main())
        try:
            while (answer := await run.answers.get()) is not None:
                yield answer
            await task
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        final = mesh_pb2.InferResponse(request_id=request.request_id, model_name=view.name)
        final.model_version = view.version
        if step_timing:
            for index, ns in sorted(run.took.items()):
                final.parameters[f"meshserve_step{index}_ns"].int64_param = ns
        yield final

    def _decoupled_steps(self, plan: EnsemblePlan) -> frozenset[int]:
        found = set()
        for step in plan.steps:
            try:
                if self._models.find(step.model, str(step.version) if step.version > 0 else "").decoupled:
                    found.add(step.index)
            except MeshError:
                continue  # the step itself reports it when it starts
        return frozenset(found)

    # -- one step -------------------------------------------------------------------------------------
    def prepare(
        self,
        plan: EnsemblePlan,
        step: Step,
        request: mesh_pb2.InferRequest,
        tensors: dict[str, _Held],
        deadline: float,
    ) -> tuple[ModelView, mesh_pb2.InferRequest, float]:
        """The step model's READY view and the step's request, checked like a client's would be."""
        where = f"in ensemble '{plan.name}', {step.label}"
        try:
            step_view = self._models.ready_view(step.model, str(step.version) if step.version > 0 else "")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded("Request timeout expired before the step could start")
            call = InferCall(
                request_id=request.request_id,
                inputs=[
                    InputTensor(name, held.datatype, list(held.shape), held.data)
                    for name, tensor in step.inputs
                    if (held := tensors.get(tensor)) is not None
                ],
                outputs=[output for output, _ in step.outputs],
                parameters={key: param_value(p) for key, p in request.parameters.items()},
            )
            message = build_request(call, step_view, remaining, self._max_message_bytes).message
        except MeshError as exc:
            raise from_wire(exc.code, f"{where}: {exc.message}") from None
        message.deadline_unix_ns = request.deadline_unix_ns
        message.priority = request.priority
        message.timeout_us = request.timeout_us
        message.trace_id = request.trace_id
        return step_view, message, remaining

    async def call(
        self, where: str, step_view: ModelView, message: mesh_pb2.InferRequest, remaining: float
    ) -> AsyncGenerator[dict[str, _Held], None]:
        """The step's outputs: once for a regular step, once per response for a decoupled one."""
        start = time.perf_counter_ns()
        timing: mesh_pb2.Timing | None = None
        with self._stats.in_flight(step_view.name, step_view.version):
            try:
                async for response in self._responses(step_view, message, remaining):
                    if response.HasField("timing") and timing is None:
                        timing = response.timing
                    if response.HasField("error"):
                        error = from_wire(response.error.code, response.error.message)
                        self._record_failure(step_view, start, error, timing, from_mesh=True)
                        raise from_wire(error.code, f"{where}: {error.message}")
                    if response.outputs or not step_view.decoupled:
                        yield {t.name: _Held(t.datatype, tuple(t.shape), t.data) for t in response.outputs}
            except MeshError as exc:
                if not exc.message.startswith(where):
                    self._record_failure(step_view, start, exc, None, from_mesh=False)
                    raise from_wire(exc.code, f"{where}: {exc.message}") from None
                raise
            except (asyncio.CancelledError, GeneratorExit):
                self._stats.record_failure(
                    step_view.name,
                    step_view.version,
                    time.perf_counter_ns() - start,
                    FailureReason.CANCELED,
                )
                raise
        batch = 0 if step_view.decoupled else message.batch_size
        self._stats.record_success(
            step_view.name, step_view.version, time.perf_counter_ns() - start, batch, timing
        )

    async def _responses(
        self, step_view: ModelView, message: mesh_pb2.InferRequest, remaining: float
    ) -> AsyncGenerator[mesh_pb2.InferResponse, None]:
        if step_view.ensemble is not None:  # a nested ensemble runs here too
            if step_view.decoupled:
                async with aclosing(self.stream(step_view, message, remaining)) as nested:
                    async for response in nested:
                        yield response
            else:
                yield await self.run(step_view, message, remaining)
        elif step_view.decoupled:
            responses = self._dispatcher.stream(message, remaining)
            try:
                async for response in responses:
                    yield response
            finally:
                await _close(responses)
        else:
            yield await self._dispatcher.infer(message, remaining)

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


class _Run:
    """One ensemble request: its branches, their steps, its answers."""

    def __init__(
        self,
        runner: EnsembleRunner,
        view: ModelView,
        plan: EnsemblePlan,
        scopes: Scopes,
        request: mesh_pb2.InferRequest,
        timeout_s: float,
        inflight: int,
    ) -> None:
        self.runner = runner
        self.view = view
        self.plan = plan
        self.scopes = scopes
        self.request = request
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.inflight = inflight
        self.budget = POOL_FACTOR * runner._max_message_bytes
        self.held = 0
        self.took: dict[int, int] = {}
        self.answers: asyncio.Queue[mesh_pb2.InferResponse | None] = asyncio.Queue(ANSWER_QUEUE)
        self.wanted = list(request.requested_outputs) or list(plan.outputs)

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        root = _Branch(scope=0, parent=None)
        for tensor in self.request.inputs:
            future: asyncio.Future[_Held | None] = loop.create_future()
            future.set_result(_Held(tensor.datatype, tuple(tensor.shape), tensor.data))
            root.tensors[tensor.name] = future
            self.held += len(tensor.data)
        try:
            # a little after the steps' own deadlines, so that a step's error (naming it) comes first
            async with asyncio.timeout(max(0.0, self.timeout_s) + _GRACE_S):
                await self._branch(root)
        except TimeoutError:
            raise DeadlineExceeded(
                f"Request timeout expired: ensemble '{self.plan.name}' did not finish within "
                f"{self.timeout_s:g} s"
            ) from None
        except BaseExceptionGroup as group:
            raise _first(group) from None
        finally:
            await self.answers.put(None)

    async def _branch(self, branch: _Branch) -> None:
        """Run every step of ``branch``'s scope (and answer, in the response scope)."""
        loop = asyncio.get_running_loop()
        mine = [s for s in self.plan.steps if self.scopes.of_step[s.index] == branch.scope]
        for step in mine:
            for _, tensor in step.outputs:
                branch.tensors[tensor] = loop.create_future()
        try:
            async with asyncio.TaskGroup() as tg:
                for step in mine:
                    tg.create_task(self._step(branch, step, tg))
                if self.scopes.response == branch.scope:
                    tg.create_task(self._answer(branch))
        finally:
            if branch.parent is not None:
                self.held -= branch.held

    async def _inputs(self, branch: _Branch, step: Step) -> dict[str, _Held]:
        found: dict[str, _Held] = {}
        for _, tensor in step.inputs:
            future = branch.find(tensor)
            held = await future if future is not None else None
            if held is not None:
                found[tensor] = held
        return found

    async def _step(self, branch: _Branch, step: Step, tg: asyncio.TaskGroup) -> None:
        tensors = await self._inputs(branch, step)
        step_view, message, remaining = self.runner.prepare(
            self.plan, step, self.request, tensors, self.deadline
        )
        where = f"in ensemble '{self.plan.name}', {step.label}"
        decoupled = step.index in self.scopes.parent
        slots = self.runner.slots(self.view, step.index, self.inflight)
        started = time.perf_counter_ns()
        async with aclosing(self.runner.call(where, step_view, message, remaining)) as outputs:
            async for produced in outputs:
                self.took.setdefault(step.index, time.perf_counter_ns() - started)
                if not decoupled:
                    self._keep(branch, step, produced)
                    continue
                await slots.acquire()
                child = _Branch(scope=step.index, parent=branch)
                self._keep(child, step, produced)
                tg.create_task(self._child(child, slots))
        if not decoupled:
            for _, tensor in step.outputs:  # an optional output the step left out
                if not branch.tensors[tensor].done():
                    branch.tensors[tensor].set_result(None)

    async def _child(self, child: _Branch, slots: asyncio.Semaphore) -> None:
        try:
            await self._branch(child)
        finally:
            slots.release()

    def _keep(self, branch: _Branch, step: Step, produced: dict[str, _Held]) -> None:
        loop = asyncio.get_running_loop()
        for output, tensor in step.outputs:
            held = produced.get(output)
            if held is not None:
                self.held += len(held.data)
                branch.held += len(held.data)
                if self.held > self.budget:
                    raise PayloadTooLarge(
                        f"ensemble '{self.plan.name}': the tensors of one request passed {self.budget} "
                        f"bytes at {step.label} ({POOL_FACTOR} x --max-message-bytes)"
                    )
            future = branch.tensors.get(tensor)
            if future is None or future.done():
                future = branch.tensors[tensor] = loop.create_future()
            future.set_result(held)

    async def _answer(self, branch: _Branch) -> None:
        response = mesh_pb2.InferResponse(
            request_id=self.request.request_id,
            model_name=self.view.name,
            model_version=self.view.version,
            more=True,
        )
        for name in self.wanted:
            future = branch.find(name)
            held = await future if future is not None else None
            if held is None:
                raise Internal(f"ensemble '{self.plan.name}': no step produced output '{name}'")
            response.outputs.append(
                mesh_pb2.Tensor(name=name, datatype=held.datatype, shape=held.shape, data=held.data)
            )
        await self.answers.put(response)


async def _close(iterator: AsyncIterator[mesh_pb2.InferResponse]) -> None:
    """End a stream now (its cleanup cancels the step's request), not when it is collected."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed run: the first step's error (a MeshError when there is one)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first(exc)
        if isinstance(exc, MeshError):
            return exc
    inner = group.exceptions[0]
    return _first(inner) if isinstance(inner, BaseExceptionGroup) else inner
