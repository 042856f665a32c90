"""The python backend tells BLS calls made in ``execute`` (sync or ``async def``) the batch's deadline;
the batcher resolves BLS's version 0 and counts a BLS request's rows."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from batcher.app import Batcher, _rows
from meshserve.pb import mesh_pb2
from tests.unit.test_python_backend import load
from workers.backends.base import Request
from workers.bls import CALLER_DEADLINE_NS

CONFIG = """
name: "{name}"
backend: "python"
input [ { name: "IN" data_type: TYPE_INT64 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT64 dims: [ -1 ] } ]
""".replace("{ ", "{{ ").replace(" }", " }}")

SEES_DEADLINE = """
import numpy as np
import triton_python_backend_utils as pb_utils
from workers.bls import CALLER_DEADLINE_NS


class TritonPythonModel:
    {prefix}def execute(self, requests):
        seen = np.array([CALLER_DEADLINE_NS.get()], dtype=np.int64)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", seen)]) for _ in requests]
"""


@pytest.mark.parametrize("prefix", ["", "async "])
def test_execute_sees_the_batchs_latest_deadline(tmp_path: Path, prefix: str) -> None:
    backend = load(
        tmp_path,
        SEES_DEADLINE.format(prefix=prefix),
        CONFIG,
    )
    try:
        one = np.zeros(1, np.int64)
        requests = [
            Request("a", {"IN": one}, deadline_unix_ns=5_000),
            Request("b", {"IN": one}, deadline_unix_ns=9_000),
        ]
        results = backend.execute(requests)
        assert [int(r.outputs["OUT"][0]) for r in results] == [9_000, 9_000]
        results = backend.execute(
            [Request("c", {"IN": one}, deadline_unix_ns=9_000), Request("d", {"IN": one})]
        )
        assert int(results[0].outputs["OUT"][0]) == 0  # one requester without a deadline: none
        assert CALLER_DEADLINE_NS.get() == 0  # reset after execute
    finally:
        backend.unload()


def _request(rows: int | None, batch_size: int = 0, version: int = 0) -> mesh_pb2.InferRequest:
    shape = [rows, 4] if rows is not None else []
    return mesh_pb2.InferRequest(
        model_name="m",
        model_version=version,
        batch_size=batch_size,
        inputs=[mesh_pb2.Tensor(name="IN", datatype="FP32", shape=shape)],
    )


def _scheduler(max_batch_size: int, version: int = 1, live: bool = True) -> Any:
    link = SimpleNamespace(accepting=live)
    rules = SimpleNamespace(batching=SimpleNamespace(max_batch_size=max_batch_size))
    return SimpleNamespace(rules=rules, version=version, links={"i": link})


def test_rows_of_a_bls_request_come_from_its_first_input() -> None:
    assert _rows(_request(3, batch_size=2), _scheduler(8)) == 2  # a gateway's count wins
    assert _rows(_request(3), _scheduler(8)) == 3
    assert _rows(_request(3), _scheduler(0)) == 1  # the model does not batch
    assert _rows(_request(None), _scheduler(8)) == 1
    assert _rows(_request(3), None) == 1


def test_version_zero_is_the_highest_version_with_a_live_instance() -> None:
    batcher = Batcher.__new__(Batcher)
    batcher._schedulers = {  # type: ignore[assignment]
        ("m", 1): _scheduler(8, 1),
        ("m", 2): _scheduler(8, 2),
        ("m", 3): _scheduler(8, 3, live=False),
        ("other", 9): _scheduler(8, 9),
    }
    assert batcher._latest("m").version == 2  # type: ignore[union-attr]
    assert batcher._latest("missing") is None
