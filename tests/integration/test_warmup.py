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
