"""Overload and slow clients: bounded queues reject fast, memory stays bounded, accepted requests meet
their deadlines; clients that do not read (HTTP bodies, gRPC streams) cannot grow the gateway."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio

from meshserve.harness import wait_for
from tests.faults.conftest import REQUEST_TIMEOUT_S, fault_repository
from tests.faults.load import Load, Tally, simple_call
from tests.faults.procs import HandMesh, Proc

MIB = 1024


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandMesh]:
    base = tmp_path_factory.mktemp("overload")
    repository = fault_repository(base / "models", "small_queue", "ticker", "simple_identity", "simple")
    config = repository / "ticker" / "config.pbtxt"  # as fast as it can: the stream test floods a client
    config.write_text(config.read_text().replace('string_value: "50"', 'string_value: "0"'))
    mesh = HandMesh(base, repository, "--request-timeout-secs", str(REQUEST_TIMEOUT_S))
    try:
        mesh.start_nats()
        mesh.wait_ready(
            mesh.batcher(wait=False),
            mesh.gateway(wait=False),
            *(mesh.worker(m, wait=False) for m in ("small_queue", "ticker", "simple_identity", "simple")),
        )
        yield mesh
    finally:
        mesh.close()


def _gateway(mesh: HandMesh) -> Proc:
    return next(p for p in mesh.procs if p.name.startswith("gateway"))


def _services(mesh: HandMesh) -> list[Proc]:
    return [p for p in mesh.procs if p is not mesh.nats]


async def _small_queue(client: grpcaio.InferenceServerClient) -> object:
    tensor = grpcaio.InferInput("IN", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 2), np.float32))
    return await client.infer("small_queue", [tensor])


def test_ten_times_the_sustainable_rate_is_rejected_fast_with_bounded_memory(mesh: HandMesh) -> None:
    gw = _gateway(mesh)
    grpc_url = f"127.0.0.1:{gw.ready['grpc_port']}"

    async def scenario() -> tuple[Tally, float, Tally]:
        # one client at a time is what small_queue sustains (0.3 s a batch): the baseline rate
        base = await Load(grpc_url, _small_queue, concurrency=1, clear=()).run_for(1.5)
        before = {p.name: p.rss_kib() for p in _services(mesh)}
        load = Load(grpc_url, _small_queue, concurrency=24, deadline_s=REQUEST_TIMEOUT_S)
        tally = await load.run_for(5.0)
        growth = max(p.rss_kib() - before[p.name] for p in _services(mesh))
        return tally, growth / MIB, base

    tally, growth_mib, base = asyncio.run(scenario())
    offered = tally.sent / 5.0
    sustained = max(base.ok / 1.5, tally.ok / 5.0)  # what the model actually served, batching included
    print(f"overload: {tally.row()}; offered {offered:.0f}/s vs sustainable {sustained:.1f}/s; "
          f"max RSS growth {growth_mib:.1f} MiB; slowest reject {tally.slowest('UNAVAILABLE'):.3f} s; "
          f"slowest success {tally.slowest('ok'):.2f} s")  # fmt: skip
    tally.check(min_ok=5)
    assert offered > 8 * sustained, (offered, sustained)
    assert tally.clear["UNAVAILABLE"] > tally.ok  # most are refused ...
    # ... at once, not after waiting: well under the deadline (seconds here only on a machine whose
    # cores other work also wants; quiet it is under 0.5 s, docs/reliability.md)
    assert tally.slowest("UNAVAILABLE") < REQUEST_TIMEOUT_S / 3
    assert tally.slowest("ok") < REQUEST_TIMEOUT_S  # what was accepted met its deadline
    assert growth_mib < 40, growth_mib


def test_a_full_queue_is_http_503_like_triton(mesh: HandMesh) -> None:
    gw = _gateway(mesh)
    grpc_url = f"127.0.0.1:{gw.ready['grpc_port']}"
    body = json.dumps(
        {"inputs": [{"name": "IN", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    ).encode()

    async def scenario() -> list[int]:
        load = Load(grpc_url, _small_queue, concurrency=12, deadline_s=REQUEST_TIMEOUT_S)
        load.start()
        await asyncio.sleep(0.5)
        codes = await asyncio.gather(*(asyncio.to_thread(_http_post, gw, body) for _ in range(8)))
        await load.stop()
        return list(codes)

    codes = asyncio.run(scenario())
    assert 503 in codes, codes
    assert set(codes) <= {200, 503}, codes


def _http_post(gw: Proc, body: bytes) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{gw.ready['http_port']}/v2/models/small_queue/infer", data=body, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S + 5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        assert "Exceeds maximum queue size" in exc.read().decode()
        return int(exc.code)


def test_http_clients_reading_slowly_do_not_grow_the_gateway(mesh: HandMesh) -> None:
    gw = _gateway(mesh)
    grpc_url = f"127.0.0.1:{gw.ready['grpc_port']}"
    element = b"x" * (2 * 1024 * 1024)  # a 2 MiB response each
    header = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 1],
                     "parameters": {"binary_data_size": len(element) + 4}}],
         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}
    ).encode()  # fmt: skip
    body = header + len(element).to_bytes(4, "little") + element
    request = (
        b"POST /v2/models/simple_identity/infer HTTP/1.1\r\nHost: x\r\n"
        + f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    call, check = simple_call()

    async def scenario() -> tuple[Tally, float, int]:
        before = gw.rss_kib()
        socks = []
        for _ in range(8):  # 8 clients send a request and read nothing for a while
            sock = socket.create_connection(("127.0.0.1", gw.ready["http_port"]), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(request)
            socks.append(sock)
        # meanwhile the gateway keeps serving everybody else
        tally = await Load(grpc_url, call, check=check, concurrency=2, deadline_s=REQUEST_TIMEOUT_S).run_for(
            3.0
        )
        growth = (gw.rss_kib() - before) / MIB
        got = 0
        for sock in socks:  # then they read slowly, a little at a time, and hang up
            for _ in range(5):
                got += len(sock.recv(1024))
            sock.close()
        return tally, growth, got

    tally, growth_mib, got = asyncio.run(scenario())
    print(f"slow HTTP readers: {tally.row()} meanwhile; gateway RSS growth {growth_mib:.1f} MiB")
    tally.check(min_ok=10)
    assert got > 0
    # each slow connection holds at most its own response (2 MiB) plus the socket buffers
    assert growth_mib < 8 * 2 * 3 + 20, growth_mib
    assert gw.alive()


def test_a_grpc_stream_nobody_reads_stays_bounded(mesh: HandMesh) -> None:
    gw = _gateway(mesh)
    grpc_url = f"127.0.0.1:{gw.ready['grpc_port']}"
    n = 20000
    call, check = simple_call()

    async def scenario() -> tuple[float, Tally]:
        client = grpcaio.InferenceServerClient(grpc_url)
        hold = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, object]]:
            count = grpcaio.InferInput("COUNT", [1], "INT32")
            count.set_data_from_numpy(np.array([n], np.int32))
            yield {"model_name": "ticker", "inputs": [count], "request_id": "unread"}
            await hold.wait()

        before = gw.rss_kib()
        try:
            stream = client.stream_infer(requests())
            # nobody reads while the model sends 20000 responses; others are served meanwhile
            tally = await Load(
                grpc_url, call, check=check, concurrency=2, deadline_s=REQUEST_TIMEOUT_S
            ).run_for(4.0)
            growth = (gw.rss_kib() - before) / MIB
            stream.cancel()  # the cancel reaches the worker, which drops the rest
            return growth, tally
        finally:
            hold.set()
            await client.close()

    ticks = mesh.repository / "ticker" / "ticks.log"
    growth_mib, tally = asyncio.run(scenario())
    print(
        f"unread gRPC stream of {n} responses: gateway RSS growth {growth_mib:.1f} MiB; meanwhile {tally.row()}"
    )
    tally.check(min_ok=10)
    # bounded by the stream's queues (1024 + 256 responses) and HTTP/2 flow control, not by n
    assert growth_mib < 30, growth_mib
    assert gw.alive()
    # and the cancel reached the model, which stopped before sending all n
    assert wait_for(lambda: ticks.exists() and "unread" in ticks.read_text(), timeout_s=10), mesh.logs()
    sent = int(ticks.read_text().split()[1])
    print(f"the model stopped after {sent} of {n} responses")
    assert sent < n
