"""The edge's own certificate authority and the leaf certificates it issues.

Created on first start in the state directory (``ca.pem``, ``ca-key.pem`` mode 0600). Connectors
trust it with ``--cacert ca.pem``; the CLI pins it by its SHA-256 fingerprint at ``tunnel login``.
Leaves are issued fresh at each start (short-lived, nothing to rotate by hand): the tunnel
listener's for the names cloudflared dials with (``h2``/``quic``/``probe.cftunnel.com``), and one
for the API/public listener for the names and addresses the operator gives.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "TUNNEL_SERVER_NAMES",
    "EdgeCA",
    "LeafCertificate",
    "certificate_fingerprint",
    "normalize_fingerprint",
]

#: The SNI values cloudflared sends (PROTOCOL.md §1.4): no flag changes them.
TUNNEL_SERVER_NAMES: tuple[str, ...] = (
    "h2.cftunnel.com",
    "quic.cftunnel.com",
    "probe.cftunnel.com",
)

_CA_CERT_FILE = "ca.pem"
_CA_KEY_FILE = "ca-key.pem"
_CA_LIFETIME = datetime.timedelta(days=3650)
_LEAF_LIFETIME = datetime.timedelta(days=397)
#: Clock skew between edge and connector hosts should not make a fresh leaf "not yet valid".
_BACKDATE = datetime.timedelta(hours=1)


def certificate_fingerprint(cert_pem: str | bytes) -> str:
    """``sha256:<hex>`` of the first certificate's DER encoding."""
    data = cert_pem.encode("ascii") if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificate(data)
    der = cert.public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Accept ``sha256:AB:CD...``, ``AB:CD...`` or plain hex; return ``sha256:<lower hex>``."""
    value = text.strip()
    if value.lower().startswith("sha256:"):
        value = value[len("sha256:") :]
    value = value.replace(":", "").replace(" ", "").lower()
    return "sha256:" + value


@dataclass(frozen=True)
class LeafCertificate:
    """A server certificate (PEM, leaf then CA) and its private key (PEM, PKCS#8)."""

    cert_chain_pem: str
    key_pem: str = field(repr=False)

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context (TLS ≥ 1.2) presenting this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl only loads keys from files: keep them in a private directory just long enough.
        with tempfile.TemporaryDirectory(prefix="adit-leaf-") as tmp:
            cert_path = Path(tmp) / "cert.pem"
            key_path = Path(tmp) / "key.pem"
            cert_path.write_text(self.cert_chain_pem, encoding="ascii")
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(self.key_pem)
            context.load_cert_chain(cert_path, key_path)
        return context


class EdgeCA:
    """A P-256 CA that signs the edge's server certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._cert = cert
        self._key = key

    def __repr__(self) -> str:
        return f"EdgeCA({self.fingerprint})"

    @classmethod
    def load_or_create(cls, state_dir: str | os.PathLike[str]) -> EdgeCA:
        """Load the CA from ``state_dir``, creating the directory and the CA on first use."""
        directory = Path(state_dir)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_path = directory / _CA_CERT_FILE
        key_path = directory / _CA_KEY_FILE
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} does not hold an EC private key")
            return cls(cert, key)
        ca = cls.generate()
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(ca.key_pem().encode("ascii"))
        cert_path.write_text(ca.cert_pem, encoding="ascii")
        return ca

    @classmethod
    def generate(cls, common_name: str = "adit edge CA") -> EdgeCA:
        """A new CA in memory (tests; ``load_or_create`` persists one)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def cert_pem(self) -> str:
        """The CA certificate (public; what connectors pass as ``--cacert``)."""
        return self._cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the CA certificate."""
        return certificate_fingerprint(self.cert_pem)

    def key_pem(self) -> str:
        """The CA private key (PKCS#8 PEM); only for persisting it."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    def issue_leaf(
        self, dns_names: Iterable[str] = (), ip_addresses: Iterable[str] = ()
    ) -> LeafCertificate:
        """A new P-256 server certificate for the given names and addresses."""
        names = list(dns_names)
        ips = [ipaddress.ip_address(a) for a in ip_addresses]
        if not names and not ips:
            raise ValueError("a leaf certificate needs at least one DNS name or IP address")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans.extend(x509.IPAddress(ip) for ip in ips)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else str(ips[0]))]
        )
        ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(min(now + _LEAF_LIFETIME, self._cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
            )
            .sign(self._key, hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM).decode("ascii") + self.cert_pem
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        return LeafCertificate(cert_chain_pem=chain, key_pem=key_pem)

    def tunnel_leaf(self) -> LeafCertificate:
        """The tunnel listener's certificate (cloudflared's fixed SNI names)."""
        return self.issue_leaf(TUNNEL_SERVER_NAMES)

    def api_leaf(
        self,
        dns_names: Sequence[str] = ("localhost",),
        ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
    ) -> LeafCertificate:
        """The API/public listener's certificate."""
        return self.issue_leaf(dns_names, ip_addresses)

    def tunnel_server_context(self) -> ssl.SSLContext:
        """TLS server context for the tunnel listener (no ALPN required: cloudflared sends none)."""
        return self.tunnel_leaf().server_context()

    def api_server_context(
        self,
        dns_names: Sequence[str] = ("localhost",),
        ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
    ) -> ssl.SSLContext:
        """TLS server context for the management API / public listener."""
        return self.api_leaf(dns_names, ip_addresses).server_context()

    def client_context(self) -> ssl.SSLContext:
        """A client context trusting only this CA (tests and internal callers)."""
        return ssl.create_default_context(cadata=self.cert_pem)
