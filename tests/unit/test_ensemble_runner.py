"""The gateway's ensemble runner (gateway/ensemble.py) with a stand-in dispatcher: decoupled steps
run the steps after them once per response, within the in-flight bound; errors name the step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from gateway.ensemble import EnsembleRunner
from gateway.models import ModelTable
from gateway.stats import StatsBook
from meshserve.errors import InvalidArgument, MeshError
from meshserve.model_config import complete_config, parse_config
from meshserve.pb import mesh_pb2
from meshserve.pb import model_config_pb2 as mc

STEP = """
backend: "python"
input [ { name: "IN", data_type: TYPE_INT32, dims: [ -1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ -1 ] } ]
"""
ENSEMBLE = """
platform: "ensemble"
input [ { name: "X", data_type: TYPE_INT32, dims: [ -1 ] } ]
output [ { name: "Y", data_type: TYPE_INT32, dims: [ -1 ] } ]
ensemble_scheduling { max_inflight_responses: 2 step [
  { model_name: "rep" input_map { key: "IN" value: "X" } output_map { key: "OUT" value: "r" } },
  { model_name: "dbl" input_map { key: "IN" value: "r" } output_map { key: "OUT" value: "Y" } }
] }
"""


def _config(name: str, text: str) -> mc.ModelConfig:
    config = parse_config(text)
    complete_config(config, name)
    return config


def _table(rep_decoupled: bool = True) -> ModelTable:
    table = ModelTable(stale_after_s=60)
    rep = STEP + ("model_transaction_policy { decoupled: true }" if rep_decoupled else "")
    for name, text in (("rep", rep), ("dbl", STEP), ("e", ENSEMBLE)):
        table.apply(
            mesh_pb2.WorkerAnnouncement(
                instance_id=f"{name}-1",
                model_name=name,
                model_version=1,
                state=mesh_pb2.READY,
                model_config=_config(name, text).SerializeToString(),
            )
        )
    return table


def _tensor(name: str, values: list[int]) -> mesh_pb2.Tensor:
    data = np.array(values, dtype=np.int32)
    return mesh_pb2.Tensor(name=name, datatype="INT32", shape=[len(values)], data=data.tobytes())


def _values(tensor: mesh_pb2.Tensor) -> list[int]:
    return np.frombuffer(tensor.data, dtype=np.int32).tolist()


class StandIn:
    """`rep` streams one response per element of IN; `dbl` answers 2 * IN after a short wait."""

    def __init__(self, fail_dbl_on: int | None = None) -> None:
        self.dbl_running = 0
        self.dbl_most = 0
        self.fail_dbl_on = fail_dbl_on

    async def infer(self, request: mesh_pb2.InferRequest, timeout_s: float) -> mesh_pb2.InferResponse:
        assert request.model_name == "dbl"
        self.dbl_running += 1
        self.dbl_most = max(self.dbl_most, self.dbl_running)
        try:
            await asyncio.sleep(0.01)
        finally:
            self.dbl_running -= 1
        values = _values(request.inputs[0])
        if values == [self.fail_dbl_on]:
            return mesh_pb2.InferResponse(
                error=mesh_pb2.Error(code=InvalidArgument.code, message="no thanks")
            )
        return mesh_pb2.InferResponse(outputs=[_tensor("OUT", [2 * v for v in values])])

    async def stream(
        self, request: mesh_pb2.InferRequest, timeout_s: float
    ) -> AsyncIterator[mesh_pb2.InferResponse]:
        assert request.model_name == "rep"
        for value in _values(request.inputs[0]):
            yield mesh_pb2.InferResponse(outputs=[_tensor("OUT", [value])], more=True)
        yield mesh_pb2.InferResponse(more=False)


def _request(values: list[int]) -> mesh_pb2.InferRequest:
    return mesh_pb2.InferRequest(
        request_id="q", model_name="e", model_version=1, inputs=[_tensor("X", values)]
    )


async def _all(runner: EnsembleRunner, table: ModelTable, values: list[int]) -> list[mesh_pb2.InferResponse]:
    view = table.ready_view("e")
    return [r async for r in runner.stream(view, _request(values), 5.0)]


def _runner(table: ModelTable, stand_in: StandIn) -> EnsembleRunner:
    return EnsembleRunner(table, stand_in, StatsBook(), 1 << 20)  # type: ignore[arg-type]


def test_each_response_of_the_decoupled_step_runs_the_next_step() -> None:
    table, stand_in = _table(), StandIn()
    assert table.ready_view("e").decoupled
    responses = asyncio.run(_all(_runner(table, stand_in), table, list(range(10))))
    *answers, final = responses
    assert sorted(_values(a.outputs[0])[0] for a in answers) == [2 * v for v in range(10)]
    assert all(a.more and a.outputs[0].name == "Y" for a in answers)
    assert not final.more and not final.outputs
    assert 1 <= stand_in.dbl_most <= 2  # max_inflight_responses: 2


def test_no_response_from_the_decoupled_step_means_only_the_final_flag() -> None:
    table = _table()
    (final,) = asyncio.run(_all(_runner(table, StandIn()), table, []))
    assert not final.more and not final.outputs


def test_an_error_after_the_decoupled_step_ends_the_stream_naming_the_step() -> None:
    table = _table()
    with pytest.raises(MeshError) as info:
        asyncio.run(_all(_runner(table, StandIn(fail_dbl_on=3)), table, [1, 2, 3, 4]))
    assert info.value.code == InvalidArgument.code
    assert info.value.message == "in ensemble 'e', step 2 (model 'dbl'): no thanks"


def test_run_refuses_several_responses() -> None:
    table = _table()

    async def one() -> Any:
        return await _runner(table, StandIn()).run(table.ready_view("e"), _request([1, 2]), 5.0)

    with pytest.raises(MeshError, match="sent 2 responses"):
        asyncio.run(one())


def test_the_in_flight_bound_holds_across_requests() -> None:
    table, stand_in = _table(), StandIn()
    runner = _runner(table, stand_in)

    async def three() -> list[list[mesh_pb2.InferResponse]]:
        return await asyncio.gather(*(_all(runner, table, list(range(6))) for _ in range(3)))

    for responses in asyncio.run(three()):
        assert len(responses) == 7
    assert stand_in.dbl_most == 2  # max_inflight_responses: 2, for the three requests together
