"""Make the certificates a secure NATS needs: a private CA, the server's certificate, one client certificate.

    python deploy/nats/make_secrets.py                      # writes deploy/nats/secrets/
    python deploy/nats/make_secrets.py --out DIR --host nats.example.com --host 10.0.0.5

Files (PEM), as ``deploy/docker-compose.secure.yml`` and the Helm chart's Secrets expect them:

- ``ca.pem`` (+ ``ca-key.pem``, keep it away from the services: it signs more certificates),
- ``server.pem`` / ``server-key.pem``: NATS's certificate, valid for ``nats``, ``localhost``,
  ``127.0.0.1`` and every ``--host``,
- ``client.pem`` / ``client-key.pem``: what every meshserve service shows NATS.  NATS verifies it
  (``verify_and_map``) and maps its e-mail name ``--client-user`` (default ``meshserve@mesh.local``)
  to the one user ``deploy/nats/nats-secure.conf`` allows: the key is the credential, no password.

Needs the ``cryptography`` package (``pip install cryptography``; the test extra has it).  Run it
again with ``--force`` to replace existing files.  docs/security.md says how to rotate them.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "secrets"
DEFAULT_HOSTS = ("nats", "localhost", "127.0.0.1")
CLIENT_USER = "meshserve@mesh.local"
FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")


def _write(path: Path, data: bytes) -> None:
    # readable by the containers' users (the meshserve image runs as uid 10001, nats as root): 0644;
    # on a shared host, chown the directory to those users and tighten it (docs/security.md)
    path.write_bytes(data)
    path.chmod(0o644)


def make_secrets(
    out: Path, hosts: list[str], client_user: str = CLIENT_USER, days: int = 825, reuse_ca: bool = False
) -> list[Path]:
    """Write the six files into ``out`` (created); returns their paths.  ``reuse_ca``: sign with the
    ``ca.pem``/``ca-key.pem`` already there (new server and client certificates, the same trust)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # pragma: no cover - the message is the point
        raise SystemExit(f"{exc}: pip install cryptography (or use openssl, docs/security.md)") from exc

    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    until = now + datetime.timedelta(days=days)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshserve"),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    ca_name = name("meshserve NATS CA")
    if reuse_ca:
        ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
        loaded = serialization.load_pem_private_key((out / "ca-key.pem").read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise SystemExit(f"{out / 'ca-key.pem'}: not an EC key made by this script")
        ca_key, ca_name = loaded, ca.subject
    else:
        ca_key = key()
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

    def leaf(
        k: ec.EllipticCurvePrivateKey,
        common: str,
        names: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
    ) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )

    def general_name(host: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            return x509.DNSName(host)

    server_key, client_key = key(), key()
    unique_hosts = list(dict.fromkeys(hosts))
    server = leaf(
        server_key, unique_hosts[0], [general_name(h) for h in unique_hosts], ExtendedKeyUsageOID.SERVER_AUTH
    )
    client = leaf(client_key, client_user, [x509.RFC822Name(client_user)], ExtendedKeyUsageOID.CLIENT_AUTH)

    out.mkdir(parents=True, exist_ok=True)
    contents = {
        "ca.pem": ca.public_bytes(serialization.Encoding.PEM),
        "ca-key.pem": pem_key(ca_key),
        "server.pem": server.public_bytes(serialization.Encoding.PEM),
        "server-key.pem": pem_key(server_key),
        "client.pem": client.public_bytes(serialization.Encoding.PEM),
        "client-key.pem": pem_key(client_key),
    }
    written = []
    for filename, data in contents.items():
        _write(out / filename, data)
        written.append(out / filename)
    (out / "ca-key.pem").chmod(0o600)  # no service reads it
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"directory (default {DEFAULT_OUT})")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="another name or address clients dial NATS by (repeatable; nats, localhost, 127.0.0.1 always)",
    )
    parser.add_argument("--client-user", default=CLIENT_USER, help="e-mail name NATS maps to its user")
    parser.add_argument("--days", type=int, default=825, help="validity of every certificate")
    parser.add_argument("--force", action="store_true", help="replace existing files")
    parser.add_argument(
        "--reuse-ca", action="store_true", help="new certificates signed by the CA in --out (rotation)"
    )
    args = parser.parse_args(argv)
    existing = [f for f in FILES if (args.out / f).exists()]
    if existing and not (args.force or args.reuse_ca):
        print(f"{args.out} already holds {', '.join(existing)}; --force replaces them", file=sys.stderr)
        return 1
    paths = make_secrets(args.out, [*DEFAULT_HOSTS, *args.host], args.client_user, args.days, args.reuse_ca)
    print(f"wrote {len(paths)} files to {args.out}{os.sep}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
