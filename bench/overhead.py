"""Serving overhead of the mesh on Triton's `simple` model: meshserve over gRPC vs. a direct in-process call.

    python bench/overhead.py [--requests 2000] [--repeats 3] [--write docs/benchmarks.md]

Runs, side by side in one go on this machine:
  1. the `simple` python model called in-process through the same backend the worker uses
     (1 request per execute, and 16 requests per execute);
  2. meshserve (`meshserve up`, embedded NATS) driven by tritonclient.grpc.aio at 1 and 16 requests
     in flight.
Reports p50/p99 latency, throughput and the ratios, plus the CPU time each mesh process spent per
request.  The load generator shares the machine's cores with the mesh: absolute figures drift
between runs; compare the ratios.  Each figure is the median of --repeats runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshserve.harness import Mesh, start_mesh  # noqa: E402
from meshserve.model_config import config_to_json, load_config  # noqa: E402
from workers.backends.base import LoadContext, Request  # noqa: E402
from workers.backends.python_backend import create as create_python_backend  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Figures:
    label: str
    in_flight: int
    p50_ms: float
    p99_ms: float
    throughput: float

    def row(self) -> str:
        return f"| {self.label} | {self.in_flight} | {self.p50_ms:.3f} | {self.p99_ms:.3f} | {self.throughput:,.0f} |"


def summarize(label: str, in_flight: int, latencies_s: list[float], wall_s: float) -> Figures:
    ordered = sorted(latencies_s)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Figures(label, in_flight, statistics.median(ordered) * 1e3, p99 * 1e3, len(ordered) / wall_s)


def median_figures(runs: list[Figures]) -> Figures:
    return Figures(
        runs[0].label,
        runs[0].in_flight,
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        statistics.median(r.throughput for r in runs),
    )


def in_process(repository: Path, requests: int, per_call: int) -> Figures:
    model_dir = repository / "simple"
    config = load_config(model_dir)
    backend = create_python_backend()
    backend.load(LoadContext("simple", 1, model_dir, config, config_to_json(config), "simple_0"))
    rng = np.random.default_rng(0)
    batch = [
        Request(
            request_id="",
            inputs={
                "INPUT0": rng.integers(0, 100, (1, 16), dtype=np.int32),
                "INPUT1": rng.integers(0, 100, (1, 16), dtype=np.int32),
            },
            batch_size=1,
        )
        for _ in range(per_call)
    ]
    for _ in range(50):
        backend.execute(batch)
    latencies = []
    calls = max(1, requests // per_call)
    start = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        results = backend.execute(batch)
        latencies.extend([time.perf_counter() - t0] * per_call)
        assert results[0].error is None
    wall = time.perf_counter() - start
    backend.unload()
    return summarize("in-process `simple` (python backend)", per_call, latencies, wall)


async def mesh_load(
    grpc_url: str, requests: int, in_flight: int, label: str = "meshserve gRPC `simple`"
) -> Figures:
    """``in_flight`` requests kept outstanding over up to 4 client connections (so that several
    gateways sharing the port each get some: the kernel spreads connections, not requests)."""
    import tritonclient.grpc.aio as grpcaio

    # a local subchannel pool per client: otherwise gRPC shares one TCP connection between them
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    clients = [
        grpcaio.InferenceServerClient(grpc_url, channel_args=own_connection) for _ in range(min(4, in_flight))
    ]
    rng = np.random.default_rng(0)
    a = rng.integers(0, 100, (1, 16), dtype=np.int32)
    inputs = [grpcaio.InferInput("INPUT0", [1, 16], "INT32"), grpcaio.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    latencies: list[float] = []

    async def one(client: grpcaio.InferenceServerClient) -> None:
        t0 = time.perf_counter()
        result = await client.infer("simple", inputs)
        latencies.append(time.perf_counter() - t0)
        assert result.as_numpy("OUTPUT0")[0, 0] == 2 * a[0, 0]

    async def worker(index: int, count: int) -> None:
        client = clients[index % len(clients)]
        for _ in range(count):
            await one(client)

    try:
        await asyncio.gather(*(worker(i, 50) for i in range(in_flight)))  # warm-up
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(worker(i, requests // in_flight) for i in range(in_flight)))
        wall = time.perf_counter() - start
    finally:
        for client in clients:
            await client.close()
    return summarize(label, in_flight, latencies, wall)


def _label(gateways: int) -> str:
    return f"meshserve gRPC `simple`, {gateways} gateway{'s' if gateways > 1 else ''}"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def measure_mesh(mesh: Mesh, requests: int, in_flight: int, label: str) -> tuple[Figures, dict[str, float]]:
    pids = mesh.pids()
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    figures = asyncio.run(mesh_load(mesh.grpc_url, requests, in_flight, label))
    after = {role: cpu_seconds(pid) for role, pid in pids.items()}
    # per request, including the warm-up requests (50 per in-flight slot)
    total = requests + 50 * in_flight
    cpu = {role: (after[role] - before[role]) / total * 1e3 for role in pids if role != "up"}
    return figures, cpu


def report(rows: list[Figures], cpu: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    by_key = {(r.label, r.in_flight): r for r in rows}
    direct_label = next(r.label for r in rows if not r.label.startswith("meshserve"))
    lines = [
        "| path | in flight (requests per execute, in-process) | p50 ms | p99 ms | req/s |",
        "|---|---|---|---|---|",
        *[r.row() for r in rows],
        "",
        "| ratio | value |",
        "|---|---|",
    ]
    for n in (1, 16):
        mesh, direct = by_key.get((_label(1), n)), by_key.get((direct_label, n))
        if mesh and direct:
            lines.append(
                f"| p50 latency, mesh / in-process, {n} in flight | {mesh.p50_ms / direct.p50_ms:.1f}x |"
            )
            lines.append(
                f"| throughput, mesh / in-process, {n} in flight | {mesh.throughput / direct.throughput:.3f}x |"
            )
    for gateways in args.gateways[1:]:
        one, more = by_key.get((_label(1), 16)), by_key.get((_label(gateways), 16))
        if one and more:
            lines.append(
                f"| throughput, {gateways} gateways / 1 gateway, 16 in flight | "
                f"{more.throughput / one.throughput:.2f}x |"
            )
    all_roles = sorted({role for per_role in cpu.values() for role in per_role})
    lines += [
        "",
        "CPU time per request (ms), by mesh process (`gateway#1` is the second gateway):",
        "",
        "| mesh, in flight | " + " | ".join(all_roles) + " | total |",
        "|---|" + "---|" * (len(all_roles) + 1),
    ]
    for key, per_role in cpu.items():
        lines.append(
            f"| {key} | "
            + " | ".join(f"{per_role.get(r, 0.0):.3f}" for r in all_roles)
            + f" | {sum(per_role.values()):.3f} |"
        )
    lines += [
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{args.requests} requests per measurement, median of {args.repeats} runs; the load generator "
        "(tritonclient.grpc.aio, one process) shares the cores with the mesh.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--write", type=Path, default=None, help="append the report under a heading to this file"
    )
    parser.add_argument(
        "--gateways", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2],
        help="gateway counts to compare (meshserve up --gateways N), default 1,2",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "models"  # only `simple`: no idle workers in the figures
        repository.mkdir()
        shutil.copytree(ROOT / "examples" / "model_repository" / "simple", repository / "simple")
        rows: list[Figures] = []
        for per_call in (1, 16):
            rows.append(
                median_figures([in_process(repository, args.requests, per_call) for _ in range(args.repeats)])
            )
        cpu: dict[str, dict[str, float]] = {}
        for gateways in args.gateways:
            mesh = start_mesh(repository, Path(tmp) / f"mesh-{gateways}.log", "--gateways", str(gateways))
            try:
                for in_flight in (1, 16) if gateways == 1 else (16,):
                    label = _label(gateways)
                    runs = [measure_mesh(mesh, args.requests, in_flight, label) for _ in range(args.repeats)]
                    rows.append(median_figures([f for f, _ in runs]))
                    roles = runs[0][1].keys()
                    cpu[f"{gateways} gw, {in_flight}"] = {
                        role: statistics.median(c[role] for _, c in runs) for role in roles
                    }
            finally:
                mesh.stop()
    text = report(rows, cpu, args)
    command = (
        f"python bench/overhead.py --requests {args.requests} --repeats {args.repeats} --gateways "
        + ",".join(str(g) for g in args.gateways)
    )
    print(text)
    if args.write is not None:
        with args.write.open("a") as out:
            out.write(f"\n### `{command}` — {time.strftime('%Y-%m-%d')}\n\n{text}\n")


if __name__ == "__main__":
    main()
