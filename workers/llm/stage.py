"""One stage's compute: its slice of the model, its KV cache pool and (last stage) its samplers.

Transport-free: it takes a :class:`mesh_pb2.StageStep` and the step's input (token ids on the first
stage, hidden states on the others) and returns the step's output (hidden states, or on the last stage
one sampled token per sequence).  ``workers/llm/app.py`` moves steps between processes; tests chain
stages in one process.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from meshserve.pb import mesh_pb2
from workers.llm.checkpoint import _tensor_bytes, load_stage, read_index, split_layers
from workers.llm.config import LlamaConfig
from workers.llm.kvcache import KVCachePool
from workers.llm.model import Segment
from workers.llm.sampling import Sampler, SamplingParams

__all__ = ["StageRuntime", "plan_split", "resolve_dtype"]

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def resolve_dtype(name: str, config: LlamaConfig, device: str) -> torch.dtype:
    """``auto``: the checkpoint's dtype on a GPU; float32 on a CPU (half precision is slow there)."""
    if name == "auto":
        name = config.dtype if device.startswith("cuda") else "float32"
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype {name!r} is not a torch floating-point dtype")
    return dtype


def plan_split(checkpoint_dir: Path, config: LlamaConfig, stages: int) -> list[tuple[int, int]]:
    """Layer ranges per stage, balanced by parameter bytes (embeddings count for the first stage, the
    final norm and LM head — the embedding matrix again when tied — for the last)."""
    weight_map = read_index(checkpoint_dir)
    sizes = _tensor_bytes(checkpoint_dir, weight_map)
    per_layer = [0] * config.num_hidden_layers
    first = last = 0
    for name, size in sizes.items():
        m = _LAYER.match(name)
        if m:
            per_layer[int(m.group(1))] += size
        elif name.startswith("model.embed_tokens"):
            first += size
            if config.tie_word_embeddings or "lm_head.weight" not in weight_map:
                last += size
        else:
            last += size
    return split_layers(per_layer, stages, first, last)


@dataclass(slots=True)
class SeqInfo:
    reply_to: str
    request_id: str


class StageRuntime:
    def __init__(
        self,
        checkpoint_dir: Path,
        stage: int,
        stages: int,
        device: str = "cpu",
        dtype: str = "auto",
        max_sequences: int = 64,
        max_kv_tokens: int = 65536,
    ) -> None:
        self.config = LlamaConfig.load(checkpoint_dir)
        if not 0 <= stage < stages:
            raise ValueError(f"stage {stage} is not in 0..{stages - 1}")
        self.stage, self.stages = stage, stages
        self.ranges = plan_split(checkpoint_dir, self.config, stages)
        self.start, self.end = self.ranges[stage]
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.config, device)
        self.module = load_stage(checkpoint_dir, self.config, self.start, self.end, self.dtype, self.device)
        c = self.config
        self.pool = KVCachePool(
            self.end - self.start, c.num_key_value_heads, c.head_dim, self.dtype, self.device,
            max_sequences, max_kv_tokens,
        )  # fmt: skip
        self.samplers: dict[int, Sampler] = {}
        self.seqs: dict[int, SeqInfo] = {}
        self.steps = 0
        """Steps with at least one sequence (stage metrics; bench/pipeline.py reads them)."""
        self.compute_s = 0.0
        self.step_seqs = 0
        self.step_tokens = 0

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.stages - 1

    def parameter_bytes(self) -> int:
        seen: set[int] = set()
        total = 0
        for p in self.module.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
        return total

    def free(self, seq_ids: list[int]) -> None:
        for seq_id in seq_ids:
            self.pool.free(seq_id)
            self.samplers.pop(seq_id, None)
            self.seqs.pop(seq_id, None)

    def clear(self) -> dict[int, SeqInfo]:
        """Drop every sequence (after a fault); return what they were, so their requesters can be told."""
        dropped = dict(self.seqs)
        self.pool.clear()
        self.samplers.clear()
        self.seqs.clear()
        return dropped

    @torch.inference_mode()
    def run(self, step: mesh_pb2.StageStep, x: torch.Tensor) -> torch.Tensor | list[int]:
        """Free what the step says, admit its new sequences, run the layers; the last stage samples."""
        self.free(list(step.free))
        for seq in step.seqs:
            if seq.capacity:
                self.pool.allocate(seq.seq_id, seq.capacity)
                self.seqs[seq.seq_id] = SeqInfo(seq.reply_to, seq.request_id)
                if self.last:
                    s = seq.sampling
                    self.samplers[seq.seq_id] = Sampler(
                        SamplingParams(
                            temperature=s.temperature, top_k=s.top_k, top_p=s.top_p or 1.0,
                            seed=s.seed if s.has_seed else None,
                        )
                    )  # fmt: skip
        if not step.seqs:
            return [] if self.last else x
        segments = [Segment(s.seq_id, s.start, s.length) for s in step.seqs]
        caches = [self.pool.get(s.seq_id) for s in step.seqs]
        for seg, cache in zip(segments, caches, strict=True):
            if seg.start + seg.length > cache.capacity:
                raise ValueError(f"sequence {seg.seq_id} ran past its KV cache of {cache.capacity} tokens")
        t0 = time.perf_counter()
        try:
            out: torch.Tensor = self.module(x.to(self.device), segments, caches)
            if not self.last:
                if out.is_cuda:
                    torch.cuda.synchronize(out.device)
                return out
            return [self.samplers[s.seq_id].sample(row) for s, row in zip(step.seqs, out, strict=True)]
        finally:
            self.steps += 1
            self.compute_s += time.perf_counter() - t0
            self.step_seqs += len(segments)
            self.step_tokens += sum(s.length for s in segments)

    @torch.inference_mode()
    def logits(self, step: mesh_pb2.StageStep, x: torch.Tensor) -> torch.Tensor:
        """Like :meth:`run` on the last stage, but the logits instead of tokens (tests compare them)."""
        self.free(list(step.free))
        for seq in step.seqs:
            if seq.capacity:
                self.pool.allocate(seq.seq_id, seq.capacity)
        segments = [Segment(s.seq_id, s.start, s.length) for s in step.seqs]
        caches = [self.pool.get(s.seq_id) for s in step.seqs]
        out: torch.Tensor = self.module(x.to(self.device), segments, caches)
        return out


def encode_hidden(h: torch.Tensor) -> tuple[bytes, str]:
    h = h.detach().to("cpu").contiguous()
    return h.view(torch.uint8).numpy().tobytes(), str(h.dtype).removeprefix("torch.")


def decode_hidden(data: bytes, dtype: str, hidden_size: int) -> torch.Tensor:
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(getattr(torch, dtype))
    return t.reshape(-1, hidden_size)
