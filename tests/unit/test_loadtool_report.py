"""`meshserve bench`'s outputs from synthetic results: report.json, the CSV, the PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from meshserve.loadtool.load import Samples
from meshserve.loadtool.report import StepResult, step_result, write_csv, write_json
from meshserve.loadtool.server_stats import ServerBreakdown
from meshserve.loadtool.streaming import StreamTiming

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def steps(llm: bool = False) -> list[StepResult]:
    results = []
    for level in (1, 4):
        samples = Samples()
        for i in range(20):
            start = i * 1_000_000
            timing = StreamTiming(ttft_ns=200_000 * level, tokens=5, itl_ns=50_000) if llm else None
            samples.record(start, start + 500_000 * level, timing)
        samples.sent = 20
        server = ServerBreakdown(20, 0, 20, 20, 10.0 * level, 5.0, 100.0, 5.0, 300.0)
        results.append(step_result("concurrency", level, 1, samples, server))
    return results


def test_json_report(tmp_path: Path) -> None:
    write_json(tmp_path / "r.json", {"model": "simple"}, steps())
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["tool"] == "meshserve bench" and document["settings"] == {"model": "simple"}
    first, second = document["steps"]
    assert first["concurrency"] == 1 and second["concurrency"] == 4
    assert first["completed"] == 20 and first["latency_us"]["p99_us"] == 500.0
    assert second["server"]["avg_queue_us"] == 40.0 and first["ttft_us"] is None


def test_csv_has_perf_analyzer_columns(tmp_path: Path) -> None:
    write_csv(tmp_path / "r.csv", steps(llm=True), llm=True)
    with (tmp_path / "r.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["Concurrency"] for r in rows] == ["1", "4"]
    for column in ("Inferences/Second", "Server Queue", "Server Compute Infer", "p50 latency", "p99 latency"):
        assert column in rows[0]
    assert rows[1]["Server Queue"] == "40" and rows[1]["TTFT p50"] == "800"
    assert rows[0]["Output Tokens/Second"] == f"{20 * 5 / 0.0195:.2f}"


@pytest.mark.parametrize("llm", [False, True])
def test_plots(tmp_path: Path, llm: bool) -> None:
    pytest.importorskip("matplotlib", reason="the loadtool extra (matplotlib) is not installed")
    from meshserve.loadtool.plots import write_plots

    written = write_plots(tmp_path, steps(llm), "simple (grpc)", llm)
    names = {p.name for p in written}
    assert {"latency_vs_throughput.png", "latency_percentiles.png"} <= names
    assert ("llm_latency.png" in names) is llm
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_no_plots_when_nothing_completed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the loadtool extra (matplotlib) is not installed")
    from meshserve.loadtool.plots import write_plots

    failed = Samples()
    failed.fail(0, 1, RuntimeError("down"))
    assert write_plots(tmp_path, [step_result("rate", 5.0, 1, failed, None)], "x", False) == []
