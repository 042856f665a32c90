"""Decoupled steps in ensembles: which steps run once per response of which decoupled step, and which
wirings are refused (meshserve/ensemble.py ``scopes_of``; pure)."""

from __future__ import annotations

from meshserve.ensemble import EnsemblePlan, Scopes, Step, check_signatures, scopes_of
from meshserve.model_config import parse_config


def step(index: int, reads: list[str], writes: list[str]) -> Step:
    return Step(
        index=index,
        model=f"m{index}",
        version=-1,
        inputs=tuple((f"IN{i}", t) for i, t in enumerate(reads)),
        outputs=tuple((f"OUT{i}", t) for i, t in enumerate(writes)),
    )


def plan(outputs: list[str], *steps: Step) -> EnsemblePlan:
    return EnsemblePlan(name="e", inputs=frozenset({"X"}), outputs=tuple(outputs), steps=steps)


def scopes(p: EnsemblePlan, decoupled: set[int]) -> Scopes:
    found = scopes_of(p, frozenset(decoupled))
    assert isinstance(found, Scopes), found
    return found


def test_without_decoupled_steps_everything_runs_once() -> None:
    found = scopes(plan(["Z"], step(1, ["X"], ["a"]), step(2, ["a"], ["Z"])), set())
    assert dict(found.of_step) == {1: 0, 2: 0}
    assert found.response == 0 and not found.decoupled


def test_steps_after_a_decoupled_step_run_in_its_scope() -> None:
    # 1 (decoupled) -> 2 -> 3 = output; 4 reads only the input: runs once
    p = plan(
        ["Z", "W"],
        step(1, ["X"], ["a"]),
        step(2, ["a"], ["b"]),
        step(3, ["b", "X"], ["Z"]),
        step(4, ["X"], ["W"]),
    )
    found = scopes(p, {1})
    assert dict(found.of_step) == {1: 0, 2: 1, 3: 1, 4: 0}
    assert found.response == 1 and found.decoupled
    assert dict(found.parent) == {1: 0}


def test_a_decoupled_step_that_is_the_output_answers_per_response() -> None:
    found = scopes(plan(["Z"], step(1, ["X"], ["a"]), step(2, ["a"], ["Z"])), {2})
    assert found.of_step[2] == 0 and found.response == 2


def test_nested_decoupled_steps_nest_their_scopes() -> None:
    p = plan(["Z"], step(1, ["X"], ["a"]), step(2, ["a"], ["b"]), step(3, ["b", "a"], ["Z"]))
    found = scopes(p, {1, 2})
    assert dict(found.of_step) == {1: 0, 2: 1, 3: 2}
    assert found.response == 2 and dict(found.parent) == {1: 0, 2: 1}


def test_joining_two_independent_decoupled_steps_is_refused() -> None:
    p = plan(["Z"], step(1, ["X"], ["a"]), step(2, ["X"], ["b"]), step(3, ["a", "b"], ["Z"]))
    problem = scopes_of(p, frozenset({1, 2}))
    assert isinstance(problem, str)
    assert "step 3 (model 'm3')" in problem and "neither of which follows the other" in problem


def test_outputs_from_two_independent_decoupled_steps_are_refused() -> None:
    p = plan(["Z", "W"], step(1, ["X"], ["Z"]), step(2, ["X"], ["W"]))
    problem = scopes_of(p, frozenset({1, 2}))
    assert isinstance(problem, str) and "output set" in problem


ENSEMBLE = """
name: "pipe"
platform: "ensemble"
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
ensemble_scheduling { step [
  { model_name: "rep" input_map { key: "IN" value: "IN" } output_map { key: "OUT" value: "r" } },
  { model_name: "sq" input_map { key: "IN" value: "r" } output_map { key: "OUT" value: "OUT" } }
] }
"""
STEP = """
name: "NAME"
backend: "python"
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
"""


def test_signature_check_accepts_a_decoupled_step_and_names_a_bad_join() -> None:
    rep = parse_config(STEP.replace("NAME", "rep") + "model_transaction_policy { decoupled: true }")
    sq = parse_config(STEP.replace("NAME", "sq"))
    assert check_signatures(parse_config(ENSEMBLE), {"rep": rep, "sq": sq}) == ""
    # a nested ensemble counts as decoupled when the caller says so
    assert check_signatures(parse_config(ENSEMBLE), {"rep": sq, "sq": sq}, frozenset({"rep"})) == ""
