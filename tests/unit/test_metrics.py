"""Prometheus exposition (metrics.py): Triton's exact names and labels, read from the stats book."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer

from gateway.metrics import (
    TRITON_COUNTERS,
    build_metrics_app,
    build_registry,
    render,
)
from gateway.stats import FailureReason, StatsBook
from meshserve.pb import mesh_pb2


def book_with_traffic() -> StatsBook:
    book = StatsBook()
    for rows, counts in ((2, True), (2, False), (5, True)):
        book.record_success(
            "simple",
            1,
            3_000_000,
            rows=rows,
            timing=mesh_pb2.Timing(
                queue_ns=10_000,
                compute_input_ns=20_000,
                compute_infer_ns=1_500_000,
                compute_output_ns=30_000,
                batch_rows=4 if rows == 2 else 5,
                counts_execution=counts,
            ),
        )
    book.record_failure("simple", 1, 1_000, FailureReason.BACKEND)
    return book


def lines_of(book: StatsBook, instances: list[tuple[str, int, int]] | None = None) -> list[str]:
    registry = build_registry(book, lambda: instances or [("simple", 1, 2)])
    return render(registry).decode().splitlines()


def test_counters_carry_tritons_exact_names_with_no_total_suffix() -> None:
    lines = lines_of(book_with_traffic())
    text = "\n".join(lines)
    assert "_total" not in text
    assert "_created" not in text
    for name in TRITON_COUNTERS:
        assert f"# TYPE {name} counter" in lines
        assert any(line.startswith(f"# HELP {name} ") for line in lines)


def test_values_come_from_the_stats_book() -> None:
    lines = lines_of(book_with_traffic())
    expected = {
        'nv_inference_request_success{model="simple",version="1"} 3.0',
        'nv_inference_count{model="simple",version="1"} 9.0',
        'nv_inference_exec_count{model="simple",version="1"} 2.0',
        'nv_inference_request_duration_us{model="simple",version="1"} 9000.0',
        'nv_inference_queue_duration_us{model="simple",version="1"} 30.0',
        'nv_inference_compute_input_duration_us{model="simple",version="1"} 60.0',
        'nv_inference_compute_infer_duration_us{model="simple",version="1"} 4500.0',
        'nv_inference_compute_output_duration_us{model="simple",version="1"} 90.0',
        'nv_inference_request_failure{model="simple",reason="BACKEND",version="1"} 1.0',
        'nv_inference_request_failure{model="simple",reason="REJECTED",version="1"} 0.0',
        'nv_inference_request_failure{model="simple",reason="CANCELED",version="1"} 0.0',
        'nv_inference_request_failure{model="simple",reason="OTHER",version="1"} 0.0',
        'nv_inference_pending_request_count{model="simple",version="1"} 0.0',
        'meshserve_live_instances{model="simple",version="1"} 2.0',
    }
    assert expected <= set(lines)
    assert "# TYPE nv_inference_pending_request_count gauge" in lines
    assert "# TYPE meshserve_live_instances gauge" in lines


def test_batch_size_histogram_counts_executions_by_rows() -> None:
    lines = set(lines_of(book_with_traffic()))
    assert "# TYPE meshserve_batch_size histogram" in lines
    assert 'meshserve_batch_size_bucket{le="2.0",model="simple",version="1"} 0.0' in lines
    assert 'meshserve_batch_size_bucket{le="4.0",model="simple",version="1"} 1.0' in lines
    assert 'meshserve_batch_size_bucket{le="8.0",model="simple",version="1"} 2.0' in lines
    assert 'meshserve_batch_size_bucket{le="+Inf",model="simple",version="1"} 2.0' in lines
    assert 'meshserve_batch_size_count{model="simple",version="1"} 2.0' in lines
    assert 'meshserve_batch_size_sum{model="simple",version="1"} 9.0' in lines


def test_known_models_appear_with_zeros_and_pending_is_live() -> None:
    book = StatsBook()
    with book.in_flight("other", 3):
        lines = set(lines_of(book, [("idle", 1, 0), ("other", 3, 1)]))
    assert 'nv_inference_request_success{model="idle",version="1"} 0.0' in lines
    assert 'meshserve_live_instances{model="idle",version="1"} 0.0' in lines
    assert 'nv_inference_pending_request_count{model="other",version="3"} 1.0' in lines


def test_the_registry_is_not_the_global_one() -> None:
    from prometheus_client import REGISTRY

    registry = build_registry(StatsBook(), list)
    assert registry is not REGISTRY
    assert "nv_inference" not in render(REGISTRY).decode()


def test_the_app_serves_text_at_metrics() -> None:
    async def fetch() -> tuple[int, str, str]:
        app = build_metrics_app(build_registry(book_with_traffic(), lambda: [("simple", 1, 1)]))
        async with TestClient(TestServer(app)) as client:
            response = await client.get("/metrics")
            return response.status, response.headers["Content-Type"], await response.text()

    status, content_type, text = asyncio.run(fetch())
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'nv_inference_request_success{model="simple",version="1"} 3.0' in text
