"""preserve_ordering through the mesh: two instances finish a slow and a fast request out of order;
with the flag the answers still leave in arrival order (Triton's DB8), without it the fast one wins."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from meshserve.harness import Mesh


def _race(mesh: Mesh, model: str) -> list[str]:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    answered: list[str] = []
    done: queue.Queue[object] = queue.Queue()

    def send(name: str, delay_ms: int) -> None:
        tensor = grpcclient.InferInput("DELAY_MS", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.array([[delay_ms]], dtype=np.int32))

        def callback(result: object, error: object) -> None:
            answered.append(name)
            done.put(error)

        client.async_infer(model, [tensor], callback=callback)

    send("slow", 1500)
    time.sleep(0.3)  # the slow one is running on one instance; the fast one gets the other
    send("fast", 0)
    assert [done.get(timeout=30) for _ in range(2)] == [None, None]
    client.close()
    return answered


@pytest.mark.parametrize(
    ("model", "expected"), [("ordered", ["slow", "fast"]), ("unordered", ["fast", "slow"])]
)
def test_preserve_ordering_answers_in_arrival_order(mesh: Mesh, model: str, expected: list[str]) -> None:
    assert _race(mesh, model) == expected
