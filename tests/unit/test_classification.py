"""The classification extension's pure logic (gateway/classification.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.classification import MAX_LABEL_FILE_BYTES, LabelCache, class_count, classify, read_labels
from meshserve import tensors
from meshserve.errors import InvalidArgument
from meshserve.pb import model_config_pb2 as mc


def _run(
    array: np.ndarray, count: int, batched: bool, labels: tuple[str, ...] = ()
) -> tuple[list[int], list[str]]:
    datatype, shape, data = tensors.from_numpy(array)
    new_shape, out = classify("OUT", datatype, shape, data, count, batched, labels)
    decoded = tensors.deserialize_bytes("OUT", out, tensors.element_count(new_shape))
    return new_shape, [b.decode() for b in decoded.reshape(-1)]


def test_top_n_sorted_descending_with_indices() -> None:
    shape, got = _run(np.array([1, 5, 10, 4], dtype=np.float32), 2, batched=False)
    assert shape == [2]
    assert got == ["10.000000:2", "5.000000:1"]


def test_batched_rows_each_get_their_classes() -> None:
    array = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    shape, got = _run(array, 1, batched=True)
    assert shape == [2, 1]
    assert got == ["0.700000:1", "0.500000:0"]


def test_batched_row_with_more_dims_is_flattened() -> None:
    array = np.arange(12, dtype=np.int32).reshape(2, 2, 3)
    shape, got = _run(array, 2, batched=True)
    assert shape == [2, 2]
    assert got == ["5:5", "4:4", "11:5", "10:4"]


def test_ties_keep_index_order() -> None:
    _, got = _run(np.array([3, 7, 7, 3], dtype=np.int64), 4, batched=False)
    assert got == ["7:1", "7:2", "3:0", "3:3"]


def test_more_classes_asked_than_exist_returns_all() -> None:
    shape, got = _run(np.array([[2, 9, 4]], dtype=np.uint8), 10, batched=True)
    assert shape == [1, 3]
    assert got == ["9:1", "4:2", "2:0"]


def test_extreme_integers_order_exactly() -> None:
    big = np.iinfo(np.int64).max
    _, got = _run(np.array([big - 1, big, np.iinfo(np.int64).min], dtype=np.int64), 3, batched=False)
    assert [g.split(":")[1] for g in got] == ["1", "0", "2"]
    _, got = _run(np.array([2**64 - 2, 2**64 - 1, 0], dtype=np.uint64), 2, batched=False)
    assert got == [f"{2**64 - 1}:1", f"{2**64 - 2}:0"]


def test_negative_floats_and_fp16() -> None:
    _, got = _run(np.array([-1.5, -0.25, -3.0], dtype=np.float16), 3, batched=False)
    assert got == ["-0.250000:1", "-1.500000:0", "-3.000000:2"]


def test_labels_are_appended_when_present() -> None:
    _, got = _run(np.array([0.2, 0.8], dtype=np.float64), 2, batched=False, labels=("cat", "dog"))
    assert got == ["0.800000:1:dog", "0.200000:0:cat"]


def test_index_without_a_label_has_none() -> None:
    _, got = _run(np.array([0.2, 0.8, 0.9], dtype=np.float32), 3, batched=False, labels=("cat", "dog"))
    assert got[0] == "0.900000:2"
    assert got[1] == "0.800000:1:dog"


def test_bytes_output_is_refused() -> None:
    data = tensors.serialize_bytes(np.array([b"a"], dtype=object))
    with pytest.raises(InvalidArgument, match="numeric"):
        classify("OUT", "BYTES", [1], data, 1, False)


@pytest.mark.parametrize("value", [0, -2, True, 1.5, "3"])
def test_class_count_must_be_positive_int(value: object) -> None:
    with pytest.raises(InvalidArgument, match="positive integer"):
        class_count(value, "OUT")
    assert class_count(3, "OUT") == 3


def test_read_labels_lines(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("zero\r\none\n\nthree\n")
    assert read_labels(tmp_path, "labels.txt") == ("zero", "one", "", "three")


def test_read_labels_stays_in_model_directory(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "secret.txt").write_text("x\n")
    with pytest.raises(InvalidArgument, match="inside the model directory"):
        read_labels(model, "../secret.txt")
    with pytest.raises(InvalidArgument, match="inside the model directory"):
        read_labels(model, str(tmp_path / "secret.txt"))


def test_read_labels_bounded_and_missing(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_bytes(b"a\n" * (MAX_LABEL_FILE_BYTES // 2 + 1))
    with pytest.raises(InvalidArgument, match="more than"):
        read_labels(tmp_path, "big.txt")
    with pytest.raises(InvalidArgument, match="cannot read"):
        read_labels(tmp_path, "absent.txt")


def test_the_label_file_bound_is_the_configured_one(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "labels.txt").write_text("alpha\nbeta\n")  # 11 bytes
    config = mc.ModelConfig(name="m", output=[mc.ModelOutput(name="OUT", label_filename="labels.txt")])
    assert LabelCache(tmp_path, max_bytes=11).labels("m", 1, config, "OUT") == ("alpha", "beta")
    with pytest.raises(InvalidArgument, match=r"more than the 10 allowed \(--max-label-file-bytes\)"):
        LabelCache(tmp_path, max_bytes=10).labels("m", 1, config, "OUT")


def test_label_cache_reads_once_per_config(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    labels = tmp_path / "m" / "labels.txt"
    labels.write_text("a\nb\n")
    config = mc.ModelConfig(name="m", output=[mc.ModelOutput(name="OUT", label_filename="labels.txt")])
    cache = LabelCache(tmp_path)
    assert cache.labels("m", 1, config, "OUT") == ("a", "b")
    labels.write_text("c\nd\n")
    assert cache.labels("m", 1, config, "OUT") == ("a", "b")  # same config: not read again
    reloaded = mc.ModelConfig()
    reloaded.CopyFrom(config)
    assert cache.labels("m", 1, reloaded, "OUT") == ("c", "d")
    assert cache.labels("m", 1, reloaded, "OTHER") == ()
    assert LabelCache(None).labels("m", 1, config, "OUT") == ()
