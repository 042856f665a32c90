"""Closed-loop gRPC load from several client processes (one asyncio client each), so the load generator
is not the ceiling when the server has cores to spare. Used by gpu_batching.py and gateway_scaling.py.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time

import numpy as np

InputSpec = list[tuple[str, str, np.ndarray]]
"""(input name, KServe datatype, data) per input: picklable, so it travels to the client processes."""


def _client_process(
    url: str,
    model: str,
    inputs: InputSpec,
    in_flight: int,
    warmup_s: float,
    seconds: float,
    out: mp.Queue,  # type: ignore[type-arg]
) -> None:
    import tritonclient.grpc.aio as aioclient
    from tritonclient.grpc import InferInput

    async def run() -> list[float]:
        client = aioclient.InferenceServerClient(url)
        latencies: list[float] = []
        warm_end = time.perf_counter() + warmup_s
        end = warm_end + seconds

        async def loop() -> None:
            while (now := time.perf_counter()) < end:
                tensors = []
                for name, datatype, data in inputs:
                    tensor = InferInput(name, list(data.shape), datatype)
                    tensor.set_data_from_numpy(data)
                    tensors.append(tensor)
                await client.infer(model, tensors)
                if now > warm_end:
                    latencies.append(time.perf_counter() - now)

        await asyncio.gather(*(loop() for _ in range(in_flight)))
        await client.close()
        return latencies

    out.put(asyncio.run(run()))


def drive(
    url: str,
    model: str,
    inputs: InputSpec,
    in_flight: int,
    clients: int,
    seconds: float,
    warmup_s: float = 2.0,
) -> list[float]:
    """Latencies (s) of every request answered in the measured ``seconds`` (after ``warmup_s``),
    with ``in_flight`` requests outstanding spread over ``clients`` processes."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    per_client = max(1, in_flight // clients)
    procs = [
        ctx.Process(target=_client_process, args=(url, model, inputs, per_client, warmup_s, seconds, queue))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    latencies = sorted(lat for _ in procs for lat in queue.get(timeout=warmup_s + seconds + 120))
    for p in procs:
        p.join(30)
    return latencies
