"""Hugging Face sharded safetensors: the index, the split of layers into stages by parameter bytes, and
loading one stage's tensors only (``safetensors.safe_open`` per shard, the tensors named in the index).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open

from workers.llm.config import LlamaConfig
from workers.llm.model import StageModule

__all__ = ["INDEX_FILE", "layer_bytes", "load_stage", "read_index", "split_layers", "stage_tensor_names"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def read_index(checkpoint_dir: Path) -> dict[str, str]:
    """Tensor name → shard file name (a single ``model.safetensors`` is read as a one-shard index)."""
    index = checkpoint_dir / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {str(k): str(v) for k, v in weight_map.items()}
    single = checkpoint_dir / SINGLE_FILE
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return dict.fromkeys(f.keys(), SINGLE_FILE)
    raise FileNotFoundError(f"{checkpoint_dir} holds neither {INDEX_FILE} nor {SINGLE_FILE}")


def _tensor_bytes(checkpoint_dir: Path, weight_map: dict[str, str]) -> dict[str, int]:
    """Bytes per tensor, from the shards' headers (no tensor data is read)."""
    sizes: dict[str, int] = {}
    by_file: dict[str, list[str]] = defaultdict(list)
    for name, file in weight_map.items():
        by_file[file].append(name)
    for file, names in by_file.items():
        with safe_open(str(checkpoint_dir / file), framework="pt") as f:
            for name in names:
                sl = f.get_slice(name)
                numel = 1
                for d in sl.get_shape():
                    numel *= d
                sizes[name] = numel * _dtype_size(sl.get_dtype())
    return sizes


def _dtype_size(dtype: str) -> int:
    return {"F64": 8, "F32": 4, "I64": 8, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1}.get(
        dtype, 4
    )


def layer_bytes(checkpoint_dir: Path, config: LlamaConfig) -> list[int]:
    sizes = _tensor_bytes(checkpoint_dir, read_index(checkpoint_dir))
    per_layer = [0] * config.num_hidden_layers
    for name, size in sizes.items():
        m = _LAYER.match(name)
        if m:
            per_layer[int(m.group(1))] += size
    return per_layer


def split_layers(
    per_layer: list[int], stages: int, first_extra: int = 0, last_extra: int = 0
) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` ranges, one per stage, with parameter bytes as even as a greedy cut
    allows; ``first_extra`` / ``last_extra`` are the embedding and LM-head bytes the end stages also hold.
    Every stage gets at least one layer."""
    n = len(per_layer)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot split {n} layers into {stages} stages (1 ≤ stages ≤ layers)")
    total = sum(per_layer) + first_extra + last_extra
    target = total / stages
    ranges: list[tuple[int, int]] = []
    start = 0
    acc = float(first_extra)
    for stage in range(stages - 1):
        end = start + 1
        acc += per_layer[start]
        goal = target * (stage + 1)
        # take more layers while doing so brings the cumulative sum closer to the goal, leaving one
        # layer at least for every later stage
        while end < n - (stages - 1 - stage) and abs(acc + per_layer[end] - goal) < abs(acc - goal):
            acc += per_layer[end]
            end += 1
        ranges.append((start, end))
        start = end
    ranges.append((start, n))
    return ranges


def stage_tensor_names(
    weight_map: dict[str, str], config: LlamaConfig, start: int, end: int
) -> dict[str, str]:
    """The stage's parameter name → the checkpoint tensor that holds it (``lm_head.weight`` is the
    embedding matrix when the embeddings are tied)."""
    wanted: dict[str, str] = {}
    for name in weight_map:
        m = _LAYER.match(name)
        if m and start <= int(m.group(1)) < end:
            wanted[name] = name
    if start == 0:
        wanted["model.embed_tokens.weight"] = "model.embed_tokens.weight"
    if end == config.num_hidden_layers:
        wanted["model.norm.weight"] = "model.norm.weight"
        tied = config.tie_word_embeddings or "lm_head.weight" not in weight_map
        wanted["lm_head.weight"] = "model.embed_tokens.weight" if tied else "lm_head.weight"
    missing = sorted({src for src in wanted.values() if src not in weight_map})
    if missing:
        raise ValueError(f"checkpoint index lacks tensors {missing[:5]}")
    return wanted


def load_stage(
    checkpoint_dir: Path,
    config: LlamaConfig,
    start: int,
    end: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> StageModule:
    """Build the stage on the meta device, then read only its tensors, shard by shard, straight to ``device``."""
    weight_map = read_index(checkpoint_dir)
    names = stage_tensor_names(weight_map, config, start, end)
    with torch.device("meta"):
        module = StageModule(config, start, end)
    by_file: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for param, src in names.items():
        by_file[weight_map[src]].append((param, src))
    state: dict[str, torch.Tensor] = {}
    read: dict[str, torch.Tensor] = {}  # a tied tensor is read once and shared
    dev = str(device)
    for file, pairs in sorted(by_file.items()):
        with safe_open(str(checkpoint_dir / file), framework="pt", device=dev) as f:
            for param, src in pairs:
                if src not in read:
                    read[src] = f.get_tensor(src).to(dtype)
                state[param] = read[src]
    module.load_state_dict(state, strict=True, assign=True)
    module.eval()
    return module
