"""Warm-up samples (workers/warmup.py): shapes, data kinds, repetitions, failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meshserve.errors import Internal, InvalidArgument
from meshserve.model_config import parse_config
from workers.backends.base import Request, Result
from workers.warmup import run_warmup, warmup_requests

CONFIG = """
name: "m"
backend: "python"
max_batch_size: 8
input [ { name: "A", data_type: TYPE_FP32, dims: [ 3 ] }, { name: "B", data_type: TYPE_INT32, dims: [ 2 ] },
        { name: "S", data_type: TYPE_STRING, dims: [ 1 ] } ]
output [ { name: "O", data_type: TYPE_FP32, dims: [ 3 ] } ]
model_warmup [
  { name: "zeros" batch_size: 4 count: 3
    inputs { key: "A" value { data_type: TYPE_FP32, dims: [ 3 ], zero_data: true } }
    inputs { key: "B" value { data_type: TYPE_INT32, dims: [ 2 ], random_data: true } }
    inputs { key: "S" value { data_type: TYPE_STRING, dims: [ 1 ], zero_data: true } } },
  { name: "from_file"
    inputs { key: "A" value { data_type: TYPE_FP32, dims: [ 3 ], input_data_file: "a.bin" } } }
]
"""


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[Request]] = []
        self.fail = fail

    def execute(self, requests: list[Request]) -> list[Result]:
        self.batches.append(requests)
        if self.fail:
            return [Result(error=Internal("boom")) for _ in requests]
        return [Result() for _ in requests]


def _model_dir(tmp_path: Path) -> Path:
    (tmp_path / "warmup").mkdir()
    np.array([[1.5, 2.5, 3.5]], np.float32).tofile(tmp_path / "warmup" / "a.bin")
    return tmp_path


def test_samples_have_the_batch_dim_and_the_asked_data(tmp_path: Path) -> None:
    samples = warmup_requests(parse_config(CONFIG), _model_dir(tmp_path))
    (name, count, [request]), (name2, count2, [request2]) = samples
    assert (name, count, request.batch_size) == ("zeros", 3, 4)
    assert request.inputs["A"].shape == (4, 3) and not request.inputs["A"].any()
    assert request.inputs["B"].shape == (4, 2) and request.inputs["B"].dtype == np.int32
    assert request.inputs["S"].shape == (4, 1) and request.inputs["S"][0, 0] == b""
    assert (name2, count2, request2.batch_size) == ("from_file", 1, 1)
    np.testing.assert_array_equal(request2.inputs["A"], [[1.5, 2.5, 3.5]])


def test_every_repetition_runs_through_the_backend(tmp_path: Path) -> None:
    backend = Recorder()
    assert run_warmup(backend, parse_config(CONFIG), _model_dir(tmp_path)) == 4  # type: ignore[arg-type]
    assert len(backend.batches) == 4


def test_a_failing_sample_is_named(tmp_path: Path) -> None:
    with pytest.raises(Internal, match="warm-up sample 'zeros' failed: boom"):
        run_warmup(Recorder(fail=True), parse_config(CONFIG), _model_dir(tmp_path))  # type: ignore[arg-type]


def test_a_missing_data_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read"):
        warmup_requests(parse_config(CONFIG), tmp_path)


def test_no_warmup_means_nothing_runs(tmp_path: Path) -> None:
    config = parse_config('name: "m"\nbackend: "python"\nmax_batch_size: 0')
    assert warmup_requests(config, tmp_path) == []
