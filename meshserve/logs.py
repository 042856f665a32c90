"""Logging set-up and the one machine-readable "ready" line every service prints.

Logs go to stderr.  When a service has bound its ports it prints, on stdout, one line
``MESHSERVE_READY {json}`` with what it actually bound (ports may have been 0); ``meshserve up`` and
the test fixtures wait for that line instead of guessing.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

__all__ = ["READY_MARKER", "announce_ready", "parse_ready_line", "setup_logging"]

READY_MARKER = "MESHSERVE_READY "


def setup_logging(service: str, verbose: int = 0) -> None:
    level = logging.DEBUG if verbose > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {service}[%(process)d] %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("nats", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)


def announce_ready(service: str, **fields: Any) -> None:
    payload = {"service": service, **fields}
    logging.getLogger(f"meshserve.{service}").info("ready %s", payload)
    print(READY_MARKER + json.dumps(payload), flush=True)


def parse_ready_line(line: str) -> dict[str, Any] | None:
    """The ready payload if ``line`` is a ready line, else None."""
    if not line.startswith(READY_MARKER):
        return None
    value: dict[str, Any] = json.loads(line[len(READY_MARKER) :])
    return value
