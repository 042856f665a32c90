"""Container health check for every meshserve service (the image's ``HEALTHCHECK``; standard library only).

It reads the service's command line from ``/proc/<pid>/cmdline`` (PID 1 in a container) and checks:

- ``gateway`` / ``up``: ``GET /v2/health/live`` on the gateway's HTTP port answers 200;
- ``batcher`` / ``worker``: the process itself holds an established TCP connection to the NATS port
  (they have no HTTP endpoint; without NATS they can neither take nor announce work).

Exit 0 = healthy, 1 = unhealthy (Docker's contract), with one line saying why.
Usage: ``python healthcheck.py [--pid PID]``.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

SERVICES = ("gateway", "up", "batcher", "worker")
ESTABLISHED = "01"  # the TCP state column of /proc/net/tcp


def service_of(argv: Sequence[str]) -> str:
    """The meshserve subcommand in a command line (``python /usr/local/bin/meshserve gateway ...``)."""
    for arg in argv:
        if arg in SERVICES:
            return arg
    raise ValueError(f"not a meshserve service command line: {' '.join(argv)!r}")


def flag(argv: Sequence[str], name: str, environ: dict[str, str], default: str) -> str:
    """A flag's value as the service sees it: ``--name V`` or ``--name=V``, else ``MESHSERVE_<NAME>``."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return environ.get("MESHSERVE_" + name.lstrip("-").replace("-", "_").upper(), default)


def nats_port(nats_url: str) -> int:
    first = nats_url.split(",")[0].strip()
    return urlsplit(first if "://" in first else f"nats://{first}").port or 4222


def established_to(port: int, tables: Sequence[str], inodes: set[str] | None = None) -> bool:
    """Whether ``/proc/net/tcp``-format tables list an established connection to remote ``port``
    (owned by one of the socket ``inodes``, when given)."""
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 10 or fields[3] != ESTABLISHED:
                continue
            if int(fields[2].rsplit(":", 1)[1], 16) == port and (inodes is None or fields[9] in inodes):
                return True
    return False


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets the process holds (``/proc/<pid>/fd/* -> socket:[inode]``)."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # another user's process: our own environment is the container's too
        return dict(os.environ)
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def check(pid: int) -> str:
    """Empty when healthy, else the reason."""
    argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    environ = _environ(pid)
    service = service_of(argv)
    if service in ("gateway", "up"):
        port = flag(argv, "--http-port", environ, "8000")
        url = f"http://127.0.0.1:{port}/v2/health/live"
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return "" if response.status == 200 else f"{url} answered {response.status}"
        except (OSError, urllib.error.URLError) as exc:
            return f"{url}: {exc}"
    port_n = nats_port(flag(argv, "--nats-url", environ, "nats://127.0.0.1:4222"))
    tables = [Path(f"/proc/{pid}/net/{name}").read_text() for name in ("tcp", "tcp6")]
    if established_to(port_n, tables, socket_inodes(pid)):
        return ""
    return f"{service}: no established connection to NATS port {port_n}"


def main(args: Sequence[str]) -> int:
    pid = int(args[args.index("--pid") + 1]) if "--pid" in args else 1
    try:
        problem = check(pid)
    except (OSError, ValueError) as exc:
        problem = str(exc)
    print(problem or "healthy")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
