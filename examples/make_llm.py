"""Write a model repository holding one sharded language model, ``llm``, served in stages.

``REPO/llm/1/`` is a Hugging Face checkpoint directory, as ``save_pretrained`` writes one for
``LlamaForCausalLM``: ``config.json``, ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``,
and a ``tokenizer.json`` (a byte-level BPE trained with ``tokenizers`` on this repository's Markdown).
The weights are random (fixed seed): nothing can be downloaded here, and the serving path does not care.
``REPO/llm/config.pbtxt`` declares the model, its stage count and its bounds (keys in docs/llm.md).

    python examples/make_llm.py --out /tmp/llm_repo --stages 4 --size tiny
    meshserve up --model-repository /tmp/llm_repo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parent.parent

SIZES: dict[str, dict[str, int]] = {
    # ~0.25 M parameters: tests build it in well under a second
    "tiny": dict(
        vocab=384, hidden=64, intermediate=176, layers=4, heads=4, kv_heads=2, context=512, shards=2, tie=0
    ),
    # ~8 M parameters
    "small": dict(
        vocab=2048, hidden=256, intermediate=688, layers=8, heads=8, kv_heads=4, context=1024, shards=2, tie=1
    ),
    # ~110 M parameters (bench/pipeline.py)
    "bench": dict(
        vocab=4096,
        hidden=768,
        intermediate=2048,
        layers=16,
        heads=12,
        kv_heads=4,
        context=1024,
        shards=4,
        tie=0,
    ),
}
SPECIAL = ["<s>", "</s>", "<unk>"]


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """Byte-level BPE on the repository's Markdown (README + docs): deterministic for a given text."""
    texts = [
        p.read_text(encoding="utf-8")
        for p in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
        if p.is_file()
    ]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def hf_config(size: dict[str, int], vocab: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": size["hidden"],
        "intermediate_size": size["intermediate"],
        "num_hidden_layers": size["layers"],
        "num_attention_heads": size["heads"],
        "num_key_value_heads": size["kv_heads"],
        "head_dim": size["hidden"] // size["heads"],
        "max_position_embeddings": size["context"],
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": bool(size["tie"]),
        "bos_token_id": SPECIAL.index("<s>"),
        "eos_token_id": SPECIAL.index("</s>"),
        "torch_dtype": "float32",
        "use_cache": True,
    }


def random_weights(config: dict[str, object], seed: int) -> dict[str, torch.Tensor]:
    """Hugging Face's tensor names and shapes; N(0, 0.02) matrices, ones for the norms."""
    g = torch.Generator().manual_seed(seed)
    h, inter = int(config["hidden_size"]), int(config["intermediate_size"])  # type: ignore[call-overload]
    heads, kv = int(config["num_attention_heads"]), int(config["num_key_value_heads"])  # type: ignore[call-overload]
    hd, vocab = int(config["head_dim"]), int(config["vocab_size"])  # type: ignore[call-overload]

    def mat(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) * 0.02

    w: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(vocab, h, generator=g)}
    for i in range(int(config["num_hidden_layers"])):  # type: ignore[call-overload]
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = mat(heads * hd, h)
        w[p + "self_attn.k_proj.weight"] = mat(kv * hd, h)
        w[p + "self_attn.v_proj.weight"] = mat(kv * hd, h)
        w[p + "self_attn.o_proj.weight"] = mat(h, heads * hd)
        w[p + "mlp.gate_proj.weight"] = mat(inter, h)
        w[p + "mlp.up_proj.weight"] = mat(inter, h)
        w[p + "mlp.down_proj.weight"] = mat(h, inter)
        w[p + "input_layernorm.weight"] = 1.0 + 0.1 * torch.randn(h, generator=g)
        w[p + "post_attention_layernorm.weight"] = 1.0 + 0.1 * torch.randn(h, generator=g)
    w["model.norm.weight"] = torch.ones(h)
    if not config["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(vocab, h) * 10  # livelier logits: sampling is not near-uniform
    return w


def write_shards(weights: dict[str, torch.Tensor], out: Path, shards: int) -> None:
    names = list(weights)
    total = sum(t.numel() * t.element_size() for t in weights.values())
    per_shard = total / shards
    groups: list[list[str]] = [[]]
    acc = 0
    for name in names:
        size = weights[name].numel() * weights[name].element_size()
        if groups[-1] and acc + size / 2 > per_shard * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(name)
        acc += size
    n = len(groups)
    weight_map: dict[str, str] = {}
    for k, group in enumerate(groups, start=1):
        file = f"model-{k:05d}-of-{n:05d}.safetensors"
        save_file(
            {name: weights[name].contiguous() for name in group}, str(out / file), metadata={"format": "pt"}
        )
        weight_map.update(dict.fromkeys(group, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def config_pbtxt(stages: int, context: int) -> str:
    return f"""# A Llama-family language model served in {stages} stage(s) (layer ranges on separate workers).
# Keys: docs/llm.md.  The checkpoint is the Hugging Face directory 1/.
name: "llm"
backend: "llm"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [ {{ name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] }} ]
output [ {{ name: "text_output", data_type: TYPE_STRING, dims: [ 1 ] }} ]
instance_group [ {{ count: 1, kind: KIND_AUTO }} ]
parameters {{ key: "stages", value: {{ string_value: "{stages}" }} }}
parameters {{ key: "max_sequences", value: {{ string_value: "64" }} }}
parameters {{ key: "max_kv_tokens", value: {{ string_value: "{64 * context}" }} }}
parameters {{ key: "max_tokens_limit", value: {{ string_value: "{context}" }} }}
parameters {{ key: "default_max_tokens", value: {{ string_value: "16" }} }}
"""


def make(out: Path, stages: int = 1, size: str = "tiny", seed: int = 0, tie: bool | None = None) -> Path:
    """Write the repository; return the checkpoint directory ``out/llm/1``."""
    spec = dict(SIZES[size])
    if tie is not None:
        spec["tie"] = int(tie)
    ckpt = out / "llm" / "1"
    ckpt.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(spec["vocab"])
    tok.save(str(ckpt / "tokenizer.json"))
    config = hf_config(spec, tok.get_vocab_size())
    (ckpt / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_shards(random_weights(config, seed), ckpt, spec["shards"])
    (out / "llm" / "config.pbtxt").write_text(config_pbtxt(stages, spec["context"]))
    return ckpt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="model repository to write (created)")
    parser.add_argument("--stages", type=int, default=1, help="worker processes the model is split over")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ckpt = make(args.out, args.stages, args.size, args.seed)
    params = json.loads((ckpt / "model.safetensors.index.json").read_text())["metadata"]["total_size"] // 4
    print(f"wrote {ckpt} (~{params / 1e6:.1f} M parameters, {args.stages} stage(s))")


if __name__ == "__main__":
    main()
