"""Health, readiness, metadata, config and repository index through the real tritonclient."""

from __future__ import annotations

import asyncio

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from meshserve.harness import Mesh


def test_grpc_health_and_server_metadata(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    assert client.is_server_live()
    assert client.is_server_ready()  # --strict-readiness=false: broken test models do not count
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "2")
    assert not client.is_model_ready("no_such_model")
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "triton"  # Triton's clients check this name
    assert "meshserve" in metadata["extensions"]
    assert "binary_tensor_data" in metadata["extensions"]


def test_grpc_model_metadata_and_config(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    metadata = client.get_model_metadata("simple", as_json=True)
    assert metadata["name"] == "simple"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "python"
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("INPUT0", "INT32", ["-1", "16"]),
        ("INPUT1", "INT32", ["-1", "16"]),
    ]
    config = client.get_model_config("simple").config
    assert config.name == "simple"
    assert config.max_batch_size == 8
    assert not config.HasField("dynamic_batching")  # Triton's classic `simple` has none
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    torch_meta = client.get_model_metadata("linear_torch", as_json=True)
    assert torch_meta["platform"] == "pytorch_libtorch"


def test_http_health_metadata_config(mesh: Mesh) -> None:
    client = httpclient.InferenceServerClient(mesh.http_url)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple_string")
    assert not client.is_model_ready("no_such_model")
    assert client.get_server_metadata()["name"] == "triton"
    metadata = client.get_model_metadata("simple_string")
    assert metadata["inputs"][0] == {"name": "INPUT0", "datatype": "BYTES", "shape": [-1, 16]}
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == [16]  # numbers, as Triton writes them, not strings
    assert config["input"][0]["data_type"] == "TYPE_INT32"


def test_repository_index_lists_every_model_with_state(mesh: Mesh) -> None:
    index = {
        m["name"]: m for m in httpclient.InferenceServerClient(mesh.http_url).get_model_repository_index()
    }
    assert index["simple"]["state"] == "READY"
    assert index["fails_to_load"]["state"] == "UNAVAILABLE"
    assert "weights file is corrupt" in index["fails_to_load"]["reason"]
    assert index["bad_config"]["state"] == "UNAVAILABLE"
    assert "max_batch_size" in index["bad_config"]["reason"]
    grpc_index = grpcclient.InferenceServerClient(mesh.grpc_url).get_model_repository_index(as_json=True)
    assert {m["name"] for m in grpc_index["models"]} >= {
        "simple",
        "simple_string",
        "linear_torch",
        "fails_to_load",
    }


def test_model_that_failed_to_load_says_why(mesh: Mesh) -> None:
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    assert not client.is_model_ready("fails_to_load")
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("fails_to_load")
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert "weights file is corrupt" in err.value.message()
    http = httpclient.InferenceServerClient(mesh.http_url)
    with pytest.raises(InferenceServerException) as herr:
        http.get_model_metadata("bad_config")
    assert "bad_config" in herr.value.message()
    assert client.is_model_ready("simple")  # the others keep serving


def test_aio_clients_health_and_metadata(mesh: Mesh) -> None:
    async def run() -> None:
        grpc_client = grpcaio.InferenceServerClient(mesh.grpc_url)
        http_client = httpaio.InferenceServerClient(mesh.http_url)
        try:
            assert await grpc_client.is_server_live()
            assert await grpc_client.is_model_ready("simple")
            assert (await grpc_client.get_model_metadata("simple", as_json=True))["name"] == "simple"
            assert await http_client.is_server_ready()
            assert (await http_client.get_model_config("simple"))["name"] == "simple"
        finally:
            await grpc_client.close()
            await http_client.close()

    asyncio.run(run())


def test_statistics_count_requests(mesh: Mesh) -> None:
    import numpy as np

    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    before = client.get_inference_statistics("simple", as_json=True)["model_stats"][0]
    data = np.ones((2, 16), dtype=np.int32)
    inputs = [
        grpcclient.InferInput("INPUT0", [2, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [2, 16], "INT32"),
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(data)
    client.infer("simple", inputs)
    after = client.get_inference_statistics("simple", as_json=True)["model_stats"][0]
    success = lambda s: int(s["inference_stats"]["success"].get("count", 0))  # noqa: E731
    assert success(after) == success(before) + 1
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 2
    http_stats = httpclient.InferenceServerClient(mesh.http_url).get_inference_statistics("simple")
    assert http_stats["model_stats"][0]["name"] == "simple"
