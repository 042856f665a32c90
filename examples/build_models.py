"""Build the TorchScript example models with fixed seeds (their outputs are reproducible).

python examples/build_models.py [--repository examples/model_repository]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


class LinearRelu(torch.nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(inputs, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


def linear_torch(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return LinearRelu(16, 8).eval()


def build(repository: Path) -> None:
    target = repository / "linear_torch" / "1" / "model.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(linear_torch()).save(str(target))
    print(f"wrote {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=HERE / "model_repository")
    build(parser.parse_args().repository)


if __name__ == "__main__":
    main()
