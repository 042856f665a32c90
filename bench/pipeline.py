"""Sharded language model: one stage (the whole model in one worker process) vs the mesh with 2 and 4
stages, at 1, 4 and 16 concurrent streams.

    python bench/pipeline.py [--size bench] [--max-tokens 32] [--rounds 2] [--write docs/benchmarks.md]

Builds the example model (examples/make_llm.py, once, into --work), serves it with ``meshserve up`` at
each stage count, and drives HTTP ``/v2/models/llm/generate_stream`` (greedy, ``ignore_eos`` so every
stream produces exactly --max-tokens tokens) from --concurrency clients, each running --rounds requests
back to back.  Reports output tokens/s, time to first token (TTFT) and inter-token latency (ITL)
percentiles, each stage's peak RSS against the checkpoint, and from the stages' own metrics the mean
stage time per step, hop time and micro-batch size that the throughput formula in docs/benchmarks.md
uses.  Stages of one machine share its cores: absolute figures drift with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshserve.harness import Mesh, start_mesh  # noqa: E402
from tests.llm_repo import make_llm_module  # noqa: E402

PROMPT = "The gateway sends each request to the batcher, which hands a batch to a worker"


@dataclass
class Run:
    stages: int
    concurrency: int
    tokens: int = 0
    wall_s: float = 0.0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    errors: int = 0
    stage_stats: list[dict[str, float]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


async def one_stream(session: aiohttp.ClientSession, url: str, max_tokens: int, run: Run) -> None:
    body = {"text_input": PROMPT, "max_tokens": max_tokens, "ignore_eos": True}
    t0 = time.perf_counter()
    last = t0
    first = True
    async with session.post(url, json=body) as resp:
        if resp.status != 200:
            run.errors += 1
            return
        async for raw in resp.content:
            if not raw.startswith(b"data: "):
                continue
            event = json.loads(raw[6:])
            if "error" in event:
                run.errors += 1
                return
            now = time.perf_counter()
            if event.get("text_output"):
                if first:
                    run.ttft.append(now - t0)
                    first = False
                else:
                    run.itl.append(now - last)
                last = now
            if "completion_tokens" in event:
                run.tokens += int(event["completion_tokens"])


async def drive(mesh: Mesh, concurrency: int, rounds: int, max_tokens: int, run: Run) -> None:
    url = f"http://{mesh.http_url}/v2/models/llm/generate_stream"
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client() -> None:
            for _ in range(rounds):
                await one_stream(session, url, max_tokens, run)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        run.wall_s = time.perf_counter() - t0


def stage_processes(mesh: Mesh) -> dict[int, int]:
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == mesh.process.pid and b"--stage" in args:
            found[int(args[args.index(b"--stage") + 1])] = int(entry.name)
    return found


def rss(pid: int) -> tuple[int, int]:
    """(current, peak) resident bytes."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def stage_metrics(mesh: Mesh) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for line in mesh.log().splitlines():
        if "'stage':" in line and "'metrics': 'http" in line:
            stage = int(line.split("'stage': ")[1].split(",")[0])
            url = line.split("'metrics': '")[1].split("'")[0]
            values: dict[str, float] = {}
            with urllib.request.urlopen(url, timeout=10) as resp:
                for m in resp.read().decode().splitlines():
                    if m.startswith("meshserve_llm_"):
                        name = m.split("{")[0].removeprefix("meshserve_llm_")
                        values[name] = float(m.rsplit(" ", 1)[1])
            out[stage] = values
    return out


def prepare(
    work: Path, size: str, stages: int, cpu_threads: int = 0, microbatches: int = 0
) -> tuple[Path, Path]:
    """One checkpoint for all stage counts; a repository per stage count links to it."""
    make = make_llm_module()
    base = work / f"{size}-checkpoint"
    if not (base / "llm" / "1" / "config.json").is_file():
        make.make(base, stages=1, size=size)
    repo = work / f"{size}-{stages}stages"
    (repo / "llm").mkdir(parents=True, exist_ok=True)
    link = repo / "llm" / "1"
    if not link.exists():
        link.symlink_to(base / "llm" / "1")
    context = make.SIZES[size]["context"]
    text = make.config_pbtxt(stages, context)
    if cpu_threads:
        text += f'parameters {{ key: "cpu_threads", value: {{ string_value: "{cpu_threads}" }} }}\n'
    if microbatches:
        text += f'parameters {{ key: "microbatches", value: {{ string_value: "{microbatches}" }} }}\n'
    (repo / "llm" / "config.pbtxt").write_text(text)
    return repo, base / "llm" / "1"


def checkpoint_bytes(ckpt: Path) -> int:
    return sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="bench")
    p.add_argument("--stages", default="1,2,4")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--work", type=Path, default=Path("/tmp/meshserve-bench-pipeline"))
    p.add_argument("--cpu-threads", type=int, default=0, help="torch threads per stage (0 = cores / stages)")
    p.add_argument("--microbatches", type=int, default=0, help="micro-batches in flight (0 = one per stage)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = p.parse_args()
    results: list[dict[str, Any]] = []
    for n in [int(x) for x in args.stages.split(",")]:
        repo, ckpt = prepare(args.work, args.size, n, args.cpu_threads, args.microbatches)
        mesh = start_mesh(repo, args.work / f"mesh-{n}.log", "--request-timeout-secs", "600", timeout_s=600)
        try:
            time.sleep(2)
            asyncio.run(drive(mesh, 1, 1, 4, Run(n, 1)))  # warm-up
            for c in [int(x) for x in args.concurrency.split(",")]:
                before = stage_metrics(mesh)
                run = Run(n, c)
                asyncio.run(drive(mesh, c, args.rounds, args.max_tokens, run))
                after = stage_metrics(mesh)
                deltas = []
                for k in sorted(after):
                    d = {key: after[k][key] - before.get(k, {}).get(key, 0.0) for key in after[k]}
                    steps = max(1.0, d.get("steps", 0))
                    deltas.append(
                        {
                            "stage": k,
                            "steps": d.get("steps", 0),
                            "stage_ms_per_step": 1e3 * d.get("compute_seconds", 0) / steps,
                            "seqs_per_step": d.get("step_sequences", 0) / steps,
                            "hop_ms": 1e3 * d.get("hop_seconds", 0) / max(1.0, d.get("hops", 0)),
                            "busy_fraction": d.get("compute_seconds", 0) / run.wall_s,
                        }
                    )
                row = {
                    "stages": n, "concurrency": c, "microbatches": args.microbatches or n, "tokens": run.tokens, "wall_s": run.wall_s,
                    "tokens_per_s": run.tokens_per_s, "errors": run.errors,
                    "ttft_p50_ms": 1e3 * pct(run.ttft, 50), "ttft_p99_ms": 1e3 * pct(run.ttft, 99),
                    "itl_p50_ms": 1e3 * pct(run.itl, 50), "itl_p99_ms": 1e3 * pct(run.itl, 99),
                    "stage_stats": deltas,
                }  # fmt: skip
                results.append(row)
                print(json.dumps(row), flush=True)
            procs = stage_processes(mesh)
            total = checkpoint_bytes(ckpt)
            for k, pid in sorted(procs.items()):
                cur, peak = rss(pid)
                layers = next(
                    (json.loads(line.split("ready ", 1)[1].replace("'", '"'))["layers"] for line in mesh.log().splitlines() if f"'stage': {k}," in line and "ready {" in line),
                    None,
                )  # fmt: skip
                row = {"stages": n, "stage": k, "layers": layers, "rss_bytes": cur, "peak_rss_bytes": peak, "checkpoint_bytes": total, "share_bytes": total / n}  # fmt: skip
                results.append(row)
                print(json.dumps(row), flush=True)
        finally:
            mesh.stop()
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
