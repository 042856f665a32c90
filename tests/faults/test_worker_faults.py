"""A worker instance killed (-9) mid-batch or stopped (SIGTERM) under steady load: nothing is lost.

Two instances of `pace` (0.2 s per batch) serve 8 concurrent clients.  The batch of a killed instance
is retried once on the other; the dead one leaves the pool; a worker started again by hand joins
and takes load; a worker stopped with SIGTERM finishes its batch and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

from meshserve.harness import wait_for
from tests.faults.conftest import REQUEST_TIMEOUT_S, fault_repository, ledger, live_instances
from tests.faults.load import Load, fp32_call
from tests.faults.procs import HandMesh

HEARTBEAT_TIMEOUT_S = 5.0
"""``instance_stale_after_s``: a silent instance leaves the gateway's table after this long."""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandMesh]:
    base = tmp_path_factory.mktemp("worker_faults")
    repository = fault_repository(base / "models", "pace")
    mesh = HandMesh(base, repository, "--request-timeout-secs", str(REQUEST_TIMEOUT_S))
    try:
        mesh.start_nats()
        mesh.wait_ready(
            mesh.batcher(wait=False),
            mesh.gateway(wait=False),
            mesh.worker("pace", 0, wait=False),
            mesh.worker("pace", 1, wait=False),
        )
        yield mesh
    finally:
        mesh.close()


def _gateway(mesh: HandMesh) -> tuple[str, str]:
    gw = next(p for p in mesh.procs if p.name.startswith("gateway"))
    return f"127.0.0.1:{gw.ready['grpc_port']}", f"http://127.0.0.1:{gw.ready['metrics_port']}/metrics"


def _workers(mesh: HandMesh) -> list:  # type: ignore[type-arg]
    return [p for p in mesh.procs if p.name.startswith("worker") and p.alive()]


def test_kill_9_mid_batch_retries_drops_and_a_restarted_worker_rejoins(mesh: HandMesh) -> None:
    grpc_url, metrics_url = _gateway(mesh)
    assert wait_for(lambda: live_instances(metrics_url, "pace") == 2, timeout_s=10)
    victim = _workers(mesh)[0]
    call, check = fp32_call("pace", 4)

    async def scenario() -> tuple:  # type: ignore[type-arg]
        load = Load(grpc_url, call, check=check, concurrency=8, deadline_s=REQUEST_TIMEOUT_S)
        load.start()
        await asyncio.sleep(1.5)
        # mid-batch: the model is busy whenever 8 clients wait on 2 instances of 0.2 s batches
        victim.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        dropped = await asyncio.to_thread(
            wait_for, lambda: live_instances(metrics_url, "pace") == 1, HEARTBEAT_TIMEOUT_S + 5
        )
        dropped_after = time.monotonic() - killed_at
        await asyncio.sleep(1.0)
        fresh = await asyncio.to_thread(mesh.worker, "pace", 0)
        joined = await asyncio.to_thread(wait_for, lambda: live_instances(metrics_url, "pace") == 2, 15)
        joined_at = time.monotonic()
        await asyncio.sleep(1.5)
        return await load.stop(), dropped, dropped_after, fresh, joined, joined_at

    tally, dropped, dropped_after, fresh, joined, joined_at = asyncio.run(scenario())
    print("kill -9 worker:", tally.row(), f"dropped after {dropped_after:.1f} s")
    tally.check(min_ok=20)
    assert dropped, f"the dead instance stayed in the pool:\n{mesh.logs()}"
    assert dropped_after < HEARTBEAT_TIMEOUT_S + 5
    assert "retrying" in next(p for p in mesh.procs if p.name.startswith("batcher")).log()
    assert joined, mesh.logs()
    assert tally.ok_after(joined_at) > 0
    assert any(pid == str(fresh.pid) for pid, _ in ledger(mesh.repository, "pace")), (
        "the new worker got no load"
    )


def test_sigterm_a_worker_under_load_finishes_in_flight_and_exits_0(mesh: HandMesh) -> None:
    grpc_url, metrics_url = _gateway(mesh)
    assert wait_for(lambda: live_instances(metrics_url, "pace") == 2, timeout_s=10)
    first, last = _workers(mesh)[:2]
    call, check = fp32_call("pace", 4)

    async def scenario() -> tuple:  # type: ignore[type-arg]
        load = Load(grpc_url, call, check=check, concurrency=8, deadline_s=REQUEST_TIMEOUT_S)
        load.start()
        await asyncio.sleep(1.0)
        first.signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, 15)
        await asyncio.sleep(1.0)
        stopped_at = time.monotonic()
        ok_before = load.tally.ok
        # the last instance stops too: the model has none left, and says so at once
        last.signal(signal.SIGTERM)
        last_code = await asyncio.to_thread(last.wait, 15)
        await asyncio.sleep(1.0)
        return await load.stop(), code, last_code, ok_before, stopped_at

    tally, code, last_code, ok_before, stopped_at = asyncio.run(scenario())
    print("SIGTERM worker:", tally.row())
    assert code == 0 and last_code == 0, mesh.logs()
    tally.check(min_ok=10)
    assert ok_before > 0
    assert tally.clear["UNAVAILABLE"] > 0, "with no instance left requests should be refused"
    assert tally.ok_after(stopped_at + 2.0) == 0
