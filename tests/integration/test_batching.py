"""Dynamic batching observed through tritonclient: preferred sizes, rows as slots, queue policies."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from meshserve.harness import Mesh


def probe_input(rows: int) -> list[grpcaio.InferInput]:
    tensor = grpcaio.InferInput("IN", [rows, 2], "FP32")
    tensor.set_data_from_numpy(np.zeros((rows, 2), np.float32))
    return [tensor]


async def infer_all(mesh: Mesh, model: str, rows: list[int], **kwargs: object) -> list[object]:
    client = grpcaio.InferenceServerClient(mesh.grpc_url)
    try:
        return await asyncio.gather(
            *(client.infer(model, probe_input(n), **kwargs) for n in rows), return_exceptions=True
        )
    finally:
        await client.close()


def test_requests_are_batched_up_to_the_preferred_size(mesh: Mesh) -> None:
    results = asyncio.run(infer_all(mesh, "batch_probe", [1] * 8))
    seen = [int(r.as_numpy("REQUESTS")[0, 0]) for r in results]  # type: ignore[attr-defined]
    assert seen == [4] * 8, seen


def test_a_request_with_k_rows_takes_k_slots(mesh: Mesh) -> None:
    results = asyncio.run(infer_all(mesh, "batch_probe", [3, 1]))
    rows = [r.as_numpy("ROWS")[:, 0].tolist() for r in results]  # type: ignore[attr-defined]
    assert rows == [[4, 4, 4], [4]], rows


async def _busy_then(mesh: Mesh, then: list[tuple[int, int]]) -> tuple[object, list[object]]:
    """Start one request (the instance is then busy 0.3 s), then send `then` = [(rows, priority)]."""
    client = grpcaio.InferenceServerClient(mesh.grpc_url)
    try:
        first = asyncio.ensure_future(client.infer("small_queue", probe_input(1)))
        await asyncio.sleep(0.1)
        rest = await asyncio.gather(
            *(client.infer("small_queue", probe_input(n), priority=p) for n, p in then),
            return_exceptions=True,
        )
        return await first, rest
    finally:
        await client.close()


def test_max_queue_size_refuses_with_unavailable(mesh: Mesh) -> None:
    first, rest = asyncio.run(_busy_then(mesh, [(1, 0)] * 5))
    assert int(first.as_numpy("REQUESTS")[0, 0]) == 1  # type: ignore[attr-defined]
    refused = [r for r in rest if isinstance(r, InferenceServerException)]
    served = [r for r in rest if not isinstance(r, BaseException)]
    assert len(refused) == 2 and len(served) == 3, rest
    assert all(r.status() == "StatusCode.UNAVAILABLE" for r in refused)
    assert all("Exceeds maximum queue size" in r.message() for r in refused)
    # the three that waited ran together once the instance was free
    assert [int(r.as_numpy("REQUESTS")[0, 0]) for r in served] == [3, 3, 3]  # type: ignore[attr-defined]


def test_queue_timeout_rejects_with_triton_wording(mesh: Mesh) -> None:
    start = time.monotonic()
    _, rest = asyncio.run(_busy_then(mesh, [(1, 1)]))  # level 1: 100 ms queue timeout, REJECT
    (error,) = rest
    assert isinstance(error, InferenceServerException), error
    assert error.status() == "StatusCode.UNAVAILABLE"
    assert "Request timeout expired" in error.message()
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("rows", [9])
def test_a_request_over_max_batch_size_is_refused_before_queueing(mesh: Mesh, rows: int) -> None:
    (error,) = asyncio.run(infer_all(mesh, "batch_probe", [rows]))
    assert isinstance(error, InferenceServerException)
    assert "batch-size must be <= 8" in error.message()
