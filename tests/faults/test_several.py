"""Several batchers and gateways: stop (SIGTERM) or kill (-9) one under load; the others carry it.
Then nats-server itself is killed and restarted on the same port.

Two batchers share the requests (NATS queue group); two gateways share the client ports
(SO_REUSEPORT), and a client whose gateway went away reconnects to the same port and gets the other.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

from meshserve.harness import wait_for
from tests.faults.conftest import fault_repository, live_instances
from tests.faults.load import Load, Tally, eventually, fp32_call
from tests.faults.procs import HandMesh, Proc

NATS_OUTAGE_S = 1.5
REQUEST_TIMEOUT_S = 10.0
"""Long enough that a request of a batcher killed with -9, published again once its heartbeat is
``BATCHER_TIMEOUT_S`` old, still succeeds well before it."""
BATCHER_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HandMesh]:
    base = tmp_path_factory.mktemp("several")
    repository = fault_repository(base / "models", "pace")
    mesh = HandMesh(
        base,
        repository,
        "--request-timeout-secs",
        str(REQUEST_TIMEOUT_S),
        "--batcher-heartbeat-secs",
        "0.5",
        "--batcher-timeout-secs",
        str(BATCHER_TIMEOUT_S),
    )
    try:
        mesh.start_nats()
        started = [mesh.batcher(wait=False), mesh.batcher(wait=False)]
        started += [mesh.worker("pace", 0, wait=False), mesh.worker("pace", 1, wait=False)]
        first = mesh.gateway(reuse_port=True)
        ports = {"grpc_port": first.ready["grpc_port"], "http_port": first.ready["http_port"]}
        mesh.wait_ready(*started, mesh.gateway(**ports, reuse_port=True, wait=False))
        yield mesh
    finally:
        mesh.close()


def _live(mesh: HandMesh, role: str) -> list[Proc]:
    return [p for p in mesh.procs if p.name.startswith(role) and p.alive()]


def _grpc_url(mesh: HandMesh) -> str:
    return f"127.0.0.1:{_live(mesh, 'gateway')[0].ready['grpc_port']}"


def _ready(mesh: HandMesh) -> None:
    for gw in _live(mesh, "gateway"):
        metrics = f"http://127.0.0.1:{gw.ready['metrics_port']}/metrics"
        assert wait_for(lambda: live_instances(metrics, "pace") == 2, timeout_s=10), mesh.logs()  # noqa: B023


def _under_load(
    mesh: HandMesh, victim: Proc, sig: signal.Signals, after_s: float = 2.0, clients: int = 8
) -> tuple[Tally, int | None, float]:
    """``clients`` for 1 s, then ``sig`` to ``victim``, then ``after_s`` more; (tally, exit code, fault time)."""
    call, check = fp32_call("pace", 4)

    async def scenario() -> tuple[Tally, int | None, float]:
        load = Load(_grpc_url(mesh), call, check=check, concurrency=clients, deadline_s=REQUEST_TIMEOUT_S)
        load.start()
        await asyncio.sleep(1.0)
        victim.signal(sig)
        at = time.monotonic()
        code = await asyncio.to_thread(victim.wait, 15)
        await asyncio.sleep(after_s)
        return await load.stop(), code, at

    return asyncio.run(scenario())


def test_sigterm_a_batcher_hands_its_queue_to_the_other(mesh: HandMesh) -> None:
    _ready(mesh)
    victim = _live(mesh, "batcher")[0]
    tally, code, at = _under_load(mesh, victim, signal.SIGTERM)
    print("SIGTERM batcher (2 running):", tally.row())
    assert code == 0, victim.log()[-2000:]
    tally.check(min_ok=20)
    assert tally.failed_clearly == 0, tally.row()  # nothing refused: the other batcher took it all
    assert tally.ok_after(at + 0.5) > 0
    mesh.batcher()  # back to two


def test_kill_9_a_batcher_the_other_carries_the_load(mesh: HandMesh) -> None:
    """What the dead batcher held (queued, or in a batch its worker still answers) is published again by
    the gateways once its heartbeat is ``BATCHER_TIMEOUT_S`` old: it succeeds, well before its deadline,
    and a late duplicate answer is dropped (exactly one final response each)."""
    _ready(mesh)
    victim = _live(mesh, "batcher")[0]
    gateways = _live(mesh, "gateway")
    # 48 clients: more than the 2 instances x 2 batchers x 8 rows in flight, so each batcher has a queue
    tally, _, at = _under_load(mesh, victim, signal.SIGKILL, after_s=BATCHER_TIMEOUT_S + 3.0, clients=48)
    slowest = tally.slowest("ok")
    print(f"kill -9 batcher (2 running): {tally.row()}, slowest ok {slowest:.2f} s")
    tally.check(min_ok=20)
    assert tally.clear["DEADLINE_EXCEEDED"] == 0, tally.row()  # none waited for its deadline
    assert set(tally.clear) <= {"UNAVAILABLE"}, tally.row()
    # held at most the timeout + one look (a quarter of it) + a batch, then served: well under the deadline
    assert slowest < min(BATCHER_TIMEOUT_S * 1.25 + 2.5, REQUEST_TIMEOUT_S / 2), slowest
    assert tally.ok_after(at + 0.5) > 0
    resent = sum(g.log().count("went silent; publishing it again") for g in gateways)
    print(f"requests published again by the gateways: {resent}")
    assert resent > 0, mesh.logs()  # it did hold a queue, and it moved
    mesh.batcher()


def test_sigterm_a_gateway_the_other_takes_the_clients(mesh: HandMesh) -> None:
    _ready(mesh)
    victim, other = _live(mesh, "gateway")[:2]
    tally, code, at = _under_load(mesh, victim, signal.SIGTERM)
    print("SIGTERM gateway (2 running):", tally.row())
    assert code == 0, victim.log()[-2000:]
    tally.check(min_ok=20)
    assert set(tally.clear) <= {"UNAVAILABLE"}, tally.row()
    assert tally.ok_after(at + 0.5) > 0
    ports = other.ready
    mesh.gateway(grpc_port=ports["grpc_port"], http_port=ports["http_port"], reuse_port=True)


def test_kill_9_a_gateway_clients_reconnect_to_the_other(mesh: HandMesh) -> None:
    _ready(mesh)
    victim = _live(mesh, "gateway")[-1]
    tally, _, at = _under_load(mesh, victim, signal.SIGKILL)
    print("kill -9 gateway (2 running):", tally.row())
    tally.check(min_ok=20)
    assert set(tally.clear) <= {"UNAVAILABLE"}, tally.row()  # its clients' connections broke
    assert tally.ok_after(at + 0.5) > 0


def test_nats_restart_under_load(mesh: HandMesh) -> None:
    """Every service reconnects by itself; what was in flight ends at once with UNAVAILABLE (not at
    its deadline); new requests succeed again after the restart."""
    _ready(mesh)
    services = [p for p in mesh.procs if p is not mesh.nats and p.alive()]
    call, check = fp32_call("pace", 4)

    async def scenario() -> tuple[Tally, float]:
        load = Load(
            _grpc_url(mesh), call, check=check, concurrency=8, deadline_s=REQUEST_TIMEOUT_S, interval_s=0.01
        )
        load.start()
        await asyncio.sleep(1.0)
        assert mesh.nats is not None
        mesh.nats.signal(signal.SIGKILL)
        await asyncio.to_thread(mesh.nats.wait, 5)
        await asyncio.sleep(NATS_OUTAGE_S)
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


def test_a_service_with_bounded_reconnects_stops_when_nats_stays_away(mesh: HandMesh) -> None:
    """``--nats-max-reconnect-attempts N``: once they run out the service stops with exit code 1 (for a
    supervisor to restart it); the others, reconnecting forever, stay up.  Runs last: NATS stays down."""
    bounded = mesh.batcher("--nats-max-reconnect-attempts", "3", "--nats-reconnect-wait-secs", "0.2")
    others = [p for p in mesh.procs if p is not mesh.nats and p is not bounded and p.alive()]
    assert mesh.nats is not None
    mesh.nats.signal(signal.SIGKILL)
    code = bounded.wait(20)
    assert code == 1, bounded.log()[-2000:]
    assert "gave up reconnecting" in bounded.log()
    assert all(p.alive() for p in others)
