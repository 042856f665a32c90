"""`meshserve bench` against a real mesh (and a fake OpenAI streaming server): the reports it writes,
and its request counts against the server's own statistics."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from meshserve.harness import ROOT, Mesh

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench(*argv: str, timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "meshserve.cli", "bench", "--no-progress", *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        env=env,
    )


def report(directory: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((directory / "report.json").read_text())
    return document


def test_concurrency_sweep_over_grpc_writes_reports_and_matches_server_stats(
    mesh: Mesh, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    csv_file = tmp_path / "pa.csv"
    # fmt: off
    result = bench(
        "-m", "simple", "-u", mesh.grpc_url, "-i", "grpc", "--concurrency-range", "1:3:2",
        "-p", "800", "--warmup-secs", "0.2", "--output-dir", str(out), "-f", str(csv_file),
    )
    # fmt: on
    assert result.returncode == 0, result.stderr
    steps = report(out)["steps"]
    assert [s["concurrency"] for s in steps] == [1, 3]
    for step in steps:
        assert step["completed"] > 5 and step["errors"] == 0
        assert step["completed"] == step["sent"]
        # every measured request, and only those, reached the server (warm-up is outside the delta)
        assert step["server"]["success_count"] == step["completed"]
        assert step["server"]["fail_count"] == 0
        assert step["server"]["avg_compute_infer_us"] > 0
        lat = step["latency_us"]
        assert 0 < lat["p50_us"] <= lat["p90_us"] <= lat["p95_us"] <= lat["p99_us"] <= lat["max_us"]
        assert step["infer_per_s"] == pytest.approx(step["completed"] / step["window_s"])
    with csv_file.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["Concurrency"] for r in rows] == ["1", "3"]
    assert int(rows[0]["Requests"]) == steps[0]["completed"]
    assert float(rows[1]["p99 latency"]) == pytest.approx(steps[1]["latency_us"]["p99_us"], abs=1)
    assert (out / "report.csv").read_text() == csv_file.read_text()
    for name in ("latency_vs_throughput.png", "latency_percentiles.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    assert "p99 ms" in result.stdout  # the console table


def test_request_rate_over_http_in_two_processes_by_count(mesh: Mesh, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # fmt: off
    result = bench(
        "-m", "simple", "-u", mesh.http_url, "-i", "http", "-b", "2", "--request-rate-range", "60",
        "--request-distribution", "poisson", "--request-count", "40", "--processes", "2",
        "--warmup-request-count", "4", "--output-dir", str(out),
    )
    # fmt: on
    assert result.returncode == 0, result.stderr
    (step,) = report(out)["steps"]
    assert step["request_rate"] == 60.0 and step["batch_size"] == 2
    assert step["sent"] == step["completed"] == 40 and step["errors"] == 0
    assert step["server"]["success_count"] == 40
    assert step["server"]["inference_count"] == 80  # two rows per request
    assert step["infer_per_s"] == pytest.approx(2 * step["requests_per_s"])


def test_llm_mode_over_generate_stream(mesh: Mesh, tmp_path: Path) -> None:
    inputs = tmp_path / "repeat.json"
    tokens = 6
    inputs.write_text(json.dumps({"data": [{"IN": list(range(tokens)), "DELAY": [10] * tokens, "WAIT": 0}]}))
    out = tmp_path / "out"
    # fmt: off
    result = bench(
        "-m", "repeat_int32", "-u", mesh.http_url, "--llm", "--input-data", str(inputs),
        "--concurrency-range", "2", "--request-count", "8", "--warmup-secs", "0", "--output-dir", str(out),
    )
    # fmt: on
    assert result.returncode == 0, result.stderr
    (step,) = report(out)["steps"]
    assert step["completed"] == 8 and step["errors"] == 0
    assert step["output_tokens"] == 8 * tokens
    # each response comes 10 ms after the last (the model sleeps DELAY ms): inter-token latency ≈ 10 ms
    assert 8_000 < step["itl_us"]["p50_us"] < 200_000
    assert 0 < step["ttft_us"]["p50_us"] < step["latency_us"]["p50_us"]
    assert step["output_tokens_per_s"] == pytest.approx(step["output_tokens"] / step["window_s"])
    assert step["server"]["success_count"] == 8
    assert (out / "llm_latency.png").read_bytes().startswith(PNG_MAGIC)


def test_llm_mode_over_grpc_stream_infer(mesh: Mesh, tmp_path: Path) -> None:
    """The same decoupled model over gRPC ModelStreamInfer (perf_analyzer's --streaming), inputs from
    zeros with --shape, two client processes."""
    out = tmp_path / "out"
    # fmt: off
    result = bench(
        "-m", "repeat_int32", "-u", mesh.grpc_url, "-i", "grpc", "--endpoint", "generate",
        "--input-data", "zero", "--shape", "IN:4", "--shape", "DELAY:4", "--concurrency-range", "2",
        "--request-count", "6", "--processes", "2", "--warmup-secs", "0", "--output-dir", str(out),
    )
    # fmt: on
    assert result.returncode == 0, result.stderr
    (step,) = report(out)["steps"]
    assert step["completed"] == 6 and step["errors"] == 0 and step["output_tokens"] == 6 * 4
    assert step["server"]["success_count"] == 6
    assert 0 < step["ttft_us"]["p50_us"] <= step["latency_us"]["p50_us"]


def test_unknown_model_and_unreachable_server_fail_with_a_message(mesh: Mesh) -> None:
    result = bench("-m", "no_such_model", "-u", mesh.grpc_url, "-i", "grpc", "--wait-ready-secs", "0.5")
    assert result.returncode == 1
    assert "no_such_model" in result.stderr and "Traceback" not in result.stderr
    result = bench("-m", "simple", "-u", "127.0.0.1:1", "--wait-ready-secs", "0.5")
    assert result.returncode == 1 and "127.0.0.1:1" in result.stderr and "Traceback" not in result.stderr


# -- OpenAI /v1/completions streaming, from a fake server ---------------------------------------------

CHUNKS = 5
CHUNK_DELAY_S = 0.02


@pytest.fixture
def openai_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A tiny server speaking OpenAI's streamed completions: CHUNKS text chunks, an empty final chunk
    with finish_reason, then ``data: [DONE]``; it keeps the request bodies it got."""
    bodies: list[dict[str, Any]] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        bodies.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        n = min(int(body.get("max_tokens", CHUNKS)), CHUNKS)
        for i in range(n):
            await asyncio.sleep(CHUNK_DELAY_S)
            chunk = {"id": "c", "object": "text_completion", "choices": [{"index": 0, "text": f" t{i}"}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        final = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
        await response.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
        return response

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}", bodies
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_llm_mode_over_openai_completions(
    openai_server: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, bodies = openai_server
    out = tmp_path / "out"
    # fmt: off
    result = bench(
        "-m", "tiny-llm", "-u", url, "--endpoint", "openai", "--concurrency-range", "2",
        "--request-count", "6", "--warmup-secs", "0", "--prompt-tokens", "7", "--output-tokens", "4",
        "--output-dir", str(out),
    )
    # fmt: on
    assert result.returncode == 0, result.stderr
    (step,) = report(out)["steps"]
    # the fake server has no KServe side: one look for statistics, then on without them
    assert step["completed"] == 6 and step["errors"] == 0 and step["server"] is None
    assert "no server statistics" in result.stderr
    assert step["output_tokens"] == 6 * 4  # the empty final chunk is not a token
    assert CHUNK_DELAY_S * 1e6 * 0.5 < step["itl_us"]["p50_us"] < 1e6
    assert step["ttft_us"]["p50_us"] >= CHUNK_DELAY_S * 1e6 * 0.5
    assert len(bodies) == 6
    assert all(b["model"] == "tiny-llm" and b["stream"] is True and b["max_tokens"] == 4 for b in bodies)
    assert all(len(b["prompt"].split()) == 7 for b in bodies)
