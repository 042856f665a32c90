"""meshserve plan: the arithmetic for 175B fp16 on 80 GB devices, config.json input, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshserve.cli import main
from meshserve.plan import ModelShape, make_plan, parse_params, render

ROOT = Path(__file__).resolve().parents[2]


def test_175b_fp16_on_80gb() -> None:
    shape = ModelShape.from_params(parse_params("175B"))
    assert (shape.layers, shape.hidden, shape.heads) == (96, 12288, 96)  # GPT-3's shape
    plan = make_plan(shape, "float16", 80, 2048, 16)
    assert abs(plan.weights_bytes - 2 * 175e9) / 350e9 < 0.01
    assert plan.kv_cache_bytes == 2 * 96 * 96 * 128 * 2 * 2048 * 16
    # 505 GB of weights + KV over ~69.8 GB usable per device is 7.2; whole layers make it 8
    assert plan.stages == plan.devices == 8 and plan.nodes == 1 and plan.fits
    assert plan.per_stage[0].layers == (0, 12) and plan.per_stage[-1].layers[1] == 96
    assert all(s.total_bytes <= plan.device_memory_bytes - plan.headroom_bytes for s in plan.per_stage)
    text = render(plan)
    assert "350.4 GB" in text and "154.6 GB" in text and "8 stage(s)" in text


def test_more_sequences_or_less_memory_need_more_stages() -> None:
    shape = ModelShape.from_params(175e9)
    base = make_plan(shape, "float16", 80, 2048, 16).stages
    assert make_plan(shape, "float16", 80, 2048, 64).stages > base
    assert make_plan(shape, "float16", 40, 2048, 16).stages > base
    assert make_plan(shape, "int8", 80, 2048, 16).stages < base
    assert make_plan(shape, "float16", 80, 2048, 16, devices_per_node=4).nodes == 2
    assert not make_plan(shape, "float16", 2, 2048, 16).fits


def test_config_json_counts_like_the_checkpoint(tmp_path: Path) -> None:
    config = {
        "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 176, "vocab_size": 384, "tie_word_embeddings": False,
    }  # fmt: skip
    shape = ModelShape.from_config(config)
    # embeddings + 4 x (q,o 64x64 + k,v 64x32 + 3 x 64x176 + 2 norms) + norm + lm_head
    assert shape.params() == 384 * 64 + 4 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 176 + 128) + 64 + 384 * 64
    assert make_plan(shape, "float32", 1, 512, 4).stages == 1


def test_parse_params() -> None:
    assert parse_params("7B") == 7e9 and parse_params("350m") == 350e6 and parse_params("1.3e9") == 1.3e9
    with pytest.raises(ValueError):
        parse_params("lots")


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--params", "175B", "--dtype", "float16", "--device-memory-gb", "80", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"stages", "devices", "nodes", "weights_bytes", "kv_cache_bytes"} <= set(out)
    assert out["stages"] == 8
    assert main(["plan"]) == 2


def test_plan_does_not_import_torch() -> None:
    code = "import sys, meshserve.plan, meshserve.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
