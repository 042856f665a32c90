"""`meshserve bench`'s request tensors from model metadata: random, zero, perf_analyzer's JSON file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from meshserve.loadtool.inputs import (
    InputError,
    generate_payloads,
    input_specs,
    load_input_file,
    parse_shapes,
)

SIMPLE_META = {
    "inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ],
    "outputs": [{"name": "OUTPUT0", "datatype": "INT32", "shape": [-1, 16]}],
}
REPEAT_META = {
    "inputs": [
        {"name": "IN", "datatype": "INT32", "shape": ["-1"]},  # gRPC JSON: 64-bit dims are strings
        {"name": "DELAY", "datatype": "UINT32", "shape": ["-1"]},
        {"name": "WAIT", "datatype": "UINT32", "shape": ["1"]},
    ]
}


def test_specs_drop_the_batch_dim_when_the_model_batches() -> None:
    specs = input_specs(SIMPLE_META, {"max_batch_size": 8})
    assert [(s.name, s.datatype, s.dims, s.batching) for s in specs] == [
        ("INPUT0", "INT32", (16,), True),
        ("INPUT1", "INT32", (16,), True),
    ]
    grpc_config = {"config": {"name": "repeat_int32"}}  # gRPC JSON leaves max_batch_size 0 out
    repeat = input_specs(REPEAT_META, grpc_config)
    assert [(s.dims, s.batching) for s in repeat] == [((-1,), False), ((-1,), False), ((1,), False)]


def test_random_payloads_have_the_batch_shape_and_differ() -> None:
    specs = input_specs(SIMPLE_META, {"max_batch_size": 8})
    payloads = generate_payloads(specs, "random", batch_size=4, count=3, seed=1)
    assert len(payloads) == 3
    for p in payloads:
        assert p["INPUT0"].shape == (4, 16) and p["INPUT0"].dtype == np.int32
    assert not np.array_equal(payloads[0]["INPUT0"], payloads[1]["INPUT0"])
    again = generate_payloads(specs, "random", batch_size=4, count=3, seed=1)
    assert np.array_equal(payloads[2]["INPUT1"], again[2]["INPUT1"])  # seeded


def test_zero_payload_and_variable_shapes() -> None:
    specs = input_specs(REPEAT_META, {})
    (payload,) = generate_payloads(specs, "zero", shapes={"IN": (5,), "DELAY": (5,)}, count=9)
    assert payload["IN"].shape == (5,) and not payload["IN"].any()
    assert payload["DELAY"].dtype == np.uint32 and payload["WAIT"].shape == (1,)


def test_variable_shape_without_shape_flag_says_which_flag() -> None:
    specs = input_specs(REPEAT_META, {})
    with pytest.raises(InputError, match=r"--shape IN:<dims>"):
        generate_payloads(specs, "random")


def test_shape_flag_errors() -> None:
    specs = input_specs(SIMPLE_META, {"max_batch_size": 8})
    with pytest.raises(InputError, match="does not fit"):
        generate_payloads(specs, "zero", shapes={"INPUT0": (8,)})
    with pytest.raises(InputError, match="unknown inputs"):
        generate_payloads(specs, "zero", shapes={"NOPE": (16,)})
    with pytest.raises(InputError, match="NAME:d1"):
        parse_shapes(["16"])
    with pytest.raises(InputError, match="whole numbers"):
        parse_shapes(["A:1,x"])
    assert parse_shapes(["IMG:3,224,224", "N:"]) == {"IMG": (3, 224, 224), "N": ()}


def test_batch_size_on_a_model_that_does_not_batch() -> None:
    specs = input_specs(REPEAT_META, {})
    with pytest.raises(InputError, match="does not batch"):
        generate_payloads(specs, "zero", batch_size=2, shapes={"IN": (1,), "DELAY": (1,)})


def test_bytes_inputs() -> None:
    specs = input_specs(
        {"inputs": [{"name": "S", "datatype": "BYTES", "shape": [-1, 2]}]}, {"max_batch_size": 4}
    )
    (payload,) = generate_payloads(specs, "random", count=1, string_length=5)
    assert payload["S"].shape == (1, 2) and all(len(v) == 5 for v in payload["S"].ravel())


def test_input_file(tmp_path: Path) -> None:
    path = tmp_path / "inputs.json"
    path.write_text(
        json.dumps(
            {
                "data": [
                    {"INPUT0": list(range(16)), "INPUT1": {"content": [1] * 16, "shape": [16]}},
                    {"INPUT0": [2] * 16, "INPUT1": [3] * 16},
                ]
            }
        )
    )
    specs = input_specs(SIMPLE_META, {"max_batch_size": 8})
    payloads = load_input_file(path, specs)
    assert len(payloads) == 2
    assert payloads[0]["INPUT0"].shape == (1, 16) and payloads[0]["INPUT0"][0, 3] == 3
    assert payloads[1]["INPUT1"].dtype == np.int32
    batched = load_input_file(path, specs, batch_size=3)  # one row given: repeated per batch row
    assert batched[0]["INPUT0"].shape == (3, 16) and batched[0]["INPUT1"].shape == (3, 16)


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("not json", "not valid JSON"),
        ('{"data": []}', "at least one entry"),
        ('{"data": [{"INPUT0": [1]}]}', r"missing inputs \['INPUT1'\]"),
        ('{"data": [{"INPUT0": [1, 2], "INPUT1": [1, 2]}]}', "has 2 values"),
        ('{"data": [{"INPUT0": {"shape": [16]}, "INPUT1": [1]}]}', "'content' or 'b64'"),
    ],
)
def test_input_file_errors(tmp_path: Path, document: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(document)
    with pytest.raises(InputError, match=problem):
        load_input_file(path, input_specs(SIMPLE_META, {"max_batch_size": 8}))


def test_missing_input_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No such file"):
        load_input_file(tmp_path / "absent.json", input_specs(SIMPLE_META, {"max_batch_size": 8}))


def test_input_file_fills_a_variable_dim_from_the_values(tmp_path: Path) -> None:
    path = tmp_path / "repeat.json"
    path.write_text(json.dumps({"data": [{"IN": [1, 2, 3], "DELAY": [5, 5, 5], "WAIT": 0}]}))
    (payload,) = load_input_file(path, input_specs(REPEAT_META, {}))
    assert (
        payload["IN"].shape == (3,) and payload["DELAY"].dtype == np.uint32 and payload["WAIT"].shape == (1,)
    )
    ragged = input_specs(
        {"inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, -1, -1, 4]}]}, {"max_batch_size": 2}
    )
    path.write_text(json.dumps({"data": [{"X": [0.0] * 8}]}))
    with pytest.raises(InputError, match="shape"):
        load_input_file(path, ragged)


def test_input_file_variable_dim_with_batching(tmp_path: Path) -> None:
    specs = input_specs(
        {"inputs": [{"name": "X", "datatype": "INT32", "shape": [-1, -1]}]}, {"max_batch_size": 4}
    )
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"data": [{"X": [1, 2, 3, 4, 5]}]}))
    (payload,) = load_input_file(path, specs, batch_size=2)
    assert payload["X"].shape == (2, 5) and payload["X"][1, 4] == 5
