"""The gateway's limit, TLS and token flags, and the NATS connection's credential flags.

``cli.py`` adds these to ``meshserve gateway`` and ``meshserve up``; ``meshserve up`` hands them on to
each gateway it starts (:func:`gateway_flags`) and the NATS flags to every service (:func:`nats_flags`),
so one place spells each flag.  docs/security.md lists them.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import TypedDict

from meshserve.messaging import NatsOptions
from meshserve.security import AuthSettings, GrpcTls, HttpTls, RequestLimits, read_tokens
from meshserve.settings import GatewaySettings, env_default

__all__ = [
    "SecurityFields",
    "add_gateway_security_flags",
    "add_nats_flags",
    "gateway_flags",
    "gateway_security",
    "nats_flags",
    "nats_options",
]

_LIMIT_HELP: dict[str, str] = {
    "max_tensors": "input tensors (and requested outputs) per request",
    "max_parameters": "parameters per request",
    "max_tensor_elements": "elements per tensor (product of the non-zero dims)",
    "max_bytes_element_bytes": "bytes of one BYTES element (0 = bounded by --max-message-bytes only)",
    "max_json_depth": "nesting of a JSON tensor's 'data' arrays",
    "http_max_field_bytes": "bytes of one HTTP request line or header field",
    "http_max_headers": "header fields per HTTP request",
    "grpc_max_metadata_bytes": "bytes of one gRPC call's metadata",
    "grpc_max_concurrent_streams": "concurrent calls per gRPC connection (more wait in the client)",
    "grpc_stream_inflight": "requests in flight per ModelStreamInfer stream (more wait unread)",
    "max_shm_regions": "system shared memory regions registered at once (0 = extension off)",
    "max_label_file_bytes": "bytes of one output's label_filename file (classification extension)",
}

# RequestLimits field → flag (the table in docs/security.md follows this order)
_LIMIT_FLAGS: dict[str, str] = {
    "max_tensors": "--max-request-tensors",
    "max_parameters": "--max-request-parameters",
    "max_tensor_elements": "--max-tensor-elements",
    "max_bytes_element_bytes": "--max-bytes-element-bytes",
    "max_json_depth": "--max-json-depth",
    "http_max_field_bytes": "--http-max-header-bytes",
    "http_max_headers": "--http-max-headers",
    "grpc_max_metadata_bytes": "--grpc-max-metadata-bytes",
    "grpc_max_concurrent_streams": "--grpc-max-concurrent-streams",
    "grpc_stream_inflight": "--grpc-stream-inflight",
    "max_shm_regions": "--max-shm-regions",
    "max_label_file_bytes": "--max-label-file-bytes",
}


def _env_name(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _path(flag: str) -> Path | None:
    raw = env_default(_env_name(flag), "")
    return Path(raw) if raw else None


def add_gateway_security_flags(p: argparse.ArgumentParser) -> None:
    limits = p.add_argument_group("request limits (docs/security.md)")
    defaults = RequestLimits()
    for name, flag in _LIMIT_FLAGS.items():
        default = int(env_default(_env_name(flag), str(getattr(defaults, name))))
        limits.add_argument(
            flag, type=int, default=default, metavar="N", help=f"{_LIMIT_HELP[name]} (default {default})"
        )

    tls = p.add_argument_group("TLS (Triton's gRPC flag names; HTTPS flags are meshserve's)")
    tls.add_argument(
        "--grpc-use-ssl",
        type=_bool,
        nargs="?",
        const=True,
        default=_bool(env_default("grpc_use_ssl", "false")),
    )
    tls.add_argument(
        "--grpc-use-ssl-mutual",
        type=_bool,
        nargs="?",
        const=True,
        default=_bool(env_default("grpc_use_ssl_mutual", "false")),
    )
    tls.add_argument(
        "--grpc-server-cert", type=Path, default=_path("--grpc-server-cert"), help="PEM certificate chain"
    )
    tls.add_argument(
        "--grpc-server-key", type=Path, default=_path("--grpc-server-key"), help="PEM private key"
    )
    tls.add_argument(
        "--grpc-root-cert",
        type=Path,
        default=_path("--grpc-root-cert"),
        help="CA for client certificates (mutual TLS)",
    )
    tls.add_argument(
        "--http-ssl-cert",
        type=Path,
        default=_path("--http-ssl-cert"),
        help="PEM certificate chain: serve HTTPS",
    )
    tls.add_argument(
        "--http-ssl-key",
        type=Path,
        default=_path("--http-ssl-key"),
        help="PEM private key for --http-ssl-cert",
    )
    tls.add_argument("--http-ssl-client-ca", type=Path, default=_path("--http-ssl-client-ca"), help="require client certificates signed by this CA")  # fmt: skip

    auth = p.add_argument_group("bearer tokens (files: one token per line)")
    auth.add_argument("--auth-token-file", type=Path, default=_path("--auth-token-file"), help="tokens for inference, metadata and statistics")  # fmt: skip
    auth.add_argument("--control-token-file", type=Path, default=_path("--control-token-file"), help="tokens for repository index/load/unload (they open everything)")  # fmt: skip
    p.add_argument(
        "--metrics-address",
        default=env_default("metrics_address", ""),
        help="address the metrics port binds (default: --host)",
    )


class SecurityFields(TypedDict):
    request_limits: RequestLimits
    grpc_tls: GrpcTls
    http_tls: HttpTls
    auth: AuthSettings
    metrics_address: str


def gateway_security(args: argparse.Namespace) -> SecurityFields:
    """The GatewaySettings fields these flags fill (keyword arguments); checks that files exist."""
    limits = RequestLimits(**{name: getattr(args, _env_name(flag)) for name, flag in _LIMIT_FLAGS.items()})
    for f in fields(limits):
        if getattr(limits, f.name) < 0:
            raise SystemExit(f"{_LIMIT_FLAGS[f.name]} must be >= 0")
    grpc_tls = GrpcTls(
        use_ssl=args.grpc_use_ssl or args.grpc_use_ssl_mutual,
        server_cert=_resolved(args.grpc_server_cert),
        server_key=_resolved(args.grpc_server_key),
        root_cert=_resolved(args.grpc_root_cert),
        use_ssl_mutual=args.grpc_use_ssl_mutual,
    )
    if grpc_tls.use_ssl and (grpc_tls.server_cert is None or grpc_tls.server_key is None):
        raise SystemExit("--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key")
    if grpc_tls.use_ssl_mutual and grpc_tls.root_cert is None:
        raise SystemExit("--grpc-use-ssl-mutual needs --grpc-root-cert (the CA of the client certificates)")
    http_tls = HttpTls(
        cert=_resolved(args.http_ssl_cert),
        key=_resolved(args.http_ssl_key),
        client_ca=_resolved(args.http_ssl_client_ca),
    )
    if (http_tls.cert is None) != (http_tls.key is None):
        raise SystemExit("--http-ssl-cert and --http-ssl-key go together")
    if http_tls.client_ca is not None and http_tls.cert is None:
        raise SystemExit("--http-ssl-client-ca needs --http-ssl-cert and --http-ssl-key")
    auth = AuthSettings(
        inference_tokens=read_tokens(args.auth_token_file),
        control_tokens=read_tokens(args.control_token_file),
        inference_token_file=_resolved(args.auth_token_file),
        control_token_file=_resolved(args.control_token_file),
    )
    return {
        "request_limits": limits,
        "grpc_tls": grpc_tls,
        "http_tls": http_tls,
        "auth": auth,
        "metrics_address": args.metrics_address,
    }


def _resolved(path: Path | None) -> Path | None:
    if path is None:
        return None
    if not path.is_file():
        raise SystemExit(f"no such file: '{path}'")
    return path.resolve()


def gateway_flags(settings: GatewaySettings) -> list[str]:
    """The flags that give a gateway process these settings (``meshserve up`` starts gateways so)."""
    out: list[str] = []
    for name, flag in _LIMIT_FLAGS.items():
        out += [flag, str(getattr(settings.request_limits, name))]
    t = settings.grpc_tls
    if t.use_ssl:
        out += [
            "--grpc-use-ssl=true",
            "--grpc-server-cert",
            str(t.server_cert),
            "--grpc-server-key",
            str(t.server_key),
        ]
    if t.root_cert is not None:
        out += ["--grpc-root-cert", str(t.root_cert)]
    if t.use_ssl_mutual:
        out += ["--grpc-use-ssl-mutual=true"]
    h = settings.http_tls
    if h.cert is not None:
        out += ["--http-ssl-cert", str(h.cert), "--http-ssl-key", str(h.key)]
    if h.client_ca is not None:
        out += ["--http-ssl-client-ca", str(h.client_ca)]
    if settings.auth.inference_token_file is not None:
        out += ["--auth-token-file", str(settings.auth.inference_token_file)]
    if settings.auth.control_token_file is not None:
        out += ["--control-token-file", str(settings.auth.control_token_file)]
    if settings.metrics_address:
        out += ["--metrics-address", settings.metrics_address]
    return out


def add_nats_flags(p: argparse.ArgumentParser) -> None:
    """User and password or a token go in the URL (``nats://user:pass@host:4222``, ``nats://token@host``);
    these cover credentials files and TLS."""
    g = p.add_argument_group("NATS credentials and TLS (an existing server given by --nats-url)")
    g.add_argument("--nats-creds", type=Path, default=_path("--nats-creds"), help="NATS credentials file (JWT + nkey seed)")  # fmt: skip
    g.add_argument("--nats-tls-ca", type=Path, default=_path("--nats-tls-ca"), help="CA that signed the NATS server's certificate")  # fmt: skip
    g.add_argument("--nats-tls-cert", type=Path, default=_path("--nats-tls-cert"), help="client certificate, when the server verifies clients")  # fmt: skip
    g.add_argument(
        "--nats-tls-key", type=Path, default=_path("--nats-tls-key"), help="key of --nats-tls-cert"
    )


def nats_options(args: argparse.Namespace) -> NatsOptions:
    if (args.nats_tls_cert is None) != (args.nats_tls_key is None):
        raise SystemExit("--nats-tls-cert and --nats-tls-key go together")
    return NatsOptions(
        creds=_resolved(args.nats_creds),
        tls_ca=_resolved(args.nats_tls_ca),
        tls_cert=_resolved(args.nats_tls_cert),
        tls_key=_resolved(args.nats_tls_key),
    )


def nats_flags(options: NatsOptions) -> list[str]:
    out: list[str] = []
    for flag, value in (
        ("--nats-creds", options.creds),
        ("--nats-tls-ca", options.tls_ca),
        ("--nats-tls-cert", options.tls_cert),
        ("--nats-tls-key", options.tls_key),
    ):
        if value is not None:
            out += [flag, str(value)]
    return out
