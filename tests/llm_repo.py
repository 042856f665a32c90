"""Builds the example language model (examples/make_llm.py) for tests, into a temporary directory."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def make_llm_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_llm", ROOT / "examples" / "make_llm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_llm_repo(out: Path, stages: int = 1, size: str = "tiny", tie: bool | None = None) -> Path:
    """Write ``out/llm`` (config.pbtxt + checkpoint ``1/``); return the checkpoint directory."""
    ckpt: Path = make_llm_module().make(out, stages=stages, size=size, tie=tie)
    return ckpt
