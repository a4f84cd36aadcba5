"""TLS for the ext_proc port: the operator's certificate, or a self-signed one made at start (as GIE)."""
from __future__ import annotations

import datetime
import os
import ssl
import tempfile

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


def _pems(cert_path: str | None) -> tuple[bytes, bytes]:
    if not cert_path:
        return self_signed()
    with open(os.path.join(cert_path, "tls.crt"), "rb") as f:
        cert = f.read()
    with open(os.path.join(cert_path, "tls.key"), "rb") as f:
        key = f.read()
    return cert, key


def server_credentials(cert_path: str | None) -> grpc.ServerCredentials:
    cert, key = _pems(cert_path)
    return grpc.ssl_server_credentials([(key, cert)])


def ssl_context(cert_path: str | None) -> ssl.SSLContext:
    """A server context offering HTTP/2 by ALPN, as gRPC clients expect."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    if cert_path:
        ctx.load_cert_chain(os.path.join(cert_path, "tls.crt"), os.path.join(cert_path, "tls.key"))
        return ctx
    cert, key = self_signed()
    # the ssl module loads certificates only from files: a private directory that lives for the load
    with tempfile.TemporaryDirectory(prefix="epp-tls-") as d:
        crt, k = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        for path, data in ((crt, cert), (k, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(crt, k)
    return ctx
