"""System shared memory (gateway/shm.py, shm_params.py, shm_http.py, the HTTP codec's part): keys,
registration bounds, reads and writes through a lease, unregister while a request holds a region.

Objects are plain files in a temporary directory standing in for /dev/shm (the registry takes the
directory), so nothing here touches the machine's shared memory."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from gateway.http_codec import HttpInfer, decode_infer, encode_infer
from gateway.models import ModelView
from gateway.shm import (
    CudaShmUnavailable,
    NotTheSameObject,
    RegionExists,
    RegionNotFound,
    SharedMemoryRegistry,
    cuda_register_refusal,
    cuda_status,
    shm_object_path,
)
from gateway.shm_http import register_body
from gateway.shm_mirror import ShmMirror
from gateway.shm_params import ShmRef, parse_shm_params
from gateway.validate import InferCall, InputTensor, build_request
from meshserve.errors import InvalidArgument, PayloadTooLarge, Unavailable
from meshserve.model_config import complete_config, parse_config
from meshserve.pb import mesh_pb2

SIMPLE = """
backend: "python"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
"""


def simple_view() -> ModelView:
    config = parse_config(SIMPLE)
    complete_config(config, "simple")
    return ModelView.from_config("simple", 1, config)


def make_object(directory: Path, name: str, size: int, fill: bytes = b"") -> Path:
    path = directory / name
    path.write_bytes(fill.ljust(size, b"\0"))
    return path


@pytest.fixture
def registry(tmp_path: Path) -> SharedMemoryRegistry:
    return SharedMemoryRegistry(max_regions=4, shm_dir=tmp_path)


# -- parameters --------------------------------------------------------------------------------------


def test_no_shm_parameters_is_none() -> None:
    assert parse_shm_params({"binary_data_size": 4}, "input 'X'") is None


def test_parameters_become_a_reference_with_offset_defaulting_to_zero() -> None:
    params = {"shared_memory_region": "r", "shared_memory_byte_size": 64}
    assert parse_shm_params(params, "input 'X'") == ShmRef("r", 64, 0)
    assert parse_shm_params({**params, "shared_memory_offset": 8}, "input 'X'") == ShmRef("r", 64, 8)


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"shared_memory_region": "r"}, "go together"),
        ({"shared_memory_byte_size": 4}, "go together"),
        ({"shared_memory_offset": 4}, "go together"),
        ({"shared_memory_region": "", "shared_memory_byte_size": 4}, "non-empty string"),
        ({"shared_memory_region": 3, "shared_memory_byte_size": 4}, "non-empty string"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": -1}, "non-negative integer"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": "4"}, "non-negative integer"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": True}, "non-negative integer"),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 4, "shared_memory_offset": -2},
            "non-negative integer",
        ),
    ],
)
def test_bad_parameters_are_refused(params: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem) as err:
        parse_shm_params(params, "input 'X'")  # type: ignore[arg-type]
    assert str(err.value).startswith("input 'X': ")


# -- keys --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "name"), [("/input_simple", "input_simple"), ("plain", "plain")])
def test_key_is_one_name_under_the_shm_directory(tmp_path: Path, key: str, name: str) -> None:
    assert shm_object_path(key, tmp_path) == tmp_path / name


@pytest.mark.parametrize("key", ["", "/", "/a/b", "../etc/passwd", "/..", "/.", "a\x00b", "/" + "x" * 256])
def test_keys_that_are_paths_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidArgument, match="not a POSIX shared memory name"):
        shm_object_path(key, tmp_path)


def test_symbolic_link_is_not_followed(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    target = make_object(tmp_path / "..", "outside", 64)
    os.symlink(target, tmp_path / "link")
    with pytest.raises(InvalidArgument, match="symbolic link"):
        registry.register("r", "/link", 0, 64)


# -- register / status / unregister ------------------------------------------------------------------


def test_register_then_status_lists_the_region(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    make_object(tmp_path, "in", 128)
    registry.register("input_data", "/in", 16, 64)
    (status,) = registry.status("")
    assert (status.name, status.key, status.offset, status.byte_size) == ("input_data", "/in", 16, 64)
    assert registry.status("input_data") == [status]


def test_unknown_key_is_refused_with_a_hint(registry: SharedMemoryRegistry) -> None:
    with pytest.raises(InvalidArgument, match=r"Unable to open shared memory region: '/nope'.*share a host"):
        registry.register("r", "/nope", 0, 4)


@pytest.mark.parametrize(("offset", "size"), [(0, 65), (60, 8), (64, 1)])
def test_region_past_the_object_end_is_refused(
    registry: SharedMemoryRegistry, tmp_path: Path, offset: int, size: int
) -> None:
    make_object(tmp_path, "obj", 64)
    with pytest.raises(InvalidArgument, match=r"failed to register shared memory region 'r': invalid args"):
        registry.register("r", "/obj", offset, size)
    assert registry.status("") == []


def test_zero_byte_region_is_refused(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    make_object(tmp_path, "obj", 64)
    with pytest.raises(InvalidArgument, match="byte_size > 0"):
        registry.register("r", "/obj", 0, 0)


def test_a_name_in_use_is_refused(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    make_object(tmp_path, "obj", 64)
    registry.register("r", "/obj", 0, 64)
    with pytest.raises(RegionExists, match="shared memory region 'r' already in manager"):
        registry.register("r", "/obj", 0, 32)


def test_region_count_is_bounded(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    make_object(tmp_path, "obj", 64)
    for i in range(4):
        registry.register(f"r{i}", "/obj", 0, 64)
    with pytest.raises(PayloadTooLarge, match=r"--max-shm-regions 4"):
        registry.register("r4", "/obj", 0, 64)
    registry.unregister("r0")
    registry.register("r4", "/obj", 0, 64)


def test_zero_regions_turns_the_extension_off(tmp_path: Path) -> None:
    make_object(tmp_path, "obj", 64)
    with pytest.raises(Unavailable, match="--max-shm-regions 0"):
        SharedMemoryRegistry(0, tmp_path).register("r", "/obj", 0, 64)


def test_unregister_unknown_is_quiet_and_empty_name_unregisters_all(
    registry: SharedMemoryRegistry, tmp_path: Path
) -> None:
    make_object(tmp_path, "obj", 64)
    registry.unregister("never")
    registry.register("a", "/obj", 0, 64)
    registry.register("b", "/obj", 0, 64)
    registry.unregister("")
    assert registry.status("") == []


def test_status_of_an_unknown_name_is_not_found(registry: SharedMemoryRegistry) -> None:
    with pytest.raises(RegionNotFound, match="Unable to find system shared memory region: 'x'"):
        registry.status("x")


def test_cuda_has_no_regions_and_register_is_refused(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    assert cuda_status(registry, "") == []
    with pytest.raises(RegionNotFound, match="Unable to find cuda shared memory region"):
        cuda_status(registry, "gpu")
    make_object(tmp_path, "obj", 64)
    registry.register("sys", "/obj", 0, 64)
    with pytest.raises(RegionNotFound, match="registered as system shared memory"):
        cuda_status(registry, "sys")
    refusal = cuda_register_refusal("gpu")
    assert isinstance(refusal, CudaShmUnavailable)
    assert refusal.grpc_status.name == "UNAVAILABLE" and refusal.http_status == 501
    assert "needs a GPU on the gateway's host" in refusal.message


# -- HTTP register body ------------------------------------------------------------------------------


def test_register_body_reads_key_offset_and_size() -> None:
    assert register_body(b'{"key": "/k", "offset": 4, "byte_size": 8}') == ("/k", 4, 8)
    assert register_body(b'{"key": "/k", "byte_size": 8}') == ("/k", 0, 8)


@pytest.mark.parametrize(
    "raw",
    [b"", b"[]", b"{", b'{"byte_size": 8}', b'{"key": "/k"}', b'{"key": "/k", "byte_size": -1}'],
)
def test_bad_register_bodies_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidArgument):
        register_body(raw)


# -- inference through a lease -----------------------------------------------------------------------


def shm_input(name: str, ref: ShmRef) -> InputTensor:
    return InputTensor(name, "INT32", [1, 16], b"", ref)


def test_inputs_are_read_from_their_regions(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    a, b = np.arange(16, dtype=np.int32), np.ones(16, dtype=np.int32)
    make_object(tmp_path, "in", 4096 + 128, b"\xff" * 4096 + a.tobytes() + b.tobytes())
    registry.register("input_data", "/in", 4096, 128)  # an offset that is no page multiple works too
    call = InferCall(
        "",
        [shm_input("INPUT0", ShmRef("input_data", 64)), shm_input("INPUT1", ShmRef("input_data", 64, 64))],
    )
    with registry.lease(call, 1 << 20):
        pass
    assert call.inputs[0].data == a.tobytes() and call.inputs[1].data == b.tobytes()
    assert all(t.shm is None for t in call.inputs)
    prepared = build_request(call, simple_view(), 10.0, 1 << 20)
    assert prepared.message.inputs[1].data == b.tobytes()


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        (ShmRef("nope", 64), "Unable to find shared memory region: 'nope'"),
        (ShmRef("r", 64, 128), "Invalid offset for shared memory region: 'r'"),
        (ShmRef("r", 64, 96), "Invalid offset \\+ byte size for shared memory region: 'r'"),
    ],
)
def test_input_reference_outside_a_region_is_refused(
    registry: SharedMemoryRegistry, tmp_path: Path, ref: ShmRef, problem: str
) -> None:
    make_object(tmp_path, "in", 128)
    registry.register("r", "/in", 0, 128)
    with pytest.raises((InvalidArgument, RegionNotFound), match=problem):
        with registry.lease(InferCall("", [shm_input("INPUT0", ref)]), 1 << 20):
            pass


def test_input_bytes_count_against_the_message_limit_before_any_copy(
    registry: SharedMemoryRegistry, tmp_path: Path
) -> None:
    make_object(tmp_path, "in", 128)
    registry.register("r", "/in", 0, 128)
    with pytest.raises(PayloadTooLarge, match="--max-message-bytes"):
        with registry.lease(InferCall("", [shm_input("INPUT0", ShmRef("r", 128))]), 64):
            pass


def test_wrong_byte_size_is_caught_by_validation(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    make_object(tmp_path, "in", 128)
    registry.register("r", "/in", 0, 128)
    call = InferCall("", [shm_input("INPUT0", ShmRef("r", 60)), shm_input("INPUT1", ShmRef("r", 64))])
    with registry.lease(call, 1 << 20):
        pass
    with pytest.raises(InvalidArgument, match=r"expected 64 bytes .* got 60"):
        build_request(call, simple_view(), 10.0, 1 << 20)


def response_with(name: str, data: bytes) -> mesh_pb2.InferResponse:
    return mesh_pb2.InferResponse(
        model_name="simple", outputs=[mesh_pb2.Tensor(name=name, datatype="INT32", shape=[1, 16], data=data)]
    )


def test_outputs_are_written_into_their_region(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    path = make_object(tmp_path, "out", 256)
    registry.register("output_data", "/out", 64, 128)
    out = np.arange(16, dtype=np.int32) * 3
    call = InferCall("", [], ["OUTPUT0"], output_shm={"OUTPUT0": ShmRef("output_data", 64, 64)})
    response = response_with("OUTPUT0", out.tobytes())
    with registry.lease(call, 1 << 20) as lease:
        lease.write_outputs(response)
    assert response.outputs[0].data == b""
    assert path.read_bytes()[128:192] == out.tobytes()


def test_bytes_outputs_keep_their_length_prefixes(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    path = make_object(tmp_path, "out", 64)
    registry.register("o", "/out", 0, 64)
    data = struct.pack("<I", 2) + b"hi" + struct.pack("<I", 0)
    call = InferCall("", [], ["OUT"], output_shm={"OUT": ShmRef("o", 64)})
    response = mesh_pb2.InferResponse(
        outputs=[mesh_pb2.Tensor(name="OUT", datatype="BYTES", shape=[2], data=data)]
    )
    with registry.lease(call, 1 << 20) as lease:
        lease.write_outputs(response)
    assert path.read_bytes()[: len(data)] == data


def test_too_small_output_region_is_refused(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    make_object(tmp_path, "out", 256)
    registry.register("o", "/out", 0, 256)
    call = InferCall("", [], ["OUTPUT0"], output_shm={"OUTPUT0": ShmRef("o", 32)})
    with pytest.raises(
        InvalidArgument, match=r"\(32 bytes\) should be at least 64 bytes to hold the results"
    ):
        with registry.lease(call, 1 << 20) as lease:
            lease.write_outputs(response_with("OUTPUT0", bytes(64)))


def test_unregister_during_a_request_waits_for_it(registry: SharedMemoryRegistry, tmp_path: Path) -> None:
    path = make_object(tmp_path, "out", 64)
    registry.register("o", "/out", 0, 64)
    call = InferCall("", [], ["OUTPUT0"], output_shm={"OUTPUT0": ShmRef("o", 64)})
    with registry.lease(call, 1 << 20) as lease:
        registry.unregister("o")  # the name is free at once ...
        assert registry.status("") == []
        registry.register("o", "/out", 0, 32)  # ... and may be registered again
        lease.write_outputs(response_with("OUTPUT0", b"\x07" * 64))  # the request keeps its region
    assert path.read_bytes() == b"\x07" * 64
    with pytest.raises(RegionNotFound):
        with registry.lease(InferCall("", [], ["X"], output_shm={"X": ShmRef("gone", 4)}), 1 << 20):
            pass


def test_an_object_shrunk_after_registration_is_an_error_not_a_crash(
    registry: SharedMemoryRegistry, tmp_path: Path
) -> None:
    path = make_object(tmp_path, "obj", 128)
    registry.register("r", "/obj", 0, 128)
    os.truncate(path, 16)
    with pytest.raises(InvalidArgument, match="smaller than when it was registered"):
        with registry.lease(InferCall("", [shm_input("INPUT0", ShmRef("r", 64))]), 1 << 20):
            pass
    call = InferCall("", [], ["OUTPUT0"], output_shm={"OUTPUT0": ShmRef("r", 64)})
    with pytest.raises(InvalidArgument, match="smaller than when it was registered"):
        with registry.lease(call, 1 << 20) as lease:
            lease.write_outputs(response_with("OUTPUT0", bytes(64)))


# -- HTTP codec --------------------------------------------------------------------------------------


def http_body(header: dict[str, object]) -> bytes:
    return json.dumps(header).encode()


def test_http_shm_input_and_output_are_decoded_as_references() -> None:
    header = {
        "inputs": [
            {
                "name": "INPUT0",
                "datatype": "INT32",
                "shape": [1, 16],
                "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 64},
            }
        ],
        "outputs": [
            {
                "name": "OUTPUT0",
                "parameters": {
                    "binary_data": False,
                    "shared_memory_region": "out",
                    "shared_memory_byte_size": 64,
                    "shared_memory_offset": 64,
                },
            }
        ],
    }
    decoded = decode_infer(http_body(header), None, simple_view())
    assert decoded.call.inputs[0].shm == ShmRef("in", 64)
    assert decoded.call.output_shm == {"OUTPUT0": ShmRef("out", 64, 64)}


def test_http_shm_output_has_metadata_and_no_data() -> None:
    call = InferCall("", [], ["OUTPUT0", "OUTPUT1"], output_shm={"OUTPUT0": ShmRef("out", 64, 64)})
    response = mesh_pb2.InferResponse(
        model_name="simple",
        outputs=[
            mesh_pb2.Tensor(name="OUTPUT0", datatype="INT32", shape=[1, 16], data=b""),
            mesh_pb2.Tensor(name="OUTPUT1", datatype="INT32", shape=[1, 2], data=struct.pack("<2i", 5, 6)),
        ],
    )
    raw, length = encode_infer(response, 1, HttpInfer(call, {"OUTPUT1": True}, False))
    assert length is not None
    out0, out1 = json.loads(raw[:length])["outputs"]
    assert out0 == {
        "name": "OUTPUT0",
        "datatype": "INT32",
        "shape": [1, 16],
        "parameters": {
            "shared_memory_region": "out",
            "shared_memory_byte_size": 64,
            "shared_memory_offset": 64,
        },
    }
    assert out1["parameters"] == {"binary_data_size": 8}
    assert raw[length:] == struct.pack("<2i", 5, 6)


# -- several gateways: the same object, or not taken -------------------------------------------------


def test_an_announced_registration_is_taken_only_for_the_same_object(tmp_path: Path) -> None:
    make_object(tmp_path, "obj", 64)
    origin, peer = SharedMemoryRegistry(4, tmp_path), SharedMemoryRegistry(4, tmp_path)
    object_id = origin.register("r", "/obj", 0, 64)
    peer.register("r", "/obj", 0, 64, expect=object_id)
    assert peer.status("r")[0].key == "/obj"
    other = tmp_path / "elsewhere"
    other.mkdir()
    make_object(other, "obj", 64)  # same key, another object (another host or /dev/shm mount)
    with pytest.raises(NotTheSameObject):
        SharedMemoryRegistry(4, other).register("r", "/obj", 0, 64, expect=object_id)


def test_an_announced_unregister_removes_only_regions_in_the_same_object(tmp_path: Path) -> None:
    make_object(tmp_path, "a", 64)
    make_object(tmp_path, "b", 64)
    registry = SharedMemoryRegistry(4, tmp_path)
    id_a = registry.register("r", "/a", 0, 64)
    id_b = registry.register("s", "/b", 0, 64)
    registry.unregister_object("r", id_b)  # "r" here lies in another object: kept
    assert [s.name for s in registry.status("")] == ["r", "s"]
    registry.unregister_object("r", id_a)
    assert registry.unregister("") == [("s", id_b)]


def test_the_mirror_applies_what_a_peer_announces(tmp_path: Path) -> None:
    make_object(tmp_path, "obj", 64)
    origin, peer = SharedMemoryRegistry(4, tmp_path), SharedMemoryRegistry(4, tmp_path)
    mirror = ShmMirror(peer)
    object_id = origin.register("r", "/obj", 0, 64)
    change = {"op": "register", "name": "r", "key": "/obj", "offset": 0, "byte_size": 64}
    mirror._apply({**change, "object": list(object_id)})
    assert [s.name for s in peer.status("")] == ["r"]
    mirror._apply({**change, "object": list(object_id)})  # again: a name in use, quietly not taken
    mirror._apply({**change, "name": "x", "object": ["other-boot", 1, 2]})  # not this object
    assert [s.name for s in peer.status("")] == ["r"]
    mirror._apply({"op": "unregister", "regions": [["r", list(object_id)]]})
    assert peer.status("") == []
