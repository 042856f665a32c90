"""One large tensor through meshserve with and without system shared memory, gRPC and HTTP.

    python bench/shared_memory.py [--elements 1048576] [--requests 20]

Starts a mesh on the example repository (``meshserve.harness.start_mesh``) and sends ``cast_fp32``
(INT32 [1, N] in, FP32 [1, N] out) one request at a time, alternating the modes so drift on a shared
machine hits them alike: the tensors in the request and response (tritonclient's binary data), or
input and output in registered shared memory regions (docs/shared-memory.md).  Prints the median and
p90 latency of each mode and checks every answer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

from meshserve.harness import ROOT, start_mesh


def _mode_call(protocol: str, client: Any, data: np.ndarray, use_shm: bool, regions: tuple[str, str]) -> None:
    mod: Any = grpcclient if protocol == "grpc" else httpclient
    tensor = mod.InferInput("IN", list(data.shape), "INT32")
    out = (
        mod.InferRequestedOutput("OUT")
        if protocol == "grpc"
        else mod.InferRequestedOutput("OUT", binary_data=True)
    )
    if use_shm:
        tensor.set_shared_memory(regions[0], data.nbytes)
        out.set_shared_memory(regions[1], data.nbytes)
    else:
        tensor.set_data_from_numpy(data)
    result = client.infer("cast_fp32", [tensor], outputs=[out])
    if not use_shm:
        assert result.as_numpy("OUT")[0, -1] == float(data[0, -1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--elements", type=int, default=1 << 20)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    size = args.elements * 4
    base = Path(tempfile.mkdtemp(prefix="shm_bench_"))
    mesh = start_mesh(
        ROOT / "examples" / "model_repository",
        base / "mesh.log",
        "--max-message-bytes",
        str(4 * size + (1 << 20)),
    )
    tag = os.getpid()
    in_handle = shm.create_shared_memory_region("bench_in", f"/meshserve_bench_{tag}_in", size)
    out_handle = shm.create_shared_memory_region("bench_out", f"/meshserve_bench_{tag}_out", size)
    data = np.arange(args.elements, dtype=np.int32).reshape(1, -1)
    shm.set_shared_memory_region(in_handle, [data])
    try:
        for protocol, url in (("grpc", mesh.grpc_url), ("http", mesh.http_url)):
            client: Any = (
                grpcclient.InferenceServerClient(url)
                if protocol == "grpc"
                else httpclient.InferenceServerClient(url, network_timeout=120)
            )
            regions = (f"in_{protocol}", f"out_{protocol}")
            client.register_system_shared_memory(regions[0], f"/meshserve_bench_{tag}_in", size)
            client.register_system_shared_memory(regions[1], f"/meshserve_bench_{tag}_out", size)
            times: dict[bool, list[float]] = {False: [], True: []}
            for i in range(args.requests + 2):
                for use_shm in (False, True):
                    start = time.perf_counter()
                    _mode_call(protocol, client, data, use_shm, regions)
                    if i >= 2:  # two warm-up rounds
                        times[use_shm].append(time.perf_counter() - start)
            got = shm.get_contents_as_numpy(out_handle, np.float32, [1, args.elements])
            assert got[0, -1] == float(data[0, -1])
            client.unregister_system_shared_memory()
            for use_shm, samples in times.items():
                samples.sort()
                print(
                    f"{protocol} {'shared memory' if use_shm else 'in the request'}: "
                    f"{size / 2**20:.0f} MiB in + out, median {statistics.median(samples) * 1e3:.1f} ms, "
                    f"p90 {samples[int(0.9 * (len(samples) - 1))] * 1e3:.1f} ms ({len(samples)} requests)"
                )
    finally:
        shm.destroy_shared_memory_region(in_handle)
        shm.destroy_shared_memory_region(out_handle)
        code = mesh.stop()
        if code != 0:
            print(f"meshserve up exited with {code}", file=sys.stderr)


if __name__ == "__main__":
    main()
