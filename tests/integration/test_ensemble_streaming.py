"""Decoupled steps in ensembles and BLS calls to ensembles, through the whole mesh with tritonclient.

`ens_repeat` (tests/models) runs `repeat_int32` (decoupled: one response per element) and, for each
of its responses, `double_int32`: the ensemble is decoupled and answers once per element over
ModelStreamInfer / generate_stream, while ModelInfer refuses it.  `bls_probe` and `bls_stream` call
ensembles from a python model (``InferenceRequest(...).exec()``, ``exec(decoupled=True)``)."""

from __future__ import annotations

import json
import queue
import time
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import Mesh, wait_for


def repeat_inputs(values: list[int], delay_ms: int = 0, wait_ms: int = 0) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("IN", [len(values)], "INT32"),
        grpcclient.InferInput("DELAY", [len(values)], "UINT32"),
        grpcclient.InferInput("WAIT", [1], "UINT32"),
    ]
    inputs[0].set_data_from_numpy(np.array(values, dtype=np.int32))
    inputs[1].set_data_from_numpy(np.full(len(values), delay_ms, dtype=np.uint32))
    inputs[2].set_data_from_numpy(np.array([wait_ms], dtype=np.uint32))
    return inputs


def stream(mesh: Mesh, calls: list[dict[str, Any]], count: int, timeout_s: float = 30) -> list[Any]:
    """Send ``calls`` on one stream; the first ``count`` results (responses or errors)."""
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    results: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put(error if error is not None else result))
    try:
        for call in calls:
            client.async_stream_infer(**call)
        got: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            got.append(results.get(timeout=max(0.01, deadline - time.monotonic())))
        with pytest.raises(queue.Empty):  # nothing more than expected
            results.get(timeout=0.3)
        return got
    finally:
        client.stop_stream()
        client.close()


@pytest.fixture(scope="module")
def ready(mesh: Mesh) -> Mesh:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    for model in ("ens_repeat", "bls_probe", "bls_stream", "ens_slow"):
        assert wait_for(lambda m=model: client.is_model_ready(m), timeout_s=60), model  # type: ignore[misc]
    return mesh


def test_a_decoupled_step_runs_the_next_step_once_per_response(ready: Mesh) -> None:
    responses = stream(
        ready, [{"model_name": "ens_repeat", "inputs": repeat_inputs([3, 5, 7]), "request_id": "e1"}], 3
    )
    assert all(not isinstance(r, Exception) for r in responses), responses
    pairs = sorted((int(r.as_numpy("IDX")[0]), int(r.as_numpy("OUT")[0])) for r in responses)
    assert pairs == [(0, 6), (1, 10), (2, 14)]  # OUT = 2 * IN[IDX], by double_int32
    assert all(r.get_response().id == "e1" for r in responses)


def test_the_final_flag_follows_the_last_response_when_asked(ready: Mesh) -> None:
    call = {"model_name": "ens_repeat", "inputs": repeat_inputs([1, 2]), "enable_empty_final_response": True}
    responses = stream(ready, [call], 3)
    finals = [r.get_response().parameters["triton_final_response"].bool_param for r in responses]
    assert finals == [False, False, True]
    assert responses[-1].get_response().outputs == []


def test_no_element_means_no_response_but_the_final_flag(ready: Mesh) -> None:
    call = {"model_name": "ens_repeat", "inputs": repeat_inputs([]), "enable_empty_final_response": True}
    (final,) = stream(ready, [call], 1)
    assert final.get_response().parameters["triton_final_response"].bool_param


def test_many_responses_pass_the_in_flight_bound(ready: Mesh) -> None:
    # max_inflight_responses is 4 in ens_repeat: 40 responses pass through it, 4 at a time
    values = list(range(40))
    responses = stream(ready, [{"model_name": "ens_repeat", "inputs": repeat_inputs(values)}], 40)
    assert sorted(int(r.as_numpy("OUT")[0]) for r in responses) == [2 * v for v in values]


def test_a_decoupled_ensemble_is_decoupled_for_every_api(ready: Mesh) -> None:
    client = grpcclient.InferenceServerClient(ready.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        client.infer("ens_repeat", repeat_inputs([1]))
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "ModelInfer RPC doesn't support models with decoupled transaction policy" in info.value.message()
    http = httpclient.InferenceServerClient(ready.http_url)
    http_inputs = [httpclient.InferInput("IN", [1], "INT32"), httpclient.InferInput("DELAY", [1], "UINT32")]
    http_inputs.append(httpclient.InferInput("WAIT", [1], "UINT32"))
    http_inputs[0].set_data_from_numpy(np.ones(1, np.int32))
    for tensor in http_inputs[1:]:
        tensor.set_data_from_numpy(np.zeros(1, np.uint32))
    with pytest.raises(InferenceServerException) as info:
        http.infer("ens_repeat", http_inputs)
    assert info.value.status() == "501"
    assert "HTTP end point doesn't support models with decoupled transaction policy" in info.value.message()
    # HTTP generate_stream: one server-sent event per response
    body = json.dumps({"IN": [4, 5], "DELAY": [0, 0], "WAIT": [0]}).encode()
    request = urllib.request.Request(
        f"http://{ready.http_url}/v2/models/ens_repeat/generate_stream",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        events = [
            json.loads(line[5:]) for line in answer.read().decode().splitlines() if line.startswith("data:")
        ]
    assert sorted(e["OUT"] for e in events) == [8, 10]


def test_an_error_in_the_decoupled_step_ends_the_stream_with_it(ready: Mesh) -> None:
    inputs = repeat_inputs([1, 2])
    inputs[1] = grpcclient.InferInput("DELAY", [1], "UINT32")  # not IN's shape: repeat_int32 refuses
    inputs[1].set_data_from_numpy(np.zeros(1, dtype=np.uint32))
    (error,) = stream(ready, [{"model_name": "ens_repeat", "inputs": inputs}], 1)
    assert isinstance(error, InferenceServerException)
    assert "in ensemble 'ens_repeat', step 1 (model 'repeat_int32')" in error.message()
    assert "IN and DELAY must have the same shape" in error.message()


def test_bls_calls_an_ensemble(ready: Mesh) -> None:
    client = grpcclient.InferenceServerClient(ready.grpc_url)
    tensor = grpcclient.InferInput("IN", [4], "FP32")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.float32))
    result = client.infer(
        "bls_probe",
        [tensor],
        parameters={"target": "ens_slow", "input": "X", "output": "Y"},
        client_timeout=30,
    )
    np.testing.assert_array_equal(result.as_numpy("OUT"), np.arange(4, dtype=np.float32))


def test_bls_to_an_ensemble_is_bounded_by_the_callers_deadline(ready: Mesh) -> None:
    client = grpcclient.InferenceServerClient(ready.grpc_url)
    tensor = grpcclient.InferInput("IN", [4], "FP32")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.float32))
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as info:  # ens_slow's step sleeps 2 s
        client.infer(
            "bls_probe",
            [tensor],
            parameters={"target": "ens_slow", "input": "X", "output": "Y", "timeout_us": 300_000},
        )
    assert time.monotonic() - started < 1.9
    assert "BLS call failed" in info.value.message()
    assert "ens_slow" in info.value.message()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_bls_streams_a_decoupled_ensemble(ready: Mesh, mode: str) -> None:
    client = grpcclient.InferenceServerClient(ready.grpc_url)
    tensor = grpcclient.InferInput("IN", [3], "INT32")
    tensor.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))
    result = client.infer(
        "bls_stream", [tensor], parameters={"target": "ens_repeat", "mode": mode}, client_timeout=30
    )
    assert sorted(result.as_numpy("OUT").tolist()) == [2, 4, 6]


def test_bls_to_a_model_that_is_neither_served_nor_an_ensemble(ready: Mesh) -> None:
    client = grpcclient.InferenceServerClient(ready.grpc_url)
    tensor = grpcclient.InferInput("IN", [4], "FP32")
    tensor.set_data_from_numpy(np.arange(4, dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("bls_probe", [tensor], parameters={"target": "no_such_thing"}, client_timeout=30)
    assert "model 'no_such_thing' is not served: no live instance of any version" in info.value.message()
