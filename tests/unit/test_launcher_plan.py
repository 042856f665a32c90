"""``worker_plan``: one worker per model instance, every served version, devices as Triton places them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from google.protobuf import text_format

from meshserve.launcher import WorkerSpec, worker_plan
from meshserve.pb import model_config_pb2 as mc
from meshserve.repository import ModelEntry


def entry(name: str, groups: str = "", versions: tuple[int, ...] = (1,)) -> ModelEntry:
    config = text_format.Parse(f'name: "{name}" backend: "python" {groups}', mc.ModelConfig())
    return ModelEntry(name, Path("/repo") / name, config, versions, available_versions=versions)


def test_instance_group_count_gives_that_many_workers() -> None:
    plan = worker_plan([entry("m", "instance_group [{ count: 3 kind: KIND_CPU }]")], gpus=0)
    assert plan == [
        WorkerSpec("m", 1, 0, "cpu"),
        WorkerSpec("m", 1, 1, "cpu"),
        WorkerSpec("m", 1, 2, "cpu"),
    ]


def test_zero_or_unset_count_is_one_worker() -> None:
    plan = worker_plan([entry("m", "instance_group [{ kind: KIND_CPU }]")], gpus=0)
    assert plan == [WorkerSpec("m", 1, 0, "cpu")]


def test_several_groups_number_instances_consecutively() -> None:
    groups = "instance_group [{ count: 2 kind: KIND_CPU }, { count: 1 kind: KIND_CPU }]"
    plan = worker_plan([entry("m", groups)], gpus=0)
    assert [(w.instance, w.device) for w in plan] == [(0, "cpu"), (1, "cpu"), (2, "cpu")]


def test_every_served_version_gets_its_own_workers() -> None:
    plan = worker_plan([entry("m", "instance_group [{ count: 2 kind: KIND_CPU }]", versions=(1, 3))], gpus=0)
    assert plan == [
        WorkerSpec("m", 1, 0, "cpu"),
        WorkerSpec("m", 1, 1, "cpu"),
        WorkerSpec("m", 3, 0, "cpu"),
        WorkerSpec("m", 3, 1, "cpu"),
    ]


def test_kind_gpu_without_gpus_runs_on_cpu() -> None:
    plan = worker_plan([entry("m", "instance_group [{ count: 2 kind: KIND_GPU gpus: [0] }]")], gpus=0)
    assert plan == [WorkerSpec("m", 1, 0, "cpu"), WorkerSpec("m", 1, 1, "cpu")]


def test_kind_gpu_count_is_per_listed_gpu() -> None:
    plan = worker_plan([entry("m", "instance_group [{ count: 2 kind: KIND_GPU gpus: [0, 1] }]")], gpus=2)
    assert Counter(w.device for w in plan) == {"cuda:0": 2, "cuda:1": 2}
    assert [w.instance for w in plan] == [0, 1, 2, 3]
    assert {(w.model, w.version) for w in plan} == {("m", 1)}


def test_kind_gpu_without_a_gpu_list_uses_every_visible_gpu() -> None:
    plan = worker_plan([entry("m", "instance_group [{ count: 1 kind: KIND_GPU }]")], gpus=3)
    assert [w.device for w in plan] == ["cuda:0", "cuda:1", "cuda:2"]


def test_kind_gpu_ignores_gpu_ids_that_are_not_visible() -> None:
    plan = worker_plan([entry("m", "instance_group [{ count: 1 kind: KIND_GPU gpus: [1, 5] }]")], gpus=2)
    assert [w.device for w in plan] == ["cuda:1"]


def test_kind_cpu_stays_on_cpu_when_gpus_exist() -> None:
    plan = worker_plan([entry("m", "instance_group [{ count: 2 kind: KIND_CPU }]")], gpus=4)
    assert [w.device for w in plan] == ["cpu", "cpu"]


def test_kind_auto_follows_the_machine() -> None:
    group = "instance_group [{ count: 1 kind: KIND_AUTO }]"
    assert [w.device for w in worker_plan([entry("m", group)], gpus=0)] == ["cpu"]
    on_gpu = worker_plan([entry("m", group)], gpus=2)
    assert on_gpu
    assert {w.device for w in on_gpu} <= {"cuda:0", "cuda:1"}


def test_broken_entries_are_skipped() -> None:
    good = entry("good", "instance_group [{ count: 1 kind: KIND_CPU }]")
    no_config = ModelEntry("broken", Path("/repo/broken"), None, error="config.pbtxt: syntax error")
    no_version = ModelEntry(
        "unversioned", Path("/repo/unversioned"), good.config, (), error="no version directory matches"
    )
    plan = worker_plan([no_config, good, no_version], gpus=0)
    assert plan == [WorkerSpec("good", 1, 0, "cpu")]


def test_several_models_in_order() -> None:
    a = entry("a", "instance_group [{ count: 1 kind: KIND_CPU }]")
    b = entry("b", "instance_group [{ count: 2 }]")
    plan = worker_plan([a, b], gpus=0)
    assert [(w.model, w.instance) for w in plan] == [("a", 0), ("b", 0), ("b", 1)]


def test_empty_repository_plans_nothing() -> None:
    assert worker_plan([], gpus=2) == []


def llm_entry(stages: str, kind: str = "KIND_AUTO") -> ModelEntry:
    text = (
        f'name: "llm" backend: "llm" instance_group [{{ count: 1 kind: {kind} }}] '
        f'parameters {{ key: "stages" value {{ string_value: "{stages}" }} }}'
    )
    config = text_format.Parse(text, mc.ModelConfig())
    return ModelEntry("llm", Path("/repo/llm"), config, (1,), available_versions=(1,))


def test_llm_model_gets_one_worker_per_stage() -> None:
    plan = worker_plan([llm_entry("4")], gpus=0)
    assert plan == [WorkerSpec("llm", 1, k, "cpu", k) for k in range(4)]


def test_llm_stages_spread_over_gpus() -> None:
    assert [s.device for s in worker_plan([llm_entry("4", "KIND_GPU")], gpus=2)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1",
    ]  # fmt: skip
    assert [s.device for s in worker_plan([llm_entry("2")], gpus=4)] == ["cuda:0", "cuda:1"]
    assert [s.device for s in worker_plan([llm_entry("2", "KIND_CPU")], gpus=4)] == ["cpu", "cpu"]
