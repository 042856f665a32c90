"""``meshserve plan``: how many pipeline stages (devices, nodes) a language model needs, and why.

Pure arithmetic, no torch: from a Hugging Face ``config.json`` (or just a parameter count, with the
shape of a GPT-3-like model derived from it), the dtype, the device memory, the context length and the
concurrent sequences, it sums what each stage must hold — its layers' weights, their KV cache for every
sequence at full context, one prefill's activations, a headroom fraction — and finds the fewest stages
whose byte-balanced layer split fits every device.  All sizes are decimal (1 GB = 10^9 bytes).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DTYPE_BYTES", "ModelShape", "Plan", "make_plan", "parse_params", "render"]

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
GB = 1e9


@dataclass(frozen=True, slots=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = False
    mlp_matrices: int = 3
    """3 for SwiGLU (gate, up, down), 2 for a GPT-style MLP."""

    def layer_params(self) -> int:
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        return attn + self.mlp_matrices * self.hidden * self.intermediate + 2 * self.hidden

    def embed_params(self) -> int:
        return self.vocab * self.hidden

    def head_params(self) -> int:
        return self.hidden + (0 if self.tied else self.vocab * self.hidden)

    def params(self) -> int:
        return self.embed_params() + self.layers * self.layer_params() + self.head_params()

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> ModelShape:
        heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        return cls(
            layers=int(raw["num_hidden_layers"]),
            hidden=hidden,
            heads=heads,
            kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            intermediate=int(raw.get("intermediate_size") or 4 * hidden),
            vocab=int(raw.get("vocab_size", 32000)),
            tied=bool(raw.get("tie_word_embeddings", False)),
        )

    @classmethod
    def from_params(cls, params: float) -> ModelShape:
        """A GPT-3-shaped model of ``params`` parameters: hidden = 128 x layers, MLP 4 x hidden (2 matrices),
        128-wide heads, full multi-head attention, vocab 50257 (GPT-3 175B: 96 layers, hidden 12288)."""
        vocab = 50257
        layers = max(1, round(((params - 2 * vocab * 128) / (12 * 128 * 128)) ** (1 / 3)))
        hidden = 128 * layers
        return cls(layers, hidden, hidden // 128, hidden // 128, 128, 4 * hidden, vocab, False, 2)


def parse_params(text: str) -> float:
    """``175B``, ``7b``, ``350M``, ``1.3e9`` → a parameter count."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kKmMbBtT]?)\s*", text)
    if not m:
        raise ValueError(f"cannot read a parameter count from {text!r} (e.g. 175B, 7B, 350M)")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
    return float(m.group(1)) * scale


@dataclass(slots=True)
class StagePlan:
    stage: int
    layers: tuple[int, int]
    weights_bytes: int
    kv_cache_bytes: int
    total_bytes: int


@dataclass(slots=True)
class Plan:
    stages: int
    devices: int
    nodes: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    headroom_bytes: int
    usable_bytes_per_device: int
    device_memory_bytes: int
    params: int
    dtype: str
    context: int
    concurrent: int
    devices_per_node: int
    shape: ModelShape
    kv_bytes_per_token: int
    per_stage: list[StagePlan] = field(default_factory=list)
    fits: bool = True

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = asdict(self.shape)
        return out


def _split(layer: float, layers: int, stages: int, first: float, last: float) -> list[tuple[int, int]]:
    """Contiguous, byte-balanced layer ranges (the same greedy cut the stages use at load)."""
    total = layer * layers + first + last
    target = total / stages
    ranges, start, acc = [], 0, first
    for k in range(stages - 1):
        end = start + 1
        acc += layer
        while end < layers - (stages - 1 - k) and abs(acc + layer - target * (k + 1)) < abs(
            acc - target * (k + 1)
        ):
            acc += layer
            end += 1
        ranges.append((start, end))
        start = end
    ranges.append((start, layers))
    return ranges


def make_plan(
    shape: ModelShape,
    dtype: str = "float16",
    device_memory_gb: float = 80.0,
    context: int = 2048,
    concurrent: int = 16,
    headroom: float = 0.1,
    devices_per_node: int = 8,
) -> Plan:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r}: one of {', '.join(DTYPE_BYTES)}")
    b = DTYPE_BYTES[dtype]
    kv_b = 2 if b < 2 else b  # the KV cache stays in 16-bit when the weights are quantized
    device = int(device_memory_gb * GB)
    layer_w = shape.layer_params() * b
    kv_per_token_layer = 2 * shape.kv_heads * shape.head_dim * kv_b
    kv_layer = kv_per_token_layer * context * concurrent
    # one prefill of a full-context prompt: hidden-sized activations of every token, the MLP's
    # intermediate ones, and one sequence's attention scores in float32
    act = int(
        context * (4 * shape.hidden + 2 * shape.intermediate) * max(b, 2)
        + shape.heads * context * context * 4
    )
    head_room = int(device * headroom)
    usable = device - head_room - act
    first, last = shape.embed_params() * b, shape.head_params() * b
    plan_stages = shape.layers
    ranges: list[tuple[int, int]] = []
    fits = False
    for stages in range(1, shape.layers + 1):
        ranges = _split(layer_w + kv_layer, shape.layers, stages, first, last)
        sizes = [
            (e - s) * (layer_w + kv_layer) + (first if k == 0 else 0) + (last if k == stages - 1 else 0)
            for k, (s, e) in enumerate(ranges)
        ]
        if usable > 0 and max(sizes) <= usable:
            plan_stages, fits = stages, True
            break
    per_stage = []
    for k, (s, e) in enumerate(ranges):
        w = int((e - s) * layer_w + (first if k == 0 else 0) + (last if k == len(ranges) - 1 else 0))
        kv = int((e - s) * kv_layer)
        per_stage.append(StagePlan(k, (s, e), w, kv, w + kv + act))
    return Plan(
        stages=plan_stages, devices=plan_stages, nodes=math.ceil(plan_stages / devices_per_node),
        weights_bytes=int(shape.params() * b), kv_cache_bytes=int(kv_layer * shape.layers),
        activation_bytes=act, headroom_bytes=head_room, usable_bytes_per_device=usable,
        device_memory_bytes=device, params=shape.params(), dtype=dtype, context=context,
        concurrent=concurrent, devices_per_node=devices_per_node, shape=shape,
        kv_bytes_per_token=int(kv_per_token_layer * shape.layers), per_stage=per_stage, fits=fits,
    )  # fmt: skip


def _gb(n: float) -> str:
    return f"{n / GB:,.1f} GB"


def render(p: Plan) -> str:
    s, b = p.shape, DTYPE_BYTES[p.dtype]
    kv_b = 2 if b < 2 else b
    need = p.weights_bytes + p.kv_cache_bytes
    lines = [
        f"model        {p.params / 1e9:,.2f} B parameters: {s.layers} layers, hidden {s.hidden}, {s.heads} heads "
        f"({s.kv_heads} KV heads x {s.head_dim}), MLP {s.intermediate}, vocab {s.vocab}",
        f"weights      {p.params / 1e9:,.2f} B params x {b:g} B ({p.dtype}) = {_gb(p.weights_bytes)}",
        f"KV cache     2 (K,V) x {s.layers} layers x {s.kv_heads} KV heads x {s.head_dim} x {kv_b:g} B "
        f"= {p.kv_bytes_per_token / 1e6:,.2f} MB per token",
        f"             x {p.context} context x {p.concurrent} sequences = {_gb(p.kv_cache_bytes)}",
        f"activations  one {p.context}-token prefill per stage: {p.context} x (4x{s.hidden} + 2x{s.intermediate}) "
        f"x {max(b, 2):g} B + {s.heads} heads x {p.context}^2 x 4 B = {_gb(p.activation_bytes)}",
        f"per device   {_gb(p.device_memory_bytes)} - headroom {_gb(p.headroom_bytes)} - activations "
        f"{_gb(p.activation_bytes)} = {_gb(p.usable_bytes_per_device)} for weights + KV cache",
        f"stages       weights + KV = {_gb(need)}; / {_gb(p.usable_bytes_per_device)} = "
        f"{need / max(1, p.usable_bytes_per_device):.2f} → {p.stages} stage(s) once whole layers are placed"
        + ("" if p.fits else "  (DOES NOT FIT even one layer per device)"),
        f"devices      {p.devices} (one per stage)",
        f"nodes        {p.nodes} ({p.devices_per_node} devices per node)",
        "split        stage  layers        weights      KV cache     total (+activations)",
    ]
    for st in p.per_stage:
        lines.append(
            f"             {st.stage:>5}  [{st.layers[0]:>3}, {st.layers[1]:>3})  {_gb(st.weights_bytes):>11}  "
            f"{_gb(st.kv_cache_bytes):>11}  {_gb(st.total_bytes):>11}"
        )
    return "\n".join(lines)


def shape_from_args(config: Path | None, params: str | None) -> ModelShape:
    if config is not None:
        path = config / "config.json" if config.is_dir() else config
        return ModelShape.from_config(json.loads(path.read_text()))
    if params is None:
        raise ValueError("give --config (a config.json or checkpoint directory) or --params (e.g. 175B)")
    return ModelShape.from_params(parse_params(params))
