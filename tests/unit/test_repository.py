"""The model repository layout: version directories, version_policy and scanning."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshserve.model_config import CONFIG_FILENAME, ConfigError
from meshserve.pb import model_config_pb2 as mc
from meshserve.repository import list_versions, scan_repository, select_versions

PYTHON_CONFIG = 'backend: "python"\n'


def _model(root: Path, name: str, versions: list[str], config: str | None = PYTHON_CONFIG) -> Path:
    model_dir = root / name
    model_dir.mkdir(parents=True)
    if config is not None:
        (model_dir / CONFIG_FILENAME).write_text(config, encoding="utf-8")
    for version in versions:
        (model_dir / version).mkdir()
    return model_dir


def _policy(text: str) -> mc.ModelVersionPolicy:
    from google.protobuf import text_format

    return text_format.Parse(text, mc.ModelVersionPolicy())


# --------------------------------------------------------------------------------------------------
# Version directories
# --------------------------------------------------------------------------------------------------


def test_version_dirs_are_positive_integers_sorted_numerically(tmp_path: Path) -> None:
    model_dir = _model(tmp_path, "m", ["10", "2", "1", "007", "0", "latest", "v3", "-1", "1.5", ".9"])
    (model_dir / "3").write_text("a file, not a version directory")
    (model_dir / "model.py").write_text("")
    assert list_versions(model_dir) == [1, 2, 10]


def test_no_version_dirs(tmp_path: Path) -> None:
    assert list_versions(_model(tmp_path, "m", ["x"])) == []


# --------------------------------------------------------------------------------------------------
# version_policy
# --------------------------------------------------------------------------------------------------


AVAILABLE = [1, 2, 5, 9]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", [9]),  # default: the single highest
        ("latest {}", [9]),  # num_versions unset → 1
        ("latest { num_versions: 1 }", [9]),
        ("latest { num_versions: 2 }", [5, 9]),
        ("latest { num_versions: 10 }", [1, 2, 5, 9]),
        ("all {}", [1, 2, 5, 9]),
        ("specific { versions: [2, 9] }", [2, 9]),
        ("specific { versions: [9, 2] }", [2, 9]),
        ("specific { versions: [2, 3, 4] }", [2]),  # versions not on disk are not served
        ("specific { versions: [7] }", []),
    ],
)
def test_select_versions(policy: str, expected: list[int]) -> None:
    assert select_versions(_policy(policy), AVAILABLE) == expected


@pytest.mark.parametrize("policy", ["", "latest { num_versions: 3 }", "all {}", "specific { versions: [1] }"])
def test_select_versions_with_nothing_on_disk(policy: str) -> None:
    assert select_versions(_policy(policy), []) == []


def test_select_versions_does_not_mutate_its_input() -> None:
    available = [1, 2, 3]
    served = select_versions(_policy("all {}"), available)
    served.append(99)
    assert available == [1, 2, 3]


# --------------------------------------------------------------------------------------------------
# scan_repository
# --------------------------------------------------------------------------------------------------


def test_scan_repository_keeps_a_broken_models_error_and_serves_the_others(tmp_path: Path) -> None:
    _model(tmp_path, "b_good", ["1", "2"])
    _model(tmp_path, "a_broken", ["1"], config="backend: [nope")
    _model(tmp_path, "c_noconfig", ["1"], config=None)
    _model(tmp_path, "d_all", ["1", "3"], config='backend: "python" version_policy { all {} }')
    _model(tmp_path, ".hidden", ["1"])
    (tmp_path / "README.md").write_text("not a model")

    entries = scan_repository(tmp_path)
    assert [e.name for e in entries] == ["a_broken", "b_good", "c_noconfig", "d_all"]
    broken, good, noconfig, every = entries

    assert broken.config is None
    assert broken.versions == ()
    assert str(tmp_path / "a_broken" / CONFIG_FILENAME) in broken.error

    assert noconfig.config is None
    assert "missing" in noconfig.error

    assert good.error == ""
    assert good.config is not None
    assert good.config.name == "b_good"
    assert good.config.backend == "python"
    assert good.versions == (2,)
    assert good.available_versions == (1, 2)
    assert good.path == tmp_path / "b_good"

    assert every.error == ""
    assert every.versions == (1, 3)


def test_scan_repository_reports_a_model_with_no_matching_version(tmp_path: Path) -> None:
    _model(tmp_path, "empty", [])
    _model(
        tmp_path,
        "pinned",
        ["1", "2"],
        config='backend: "python" version_policy { specific { versions: [5] } }',
    )
    empty, pinned = scan_repository(tmp_path)
    for entry in (empty, pinned):
        assert entry.config is not None
        assert entry.versions == ()
        assert "no version directory" in entry.error
        assert str(entry.path) in entry.error
    assert pinned.available_versions == (1, 2)


def test_scan_empty_repository(tmp_path: Path) -> None:
    assert scan_repository(tmp_path) == []


def test_missing_repository_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="is not a directory") as info:
        scan_repository(missing)
    assert str(missing) in str(info.value)


def test_repository_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        scan_repository(path)


def test_non_ascii_digit_dirs_are_not_versions(tmp_path: Path) -> None:
    # str.isdigit() accepts these, but int() rejects superscript two and Triton wants ASCII digits.
    model_dir = _model(tmp_path, "m", ["\u00b2", "\u0661", "4"])
    assert list_versions(model_dir) == [4]
    (entry,) = scan_repository(tmp_path)
    assert entry.versions == (4,)
