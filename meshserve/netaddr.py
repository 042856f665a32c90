"""Which address a worker announces for its batch endpoint.

A worker binds ``--host`` and tells the batchers ``<host>:<port>``.  That works while everything runs
on one machine (``127.0.0.1``).  In a container, a pod or a second machine the worker binds a wildcard
(``0.0.0.0``) that nobody can dial, so it announces ``--advertise-host`` instead, or, when that is
empty, the local address this machine uses to reach the NATS server: the batchers reach the same
NATS server, so the address on that route is the one most likely reachable from them.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

__all__ = ["WILDCARD_HOSTS", "advertised_host", "route_address"]

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})
"""Bind addresses that mean "every interface" and so cannot be announced."""


def _nats_endpoint(nats_url: str) -> tuple[str, int]:
    """Host and port of the first server in a (possibly comma-separated) NATS URL."""
    first = nats_url.split(",")[0].strip()
    if "://" not in first:
        first = f"nats://{first}"
    parts = urlsplit(first)
    if not parts.hostname:
        raise ValueError(f"no host in NATS URL '{nats_url}'")
    return parts.hostname, parts.port or 4222


def route_address(nats_url: str) -> str:
    """The local IP address of the route to the NATS server.

    A UDP ``connect`` sends nothing; it only asks the kernel which source address it would use.
    """
    host, port = _nats_endpoint(nats_url)
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(sockaddr)
        address: str = probe.getsockname()[0]
    return address


def advertised_host(bind_host: str, advertise_host: str, nats_url: str) -> str:
    """``advertise_host`` if given, else ``bind_host`` unless it is a wildcard, else the route to NATS."""
    if advertise_host:
        return advertise_host
    if bind_host not in WILDCARD_HOSTS:
        return bind_host
    return route_address(nats_url)
