"""The Llama decoder in plain torch, cut to one stage: layers ``[start, end)`` of the model, plus the
token embeddings on the first stage and the final norm and LM head on the last.

Parameter names are Hugging Face's (``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.q_proj.weight``,
``model.norm.weight``, ``lm_head.weight``), so a stage's ``state_dict`` is a slice of the checkpoint's.

A step runs a *packed* micro-batch: the tokens of several sequences concatenated on one axis (a prefill
brings many tokens of a sequence, a decode step one).  The linear layers run on all tokens at once; the
attention runs per sequence against that sequence's KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workers.llm.config import LlamaConfig
from workers.llm.kvcache import SequenceCache

__all__ = ["Segment", "StageModule", "rotary_inv_freq"]


@dataclass(frozen=True, slots=True)
class Segment:
    """One sequence's tokens in a packed step: ``length`` tokens at positions ``start …``."""

    seq_id: int
    start: int
    length: int


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rotary_inv_freq(config: LlamaConfig, device: torch.device | str) -> torch.Tensor:
    dim = config.head_dim
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    return 1.0 / (config.rope_theta**exponent).to(device)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.heads * self.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, self.kv_heads * self.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, c.hidden_size, bias=c.attention_bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        segments: list[Segment],
        caches: list[SequenceCache],
        layer: int,
    ) -> torch.Tensor:
        tokens = x.shape[0]
        q = self.q_proj(x).view(tokens, self.heads, self.head_dim)
        k = self.k_proj(x).view(tokens, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(tokens, self.kv_heads, self.head_dim)
        c, s = cos[:, None, :], sin[:, None, :]
        q = q * c + _rotate_half(q) * s
        k = k * c + _rotate_half(k) * s
        groups = self.heads // self.kv_heads
        outs: list[torch.Tensor] = []
        offset = 0
        for seg, cache in zip(segments, caches, strict=True):
            n = seg.length
            end = seg.start + n
            cache.k[layer, :, seg.start : end] = k[offset : offset + n].transpose(0, 1)
            cache.v[layer, :, seg.start : end] = v[offset : offset + n].transpose(0, 1)
            keys = cache.k[layer, :, :end]
            values = cache.v[layer, :, :end]
            if groups > 1:
                keys = keys.repeat_interleave(groups, dim=0)
                values = values.repeat_interleave(groups, dim=0)
            query = q[offset : offset + n].transpose(0, 1)  # heads, n, dim
            mask = None
            if n > 1:
                positions = torch.arange(seg.start, end, device=x.device)
                mask = torch.arange(end, device=x.device)[None, :] <= positions[:, None]
            out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
            outs.append(out.transpose(0, 1).reshape(n, self.heads * self.head_dim))
            offset += n
        result: torch.Tensor = self.o_proj(torch.cat(outs) if len(outs) > 1 else outs[0])
        return result


class MLP(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return result


class DecoderLayer(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        segments: list[Segment],
        caches: list[SequenceCache],
        layer: int,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, segments, caches, layer)
        result: torch.Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return result


class _Inner(nn.Module):
    """``model.*`` in Hugging Face's names: embeddings, the stage's layers (keyed by global index), norm."""

    def __init__(self, c: LlamaConfig, start: int, end: int, first: bool, last: bool) -> None:
        super().__init__()
        if first:
            self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleDict({str(i): DecoderLayer(c) for i in range(start, end)})
        if last:
            self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class StageModule(nn.Module):
    """Layers ``[start, end)`` of a Llama model; embeddings when ``start == 0``, norm + LM head when
    ``end == num_hidden_layers``."""

    def __init__(self, config: LlamaConfig, start: int, end: int) -> None:
        super().__init__()
        self.config = config
        self.start, self.end = start, end
        self.first = start == 0
        self.last = end == config.num_hidden_layers
        self.model = _Inner(config, start, end, self.first, self.last)
        if self.last:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.inv_freq: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, segments: list[Segment], caches: list[SequenceCache]) -> torch.Tensor:
        """``x``: token ids ``[T]`` (first stage) or hidden states ``[T, hidden]``.  Returns hidden
        states ``[T, hidden]``, or on the last stage the logits of each segment's last token
        ``[len(segments), vocab]`` (float32)."""
        if self.first:
            x = self.model.embed_tokens(x)
        if self.inv_freq is None or self.inv_freq.device != x.device:
            self.inv_freq = rotary_inv_freq(self.config, x.device)
        positions = torch.cat(
            [torch.arange(s.start, s.start + s.length, device=x.device) for s in segments]
        ).to(torch.float32)
        freqs = positions[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for local, layer in enumerate(self.model.layers.values()):
            x = layer(x, cos, sin, segments, caches, local)
        if not self.last:
            return x
        ends = torch.tensor([s.length for s in segments], device=x.device).cumsum(0) - 1
        h = self.model.norm(x[ends])
        logits: torch.Tensor = self.lm_head(h).to(torch.float32)
        return logits
