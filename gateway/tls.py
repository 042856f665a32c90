"""TLS material for the gateway's two client ports, built from the settings (docs/security.md)."""

from __future__ import annotations

import ssl

import grpc

from meshserve.security import GrpcTls, HttpTls

__all__ = ["grpc_server_credentials", "http_ssl_context"]


def grpc_server_credentials(tls: GrpcTls) -> grpc.ServerCredentials | None:
    """Triton's ``--grpc-use-ssl`` / ``--grpc-use-ssl-mutual``; None = plaintext."""
    if not tls.use_ssl:
        return None
    assert tls.server_cert is not None and tls.server_key is not None  # checked by the CLI
    root = tls.root_cert.read_bytes() if tls.root_cert is not None else None
    return grpc.ssl_server_credentials(
        [(tls.server_key.read_bytes(), tls.server_cert.read_bytes())],
        root_certificates=root,
        require_client_auth=tls.use_ssl_mutual,
    )


def http_ssl_context(tls: HttpTls) -> ssl.SSLContext | None:
    """HTTPS (TLS 1.2+); with a client CA, clients without a certificate it signed are refused."""
    if tls.cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert), str(tls.key) if tls.key is not None else None)
    if tls.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(tls.client_ca))
    return context
