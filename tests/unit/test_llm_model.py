"""The sharded Llama: stage chains against one full model and against Hugging Face transformers,
loading by index, the layer split, sampling, stop strings, KV cache bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meshserve.errors import InvalidArgument
from meshserve.pb import mesh_pb2
from tests.llm_repo import build_llm_repo
from tests.unit.llm_helpers import chain_step, greedy
from workers.llm import checkpoint as ckpt_mod
from workers.llm.checkpoint import read_index, split_layers
from workers.llm.kvcache import CacheFull, KVCachePool
from workers.llm.sampling import Sampler, SamplingParams
from workers.llm.stage import StageRuntime
from workers.llm.text import Detokenizer, load_tokenizer

PROMPTS = [[0, 5, 17, 99, 3, 8], [0, 44, 2], [0, *range(300, 320)], [0, 7]]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llm_repo(tmp_path_factory.mktemp("llm"), stages=2)


@pytest.fixture(scope="module")
def tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llm_repo(tmp_path_factory.mktemp("llm_tied"), stages=2, tie=True)


def stages_of(path: Path, n: int) -> list[StageRuntime]:
    return [StageRuntime(path, k, n) for k in range(n)]


def hf_greedy(path: Path, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    transformers = pytest.importorskip("transformers", reason="transformers is a test-only dependency")
    model = transformers.LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            g = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                eos_token_id=None, pad_token_id=1,
            )  # fmt: skip
            out.append(g[0, len(p) :].tolist())
    return out


def test_checkpoint_is_hugging_face_layout(ckpt: Path) -> None:
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.json",
    ]  # fmt: skip
    index = read_index(ckpt)
    assert "model.layers.0.self_attn.q_proj.weight" in index and "lm_head.weight" in index
    assert json.loads((ckpt / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


@pytest.fixture(scope="module")
def reference(ckpt: Path) -> list[list[int]]:
    return hf_greedy(ckpt, PROMPTS, 10)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_stage_chain_matches_transformers(ckpt: Path, n: int, reference: list[list[int]]) -> None:
    assert greedy(stages_of(ckpt, n), PROMPTS, 10) == reference
    # another batch mix: one at a time
    assert [greedy(stages_of(ckpt, n), [p], 10)[0] for p in PROMPTS[:2]] == reference[:2]


def test_tied_embeddings_match_transformers(tied: Path) -> None:
    assert "lm_head.weight" not in read_index(tied)
    assert greedy(stages_of(tied, 2), PROMPTS, 8) == hf_greedy(tied, PROMPTS, 8)


def test_chained_logits_equal_single_model(ckpt: Path) -> None:
    def logits(stages: list[StageRuntime]) -> torch.Tensor:
        step = mesh_pb2.StageStep(step_id=1)
        ids: list[int] = []
        for i, p in enumerate(PROMPTS):
            step.seqs.append(mesh_pb2.StageSeq(seq_id=i, start=0, length=len(p), capacity=len(p)))
            ids += p
        out: torch.Tensor = chain_step(stages, step, ids, want_logits=True)
        return out

    one = logits(stages_of(ckpt, 1))
    for n in (2, 4):
        assert torch.allclose(one, logits(stages_of(ckpt, n)), atol=1e-5)


def test_stage_loads_only_its_tensors(ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    real = ckpt_mod.safe_open

    class Spy:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self._f = real(*args, **kwargs)

        def __enter__(self) -> Spy:
            self._f.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.__exit__(*exc)

        def get_tensor(self, name: str) -> torch.Tensor:
            read.append(name)
            return self._f.get_tensor(name)

        def __getattr__(self, name: str) -> object:
            return getattr(self._f, name)

    monkeypatch.setattr(ckpt_mod, "safe_open", Spy)
    rt = StageRuntime(ckpt, 1, 2)
    assert rt.start > 0 and rt.end == 4
    assert all(
        n.startswith(tuple(f"model.layers.{i}." for i in range(rt.start, rt.end)))
        or n in ("model.norm.weight", "lm_head.weight")
        for n in read
    )
    assert "model.embed_tokens.weight" not in read
    assert set(rt.module.state_dict()) == set(read)
    total = json.loads((ckpt / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    assert rt.parameter_bytes() < 0.75 * total


def test_split_by_bytes() -> None:
    assert split_layers([10] * 8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    # heavy embeddings on the first stage push layers to the others
    assert split_layers([10] * 8, 2, first_extra=40) == [(0, 2), (2, 8)]
    assert split_layers([10] * 3, 3) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError):
        split_layers([10] * 3, 4)


def test_sampling_params_checked() -> None:
    ok = SamplingParams.parse(
        {"max_tokens": "5", "temperature": 0.5, "top_k": 3, "top_p": 0.9, "seed": 7}, 100, 16
    )
    assert ok.max_tokens == 5 and ok.top_k == 3 and ok.seed == 7 and not ok.greedy
    assert SamplingParams.parse({"stop": '["a", "bc"]'}, 100, 16).stop == ("a", "bc")
    for bad in (
        {"max_tokens": 0}, {"max_tokens": 101}, {"max_tokens": "x"}, {"temperature": -1},
        {"temperature": "nan"}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2}, {"seed": -1},
        {"stop": "[1]"}, {"ignore_eos": "yes"},
    ):  # fmt: skip
        with pytest.raises(InvalidArgument):
            SamplingParams.parse(bad, 100, 16)


def test_seeded_sampling_reproducible() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1)) * 3

    def draw(seed: int, **kw: float) -> list[int]:
        s = Sampler(SamplingParams(temperature=1.0, seed=seed, **kw))  # type: ignore[arg-type]
        return [s.sample(logits) for _ in range(20)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    assert set(draw(5, top_k=1)) == {int(logits.argmax())}
    top3 = set(torch.topk(logits, 3).indices.tolist())
    assert set(draw(6, top_k=3)) <= top3
    assert set(draw(7, top_p=1e-6)) == {int(logits.argmax())}


def test_detokenizer_stop_strings(ckpt: Path) -> None:
    tok = load_tokenizer(ckpt)
    ids = tok.encode("the gateway answers the client").ids
    d = Detokenizer(tok, ("answers",))
    text = "".join(d.add(t) for t in ids)
    assert d.stopped and text == "the gateway "
    d = Detokenizer(tok, ())
    assert "".join(d.add(t) for t in ids) + d.flush() == "the gateway answers the client"


def test_kv_pool_bounds() -> None:
    pool = KVCachePool(2, 2, 4, torch.float32, "cpu", max_sequences=2, max_tokens=100)
    pool.allocate(1, 60)
    with pytest.raises(CacheFull):
        pool.allocate(2, 50)
    with pytest.raises(InvalidArgument):
        pool.allocate(3, 101)
    pool.allocate(2, 40)
    with pytest.raises(CacheFull):
        pool.allocate(3, 1)
    assert pool.free(1) and pool.tokens_reserved == 40 and pool.sequences == 1
    assert not pool.free(1)
