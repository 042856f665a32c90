"""An instance-count-only reload (explicit model control, load with a config override that changes
only `instance_group.count`): the running instance keeps serving (same process), new ones join; a
smaller count stops only the extra ones (meshserve/instance_delta.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from meshserve.harness import Mesh, start_mesh, wait_for

CONFIG = """
name: "pid_probe"
backend: "python"
max_batch_size: 0
input [ { name: "IN", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "PID", data_type: TYPE_INT64, dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""
MODEL = """
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.2)  # long enough that concurrent requests spread over the instances
        pid = pb_utils.Tensor("PID", np.array([os.getpid()], dtype=np.int64))
        return [pb_utils.InferenceResponse([pid]) for _ in requests]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("resize")
    model = base / "models" / "pid_probe"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(CONFIG)
    (model / "1" / "model.py").write_text(MODEL)
    mesh = start_mesh(
        base / "models", base / "mesh.log", "--model-control-mode", "explicit", "--load-model", "pid_probe"
    )
    try:
        yield mesh
    finally:
        assert mesh.stop() == 0


def _pids(mesh: Mesh, requests: int = 8) -> set[int]:
    def one(_: int) -> int:
        client = grpcclient.InferenceServerClient(mesh.grpc_url)
        tensor = grpcclient.InferInput("IN", [1], "FP32")
        tensor.set_data_from_numpy(np.zeros(1, dtype=np.float32))
        return int(client.infer("pid_probe", [tensor], client_timeout=30).as_numpy("PID")[0])

    with ThreadPoolExecutor(requests) as pool:
        return set(pool.map(one, range(requests)))


def _load_with_count(mesh: Mesh, count: int) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    config = {
        "name": "pid_probe",
        "backend": "python",
        "max_batch_size": 0,
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "PID", "data_type": "TYPE_INT64", "dims": [1]}],
        "instance_group": [{"kind": "KIND_CPU", "count": count}],
    }
    client.load_model("pid_probe", config=json.dumps(config))


def test_count_changes_keep_the_running_instances(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    assert wait_for(lambda: client.is_model_ready("pid_probe"), timeout_s=60)
    (first,) = _pids(mesh, 4)

    _load_with_count(mesh, 2)
    assert wait_for(lambda: len(_pids(mesh)) == 2, timeout_s=30)
    both = _pids(mesh)
    assert first in both  # the first instance was never restarted
    config = client.get_model_config("pid_probe", as_json=True)["config"]
    assert config["instance_group"][0]["count"] == 2

    _load_with_count(mesh, 1)
    assert wait_for(lambda: len(_pids(mesh)) == 1, timeout_s=30)
    assert _pids(mesh) <= both  # one of the running ones stays; none new started
