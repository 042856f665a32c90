"""Typed, frozen settings for each service — built once in ``cli.py`` and passed down.

Every bound in the mesh is a field here with its unit in the name.  Environment variables
(``MESHSERVE_<FIELD>``) give defaults that command-line flags override; nothing else reads the
environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from meshserve.security import AuthSettings, GrpcTls, HttpTls, RequestLimits

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "BatcherSettings",
    "GatewaySettings",
    "Limits",
    "UpSettings",
    "WorkerSettings",
    "env_default",
]

DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""Largest request/response body any hop accepts (NATS max_payload, gRPC limits, HTTP body)."""


def env_default(name: str, default: str) -> str:
    """``MESHSERVE_<NAME>`` from the environment, else ``default`` (the only environment read)."""
    return os.environ.get(f"MESHSERVE_{name.upper()}", default)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds shared by every service, so each hop agrees on them."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest serialized request or response (setting ``--max-message-bytes``)."""
    request_timeout_s: float = 60.0
    """Deadline of a request that carries no ``timeout`` parameter (``--request-timeout-secs``)."""
    nats_reconnect_wait_s: float = 0.5
    """Pause between attempts to reconnect to NATS (``--nats-reconnect-wait-secs``)."""
    nats_max_reconnect_attempts: int = -1
    """Reconnect attempts before a service gives up and stops; -1 = forever
    (``--nats-max-reconnect-attempts``)."""
    nats_connect_timeout_s: float = 30.0
    """A first connection to NATS that keeps failing this long stops the service with the reason
    (``--nats-connect-timeout-secs``); nats-py alone would retry it forever."""
    batcher_heartbeat_s: float = 1.0
    """How often a batcher says it is alive (``--batcher-heartbeat-secs``)."""
    batcher_timeout_s: float = 3.0
    """A batcher silent this long is dead to the gateways: the requests it held are published once more
    or fail with UNAVAILABLE (``--batcher-timeout-secs``; meshserve/custody.py)."""

    @property
    def frame_bytes(self) -> int:
        """Largest batcher ↔ worker frame: a batch holds several requests, each up to the message limit.
        The bound guards against a corrupt stream, not against load (batches are bounded by rows)."""
        return max(256 * 1024 * 1024, 8 * self.max_message_bytes)

    @property
    def grpc_message_bytes(self) -> int:
        """gRPC limit: the payload plus room for the envelope, so gRPC never rejects first."""
        return self.max_message_bytes + 1024 * 1024


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    nats_url: str
    model_repository: Path | None = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    strict_readiness: bool = True
    """ServerReady is true only when every model is ready (Triton's ``--strict-readiness``)."""
    control_timeout_s: float = 300.0
    """How long a load/unload request waits for the model controller (a load starts processes)."""
    reuse_port: bool = False
    """Bind the gRPC and HTTP ports with SO_REUSEPORT, so several gateway processes share them and the
    kernel spreads connections across them (``meshserve up --gateways N``)."""
    instance_stale_after_s: float = 5.0
    """A worker silent for this long no longer counts toward a model's readiness."""
    exit_with_parent: bool = False
    """Stop when the parent process (``meshserve up``) goes away."""
    stats_collect_timeout_s: float = 1.0
    """How long a statistics call waits for the other gateways' counts (``gateway/peers.py``)."""
    limits: Limits = field(default_factory=Limits)
    # guard rails (docs/security.md): request limits, TLS, bearer tokens, a separate metrics address
    request_limits: RequestLimits = field(default_factory=RequestLimits)
    grpc_tls: GrpcTls = field(default_factory=GrpcTls)
    http_tls: HttpTls = field(default_factory=HttpTls)
    auth: AuthSettings = field(default_factory=AuthSettings)
    metrics_address: str = ""
    """Address the metrics port binds ("" = ``host``), Triton's ``--metrics-address``."""


@dataclass(frozen=True, slots=True)
class BatcherSettings:
    nats_url: str
    max_queue_size: int = 10_000
    """Requests queued per model version beyond which new ones are refused (UNAVAILABLE)."""
    instance_stale_after_s: float = 5.0
    """A worker silent this long is dropped from the pool; its in-flight batches are failed."""
    inflight_batches_per_instance: int = 1
    """Batches sent to one worker instance before it answers (kept 1: one batch at a time)."""
    host: str = "127.0.0.1"
    metrics_port: int = -1
    """Prometheus ``/metrics`` (queue depth, batches by reason: ``batcher/metrics.py``); -1 = off, 0 = a
    free port."""
    exit_with_parent: bool = False
    """Stop when the parent process (``meshserve up``) goes away."""
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    nats_url: str
    model_repository: Path
    model_name: str
    model_version: int
    instance_index: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    advertise_host: str = ""
    """Address announced to batchers for the batch endpoint; empty: ``host``, or for a wildcard ``host``
    the local address on the route to NATS (containers, pods, other machines; see meshserve/netaddr.py)."""
    heartbeat_interval_s: float = 1.0
    device: str = "cpu"
    """``cpu`` or ``cuda:N``; the launcher picks it from the instance group."""
    exit_timeout_s: float = 10.0
    """On SIGTERM, how long batches in flight may take to finish."""
    stop_notice_s: float = 0.3
    """On SIGTERM, how long the batch endpoint stays open after the STOPPING announcement."""
    exit_with_parent: bool = False
    """Stop when the parent process (``meshserve up``) goes away."""
    stage: int = -1
    """``llm`` models only: which pipeline stage (layer range) this worker holds; -1 = a plain worker."""
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class UpSettings:
    """``meshserve up``: the whole mesh on one machine."""

    model_repository: Path
    gateway: GatewaySettings
    model_control_mode: str = "none"
    """``none`` (load everything at start), ``explicit`` (only ``load_models``; load/unload by API) or
    ``poll`` (load everything, then follow the repository's changes)."""
    repository_poll_s: float = 15.0
    """Poll mode: seconds between two looks at the repository (``--repository-poll-secs``)."""
    model_load_threads: int = 4
    """Explicit/poll modes: model loads that run at once (``--model-load-thread-count``, Triton's
    default 4); at start every model's workers start together."""
    load_models: tuple[str, ...] = ()
    """``--load-model`` names loaded at start in explicit mode (``*`` = all)."""
    gateways: int = 1
    batcher_metrics_port: int = 0
    """The batcher's Prometheus endpoint: 0 = a free port (logged, and in the ready line), -1 = off."""
    """Gateway processes sharing the client ports (one Python process must not be the ceiling)."""
    nats_url: str | None = None
    """An existing NATS server; None starts an embedded one."""
    nats_port: int = -1
    """Port of the embedded nats-server; -1 picks a free one."""
    nats_server_binary: str | None = None
    startup_timeout_s: float = 120.0
    exit_timeout_s: float = 30.0
    log_verbose: int = 0
    event_loop: str = "uvloop"
    """``asyncio`` or ``uvloop``, for every process the launcher starts."""
    limits: Limits = field(default_factory=Limits)
