"""Per-sequence KV cache of one stage, bounded in sequences and in tokens.

A sequence reserves, when it is admitted, room for its whole life (prompt + ``max_tokens``), so a
sequence that is running never fails for lack of cache; what does not fit is refused at admission.
Freed on finish, error or cancel (``free``); ``tokens_reserved`` / ``sequences`` are what the
stage's metrics show.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from meshserve.errors import InvalidArgument, Unavailable

__all__ = ["CacheFull", "KVCachePool", "SequenceCache"]


class CacheFull(Unavailable):
    """No room for one more sequence now (try again later; not the request's fault)."""


@dataclass(slots=True)
class SequenceCache:
    k: torch.Tensor
    """``[layers of this stage, kv heads, capacity, head dim]``"""
    v: torch.Tensor
    capacity: int


class KVCachePool:
    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        max_sequences: int,
        max_tokens: int,
    ) -> None:
        self._shape = (layers, kv_heads, head_dim)
        self._dtype = dtype
        self._device = device
        self.max_sequences = max_sequences
        self.max_tokens = max_tokens
        self._caches: dict[int, SequenceCache] = {}
        self.tokens_reserved = 0

    @property
    def sequences(self) -> int:
        return len(self._caches)

    def bytes_per_token(self) -> int:
        layers, heads, dim = self._shape
        return 2 * layers * heads * dim * torch.tensor([], dtype=self._dtype).element_size()

    def allocate(self, seq_id: int, capacity: int) -> SequenceCache:
        if seq_id in self._caches:
            raise InvalidArgument(f"sequence {seq_id} already has a KV cache")
        if capacity > self.max_tokens:
            raise InvalidArgument(
                f"prompt + max_tokens = {capacity} tokens exceeds the KV cache of {self.max_tokens} tokens "
                "(config.pbtxt parameter max_kv_tokens)"
            )
        if len(self._caches) >= self.max_sequences or self.tokens_reserved + capacity > self.max_tokens:
            raise CacheFull(
                f"KV cache full: {len(self._caches)} sequences, {self.tokens_reserved} of {self.max_tokens} "
                f"tokens reserved (max_sequences {self.max_sequences})"
            )
        layers, heads, dim = self._shape
        k = torch.empty((layers, heads, capacity, dim), dtype=self._dtype, device=self._device)
        cache = SequenceCache(k, torch.empty_like(k), capacity)
        self._caches[seq_id] = cache
        self.tokens_reserved += capacity
        return cache

    def get(self, seq_id: int) -> SequenceCache:
        cache = self._caches.get(seq_id)
        if cache is None:
            raise KeyError(seq_id)
        return cache

    def free(self, seq_id: int) -> bool:
        cache = self._caches.pop(seq_id, None)
        if cache is None:
            return False
        self.tokens_reserved -= cache.capacity
        return True

    def clear(self) -> int:
        n = len(self._caches)
        self._caches.clear()
        self.tokens_reserved = 0
        return n

    def has(self, seq_id: int) -> bool:
        return seq_id in self._caches
