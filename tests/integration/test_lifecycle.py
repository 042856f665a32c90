"""The mesh's processes: a worker that dies mid-request, and `meshserve up` stopping everything it started."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh, start_mesh, wait_for


def _simple_request() -> tuple[np.ndarray, list[grpcclient.InferInput]]:
    """A request for `simple` (INPUT0 = INPUT1 = 0..15) and the data it carries."""
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return a, inputs


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.fixture
def small_mesh(tmp_path: Path) -> Iterator[Mesh]:
    repository = tmp_path / "models"
    repository.mkdir()
    for name in ("slow",):
        (repository / name).symlink_to(ROOT / "tests" / "models" / name)
    (repository / "simple").symlink_to(ROOT / "examples" / "model_repository" / "simple")
    mesh = start_mesh(repository, tmp_path / "mesh.log")
    try:
        yield mesh
    finally:
        mesh.stop()


def test_worker_dying_mid_request_gets_an_error_not_a_hang(small_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(small_mesh.grpc_url)
    tensor = grpcclient.InferInput("IN", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    worker = small_mesh.pids()["worker:slow"]
    errors: list[BaseException] = []
    done = []

    def callback(result: object, error: BaseException | None) -> None:
        done.append(time.monotonic())
        if error is not None:
            errors.append(error)

    client.async_infer("slow", [tensor], callback=callback)  # the model sleeps 2 s
    time.sleep(0.5)
    killed_at = time.monotonic()
    os.kill(worker, signal.SIGKILL)
    assert wait_for(lambda: bool(done), timeout_s=10), "the request hung after its worker died"
    assert done[0] - killed_at < 5
    assert len(errors) == 1
    assert isinstance(errors[0], InferenceServerException)
    assert errors[0].status() == "StatusCode.UNAVAILABLE"
    assert "lost" in errors[0].message() or "no live instance" in errors[0].message()
    # the other model keeps serving
    a, inputs = _simple_request()
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), 2 * a)
    # and the dead model answers at once with a clear error, never a hang
    start = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        client.infer("slow", [tensor])
    assert time.monotonic() - start < 5
    assert err.value.status() == "StatusCode.UNAVAILABLE"


def test_sigterm_stops_every_process(small_mesh: Mesh) -> None:
    pids = small_mesh.pids()
    assert {"nats-server", "gateway", "batcher", "worker:slow", "worker:simple"} <= set(pids)
    assert small_mesh.stop() == 0
    assert wait_for(lambda: not any(alive(pid) for pid in pids.values()), timeout_s=10), {
        role: pid for role, pid in pids.items() if alive(pid)
    }


def test_children_stop_when_the_launcher_is_killed(small_mesh: Mesh) -> None:
    pids = small_mesh.pids()
    os.kill(small_mesh.process.pid, signal.SIGKILL)
    small_mesh.process.wait(10)
    services = {role: pid for role, pid in pids.items() if role != "up"}
    assert wait_for(lambda: not any(alive(pid) for pid in services.values()), timeout_s=15), {
        role: pid for role, pid in services.items() if alive(pid)
    }


def test_several_gateways_share_the_client_ports(tmp_path: Path) -> None:
    import urllib.request

    repository = tmp_path / "models"
    repository.mkdir()
    (repository / "simple").symlink_to(ROOT / "examples" / "model_repository" / "simple")
    mesh = start_mesh(repository, tmp_path / "mesh.log", "--gateways", "2")
    try:
        pids = mesh.pids()
        assert "gateway" in pids and "gateway#1" in pids
        assert len(mesh.metrics_urls) == 2
        a, inputs = _simple_request()
        for _ in range(24):  # a new client = a new connection; the kernel spreads them over both
            client = grpcclient.InferenceServerClient(mesh.grpc_url)
            np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), 2 * a)
            client.close()
        served = []
        for url in mesh.metrics_urls:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            line = next(
                row
                for row in text.splitlines()
                if row.startswith('nv_inference_request_success{model="simple"')
            )
            served.append(float(line.rsplit(" ", 1)[1]))
        assert sum(served) == 24
        assert all(n > 0 for n in served), served
        # Each gateway counted only its share, yet a statistics call on any connection sums all of them.
        for _ in range(4):
            client = grpcclient.InferenceServerClient(mesh.grpc_url)
            stats = client.get_inference_statistics("simple", as_json=True)["model_stats"][0]
            client.close()
            assert int(stats["inference_count"]) == 24, stats
            assert int(stats["inference_stats"]["success"]["count"]) == 24, stats
            assert int(stats["execution_count"]) == 24, stats
    finally:
        assert mesh.stop() == 0


def _live_instances(mesh: Mesh, model: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(mesh.metrics_url, timeout=10).read().decode()
    prefix = f'meshserve_live_instances{{model="{model}",version="1"}}'
    rows = [row for row in text.splitlines() if row.startswith(prefix)]
    return float(rows[0].rsplit(" ", 1)[1]) if rows else 0.0


def test_a_worker_started_by_hand_joins_the_pool(small_mesh: Mesh, tmp_path: Path) -> None:
    import subprocess
    import sys

    assert wait_for(lambda: _live_instances(small_mesh, "simple") == 1, timeout_s=10)
    repository = Path(small_mesh.process.args[small_mesh.process.args.index("--model-repository") + 1])  # type: ignore[union-attr, arg-type]
    extra = subprocess.Popen(
        [sys.executable, "-m", "meshserve.cli", "worker", "--nats-url", small_mesh.nats_url,
         "--model-repository", str(repository), "--model-name", "simple", "--model-version", "1",
         "--instance-index", "1"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "extra.log").open("w"), start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_for(lambda: _live_instances(small_mesh, "simple") == 2, timeout_s=30), (
            tmp_path / "extra.log"
        ).read_text()[-2000:]
        client = grpcclient.InferenceServerClient(small_mesh.grpc_url)
        a, inputs = _simple_request()
        for _ in range(10):
            np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), 2 * a)
    finally:
        extra.terminate()
        extra.wait(30)
    assert extra.returncode == 0
    # it said goodbye (STOPPING), so the pool shrinks at once rather than after the heartbeat timeout
    assert wait_for(lambda: _live_instances(small_mesh, "simple") == 1, timeout_s=4)


def test_a_silent_worker_fails_its_batch_without_waiting_for_the_deadline(small_mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(small_mesh.grpc_url)
    tensor = grpcclient.InferInput("IN", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    worker = small_mesh.pids()["worker:slow"]
    done: list[tuple[float, BaseException | None]] = []
    client.async_infer(
        "slow", [tensor], callback=lambda result, error: done.append((time.monotonic(), error))
    )
    time.sleep(0.5)
    stopped_at = time.monotonic()
    os.kill(worker, signal.SIGSTOP)  # hung: no crash, no goodbye, no heartbeat
    try:
        assert wait_for(lambda: bool(done), timeout_s=15)
    finally:
        os.kill(worker, signal.SIGCONT)
    finished_at, error = done[0]
    assert isinstance(error, InferenceServerException)
    assert error.status() == "StatusCode.UNAVAILABLE"
    assert "went silent" in error.message()
    assert finished_at - stopped_at < 10  # the heartbeat timeout (5 s), not the request deadline (60 s)


def test_the_batcher_survives_an_instance_that_speaks_garbage(small_mesh: Mesh) -> None:
    import asyncio

    import nats

    from meshserve import subjects
    from meshserve.pb import mesh_pb2

    async def announce_bogus() -> None:
        nc = await nats.connect(small_mesh.nats_url)
        config = mesh_pb2.WorkerAnnouncement()
        real = small_mesh.metrics_url.split("//")[1].split("/")[0]  # an HTTP server, not a worker
        for _ in range(3):
            await nc.publish(
                subjects.worker_announce(),
                mesh_pb2.WorkerAnnouncement(
                    instance_id="bogus-1", model_name="simple", model_version=1, state=mesh_pb2.READY,
                    address=real, model_config=config.model_config, max_inflight_batches=1,
                ).SerializeToString(),
            )  # fmt: skip
            await asyncio.sleep(0.2)
        await nc.drain()

    asyncio.run(announce_bogus())
    client = grpcclient.InferenceServerClient(small_mesh.grpc_url)
    a, inputs = _simple_request()
    for _ in range(10):  # batches sent to the bogus instance are retried on the real one
        np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), 2 * a)
    assert "batcher" in small_mesh.pids()
