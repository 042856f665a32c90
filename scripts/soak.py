"""Soak: the whole mesh (`meshserve up` on the example repository) under moderate steady load for
``--minutes``, sampling the resident memory (VmRSS) of every process every ``--sample-secs``.

Not part of CI.  Prints one row per process (RSS after warm-up, at the end, the largest, the change)
and the account of every request (succeeded / failed clearly / lost), and writes them as JSON.

    python scripts/soak.py --minutes 10 --out soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tritonclient.grpc.aio as grpcaio  # noqa: E402
import tritonclient.http.aio as httpaio  # noqa: E402

from meshserve.harness import Mesh, build_repository, start_mesh  # noqa: E402
from tests.faults.load import Load, Tally, simple_call  # noqa: E402
from tests.faults.procs import rss_kib  # noqa: E402

DEADLINE_S = 10.0


async def linear_torch(client: grpcaio.InferenceServerClient) -> Any:
    """A dynamically batched TorchScript model."""
    x = np.random.rand(1, 16).astype(np.float32)
    tensor = grpcaio.InferInput("INPUT__0", [1, 16], "FP32")
    tensor.set_data_from_numpy(x)
    return await client.infer("linear_torch", [tensor])


async def stream_once(client: grpcaio.InferenceServerClient) -> Any:
    """One decoupled request (repeat_int32, 4 responses) on a gRPC stream."""
    inputs = [grpcaio.InferInput("IN", [4], "INT32"), grpcaio.InferInput("DELAY", [4], "UINT32"),
              grpcaio.InferInput("WAIT", [1], "UINT32")]  # fmt: skip
    inputs[0].set_data_from_numpy(np.arange(4, dtype=np.int32))
    inputs[1].set_data_from_numpy(np.full(4, 5, np.uint32))
    inputs[2].set_data_from_numpy(np.zeros(1, np.uint32))

    async def requests() -> Any:
        yield {"model_name": "repeat_int32", "inputs": inputs}

    got = 0
    async for _result, error in client.stream_infer(requests()):
        if error is not None:
            raise error
        got += 1
        if got == 4:
            break
    return got


async def http_simple(url: str, stop: asyncio.Event, tally: Tally) -> None:
    """HTTP/JSON `simple` in a loop, accounted like the gRPC loads."""
    client = httpaio.InferenceServerClient(url)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    try:
        while not stop.is_set():
            inputs = [
                httpaio.InferInput("INPUT0", [1, 16], "INT32"),
                httpaio.InferInput("INPUT1", [1, 16], "INT32"),
            ]
            inputs[0].set_data_from_numpy(a, binary_data=False)
            inputs[1].set_data_from_numpy(a, binary_data=False)
            tally.sent += 1
            try:
                result = await asyncio.wait_for(client.infer("simple", inputs), DEADLINE_S + 5)
                if np.array_equal(result.as_numpy("OUTPUT0"), 2 * a):
                    tally.ok += 1
                else:
                    tally.unclear.append("wrong answer")
            except TimeoutError:
                tally.lost += 1
            except Exception as exc:
                tally.unclear.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.02)
    finally:
        await client.close()


def sample(pids: dict[str, int]) -> dict[str, int]:
    return {role: rss_kib(pid) for role, pid in pids.items()}


async def soak(mesh: Mesh, minutes: float, sample_s: float, warmup_s: float) -> dict[str, Any]:
    call, check = simple_call()
    loads = {
        "grpc simple": Load(mesh.grpc_url, call, check=check, concurrency=3, interval_s=0.01),
        "grpc linear_torch": Load(mesh.grpc_url, linear_torch, concurrency=2, interval_s=0.01),
        "grpc stream repeat_int32": Load(mesh.grpc_url, stream_once, concurrency=1, interval_s=0.05),
    }
    http_tally, stop = Tally(), asyncio.Event()
    for load in loads.values():
        load.start()
    http_task = asyncio.create_task(http_simple(mesh.http_url, stop, http_tally))
    pids = mesh.pids()
    samples: list[tuple[float, dict[str, int]]] = []
    start = time.monotonic()
    end = start + minutes * 60
    while (now := time.monotonic()) < end:
        samples.append((now - start, sample(pids)))
        print(f"{now - start:7.0f} s  " + "  ".join(f"{r}={k // 1024}M" for r, k in samples[-1][1].items()),
              flush=True)  # fmt: skip
        await asyncio.sleep(sample_s)
    samples.append((time.monotonic() - start, sample(pids)))
    tallies = {name: await load.stop() for name, load in loads.items()}
    stop.set()
    await http_task
    tallies["http simple"] = http_tally
    after_warmup = next((s for t, s in samples if t >= warmup_s), samples[0][1])
    final = samples[-1][1]
    rows = {
        role: {
            "after_warmup_kib": after_warmup[role],
            "final_kib": final[role],
            "max_kib": max(s[role] for t, s in samples if t >= warmup_s),
            "change_pct": round(100 * (final[role] - after_warmup[role]) / max(1, after_warmup[role]), 2),
        }
        for role in pids
    }
    return {
        "minutes": minutes,
        "warmup_s": warmup_s,
        "rss": rows,
        "requests": {name: _counts(t) for name, t in tallies.items()},
        "samples": [{"t_s": round(t, 1), "rss_kib": s} for t, s in samples],
    }


def _counts(tally: Tally) -> dict[str, Any]:
    return {"sent": tally.sent, "ok": tally.ok, "clear": dict(tally.clear), "unclear": len(tally.unclear),
            "lost": tally.lost}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample-secs", type=float, default=5.0)
    parser.add_argument("--warmup-secs", type=float, default=60.0, help="RSS change is measured from here")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshserve-soak-") as tmp:
        repository = build_repository(Path(tmp) / "models")
        mesh = start_mesh(repository, Path(tmp) / "mesh.log", "--request-timeout-secs", str(DEADLINE_S))
        try:
            report = asyncio.run(
                soak(mesh, args.minutes, args.sample_secs, min(args.warmup_secs, args.minutes * 30))
            )
        finally:
            code = mesh.stop()
    report["exit_code"] = code
    print(f"\n{'process':<28} {'after warm-up':>14} {'final':>10} {'max':>10} {'change':>8}")
    for role, row in report["rss"].items():
        print(f"{role:<28} {row['after_warmup_kib'] / 1024:>12.1f}M {row['final_kib'] / 1024:>9.1f}M "
              f"{row['max_kib'] / 1024:>9.1f}M {row['change_pct']:>7.2f}%")  # fmt: skip
    for name, counts in report["requests"].items():
        print(f"{name:<28} {counts}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    lost = sum(c["lost"] + c["unclear"] for c in report["requests"].values())
    return 0 if lost == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
