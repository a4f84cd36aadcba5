"""TLS for the ext_proc port: the operator's certificate, or a self-signed one made at start (as GIE);
upstream's TLS knobs (minimum version, Go cipher-suite names); and reloading a changed certificate
without dropping open streams (--enable-cert-reload)."""
from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
import tempfile

import grpc

log = logging.getLogger(__name__)

# Go crypto/tls cipher-suite names (what upstream's --tls-cipher-suites takes) -> OpenSSL names.
# The TLS 1.3 suites are accepted and, as in Go, not configurable.
GO_CIPHERS = {
    "TLS_RSA_WITH_RC4_128_SHA": "RC4-SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA": "DES-CBC3-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA": "ECDHE-ECDSA-RC4-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA": "ECDHE-RSA-RC4-SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA": "ECDHE-RSA-DES-CBC3-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
TLS_VERSIONS = {"VersionTLS10": ssl.TLSVersion.TLSv1, "VersionTLS11": ssl.TLSVersion.TLSv1_1,
                "VersionTLS12": ssl.TLSVersion.TLSv1_2, "VersionTLS13": ssl.TLSVersion.TLSv1_3}


def openssl_cipher_names(go_names: list[str]) -> list[str]:
    """OpenSSL names of the TLS <= 1.2 suites among Go names; ValueError on an unknown name."""
    out = []
    for name in go_names:
        if name not in GO_CIPHERS:
            raise ValueError(f'unknown cipher suite "{name}"')
        if GO_CIPHERS[name]:
            out.append(GO_CIPHERS[name])
    return out


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


def _load_pems(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # the ssl module loads certificates only from files: a private directory that lives for the load
    with tempfile.TemporaryDirectory(prefix="epp-tls-") as d:
        crt, k = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        for path, data in ((crt, cert), (k, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(crt, k)


def server_credentials(cert_path: str | None, reloader: "CertReloader | None" = None) -> grpc.ServerCredentials:
    if reloader is not None:
        return reloader.grpc_credentials()
    cert, key = _pems(cert_path)
    return grpc.ssl_server_credentials([(key, cert)])


def ssl_context(cert_path: str | None, min_version: str = "", ciphers: list[str] | None = None) -> ssl.SSLContext:
    """A server context offering HTTP/2 by ALPN, as gRPC clients expect. `min_version` and `ciphers`
    take upstream's names (VersionTLS12, Go cipher-suite names)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if min_version:
        ctx.minimum_version = TLS_VERSIONS[min_version]
        if ctx.minimum_version < ssl.TLSVersion.TLSv1_2:
            # OpenSSL's default security level refuses TLS 1.0/1.1 even when the minimum allows them
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if ciphers:
        names = openssl_cipher_names(ciphers)
        if names:
            ctx.set_ciphers(":".join(names))
    ctx.set_alpn_protocols(["h2"])
    if cert_path:
        ctx.load_cert_chain(os.path.join(cert_path, "tls.crt"), os.path.join(cert_path, "tls.key"))
        return ctx
    _load_pems(ctx, *self_signed())
    return ctx


class CertReloader:
    """Watches --cert-path and puts a changed tls.crt/tls.key into service for new handshakes: loaded
    into the native server's SSLContext (each new connection copies the context's certificate, open
    ones keep theirs) and handed to grpcio through dynamic server credentials. A half-written pair
    (certificate and key that do not match) is skipped until it is whole."""

    def __init__(self, cert_path: str, interval: float = 1.0) -> None:
        self.cert_path = cert_path
        self.interval = interval
        self.pems = _pems(cert_path)
        self.contexts: list[ssl.SSLContext] = []
        self.reloads = 0
        self._grpc_served = 0
        self._grpc_config = grpc.ssl_server_certificate_configuration([(self.pems[1], self.pems[0])])

    def attach(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        self.contexts.append(ctx)
        return ctx

    def grpc_credentials(self) -> grpc.ServerCredentials:
        def fetch():
            # called by grpc's core at each handshake: hand over a newer pair once
            if self._grpc_served != self.reloads:
                self._grpc_served = self.reloads
                return self._grpc_config
            return None
        return grpc.dynamic_ssl_server_credentials(self._grpc_config, fetch)

    def check(self) -> bool:
        """Reloads when the files changed; True when a new pair went into service."""
        try:
            pems = _pems(self.cert_path)
        except OSError as e:
            log.warning("cert reload: cannot read %s: %s", self.cert_path, e)
            return False
        if pems == self.pems:
            return False
        try:
            trial = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            _load_pems(trial, *pems)        # validates that the key matches the certificate
            for ctx in self.contexts:
                _load_pems(ctx, *pems)
        except (ssl.SSLError, ValueError, OSError) as e:
            log.warning("cert reload: %s/tls.crt and tls.key do not load yet (%s); keeping the current pair",
                        self.cert_path, e)
            return False
        self.pems = pems
        self._grpc_config = grpc.ssl_server_certificate_configuration([(pems[1], pems[0])])
        self.reloads += 1
        log.info("cert reload: new certificate from %s in service for new connections", self.cert_path)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()
