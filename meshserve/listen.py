"""Listening sockets bound by the service itself, so the port actually bound (0 = a free one) is known
before anything announces it."""

from __future__ import annotations

import socket

__all__ = ["bind_listener"]


def bind_listener(what: str, host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening TCP socket on ``host:port``; exits with a clear message when taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"cannot bind {what} on {host}:{port}: {exc}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock
