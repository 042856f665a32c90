"""``model_warmup``: samples run before a model is READY; a failing warm-up keeps the model from loading."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from meshserve.harness import Mesh


def test_warmup_runs_before_the_first_request(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    tensor = grpcclient.InferInput("IN", [1, 2], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 2), np.float32))
    calls = int(client.infer("warm_ok", [tensor]).as_numpy("CALLS")[0, 0])
    assert calls >= 3  # 2 warm-up executions first (more if other tests already called it)


def test_a_failing_warmup_keeps_the_model_unavailable_with_the_reason(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    assert not client.is_model_ready("warm_fail")
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("warm_fail")
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert "warm-up sample 'zeros' failed" in err.value.message()
    assert "all-zero input is not allowed" in err.value.message()


def test_python_auto_complete_config_fills_the_config(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    metadata = client.get_model_metadata("auto_python", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("X", "FP32", ["-1", "4"])
    ]
    config = client.get_model_config("auto_python").config
    assert config.max_batch_size == 8
    assert config.HasField("dynamic_batching")
    tensor = grpcclient.InferInput("X", [2, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 4), np.float32))
    np.testing.assert_array_equal(
        client.infer("auto_python", [tensor]).as_numpy("Y"), np.full((2, 4), 2.0, np.float32)
    )
