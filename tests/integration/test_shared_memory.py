"""System shared memory through a real mesh with tritonclient (gRPC and HTTP), as Triton's
``simple_grpc_shm_client.py`` / ``simple_http_shm_client.py`` / ``simple_grpc_shm_string_client.py``
use it against the example models ``simple`` and ``simple_string``, plus the errors around it.

Keys carry the test process id, so runs on one machine do not meet in /dev/shm; every region is
destroyed (unlinked) by the test that made it."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient import utils
from tritonclient.utils import InferenceServerException

from meshserve.harness import ROOT, Mesh, start_mesh

Client = Any  # grpcclient.InferenceServerClient | httpclient.InferenceServerClient

BYTE_SIZE = 64  # 16 INT32
A = np.arange(16, dtype=np.int32)
B = np.ones(16, dtype=np.int32)


def _key(name: str) -> str:
    return f"/meshserve_test_{os.getpid()}_{name}"


@pytest.fixture
def regions() -> Iterator[Callable[[str, int], Any]]:
    """Create shared memory objects; each is destroyed at the end of the test."""
    made: list[Any] = []

    def create(name: str, size: int) -> Any:
        handle = shm.create_shared_memory_region(name, _key(name), size)
        made.append(handle)
        return handle

    yield create
    for handle in made:
        shm.destroy_shared_memory_region(handle)


@pytest.fixture(params=["grpc", "http"])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _client(mesh: Mesh, protocol: str) -> Client:
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(mesh.grpc_url)
    return httpclient.InferenceServerClient(mesh.http_url)


def _mod(protocol: str) -> Any:
    return grpcclient if protocol == "grpc" else httpclient


def _requested_output(protocol: str, name: str) -> Any:
    if protocol == "grpc":
        return grpcclient.InferRequestedOutput(name)
    return httpclient.InferRequestedOutput(name, binary_data=True)


def _field(output: Any, key: str) -> Any:
    return getattr(output, key) if not isinstance(output, dict) else output[key]


def _simple_inputs(protocol: str, region: str) -> list[Any]:
    mod = _mod(protocol)
    inputs = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_shared_memory(region, BYTE_SIZE)
    inputs[1].set_shared_memory(region, BYTE_SIZE, offset=BYTE_SIZE)
    return inputs


def _simple_outputs(protocol: str, region: str, size: int = BYTE_SIZE) -> list[Any]:
    outputs = [_requested_output(protocol, "OUTPUT0"), _requested_output(protocol, "OUTPUT1")]
    outputs[0].set_shared_memory(region, size)
    outputs[1].set_shared_memory(region, size, offset=BYTE_SIZE)
    return outputs


def _register_simple(client: Client, regions: Callable[[str, int], Any], tag: str) -> tuple[str, str, Any]:
    """Input region holding A then B, output region for two outputs; returns their names."""
    inp, out = f"in_{tag}", f"out_{tag}"
    out_handle = regions(out, 2 * BYTE_SIZE)
    client.register_system_shared_memory(out, _key(out), 2 * BYTE_SIZE)
    in_handle = regions(inp, 2 * BYTE_SIZE)
    shm.set_shared_memory_region(in_handle, [A])
    shm.set_shared_memory_region(in_handle, [B], offset=BYTE_SIZE)
    client.register_system_shared_memory(inp, _key(inp), 2 * BYTE_SIZE)
    return inp, out, out_handle


def _status_names(client: Client, protocol: str) -> set[str]:
    status = client.get_system_shared_memory_status()
    if protocol == "grpc":
        return set(status.regions)
    return {region["name"] for region in status}


def _assert_serving(client: Client, protocol: str) -> None:
    mod = _mod(protocol)
    inputs = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(A.reshape(1, 16))
    inputs[1].set_data_from_numpy(B.reshape(1, 16))
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0")[0], A + B)


def test_server_metadata_lists_system_shared_memory_only(mesh: Mesh, protocol: str) -> None:
    client = _client(mesh, protocol)
    metadata = client.get_server_metadata()
    extensions = list(_field(metadata, "extensions"))
    assert "system_shared_memory" in extensions
    assert "cuda_shared_memory" not in extensions


def test_inputs_and_outputs_in_shared_memory(
    mesh: Mesh, protocol: str, regions: Callable[[str, int], Any]
) -> None:
    """What simple_{grpc,http}_shm_client.py do, step for step."""
    client = _client(mesh, protocol)
    inp, out, out_handle = _register_simple(client, regions, f"io_{protocol}")
    try:
        assert {inp, out} <= _status_names(client, protocol)
        result = client.infer("simple", _simple_inputs(protocol, inp), outputs=_simple_outputs(protocol, out))
        out0, out1 = result.get_output("OUTPUT0"), result.get_output("OUTPUT1")
        assert list(_field(out0, "shape")) == [1, 16] and _field(out0, "datatype") == "INT32"
        sums = shm.get_contents_as_numpy(out_handle, np.int32, [1, 16])
        diffs = shm.get_contents_as_numpy(out_handle, np.int32, [1, 16], offset=BYTE_SIZE)
        np.testing.assert_array_equal(sums[0], A + B)
        np.testing.assert_array_equal(diffs[0], A - B)
        if protocol == "http":  # metadata only: no data, no binary_data_size
            assert "data" not in out1 and "binary_data_size" not in out1.get("parameters", {})
        else:
            assert result.get_response().raw_output_contents == [b"", b""]
    finally:
        client.unregister_system_shared_memory(inp)
        client.unregister_system_shared_memory(out)
    assert not {inp, out} & _status_names(client, protocol)


def test_shared_memory_inputs_with_ordinary_outputs(
    mesh: Mesh, protocol: str, regions: Callable[[str, int], Any]
) -> None:
    client = _client(mesh, protocol)
    inp, out, _ = _register_simple(client, regions, f"in_only_{protocol}")
    try:
        result = client.infer("simple", _simple_inputs(protocol, inp))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1")[0], A - B)
    finally:
        client.unregister_system_shared_memory(inp)
        client.unregister_system_shared_memory(out)


def test_bytes_tensors_in_shared_memory(
    mesh: Mesh, protocol: str, regions: Callable[[str, int], Any]
) -> None:
    """simple_grpc_shm_string_client.py's flow: length-prefixed BYTES in and out of regions."""
    client = _client(mesh, protocol)
    mod = _mod(protocol)
    in0 = np.array([str(x).encode() for x in A], dtype=object)
    in1 = np.array([str(x).encode() for x in B], dtype=object)
    expected_sum = np.array([str(x).encode() for x in A + B], dtype=object)
    expected_diff = np.array([str(x).encode() for x in A - B], dtype=object)
    sizes = [utils.serialized_byte_size(utils.serialize_byte_tensor(t)) for t in (in0, in1)]
    out_sizes = [
        utils.serialized_byte_size(utils.serialize_byte_tensor(t)) for t in (expected_sum, expected_diff)
    ]
    names = [f"s{i}_{protocol}" for i in range(4)]
    handles = [regions(n, size) for n, size in zip(names, sizes + out_sizes, strict=True)]
    shm.set_shared_memory_region(handles[0], [utils.serialize_byte_tensor(in0)])
    shm.set_shared_memory_region(handles[1], [utils.serialize_byte_tensor(in1)])
    for name, size in zip(names, sizes + out_sizes, strict=True):
        client.register_system_shared_memory(name, _key(name), size)
    try:
        inputs = [mod.InferInput("INPUT0", [1, 16], "BYTES"), mod.InferInput("INPUT1", [1, 16], "BYTES")]
        inputs[0].set_shared_memory(names[0], sizes[0])
        inputs[1].set_shared_memory(names[1], sizes[1])
        outputs = [_requested_output(protocol, "OUTPUT0"), _requested_output(protocol, "OUTPUT1")]
        outputs[0].set_shared_memory(names[2], out_sizes[0])
        outputs[1].set_shared_memory(names[3], out_sizes[1])
        client.infer("simple_string", inputs, outputs=outputs)
        got_sum = shm.get_contents_as_numpy(handles[2], np.object_, [1, 16])
        got_diff = shm.get_contents_as_numpy(handles[3], np.object_, [1, 16])
        assert list(got_sum[0]) == list(expected_sum)
        assert list(got_diff[0]) == list(expected_diff)
    finally:
        for name in names:
            client.unregister_system_shared_memory(name)


def _refused(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value


def test_registration_errors(mesh: Mesh, protocol: str, regions: Callable[[str, int], Any]) -> None:
    client = _client(mesh, protocol)
    name = f"reg_{protocol}"
    regions(name, BYTE_SIZE)
    err = _refused(lambda: client.register_system_shared_memory("x", _key("never_made"), 16))
    assert "Unable to open shared memory region" in err.message()
    err = _refused(lambda: client.register_system_shared_memory("x", "/../etc/passwd", 16))
    assert "not a POSIX shared memory name" in err.message()
    err = _refused(lambda: client.register_system_shared_memory("x", _key(name), BYTE_SIZE, offset=8))
    assert "invalid args" in err.message() and "runs past the end" in err.message()
    client.register_system_shared_memory(name, _key(name), BYTE_SIZE)
    try:
        err = _refused(lambda: client.register_system_shared_memory(name, _key(name), 16))
        assert f"shared memory region '{name}' already in manager" in err.message()
        assert err.status() in ("StatusCode.ALREADY_EXISTS", "400")
        err = _refused(lambda: client.get_system_shared_memory_status("not_registered"))
        assert "Unable to find system shared memory region: 'not_registered'" in err.message()
    finally:
        client.unregister_system_shared_memory(name)
    client.unregister_system_shared_memory("not_registered")  # Triton: not an error
    _assert_serving(client, protocol)


def test_inference_errors_leave_the_service_serving(
    mesh: Mesh, protocol: str, regions: Callable[[str, int], Any]
) -> None:
    client = _client(mesh, protocol)
    inp, out, _ = _register_simple(client, regions, f"err_{protocol}")
    try:
        mod = _mod(protocol)
        bad = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
        bad[0].set_shared_memory(inp, BYTE_SIZE)
        bad[1].set_shared_memory(inp, BYTE_SIZE, offset=BYTE_SIZE + 8)  # runs past the region
        err = _refused(lambda: client.infer("simple", bad))
        assert f"Invalid offset + byte size for shared memory region: '{inp}'" in err.message()

        err = _refused(lambda: client.infer("simple", _simple_inputs(protocol, "no_such_region")))
        assert "Unable to find shared memory region: 'no_such_region'" in err.message()

        small = _simple_outputs(protocol, out, size=BYTE_SIZE // 2)
        err = _refused(lambda: client.infer("simple", _simple_inputs(protocol, inp), outputs=small))
        assert "should be at least 64 bytes to hold the results" in err.message()

        client.unregister_system_shared_memory(inp)  # a region used after its unregister
        err = _refused(lambda: client.infer("simple", _simple_inputs(protocol, inp)))
        assert f"Unable to find shared memory region: '{inp}'" in err.message()
    finally:
        client.unregister_system_shared_memory(inp)
        client.unregister_system_shared_memory(out)
    _assert_serving(client, protocol)


def test_unregister_all_and_cuda_shared_memory_without_a_gpu(
    mesh: Mesh, protocol: str, regions: Callable[[str, int], Any]
) -> None:
    client = _client(mesh, protocol)
    _register_simple(client, regions, f"all_{protocol}")
    client.unregister_system_shared_memory()
    assert _status_names(client, protocol) == set()
    client.unregister_cuda_shared_memory()  # what Triton's example clients call first: nothing to do
    status = client.get_cuda_shared_memory_status()
    assert (len(status.regions) if protocol == "grpc" else len(status)) == 0
    err = _refused(lambda: client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64))
    assert "CUDA shared memory needs a GPU on the gateway's host" in err.message()
    assert err.status() in ("StatusCode.UNAVAILABLE", "501")
    _assert_serving(client, protocol)


def _wait_pending(mesh: Mesh, model: str, timeout_s: float = 15.0) -> None:
    pattern = re.compile(rf'nv_inference_pending_request_count\{{[^}}]*model="{model}"[^}}]*\}} ([0-9.]+)')
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(mesh.metrics_url, timeout=5) as page:
            found = pattern.search(page.read().decode())
        if found and float(found.group(1)) >= 1:
            return
        time.sleep(0.02)
    raise AssertionError(f"no request for '{model}' became pending within {timeout_s} s")


def test_unregister_while_a_request_uses_the_region(mesh: Mesh, regions: Callable[[str, int], Any]) -> None:
    """The request keeps the region it was given (Triton defers the unregister); the name is free at
    once and a new registration under it does not receive the old request's output."""
    client = grpcclient.InferenceServerClient(mesh.grpc_url)
    data = np.array([[1.5, -2.0, 3.25, 4.0]], dtype=np.float32)
    in_handle, out_handle, other = regions("slow_in", 16), regions("slow_out", 16), regions("slow_other", 16)
    shm.set_shared_memory_region(in_handle, [data])
    client.register_system_shared_memory("slow_in", _key("slow_in"), 16)
    client.register_system_shared_memory("slow_out", _key("slow_out"), 16)
    inputs = [grpcclient.InferInput("IN", [1, 4], "FP32")]
    inputs[0].set_shared_memory("slow_in", 16)
    outputs = [grpcclient.InferRequestedOutput("OUT")]
    outputs[0].set_shared_memory("slow_out", 16)
    done: list[Any] = []
    client.async_infer("slow", inputs, lambda result, error: done.append((result, error)), outputs=outputs)
    _wait_pending(mesh, "slow")  # its input has been read; the model holds it for 2 s
    client.unregister_system_shared_memory()
    client.register_system_shared_memory("slow_out", _key("slow_other"), 16)
    try:
        deadline = time.monotonic() + 30
        while not done and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done, "no answer within 30 s"
        result, error = done[0]
        assert error is None, error
        assert result.get_response().raw_output_contents == [b""]
        np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [1, 4]), data)
        assert not shm.get_contents_as_numpy(other, np.float32, [1, 4]).any()
    finally:
        client.unregister_system_shared_memory()
    _assert_serving(client, "grpc")


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("two_gateways")
    repository = base / "models"
    repository.mkdir()
    (repository / "simple").symlink_to(ROOT / "examples" / "model_repository" / "simple")
    mesh = start_mesh(repository, base / "mesh.log", "--gateways", "2")
    try:
        yield mesh
    finally:
        assert mesh.stop() == 0, mesh.log()[-3000:]


def _served_per_gateway(mesh: Mesh) -> list[float]:
    served = []
    for url in mesh.metrics_urls:
        with urllib.request.urlopen(url, timeout=10) as page:
            rows = [
                r for r in page.read().decode().splitlines() if r.startswith("nv_inference_request_success{")
            ]
        served.append(sum(float(r.rsplit(" ", 1)[1]) for r in rows if 'model="simple"' in r))
    return served


def test_every_gateway_on_the_host_takes_a_registration(
    two_gateways: Mesh, protocol: str, regions: Callable[[str, int], Any]
) -> None:
    """``--gateways 2``: a register on one connection, requests on fresh connections (spread over both
    gateways by the kernel) all find the region; an unregister reaches both as well."""
    before = _served_per_gateway(two_gateways)
    client = _client(two_gateways, protocol)
    inp, out, out_handle = _register_simple(client, regions, f"mirror_{protocol}")
    client.close()  # grpc shares one connection between the channels of a process while one is open
    for _ in range(16):
        fresh = _client(two_gateways, protocol)
        assert {inp, out} <= _status_names(fresh, protocol)
        fresh.infer("simple", _simple_inputs(protocol, inp), outputs=_simple_outputs(protocol, out))
        np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [1, 16])[0], A + B)
        fresh.close()
    served = [after - then for after, then in zip(_served_per_gateway(two_gateways), before, strict=True)]
    assert sum(served) == 16 and all(n > 0 for n in served), served
    last = _client(two_gateways, protocol)
    last.unregister_system_shared_memory()
    last.close()
    for _ in range(8):
        fresh = _client(two_gateways, protocol)
        assert _status_names(fresh, protocol) == set()
        fresh.close()
