"""ACME challenge solvers: how the edge proves it controls a hostname (RFC 8555 §8).

A solver is told a challenge's token and key authorisation before the edge asks the CA to
validate, and told to forget them afterwards. Two live in the edge's own listeners:

* HTTP-01 (RFC 8555 §8.3): ``GET /.well-known/acme-challenge/TOKEN`` on the public HTTP
  listener, answered before routing. Tokens are also kept as files in the state directory so
  that any edge process sharing it answers, whichever one the CA's request reaches.
* TLS-ALPN-01 (RFC 8737): a handshake offering ``acme-tls/1`` for the hostname gets a
  self-signed certificate carrying the key authorisation's digest. The HTTPS listener picks
  it from the peeked ClientHello (SNI and ALPN), before OpenSSL sees it, and only while a
  validation is under way: visitors of the name keep getting its real certificate. Pending
  challenges are also kept as files in the state directory (the hostname and its key
  authorisation), so that an edge process sharing it answers a CA handshake that reaches it
  rather than the process that ordered.

DNS-01 (wildcards, and any name when listed first) is :class:`~adit.edge.acme_dns01.Dns01Solver`:
TXT records through the zone's RFC 2136 server. The issuer only needs ``kind``, ``present``
and ``cleanup``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import ssl
import threading
import time
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adit.edge.ca import LeafCertificate
from adit.edge.client_hello import server_name_and_alpn

__all__ = [
    "ACME_TLS_ALPN",
    "CHALLENGE_PATH",
    "ChallengeSolver",
    "Http01Solver",
    "TlsAlpn01Solver",
]

#: The HTTP-01 path prefix (RFC 8555 §8.3).
CHALLENGE_PATH = b"/.well-known/acme-challenge/"
#: RFC 8737 §6.2.
ACME_TLS_ALPN = "acme-tls/1"
#: id-pe-acmeIdentifier (RFC 8737 §6.1).
_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
#: base64url without padding: what a token is made of (RFC 8555 §8.1).
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
#: A hostname that is safe as a file name (no path, no dot file): what an SNI must be to
#: look for another process's challenge.
_SHARED_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")
#: A directory changed this recently (ns) is listed again whatever its mtime says.
_RECENT_NS = 1_000_000_000
#: Other processes' challenge contexts kept at once (a handful of names validate at a time).
_SHARED_KEPT = 64


class ChallengeSolver(Protocol):
    """What the issuer needs of a way to answer one challenge type."""

    #: The ACME challenge type (``http-01``, ``tls-alpn-01``, ``dns-01``).
    kind: str

    def present(self, hostname: str, token: str, key_authorization: str) -> None:
        """Make the proof answerable (before the CA is asked to validate)."""

    def cleanup(self, hostname: str, token: str) -> None:
        """Forget the proof (the challenge is over, whatever its outcome)."""


class Http01Solver:
    """Tokens answered on the public HTTP listener (memory first, then the shared files)."""

    kind = "http-01"

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._tokens: dict[str, str] = {}

    def present(self, hostname: str, token: str, key_authorization: str) -> None:
        if _TOKEN.fullmatch(token) is None:
            raise ValueError(f"ACME token {token!r} is not base64url")
        self._tokens[token] = key_authorization
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._directory / f".{token}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(key_authorization)
        tmp.replace(self._directory / token)

    def cleanup(self, hostname: str, token: str) -> None:
        self._tokens.pop(token, None)
        if _TOKEN.fullmatch(token) is not None:
            (self._directory / token).unlink(missing_ok=True)

    def response(self, target: bytes) -> bytes | None:
        """The body for a request target under :data:`CHALLENGE_PATH`; None: a 404."""
        try:
            token = target[len(CHALLENGE_PATH) :].decode("ascii")
        except UnicodeDecodeError:
            return None
        if _TOKEN.fullmatch(token) is None:
            return None
        answer = self._tokens.get(token)
        if answer is None:
            try:
                answer = (self._directory / token).read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError):
                return None
        return answer.encode("ascii")


class TlsAlpn01Solver:
    """Challenge certificates by hostname, for the HTTPS listener's ClientHello router: this
    process's own (memory), then those other processes on ``directory`` present (files)."""

    kind = "tls-alpn-01"

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self._contexts: dict[str, tuple[str, ssl.SSLContext]] = {}
        self._lock = threading.Lock()
        #: Contexts made from other processes' files, by hostname, with the file's text.
        self._shared: dict[str, tuple[str, ssl.SSLContext]] = {}
        #: The directory's mtime when last listed, and whether it held a challenge then.
        self._listed_mtime = -1
        self._listed_any = False

    def present(self, hostname: str, token: str, key_authorization: str) -> None:
        context = _challenge_context(hostname, key_authorization)
        with self._lock:
            self._contexts[hostname] = (token, context)
        if self._directory is not None and _SHARED_NAME.fullmatch(hostname):
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self._directory / f".{hostname}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(f"{token}\n{key_authorization}")
            tmp.replace(self._directory / hostname)

    def cleanup(self, hostname: str, token: str) -> None:
        with self._lock:
            held = self._contexts.get(hostname)
            if held is not None and held[0] == token:
                del self._contexts[hostname]
        if self._directory is not None and _SHARED_NAME.fullmatch(hostname):
            path = self._directory / hostname
            with contextlib.suppress(OSError, UnicodeDecodeError):
                # Only this challenge's file: a newer one for the name is another order's.
                if path.read_text(encoding="ascii").partition("\n")[0] == token:
                    path.unlink(missing_ok=True)

    @property
    def pending(self) -> bool:
        """Whether a validation is under way, here or in another process sharing the
        directory (only then are ClientHellos peeked at). One ``stat`` a handshake: the
        directory is listed again only when its mtime changed."""
        if self._contexts:
            return True
        if self._directory is None:
            return False
        try:
            mtime = os.stat(self._directory).st_mtime_ns
        except OSError:
            return False
        # File times come from a coarse clock: a change in the same tick as the last listing
        # leaves the mtime as it was, so a directory changed in the last second is listed
        # each time (a validation's handshakes come seconds after its file).
        if mtime != self._listed_mtime or time.time_ns() - mtime < _RECENT_NS:
            self._listed_mtime = mtime
            try:
                self._listed_any = any(not n.startswith(".") for n in os.listdir(self._directory))
            except OSError:
                self._listed_any = False
        return self._listed_any

    def context_for_hello(self, hello: bytes) -> ssl.SSLContext | None:
        """The challenge context for a ClientHello that offers ``acme-tls/1`` for a name
        under validation; None for everything else (a visitor never gets it, RFC 8737 §3).
        Chosen from the peeked ClientHello: Python's SNI callback cannot see the ALPN."""
        offer = server_name_and_alpn(hello)
        if offer is None or ACME_TLS_ALPN not in offer[1]:
            return None
        held = self._contexts.get(offer[0])
        if held is not None:
            return held[1]
        return self._shared_context(offer[0])

    def _shared_context(self, hostname: str) -> ssl.SSLContext | None:
        """The challenge context another process presented for ``hostname`` (its file)."""
        if self._directory is None or _SHARED_NAME.fullmatch(hostname) is None:
            return None
        try:
            text = (self._directory / hostname).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return None
        cached = self._shared.get(hostname)
        if cached is not None and cached[0] == text:
            return cached[1]
        token, _, key_authorization = text.partition("\n")
        if _TOKEN.fullmatch(token) is None or not key_authorization.startswith(token + "."):
            return None  # not a challenge file (RFC 8555 §8.1: token.thumbprint)
        context = _challenge_context(hostname, key_authorization)
        if len(self._shared) >= _SHARED_KEPT:
            self._shared.clear()
        self._shared[hostname] = (text, context)
        return context


def _challenge_context(hostname: str, key_authorization: str) -> ssl.SSLContext:
    context = challenge_certificate(hostname, key_authorization).server_context()
    # Only acme-tls/1: a handshake that picked this context and negotiates anything else
    # gets no protocol, and the CA's validator closes after the handshake.
    context.set_alpn_protocols([ACME_TLS_ALPN])
    return context


def challenge_certificate(hostname: str, key_authorization: str) -> LeafCertificate:
    """RFC 8737 §3: self-signed, the hostname its only SAN, the SHA-256 of the key
    authorisation in a critical id-pe-acmeIdentifier extension (a DER OCTET STRING)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(_ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return LeafCertificate(
        cert_chain_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii"),
    )
