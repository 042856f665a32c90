"""`meshserve bench`'s figures: percentiles, the statistics-API delta, and a step's throughput."""

from __future__ import annotations

from typing import Any

import pytest

from meshserve.loadtool.latency import percentile, summarize
from meshserve.loadtool.load import Samples
from meshserve.loadtool.report import csv_rows, format_table, step_result
from meshserve.loadtool.server_stats import breakdown, snapshot


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([1, 2, 3, 4], 50) == 2  # an observed value, not an interpolation
    assert percentile([1, 2, 3, 4], 51) == 3


def test_percentile_errors() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="percentile"):
        percentile([1], 0)


def test_summarize_in_microseconds() -> None:
    summary = summarize([3_000, 1_000, 2_000, 4_000])  # ns, unsorted
    assert summary is not None
    assert summary.count == 4
    assert summary.min_us == 1.0 and summary.max_us == 4.0 and summary.avg_us == 2.5
    assert summary.p50_us == 2.0 and summary.p99_us == 4.0
    assert summarize([]) is None


def http_stats(success: int, queue_ns: int, infer_ns: int, version: str = "1") -> dict[str, Any]:
    return {
        "model_stats": [
            {
                "name": "simple",
                "version": version,
                "inference_count": success * 2,
                "execution_count": success,
                "inference_stats": {
                    "success": {"count": success, "ns": success * 1000_000},
                    "fail": {"count": 1, "ns": 5},
                    "queue": {"count": success, "ns": queue_ns},
                    "compute_input": {"count": success, "ns": success * 10_000},
                    "compute_infer": {"count": success, "ns": infer_ns},
                    "compute_output": {"count": success, "ns": success * 20_000},
                },
            }
        ]
    }


def test_breakdown_is_the_delta_per_request() -> None:
    before = snapshot(http_stats(10, queue_ns=1_000_000, infer_ns=5_000_000), "simple")
    after = snapshot(http_stats(30, queue_ns=3_000_000, infer_ns=45_000_000), "simple")
    delta = breakdown(before, after)
    assert delta.success_count == 20 and delta.fail_count == 0
    assert delta.inference_count == 40 and delta.execution_count == 20
    assert delta.avg_queue_us == pytest.approx(100.0)  # 2 ms over 20 requests
    assert delta.avg_compute_infer_us == pytest.approx(2000.0)
    assert delta.avg_compute_input_us == pytest.approx(10.0)
    assert delta.avg_compute_output_us == pytest.approx(20.0)
    assert delta.avg_request_us == pytest.approx(1000.0)


def test_snapshot_reads_grpc_json_strings_and_missing_fields() -> None:
    grpc_json = {
        "model_stats": [
            {
                "name": "simple",
                "version": "1",
                "inference_count": "12",
                "execution_count": "6",
                "inference_stats": {"success": {"count": "12", "ns": "24000"}, "queue": {"count": "12"}},
            }
        ]
    }
    snap = snapshot(grpc_json, "simple", "1")
    assert snap.inference_count == 12 and snap.execution_count == 6
    assert snap.counts["success"] == 12 and snap.ns["success"] == 24000
    assert snap.ns["queue"] == 0 and snap.counts["compute_infer"] == 0


def test_snapshot_picks_the_version_and_says_when_missing() -> None:
    two = {"model_stats": http_stats(1, 1, 1, "1")["model_stats"] + http_stats(5, 1, 1, "3")["model_stats"]}
    assert snapshot(two, "simple").execution_count == 5  # newest version when none asked
    assert snapshot(two, "simple", "1").execution_count == 1
    with pytest.raises(LookupError, match="'other'"):
        snapshot(two, "other")
    with pytest.raises(LookupError, match="version '2'"):
        snapshot(two, "simple", "2")


def test_breakdown_without_successes_is_zero_not_a_division_error() -> None:
    snap = snapshot(http_stats(3, 1, 1), "simple")
    delta = breakdown(snap, snap)
    assert delta.success_count == 0 and delta.avg_queue_us == 0.0


def test_step_result_throughput_over_the_window() -> None:
    samples = Samples()
    for i in range(10):  # 10 requests of 2 ms, one every 10 ms: window 0 .. 92 ms
        samples.record(i * 10_000_000, i * 10_000_000 + 2_000_000, None)
    samples.sent = 11
    samples.fail(95_000_000, 100_000_000, RuntimeError("boom"))
    step = step_result("concurrency", 1, 4, samples, None)
    assert step.window_s == pytest.approx(0.1)
    assert step.requests_per_s == pytest.approx(100.0)
    assert step.infer_per_s == pytest.approx(400.0)  # batch 4
    assert step.latency is not None and step.latency.p50_us == 2000.0
    assert step.errors == 1 and step.error_messages == ("RuntimeError: boom",)
    row = csv_rows([step], llm=False)[0]
    assert row["Concurrency"] == "1" and row["Inferences/Second"] == "400.00" and row["p99 latency"] == "2000"
    assert "400.0" in format_table([step], llm=False)


def test_step_result_with_no_success() -> None:
    samples = Samples()
    samples.fail(0, 10, TimeoutError("late"))
    step = step_result("rate", 5.0, 1, samples, None)
    assert step.latency is None and step.requests_per_s == 0.0 and step.label == "5/s"
    assert csv_rows([step], llm=True)[0]["p50 latency"] == ""
