"""Instance-count-only reloads (meshserve/instance_delta.py): which config changes qualify, which
instances stay, start and stop (pure)."""

from __future__ import annotations

import os
from pathlib import Path

from meshserve.instance_delta import count_only_change, files_fingerprint, split_plan
from meshserve.launcher import WorkerSpec, worker_plan
from meshserve.model_config import parse_config
from meshserve.repository import ModelEntry

BASE = """
backend: "python"
max_batch_size: 4
input [ { name: "IN", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUT", data_type: TYPE_FP32, dims: [ 4 ] } ]
"""


def cfg(extra: str = ""):  # type: ignore[no-untyped-def]
    return parse_config(BASE + extra)


def test_only_a_count_change_qualifies() -> None:
    one = cfg("instance_group [ { kind: KIND_CPU, count: 1 } ]")
    three = cfg("instance_group [ { kind: KIND_CPU, count: 3 } ]")
    assert count_only_change(one, three) and count_only_change(three, one)
    assert not count_only_change(one, one)  # nothing changed: an ordinary reload
    other = cfg("instance_group [ { kind: KIND_CPU, count: 3 } ]\ndynamic_batching { }")
    assert not count_only_change(one, other)  # more than the count
    two_groups = cfg("instance_group [ { kind: KIND_CPU, count: 1 }, { kind: KIND_CPU, count: 1 } ]")
    assert not count_only_change(one, two_groups)
    assert not count_only_change(None, one)


def test_the_plan_keeps_running_instances() -> None:
    entry = ModelEntry("m", Path("/r/m"), cfg("instance_group [ { kind: KIND_CPU, count: 1 } ]"), (1,))
    bigger = ModelEntry("m", Path("/r/m"), cfg("instance_group [ { kind: KIND_CPU, count: 3 } ]"), (1,))
    old, new = worker_plan([entry], 0), worker_plan([bigger], 0)
    kept, start, stop = split_plan(old, new)
    assert kept == [WorkerSpec("m", 1, 0, "cpu")]
    assert start == [WorkerSpec("m", 1, 1, "cpu"), WorkerSpec("m", 1, 2, "cpu")]
    assert stop == []
    kept, start, stop = split_plan(new, old)
    assert kept == [WorkerSpec("m", 1, 0, "cpu")] and start == []
    assert stop == [WorkerSpec("m", 1, 1, "cpu"), WorkerSpec("m", 1, 2, "cpu")]


def test_the_files_fingerprint_ignores_only_the_config(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.py").write_text("x = 1\n")
    (tmp_path / "config.pbtxt").write_text("a\n")
    before = files_fingerprint(tmp_path)
    (tmp_path / "config.pbtxt").write_text("a longer config\n")
    assert files_fingerprint(tmp_path) == before
    (tmp_path / "1" / "model.py").write_text("x = 22\n")
    os.utime(tmp_path / "1" / "model.py", ns=(1, 1))
    assert files_fingerprint(tmp_path) != before
