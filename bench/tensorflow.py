"""The tensorflow backend beside the onnxruntime one on the same add/sub model (`add_sub_tf` vs `add_sub_onnx`).

    python bench/tensorflow.py [--requests 500] [--repeats 3]

Runs, side by side in one go on this machine:
  1. load time: a fresh interpreter imports the backend and loads the model (what a worker does
     before it is READY), and the load call alone;
  2. the backend's execute for one 1-row request, in-process (the model call and its numpy
     conversions, no mesh);
  3. one mesh (`meshserve up`) serving both models, driven by tritonclient.grpc one request at a
     time (1 row of 16 FP32 per input), the two models interleaved per repeat.
Reports medians of --repeats runs.  The machine is shared: compare the two columns, not absolutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshserve.harness import start_mesh  # noqa: E402

MODELS = {
    "add_sub_onnx": ROOT / "examples" / "model_repository" / "add_sub_onnx",
    "add_sub_tf": ROOT / "examples" / "tf_model_repository" / "add_sub_tf",
}

LOAD_PROBE = """
import json, sys, time
started = time.perf_counter()
from pathlib import Path
import numpy as np
from meshserve.model_config import complete_config, config_to_json, load_config
from workers.backends import create_backend
from workers.backends.base import LoadContext, Request
directory = Path(sys.argv[1])
config = load_config(directory)
backend = create_backend(config.backend)
imported = time.perf_counter()
ctx = LoadContext(directory.name, 1, directory, config, config_to_json(config), "bench_0")
backend.load(ctx)
loaded = time.perf_counter()
x = np.ones((1, 16), np.float32)
request = Request("r", {"INPUT0": x, "INPUT1": x}, batch_size=1)
for _ in range(50):
    backend.execute([request])
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    backend.execute([request])
    times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"import_s": imported - started, "load_s": loaded - imported,
                  "execute_p50_us": times[len(times) // 2] * 1e6}))
"""


def probe(model: str, requests: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", LOAD_PROBE, str(MODELS[model]), str(requests)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def mesh_latency(grpc_url: str, model: str, requests: int) -> tuple[float, float]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    x = np.ones((1, 16), np.float32)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "FP32"),
        grpcclient.InferInput("INPUT1", [1, 16], "FP32"),
    ]
    for tensor in inputs:
        tensor.set_data_from_numpy(x)
    for _ in range(50):
        client.infer(model, inputs)
    times = []
    for _ in range(requests):
        t = time.perf_counter()
        client.infer(model, inputs)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e3, times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (MODELS["add_sub_tf"] / "1" / "model.savedmodel").is_dir():
        sys.exit(
            "examples/tf_model_repository/add_sub_tf is missing: python examples/build_models.py --only tensorflow"
        )

    rows: dict[str, dict[str, list[float]]] = {m: {} for m in MODELS}
    for _ in range(args.repeats):
        for model in MODELS:
            for key, value in probe(model, args.requests).items():
                rows[model].setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "models"
        for name, source in MODELS.items():
            shutil.copytree(source, repository / name)
        started = time.perf_counter()
        mesh = start_mesh(repository, Path(tmp) / "mesh.log", timeout_s=300)
        rows["add_sub_tf"]["mesh_up_s"] = [time.perf_counter() - started]
        try:
            for _ in range(args.repeats):
                for model in MODELS:
                    p50, p99 = mesh_latency(mesh.grpc_url, model, args.requests)
                    rows[model].setdefault("grpc_p50_ms", []).append(p50)
                    rows[model].setdefault("grpc_p99_ms", []).append(p99)
        finally:
            mesh.stop()

    print(f"requests {args.requests} x repeats {args.repeats}; medians")
    print("| figure | add_sub_onnx | add_sub_tf |")
    print("|---|---|---|")
    for key in ("import_s", "load_s", "execute_p50_us", "grpc_p50_ms", "grpc_p99_ms"):
        onnx, tf = (statistics.median(rows[m][key]) for m in MODELS)
        print(f"| {key} | {onnx:.3f} | {tf:.3f} |")
    print(f"mesh up (both models, one worker each): {rows['add_sub_tf']['mesh_up_s'][0]:.1f} s")


if __name__ == "__main__":
    main()
