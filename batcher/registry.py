"""The batcher's view of worker instances, learned from their NATS announcements.

An instance joins when it announces READY, leaves when it announces anything else or falls silent
for ``instance_stale_after_s``.  The first announcement of a model version carries its config,
from which the batching rules are read.
"""

from __future__ import annotations

from batcher.policy import BatchingRules
from meshserve.model_config import config_from_bytes
from meshserve.pb import mesh_pb2

__all__ = ["rules_from_announcement", "signature_of"]


def rules_from_announcement(announcement: mesh_pb2.WorkerAnnouncement) -> BatchingRules:
    config = config_from_bytes(announcement.model_config)
    dynamic = config.HasField("dynamic_batching")
    return BatchingRules(
        max_batch_size=config.max_batch_size,
        dynamic=dynamic,
        preferred_sizes=tuple(config.dynamic_batching.preferred_batch_size) if dynamic else (),
        max_queue_delay_s=config.dynamic_batching.max_queue_delay_microseconds / 1e6 if dynamic else 0.0,
    )


def signature_of(request: mesh_pb2.InferRequest) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """Inputs present, their datatypes and non-batch shapes: requests batch only when these agree."""
    return tuple(sorted((t.name, t.datatype, tuple(t.shape[1:])) for t in request.inputs))
