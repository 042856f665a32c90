"""The ``parameters`` of an ``llm`` model's config.pbtxt (keys and defaults documented in docs/llm.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from meshserve.pb import model_config_pb2 as mc

__all__ = ["LlmParams"]


@dataclass(frozen=True, slots=True)
class LlmParams:
    stages: int = 1
    """Worker processes the layers are split over (each holds a contiguous range)."""
    max_sequences: int = 64
    """Sequences holding KV cache at once, per stage."""
    max_kv_tokens: int = 65536
    """KV cache tokens (prompt + max_tokens, reserved at admission) over all sequences, per stage."""
    max_tokens_limit: int = 1024
    """Largest ``max_tokens`` a request may ask for."""
    default_max_tokens: int = 16
    max_waiting: int = 256
    """Admitted requests waiting for KV cache room in stage 0; beyond it new ones get UNAVAILABLE."""
    microbatches: int = 0
    """Micro-batches in flight around the ring (0 = one per stage, so every stage has work)."""
    max_step_tokens: int = 4096
    """Tokens in one micro-batch (prompts of new sequences count whole)."""
    dtype: str = "auto"
    """``auto`` (the checkpoint's on a GPU, float32 on a CPU) or a torch dtype name."""
    cpu_threads: int = 1
    """torch threads per stage on a CPU; 0 = the machine's cores / stages.  1 by default: on a machine
    whose cores are shared (several stages, other services) torch's worker threads spin-wait for cores
    and a decode step of the bench model took 5x the CPU time with 2 threads than with 1 (docs/llm.md)."""
    add_bos_token: bool = True
    stream_pending_bytes: int = 1 << 20
    """When stage 0's NATS connection holds more unsent bytes than this, a sequence's new text waits
    and goes out grouped with the next tokens' (a slow consumer gets fewer, larger chunks)."""
    heartbeat_s: float = 1.0
    stage_stale_s: float = 3.0
    """A stage silent this long counts as gone: the ring is incomplete, its sequences end with an error."""
    ring_timeout_s: float = 90.0
    """How long stage 0 waits at start for every stage to be connected before it reports UNAVAILABLE
    (under ``meshserve up``'s 120 s start-up limit; a stage that fails to load ends the wait at once)."""

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> LlmParams:
        raw = {k: v.string_value for k, v in config.parameters.items()}
        kwargs: dict[str, object] = {}
        for name, f in cls.__dataclass_fields__.items():
            if name not in raw:
                continue
            value = raw[name].strip()
            try:
                if f.type == "int":
                    kwargs[name] = int(value)
                elif f.type == "float":
                    kwargs[name] = float(value)
                elif f.type == "bool":
                    if value.lower() not in ("true", "false", "1", "0"):
                        raise ValueError(value)
                    kwargs[name] = value.lower() in ("true", "1")
                else:
                    kwargs[name] = value
            except ValueError:
                raise ValueError(
                    f"config.pbtxt parameter {name!r}: {value!r} is not a valid {f.type}"
                ) from None
        params = cls(**kwargs)  # type: ignore[arg-type]
        for name in ("stages", "max_sequences", "max_kv_tokens", "max_tokens_limit", "default_max_tokens"):
            if getattr(params, name) < 1:
                raise ValueError(f"config.pbtxt parameter {name!r} must be ≥ 1")
        return params

    @property
    def inflight(self) -> int:
        return self.microbatches if self.microbatches > 0 else self.stages

    def threads(self) -> int:
        return self.cpu_threads if self.cpu_threads > 0 else max(1, (os.cpu_count() or 1) // self.stages)
