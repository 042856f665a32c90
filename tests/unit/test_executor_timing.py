"""The worker's batch timing (executor.py): every reply carries it, one reply counts the execution."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from meshserve.errors import Internal
from meshserve.pb import mesh_pb2
from workers.backends.base import Request, Result
from workers.executor import BatchExecutor


class Doubler:
    """A backend that sleeps a little and doubles X, or fails the whole batch."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[int] = []

    def load(self, ctx: object) -> None:
        pass

    def execute(self, requests: list[Request]) -> list[Result]:
        time.sleep(0.01)
        self.seen.append(len(requests))
        if self.fail:
            raise ValueError("model bug")
        return [Result(outputs={"Y": r.inputs["X"] * 2}) for r in requests]

    def unload(self) -> None:
        pass


def item(
    rows: int, reply_to: str, queue_ns: int = 1_000, dispatch_ago_ns: int = 2_000_000
) -> mesh_pb2.BatchItem:
    request = mesh_pb2.InferRequest(request_id=reply_to, model_name="m", model_version=1, batch_size=rows)
    request.inputs.append(
        mesh_pb2.Tensor(
            name="X", datatype="FP32", shape=[rows, 2], data=np.ones((rows, 2), dtype="<f4").tobytes()
        )
    )
    return mesh_pb2.BatchItem(
        request=request.SerializeToString(),
        reply_to=reply_to,
        queue_ns=queue_ns,
        dispatch_unix_ns=time.time_ns() - dispatch_ago_ns,
    )


def run(backend: Doubler, *items: mesh_pb2.BatchItem) -> dict[str, mesh_pb2.InferResponse]:
    replies: dict[str, mesh_pb2.InferResponse] = {}

    async def publish(subject: str, data: bytes) -> None:
        replies[subject] = mesh_pb2.InferResponse.FromString(data)

    async def go() -> None:
        with ThreadPoolExecutor(1) as compute:
            executor = BatchExecutor(backend, publish, compute, max_message_bytes=1 << 20)
            done = await executor.run(mesh_pb2.Batch(batch_id=7, items=items))
            assert done.batch_id == 7

    asyncio.run(go())
    return replies


def test_every_reply_carries_the_batch_timing_and_one_counts_the_execution() -> None:
    replies = run(Doubler(), item(2, "a", queue_ns=111), item(3, "b", queue_ns=222))
    a, b = replies["a"].timing, replies["b"].timing
    assert not replies["a"].HasField("error")
    assert (a.queue_ns, b.queue_ns) == (111, 222)
    assert a.counts_execution and not b.counts_execution
    assert a.batch_rows == b.batch_rows == 5
    assert a.compute_infer_ns == b.compute_infer_ns >= 10_000_000
    assert a.compute_input_ns == b.compute_input_ns > 0
    assert a.compute_output_ns == b.compute_output_ns > 0
    assert a.transfer_ns >= 2_000_000


def test_a_non_batching_request_counts_one_row_and_a_missing_dispatch_time_no_transfer() -> None:
    one = item(1, "a")
    request = mesh_pb2.InferRequest.FromString(one.request)
    request.batch_size = 0
    one.request = request.SerializeToString()
    one.dispatch_unix_ns = 0
    timing = run(Doubler(), one)["a"].timing
    assert timing.batch_rows == 1
    assert timing.transfer_ns == 0


def test_a_failed_batch_answers_errors_that_still_carry_timing() -> None:
    replies = run(Doubler(fail=True), item(1, "a"), item(1, "b"))
    assert replies["a"].error.code == Internal.code
    assert "model bug" in replies["a"].error.message
    assert replies["a"].timing.counts_execution
    assert not replies["b"].timing.counts_execution
    assert replies["b"].timing.compute_infer_ns > 0


def test_an_undecodable_request_gets_timing_but_does_not_count_in_the_batch() -> None:
    broken = mesh_pb2.BatchItem(request=b"\xff\xff not protobuf", reply_to="bad", queue_ns=5)
    backend = Doubler()
    replies = run(backend, broken, item(2, "good"))
    assert backend.seen == [1]
    assert replies["bad"].HasField("error")
    assert replies["bad"].timing.queue_ns == 5
    assert not replies["bad"].timing.counts_execution
    assert replies["good"].timing.counts_execution
    assert replies["good"].timing.batch_rows == 2


def test_nothing_to_execute_counts_no_execution() -> None:
    broken = mesh_pb2.BatchItem(request=b"\xff\xff", reply_to="bad")
    backend = Doubler()
    replies = run(backend, broken)
    assert backend.seen == []
    assert not replies["bad"].timing.counts_execution
    assert replies["bad"].timing.batch_rows == 0
