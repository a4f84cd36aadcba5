"""TLS for the ext_proc port: the operator's certificate, or a self-signed one made at start (as GIE)."""
from __future__ import annotations

import datetime
import os

import grpc


def self_signed() -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) valid for ten years."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "epp")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def server_credentials(cert_path: str | None) -> grpc.ServerCredentials:
    if cert_path:
        with open(os.path.join(cert_path, "tls.crt"), "rb") as f:
            cert = f.read()
        with open(os.path.join(cert_path, "tls.key"), "rb") as f:
            key = f.read()
    else:
        cert, key = self_signed()
    return grpc.ssl_server_credentials([(key, cert)])
