"""The model repository in Triton's layout: ``<repo>/<model>/config.pbtxt`` and ``<model>/<version>/``.

A model directory may lack config.pbtxt when a version directory holds a ``model.onnx`` (or a
``model.savedmodel/``): its entry
then carries a minimal config flagged ``auto_complete``, and each worker completes it from the graph
before announcing it (gateways and batchers use the announced config).

Version directories are positive integers (a name that is not a number, or starts with ``0``, is
ignored, as Triton does).  ``version_policy`` picks which versions are served: ``latest { num_versions }``
(default: the single highest), ``all``, or ``specific { versions }``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from meshserve.ensemble import check_references
from meshserve.errors import MeshError
from meshserve.model_config import ConfigError, load_config, needs_auto_complete
from meshserve.pb import model_config_pb2 as mc

__all__ = ["ModelEntry", "list_versions", "scan_repository", "select_versions"]


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model directory: its config (or why it has none) and the versions to serve."""

    name: str
    path: Path
    config: mc.ModelConfig | None
    versions: tuple[int, ...] = ()
    error: str = ""
    available_versions: tuple[int, ...] = field(default=())
    auto_complete: bool = False
    """The config lacks inputs or outputs that its workers derive from the model file."""


def list_versions(model_dir: Path) -> list[int]:
    """Numeric version directories, ascending."""
    versions = []
    for child in model_dir.iterdir():
        if (
            child.is_dir()
            and child.name.isascii()
            and child.name.isdigit()
            and not child.name.startswith("0")
        ):
            versions.append(int(child.name))
    return sorted(versions)


def select_versions(policy: mc.ModelVersionPolicy, available: list[int]) -> list[int]:
    """The versions a ``version_policy`` serves out of those on disk."""
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return list(available)
    if which == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in available if v in wanted]
    count = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
    return available[-count:] if available else []


def scan_repository(repository: Path) -> list[ModelEntry]:
    """Every model directory under ``repository``, sorted by name; a broken model carries its error."""
    if not repository.is_dir():
        raise ConfigError(f"model repository '{repository}' is not a directory")
    entries = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        entries.append(_read_model(model_dir))
    return _check_ensembles(entries)


def _check_ensembles(entries: list[ModelEntry]) -> list[ModelEntry]:
    """An ensemble whose step models are missing from the repository (or that calls itself through
    other ensembles) cannot load: it carries the reason like any broken model."""
    configs = {e.name: e.config for e in entries}
    checked = []
    for entry in entries:
        problem = "" if entry.error else check_references(entry.name, configs)
        checked.append(replace(entry, error=problem) if problem else entry)
    return checked


def _read_model(model_dir: Path) -> ModelEntry:
    try:
        config = load_config(model_dir)
    except MeshError as exc:
        return ModelEntry(model_dir.name, model_dir, None, error=str(exc))
    available = list_versions(model_dir)
    versions = select_versions(config.version_policy, available)
    error = "" if versions else f"no version directory under {model_dir} matches its version_policy"
    return ModelEntry(
        model_dir.name,
        model_dir,
        config,
        tuple(versions),
        error,
        available_versions=tuple(available),
        auto_complete=needs_auto_complete(config),
    )
