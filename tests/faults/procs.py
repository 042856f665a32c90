"""A mesh started piece by piece (nats-server, batchers, gateways, workers), so a fault test can kill,
stop or restart any one part and read each part's exit code and memory.

``meshserve up`` (``meshserve.harness.start_mesh``) owns its children; here the test owns every process.
Everything binds 127.0.0.1 on free ports; :meth:`HandMesh.close` stops whatever is still running.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshserve.harness import ROOT
from meshserve.logs import parse_ready_line
from meshserve.nats_server import find_nats_server

_LISTEN = re.compile(r"Listening for client connections on [0-9.]+:(\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS from /proc), KiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Proc:
    """One process of the mesh and what it printed on its ready line."""

    name: str
    process: subprocess.Popen[str]
    log_path: Path
    ready: dict[str, Any] = field(default_factory=dict)
    printed: threading.Event = field(default_factory=threading.Event)
    """Set when the ready line came (or the process ended without one)."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout_s)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class HandMesh:
    """nats-server and services started one by one; every process is the test's own child."""

    def __init__(self, base: Path, repository: Path, *common: str) -> None:
        self.base = base
        self.repository = repository
        self.common = list(common)
        """Flags every service gets (e.g. ``--request-timeout-secs``)."""
        self.procs: list[Proc] = []
        self.nats: Proc | None = None
        self.nats_port = 0
        self._count = 0

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    # -- nats-server ------------------------------------------------------------------------------
    def start_nats(self, port: int = 0, timeout_s: float = 15.0) -> Proc:
        """Start nats-server on ``port`` (0: a free one; the same port again after a kill)."""
        port = port or free_port()
        conf = self.base / "nats.conf"
        conf.write_text("max_payload: 8388608\n")
        log_path = self._log_path("nats-server")
        process = subprocess.Popen(
            [find_nats_server(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        proc = Proc("nats-server", process, log_path)
        listening = threading.Event()

        def drain() -> None:
            assert process.stderr is not None
            with log_path.open("a") as log:
                for line in process.stderr:
                    log.write(line)
                    log.flush()
                    if _LISTEN.search(line):
                        listening.set()
            listening.set()

        threading.Thread(target=drain, daemon=True).start()
        if not listening.wait(timeout_s) or not proc.alive():
            process.kill()
            raise RuntimeError(f"nats-server did not start on port {port}:\n{proc.log()[-2000:]}")
        self.nats, self.nats_port = proc, port
        self.procs.append(proc)
        return proc

    # -- services ---------------------------------------------------------------------------------
    def start(self, service: str, *args: str, timeout_s: float = 60.0, wait: bool = True) -> Proc:
        """``python -m meshserve.cli <service> --nats-url … <common flags> <args>``; waits for its ready line."""
        name = f"{service}-{self._count}"
        self._count += 1
        log_path = self._log_path(name)
        process = subprocess.Popen(
            [sys.executable, "-m", "meshserve.cli", service, "--nats-url", self.nats_url, *self.common, *args],
            stdout=subprocess.PIPE, stderr=log_path.open("w"), text=True, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        proc = Proc(name, process, log_path)
        self.procs.append(proc)

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                ready = parse_ready_line(line)
                if ready is not None and not proc.ready:
                    proc.ready.update(ready)
                    proc.printed.set()
            proc.printed.set()

        threading.Thread(target=read, daemon=True).start()
        if wait:
            self.wait_ready(proc, timeout_s=timeout_s)
        return proc

    def wait_ready(self, *procs: Proc, timeout_s: float = 60.0) -> None:
        """Wait for the ready line of each of ``procs`` (started with ``wait=False``, in parallel)."""
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            if not proc.printed.wait(max(0.1, deadline - time.monotonic())) or not proc.ready:
                raise RuntimeError(f"{proc.name} did not become ready in {timeout_s}s:\n{proc.log()[-3000:]}")

    def batcher(self, *args: str, wait: bool = True) -> Proc:
        return self.start("batcher", *args, wait=wait)

    def gateway(
        self, *args: str, grpc_port: int = 0, http_port: int = 0, reuse_port: bool = False, wait: bool = True
    ) -> Proc:
        flags = ["--model-repository", str(self.repository), "--grpc-port", str(grpc_port),
                 "--http-port", str(http_port), "--metrics-port", "0", "--strict-readiness=false"]  # fmt: skip
        if reuse_port:
            flags.append("--reuse-port")
        return self.start("gateway", *flags, *args, wait=wait)

    def worker(self, model: str, instance: int = 0, version: int = 1, wait: bool = True) -> Proc:
        return self.start(
            "worker", "--model-repository", str(self.repository), "--model-name", model,
            "--model-version", str(version), "--instance-index", str(instance), wait=wait,
        )  # fmt: skip

    def close(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the services and wait for them (they drain while NATS is still up), then nats-server;
        SIGKILL whatever did not stop in time."""
        services = [p for p in self.procs if p is not self.nats]
        for group in (services, [self.nats] if self.nats else []):
            for proc in group:
                proc.signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            for proc in group:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)

    def _log_path(self, name: str) -> Path:
        return self.base / f"{name}.log"

    def logs(self) -> str:
        """Every process's log tail, for assertion messages."""
        return "\n".join(f"--- {p.name} ---\n{p.log()[-1500:]}" for p in self.procs)
