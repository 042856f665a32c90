"""workers/bls.py against a fake NATS connection on an event loop in another thread, as in a worker:
the request it builds, the bounds it applies, how answers and failures reach the model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import nats.errors
import numpy as np
import pytest

from meshserve import subjects
from meshserve.pb import mesh_pb2
from workers.backends import pb_utils
from workers.bls import CALLER_DEADLINE_NS, BlsClient


@dataclass
class FakeMsg:
    data: bytes
    subject: str = ""


class FakeNats:
    """``request`` answers with ``answer(request)``; a ``publish`` with a reply subject gets
    ``stream(request)``'s responses delivered to the subscriber of that subject."""

    def __init__(self) -> None:
        self.answer: Callable[[mesh_pb2.InferRequest], mesh_pb2.InferResponse] = lambda r: (
            mesh_pb2.InferResponse()
        )
        self.stream: Callable[[mesh_pb2.InferRequest], list[mesh_pb2.InferResponse]] = lambda r: []
        self.sent: list[tuple[str, mesh_pb2.InferRequest, float]] = []
        self.subscribers: dict[str, Any] = {}
        self.fail_with: Exception | None = None

    async def request(self, subject: str, data: bytes, timeout: float) -> FakeMsg:  # noqa: ASYNC109 (nats-py's signature)
        request = mesh_pb2.InferRequest.FromString(data)
        self.sent.append((subject, request, timeout))
        if self.fail_with is not None:
            raise self.fail_with
        return FakeMsg(self.answer(request).SerializeToString())

    def new_inbox(self) -> str:
        return f"_INBOX.{len(self.subscribers)}"

    async def subscribe(self, subject: str, cb: Any) -> Any:
        self.subscribers[subject] = cb
        outer = self

        class Sub:
            async def unsubscribe(self) -> None:
                outer.subscribers.pop(subject, None)

        return Sub()

    async def publish(self, subject: str, data: bytes, reply: str = "") -> None:
        request = mesh_pb2.InferRequest.FromString(data)
        self.sent.append((subject, request, 0.0))
        for response in self.stream(request):
            callback = self.subscribers.get(reply)
            if callback is not None:
                await callback(FakeMsg(response.SerializeToString(), reply))


@pytest.fixture
def worker() -> Iterator[tuple[BlsClient, FakeNats]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    nc = FakeNats()

    async def make() -> BlsClient:
        return BlsClient(nc, asyncio.get_running_loop(), "caller", 5.0, 1 << 20)  # type: ignore[arg-type]

    client = asyncio.run_coroutine_threadsafe(make(), loop).result(5)
    yield client, nc
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _request(**kwargs: Any) -> pb_utils.InferenceRequest:
    return pb_utils.InferenceRequest(
        model_name=kwargs.pop("model_name", "target"),
        requested_output_names=["OUT"],
        inputs=[pb_utils.Tensor("IN", np.arange(4, dtype=np.float32).reshape(1, 4))],
        **kwargs,
    )


def _out(request: mesh_pb2.InferRequest, values: np.ndarray, more: bool = False) -> mesh_pb2.InferResponse:
    return mesh_pb2.InferResponse(
        model_name=request.model_name,
        outputs=[
            mesh_pb2.Tensor(name="OUT", datatype="FP32", shape=list(values.shape), data=values.tobytes())
        ],
        more=more,
    )


def test_exec_sends_a_mesh_request_and_returns_the_outputs(worker: tuple[BlsClient, FakeNats]) -> None:
    client, nc = worker
    nc.answer = lambda r: _out(r, np.frombuffer(r.inputs[0].data, np.float32).reshape(1, 4) * 2)
    response = client.exec(_request(parameters={"k": "v"}), decoupled=False)
    assert not response.has_error()
    np.testing.assert_array_equal(
        pb_utils.get_output_tensor_by_name(response, "OUT").as_numpy(),
        np.arange(4, dtype=np.float32).reshape(1, 4) * 2,
    )
    subject, sent, timeout = nc.sent[0]
    assert subject == subjects.infer("target", 0)  # model_version -1: the batcher picks the latest
    assert (sent.model_version, list(sent.requested_outputs), sent.inputs[0].datatype) == (0, ["OUT"], "FP32")
    assert sent.parameters["k"].string_param == "v"
    assert 4.5 < timeout <= 5.0  # no caller deadline known: the worker's request timeout
    # Triton's BLS example names the model with a BYTES input's element (bytes)
    client.exec(_request(model_name=np.array([b"target"], dtype=object)[0]), decoupled=False)
    assert nc.sent[-1][0] == subjects.infer("target", 0)


def test_the_callers_deadline_and_the_request_timeout_bound_the_call(
    worker: tuple[BlsClient, FakeNats],
) -> None:
    client, nc = worker
    nc.answer = lambda r: _out(r, np.zeros((1, 4), np.float32))
    token = CALLER_DEADLINE_NS.set(time.time_ns() + 2_000_000_000)
    try:
        client.exec(_request(), decoupled=False)
        client.exec(_request(timeout=300_000), decoupled=False)
    finally:
        CALLER_DEADLINE_NS.reset(token)
    assert 1.5 < nc.sent[0][2] <= 2.0
    assert nc.sent[1][2] == pytest.approx(0.3, abs=0.01)
    assert nc.sent[1][1].timeout_us == 300_000


def test_failures_come_back_as_error_responses(worker: tuple[BlsClient, FakeNats]) -> None:
    client, nc = worker
    nc.answer = lambda r: mesh_pb2.InferResponse(error=mesh_pb2.Error(code="NOT_FOUND", message="gone"))
    response = client.exec(_request(), decoupled=False)
    assert response.has_error() and response.error().message() == "gone"
    assert response.error().code() == pb_utils.TritonError.NOT_FOUND
    nc.fail_with = nats.errors.NoRespondersError()
    assert "no batcher is subscribed on NATS" in client.exec(_request(), decoupled=False).error().message()
    nc.fail_with = nats.errors.TimeoutError()
    message = client.exec(_request(model_name="caller"), decoupled=False).error().message()
    assert "Request timeout expired" in message and "called itself" in message
    assert "needs a model_name" in client.exec(_request(model_name=""), decoupled=False).error().message()
    nc.fail_with = None
    nc.answer = lambda r: _out(r, np.zeros(1, np.float32), more=True)  # a decoupled callee
    assert "call it with exec(decoupled=True)" in client.exec(_request(), decoupled=False).error().message()


def test_decoupled_exec_iterates_every_response_then_the_final(worker: tuple[BlsClient, FakeNats]) -> None:
    client, nc = worker
    nc.stream = lambda r: [
        _out(r, np.array([1.0], np.float32), more=True),
        _out(r, np.array([2.0], np.float32), more=True),
        mesh_pb2.InferResponse(more=False),
    ]
    responses = list(client.exec(_request(), decoupled=True))
    assert len(responses) == 3
    assert [r.output_tensors()[0].as_numpy().tolist() for r in responses[:2]] == [[1.0], [2.0]]
    assert responses[2].output_tensors() == []


def test_decoupled_exec_ends_at_the_deadline(worker: tuple[BlsClient, FakeNats]) -> None:
    client, nc = worker
    nc.stream = lambda r: [_out(r, np.array([1.0], np.float32), more=True)]  # never final
    started = time.monotonic()
    responses = list(client.exec(_request(timeout=200_000), decoupled=True))
    assert time.monotonic() - started < 1.5
    assert not responses[0].has_error()
    assert responses[-1].has_error() and "Request timeout expired" in responses[-1].error().message()


def test_async_exec_from_the_models_own_loop(worker: tuple[BlsClient, FakeNats]) -> None:
    client, nc = worker
    nc.answer = lambda r: _out(r, np.ones((1, 4), np.float32))
    nc.stream = lambda r: [_out(r, np.array([7.0], np.float32), more=True), mesh_pb2.InferResponse()]

    async def model() -> tuple[Any, Any, list[Any]]:
        first, second = await asyncio.gather(
            client.async_exec(_request(), decoupled=False), client.async_exec(_request(), decoupled=False)
        )
        streamed = list(await client.async_exec(_request(), decoupled=True))
        return first, second, streamed

    first, second, streamed = asyncio.run(model())
    assert not first.has_error() and not second.has_error()
    assert streamed[0].output_tensors()[0].as_numpy().tolist() == [7.0] and len(streamed) == 2


def test_exec_refuses_to_block_the_event_loop(worker: tuple[BlsClient, FakeNats]) -> None:
    client, _ = worker

    async def on_loop() -> None:
        client.exec(_request(), decoupled=False)

    with pytest.raises(pb_utils.TritonModelException, match="cannot block the worker's event loop"):
        asyncio.run_coroutine_threadsafe(on_loop(), client._loop).result(5)
