"""Statistics (ModelStatistics over gRPC and HTTP), the per-request timing breakdown, and Prometheus
metrics with Triton's names — all measured through the whole mesh with the real tritonclient."""

from __future__ import annotations

import queue
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import Mesh, wait_for

TIMING_KEYS = (
    "meshserve_gateway_ns",
    "meshserve_queue_ns",
    "meshserve_transfer_ns",
    "meshserve_compute_input_ns",
    "meshserve_compute_infer_ns",
    "meshserve_compute_output_ns",
    "meshserve_batch_rows",
)
PARTS = (
    "meshserve_queue_ns",
    "meshserve_transfer_ns",
    "meshserve_compute_input_ns",
    "meshserve_compute_infer_ns",
    "meshserve_compute_output_ns",
)
TRITON_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)


# -- helpers --------------------------------------------------------------------------------------
def simple_inputs(module: Any, rows: int) -> list[Any]:
    data = np.arange(rows * 16, dtype=np.int32).reshape(rows, 16)
    inputs = [
        module.InferInput("INPUT0", [rows, 16], "INT32"),
        module.InferInput("INPUT1", [rows, 16], "INT32"),
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(data)
    return inputs


def fp32_input(module: Any, name: str, rows: int, width: int) -> Any:
    tensor = module.InferInput(name, [rows, width], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, width), dtype=np.float32))
    return tensor


def grpc_stats(mesh: Mesh, model: str) -> dict[str, Any]:
    """as_json: int64 fields come as strings and zero fields are left out (proto3 JSON)."""
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    stats: dict[str, Any] = client.get_inference_statistics(model, "1", as_json=True)["model_stats"][0]
    return stats


def http_stats(mesh: Mesh, model: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpclient.InferenceServerClient(mesh.http_url).get_inference_statistics(
        model, "1"
    )["model_stats"][0]
    return stats


def n(stats: dict[str, Any], *path: str) -> int:
    value: Any = stats
    for key in path:
        value = value.get(key, {}) if isinstance(value, dict) else {}
    return int(value) if not isinstance(value, dict) else 0


def batch_rows_total(stats: dict[str, Any]) -> int:
    return sum(int(b["batch_size"]) * n(b, "compute_infer", "count") for b in stats.get("batch_stats", []))


Sample = tuple[str, frozenset[tuple[str, str]]]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(mesh: Mesh, url: str = "") -> tuple[dict[Sample, float], dict[str, str], str]:
    """Samples by (name, labels), the ``# TYPE`` of each family, and the raw text (of the first
    gateway's metrics, or of ``url``)."""
    with urllib.request.urlopen(url or mesh.metrics_url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[Sample, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"unparsable exposition line: {line!r}"
            labels = frozenset(_LABEL.findall(match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples, types, text


def labels(model: str, **extra: str) -> frozenset[tuple[str, str]]:
    return frozenset({"model": model, "version": "1", **extra}.items())


def value(samples: dict[Sample, float], name: str, model: str, **extra: str) -> float:
    key = (name, labels(model, **extra))
    assert key in samples, f"no sample {name}{dict(key[1])}"
    return samples[key]


def check_breakdown(params: dict[str, int], rows: int) -> None:
    assert set(TIMING_KEYS) <= set(params), params
    assert all(params[key] >= 0 for key in TIMING_KEYS), params
    assert params["meshserve_compute_infer_ns"] > 0, params
    assert params["meshserve_batch_rows"] == rows, params
    assert sum(params[key] for key in PARTS) <= params["meshserve_gateway_ns"], params


# -- statistics -------------------------------------------------------------------------------------
def test_statistics_show_queue_compute_and_batches(mesh: Mesh) -> None:
    before = grpc_stats(mesh, "simple")
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    for _ in range(3):
        client.infer("simple", simple_inputs(grpcclient, rows=2))
    after = grpc_stats(mesh, "simple")

    assert n(after, "inference_count") == n(before, "inference_count") + 6
    assert n(after, "execution_count") == n(before, "execution_count") + 3  # `simple` runs each alone
    for part in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert n(after, "inference_stats", part, "count") == n(before, "inference_stats", part, "count") + 3
        assert n(after, "inference_stats", part, "ns") > n(before, "inference_stats", part, "ns"), part
    # queue + compute of a request fit inside its end-to-end time at the gateway
    inside = sum(
        n(after, "inference_stats", p, "ns") - n(before, "inference_stats", p, "ns")
        for p in ("queue", "compute_input", "compute_infer", "compute_output")
    )
    assert inside <= n(after, "inference_stats", "success", "ns") - n(
        before, "inference_stats", "success", "ns"
    )

    by_size = {int(b["batch_size"]): b for b in after["batch_stats"]}
    old = {int(b["batch_size"]): b for b in before.get("batch_stats", [])}
    assert n(by_size[2], "compute_infer", "count") == n(old.get(2, {}), "compute_infer", "count") + 3
    for part in ("compute_input", "compute_infer", "compute_output"):
        assert n(by_size[2], part, "ns") > n(old.get(2, {}), part, "ns")
    assert int(after["last_inference"]) >= int(before.get("last_inference", 0))

    # HTTP serves the same book, zeros included
    via_http = http_stats(mesh, "simple")
    assert via_http["execution_count"] >= n(after, "execution_count")
    assert via_http["inference_stats"]["compute_infer"]["count"] >= 3
    assert via_http["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}
    entry = next(b for b in via_http["batch_stats"] if b["batch_size"] == 2)
    assert set(entry) == {"batch_size", "compute_input", "compute_infer", "compute_output"}
    assert entry["compute_infer"]["count"] >= 3


def test_statistics_batch_stats_add_up_under_dynamic_batching(mesh: Mesh) -> None:
    before = grpc_stats(mesh, "linear_torch")
    client = grpcclient.InferenceServerClient(mesh.grpc_url)

    def one(rows: int) -> None:
        client.infer("linear_torch", [fp32_input(grpcclient, "INPUT__0", rows, 16)])

    sizes = [1, 2, 3, 1] * 6
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, sizes))
    after = grpc_stats(mesh, "linear_torch")

    executions = n(after, "execution_count") - n(before, "execution_count")
    assert n(after, "inference_count") - n(before, "inference_count") == sum(sizes)
    assert 1 <= executions <= len(sizes)
    # every executed batch is in batch_stats under its row count, and the rows add up
    assert batch_rows_total(after) - batch_rows_total(before) == sum(sizes)
    counts = sum(n(b, "compute_infer", "count") for b in after["batch_stats"])
    assert counts - sum(n(b, "compute_infer", "count") for b in before.get("batch_stats", [])) == executions
    assert all(int(b["batch_size"]) <= 32 for b in after["batch_stats"])


def test_statistics_count_a_failed_execution(mesh: Mesh) -> None:
    before = grpc_stats(mesh, "raises")
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    with pytest.raises(InferenceServerException, match="model bug"):
        client.infer("raises", [fp32_input(grpcclient, "IN", 1, 4)])
    after = grpc_stats(mesh, "raises")
    assert n(after, "inference_stats", "fail", "count") == n(before, "inference_stats", "fail", "count") + 1
    assert n(after, "inference_stats", "success", "count") == n(before, "inference_stats", "success", "count")
    assert n(after, "execution_count") == n(before, "execution_count") + 1  # the model did run
    assert n(after, "inference_count") == n(before, "inference_count")  # Triton: successes only


# -- per-request breakdown ----------------------------------------------------------------------------
def test_timing_breakdown_over_grpc(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    result = client.infer("simple", simple_inputs(grpcclient, rows=3), parameters={"meshserve_timing": True})
    params = {key: p.int64_param for key, p in result.get_response().parameters.items()}
    check_breakdown(params, rows=3)
    np.testing.assert_array_equal(
        result.as_numpy("OUTPUT0"), 2 * np.arange(48, dtype=np.int32).reshape(3, 16)
    )

    plain = client.infer("simple", simple_inputs(grpcclient, rows=1))
    assert not any(key.startswith("meshserve_") for key in plain.get_response().parameters)


def test_timing_breakdown_over_http(mesh: Mesh) -> None:
    client = httpclient.InferenceServerClient(mesh.http_url)
    result = client.infer("simple", simple_inputs(httpclient, rows=2), parameters={"meshserve_timing": True})
    params = result.get_response()["parameters"]
    check_breakdown(params, rows=2)

    plain = client.infer("simple", simple_inputs(httpclient, rows=1))
    assert "parameters" not in plain.get_response()


def test_timing_breakdown_of_a_slow_model_and_pending_gauge(mesh: Mesh) -> None:
    """The `slow` model sleeps 2 s: compute_infer holds it, and the request is pending meanwhile."""
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    done: queue.Queue[Any] = queue.Queue()
    client.async_infer(
        "slow",
        [fp32_input(grpcclient, "IN", 1, 4)],
        callback=lambda result, error: done.put(error or result),
        parameters={"meshserve_timing": True},
    )
    assert wait_for(lambda: value(scrape(mesh)[0], "nv_inference_pending_request_count", "slow") == 1, 5)
    result = done.get(timeout=20)
    assert not isinstance(result, InferenceServerException), result
    params = {key: p.int64_param for key, p in result.get_response().parameters.items()}
    check_breakdown(params, rows=1)
    assert params["meshserve_compute_infer_ns"] >= 1_900_000_000
    assert params["meshserve_gateway_ns"] >= params["meshserve_compute_infer_ns"]
    assert value(scrape(mesh)[0], "nv_inference_pending_request_count", "slow") == 0


# -- Prometheus ---------------------------------------------------------------------------------------
def test_metrics_have_triton_names_and_count_a_request(mesh: Mesh) -> None:
    before, types, text = scrape(mesh)
    for name in TRITON_COUNTERS:
        assert types.get(name) == "counter", name
        assert f"{name}_total" not in text
    assert types["nv_inference_pending_request_count"] == "gauge"
    assert types["meshserve_batch_size"] == "histogram"
    assert types["meshserve_live_instances"] == "gauge"
    assert value(before, "meshserve_live_instances", "simple") >= 1

    grpcclient.InferenceServerClient(mesh.grpc_url).infer("simple", simple_inputs(grpcclient, rows=2))
    after, _, _ = scrape(mesh)

    def delta(name: str, **extra: str) -> float:
        return value(after, name, "simple", **extra) - value(before, name, "simple", **extra)

    assert delta("nv_inference_request_success") == 1
    assert delta("nv_inference_count") == 2
    assert delta("nv_inference_exec_count") == 1
    assert delta("nv_inference_request_duration_us") > 0
    assert delta("nv_inference_compute_infer_duration_us") > 0
    for name in ("nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us"):
        assert delta(name) >= 0
    assert value(after, "nv_inference_pending_request_count", "simple") == 0
    assert delta("meshserve_batch_size_count") == 1
    assert delta("meshserve_batch_size_sum") == 2
    assert delta("meshserve_batch_size_bucket", le="2.0") == 1
    assert delta("meshserve_batch_size_bucket", le="1.0") == 0
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
        assert delta("nv_inference_request_failure", reason=reason) == 0


def test_metrics_count_a_model_failure_as_backend(mesh: Mesh) -> None:
    before, _, _ = scrape(mesh)
    with pytest.raises(InferenceServerException, match="model bug"):
        httpclient.InferenceServerClient(mesh.http_url).infer("raises", [fp32_input(httpclient, "IN", 1, 4)])
    after, _, _ = scrape(mesh)

    def delta(name: str, **extra: str) -> float:
        return value(after, name, "raises", **extra) - value(before, name, "raises", **extra)

    assert delta("nv_inference_request_failure", reason="BACKEND") == 1
    assert delta("nv_inference_request_failure", reason="OTHER") == 0
    assert delta("nv_inference_request_success") == 0
    assert delta("nv_inference_exec_count") == 1


def test_metrics_count_a_bad_request_as_other(mesh: Mesh) -> None:
    before, _, _ = scrape(mesh)
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    bad = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 16), dtype=np.int32))
    with pytest.raises(InferenceServerException, match="missing required input"):
        client.infer("simple", [bad])
    after, _, _ = scrape(mesh)
    key = ("nv_inference_request_failure", labels("simple", reason="OTHER"))
    assert after[key] - before[key] == 1


def test_batcher_metrics_show_queue_depth_and_why_batches_were_sent(mesh: Mesh) -> None:
    """`slow` (one instance, 2 s per request, no dynamic batching): of three requests sent together one
    runs and two wait in the batcher's queue — what an autoscaler scales on."""
    assert mesh.batcher_metrics_url
    before, types, _ = scrape(mesh, mesh.batcher_metrics_url)
    assert types["meshserve_queue_depth"] == "gauge"
    assert types["meshserve_batches_sent_total"] == "counter"
    sent_before = value(before, "meshserve_batches_sent_total", "slow", reason="not_batching")
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    done: queue.Queue[Any] = queue.Queue()
    for _ in range(3):
        client.async_infer(
            "slow", [fp32_input(grpcclient, "IN", 1, 4)], callback=lambda result, error: done.put(error)
        )

    def queued() -> bool:
        samples = scrape(mesh, mesh.batcher_metrics_url)[0]
        return (
            value(samples, "meshserve_queue_depth", "slow") == 2
            and value(samples, "meshserve_batcher_inflight_batches", "slow") == 1
        )

    assert wait_for(queued, 5)
    assert [done.get(timeout=30) for _ in range(3)] == [None, None, None]
    after = scrape(mesh, mesh.batcher_metrics_url)[0]
    assert value(after, "meshserve_queue_depth", "slow") == 0
    assert value(after, "meshserve_batcher_instances", "slow") == 1
    assert value(after, "meshserve_batches_sent_total", "slow", reason="not_batching") == sent_before + 3
