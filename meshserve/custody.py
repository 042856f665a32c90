"""Who holds a request: the words batchers and gateways exchange so that a batcher killed with -9 does
not take its queue with it (docs/reliability.md, "A batcher killed with -9").

- A gateway publishes each request with the header :data:`ACK_HEADER`, whose value is a subject of its
  own reply inbox (:func:`ack_subject`).
- The batcher that takes the request adds the reply subject's last token to a list and, every
  :data:`ACK_FLUSH_S`, publishes one message per gateway inbox: its id and the tokens
  (:func:`encode_held`): the gateway now knows who holds each request, at one message per batcher
  per gateway per flush.  When the request leaves in a batch for a worker, the token goes out again
  marked :data:`WITH_WORKER`: the worker answers it directly, whatever happens to the batcher (a
  retry after a worker died puts it back in a queue: unmarked again).
- Every batcher publishes its id on ``meshserve.batcher.announce`` every ``--batcher-heartbeat-secs``
  (:func:`encode_heartbeat`), and says ``gone`` once it has handed its queue on and its batches in flight
  are answered (SIGTERM).
- A gateway that hears nothing from a batcher for ``--batcher-timeout-secs`` publishes the requests it
  held in its queues (not those with a worker) once more (same bytes, same reply subject: another batcher takes them) while their deadline
  allows, else fails them with UNAVAILABLE.  The first final response per request wins; a late
  duplicate (a batch sent in the last flush interval before the death, which its worker still answers)
  finds no waiter and is dropped.
"""

from __future__ import annotations

__all__ = [
    "ACK_FLUSH_S",
    "ACK_HEADER",
    "HELD_TOKEN",
    "WITH_WORKER",
    "ack_subject",
    "decode_heartbeat",
    "decode_held",
    "encode_heartbeat",
    "encode_held",
]

ACK_HEADER = "Meshserve-Ack"
HELD_TOKEN = "held"
"""Last token of the acknowledgement subject; request tokens are numbers, so it never collides."""
ACK_FLUSH_S = 0.02
"""How often a batcher sends the tokens it took since the last flush."""
WITH_WORKER = ">"
"""Prefix of a token whose request went to a worker in a batch."""


def ack_subject(reply_prefix: str) -> str:
    return f"{reply_prefix}.{HELD_TOKEN}"


def encode_held(batcher_id: str, tokens: list[str]) -> bytes:
    return "\n".join([batcher_id, *tokens]).encode()


def decode_held(data: bytes) -> tuple[str, list[str]]:
    """(batcher id, tokens); an empty id for a message that is not one of ours."""
    lines = data.decode(errors="replace").split("\n")
    return (lines[0], [t for t in lines[1:] if t]) if lines[0] else ("", [])


def encode_heartbeat(batcher_id: str, alive: bool = True) -> bytes:
    return f"{batcher_id} {'alive' if alive else 'gone'}".encode()


def decode_heartbeat(data: bytes) -> tuple[str, bool] | None:
    """(batcher id, alive) or None for something else."""
    parts = data.decode(errors="replace").split()
    if len(parts) != 2 or parts[1] not in ("alive", "gone"):
        return None
    return parts[0], parts[1] == "alive"
