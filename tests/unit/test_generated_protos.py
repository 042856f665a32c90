"""meshserve/pb/ is exactly what scripts/gen_protos.py generates from protos/ (not stale, not edited)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PB_DIR = ROOT / "meshserve" / "pb"
FIX = "run `python scripts/gen_protos.py` and commit meshserve/pb/"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools is not importable (install the 'test' extra: grpcio-tools)")
    out = tmp_path_factory.mktemp("gen_protos")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"scripts/gen_protos.py failed:\n{result.stdout}\n{result.stderr}"
    return out / "meshserve" / "pb"


def _generated_names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.is_file() and p.name != "__init__.py"}


def test_generator_produces_code_for_every_proto(generated: Path) -> None:
    protos = sorted((ROOT / "protos" / "meshserve" / "pb").glob("*.proto"))
    assert protos, "no .proto files under protos/meshserve/pb"
    for proto in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert (generated / f"{proto.stem}{suffix}").is_file(), f"{proto.stem}{suffix} not generated"


def test_checked_in_files_match_generated_ones(generated: Path) -> None:
    fresh = _generated_names(generated)
    checked_in = {n for n in _generated_names(PB_DIR) if n.endswith((".py", ".pyi"))}
    missing = sorted(fresh - checked_in)
    extra = sorted(checked_in - fresh)
    assert not missing, f"meshserve/pb/ lacks {missing}: {FIX}"
    assert not extra, f"meshserve/pb/ holds {extra} that no .proto generates: remove them and {FIX}"
    stale = sorted(n for n in fresh if (generated / n).read_bytes() != (PB_DIR / n).read_bytes())
    assert not stale, f"meshserve/pb/ is stale or hand-edited ({', '.join(stale)}): {FIX}"
