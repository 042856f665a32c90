"""``meshserve bench``: flags (perf_analyzer's names where they fit) → a ``BenchSettings``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from meshserve.loadtool.inputs import InputError, parse_shapes
from meshserve.loadtool.ranges import RangeError, parse_concurrency_range, parse_rate_range
from meshserve.loadtool.schedule import Distribution
from meshserve.loadtool.transport import strip_scheme

__all__ = ["BenchSettings", "add_bench_parser", "main", "settings_from_args"]

DEFAULT_URL = {"http": "localhost:8000", "grpc": "localhost:8001"}


@dataclass(frozen=True)
class BenchSettings:
    model: str
    version: str
    url: str
    protocol: Literal["grpc", "http"]
    batch_size: int
    mode: Literal["concurrency", "rate"]
    levels: tuple[float, ...]
    distribution: Distribution
    measurement_interval_ms: int
    request_count: int | None
    warmup_secs: float
    warmup_request_count: int
    input_data: str
    shapes: dict[str, tuple[int, ...]]
    string_length: int
    csv_file: Path | None
    output_dir: Path | None
    processes: int
    max_inflight: int
    client_timeout_s: float
    max_step_secs: float
    wait_ready_secs: float
    seed: int
    progress: bool
    server_stats: bool
    endpoint: Literal["infer", "generate", "openai"]
    prompt_tokens: int
    output_tokens: int

    @property
    def llm(self) -> bool:
        return self.endpoint != "infer"

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items() if k != "shapes"
        } | {"shapes": {k: list(v) for k, v in self.shapes.items()}}


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "bench",
        help="load-test a meshserve or Triton server (perf_analyzer / genai-perf style)",
        description="Load-test a KServe v2 server (meshserve or Triton): a concurrency or request-rate "
        "sweep, client latency percentiles, the server's queue/compute breakdown, CSV/JSON/PNG reports.",
    )
    p.add_argument("-m", "--model-name", required=True, help="model to load")
    p.add_argument("-x", "--model-version", default="", help="model version (default: the server's choice)")
    p.add_argument("-u", "--url", default=None, help="host:port (default localhost:8000 http, :8001 grpc)")
    p.add_argument("-i", "--protocol", choices=("grpc", "http"), default="http", help="default %(default)s")
    p.add_argument("-b", "--batch-size", type=int, default=1, help="rows per request (default %(default)s)")
    p.add_argument("--concurrency-range", default=None, help="start:end:step requests in flight (default 1)")
    p.add_argument("--request-rate-range", default=None, help="start:end:step requests per second")
    p.add_argument("--request-distribution", choices=("constant", "poisson"), default="constant")
    p.add_argument(
        "-p", "--measurement-interval", type=int, default=5000, help="ms per level (default %(default)s)"
    )
    p.add_argument(
        "--request-count", type=int, default=None, help="requests per level instead of a time window"
    )
    p.add_argument(
        "--warmup-secs", type=float, default=1.0, help="warm-up before each level, s (default %(default)s)"
    )
    p.add_argument("--warmup-request-count", type=int, default=0, help="warm-up by count instead of time")
    p.add_argument(
        "--input-data", default="random", help="random, zero, or a JSON file of inputs (default %(default)s)"
    )
    p.add_argument(
        "--shape", action="append", default=[], help="NAME:d1,d2 for a variable-shape input (repeatable)"
    )
    p.add_argument("--string-length", type=int, default=16, help="length of random BYTES elements")
    p.add_argument("-f", "--latency-report-file", type=Path, default=None, help="CSV file to write")
    p.add_argument(
        "--output-dir", type=Path, default=None, help="write report.json, report.csv and PNG plots here"
    )
    p.add_argument(
        "--processes", type=int, default=1, help="client processes sharing the load (default %(default)s)"
    )
    p.add_argument("--max-inflight", type=int, default=4096, help="rate mode: outstanding requests at most")
    p.add_argument("--client-timeout", type=float, default=30.0, help="per request, s (default %(default)s)")
    p.add_argument("--max-step-secs", type=float, default=600.0, help="a level never runs longer, s")
    p.add_argument(
        "--wait-ready-secs", type=float, default=30.0, help="wait this long for the model to be ready"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random inputs and Poisson schedules")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-server-stats", action="store_true", help="do not read the statistics API")
    p.add_argument(
        "--llm",
        action="store_true",
        help="LLM mode: TTFT, inter-token latency, tokens/s (= --endpoint generate)",
    )
    p.add_argument(
        "--endpoint",
        choices=("infer", "generate", "openai"),
        default=None,
        help="infer (default); generate: a streamed model, over HTTP generate_stream (SSE) or, with -i grpc, "
        "ModelStreamInfer; openai: /v1/completions streaming (HTTP)",
    )
    p.add_argument("--prompt-tokens", type=int, default=32, help="openai: words in the synthetic prompt")
    p.add_argument("--output-tokens", type=int, default=64, help="openai: max_tokens")
    return p


def _positive(name: str, value: float, minimum: float = 1) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum:g}, got {value:g}")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """Raises ValueError (RangeError, InputError) with a message for the person at the terminal."""
    endpoint: Literal["infer", "generate", "openai"] = args.endpoint or ("generate" if args.llm else "infer")
    if args.llm and endpoint == "infer":
        raise ValueError("--llm streams: use --endpoint generate or openai with it, not infer")
    if endpoint == "openai" and args.protocol == "grpc":
        raise ValueError("--endpoint openai streams over HTTP: use -i http (and the HTTP port)")
    if args.concurrency_range and args.request_rate_range:
        raise ValueError("give --concurrency-range or --request-rate-range, not both")
    levels: list[float]
    if args.request_rate_range:
        mode: Literal["concurrency", "rate"] = "rate"
        levels = list(parse_rate_range(args.request_rate_range))
    else:
        mode = "concurrency"
        levels = [float(c) for c in parse_concurrency_range(args.concurrency_range or "1")]
    _positive("-b/--batch-size", args.batch_size)
    _positive("--measurement-interval", args.measurement_interval, 10)
    if args.request_count is not None:
        _positive("--request-count", args.request_count)
    _positive("--processes", args.processes)
    _positive("--max-inflight", args.max_inflight)
    _positive("--client-timeout", args.client_timeout, 0.001)
    _positive("--max-step-secs", args.max_step_secs, 0.1)
    _positive("--string-length", args.string_length, 0)
    _positive("--warmup-secs", args.warmup_secs, 0)
    _positive("--warmup-request-count", args.warmup_request_count, 0)
    _positive("--prompt-tokens", args.prompt_tokens)
    _positive("--output-tokens", args.output_tokens)
    if mode == "concurrency" and args.processes > min(levels):
        raise ValueError(f"--processes {args.processes} is more than the lowest concurrency {min(levels):g}")
    return BenchSettings(
        model=args.model_name,
        version=args.model_version,
        url=strip_scheme(args.url or DEFAULT_URL[args.protocol]),
        protocol=args.protocol,
        batch_size=args.batch_size,
        mode=mode,
        levels=tuple(levels),
        distribution=args.request_distribution,
        measurement_interval_ms=args.measurement_interval,
        request_count=args.request_count,
        warmup_secs=args.warmup_secs,
        warmup_request_count=args.warmup_request_count,
        input_data=args.input_data,
        shapes=parse_shapes(args.shape),
        string_length=args.string_length,
        csv_file=args.latency_report_file,
        output_dir=args.output_dir,
        processes=args.processes,
        max_inflight=args.max_inflight,
        client_timeout_s=args.client_timeout,
        max_step_secs=args.max_step_secs,
        wait_ready_secs=args.wait_ready_secs,
        seed=args.seed,
        progress=not args.no_progress,
        server_stats=not args.no_server_stats,
        endpoint=endpoint,
        prompt_tokens=args.prompt_tokens,
        output_tokens=args.output_tokens,
    )


def main(args: argparse.Namespace) -> int:
    """Run ``meshserve bench``; the exit status (0 ok, 1 a run that failed, 2 bad flags)."""
    try:
        settings = settings_from_args(args)
    except (ValueError, RangeError, InputError) as exc:
        print(f"meshserve bench: error: {exc}", file=sys.stderr)
        return 2
    from meshserve.loadtool.sweep import run_bench

    try:
        return run_bench(settings)
    except KeyboardInterrupt:  # the runner and its processes were closed on the way out
        print("meshserve bench: interrupted", file=sys.stderr)
        return 130
