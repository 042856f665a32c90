"""Reloads that only change how many instances a model has (Triton adds or removes instances and the
others keep serving): when the new config differs from the loaded one in ``instance_group`` counts
alone, and the model's files are the ones loaded, the launcher starts only the instances that are new
and stops only the ones that are gone; the rest keep running, warm, with requests in flight.

Pure: configs, fingerprints and worker plans in, decisions out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from meshserve.model_config import CONFIG_FILENAME
from meshserve.pb import model_config_pb2 as mc
from meshserve.repo_watch import Fingerprint, fingerprint_model

__all__ = ["count_only_change", "files_fingerprint", "split_plan"]

T = TypeVar("T")


def _without_counts(config: mc.ModelConfig) -> mc.ModelConfig:
    copy = mc.ModelConfig()
    copy.CopyFrom(config)
    for group in copy.instance_group:
        group.ClearField("count")
    return copy


def count_only_change(old: mc.ModelConfig | None, new: mc.ModelConfig | None) -> bool:
    """The two configs are the same but for instance_group counts (and at least one count differs).
    Sharded ``llm`` models (one worker per stage) never qualify."""
    if old is None or new is None or old.backend == "llm" or new.backend == "llm":
        return False
    if len(old.instance_group) != len(new.instance_group) or old == new:
        return False
    return _without_counts(old) == _without_counts(new)


def files_fingerprint(model_dir: Path) -> Fingerprint:
    """The model directory's files but its config: equal before and after means the same model files."""
    return tuple(f for f in fingerprint_model(model_dir) if f[0] != CONFIG_FILENAME)


def split_plan(old: Sequence[T], new: Sequence[T]) -> tuple[list[T], list[T], list[T]]:
    """(kept, to start, to stop): the instances of ``new`` already running in ``old`` (equal worker
    specs: same version, instance index and device) are kept."""
    remaining = list(old)
    kept: list[T] = []
    start: list[T] = []
    for spec in new:
        if spec in remaining:
            remaining.remove(spec)
            kept.append(spec)
        else:
            start.append(spec)
    return kept, start, remaining
