"""Loads with Triton's ``config`` / ``file:`` parameters: path checks and the override directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshserve.errors import InvalidArgument
from meshserve.model_config import load_config
from meshserve.model_override import check_file_path, materialize, parse_override_config
from meshserve.repository import scan_repository

CONFIG = json.dumps(
    {
        "backend": "python",
        "max_batch_size": 0,
        "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [4]}],
    }
)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/etc/passwd",
        "../x",
        "1/../../x",
        "1/./x",
        "1//x",
        "a\0b",
        "1\\model.py",
        "config.pbtxt",
        "/".join("a" * 9),
    ],
)
def test_bad_file_paths_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        check_file_path(bad)


@pytest.mark.parametrize("good", ["1/model.onnx", "2/model.savedmodel/variables/v.index", "labels.txt"])
def test_good_file_paths(good: str) -> None:
    assert str(check_file_path(good)) == good


def test_override_config_takes_the_model_name_and_refuses_another() -> None:
    assert parse_override_config("m", CONFIG).name == "m"
    with pytest.raises(InvalidArgument, match="names model 'other'"):
        parse_override_config("m", json.dumps({"name": "other", "backend": "python"}))
    with pytest.raises(InvalidArgument, match="not JSON"):
        parse_override_config("m", "{backend: python")
    with pytest.raises(InvalidArgument, match="not a model config"):
        parse_override_config("m", json.dumps({"no_such_field": 1}))


def test_files_make_a_model_directory_of_their_own(tmp_path: Path) -> None:
    root = materialize(
        tmp_path / "managed",
        "m",
        parse_override_config("m", CONFIG),
        {"1/model.py": b"# model\n", "1/sub/extra.bin": b"\x00\x01"},
        None,
    )
    assert (root / "m" / "1" / "model.py").read_bytes() == b"# model\n"
    assert (root / "m" / "1" / "sub" / "extra.bin").read_bytes() == b"\x00\x01"
    config = load_config(root / "m")
    assert config.name == "m" and [t.name for t in config.input] == ["IN"]
    (entry,) = scan_repository(root)
    assert entry.versions == (1,) and not entry.error


def test_a_config_alone_links_the_repository_files(tmp_path: Path) -> None:
    source = tmp_path / "repo" / "m"
    (source / "1").mkdir(parents=True)
    (source / "1" / "model.py").write_text("# original\n")
    (source / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 8\n')
    root = materialize(tmp_path / "managed", "m", parse_override_config("m", CONFIG), {}, source)
    assert (root / "m" / "1" / "model.py").read_text() == "# original\n"
    assert load_config(root / "m").max_batch_size == 0  # the override's, not the repository's
    assert "max_batch_size: 8" in (source / "config.pbtxt").read_text()  # the repository untouched


def test_a_model_outside_the_repository_needs_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="file:<version>"):
        materialize(tmp_path / "managed", "m", parse_override_config("m", CONFIG), {}, None)


def test_clashing_files_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot write"):
        materialize(
            tmp_path / "managed",
            "m",
            parse_override_config("m", CONFIG),
            {"1/a": b"x", "1/a/b": b"y"},
            None,
        )


def test_nothing_is_written_when_a_path_is_bad(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        materialize(tmp_path / "managed", "m", parse_override_config("m", CONFIG), {"../evil": b"x"}, None)
    assert not (tmp_path / "managed").exists() and not (tmp_path / "evil").exists()


def test_messages_use_tritons_words() -> None:
    with pytest.raises(InvalidArgument, match=r"^Invalid file path"):
        check_file_path("A" * 256)


def test_a_partial_override_gets_its_backend_from_the_model_file(tmp_path: Path) -> None:
    source = tmp_path / "repo" / "m"
    (source / "1").mkdir(parents=True)
    (source / "1" / "model.py").write_text("# model\n")
    (source / "config.pbtxt").write_text('backend: "python"\n')
    root = materialize(
        tmp_path / "managed", "m", parse_override_config("m", '{"max_batch_size":"16"}'), {}, source
    )
    config = load_config(root / "m")
    assert config.backend == "python" and config.max_batch_size == 16
