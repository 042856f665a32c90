"""What the batcher needs from a model's config: batching rules, priority levels and queue policies,
and which inputs may be ragged.  Read once, from the config a worker announced with its instance.
"""

from __future__ import annotations

from dataclasses import dataclass

from batcher.policy import BatchingRules
from batcher.queues import QueuePolicy
from meshserve.model_config import config_from_bytes
from meshserve.pb import mesh_pb2
from meshserve.pb import model_config_pb2 as mc

__all__ = ["ModelRules", "rules_from_announcement", "rules_from_config", "signature_of"]


@dataclass(frozen=True, slots=True)
class ModelRules:
    batching: BatchingRules
    policies: tuple[QueuePolicy, ...]
    """One per priority level, level 1 first."""
    default_level: int
    ragged_inputs: frozenset[str]
    decoupled: bool = False
    """0..N responses per request: a lost batch is not retried (its streams may have begun)."""


def _policy(p: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        max_queue_size=p.max_queue_size,
        default_timeout_s=p.default_timeout_microseconds / 1e6,
        allow_timeout_override=p.allow_timeout_override,
        delay_on_timeout=p.timeout_action == mc.ModelQueuePolicy.DELAY,
    )


def rules_from_config(config: mc.ModelConfig) -> ModelRules:
    dynamic = config.HasField("dynamic_batching")
    db = config.dynamic_batching
    batching = BatchingRules(
        max_batch_size=config.max_batch_size,
        dynamic=dynamic,
        preferred_sizes=tuple(db.preferred_batch_size) if dynamic else (),
        max_queue_delay_s=db.max_queue_delay_microseconds / 1e6 if dynamic else 0.0,
    )
    levels = max(1, db.priority_levels) if dynamic else 1
    default = _policy(db.default_queue_policy) if dynamic else QueuePolicy()
    policies = tuple(
        _policy(db.priority_queue_policy[level]) if dynamic and level in db.priority_queue_policy else default
        for level in range(1, levels + 1)
    )
    return ModelRules(
        batching=batching,
        policies=policies,
        default_level=(db.default_priority_level or 1) if dynamic and db.priority_levels else 1,
        ragged_inputs=frozenset(t.name for t in config.input if t.allow_ragged_batch),
        decoupled=config.model_transaction_policy.decoupled,
    )


def rules_from_announcement(announcement: mesh_pb2.WorkerAnnouncement) -> ModelRules:
    return rules_from_config(config_from_bytes(announcement.model_config))


def signature_of(
    request: mesh_pb2.InferRequest, ragged_inputs: frozenset[str] = frozenset()
) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """Inputs present, their datatypes and non-batch shapes (ragged inputs: shape ignored).

    Requests batch together only when these agree (Triton's DB4)."""
    return tuple(
        sorted(
            (t.name, t.datatype, () if t.name in ragged_inputs else tuple(t.shape[1:]))
            for t in request.inputs
        )
    )
