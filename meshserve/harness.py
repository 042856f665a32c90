"""Start and stop a real mesh (`meshserve up`: nats-server, batcher, gateway, workers) as a subprocess.

Used by the integration tests and the benchmarks (never by the services).

Everything binds 127.0.0.1 on free ports, so two test runs can share a machine.  The mesh runs in
its own process group; stopping it sends SIGTERM, waits, then kills the whole group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshserve.logs import READY_MARKER

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Mesh:
    process: subprocess.Popen[str]
    grpc_url: str
    http_url: str
    models: dict[str, str]
    log_path: Path
    metrics_url: str = ""
    metrics_urls: tuple[str, ...] = ()
    nats_url: str = ""
    batcher_metrics_url: str = ""
    """The batcher's ``/metrics`` (queue depth, batches by reason)."""
    """One per gateway process (``--gateways N``)."""
    """``http://127.0.0.1:<metrics port>/metrics`` (Prometheus text)."""

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> dict[str, int]:
        """Every process of the mesh by role (``up``, ``nats-server``, ``gateway``, ``worker:<model>``...);
        a second process of the same role is ``<role>#1``, and so on (ordered by pid)."""
        found = {"up": self.process.pid}
        for entry in sorted(
            (p for p in Path("/proc").iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        ):
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != self.process.pid:
                continue
            args = [a.decode(errors="replace") for a in cmdline if a]
            if any(a.endswith("nats-server") for a in args[:1]):
                found["nats-server"] = int(entry.name)
            elif "meshserve.cli" in args:
                role = args[args.index("meshserve.cli") + 1]
                if role == "worker":
                    role = f"worker:{args[args.index('--model-name') + 1]}"
                base, n = role, 0
                while role in found:
                    n += 1
                    role = f"{base}#{n}"
                found[role] = int(entry.name)
        return found


def build_repository(target: Path, extra: Path | None = None) -> Path:
    """The example repository plus, optionally, the test models."""
    shutil.copytree(ROOT / "examples" / "model_repository", target)
    if extra is not None:
        for model in extra.iterdir():
            shutil.copytree(model, target / model.name)
    return target


def start_mesh(repository: Path, log_path: Path, *extra_args: str, timeout_s: float = 120.0) -> Mesh:
    args = [
        sys.executable,
        "-m",
        "meshserve.cli",
        "up",
        "--model-repository",
        str(repository),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        *extra_args,
    ]
    log_file = log_path.open("w")
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=log_file, text=True, cwd=ROOT, start_new_session=True
    )
    ready: dict[str, Any] = {}
    done = threading.Event()

    def read_stdout() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(READY_MARKER) and not ready:
                ready.update(json.loads(line[len(READY_MARKER) :]))
                done.set()
        done.set()

    threading.Thread(target=read_stdout, daemon=True).start()
    if not done.wait(timeout_s) or not ready:
        mesh = Mesh(process, "", "", {}, log_path)
        mesh.stop()
        raise RuntimeError(f"mesh did not become ready in {timeout_s}s; log:\n{mesh.log()[-4000:]}")
    return Mesh(
        process,
        grpc_url=f"127.0.0.1:{ready['grpc_port']}",
        http_url=f"127.0.0.1:{ready['http_port']}",
        models=dict(ready["models"]),
        log_path=log_path,
        metrics_url=f"http://127.0.0.1:{ready['metrics_port']}/metrics",
        metrics_urls=tuple(f"http://127.0.0.1:{port}/metrics" for port in ready["metrics_ports"]),
        nats_url=ready["nats"],
        batcher_metrics_url=(
            f"http://127.0.0.1:{ready['batcher_metrics_port']}/metrics"
            if ready.get("batcher_metrics_port", -1) >= 0
            else ""
        ),
    )


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False
