"""Dynamic batching on a GPU instance: the same TorchScript MLP served by the mesh with and without
dynamic batching, on CUDA and on CPU, beside a direct in-process call — one run, ratios reported.

    python bench/gpu_batching.py [--seconds 6] [--in-flight 64] [--clients 4] [--gateways 2]

Needs a CUDA device (torch.cuda.is_available()); ``scripts/gpu_check.sh`` runs it on a GPU machine.
Rows:
  direct cuda b=1 / b=64    the model called in this process, one request per call / 64 rows per call
  mesh cuda batched         KIND_GPU instance, dynamic_batching (preferred 64, 2 ms delay)
  mesh cuda unbatched       KIND_GPU instance, max_batch_size 64 but no dynamic_batching (Triton: one
                            request per execution)
  mesh cpu batched          KIND_CPU instance, same batching
Load: ``--clients`` processes, each with ``--in-flight / --clients`` tritonclient.grpc.aio requests in
flight, for ``--seconds`` after a 2 s warm-up. Each request is one row of ``--features`` floats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import client_load  # noqa: E402
from meshserve.harness import start_mesh  # noqa: E402


@dataclass
class Row:
    label: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    batches: int = 0
    requests: int = 0

    def line(self, base: float) -> str:
        rows_per_batch = f"{self.requests / self.batches:.1f}" if self.batches else "-"
        return (
            f"| {self.label} | {self.requests_per_s:,.0f} | {self.requests_per_s / base:.2f}x "
            f"| {self.p50_ms:.2f} | {self.p99_ms:.2f} | {rows_per_batch} |"
        )


class Mlp(torch.nn.Module):
    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(features, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.GELU(),
            torch.nn.Linear(hidden, features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def config(name: str, features: int, kind: str, batching: bool) -> str:
    dynamic = "dynamic_batching { preferred_batch_size: [ 64 ] max_queue_delay_microseconds: 2000 }"
    return f"""
name: "{name}"
backend: "pytorch"
max_batch_size: 64
input [ {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ {features} ] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ {features} ] }} ]
instance_group [ {{ count: 1 kind: {kind} }} ]
{dynamic if batching else ""}
"""


VARIANTS = {
    "mlp_cuda_batched": ("KIND_GPU", True),
    "mlp_cuda_unbatched": ("KIND_GPU", False),
    "mlp_cpu_batched": ("KIND_CPU", True),
}


def build_repository(root: Path, features: int, hidden: int) -> Path:
    torch.manual_seed(0)
    scripted = torch.jit.script(Mlp(features, hidden).eval())
    for name, (kind, batching) in VARIANTS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config(name, features, kind, batching))
        scripted.save(str(root / name / "1" / "model.pt"))
    return root


def direct(features: int, hidden: int, rows: int, seconds: float) -> Row:
    torch.manual_seed(0)
    model = torch.jit.script(Mlp(features, hidden).eval()).cuda()
    x = np.random.default_rng(0).standard_normal((rows, features)).astype(np.float32)
    latencies: list[float] = []
    with torch.inference_mode():
        for _ in range(20):
            model(torch.from_numpy(x).cuda()).cpu()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            model(torch.from_numpy(x).cuda()).cpu().numpy()
            latencies.append(time.perf_counter() - t0)
    ordered = sorted(latencies)
    return Row(
        f"direct cuda b={rows}",
        len(ordered) * rows / sum(ordered),
        statistics.median(ordered) * 1e3,
        ordered[int(len(ordered) * 0.99)] * 1e3,
    )


def drive(url: str, model: str, features: int, in_flight: int, clients: int, seconds: float) -> Row:
    data = np.random.default_rng(1).standard_normal((1, features)).astype(np.float32)
    ordered = client_load.drive(url, model, [("INPUT__0", "FP32", data)], in_flight, clients, seconds)
    return Row(
        model,
        len(ordered) / seconds,
        statistics.median(ordered) * 1e3,
        ordered[int(len(ordered) * 0.99)] * 1e3,
    )


def batch_counts(url: str, model: str) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(model, as_json=True)
    entry = stats["model_stats"][0]
    return int(entry.get("execution_count", 0)), int(entry.get("inference_count", 0))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA: torch.cuda.is_available() is False")

    rows = [
        direct(args.features, args.hidden, 1, args.seconds),
        direct(args.features, args.hidden, 64, args.seconds),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        repo = build_repository(Path(tmp) / "models", args.features, args.hidden)
        mesh = start_mesh(repo, Path(tmp) / "mesh.log", "--gateways", str(args.gateways))
        try:
            for model in VARIANTS:
                row = drive(mesh.grpc_url, model, args.features, args.in_flight, args.clients, args.seconds)
                row.batches, row.requests = batch_counts(mesh.grpc_url, model)
                rows.append(row)
        finally:
            mesh.stop()
    base = next(r for r in rows if r.label == "mlp_cuda_unbatched").requests_per_s
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; {args.in_flight} in flight")
    print("| path | req/s | vs mesh cuda unbatched | p50 ms | p99 ms | rows per execution |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row.line(base))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
