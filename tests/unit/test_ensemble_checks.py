"""The ensemble checks (meshserve/ensemble.py), the config completion of ensembles, the repository's
step-model check, and the gateway table's ensemble state (pure; no mesh)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.models import ModelState, ModelTable
from meshserve.ensemble import check_references, check_signatures, check_structure, plan_of
from meshserve.launcher import worker_plan
from meshserve.model_config import ConfigError, complete_config, parse_config
from meshserve.pb import mesh_pb2
from meshserve.pb import model_config_pb2 as mc
from meshserve.repository import scan_repository

PIPELINE = """
name: "pipe"
platform: "ensemble"
max_batch_size: 8
input [ { name: "A", data_type: TYPE_INT32, dims: [ 4 ] } ]
output [ { name: "Z", data_type: TYPE_FP32, dims: [ 4 ] } ]
ensemble_scheduling { step [
  { model_name: "first" model_version: -1 input_map { key: "IN" value: "A" } output_map { key: "OUT" value: "b" } },
  { model_name: "second" model_version: -1 input_map { key: "IN" value: "b" } output_map { key: "OUT" value: "Z" } }
] }
"""

FIRST = """
name: "first"
backend: "python"
max_batch_size: 8
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 4 ] } ]
output [ { name: "OUT", data_type: TYPE_FP32, dims: [ -1 ] } ]
"""

SECOND = """
name: "second"
backend: "python"
max_batch_size: 8
input [ { name: "IN", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] } ]
"""


def config(text: str, **changes: str) -> mc.ModelConfig:
    for old, new in changes.items():
        text = text.replace(old, new)
    return parse_config(text)


def test_a_well_formed_pipeline_passes_every_check() -> None:
    ens = config(PIPELINE)
    assert check_structure(ens) == ""
    assert check_signatures(ens, {"first": config(FIRST), "second": config(SECOND)}) == ""
    plan = plan_of(ens)
    assert [s.model for s in plan.steps] == ["first", "second"]
    assert plan.producer("Z") is plan.steps[1]


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ('value: "b" } },', 'value: "c" } },', "input 'IN' reads 'b', which is neither an ensemble input"),
        ('output_map { key: "OUT" value: "Z" }', 'output_map { key: "OUT" value: "b" }', "written by both"),
        (
            'output_map { key: "OUT" value: "Z" }',
            'output_map { key: "OUT" value: "y" }',
            "'Z' is not produced",
        ),
        (
            'input_map { key: "IN" value: "A" }',
            'input_map { key: "IN" value: "b" }',
            "the steps form a cycle",
        ),
        ('model_name: "first"', 'model_name: "pipe"', "calls the ensemble itself"),
        ('model_name: "first"', 'model_name: ""', "step 1 has no model_name"),
        (
            'output_map { key: "OUT" value: "b" }',
            'output_map { key: "OUT" value: "A" }',
            "which is an ensemble input",
        ),
    ],
)
def test_structure_problems_are_named(old: str, new: str, problem: str) -> None:
    assert problem in check_structure(config(PIPELINE, **{old: new}))


def test_an_unread_input_and_no_steps_are_refused() -> None:
    extra = config(
        PIPELINE.replace(
            'input [ { name: "A"',
            'input [ { name: "UNUSED", data_type: TYPE_INT32, dims: [ 1 ] }, { name: "A"',
        )
    )
    assert "ensemble input 'UNUSED' is not read by any step" in check_structure(extra)
    empty = mc.ModelConfig(name="e", platform="ensemble")
    assert "has no step" in check_structure(empty)


@pytest.mark.parametrize(
    ("which", "old", "new", "problem"),
    [
        (
            "second",
            "TYPE_FP32, dims: [ 4 ] } ]\noutput",
            "TYPE_INT32, dims: [ 4 ] } ]\noutput",
            "is TYPE_FP32, but TYPE_INT32 is expected",
        ),
        (
            "second",
            'input [ { name: "IN"',
            'input [ { name: "X"',
            "step 2 (model 'second') has no input 'IN'",
        ),
        (
            "first",
            'output [ { name: "OUT"',
            'output [ { name: "O"',
            "step 1 (model 'first') has no output 'OUT'",
        ),
        (
            "second",
            "dims: [ 4 ] } ]\noutput",
            "dims: [ 4, 2 ] } ]\noutput",
            "has shape [-1, -1], but [-1, 4, 2] is expected",
        ),
    ],
)
def test_signature_problems_are_named(which: str, old: str, new: str, problem: str) -> None:
    steps = {"first": config(FIRST), "second": config(SECOND)}
    steps[which] = config(FIRST if which == "first" else SECOND, **{old: new})
    assert problem in check_signatures(config(PIPELINE), steps)


def test_ensemble_output_type_must_match_its_producer() -> None:
    ens = config(
        PIPELINE,
        **{'output [ { name: "Z", data_type: TYPE_FP32': 'output [ { name: "Z", data_type: TYPE_INT64'},
    )
    problem = check_signatures(ens, {"first": config(FIRST), "second": config(SECOND)})
    assert "ensemble output 'Z'" in problem and "TYPE_INT64 is expected" in problem


def test_references_missing_models_and_loops_through_ensembles() -> None:
    ens = config(PIPELINE)
    assert "no model 'second' in the model repository" in check_references(
        "pipe", {"pipe": ens, "first": None}
    )
    assert check_references("pipe", {"pipe": ens, "first": None, "second": config(SECOND)}) == ""
    inner = config(
        PIPELINE, **{'name: "pipe"': 'name: "inner"', 'model_name: "second"': 'model_name: "pipe"'}
    )
    outer = config(PIPELINE, **{'model_name: "second"': 'model_name: "inner"'})
    problem = check_references("pipe", {"pipe": outer, "inner": inner, "first": config(FIRST)})
    assert "calls itself through other ensembles: pipe -> inner -> pipe" in problem


def test_complete_config_gives_an_ensemble_no_backend_and_no_instances() -> None:
    ens = config(PIPELINE)
    complete_config(ens, "pipe")
    assert ens.backend == "" and not ens.instance_group
    with pytest.raises(ConfigError, match="an ensemble has no backend"):
        complete_config(config(PIPELINE + 'backend: "python"\n'), "pipe")
    with pytest.raises(ConfigError, match="the steps form a cycle"):
        complete_config(config(PIPELINE, **{'value: "A" }': 'value: "b" }'}), "pipe")


def _write(repo: Path, name: str, text: str) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(text)


def test_repository_flags_missing_step_models_and_up_plans_no_workers(tmp_path: Path) -> None:
    _write(tmp_path, "pipe", PIPELINE)
    _write(tmp_path, "first", FIRST)
    entries = {e.name: e for e in scan_repository(tmp_path)}
    assert "no model 'second' in the model repository" in entries["pipe"].error
    _write(tmp_path, "second", SECOND)
    entries = {e.name: e for e in scan_repository(tmp_path)}
    assert entries["pipe"].error == ""
    assert {spec.model for spec in worker_plan(list(entries.values()), gpus=0)} == {"first", "second"}


def _announce(table: ModelTable, name: str, state: int, reason: str = "", text: str = "") -> None:
    ann = mesh_pb2.WorkerAnnouncement(
        instance_id=f"{name}-1",
        model_name=name,
        model_version=1,
        state=state,
        reason=reason,  # type: ignore[arg-type]
    )
    if text:
        ann.model_config = config(text).SerializeToString()
    table.apply(ann)


def test_gateway_table_derives_the_ensemble_state_from_its_steps(tmp_path: Path) -> None:
    for name, text in (("pipe", PIPELINE), ("first", FIRST), ("second", SECOND)):
        _write(tmp_path, name, text)
    table = ModelTable(stale_after_s=5.0)
    table.load_repository(tmp_path)
    pipe = table.find("pipe")
    assert table.state(pipe) is ModelState.LOADING and "step 1 (model 'first') is loading" in pipe.reason()
    _announce(table, "first", mesh_pb2.READY)
    _announce(table, "second", mesh_pb2.UNAVAILABLE, "failed to load: boom")
    assert table.state(pipe) is ModelState.UNAVAILABLE
    assert "step 2 (model 'second') is not available: failed to load: boom" in pipe.reason()
    _announce(table, "second", mesh_pb2.READY)
    assert table.state(pipe) is ModelState.READY
    assert table.ready_view("pipe") is pipe
    # a worker announces a config that does not fit the pipeline: the ensemble says so
    table.apply(
        mesh_pb2.WorkerAnnouncement(
            instance_id="second-1", model_name="second", model_version=1, state=mesh_pb2.STOPPING
        )
    )
    _announce(
        table,
        "second",
        mesh_pb2.READY,
        text=SECOND.replace("TYPE_FP32, dims: [ 4 ] } ]\noutput", "TYPE_INT8, dims: [ 4 ] } ]\noutput"),
    )
    assert table.state(pipe) is ModelState.UNAVAILABLE
    assert "TYPE_INT8 is expected" in pipe.reason()


def test_loading_an_ensemble_at_start_brings_its_step_models() -> None:
    from meshserve.ensemble import with_step_models

    outer = config(
        PIPELINE, **{'name: "pipe"': 'name: "outer"', 'model_name: "second"': 'model_name: "pipe"'}
    )
    configs = {"outer": outer, "pipe": config(PIPELINE), "first": config(FIRST), "second": None}
    assert with_step_models({"outer"}, configs) == {"outer", "pipe", "first", "second"}
    assert with_step_models({"first"}, configs) == {"first"}
    assert with_step_models(set(), configs) == set()
