"""deploy/nats/make_secrets.py: the files, their names and usages, no silent overwrite, rotation."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.nats.make_secrets import CLIENT_USER, FILES, main


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    try:
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except Exception:
        return False
    return True


def test_writes_a_ca_a_server_and_a_client_certificate(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--host", "nats.example.com", "--host", "10.0.0.5"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    ca, server, client = (_cert(tmp_path / f) for f in ("ca.pem", "server.pem", "client.pem"))
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"nats", "localhost", "nats.example.com"} <= set(names.get_values_for_type(x509.DNSName))
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.5"}
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    emails = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert emails.get_values_for_type(x509.RFC822Name) == [CLIENT_USER]  # what NATS maps to its user
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert _signed_by(server, ca) and _signed_by(client, ca)
    assert stat.S_IMODE((tmp_path / "ca-key.pem").stat().st_mode) == 0o600


def test_refuses_to_overwrite_and_rotates_under_the_same_ca(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    before = {f: (tmp_path / f).read_bytes() for f in FILES}
    assert main(["--out", str(tmp_path)]) == 1  # existing files: --force or --reuse-ca
    assert {f: (tmp_path / f).read_bytes() for f in FILES} == before
    assert main(["--out", str(tmp_path), "--reuse-ca"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() == before["ca.pem"]
    assert (tmp_path / "server.pem").read_bytes() != before["server.pem"]
    assert _signed_by(_cert(tmp_path / "server.pem"), _cert(tmp_path / "ca.pem"))
    assert main(["--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() != before["ca.pem"]
