"""Dynamic batching, side by side: meshserve vs. real Triton vs. Flask+Waitress vs. the model in-process.

    python bench/batching.py [--workloads simple,mlp,mlp_large] [--peers meshserve,triton,flask]
                             [--repeats 3] [--quick] [--write docs/benchmarks.md]

Runs, in one go on this machine, the same workloads (bench/workloads.py; fixed seeds, built at run
time into a temporary directory) against:
  1. the model called in-process, back to back, at batch 1, 8 and 64 (the compute bound: the best rows/s);
  2. meshserve (`meshserve up` via meshserve.harness.start_mesh), gRPC, tritonclient.grpc.aio;
  3. Flask + Waitress (bench/flask_peer.py, threads=8) over JSON, driven by an aiohttp client;
  4. real Triton: the `tritonserver` 2.51 binary inside the nvidia-pytriton wheel, python backend
     (shared/notes/triton-on-cpu.md), the same models and dynamic_batching, tritonclient.grpc.aio;
at 1, 8 and 64 requests in flight (a bounded async loop, one row per request).  All servers stay up for
the whole run and the peers take turns, so drift on this shared machine hits them alike.  Reports
throughput, p50/p99 latency and the CPU time per request of every server process (from /proc), the
load generator's own CPU per request, and the ratios the batching issue sets as targets.  Each figure
is the median of --repeats runs.  The load generator (this process) shares the cores with the servers.
If Triton cannot be started, the report says why and covers the other peers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.workloads import WORKLOADS, Workload, build_repositories, workload  # noqa: E402
from meshserve.harness import Mesh, start_mesh  # noqa: E402
from meshserve.model_config import config_to_json, load_config  # noqa: E402
from workers.backends.base import LoadContext, Request  # noqa: E402
from workers.backends.python_backend import create as create_python_backend  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
IN_FLIGHT = (1, 8, 64)
BATCH_SIZES = (1, 8, 64)
PEERS = ("meshserve", "triton", "flask")
PEER_LABEL = {
    "meshserve": "meshserve (gRPC)",
    "triton": "Triton (gRPC)",
    "flask": "Flask+Waitress (JSON)",
}
REQUESTS = {
    "simple": {1: 1000, 8: 1500, 64: 2000},
    "mlp": {1: 500, 8: 1000, 64: 2000},
    "mlp_large": {1: 40, 8: 160, 64: 640},
}
"""Timed requests per measurement (a full run); --quick divides by 5."""
CLIENT_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def cpu_jiffies() -> tuple[int, int]:
    """(steal, total) jiffies of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL the process group it leads (it was started in its own session)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@dataclass
class Server:
    """A running peer: where to reach it and which processes to charge CPU time to, by role."""

    name: str
    url: str
    roles: Callable[[], dict[str, list[int]]]
    version: str = ""

    def cpu(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(p) for p in pids) for role, pids in self.roles().items()}


class PeerUnavailable(RuntimeError):
    pass


@contextlib.contextmanager
def run_meshserve(repository: Path, workdir: Path) -> Iterator[Server]:
    mesh: Mesh = start_mesh(repository, workdir / "mesh.log", timeout_s=300)
    try:
        by_role: dict[str, list[int]] = {}
        for role, pid in mesh.pids().items():
            if role != "up":  # the supervisor: idle, and not on a request's path
                by_role.setdefault(role.split(":")[0], []).append(pid)
        yield Server("meshserve", mesh.grpc_url, lambda: by_role)
    finally:
        mesh.stop()


def triton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise PeerUnavailable("nvidia-pytriton is not installed (pip install -e '.[bench]')")
    path = Path(spec.origin).parent / "tritonserver"
    if not (path / "bin" / "tritonserver").is_file():
        raise PeerUnavailable(f"no tritonserver binary under {path}")
    return path


@contextlib.contextmanager
def run_triton(repository: Path, workdir: Path, timeout_s: float = 300.0) -> Iterator[Server]:
    """The tritonserver binary of the nvidia-pytriton wheel, as pytriton itself starts it."""
    import shutil

    source = triton_dir()
    private = workdir / "tritonserver"
    for part in ("bin", "backends", "caches"):
        shutil.copytree(source / part, private / part)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = source / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise PeerUnavailable(f"nvidia-pytriton has no python backend stub for Python {version}")
    shutil.copy2(stub, private / "backends" / "python" / stub.name)
    libs = source.parents[1] / "nvidia_pytriton.libs"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p
        for p in (str(sysconfig.get_config_var("LIBDIR") or ""), str(libs), env.get("LD_LIBRARY_PATH", ""))
        if p
    )
    # the stub embeds Python and finds this venv (numpy, torch) through `python3` on PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    http, grpc, metrics = free_port(), free_port(), free_port()
    shm_prefix = f"msbench{os.getpid()}x"
    args = [
        str(private / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={private / 'backends'}",
        f"--cache-directory={private / 'caches'}",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        f"--metrics-port={metrics}",
        "--allow-gpu-metrics=false",
        "--model-control-mode=explicit",
        "--load-model=*",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
    ]
    log_path = workdir / "triton.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True
        )
    stubs: list[int] = []
    try:
        deadline = time.monotonic() + timeout_s
        while not http_ok(f"http://127.0.0.1:{http}/v2/health/ready"):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                why = (
                    f"exited with {process.returncode}" if process.poll() is not None else "not ready in time"
                )
                raise PeerUnavailable(f"tritonserver {why}; log tail:\n{tail}")
            time.sleep(0.5)
        stubs = children(process.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2", timeout=5) as response:
            server_version = str(json.loads(response.read()).get("version", "?"))
        roles = {"tritonserver": [process.pid], "python stubs": stubs}
        yield Server("triton", f"127.0.0.1:{grpc}", lambda: roles, version=server_version)
    finally:
        stop_process(process)
        for pid in stubs:  # stubs exit with their server; make sure
            with contextlib.suppress(OSError):
                if b"triton_python_backend_stub" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        for leftover in Path("/dev/shm").glob(f"{shm_prefix}*"):
            with contextlib.suppress(OSError):
                leftover.unlink()


@contextlib.contextmanager
def run_flask(repository: Path, workdir: Path, timeout_s: float = 180.0) -> Iterator[Server]:
    port = free_port()
    args = [
        sys.executable,
        str(ROOT / "bench" / "flask_peer.py"),
        "--repository",
        str(repository),
        "--port",
        str(port),
        "--threads",
        "8",
    ]
    log_path = workdir / "flask.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not http_ok(f"http://127.0.0.1:{port}/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise PeerUnavailable(f"flask peer did not start; log tail:\n{tail}")
            time.sleep(0.3)
        roles = {"flask": [process.pid]}
        yield Server("flask", f"http://127.0.0.1:{port}", lambda: roles)
    finally:
        stop_process(process)


# ---------------------------------------------------------------------------------------------- figures


@dataclass
class Figures:
    throughput: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms: dict[str, float] = field(default_factory=dict)
    """CPU time per request by server process role, ms."""
    client_cpu_ms: float = 0.0

    @property
    def server_total_ms(self) -> float:
        return sum(self.server_cpu_ms.values())


def median_figures(runs: list[Figures]) -> Figures:
    roles = runs[0].server_cpu_ms.keys()
    return Figures(
        statistics.median(r.throughput for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        {role: statistics.median(r.server_cpu_ms[role] for r in runs) for role in roles},
        statistics.median(r.client_cpu_ms for r in runs),
    )


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# ------------------------------------------------------------------------------------------ compute bound


def reference_output(wl: Workload, module: Any) -> NDArray[Any]:
    inputs = wl.inputs()
    if not wl.is_mlp:
        total: NDArray[Any] = inputs["INPUT0"] + inputs["INPUT1"]
        return total
    with torch.inference_mode():
        out: NDArray[Any] = np.asarray(module(torch.from_numpy(inputs["INPUT__0"])).numpy())
    return out


class ComputeBound:
    """The model called back to back in this process, loaded once per workload."""

    def __init__(self, wl: Workload, mesh_repo: Path) -> None:
        self.wl = wl
        self.module: Any = None
        self.backend: Any = None
        if wl.is_mlp:
            self.module = torch.jit.load(str(mesh_repo / wl.name / "1" / "model.pt")).eval()
        else:  # `simple` through the python backend the worker uses
            model_dir = mesh_repo / wl.name
            config = load_config(model_dir)
            self.backend = create_python_backend()
            self.backend.load(
                LoadContext(wl.name, 1, model_dir, config, config_to_json(config), f"{wl.name}_0")
            )

    def rows_per_s(self, batch: int, min_s: float) -> float:
        """Rows/s at `batch` rows per call (`simple`: `batch` one-row requests per execute)."""
        if self.module is not None:
            module = self.module
            x = torch.from_numpy(
                np.random.default_rng(2).standard_normal((batch, self.wl.width), dtype=np.float32)
            )

            def call() -> None:
                with torch.inference_mode():
                    module(x)

        else:
            backend = self.backend
            requests = [Request(request_id="", inputs=self.wl.inputs(), batch_size=1) for _ in range(batch)]

            def call() -> None:
                backend.execute(requests)

        for _ in range(3):
            call()
        calls = 0
        start = time.perf_counter()
        while calls < 5 or time.perf_counter() - start < min_s:
            call()
            calls += 1
        return calls * batch / (time.perf_counter() - start)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.unload()
        self.module = self.backend = None
        gc.collect()


# ------------------------------------------------------------------------------------------------- load


async def run_load(
    one: Callable[[], Any],
    requests: int,
    in_flight: int,
    warmup: int,
    server: Server,
) -> Figures:
    """`in_flight` coroutines issue `requests` calls of `one` between them; CPU is read around the timed part."""
    latencies: list[float] = []
    remaining = 0

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - t0)

    remaining = warmup
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    latencies.clear()
    remaining = requests
    before, client_before = server.cpu(), time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    wall = time.perf_counter() - start
    after, client_after = server.cpu(), time.process_time()
    ordered = sorted(latencies)
    return Figures(
        throughput=len(ordered) / wall,
        p50_ms=statistics.median(ordered) * 1e3,
        p99_ms=percentile(ordered, 0.99) * 1e3,
        server_cpu_ms={role: (after[role] - before[role]) / requests * 1e3 for role in after},
        client_cpu_ms=(client_after - client_before) / requests * 1e3,
    )


def check_output(got: NDArray[Any], expected: NDArray[Any], peer: str) -> None:
    got = np.asarray(got, dtype=expected.dtype).reshape(expected.shape)
    if not np.allclose(got, expected, rtol=1e-3, atol=1e-3):
        raise AssertionError(f"{peer}: wrong output (max abs diff {np.max(np.abs(got - expected))})")


async def grpc_load(
    server: Server, wl: Workload, expected: NDArray[Any], requests: int, in_flight: int, warmup: int
) -> Figures:
    import tritonclient.grpc.aio as grpcaio

    client = grpcaio.InferenceServerClient(server.url)
    inputs = []
    for name, array in wl.inputs().items():
        tensor = grpcaio.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [grpcaio.InferRequestedOutput(wl.output_name())]
    try:
        result = await client.infer(wl.name, inputs, outputs=outputs, client_timeout=CLIENT_TIMEOUT_S)
        check_output(result.as_numpy(wl.output_name()), expected, server.name)

        async def one() -> None:
            await client.infer(wl.name, inputs, outputs=outputs, client_timeout=CLIENT_TIMEOUT_S)

        return await run_load(one, requests, in_flight, warmup, server)
    finally:
        await client.close()


async def flask_load(
    server: Server, wl: Workload, expected: NDArray[Any], requests: int, in_flight: int, warmup: int
) -> Figures:
    import aiohttp

    x = wl.inputs()
    data = x["INPUT__0"][0].tolist() if wl.is_mlp else [x["INPUT0"][0].tolist(), x["INPUT1"][0].tolist()]
    body = json.dumps({"data": data}).encode()  # built once, as tritonclient's inputs are
    headers = {"Content-Type": "application/json"}
    url = f"{server.url}/{wl.name}"
    connector = aiohttp.TCPConnector(limit=in_flight)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with session.post(url, data=body, headers=headers) as response:
            response.raise_for_status()
            out = (await response.json())["output"]
        check_output(np.asarray(out if wl.is_mlp else out[0]), expected, server.name)

        async def one() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                response.raise_for_status()
                await response.read()  # not decoded: the client's JSON work is not the server's

        return await run_load(one, requests, in_flight, warmup, server)


def measure(server: Server, wl: Workload, expected: NDArray[Any], requests: int, in_flight: int) -> Figures:
    warmup = max(in_flight, 5) if wl.name == "mlp_large" else max(2 * in_flight, 20)
    load = flask_load if server.name == "flask" else grpc_load
    return asyncio.run(load(server, wl, expected, requests, in_flight, warmup))


# ----------------------------------------------------------------------------------------------- report


@dataclass
class Results:
    compute: dict[str, dict[int, float]] = field(default_factory=dict)
    """workload -> batch size -> rows/s, the best of its runs (noise only ever slows it down)."""
    compute_median: dict[str, dict[int, float]] = field(default_factory=dict)
    figures: dict[tuple[str, int, str], Figures] = field(default_factory=dict)
    """(workload, in flight, peer) -> median figures."""
    errors: dict[tuple[str, int, str], str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    steal: float = 0.0
    """Share of the machine's CPU time the hypervisor stole during the run."""


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def ratio(a: Figures | None, b: Figures | None) -> float | None:
    return a.throughput / b.throughput if a and b and b.throughput else None


def report(results: Results, workloads: list[str], peers: list[str], args: argparse.Namespace) -> str:
    lines = []
    for peer, why in results.unavailable.items():
        first = why.strip().splitlines()[0] if why.strip() else why
        lines += [f"**{PEER_LABEL[peer]} could not be run**: {first}", ""]
    lines += [
        "Compute bound — the model called in-process back to back (this process, "
        f"{torch.get_num_threads()} torch threads, as in each server), taking its turn with the servers at "
        "every measurement; rows/s, the best of its runs (noise only slows it down), median in brackets:",
        "",
        "| workload | batch 1 | batch 8 | batch 64 | best |",
        "|---|---|---|---|---|",
    ]
    for name in workloads:
        best, median = results.compute.get(name, {}), results.compute_median.get(name, {})
        if best:
            batch_cells = " | ".join(f"{best[b]:,.0f} ({median[b]:,.0f})" for b in BATCH_SIZES)
            lines.append(f"| {name} | {batch_cells} | {max(best.values()):,.0f} |")
    lines += [
        "",
        "Served, one row per request (server CPU: all its processes, per request; client CPU: the load "
        "generator's):",
        "",
        "| workload | in flight | peer | req/s | p50 ms | p99 ms | server CPU ms/req | client CPU ms/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in workloads:
        for n in IN_FLIGHT:
            for peer in peers:
                key = (name, n, peer)
                if peer in results.unavailable:
                    continue
                if key in results.errors:
                    lines.append(
                        f"| {name} | {n} | {PEER_LABEL[peer]} | failed: {results.errors[key]} | | | | |"
                    )
                    continue
                f = results.figures.get(key)
                if f is None:
                    continue
                lines.append(
                    f"| {name} | {n} | {PEER_LABEL[peer]} | {f.throughput:,.0f} | {f.p50_ms:.2f} | "
                    f"{f.p99_ms:.2f} | {f.server_total_ms:.3f} | {f.client_cpu_ms:.3f} |"
                )
    # CPU per request by process
    lines += ["", "Server CPU time per request (ms) by process:", ""]
    mesh_roles = sorted(
        {role for (_, _, p), f in results.figures.items() if p == "meshserve" for role in f.server_cpu_ms}
    )
    header = ["workload", "in flight", *[f"mesh {r}" for r in mesh_roles], "mesh total"]
    if "triton" in peers and "triton" not in results.unavailable:
        header += ["tritonserver", "python stubs", "Triton total", "mesh / Triton"]
    if "flask" in peers and "flask" not in results.unavailable:
        header += ["Flask"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in workloads:
        for n in IN_FLIGHT:
            mesh = results.figures.get((name, n, "meshserve"))
            triton = results.figures.get((name, n, "triton"))
            flask = results.figures.get((name, n, "flask"))
            if not (mesh or triton or flask):
                continue
            cells = [name, str(n)]
            cells += [fmt(mesh.server_cpu_ms.get(r) if mesh else None, ".3f") for r in mesh_roles]
            cells.append(fmt(mesh.server_total_ms if mesh else None, ".3f"))
            if "triton" in peers and "triton" not in results.unavailable:
                cells += [
                    fmt(triton.server_cpu_ms.get("tritonserver") if triton else None, ".3f"),
                    fmt(triton.server_cpu_ms.get("python stubs") if triton else None, ".3f"),
                    fmt(triton.server_total_ms if triton else None, ".3f"),
                    fmt(
                        mesh.server_total_ms / triton.server_total_ms
                        if mesh and triton and triton.server_total_ms
                        else None,
                        ".2f",
                        "x",
                    ),
                ]
            if "flask" in peers and "flask" not in results.unavailable:
                cells.append(fmt(flask.server_total_ms if flask else None, ".3f"))
            lines.append("| " + " | ".join(cells) + " |")
    # ratios
    lines += [
        "",
        "Ratios (meshserve / peer, throughput; p50 difference in ms):",
        "",
        "| workload | in flight | mesh / Triton req/s | mesh / Flask req/s | mesh / compute bound | "
        "mesh p50 - Triton p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name in workloads:
        bound = max(results.compute[name].values()) if results.compute.get(name) else None
        for n in IN_FLIGHT:
            mesh = results.figures.get((name, n, "meshserve"))
            triton = results.figures.get((name, n, "triton"))
            flask = results.figures.get((name, n, "flask"))
            if mesh is None:
                continue
            lines.append(
                f"| {name} | {n} | {fmt(ratio(mesh, triton), '.2f', 'x')} | {fmt(ratio(mesh, flask), '.2f', 'x')} | "
                f"{fmt(mesh.throughput / bound if bound else None, '.2f', 'x')} | "
                f"{fmt(mesh.p50_ms - triton.p50_ms if triton else None, '+.2f')} |"
            )
    lines += ["", *targets(results), ""]
    lines.append(machine_line(results, args))
    return "\n".join(lines)


def targets(results: Results) -> list[str]:
    def get(name: str, n: int, peer: str) -> Figures | None:
        return results.figures.get((name, n, peer))

    rows: list[tuple[str, str, str, bool | None]] = []
    mesh, triton, flask = get("mlp", 64, "meshserve"), get("mlp", 64, "triton"), get("mlp", 64, "flask")
    r = ratio(mesh, triton)
    rows.append(
        (
            "mlp, 64 in flight: mesh / Triton req/s",
            "≥ 1.0x",
            fmt(r, ".2f", "x"),
            None if r is None else r >= 1.0,
        )
    )
    r = ratio(mesh, flask)
    rows.append(
        ("mlp, 64 in flight: mesh / Flask req/s", "≥ 8x", fmt(r, ".2f", "x"), None if r is None else r >= 8.0)
    )
    large = get("mlp_large", 64, "meshserve")
    bound = max(results.compute["mlp_large"].values()) if results.compute.get("mlp_large") else None
    r = large.throughput / bound if large and bound else None
    rows.append(
        (
            "mlp_large, 64 in flight: mesh req/s / compute bound rows/s",
            "≥ 0.9x",
            fmt(r, ".2f", "x"),
            None if r is None else r >= 0.9,
        )
    )
    m1, t1 = get("simple", 1, "meshserve"), get("simple", 1, "triton")
    d = m1.p50_ms - t1.p50_ms if m1 and t1 else None
    rows.append(
        (
            "simple, 1 in flight: mesh p50 - Triton p50",
            "≤ +1 ms",
            "n/a"
            if d is None or m1 is None or t1 is None
            else f"{d:+.2f} ms ({m1.p50_ms:.2f} vs {t1.p50_ms:.2f})",
            None if d is None else d <= 1.0,
        )
    )
    for name, n in (("simple", 1), ("mlp", 64), ("mlp_large", 64)):
        m, t = get(name, n, "meshserve"), get(name, n, "triton")
        r = m.server_total_ms / t.server_total_ms if m and t and t.server_total_ms else None
        rows.append(
            (
                f"{name}, {n} in flight: mesh CPU / Triton CPU per request",
                "≤ 2x",
                fmt(r, ".2f", "x"),
                None if r is None else r <= 2.0,
            )
        )
    lines = ["Targets (batching issue):", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for what, goal, value, met in rows:
        lines.append(f"| {what} | {goal} | {value} | {'n/a' if met is None else ('yes' if met else 'no')} |")
    return lines


def machine_line(results: Results, args: argparse.Namespace) -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(f"{PEER_LABEL[p].split(' (')[0]} {v}" for p, v in results.versions.items() if v)
    if results.versions.get("triton"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions += f" (tritonserver of nvidia-pytriton {importlib.metadata.version('nvidia-pytriton')})"
    return (
        f"Machine: {platform.platform()}, {os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}"
        f"{'; ' + versions if versions else ''}; CPU steal during the run {results.steal:.0%}. Median of {args.repeats} runs per figure; requests per "
        f"measurement: {', '.join(f'{w} {REQUESTS[w]}' for w in args.workload_list)}"
        f"{' divided by 5 (--quick)' if args.quick else ''}. The load generator (this script: "
        "tritonclient.grpc.aio / aiohttp, one process, one asyncio loop) shares the 2 cores with the servers; "
        "its own CPU per request is in the table. All servers stay up for the whole run and take turns."
    )


# ------------------------------------------------------------------------------------------------- main


def requests_for(name: str, n: int, quick: bool) -> int:
    count = REQUESTS[name][n]
    return max(2 * n, count // 5) if quick else count


def run(args: argparse.Namespace) -> Results:
    results = Results()
    workloads: list[str] = args.workload_list
    peers: list[str] = args.peer_list
    min_s = 0.2 if args.quick else 0.5
    steal_before, total_before = cpu_jiffies()
    with tempfile.TemporaryDirectory(prefix="meshserve-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        print(f"building models {', '.join(workloads)} in {workdir} ...", flush=True)
        mesh_repo, triton_repo = build_repositories(workdir, workloads)
        servers: dict[str, Server] = {}
        starters = {
            "meshserve": lambda: run_meshserve(mesh_repo, workdir),
            "triton": lambda: run_triton(triton_repo, workdir),
            "flask": lambda: run_flask(mesh_repo, workdir),
        }
        for peer in peers:
            print(f"starting {PEER_LABEL[peer]} ...", flush=True)
            try:
                servers[peer] = stack.enter_context(starters[peer]())
                results.versions[peer] = servers[peer].version
            except (PeerUnavailable, RuntimeError, OSError) as exc:
                results.unavailable[peer] = str(exc)
                print(f"!! {PEER_LABEL[peer]} could not be run: {exc}", flush=True)
        for name in workloads:
            wl = workload(name)
            bound = ComputeBound(wl, mesh_repo)
            expected = reference_output(wl, bound.module)
            samples: dict[int, list[float]] = {batch: [] for batch in BATCH_SIZES}
            for n in IN_FLIGHT:
                runs: dict[str, list[Figures]] = {peer: [] for peer in servers}
                order = ["in-process", *servers]
                for repeat in range(args.repeats):
                    shift = repeat % len(order)
                    for peer in order[shift:] + order[:shift]:  # take turns: drift hits every peer alike
                        if peer == "in-process":
                            for batch in BATCH_SIZES:
                                samples[batch].append(bound.rows_per_s(batch, min_s))
                            continue
                        if (name, n, peer) in results.errors:
                            continue
                        try:
                            figures = measure(
                                servers[peer], wl, expected, requests_for(name, n, args.quick), n
                            )
                        except Exception as exc:
                            results.errors[(name, n, peer)] = f"{type(exc).__name__}: {exc}"[:300]
                            print(f"!! {name} {n} in flight {peer}: {exc}", flush=True)
                            continue
                        runs[peer].append(figures)
                        print(
                            f"{name:9} {n:2} in flight  {peer:9}  {figures.throughput:8,.0f} req/s  "
                            f"p50 {figures.p50_ms:7.2f} ms  p99 {figures.p99_ms:7.2f} ms  "
                            f"server CPU {figures.server_total_ms:.3f} ms/req",
                            flush=True,
                        )
                for peer, peer_runs in runs.items():
                    if peer_runs and (name, n, peer) not in results.errors:
                        results.figures[(name, n, peer)] = median_figures(peer_runs)
            bound.close()
            results.compute[name] = {batch: max(values) for batch, values in samples.items()}
            results.compute_median[name] = {
                batch: statistics.median(values) for batch, values in samples.items()
            }
            print(
                f"{name}: compute bound, rows/s by batch: best {results.compute[name]}, "
                f"median {results.compute_median[name]}",
                flush=True,
            )
    steal_after, total_after = cpu_jiffies()
    results.steal = (steal_after - steal_before) / max(1, total_after - total_before)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated: simple,mlp,mlp_large"
    )
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated: meshserve,triton,flask")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per figure, median reported (default 3)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads for every peer and the compute bound (OMP_NUM_THREADS in the servers); "
        "0 (default): torch's default, one per core",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run: 1/5 of the requests, 1 repeat"
    )
    parser.add_argument(
        "--write", type=Path, default=None, help="append the report under a heading to this file"
    )
    args = parser.parse_args()
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.peer_list = [p.strip() for p in args.peers.split(",") if p.strip()]
    for name in args.workload_list:
        workload(name)  # validates
    unknown = [p for p in args.peer_list if p not in PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {', '.join(PEERS)}")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.threads > 0:  # inherited by the mesh's workers, Triton's python stubs and the Flask process
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    results = run(args)
    text = report(results, args.workload_list, args.peer_list, args)
    print()
    print(text)
    print(f"\n(run took {time.monotonic() - started:.0f} s)")
    if args.write is not None:
        command = "python bench/batching.py " + " ".join(sys.argv[1:])
        with args.write.open("a") as out:
            out.write(f"\n### `{command.strip()}` — {time.strftime('%Y-%m-%d')}\n\n{text}\n")


if __name__ == "__main__":
    main()
