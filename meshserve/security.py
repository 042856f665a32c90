"""The gateway's guard rails: request limits, TLS material and bearer tokens, as typed settings.

Everything here is data (frozen dataclasses) plus the pure checks the gateway runs on each request;
the flags that fill them live in :mod:`meshserve.security_cli`.  docs/security.md has the table of
every limit with its flag, default and the error a client sees.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from meshserve.errors import InvalidArgument, PermissionDenied, Unauthenticated

__all__ = [
    "AuthSettings",
    "GrpcTls",
    "HttpTls",
    "Need",
    "RequestLimits",
    "check_model_name",
    "check_token",
    "read_tokens",
]


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on one inference request, beyond its byte size (``Limits.max_message_bytes``)."""

    max_tensors: int = 256
    """Input tensors, and requested outputs, per request (``--max-request-tensors``)."""
    max_parameters: int = 256
    """Parameters per request (``--max-request-parameters``)."""
    max_tensor_elements: int = 1 << 26
    """Elements per tensor; counted as the product of its non-zero dims, so a zero dim cannot hide a
    huge shape from the check (``--max-tensor-elements``)."""
    max_bytes_element_bytes: int = 0
    """Length of one BYTES element; 0 = no bound beyond the request size (``--max-bytes-element-bytes``)."""
    max_json_depth: int = 32
    """Nesting of a JSON tensor's ``data`` arrays (``--max-json-depth``); the whole body is parsed
    with the interpreter's own recursion guard on top."""
    http_max_field_bytes: int = 8190
    """One HTTP request line or header field (``--http-max-header-bytes``)."""
    http_max_headers: int = 128
    """Header fields per HTTP request (``--http-max-headers``)."""
    grpc_max_metadata_bytes: int = 16384
    """All metadata (headers) of one gRPC call (``--grpc-max-metadata-bytes``)."""
    grpc_max_concurrent_streams: int = 1024
    """Concurrent calls on one gRPC connection; more wait in the client (``--grpc-max-concurrent-streams``)."""
    grpc_stream_inflight: int = 256
    """Requests in flight on one ModelStreamInfer stream; the gateway stops reading the stream until
    one ends (``--grpc-stream-inflight``)."""
    max_shm_regions: int = 64
    """System shared memory regions registered with one gateway at once; 0 turns the shared-memory
    extension off (``--max-shm-regions``, docs/shared-memory.md)."""
    max_label_file_bytes: int = 4 * 1024 * 1024
    """Size of one output's ``label_filename`` file, read for the classification extension
    (``--max-label-file-bytes``, docs/classification.md)."""


@dataclass(frozen=True, slots=True)
class GrpcTls:
    """Triton's gRPC SSL flags (``--grpc-use-ssl`` and friends)."""

    use_ssl: bool = False
    server_cert: Path | None = None
    server_key: Path | None = None
    root_cert: Path | None = None
    """CA bundle that client certificates must chain to (mutual TLS)."""
    use_ssl_mutual: bool = False


@dataclass(frozen=True, slots=True)
class HttpTls:
    """HTTPS for the KServe REST endpoint (meshserve's flags; Triton has none)."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    """When set, every client must present a certificate that chains to this CA."""

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Bearer tokens read from files at start (never from the command line: it shows in ``ps``)."""

    inference_tokens: frozenset[str] = field(default_factory=frozenset)
    """Empty: inference, metadata and statistics are open."""
    control_tokens: frozenset[str] = field(default_factory=frozenset)
    """Empty: repository control follows the inference rule."""
    inference_token_file: Path | None = None
    """Where ``inference_tokens`` came from (``meshserve up`` hands the path, not the tokens, on)."""
    control_token_file: Path | None = None


class Need(Enum):
    """What a route requires."""

    OPEN = "open"
    """Health: Kubernetes probes carry no token."""
    INFERENCE = "inference"
    CONTROL = "control"
    """Repository index, load, unload."""


def read_tokens(path: Path | None) -> frozenset[str]:
    """One token per line; blank lines and ``#`` comments skipped.  Several lines allow rotation."""
    if path is None:
        return frozenset()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SystemExit(f"cannot read token file '{path}': {exc}") from exc
    tokens = frozenset(t for line in lines if (t := line.strip()) and not t.startswith("#"))
    if not tokens:
        raise SystemExit(f"token file '{path}' holds no token")
    return tokens


def _matches(presented: str, tokens: frozenset[str]) -> bool:
    # compare against every token without stopping early, each comparison in constant time
    found = False
    for token in tokens:
        found |= hmac.compare_digest(presented.encode(), token.encode())
    return found


def check_token(auth: AuthSettings, need: Need, authorization: str | None) -> None:
    """Raise :class:`Unauthenticated` (no or unknown token) or :class:`PermissionDenied` (an inference
    token on a control route); return when the call may proceed.  A control token opens everything."""
    if need is Need.OPEN:
        return
    required = auth.control_tokens if need is Need.CONTROL and auth.control_tokens else auth.inference_tokens
    if need is Need.INFERENCE and not auth.inference_tokens:
        return
    if not required:
        return
    scheme, _, presented = (authorization or "").strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise Unauthenticated("this endpoint needs an 'authorization: Bearer <token>' header")
    if _matches(presented, required) or _matches(presented, auth.control_tokens):
        return
    if need is Need.CONTROL and _matches(presented, auth.inference_tokens):
        raise PermissionDenied(
            "repository control and trace/log settings need the control token; an inference token was given"
        )
    raise Unauthenticated("the bearer token is not valid for this server")


_FORBIDDEN_IN_NAMES = ("/", "\\", "\x00")


def check_model_name(name: str, action: str = "") -> None:
    """A model name from a request names a directory of the repository only through the index; still,
    refuse up front anything that could walk a path, so no later step ever has to be careful.
    ``action`` ("load", "unload") opens the message with Triton's "failed to load '<name>'"."""
    if (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or any(c in name for c in _FORBIDDEN_IN_NAMES)
        or not name.isprintable()
        or len(name) > 255
    ):
        lead = (
            f"failed to {action} {name!r}: invalid model name" if action else f"invalid model name {name!r}"
        )
        raise InvalidArgument(
            f"{lead}: a model name is one directory name of the repository "
            "(no '/', '\\', NUL, leading '.', control characters; at most 255 characters)"
        )
