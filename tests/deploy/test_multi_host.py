"""More than one machine: a worker in its own network namespace, given only the NATS URL, serves the mesh.

The test makes a namespace and a veth pair to this (the host's) namespace, addresses from 198.18.0.0/15
(reserved for network tests, routed nowhere).  On the host side run nats-server (bound to the veth
address only), a batcher and a gateway; in the namespace runs the worker with the compose file's own
command (``--host 0.0.0.0 --port 9000``), so it announces the address on its route to NATS and the
batcher dials it across the veth link.  Needs root or CAP_NET_ADMIN; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from meshserve.harness import ROOT
from meshserve.nats_server import find_nats_server
from tests.deploy.compose_local import (
    Proc,
    free_port,
    load_compose,
    meshserve_argv,
    spawn,
    stop_all,
    wait_port,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="network namespaces are Linux only")


def _ip(*args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, "ip", *args], capture_output=True, text=True, timeout=30, check=False)


@dataclass
class Link:
    netns: str
    host_address: str
    worker_address: str


def _make_link() -> Iterator[Link]:
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    tag = f"{os.getpid() % 10000}{random.randrange(1000):03d}"
    netns, host_if, ns_if = f"meshserve-{tag}", f"msh{tag}", f"msw{tag}"
    made = _ip("netns", "add", netns)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace (needs root or CAP_NET_ADMIN): {made.stderr.strip()}")
    try:
        subnet = random.randrange(256)
        host_address, worker_address = f"198.18.{subnet}.1", f"198.18.{subnet}.2"
        for step in (
            ("link", "add", host_if, "type", "veth", "peer", "name", ns_if),
            ("link", "set", ns_if, "netns", netns),
            ("addr", "add", f"{host_address}/30", "dev", host_if),
            ("link", "set", host_if, "up"),
        ):
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot set up the veth pair (`ip {' '.join(step)}`): {done.stderr.strip()}")
        for step in (
            ("addr", "add", f"{worker_address}/30", "dev", ns_if),
            ("link", "set", ns_if, "up"),
            ("link", "set", "lo", "up"),
        ):
            done = _ip(*step, netns=netns)
            assert done.returncode == 0, f"ip {' '.join(step)} in {netns}: {done.stderr}"
        yield Link(netns, host_address, worker_address)
    finally:
        _ip("netns", "del", netns)  # removes the namespace's end of the pair, and so the pair
        _ip("link", "del", host_if)  # in case the pair never moved


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    yield from _make_link()


def test_worker_in_another_namespace_serves_through_the_mesh(link: Link, tmp_path) -> None:
    nats_port = free_port()
    nats_url = f"nats://{link.host_address}:{nats_port}"
    env = {**os.environ, "MESHSERVE_NATS_URL": nats_url}
    compose = load_compose(ROOT / "deploy" / "docker-compose.yml")
    worker_command = [
        str(ROOT / "examples" / "model_repository") if arg == "/models" else arg
        for arg in compose["services"]["worker-simple"]["command"]
    ]
    assert "--nats-url" not in worker_command  # the worker knows nothing but the NATS URL (environment)

    procs: list[Proc] = []
    try:
        nats = [find_nats_server(None), "-c", str(ROOT / "deploy" / "nats" / "nats.conf")]
        nats += ["-a", link.host_address, "-p", str(nats_port)]
        procs.append(spawn("nats", nats, {}, tmp_path / "nats.log", ROOT))
        wait_port(nats_port, 20, host=link.host_address)
        procs.append(spawn("batcher", meshserve_argv(["batcher"]), env, tmp_path / "batcher.log", ROOT))
        gateway = [
            "gateway",
            "--host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ]
        procs.append(spawn("gateway", meshserve_argv(gateway), env, tmp_path / "gateway.log", ROOT))
        in_netns = ["ip", "netns", "exec", link.netns, *meshserve_argv(worker_command)]
        procs.append(spawn("worker", in_netns, env, tmp_path / "worker.log", ROOT))
        ready = {p.name: p.wait_ready(120) for p in procs[1:]}

        assert ready["worker"]["state"] == "READY"
        assert ready["worker"]["address"] == f"{link.worker_address}:9000"
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ready['gateway']['grpc_port']}")
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        inputs = [
            grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
            grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
        ]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(np.full_like(a, 3))
        for _ in range(3):
            result = client.infer("simple", inputs, client_timeout=30)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + 3)
        client.close()
        # the batches crossed the link: the worker saw the batcher connect from the host's veth address
        assert f"batcher connected from ('{link.host_address}'" in (tmp_path / "worker.log").read_text()
    finally:
        codes = stop_all(procs)
    failed = {name: code for name, code in codes.items() if code != 0}
    assert not failed, {n: (tmp_path / f"{n}.log").read_text()[-2000:] for n in failed}
