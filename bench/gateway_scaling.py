"""Does the front scale with gateway processes? The trivial `simple` model (Triton's example: the cost
is all serving overhead) served by `meshserve up --gateways N` for each N, driven by several client
processes so the load generator is not the ceiling; one run, ratios reported.

    python bench/gateway_scaling.py [--gateways 1,2,4] [--seconds 5] [--in-flight 64] [--clients 4]
                                    [--instances 2]

Needs idle cores to show anything: on a 2-core machine the gateways, batcher, workers, nats-server
and clients all share two cores (docs/benchmarks.md). ``--instances`` sets the `simple` model's
instance count (a copy of the example with ``count`` changed), so one worker is not the ceiling.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import client_load  # noqa: E402
from meshserve.harness import start_mesh  # noqa: E402


def drive(url: str, in_flight: int, clients: int, seconds: float) -> tuple[float, float, float]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [("INPUT0", "INT32", a), ("INPUT1", "INT32", a)]
    latencies = client_load.drive(url, "simple", inputs, in_flight, clients, seconds, warmup_s=1.5)
    return (
        len(latencies) / seconds,
        statistics.median(latencies) * 1e3,
        latencies[int(len(latencies) * 0.99)] * 1e3,
    )


def repository(root: Path, instances: int) -> Path:
    target = root / "simple"
    shutil.copytree(ROOT / "examples" / "model_repository" / "simple", target)
    config = target / "config.pbtxt"
    text = re.sub(r"instance_group\s*\[.*?\]", "", config.read_text(), flags=re.S)
    config.write_text(text + f"\ninstance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gateways", default="1,2,4")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--instances", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = repository(Path(tmp) / "models", args.instances)
        for n in (int(g) for g in args.gateways.split(",")):
            mesh = start_mesh(repo, Path(tmp) / f"mesh-{n}.log", "--gateways", str(n))
            try:
                rows.append((n, *drive(mesh.grpc_url, args.in_flight, args.clients, args.seconds)))
            finally:
                mesh.stop()
    base = rows[0][1]
    print(
        f"{os.cpu_count()} cores; `simple` with {args.instances} instances; {args.in_flight} in flight "
        f"from {args.clients} client processes; {args.seconds:.0f} s per row"
    )
    print("| gateways | req/s | vs 1 gateway | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for n, rate, p50, p99 in rows:
        print(f"| {n} | {rate:,.0f} | {rate / base:.2f}x | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
