"""Ensembles (``platform: "ensemble"``): the pipeline a config declares, and the checks that decide
whether it can run.  Pure: no I/O, no asyncio; the gateway runs the pipeline (``gateway/ensemble.py``).

An ensemble's ``ensemble_scheduling`` lists steps; each step calls one model, reading ensemble-wide
tensors through ``input_map`` (the step model's input name → ensemble tensor name) and writing them
through ``output_map`` (the step model's output name → ensemble tensor name).  The tensors form a
DAG: a step runs once every tensor it reads exists.

Checks come in three layers, each with a message that names the step and tensor at fault:

* :func:`check_structure` — the config alone: every step names a model, every tensor a step reads is
  an ensemble input or another step's output, each tensor has one producer, every ensemble input is
  read and every ensemble output produced, and the steps have no cycle.
* :func:`check_references` — the repository: every step model exists, and ensembles that call
  ensembles do not call themselves round a loop.
* :func:`check_signatures` — the step models' configs (known once their workers announce them, as
  ONNX models complete theirs from the graph): the inputs and outputs named exist, and datatypes and
  shapes agree where both sides declare them; decoupled steps are wired as :func:`scopes_of` allows.

Decoupled steps (0..N responses per request).  Each response of a decoupled step D runs the steps
that read D's outputs (directly or through other steps) once more, with that response's tensors:
those steps are in D's *scope*.  Steps that read nothing of a decoupled step run once per request
(scope 0).  Scopes nest (a decoupled step inside D's scope opens a scope inside it); a step that
reads the outputs of two decoupled steps neither of which is downstream of the other has no single
scope and is refused.  The ensemble answers once per run of its *response scope*: the deepest
scope any of its outputs is produced in (the outputs of a decoupled step itself are in its scope).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from meshserve.pb import model_config_pb2 as mc

__all__ = [
    "ENSEMBLE_PLATFORM",
    "EnsemblePlan",
    "Scopes",
    "Step",
    "check_references",
    "check_signatures",
    "check_structure",
    "decoupled_steps",
    "is_ensemble",
    "plan_of",
    "scopes_of",
    "with_step_models",
]

ENSEMBLE_PLATFORM = "ensemble"


def is_ensemble(config: mc.ModelConfig) -> bool:
    return config.platform == ENSEMBLE_PLATFORM


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    """Position in the config (1-based in messages, as a person counts)."""
    model: str
    version: int
    """-1 (or 0): the model's latest READY version."""
    inputs: tuple[tuple[str, str], ...]
    """(the step model's input name, the ensemble tensor it reads)."""
    outputs: tuple[tuple[str, str], ...]
    """(the step model's output name, the ensemble tensor it writes)."""

    @property
    def label(self) -> str:
        return f"step {self.index} (model '{self.model}')"


@dataclass(frozen=True, slots=True)
class Scopes:
    """Where each step runs (see the module docstring): step index → the decoupled step whose each
    response runs it, 0 for once per request."""

    of_step: Mapping[int, int]
    response: int
    """The scope whose every run answers the client (0: one response per request)."""
    parent: Mapping[int, int]
    """Decoupled step index → the scope it runs in (the scope enclosing its own)."""

    @property
    def decoupled(self) -> bool:
        """The ensemble sends 0..N responses per request (it has a decoupled step)."""
        return bool(self.parent)


@dataclass(frozen=True, slots=True)
class EnsemblePlan:
    name: str
    inputs: frozenset[str]
    outputs: tuple[str, ...]
    steps: tuple[Step, ...]

    def producer(self, tensor: str) -> Step | None:
        return next((s for s in self.steps if any(t == tensor for _, t in s.outputs)), None)


def plan_of(config: mc.ModelConfig) -> EnsemblePlan:
    steps = tuple(
        Step(
            index=i,
            model=step.model_name,
            version=step.model_version,
            inputs=tuple(sorted(step.input_map.items())),
            outputs=tuple(sorted(step.output_map.items())),
        )
        for i, step in enumerate(config.ensemble_scheduling.step, start=1)
    )
    return EnsemblePlan(
        name=config.name,
        inputs=frozenset(t.name for t in config.input),
        outputs=tuple(t.name for t in config.output),
        steps=steps,
    )


def check_structure(config: mc.ModelConfig) -> str:
    """What is wrong with the ensemble's own wiring, or ""."""
    plan = plan_of(config)
    where = f"ensemble '{plan.name}'"
    if not plan.steps:
        return f"{where}: ensemble_scheduling has no step"
    produced: dict[str, Step] = {}
    for step in plan.steps:
        if not step.model:
            return f"{where}: step {step.index} has no model_name"
        if step.model == plan.name:
            return f"{where}: {step.label} calls the ensemble itself"
        if not step.inputs:
            return f"{where}: {step.label} has an empty input_map"
        if not step.outputs:
            return f"{where}: {step.label} has an empty output_map"
        for output, tensor in step.outputs:
            if tensor in plan.inputs:
                return (
                    f"{where}: {step.label} output '{output}' writes '{tensor}', which is an ensemble input"
                )
            other = produced.get(tensor)
            if other is not None:
                return f"{where}: tensor '{tensor}' is written by both {other.label} and {step.label}"
            produced[tensor] = step
    for step in plan.steps:
        for step_input, tensor in step.inputs:
            if tensor not in plan.inputs and tensor not in produced:
                return (
                    f"{where}: {step.label} input '{step_input}' reads '{tensor}', which is neither an "
                    "ensemble input nor any step's output"
                )
    cycle = _find_cycle(plan, produced)
    if cycle:
        return f"{where}: the steps form a cycle: " + " -> ".join(s.label for s in cycle)
    read = {tensor for step in plan.steps for _, tensor in step.inputs}
    for name in sorted(plan.inputs - read):
        return f"{where}: ensemble input '{name}' is not read by any step"
    for name in plan.outputs:
        if name not in produced:
            return f"{where}: ensemble output '{name}' is not produced by any step"
    return ""


def _find_cycle(plan: EnsemblePlan, produced: Mapping[str, Step]) -> list[Step]:
    """A loop of steps (each reading a tensor the next one writes), or [] when the steps are a DAG."""
    after: dict[int, list[Step]] = {
        s.index: [produced[t] for _, t in s.inputs if t in produced] for s in plan.steps
    }
    state: dict[int, int] = {}  # 1 = on the current path, 2 = done
    path: list[Step] = []

    def visit(step: Step) -> list[Step]:
        state[step.index] = 1
        path.append(step)
        for before in after[step.index]:
            if state.get(before.index) == 1:
                return [*path[path.index(before) :], before]
            if before.index not in state:
                found = visit(before)
                if found:
                    return found
        path.pop()
        state[step.index] = 2
        return []

    for step in plan.steps:
        if step.index not in state:
            found = visit(step)
            if found:
                return list(reversed(found))
    return []


def check_references(name: str, configs: Mapping[str, mc.ModelConfig | None]) -> str:
    """Step models missing from the repository, or ensembles that reach ``name`` again; "" if fine.
    ``configs``: every model directory of the repository (None when its config is broken)."""
    config = configs.get(name)
    if config is None or not is_ensemble(config):
        return ""
    for step in plan_of(config).steps:
        if step.model not in configs:
            return f"ensemble '{name}': {step.label}: no model '{step.model}' in the model repository"
    trail = _ensemble_loop(name, configs, [name])
    if trail:
        return f"ensemble '{name}' calls itself through other ensembles: " + " -> ".join(trail)
    return ""


def _ensemble_loop(name: str, configs: Mapping[str, mc.ModelConfig | None], trail: list[str]) -> list[str]:
    config = configs.get(name)
    if config is None or not is_ensemble(config):
        return []
    for step in plan_of(config).steps:
        if step.model == trail[0]:
            return [*trail, step.model]
        if step.model in trail:
            continue  # a loop that does not pass through the ensemble checked: reported for its members
        found = _ensemble_loop(step.model, configs, [*trail, step.model])
        if found:
            return found
    return []


def with_step_models(names: set[str], configs: Mapping[str, mc.ModelConfig | None]) -> set[str]:
    """``names`` plus every model their ensembles use, nested ensembles included (loading an
    ensemble loads its step models, as in Triton)."""
    wanted, todo = set(names), list(names)
    while todo:
        config = configs.get(todo.pop())
        if config is None or not is_ensemble(config):
            continue
        for step in plan_of(config).steps:
            if step.model not in wanted:
                wanted.add(step.model)
                todo.append(step.model)
    return wanted


@dataclass(frozen=True, slots=True)
class _Declared:
    datatype: int
    shape: tuple[int, ...]
    """With the batch dimension (-1) first when the model batches; () when not declared."""
    owner: str


def _tensor(model: mc.ModelConfig, tensor: mc.ModelInput | mc.ModelOutput, owner: str) -> _Declared:
    batch = (-1,) if model.max_batch_size > 0 else ()
    shape = () if tensor.HasField("reshape") else batch + tuple(tensor.dims)
    return _Declared(tensor.data_type, shape, owner)


def scopes_of(plan: EnsemblePlan, decoupled: frozenset[int]) -> Scopes | str:
    """The scope of every step given which steps (by index) are decoupled, or why the wiring has none.
    ``plan`` has passed :func:`check_structure` (a DAG)."""
    where = f"ensemble '{plan.name}'"
    producer = {tensor: step for step in plan.steps for _, tensor in step.outputs}
    above: dict[int, frozenset[int]] = {}
    """Step index → every decoupled step it reads from, directly or not (itself excluded)."""

    def upstream(step: Step) -> frozenset[int]:
        known = above.get(step.index)
        if known is not None:
            return known
        found: set[int] = set()
        for _, tensor in step.inputs:
            before = producer.get(tensor)
            if before is not None:
                found |= upstream(before)
                if before.index in decoupled:
                    found.add(before.index)
        above[step.index] = frozenset(found)
        return above[step.index]

    def deepest(chain: frozenset[int], what: str) -> int | str:
        """The member of ``chain`` downstream of all the others (0 for none), or why there is none."""
        for candidate in chain:
            if chain - {candidate} <= above[candidate]:
                return candidate
        labels = " and ".join(plan.steps[i - 1].label for i in sorted(chain))
        return (
            f"{where}: {what} reads the responses of {labels}, decoupled steps neither of which follows "
            "the other (which response would it pair?)"
        )

    of_step: dict[int, int] = {}
    for step in plan.steps:
        scope = deepest(upstream(step), step.label) if upstream(step) else 0
        if isinstance(scope, str):
            return scope
        of_step[step.index] = scope
    sources: set[int] = set()
    for name in plan.outputs:
        step = producer[name]
        sources |= upstream(step) | ({step.index} if step.index in decoupled else set())
    response = deepest(frozenset(sources), "the ensemble's output set") if sources else 0
    if isinstance(response, str):
        return response
    return Scopes(of_step, response, {d: of_step[d] for d in decoupled})


def check_signatures(
    config: mc.ModelConfig,
    steps: Mapping[str, mc.ModelConfig],
    decoupled_models: frozenset[str] = frozenset(),
) -> str:
    """Datatypes and shapes along every edge of the pipeline, given each step model's config (keyed by
    model name); "" when they agree.  ``decoupled_models``: step models that send 0..N responses
    besides those whose config says so (nested decoupled ensembles); their steps must be wired as
    :func:`scopes_of` allows."""
    plan = plan_of(config)
    where = f"ensemble '{plan.name}'"
    declared: dict[str, _Declared] = {
        t.name: _tensor(config, t, f"ensemble input '{t.name}'") for t in config.input
    }
    for step in plan.steps:
        if steps.get(step.model) is None:
            return f"{where}: {step.label}: the model's config is not known yet"
    scopes = scopes_of(plan, decoupled_steps(plan, steps, decoupled_models))
    if isinstance(scopes, str):
        return scopes
    for step in plan.steps:
        model = steps[step.model]
        outputs = {t.name: t for t in model.output}
        for output, tensor in step.outputs:
            if output not in outputs:
                return f"{where}: {step.label} has no output '{output}' (output_map)"
            declared[tensor] = _tensor(model, outputs[output], f"{step.label} output '{output}'")
    for step in plan.steps:
        model = steps[step.model]
        inputs = {t.name: t for t in model.input}
        for step_input, tensor in step.inputs:
            if step_input not in inputs:
                return f"{where}: {step.label} has no input '{step_input}' (input_map)"
            problem = _disagree(declared.get(tensor), _tensor(model, inputs[step_input], ""))
            if problem:
                return f"{where}: {step.label} input '{step_input}' reads '{tensor}': {problem}"
    for declared_output in config.output:
        name = declared_output.name
        problem = _disagree(declared.get(name), _tensor(config, declared_output, ""))
        if problem:
            return f"{where}: ensemble output '{name}': {problem}"
    return ""


def decoupled_steps(
    plan: EnsemblePlan, steps: Mapping[str, mc.ModelConfig], decoupled_models: frozenset[str] = frozenset()
) -> frozenset[int]:
    """Indexes of the steps whose model sends 0..N responses per request."""
    return frozenset(
        step.index
        for step in plan.steps
        if step.model in decoupled_models
        or (step.model in steps and steps[step.model].model_transaction_policy.decoupled)
    )


def _disagree(source: _Declared | None, target: _Declared) -> str:
    if source is None:
        return ""
    if source.datatype != target.datatype:
        return (
            f"{source.owner} is {mc.DataType.Name(source.datatype)}, "
            f"but {mc.DataType.Name(target.datatype)} is expected"
        )
    if not source.shape or not target.shape:
        return ""
    if len(source.shape) != len(target.shape) or any(
        a != b and a != -1 and b != -1 for a, b in zip(source.shape, target.shape, strict=False)
    ):
        return f"{source.owner} has shape {list(source.shape)}, but {list(target.shape)} is expected"
    return ""
