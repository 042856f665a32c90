#!/usr/bin/env bash
# The GPU checks, as one script for a machine with CUDA (CI has none; see docs/benchmarks.md).
#
#   bash scripts/gpu_check.sh [OUT_DIR]
#
# On a machine whose python3 already has a CUDA torch, the project's other dependencies can come from
# wheels in .whl/ (downloaded on a machine with registry access, see docs/benchmarks.md "GPU"):
# they are installed into /tmp/site and put on PYTHONPATH with the repository itself.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gpu_check}"
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PATH="/tmp/site/bin:$PATH"
    export PYTHONPATH="$PWD:/tmp/site"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/nvidia-smi.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
python3 -m pytest -q -p no:cacheprovider tests/integration/test_gpu.py tests/unit/test_pytorch_backend.py tests/unit/test_llm_cuda.py 2>&1 | tee "$out/pytest.txt"
python3 bench/gpu_batching.py --seconds "${GPU_BENCH_SECONDS:-6}" --json "$out/gpu_batching.json" 2>&1 | tee "$out/gpu_batching.txt"
