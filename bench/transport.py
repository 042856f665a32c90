"""Transport costs: one round trip of a small message between two processes, by transport and event loop.

    python bench/transport.py [--requests 2000] [--repeats 3] [--kinds grpc-unary,tcp-frames,...]
                              [--loops asyncio,uvloop] [--write docs/benchmarks.md]

Each experiment runs an echo server in one process (this script, `--serve KIND`) and a client in another
(`--drive KIND`), both on one event loop (asyncio or uvloop), and times --requests round trips of a
200-byte message at 1 and 16 in flight.  Kinds: grpc-unary (grpc.aio unary calls, raw bytes), grpc-sync
(grpc's thread-pool server, 4 threads, grpc.aio client), grpc-bidi (one grpc.aio bidi stream for every
message), nats-request (nats-py request/respond), nats-publish (publish, reply published back to a
fixed subject: meshserve's response pattern), tcp-frames (meshserve.framing frames on one asyncio TCP
stream: the batcher <-> worker transport).  The NATS kinds share one local nats-server.  Reports p50/p99
latency, round trips/s and CPU time per round trip of server, client and nats-server, each the median
of --repeats runs.  All processes share this machine's cores: compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import nats
import uvloop
from nats.aio.msg import Msg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshserve.framing import read_frame, write_frame  # noqa: E402
from meshserve.nats_server import find_nats_server, start_nats_server  # noqa: E402

KINDS = {
    "grpc-unary": "grpc.aio unary",
    "grpc-sync": "grpc sync server (4 threads), grpc.aio client",
    "grpc-bidi": "grpc.aio bidi stream (one for all calls)",
    "nats-request": "NATS request/reply",
    "nats-publish": "NATS publish, reply published to a fixed subject",
    "tcp-frames": "TCP length-prefixed frames (meshserve.framing)",
}
LOOPS = ("asyncio", "uvloop")
IN_FLIGHT = (1, 16)
PAYLOAD = bytes(range(200))
MAX_FRAME_BYTES = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
SECTION = "## Transport costs (`bench/transport.py`)"
INTRO = """What it measures: one round trip of a 200-byte message between two processes (echo server, client,
and nats-server for NATS) over each transport meshserve uses or considered, on asyncio's and uvloop's
event loop, at 1 and 16 in flight, and the CPU time each process spends per round trip (the kinds are
listed in the docstring of `bench/transport.py`).

Reproduce: `python bench/transport.py --requests 2000 --repeats 3 --write docs/benchmarks.md`
"""
Call = Callable[[], Awaitable[None]]


def run_loop(coro: Coroutine[Any, Any, Any], loop: str) -> Any:
    return uvloop.run(coro) if loop == "uvloop" else asyncio.run(coro)


def announce(port: int) -> None:
    """Tell the driver the port, then answer each `cpu` line on stdin with this process's CPU time in ns
    (all threads); exit when stdin closes (the driver is done or gone)."""
    print(f"READY {port}", flush=True)

    def answer() -> None:
        for line in sys.stdin:
            if line.strip() != "cpu":
                break
            print(time.process_time_ns(), flush=True)
        os._exit(0)

    threading.Thread(target=answer, daemon=True).start()


def echo_handler(unary: Callable[..., Any], stream: Callable[..., Any] | None = None) -> Any:
    methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {"Call": grpc.unary_unary_rpc_method_handler(unary)}
    if stream is not None:
        methods["Stream"] = grpc.stream_stream_rpc_method_handler(stream)
    return grpc.method_handlers_generic_handler("bench.Echo", methods)


def serve_grpc_sync() -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((echo_handler(lambda request, context: request),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    announce(port)
    server.wait_for_termination()


async def serve_async(kind: str, nats_url: str) -> None:
    if kind.startswith("grpc"):

        async def echo(request: bytes, context: Any) -> bytes:
            return request

        async def echo_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            async for request in requests:
                yield request

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((echo_handler(echo, echo_stream),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        announce(port)
        await server.wait_for_termination()
    elif kind.startswith("nats"):
        nc = await nats.connect(nats_url)

        async def reply(msg: Msg) -> None:
            if kind == "nats-request":
                await msg.respond(msg.data)
            else:
                await nc.publish("bench.results", msg.data)

        await nc.subscribe("bench.request" if kind == "nats-request" else "bench.work", cb=reply)
        await nc.flush()
        announce(0)
        await asyncio.Event().wait()
    else:

        async def echo_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while (frame := await read_frame(reader, MAX_FRAME_BYTES)) is not None:
                write_frame(writer, frame)
                await writer.drain()
            writer.close()

        tcp = await asyncio.start_server(echo_frames, "127.0.0.1", 0, limit=2**20)
        announce(tcp.sockets[0].getsockname()[1])
        await tcp.serve_forever()


class Replies:
    """Futures keyed by the 8-byte id at the head of each message, for transports without call objects."""

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.last_id = 0

    def new(self) -> tuple[bytes, asyncio.Future[None]]:
        self.last_id += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[self.last_id] = future
        return self.last_id.to_bytes(8, "little") + PAYLOAD[8:], future

    def resolve(self, message: bytes) -> None:
        future = self.waiting.pop(int.from_bytes(message[:8], "little"), None)
        if future is not None and not future.done():
            future.set_result(None)


async def connect(kind: str, port: int, nats_url: str, stack: contextlib.AsyncExitStack) -> Call:
    """A coroutine function making one round trip on `kind`; its cleanup goes on `stack`."""
    replies = Replies()

    def in_background(coro: Coroutine[Any, Any, None]) -> None:
        stack.callback(asyncio.create_task(coro).cancel)

    if kind.startswith("grpc"):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stack.push_async_callback(channel.close)
        await channel.channel_ready()
        unary: Any = channel.unary_unary("/bench.Echo/Call")
        stream: Any = channel.stream_stream("/bench.Echo/Stream")() if kind == "grpc-bidi" else None
        lock = asyncio.Lock()

        async def call_unary() -> None:
            assert await unary(PAYLOAD) == PAYLOAD

        async def read_stream() -> None:
            while (message := await stream.read()) is not grpc.aio.EOF:
                replies.resolve(message)

        async def call_bidi() -> None:
            message, future = replies.new()
            async with lock:  # grpc.aio allows one write at a time
                await stream.write(message)
            await future

        if stream is None:
            return call_unary
        in_background(read_stream())
        return call_bidi
    if kind.startswith("nats"):
        nc = await nats.connect(nats_url)
        stack.push_async_callback(nc.close)

        async def call_request() -> None:
            assert (await nc.request("bench.request", PAYLOAD, timeout=10)).data == PAYLOAD

        async def on_result(msg: Msg) -> None:
            replies.resolve(msg.data)

        async def call_publish() -> None:
            message, future = replies.new()
            await nc.publish("bench.work", message)
            await future

        if kind == "nats-request":
            return call_request
        await nc.subscribe("bench.results", cb=on_result)
        await nc.flush()
        return call_publish
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    stack.callback(writer.close)

    async def read_frames() -> None:
        while (frame := await read_frame(reader, MAX_FRAME_BYTES)) is not None:
            replies.resolve(frame)

    async def call_frame() -> None:
        message, future = replies.new()
        write_frame(writer, message)
        await writer.drain()
        await future

    in_background(read_frames())
    return call_frame


async def window(call: Call, requests: int, in_flight: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def slot() -> None:
        for _ in range(requests // in_flight):
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(in_flight)))
    return time.perf_counter() - start, latencies


def proc_cpu_ns(pid: int) -> int:
    """utime + stime of a process from /proc (clock-tick resolution); 0 for pid 0."""
    if not pid:
        return 0
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) * 1_000_000_000 // CLK_TCK


async def measure(args: argparse.Namespace, port: int, server_cpu_ns: Callable[[], int]) -> dict[str, Any]:
    medians: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        call = await connect(args.drive, port, args.nats_url, stack)
        for n in IN_FLIGHT:
            await window(call, max(20 * n, args.requests // 4), n)  # warm-up
            runs: list[dict[str, float]] = []
            for _ in range(args.repeats):
                s0, n0, c0 = server_cpu_ns(), proc_cpu_ns(args.nats_pid), time.process_time_ns()
                wall, latencies = await window(call, args.requests, n)
                c1, s1, n1 = time.process_time_ns(), server_cpu_ns(), proc_cpu_ns(args.nats_pid)
                count = len(latencies)
                latencies.sort()
                runs.append(
                    {
                        "p50_us": statistics.median(latencies) * 1e6,
                        "p99_us": latencies[min(count - 1, int(count * 0.99))] * 1e6,
                        "per_s": count / wall,
                        "server_us": (s1 - s0) / 1e3 / count,
                        "client_us": (c1 - c0) / 1e3 / count,
                        "nats_us": (n1 - n0) / 1e3 / count,
                    }
                )
            medians[str(n)] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return medians


def drive(args: argparse.Namespace) -> None:
    """Start the `--serve` process, measure, print one JSON line of medians by in-flight count."""
    command = [sys.executable, __file__, "--serve", args.drive, "--loop", args.loop]
    command += ["--nats-url", args.nats_url]
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    stdin, stdout = server.stdin, server.stdout
    try:
        ready = stdout.readline()
        if not ready.startswith("READY"):
            raise RuntimeError(f"{args.drive} server did not start: {ready!r}")

        def server_cpu_ns() -> int:
            stdin.write("cpu\n")
            stdin.flush()
            return int(stdout.readline())

        medians = run_loop(measure(args, int(ready.split()[1]), server_cpu_ns), args.loop)
    finally:
        with contextlib.suppress(OSError):
            stdin.close()  # the server exits at the end of its input
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    print(json.dumps(medians), flush=True)


def row_line(kind: str, loop: str, in_flight: str, f: dict[str, float]) -> str:
    nats = kind.startswith("nats")
    total = f["server_us"] + f["client_us"] + (f["nats_us"] if nats else 0.0)
    nats_cell = f"{f['nats_us']:.0f}" if nats else "-"
    return (
        f"| {KINDS[kind]} | {loop} | {in_flight} | {f['p50_us']:,.0f} | {f['p99_us']:,.0f} | {f['per_s']:,.0f} "
        f"| {f['server_us']:.0f} | {f['client_us']:.0f} | {nats_cell} | {total:.0f} |"
    )


async def run(args: argparse.Namespace) -> list[str]:
    """Every kind on every loop, one `--drive` process each; returns the table's rows."""
    rows: list[str] = []
    nats = None
    try:
        if any(kind.startswith("nats") for kind in args.kind_list):
            nats = await start_nats_server(find_nats_server(), -1, MAX_FRAME_BYTES)
        for kind in args.kind_list:
            for loop in args.loop_list:
                command = [sys.executable, __file__, "--drive", kind, "--loop", loop]
                command += ["--requests", str(args.requests), "--repeats", str(args.repeats)]
                if nats is not None and kind.startswith("nats"):
                    command += ["--nats-url", nats.url, "--nats-pid", str(nats.process.pid)]
                started = time.monotonic()
                done = await asyncio.to_thread(
                    subprocess.run, command, stdout=subprocess.PIPE, text=True, timeout=600, check=True
                )
                for n, figures in json.loads(done.stdout.splitlines()[-1]).items():
                    rows.append(row_line(kind, loop, n, figures))
                    print(f"{rows[-1]}  [{time.monotonic() - started:.0f} s]", flush=True)
    finally:
        if nats is not None:
            await nats.stop()
    return rows


def cpu_jiffies() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[7], sum(values)


def report(rows: list[str], args: argparse.Namespace, steal: float) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), "?")
    versions = [f"{p} {importlib.metadata.version(p)}" for p in ("grpcio", "nats-py", "uvloop")]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True, timeout=10)
        versions.append((out.stdout or out.stderr).strip())
    return "\n".join(
        [
            "CPU: µs per round trip, all threads of each process; total = server + client (+ nats-server).",
            "",
            "| transport | loop | in flight | p50 µs | p99 µs | round trips/s | CPU server | CPU client "
            "| CPU nats-server | CPU total |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Machine: {platform.platform()}, {os.cpu_count()} cores ({model}), Python "
            f"{platform.python_version()}; {', '.join(versions)}; CPU steal during the run {steal:.0%}. "
            f"{args.requests} round trips of a {len(PAYLOAD)}-byte message per measurement after a warm-up, "
            f"median of {args.repeats} runs. Server, client (and nats-server) are separate processes sharing "
            "the cores; server and client CPU from their own process clocks, nats-server's from /proc in "
            f"{1e3 / CLK_TCK:.0f} ms ticks.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="round trips per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure, median reported")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated: {','.join(KINDS)}")
    parser.add_argument("--loops", default=",".join(LOOPS), help="comma-separated: asyncio,uvloop")
    parser.add_argument("--write", type=Path, help="append the report under a heading to this file")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--drive", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--nats-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--nats-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "grpc-sync":
        serve_grpc_sync()
    elif args.serve:
        run_loop(serve_async(args.serve, args.nats_url), args.loop)
    elif args.drive:
        drive(args)
    else:
        orchestrate(parser, args)


def orchestrate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.kind_list = [k.strip() for k in args.kinds.split(",") if k.strip()]
    args.loop_list = [x.strip() for x in args.loops.split(",") if x.strip()]
    unknown = [k for k in args.kind_list if k not in KINDS] + [x for x in args.loop_list if x not in LOOPS]
    if unknown:
        parser.error(f"unknown {unknown}; kinds: {', '.join(KINDS)}; loops: {', '.join(LOOPS)}")
    started = time.monotonic()
    steal_before, total_before = cpu_jiffies()
    rows = asyncio.run(run(args))
    steal_after, total_after = cpu_jiffies()
    text = report(rows, args, (steal_after - steal_before) / max(1, total_after - total_before))
    print(f"\n{text}\n\n(run took {time.monotonic() - started:.0f} s)")
    if args.write is not None:
        command = " ".join(["python bench/transport.py", *sys.argv[1:]])
        existing = args.write.read_text() if args.write.exists() else ""
        with args.write.open("a") as out:
            if SECTION not in existing:
                out.write(f"\n{SECTION}\n\n{INTRO}")
            out.write(f"\n### `{command}` — {time.strftime('%Y-%m-%d')}\n\n{text}\n")


if __name__ == "__main__":
    main()
