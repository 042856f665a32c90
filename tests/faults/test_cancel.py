"""A client that cancels or disconnects: the cancel travels gateway → batcher queue → worker.

`pace` here has one instance and takes 1 s per batch, so requests sent behind a busy one wait in the
batcher's queue; its ledger (executed.log) shows which requests the model actually ran.  `ticker`
streams a response every 50 ms until its request is cancelled; `spin` (not decoupled) runs until its
request is cancelled or its time is up.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio

from meshserve.harness import wait_for
from tests.faults.conftest import REQUEST_TIMEOUT_S, fault_repository, ledger, metric
from tests.faults.procs import HandMesh

PACE_DELAY_S = 1.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandMesh]:
    base = tmp_path_factory.mktemp("cancel")
    repository = fault_repository(base / "models", "pace", "ticker", "spin")
    config = repository / "pace" / "config.pbtxt"
    config.write_text(config.read_text().replace('string_value: "0.2"', f'string_value: "{PACE_DELAY_S}"'))
    mesh = HandMesh(base, repository, "--request-timeout-secs", str(REQUEST_TIMEOUT_S))
    try:
        mesh.start_nats()
        mesh.wait_ready(
            mesh.batcher("--metrics-port", "0", wait=False),
            mesh.gateway(wait=False),
            mesh.worker("pace", 0, wait=False),
            mesh.worker("ticker", 0, wait=False),
            mesh.worker("spin", 0, wait=False),
        )
        yield mesh
    finally:
        mesh.close()


def _urls(mesh: HandMesh) -> tuple[str, int, str]:
    gw = next(p for p in mesh.procs if p.name.startswith("gateway"))
    return (
        f"127.0.0.1:{gw.ready['grpc_port']}",
        int(gw.ready["http_port"]),
        f"http://127.0.0.1:{gw.ready['metrics_port']}/metrics",
    )


def _pace_input() -> list[grpcaio.InferInput]:
    tensor = grpcaio.InferInput("IN", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    return [tensor]


def _executed(repository: Path) -> set[str]:
    return {request_id for _, request_id in ledger(repository, "pace")}


def test_a_cancelled_grpc_request_leaves_the_batcher_queue(mesh: HandMesh) -> None:
    grpc_url, _, metrics_url = _urls(mesh)

    async def scenario() -> float:
        client = grpcaio.InferenceServerClient(grpc_url)
        try:
            busy = asyncio.create_task(client.infer("pace", _pace_input(), request_id="busy"))
            await asyncio.sleep(0.3)  # "busy" runs; what follows waits in the batcher's queue
            victims = [
                asyncio.create_task(client.infer("pace", _pace_input(), request_id=f"victim-{i}"))
                for i in range(3)
            ]
            await asyncio.sleep(0.2)
            for victim in victims:
                victim.cancel()
            await asyncio.gather(*victims, return_exceptions=True)
            await asyncio.sleep(0.2)  # the cancels cross NATS
            start = time.monotonic()
            await client.infer("pace", _pace_input(), request_id="after")
            await busy
            return time.monotonic() - start
        finally:
            await client.close()

    after_took = asyncio.run(scenario())
    executed = _executed(mesh.repository)
    assert {"busy", "after"} <= executed, executed
    assert not {f"victim-{i}" for i in range(3)} & executed, f"a cancelled request ran: {executed}"
    assert after_took < 2 * PACE_DELAY_S + 3, after_took  # it waited for "busy" only
    assert (
        metric(metrics_url, "nv_inference_request_failure", model="pace", version="1", reason="CANCELED") >= 3
    )


def test_an_http_client_that_disconnects_is_cancelled(mesh: HandMesh) -> None:
    grpc_url, http_port, _ = _urls(mesh)
    body = json.dumps(
        {
            "id": "http-victim",
            "inputs": [{"name": "IN", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
        }
    ).encode()

    async def scenario() -> None:
        client = grpcaio.InferenceServerClient(grpc_url)
        try:
            busy = asyncio.create_task(client.infer("pace", _pace_input(), request_id="http-busy"))
            await asyncio.sleep(0.3)
            with socket.create_connection(("127.0.0.1", http_port), timeout=5) as sock:
                sock.sendall(
                    b"POST /v2/models/pace/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await asyncio.sleep(0.3)  # queued behind "http-busy"; then the client hangs up
            await busy
            await asyncio.sleep(PACE_DELAY_S + 0.5)  # had it stayed queued, it would have run by now
        finally:
            await client.close()

    asyncio.run(scenario())
    executed = _executed(mesh.repository)
    assert "http-busy" in executed
    assert "http-victim" not in executed, executed


def test_a_cancelled_stream_stops_the_generation(mesh: HandMesh) -> None:
    grpc_url, _, _ = _urls(mesh)
    ticks = mesh.repository / "ticker" / "ticks.log"

    async def scenario() -> int:
        client = grpcaio.InferenceServerClient(grpc_url)
        hold = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, object]]:
            count = grpcaio.InferInput("COUNT", [1], "INT32")
            count.set_data_from_numpy(np.array([400], np.int32))  # 20 s if nobody stops it
            yield {"model_name": "ticker", "inputs": [count], "request_id": "long"}
            await hold.wait()

        try:
            stream = client.stream_infer(requests())
            got = 0
            async for _result, error in stream:
                assert error is None, error
                got += 1
                if got == 3:
                    break
            stream.cancel()
            return got
        finally:
            hold.set()
            await client.close()

    cancelled_at = time.monotonic()
    assert asyncio.run(scenario()) == 3
    assert wait_for(lambda: ticks.exists() and "long" in ticks.read_text(), timeout_s=5), (
        "the model kept going"
    )
    stopped_after = time.monotonic() - cancelled_at
    sent = int(ticks.read_text().split()[1])
    assert sent < 60, sent  # stopped within about a second of the cancel, not after 400 ticks
    assert stopped_after < 5


def test_a_cancel_reaches_a_running_non_decoupled_python_model(mesh: HandMesh) -> None:
    """Triton's python backend lets a running ``execute`` ask ``request.is_cancelled()``: a request
    cancelled 0.5 s into a 30 s execute stops there, its response is dropped, and the instance is free
    for the next request at once.  (Backends without the call finish the running batch, as Triton's do.)"""
    grpc_url, _, _ = _urls(mesh)
    spins = mesh.repository / "spin" / "spins.log"

    def seconds(value: float) -> list[grpcaio.InferInput]:
        tensor = grpcaio.InferInput("SECONDS", [1], "FP32")
        tensor.set_data_from_numpy(np.array([value], np.float32))
        return [tensor]

    async def scenario() -> tuple[bool, float]:
        client = grpcaio.InferenceServerClient(grpc_url)
        try:
            long = asyncio.ensure_future(client.infer("spin", seconds(30.0), request_id="long-spin"))
            await asyncio.sleep(0.5)  # running in the model by now
            long.cancel()
            with pytest.raises(asyncio.CancelledError):
                await long
            started = time.monotonic()
            result = await client.infer("spin", seconds(0.05), request_id="next-spin", client_timeout=10)
            return result.as_numpy("OUT") is not None, time.monotonic() - started
        finally:
            await client.close()

    answered, next_took = asyncio.run(scenario())
    assert answered
    assert next_took < 5, next_took  # the instance did not stay busy for the 30 s
    assert wait_for(lambda: spins.exists() and "long-spin" in spins.read_text(), timeout_s=5)
    lines = dict(line.split(" ", 1) for line in spins.read_text().splitlines())
    outcome, ran = lines["long-spin"].split()
    assert outcome == "cancelled", lines
    assert float(ran) < 3.0, ran
    assert lines["next-spin"].startswith("done"), lines
