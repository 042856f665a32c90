"""The GPU worker of the deployment files on a real GPU: the compose ``worker-linear-torch`` command with
``--device cuda:0`` (what docs/deploy.md adds for a GPU worker in compose, and what the Helm chart gives a
model with ``gpus: 1``), beside the compose NATS, batcher and gateway, computes on CUDA and serves.

Skipped where torch sees no CUDA device (CI has none).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from meshserve.harness import ROOT
from meshserve.nats_server import find_nats_server
from tests.deploy.compose_local import Localizer, image_env, load_compose, start_services, stop_all

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch sees no GPU)")


def test_gpu_worker_from_the_compose_command_serves_on_cuda(tmp_path) -> None:
    deploy = ROOT / "deploy"
    compose = load_compose(deploy / "docker-compose.yml")
    localizer = Localizer(deploy, compose["services"], tmp_path, environ={})
    env = {**os.environ, **image_env(deploy / "Dockerfile")}
    procs = start_services(
        localizer,
        ["batcher", "gateway", "worker-linear-torch"],
        env,
        find_nats_server(None),
        extra_args={"worker-linear-torch": ["--device", "cuda:0"]},
    )
    try:
        worker = procs[-1]
        assert worker.ready["state"] == "READY", worker.ready
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{localizer.ports['gateway'][8001]}")
        x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
        request = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        out = client.infer("linear_torch", [request], client_timeout=60).as_numpy("OUTPUT__0")
        client.close()
        assert out is not None and out.shape == (4, 8) and (out >= 0).all()  # relu(x @ W + b)
        model = torch.jit.load(str(ROOT / "examples/model_repository/linear_torch/1/model.pt"))
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-4)
        assert " on cuda:0" in (tmp_path / "worker-linear-torch.log").read_text()  # the backend's load line
    finally:
        codes = stop_all(procs)
    failed = {name: code for name, code in codes.items() if code != 0}
    assert not failed, {n: (tmp_path / f"{n}.log").read_text()[-2000:] for n in failed}
