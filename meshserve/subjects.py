"""Every NATS subject the mesh uses, spelled in this one module (nothing else writes a subject).

Model names may hold characters that NATS gives meaning to ('.', '*', '>', spaces); they are
escaped into a single subject token so that one model is always exactly one token.
"""

from __future__ import annotations

__all__ = [
    "BATCHER_QUEUE_GROUP",
    "GATEWAY_QUEUE_GROUP",
    "PREFIX",
    "batcher_announce",
    "cancel",
    "cancel_all",
    "control",
    "ensemble",
    "ensemble_all",
    "gateway_announce",
    "gateway_stats",
    "infer",
    "infer_all",
    "model_token",
    "worker_announce",
    "worker_query",
]

PREFIX = "meshserve"
BATCHER_QUEUE_GROUP = "meshserve-batchers"
GATEWAY_QUEUE_GROUP = "meshserve-gateways"

_UNSAFE = {".": "%2E", "*": "%2A", ">": "%3E", " ": "%20", "\t": "%09", "\r": "%0D", "\n": "%0A"}


def model_token(model_name: str) -> str:
    """One subject token for a model name ('%' first so the escaping round-trips)."""
    token = model_name.replace("%", "%25")
    for char, escaped in _UNSAFE.items():
        token = token.replace(char, escaped)
    return token


def infer(model_name: str, version: int) -> str:
    """Where a gateway publishes an inference request for one model version."""
    return f"{PREFIX}.infer.{model_token(model_name)}.{version}"


def infer_all() -> str:
    """What a batcher subscribes to (in :data:`BATCHER_QUEUE_GROUP`) to receive every model's requests."""
    return f"{PREFIX}.infer.>"


def worker_announce() -> str:
    """Where workers publish their state and heartbeats; gateways and batchers listen."""
    return f"{PREFIX}.worker.announce"


def worker_query() -> str:
    """A gateway or batcher that starts asks here; every worker answers by announcing itself at once."""
    return f"{PREFIX}.worker.query"


def batcher_announce() -> str:
    """Where each batcher publishes its heartbeat (and goodbye); gateways watch it to learn that a
    batcher holding their requests died (``meshserve/custody.py``)."""
    return f"{PREFIX}.batcher.announce"


def control() -> str:
    """Where gateways send load/unload requests; the controller (``meshserve up``) answers."""
    return f"{PREFIX}.control"


def gateway_announce() -> str:
    """Where each gateway publishes its heartbeat, so gateways know how many peers share the load."""
    return f"{PREFIX}.gateway.announce"


def gateway_stats() -> str:
    """Where a gateway asks every gateway for its statistics (one mesh-wide ModelStatistics answer)."""
    return f"{PREFIX}.gateway.stats"


def gateway_shm() -> str:
    """Where a gateway announces a shared memory region it registered or unregistered, so the other
    gateways on its host take the same (``gateway/shm_mirror.py``)."""
    return f"{PREFIX}.gateway.shm"


def cancel(model_name: str, version: int) -> str:
    """Where a gateway says a request's requester is gone (payload: the request's reply subject);
    every batcher and the model version's workers listen, so the request leaves its queue or stops."""
    return f"{PREFIX}.cancel.{model_token(model_name)}.{version}"


def cancel_all() -> str:
    """What a batcher subscribes to (every batcher, no queue group: any of them may hold the request)."""
    return f"{PREFIX}.cancel.>"


def ensemble(model_name: str, version: int) -> str:
    """Where a batcher passes on a request for a model it has no instance of (a BLS call to an
    ensemble: ensembles have no batcher queue; a gateway runs their pipeline)."""
    return f"{PREFIX}.ensemble.{model_token(model_name)}.{version}"


def ensemble_all() -> str:
    """What gateways subscribe to (in :data:`GATEWAY_QUEUE_GROUP`: one gateway serves each request)."""
    return f"{PREFIX}.ensemble.>"
