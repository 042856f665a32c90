"""Decoupled models over gRPC ModelStreamInfer: 0..N responses per request, the final flag, deadlines."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import Mesh


def repeat_inputs(values: list[int], delay_ms: int = 5, wait_ms: int = 5) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("IN", [len(values)], "INT32"),
        grpcclient.InferInput("DELAY", [len(values)], "UINT32"),
        grpcclient.InferInput("WAIT", [1], "UINT32"),
    ]
    inputs[0].set_data_from_numpy(np.array(values, dtype=np.int32))
    inputs[1].set_data_from_numpy(np.full(len(values), delay_ms, dtype=np.uint32))
    inputs[2].set_data_from_numpy(np.array([wait_ms], dtype=np.uint32))
    return inputs


def collect(client: grpcclient.InferenceServerClient, count: int, timeout_s: float = 20) -> list[object]:
    got: list[object] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        got.append(client._stream_results.get(timeout=max(0.01, deadline - time.monotonic())))  # type: ignore[attr-defined]
    return got


@pytest.fixture
def stream_client(mesh: Mesh):  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    results: queue.Queue[object] = queue.Queue()
    client._stream_results = results  # type: ignore[attr-defined]
    client.start_stream(callback=lambda result, error: results.put(error if error is not None else result))
    yield client
    client.stop_stream()
    client.close()


def test_decoupled_model_sends_one_response_per_element_in_order(stream_client) -> None:  # type: ignore[no-untyped-def]
    stream_client.async_stream_infer("repeat_int32", repeat_inputs([7, 8, 9, 10]), request_id="r1")
    responses = collect(stream_client, 4)
    assert [int(r.as_numpy("OUT")[0]) for r in responses] == [7, 8, 9, 10]  # type: ignore[attr-defined]
    assert [int(r.as_numpy("IDX")[0]) for r in responses] == [0, 1, 2, 3]  # type: ignore[attr-defined]
    assert all(r.get_response().id == "r1" for r in responses)  # type: ignore[attr-defined]
    with pytest.raises(queue.Empty):  # the flag-only final response is not sent unless asked for
        stream_client._stream_results.get(timeout=0.5)


def test_empty_final_response_when_asked(stream_client) -> None:  # type: ignore[no-untyped-def]
    stream_client.async_stream_infer("repeat_int32", repeat_inputs([1, 2]), enable_empty_final_response=True)
    responses = collect(stream_client, 3)
    finals = [r.get_response().parameters["triton_final_response"].bool_param for r in responses]  # type: ignore[attr-defined]
    assert finals == [False, False, True]
    assert len(responses[2].get_response().outputs) == 0  # type: ignore[attr-defined]


def test_two_streams_interleave_and_each_ends(stream_client) -> None:  # type: ignore[no-untyped-def]
    stream_client.async_stream_infer("repeat_int32", repeat_inputs([1, 2, 3]), request_id="a")
    stream_client.async_stream_infer(
        "simple", _simple_inputs(), request_id="b"
    )  # a regular model on the same stream
    responses = collect(stream_client, 4)
    by_id: dict[str, list[object]] = {}
    for r in responses:
        by_id.setdefault(r.get_response().id, []).append(r)  # type: ignore[attr-defined]
    assert len(by_id["a"]) == 3 and len(by_id["b"]) == 1


def _simple_inputs() -> list[grpcclient.InferInput]:
    a = np.ones((1, 16), np.int32)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    return inputs


def test_unary_infer_on_a_decoupled_model_is_refused(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    with pytest.raises(InferenceServerException) as err:
        client.infer("repeat_int32", repeat_inputs([1]))
    assert err.value.status() == "StatusCode.UNIMPLEMENTED"  # Triton's UNSUPPORTED, and its words
    assert "ModelInfer RPC doesn't support models with decoupled transaction policy" in err.value.message()
    assert "ModelStreamInfer" in err.value.message()


def test_a_stream_that_never_finishes_ends_at_its_deadline(stream_client) -> None:  # type: ignore[no-untyped-def]
    tensor = grpcclient.InferInput("IN", [1], "INT32")
    tensor.set_data_from_numpy(np.array([5], np.int32))
    start = time.monotonic()
    stream_client.async_stream_infer("never_final", [tensor], timeout=500_000)  # µs
    first, second = collect(stream_client, 2, timeout_s=10)
    assert int(first.as_numpy("OUT")[0]) == 5  # type: ignore[attr-defined]
    assert isinstance(second, InferenceServerException)
    assert "Request timeout expired" in str(second)
    assert time.monotonic() - start < 5


def test_errors_in_a_stream_are_in_band_and_the_stream_goes_on(stream_client) -> None:  # type: ignore[no-untyped-def]
    bad = repeat_inputs([1, 2])
    bad[1] = grpcclient.InferInput("DELAY", [1], "UINT32")
    bad[1].set_data_from_numpy(np.array([1], np.uint32))
    stream_client.async_stream_infer("repeat_int32", bad)
    (error,) = collect(stream_client, 1)
    assert isinstance(error, InferenceServerException)
    assert "IN and DELAY must have the same shape" in str(error)
    stream_client.async_stream_infer("repeat_int32", repeat_inputs([4]))
    (ok,) = collect(stream_client, 1)
    assert int(ok.as_numpy("OUT")[0]) == 4  # type: ignore[attr-defined]


def test_a_bad_parameter_gets_an_in_band_error_and_the_stream_goes_on(mesh: Mesh) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    def request(value: int, big: bool) -> service_pb2.ModelInferRequest:
        r = service_pb2.ModelInferRequest(model_name="repeat_int32", id=f"r{value}")
        for name, datatype, data in (
            ("IN", "INT32", np.array([value], np.int32)),
            ("DELAY", "UINT32", np.array([1], np.uint32)),
            ("WAIT", "UINT32", np.array([1], np.uint32)),
        ):
            r.inputs.add(name=name, datatype=datatype, shape=[1])
            r.raw_input_contents.append(data.tobytes())
        if big:
            r.parameters["big"].uint64_param = 2**63 + 5  # a valid uint64 parameter (no int64 for it)
        return r

    channel = grpc.insecure_channel(mesh.grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    responses = list(stub.ModelStreamInfer(iter([request(1, True), request(2, False)]), timeout=20))
    channel.close()
    assert len(responses) == 2  # one answer each; the stream did not hang
    by_id = {r.infer_response.id: r for r in responses}
    assert by_id["r1"].error_message == "" and by_id["r2"].error_message == ""
    assert np.frombuffer(by_id["r2"].infer_response.raw_output_contents[0], np.int32)[0] == 2


def _compute_infer(mesh: Mesh) -> tuple[int, int]:
    stats = grpcclient.InferenceServerClient(mesh.grpc_url).get_inference_statistics(
        "repeat_int32", as_json=True
    )
    infer = stats["model_stats"][0]["inference_stats"].get("compute_infer", {})
    return int(infer.get("count", 0)), int(infer.get("ns", 0))


def test_a_decoupled_requests_compute_infer_is_its_whole_execute(mesh: Mesh, stream_client) -> None:  # type: ignore[no-untyped-def]
    count_before, ns_before = _compute_infer(mesh)
    # three responses 80 ms apart, the final flag 40 ms after the last: execute runs >= 280 ms
    stream_client.async_stream_infer(
        "repeat_int32", repeat_inputs([1, 2, 3], delay_ms=80, wait_ms=40), enable_empty_final_response=True
    )
    collect(stream_client, 4)
    deadline = time.monotonic() + 10
    while _compute_infer(mesh)[0] == count_before and time.monotonic() < deadline:
        time.sleep(0.05)
    count_after, ns_after = _compute_infer(mesh)
    assert count_after == count_before + 1
    assert ns_after - ns_before >= 270_000_000, (ns_after - ns_before) / 1e6
