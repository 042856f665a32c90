"""Fixtures for the fault tests: a model repository and meshes whose every process the test owns."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

from meshserve.harness import ROOT

FAULT_MODELS = Path(__file__).parent / "models"
REQUEST_TIMEOUT_S = 10.0
"""Every fault mesh's request deadline: a request with no answer 10 s + margin after it was sent is lost."""


def fault_repository(target: Path, *names: str) -> Path:
    """A fresh copy of the named models (examples, tests/models, tests/faults/models) under ``target``;
    copies, not links, because `pace` and `ticker` write their ledgers into their own directory."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        for base in (FAULT_MODELS, ROOT / "tests" / "models", ROOT / "examples" / "model_repository"):
            if (base / name).is_dir():
                shutil.copytree(base / name, target / name)
                break
        else:
            raise FileNotFoundError(name)
    return target


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text page, labels in any order (0 when absent)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for row in text.splitlines():
        head, _, value = row.rpartition(" ")
        sample, _, rest = head.partition("{")
        if sample == name and want <= set(rest.rstrip("}").split(",")) - {""}:
            return float(value)
    return 0.0


def live_instances(metrics_url: str, model: str) -> float:
    return metric(metrics_url, "meshserve_live_instances", model=model, version="1")


def ledger(repository: Path, model: str, name: str = "executed.log") -> list[list[str]]:
    path = repository / model / name
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []
