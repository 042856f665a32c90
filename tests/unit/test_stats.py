"""The gateway's statistics book (stats.py) and the per-request breakdown (timing.py): pure logic."""

from __future__ import annotations

import pytest

from gateway.stats import FailureReason, StatsBook, failure_reason, merge_statistics
from gateway.timing import TIMING_PARAMETER, add_breakdown, breakdown, wants_timing
from meshserve.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    MeshError,
    QueueFull,
    Unavailable,
    from_wire,
)
from meshserve.pb import mesh_pb2


def timing(rows: int = 1, counts: bool = True, base: int = 100) -> mesh_pb2.Timing:
    return mesh_pb2.Timing(
        queue_ns=base,
        transfer_ns=base + 1,
        compute_input_ns=base + 2,
        compute_infer_ns=base + 3,
        compute_output_ns=base + 4,
        batch_rows=rows,
        counts_execution=counts,
    )


def test_a_success_counts_rows_durations_and_its_execution() -> None:
    book = StatsBook()
    book.record_success("m", 1, 5_000, rows=3, timing=timing(rows=3))
    stats = book.get("m", 1)
    assert stats.inference_count == 3
    assert stats.execution_count == 1
    assert (stats.success.count, stats.success.ns) == (1, 5_000)
    assert (stats.queue.count, stats.queue.ns) == (1, 100)
    assert (stats.compute_input.count, stats.compute_input.ns) == (1, 102)
    assert (stats.compute_infer.count, stats.compute_infer.ns) == (1, 103)
    assert (stats.compute_output.count, stats.compute_output.ns) == (1, 104)
    assert list(stats.batches) == [3]
    assert stats.batches[3].count == 1
    assert stats.batches[3].compute_infer.ns == 103
    assert stats.last_inference_ms > 0


def test_requests_of_one_batch_count_compute_each_but_the_execution_once() -> None:
    """Triton: every request of a batch adds the batch's compute time; batch_stats counts it once."""
    book = StatsBook()
    book.record_success("m", 1, 1_000, rows=2, timing=timing(rows=4, counts=True))
    book.record_success("m", 1, 1_000, rows=2, timing=timing(rows=4, counts=False))
    stats = book.get("m", 1)
    assert stats.inference_count == 4
    assert stats.execution_count == 1
    assert (stats.compute_infer.count, stats.compute_infer.ns) == (2, 206)
    assert stats.batches[4].count == 1
    assert stats.batches[4].compute_infer.ns == 103


def test_a_non_batching_request_counts_one_inference() -> None:
    book = StatsBook()
    book.record_success("m", 1, 10, rows=0, timing=timing(rows=1))
    assert book.get("m", 1).inference_count == 1


def test_a_success_without_timing_counts_only_the_gateway_side() -> None:
    book = StatsBook()
    book.record_success("m", 1, 10, rows=1, timing=None)
    stats = book.get("m", 1)
    assert stats.success.count == 1
    assert stats.queue.count == stats.compute_infer.count == stats.execution_count == 0
    assert stats.batches == {}


def test_a_failure_counts_its_reason_and_the_execution_but_no_inference() -> None:
    book = StatsBook()
    book.record_failure("m", 1, 700, FailureReason.BACKEND, timing(rows=2))
    book.record_failure("m", 1, 300, FailureReason.REJECTED)
    stats = book.get("m", 1)
    assert (stats.fail.count, stats.fail.ns) == (2, 1_000)
    assert stats.failures[FailureReason.BACKEND] == 1
    assert stats.failures[FailureReason.REJECTED] == 1
    assert stats.failures[FailureReason.OTHER] == 0
    assert stats.execution_count == 1
    assert stats.inference_count == 0
    assert stats.success.count == stats.queue.count == stats.compute_infer.count == 0


def test_in_flight_counts_pending_and_releases_on_error() -> None:
    book = StatsBook()
    with book.in_flight("m", 1), book.in_flight("m", 1):
        assert book.get("m", 1).pending == 2
    with pytest.raises(RuntimeError), book.in_flight("m", 1):
        assert book.get("m", 1).pending == 1
        raise RuntimeError("boom")
    assert book.get("m", 1).pending == 0


def test_versions_are_kept_apart() -> None:
    book = StatsBook()
    book.record_success("m", 1, 10, rows=1, timing=None)
    book.record_success("m", 2, 10, rows=1, timing=None)
    assert [key for key, _ in book.items()] == [("m", 1), ("m", 2)]
    assert book.get("m", 1).success.count == book.get("m", 2).success.count == 1


def test_as_dict_has_tritons_model_statistics_shape() -> None:
    book = StatsBook()
    book.record_success("m", 3, 900, rows=2, timing=timing(rows=2))
    book.record_success("m", 3, 900, rows=5, timing=timing(rows=5))
    out = book.get("m", 3).as_dict("m", 3)
    assert out["name"] == "m"
    assert out["version"] == "3"
    assert out["inference_count"] == 7
    assert out["execution_count"] == 2
    assert set(out["inference_stats"]) == {
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    }
    assert out["inference_stats"]["queue"] == {"count": 2, "ns": 200}
    assert out["inference_stats"]["fail"] == {"count": 0, "ns": 0}
    assert out["batch_stats"] == [
        {
            "batch_size": size,
            "compute_input": {"count": 1, "ns": 102},
            "compute_infer": {"count": 1, "ns": 103},
            "compute_output": {"count": 1, "ns": 104},
        }
        for size in (2, 5)
    ]


@pytest.mark.parametrize(
    ("error", "from_worker", "from_mesh", "reason"),
    [
        (Internal("model bug"), True, True, FailureReason.BACKEND),
        (InvalidArgument("bad input seen by the model"), True, True, FailureReason.BACKEND),
        (from_wire("UNAVAILABLE", "queue is full"), False, True, FailureReason.REJECTED),
        (QueueFull("queue is full"), False, True, FailureReason.REJECTED),
        (from_wire("DEADLINE_EXCEEDED", "expired while queued"), False, True, FailureReason.REJECTED),
        (from_wire("CANCELLED", "gone"), False, True, FailureReason.CANCELED),
        (Cancelled("gone"), True, True, FailureReason.CANCELED),
        (from_wire("INTERNAL", "batcher fault"), False, True, FailureReason.OTHER),
        (InvalidArgument("missing input"), False, False, FailureReason.OTHER),
        (Unavailable("no batcher is serving requests"), False, False, FailureReason.OTHER),
        (DeadlineExceeded("no response from model"), False, False, FailureReason.OTHER),
    ],
)
def test_failure_reasons(error: MeshError, from_worker: bool, from_mesh: bool, reason: FailureReason) -> None:
    assert failure_reason(error, from_worker=from_worker, from_mesh=from_mesh) is reason


# -- timing.py --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "wanted"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("no", False),
    ],
)
def test_wants_timing(value: object, wanted: bool) -> None:
    assert wants_timing({TIMING_PARAMETER: value}) is wanted


def test_no_parameter_means_no_breakdown() -> None:
    assert wants_timing({}) is False
    assert wants_timing({"other": True}) is False


def test_breakdown_names_each_part() -> None:
    assert breakdown(9_999, timing(rows=4)) == {
        "meshserve_gateway_ns": 9_999,
        "meshserve_queue_ns": 100,
        "meshserve_transfer_ns": 101,
        "meshserve_compute_input_ns": 102,
        "meshserve_compute_infer_ns": 103,
        "meshserve_compute_output_ns": 104,
        "meshserve_batch_rows": 4,
    }
    assert breakdown(5, None)["meshserve_compute_infer_ns"] == 0


def test_add_breakdown_writes_int64_parameters_next_to_the_models_own() -> None:
    response = mesh_pb2.InferResponse(timing=timing(rows=2))
    response.parameters["model_param"].string_param = "kept"
    add_breakdown(response, 1234)
    assert response.parameters["model_param"].string_param == "kept"
    assert response.parameters["meshserve_gateway_ns"].int64_param == 1234
    assert response.parameters["meshserve_batch_rows"].int64_param == 2
    assert all(
        response.parameters[key].WhichOneof("choice") == "int64_param"
        for key in response.parameters
        if key.startswith("meshserve_")
    )


def test_statistics_of_several_gateways_add_up() -> None:
    first, second = StatsBook(), StatsBook()
    first.record_success("m", 1, 1_000, 2, timing(rows=2))
    first.record_success("m", 1, 3_000, 4, timing(rows=4))
    second.record_success("m", 1, 5_000, 4, timing(rows=4, base=200))
    second.record_failure("m", 1, 7_000, FailureReason.BACKEND)
    a, b = first.get("m", 1).as_dict("m", 1), second.get("m", 1).as_dict("m", 1)
    merged = merge_statistics([a, b])
    assert merged["inference_count"] == 10
    assert merged["execution_count"] == 3
    assert merged["inference_stats"]["success"] == {"count": 3, "ns": 9_000}
    assert merged["inference_stats"]["fail"] == {"count": 1, "ns": 7_000}
    assert merged["inference_stats"]["queue"] == {"count": 3, "ns": 100 + 100 + 200}
    assert [entry["batch_size"] for entry in merged["batch_stats"]] == [2, 4]
    four = merged["batch_stats"][1]
    assert four["compute_infer"] == {"count": 2, "ns": 103 + 203}
    assert merged["last_inference"] == max(a["last_inference"], b["last_inference"])
    # The inputs are left as they were.
    assert a["inference_count"] == 6 and b["batch_stats"][0]["compute_infer"]["count"] == 1


def test_statistics_of_one_gateway_merge_to_themselves() -> None:
    book = StatsBook()
    book.record_success("m", 1, 1_000, 1, timing())
    alone = book.get("m", 1).as_dict("m", 1)
    assert merge_statistics([alone]) == alone
