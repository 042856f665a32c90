"""Change detection for ``--model-control-mode poll``: snapshots of a model repository and their diff.

A snapshot fingerprints every model directory by the (relative path, size, mtime) of each file in it,
so an edited config.pbtxt, a replaced model file, or a version directory added or removed all change
the model's fingerprint.  Hidden names (``.*``, editor swap files), ``~`` backups and ``__pycache__``
(the python backend's imports write there) are not part of a model and never trigger a reload.

:class:`RepositoryWatcher` acts on a model only once its fingerprint has stayed the same for two
polls in a row: a model being copied in is seen half-written by one poll, and loading it then would
fail (Triton's POLL mode has no such guard and warns about it).  Pure: no processes, no NATS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Fingerprint", "RepositoryChanges", "RepositoryWatcher", "fingerprint_model", "snapshot"]

Fingerprint = tuple[tuple[str, int, int], ...]
"""(path relative to the model directory, size in bytes, mtime in ns) of every file, sorted."""


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith("~") or name == "__pycache__"


def fingerprint_model(model_dir: Path) -> Fingerprint:
    """Every file under ``model_dir`` (symlinks followed), with its size and modification time."""
    files: list[tuple[str, int, int]] = []
    for root, dirs, names in os.walk(model_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _ignored(d))
        for name in names:
            if _ignored(name):
                continue
            path = Path(root) / name
            try:
                st = path.stat()
            except OSError:  # vanished between listing and stat, or a dangling link
                continue
            files.append((str(path.relative_to(model_dir)), st.st_size, st.st_mtime_ns))
        # empty version directories count too: adding one is a change Triton reacts to
        for d in dirs:
            files.append((str((Path(root) / d).relative_to(model_dir)) + "/", 0, 0))
    return tuple(sorted(files))


def snapshot(repository: Path) -> dict[str, Fingerprint]:
    """Model name → fingerprint, for every (non-hidden) directory directly under ``repository``."""
    models: dict[str, Fingerprint] = {}
    try:
        children = list(repository.iterdir())
    except OSError:
        return models
    for child in children:
        if child.is_dir() and not _ignored(child.name):
            models[child.name] = fingerprint_model(child)
    return models


@dataclass(frozen=True, slots=True)
class RepositoryChanges:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass
class RepositoryWatcher:
    """Turns successive snapshots into settled changes relative to what was last acted on."""

    applied: dict[str, Fingerprint]
    """The repository as the mesh serves it (the baseline, then every change reported)."""
    _previous: dict[str, Fingerprint] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._previous = dict(self.applied)

    def update(self, current: dict[str, Fingerprint]) -> RepositoryChanges:
        """Changes between ``applied`` and ``current`` that the previous poll saw the same way; they
        become the new ``applied``.  A model still changing waits for the next poll."""
        previous, self._previous = self._previous, current
        settled = {name for name in set(current) | set(previous) if current.get(name) == previous.get(name)}
        added, removed, changed = [], [], []
        for name in sorted(settled | (set(self.applied) - set(current) - set(previous))):
            now, before = current.get(name), self.applied.get(name)
            if now == before:
                continue
            if before is None:
                added.append(name)
            elif now is None:
                removed.append(name)
            else:
                changed.append(name)
        for name in added + changed:
            self.applied[name] = current[name]
        for name in removed:
            self.applied.pop(name, None)
        return RepositoryChanges(tuple(added), tuple(removed), tuple(changed))
