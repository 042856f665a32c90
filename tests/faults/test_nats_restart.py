"""nats-server killed and restarted on the same port under load: every service reconnects by itself,
requests in flight end with a clear error (not at their deadline), and new requests succeed again."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

from meshserve.harness import wait_for
from tests.faults.conftest import REQUEST_TIMEOUT_S, fault_repository, live_instances
from tests.faults.load import Load, Tally, eventually, fp32_call
from tests.faults.procs import HandMesh

OUTAGE_S = 1.5


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandMesh]:
    base = tmp_path_factory.mktemp("nats_restart")
    repository = fault_repository(base / "models", "pace")
    mesh = HandMesh(base, repository, "--request-timeout-secs", str(REQUEST_TIMEOUT_S))
    try:
        mesh.start_nats()
        mesh.batcher()
        mesh.gateway()
        mesh.worker("pace", 0)
        mesh.worker("pace", 1)
        yield mesh
    finally:
        mesh.close()


def test_nats_restart_under_load(mesh: HandMesh) -> None:
    gw = next(p for p in mesh.procs if p.name.startswith("gateway"))
    grpc_url = f"127.0.0.1:{gw.ready['grpc_port']}"
    metrics_url = f"http://127.0.0.1:{gw.ready['metrics_port']}/metrics"
    assert wait_for(lambda: live_instances(metrics_url, "pace") == 2, timeout_s=10)
    services = [p for p in mesh.procs if p is not mesh.nats]
    call, check = fp32_call("pace", 4)

    async def scenario() -> tuple[Tally, float]:
        load = Load(grpc_url, call, check=check, concurrency=8, deadline_s=REQUEST_TIMEOUT_S, interval_s=0.01)
        load.start()
        await asyncio.sleep(1.0)
        assert mesh.nats is not None
        mesh.nats.signal(signal.SIGKILL)
        await asyncio.to_thread(mesh.nats.wait, 5)
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(mesh.start_nats, mesh.nats_port)
        restarted_at = time.monotonic()
        # new requests succeed again once every service has reconnected (reconnect wait + heartbeat)
        await eventually(lambda: load.tally.ok_after(restarted_at) >= 20, timeout_s=15)
        return await load.stop(), restarted_at

    tally, restarted_at = asyncio.run(scenario())
    print("nats restart:", tally.row(), f"slowest error {tally.slowest('UNAVAILABLE'):.2f} s")
    tally.check(min_ok=20)
    assert all(p.alive() for p in services), mesh.logs()
    assert tally.ok_after(restarted_at) >= 20, f"no recovery after the restart: {tally.row()}\n{mesh.logs()}"
    # what was in flight when NATS went away ended with a clear error well before its deadline
    assert tally.clear["DEADLINE_EXCEEDED"] == 0, tally.row()
    assert tally.slowest("UNAVAILABLE") < REQUEST_TIMEOUT_S / 2, tally.slowest("UNAVAILABLE")
