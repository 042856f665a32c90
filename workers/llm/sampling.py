"""Sampling parameters of one request, checked, and the sampler that turns last-token logits into a token.

Greedy when ``temperature`` is 0; otherwise softmax(logits / temperature) restricted to the ``top_k``
most likely tokens and to the smallest set whose probability reaches ``top_p``, drawn with a
per-sequence ``torch.Generator`` seeded from ``seed`` (so a seeded request is reproducible).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from meshserve.errors import InvalidArgument

__all__ = ["SAMPLING_KEYS", "Sampler", "SamplingParams"]

SAMPLING_KEYS = ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "ignore_eos")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    """0 = no top-k cut."""
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default=())
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def parse(cls, raw: dict[str, Any], max_tokens_limit: int, default_max_tokens: int) -> SamplingParams:
        """From request parameters (numbers may arrive as numbers or strings); each bad value is an
        INVALID_ARGUMENT naming the parameter and its allowed range."""
        max_tokens = _int(raw, "max_tokens", default_max_tokens)
        if not 1 <= max_tokens <= max_tokens_limit:
            raise InvalidArgument(f"max_tokens must be between 1 and {max_tokens_limit}, got {max_tokens}")
        temperature = _float(raw, "temperature", 0.0)
        if not 0.0 <= temperature <= 100.0:
            raise InvalidArgument(f"temperature must be between 0 and 100, got {temperature}")
        top_k = _int(raw, "top_k", 0)
        if top_k < 0:
            raise InvalidArgument(f"top_k must be ≥ 0 (0 = off), got {top_k}")
        top_p = _float(raw, "top_p", 1.0)
        if not 0.0 < top_p <= 1.0:
            raise InvalidArgument(f"top_p must be in (0, 1], got {top_p}")
        seed = raw.get("seed")
        seed_value = None if seed in (None, "") else _int(raw, "seed", 0)
        if seed_value is not None and not 0 <= seed_value < 2**63:
            raise InvalidArgument(f"seed must be between 0 and 2^63-1, got {seed_value}")
        ignore = raw.get("ignore_eos", False)
        if not isinstance(ignore, bool):
            raise InvalidArgument(f"ignore_eos must be a boolean, got {ignore!r}")
        return cls(max_tokens, temperature, top_k, top_p, seed_value, _stops(raw.get("stop")), ignore)


def _int(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool):
        raise InvalidArgument(f"{key} must be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{key} must be an integer, got {value!r}") from None


def _float(raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool):
        raise InvalidArgument(f"{key} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{key} must be a number, got {value!r}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise InvalidArgument(f"{key} must be a finite number, got {value!r}")
    return out


def _stops(value: Any) -> tuple[str, ...]:
    """``stop``: one string, a list of strings, or a JSON list in a string (request parameters are
    scalars, so the generate extension and gRPC can only send it that way)."""
    if value is None or value == "":
        return ()
    if isinstance(value, str) and value.startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidArgument(f"stop: {value!r} is not a JSON list of strings") from None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items) or len(items) > 16:
        raise InvalidArgument("stop must be a non-empty string or a list of at most 16 non-empty strings")
    return tuple(items)


class Sampler:
    """One sequence's sampler (its generator keeps its state across steps)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._generator: torch.Generator | None = None
        if not params.greedy:
            self._generator = torch.Generator(device="cpu")
            self._generator.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))

    def sample(self, logits: torch.Tensor) -> int:
        """``logits``: ``[vocab]`` float32 (any device)."""
        if self._generator is None:
            return int(torch.argmax(logits).item())
        p = self.params
        scores = logits.to("cpu", torch.float32) / p.temperature
        if p.top_k and p.top_k < scores.shape[-1]:
            kth = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
            drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= p.top_p  # keep the first past top_p
            sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator).item())
