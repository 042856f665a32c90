"""Poll mode's change detection: snapshots, fingerprints and settled diffs."""

from __future__ import annotations

import os
from pathlib import Path

from meshserve.repo_watch import RepositoryChanges, RepositoryWatcher, fingerprint_model, snapshot


def _model(
    repo: Path, name: str, config: str = 'backend: "python"', versions: tuple[int, ...] = (1,)
) -> Path:
    model = repo / name
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(config)
    for v in versions:
        (model / str(v)).mkdir(exist_ok=True)
        (model / str(v) / "model.py").write_text("x = 1\n")
    return model


def _touch_later(path: Path, text: str) -> None:
    """Rewrite a file and move its mtime forward (same-size rewrites within one clock tick happen)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 5_000_000_000, before + 5_000_000_000))


def test_snapshot_lists_model_directories_only(tmp_path: Path) -> None:
    _model(tmp_path, "a")
    _model(tmp_path, "b")
    (tmp_path / "README.md").write_text("not a model")
    (tmp_path / ".hidden").mkdir()
    assert sorted(snapshot(tmp_path)) == ["a", "b"]


def test_a_missing_repository_is_an_empty_snapshot(tmp_path: Path) -> None:
    assert snapshot(tmp_path / "nope") == {}


def test_fingerprint_sees_config_edits_new_versions_and_empty_version_dirs(tmp_path: Path) -> None:
    model = _model(tmp_path, "a")
    first = fingerprint_model(model)
    _touch_later(model / "config.pbtxt", 'backend: "python"\nmax_batch_size: 8')
    second = fingerprint_model(model)
    assert second != first
    (model / "2").mkdir()
    third = fingerprint_model(model)
    assert third != second and ("2/", 0, 0) in third


def test_fingerprint_ignores_pycache_swap_files_and_backups(tmp_path: Path) -> None:
    model = _model(tmp_path, "a")
    before = fingerprint_model(model)
    (model / "1" / "__pycache__").mkdir()
    (model / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0" * 10)
    (model / ".config.pbtxt.swp").write_text("swap")
    (model / "config.pbtxt~").write_text("backup")
    assert fingerprint_model(model) == before


def test_fingerprint_follows_symlinked_models(tmp_path: Path) -> None:
    real = _model(tmp_path / "elsewhere", "a")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a").symlink_to(real)
    assert snapshot(repo)["a"] == fingerprint_model(real)


def test_changes_act_only_once_settled(tmp_path: Path) -> None:
    _model(tmp_path, "a")
    watcher = RepositoryWatcher(applied=snapshot(tmp_path))
    assert not watcher.update(snapshot(tmp_path))  # nothing changed
    _model(tmp_path, "b")
    assert watcher.update(snapshot(tmp_path)) == RepositoryChanges()  # first sight: maybe half-copied
    assert watcher.update(snapshot(tmp_path)) == RepositoryChanges(added=("b",))
    assert watcher.update(snapshot(tmp_path)) == RepositoryChanges()  # reported once


def test_a_model_still_being_written_waits(tmp_path: Path) -> None:
    watcher = RepositoryWatcher(applied={})
    model = _model(tmp_path, "a")
    assert not watcher.update(snapshot(tmp_path))
    (model / "1" / "weights.bin").write_bytes(b"1234")  # the copy goes on
    assert not watcher.update(snapshot(tmp_path))
    assert watcher.update(snapshot(tmp_path)).added == ("a",)


def test_edit_and_removal(tmp_path: Path) -> None:
    model = _model(tmp_path, "a")
    _model(tmp_path, "b")
    watcher = RepositoryWatcher(applied=snapshot(tmp_path))
    _touch_later(model / "config.pbtxt", 'backend: "python"\nmax_batch_size: 4')
    watcher.update(snapshot(tmp_path))
    assert watcher.update(snapshot(tmp_path)) == RepositoryChanges(changed=("a",))
    for path in sorted((tmp_path / "b").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (tmp_path / "b").rmdir()
    watcher.update(snapshot(tmp_path))
    assert watcher.update(snapshot(tmp_path)) == RepositoryChanges(removed=("b",))
    assert sorted(watcher.applied) == ["a"]


def test_a_model_that_comes_back_unchanged_is_no_change(tmp_path: Path) -> None:
    _model(tmp_path, "a")
    baseline = snapshot(tmp_path)
    watcher = RepositoryWatcher(applied=dict(baseline))
    assert not watcher.update({})  # gone for one poll only (a move, a flaky mount)
    assert not watcher.update(baseline)
    assert not watcher.update(baseline)


def test_version_directory_removed_is_a_change(tmp_path: Path) -> None:
    model = _model(tmp_path, "a", versions=(1, 2))
    watcher = RepositoryWatcher(applied=snapshot(tmp_path))
    (model / "2" / "model.py").unlink()
    (model / "2").rmdir()
    watcher.update(snapshot(tmp_path))
    assert watcher.update(snapshot(tmp_path)).changed == ("a",)
