"""Certificates on disk: what ACME issued (in the state directory) and what the operator
brings (``--certificate-dir``).

Issued certificates live in ``STATE_DIR/certificates/HOSTNAME/``: ``fullchain.pem`` (leaf then
intermediates), ``privkey.pem`` (mode 0600) and ``status.json`` (the last attempt's outcome,
read by ``adit edge cert list``). Every edge process sharing the state directory serves them;
an issuance holds ``lock`` (``flock``) so that only one process talks to the CA for a name, and
the others pick the files up when they change. ``renew`` is a request from ``adit edge cert
renew``.

Bring-your-own layout: ``DIR/NAME.crt`` (certificate, then its chain, PEM) beside
``DIR/NAME.key`` (its private key, PEM). ``NAME`` is free; the hostnames served are the
certificate's DNS SANs (``*.example.com`` covers one label).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from adit.edge.ca import LeafCertificate

__all__ = [
    "CERTIFICATES_DIR",
    "BringYourOwn",
    "CertificateFiles",
    "StoredCertificate",
    "certificate_names",
]

CERTIFICATES_DIR = "certificates"
_CHAIN = "fullchain.pem"
_KEY = "privkey.pem"
_STATUS = "status.json"
_RENEW = "renew"
_LOCK = "lock"


@dataclass(frozen=True)
class StoredCertificate:
    """A certificate chain and its key, with what the edge needs to know of the leaf."""

    leaf: LeafCertificate
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime
    issuer: str
    #: Where it came from: ``acme`` or the BYO file's path.
    source: str
    #: The files' modification time when read (reloaded when it changes).
    mtime_ns: int = field(default=0, compare=False)


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The certificate's DNS SANs, lower-case."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))


def _parse(chain_pem: str, key_pem: str, source: str, mtime_ns: int) -> StoredCertificate:
    """Raises ValueError when the PEM is not a certificate and its matching key."""
    certs = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
    key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
    leaf = certs[0]
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public != leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ValueError("the key does not match the certificate")
    return StoredCertificate(
        leaf=LeafCertificate(cert_chain_pem=chain_pem, key_pem=key_pem),
        names=certificate_names(leaf),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        issuer=leaf.issuer.rfc4514_string(),
        source=source,
        mtime_ns=mtime_ns,
    )


def _write_private(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(text)
    tmp.replace(path)


class CertificateFiles:
    """The issued certificates of a state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / CERTIFICATES_DIR

    def _dir(self, hostname: str) -> Path:
        if "/" in hostname or hostname.startswith("."):
            raise ValueError(f"{hostname!r} is not a hostname")
        return self.root / hostname

    def hostnames(self) -> list[str]:
        """Every hostname with a directory (a certificate, or only a status), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def mtime_ns(self, hostname: str) -> int:
        """The chain file's modification time (0 when there is none)."""
        try:
            return (self._dir(hostname) / _CHAIN).stat().st_mtime_ns
        except OSError:
            return 0

    def load(self, hostname: str) -> StoredCertificate | None:
        """The stored certificate (None when there is none; ValueError when unreadable)."""
        directory = self._dir(hostname)
        try:
            mtime = (directory / _CHAIN).stat().st_mtime_ns
            chain = (directory / _CHAIN).read_text(encoding="ascii")
            key = (directory / _KEY).read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        return _parse(chain, key, "acme", mtime)

    def save(self, hostname: str, chain_pem: str, key_pem: str) -> StoredCertificate:
        """Store a new certificate (the key first, both replaced atomically)."""
        directory = self._dir(hostname)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        stored = _parse(chain_pem, key_pem, "acme", 0)
        _write_private(directory / _KEY, key_pem, 0o600)
        _write_private(directory / _CHAIN, chain_pem, 0o644)
        return StoredCertificate(**{**stored.__dict__, "mtime_ns": self.mtime_ns(hostname)})

    def status(self, hostname: str) -> dict[str, Any]:
        """The last attempt's outcome as ``status.json`` holds it ({} when none)."""
        try:
            data = json.loads((self._dir(hostname) / _STATUS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_status(self, hostname: str, status: dict[str, Any]) -> None:
        directory = self._dir(hostname)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(directory / _STATUS, json.dumps(status, sort_keys=True), 0o644)

    def request_renewal(self, hostname: str) -> None:
        """Ask the running edge to renew now (``adit edge cert renew``)."""
        directory = self._dir(hostname)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (directory / _RENEW).touch()

    def take_renewal_request(self, hostname: str) -> bool:
        """Whether a renewal was requested (the request is consumed)."""
        try:
            (self._dir(hostname) / _RENEW).unlink()
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def issuing(self, hostname: str) -> Iterator[bool]:
        """Hold the hostname's issuance lock; yields False when another process holds it."""
        directory = self._dir(hostname)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / _LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)


class BringYourOwn:
    """``--certificate-dir``: ``NAME.crt``/``NAME.key`` pairs, reloaded when they change."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seen: dict[str, tuple[int, int]] = {}
        self.certificates: dict[str, StoredCertificate] = {}
        #: Why a pair was not loaded, by its certificate file (shown once per change).
        self.errors: dict[str, str] = {}

    def poll(self) -> bool:
        """Re-read pairs whose files changed; True when the set of certificates changed."""
        seen: dict[str, tuple[int, int]] = {}
        try:
            crts = sorted(self.directory.glob("*.crt"))
        except OSError:
            crts = []
        for crt in crts:
            key = crt.with_suffix(".key")
            try:
                seen[str(crt)] = (crt.stat().st_mtime_ns, key.stat().st_mtime_ns)
            except OSError:
                seen[str(crt)] = (0, 0)
        if seen == self._seen:
            return False
        self._seen = seen
        certificates: dict[str, StoredCertificate] = {}
        errors: dict[str, str] = {}
        for path, (mtime, _) in seen.items():
            crt = Path(path)
            try:
                certificates[path] = _parse(
                    crt.read_text(encoding="ascii"),
                    crt.with_suffix(".key").read_text(encoding="ascii"),
                    path,
                    mtime,
                )
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                errors[path] = f"{crt} / {crt.with_suffix('.key').name}: {exc}"
        self.certificates = certificates
        self.errors = errors
        return True

    def find(self, hostname: str) -> StoredCertificate | None:
        """The certificate covering ``hostname`` (an exact SAN before a wildcard)."""
        wildcard = None
        parent = hostname.partition(".")[2]
        for stored in self.certificates.values():
            if hostname in stored.names:
                return stored
            if wildcard is None and parent and f"*.{parent}" in stored.names:
                wildcard = stored
        return wildcard
