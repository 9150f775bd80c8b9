"""Short-lived SSH certificates, as Cloudflare's: an SSH certificate authority per Access
application, whose public key an SSH server trusts (``TrustedUserCAKeys``), and certificates it
signs for a user that Access has let in.

The CA is an Ed25519 key made with ``cryptography`` when the operator asks for it
(``POST /accounts/{a}/access/apps/{id}/ca``, Cloudflare's "short-lived certificate CA"; the
answer is Cloudflare's ``{id, aud, public_key}``). Its private half lives in the store (the
store file is 0600) and is never answered by the API; deleting the application deletes its CA.

A certificate (:func:`sign_user_key`) is a user certificate for one principal, the user's
e-mail up to the ``@`` (Cloudflare's rule: ``alice@example.com`` logs in as ``alice``; an
``AuthorizedPrincipalsFile`` maps other names), its key id the full e-mail, valid from a
minute ago (clock skew between the edge and the server) for :data:`CERT_LIFETIME`: long enough
for ``ssh`` to connect right after ``adit access ssh-gen`` made it (ssh's ``Match exec`` runs
ssh-gen before every connection), short enough that a copied certificate is soon worthless.
Cloudflare's certificates last about as long (minutes, "for connection").
"""

from __future__ import annotations

import datetime
import secrets
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    SSHCertificateBuilder,
    SSHCertificateType,
)

from adit.edge.access.store import AccessNotFound, AccessStore
from adit.edge.database import encode_time

__all__ = [
    "CERT_LIFETIME",
    "SCHEMA",
    "TABLES",
    "InvalidPublicKey",
    "SshCa",
    "SshCas",
    "principal_of",
    "sign_user_key",
]

#: How long a signed certificate is valid (after a minute's allowance before now).
CERT_LIFETIME: Final = datetime.timedelta(minutes=3)
_SKEW: Final = datetime.timedelta(minutes=1)
#: OpenSSH's default permissions of a user certificate (what ``ssh-keygen -s`` grants).
_EXTENSIONS: Final = (
    b"permit-X11-forwarding",
    b"permit-agent-forwarding",
    b"permit-port-forwarding",
    b"permit-pty",
    b"permit-user-rc",
)
_MIN_RSA_BITS: Final = 2048

SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS access_ssh_cas (
    app_id TEXT PRIMARY KEY REFERENCES access_apps(id) ON DELETE CASCADE,
    id TEXT NOT NULL UNIQUE,
    account_tag TEXT NOT NULL REFERENCES accounts(tag),
    private_key BLOB NOT NULL,
    public_key TEXT NOT NULL,
    created_at TEXT NOT NULL
)""",
)
TABLES: Final = frozenset({"access_ssh_cas"})


class InvalidPublicKey(ValueError):
    """A public key that cannot be certified; ``str()`` says why."""


@dataclass(frozen=True)
class SshCa:
    """One application's CA."""

    id: str
    app_id: str
    aud: str
    public_key: str
    private_pem: bytes

    def json(self) -> dict[str, Any]:
        """Cloudflare's answer (never the private key)."""
        return {"id": self.id, "aud": self.aud, "public_key": self.public_key}

    def key(self) -> ed25519.Ed25519PrivateKey:
        key = serialization.load_ssh_private_key(self.private_pem, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"SSH CA {self.id} is not an Ed25519 key")
        return key


def _new_ca_key() -> tuple[bytes, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public.decode("ascii") + " adit-access-ca"


class SshCas:
    """The CAs of one store's applications (account-scoped like every Access row)."""

    def __init__(self, store: AccessStore) -> None:
        self._store = store

    def create(self, account: str, app_id: str) -> SshCa:
        """The application's CA, made now if it has none (asking twice gives the same)."""
        app = self._store.app(account, app_id)
        private, public = _new_ca_key()
        with self._store.db.write() as db:
            db.execute(
                "INSERT OR IGNORE INTO access_ssh_cas"
                " (app_id, id, account_tag, private_key, public_key, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    app.id,
                    secrets.token_hex(16),
                    account,
                    private,
                    public,
                    encode_time(datetime.datetime.now(datetime.UTC)),
                ),
            )
        return self.get(account, app_id)

    def get(self, account: str, app_id: str) -> SshCa:
        app = self._store.app(account, app_id)
        found = self._row(self._store.db.connection(), app.id)
        if found is None:
            raise AccessNotFound(
                f"access application {app_id} has no short-lived certificate CA; create one"
                f" (POST /accounts/{account}/access/apps/{app_id}/ca)"
            )
        return SshCa(found[0], app.id, app.aud, found[1], found[2])

    def find(self, app_id: str, aud: str) -> SshCa | None:
        """The CA of an application the caller has already found (the signing path)."""
        found = self._row(self._store.db.connection(), app_id)
        return SshCa(found[0], app_id, aud, found[1], found[2]) if found is not None else None

    def list(self, account: str) -> list[SshCa]:
        auds = {a.id: a.aud for a in self._store.apps(account)}
        rows = self._store.db.read(
            "SELECT id, app_id, public_key, private_key FROM access_ssh_cas"
            " WHERE account_tag = ? ORDER BY created_at",
            (account,),
        )
        return [SshCa(i, a, auds.get(a, ""), p, bytes(k)) for i, a, p, k in rows]

    def delete(self, account: str, app_id: str) -> str:
        ca = self.get(account, app_id)
        with self._store.db.write() as db:
            db.execute("DELETE FROM access_ssh_cas WHERE app_id = ?", (ca.app_id,))
        return ca.id

    @staticmethod
    def _row(db: sqlite3.Connection, app_id: str) -> tuple[str, str, bytes] | None:
        row = db.execute(
            "SELECT id, public_key, private_key FROM access_ssh_cas WHERE app_id = ?", (app_id,)
        ).fetchone()
        return (row[0], row[1], bytes(row[2])) if row is not None else None


def principal_of(email: str) -> str:
    """The Unix user an e-mail logs in as: its part before the ``@``."""
    return email.rpartition("@")[0] if "@" in email else email


@dataclass(frozen=True)
class SignedCertificate:
    """A certificate in OpenSSH's one-line form, its serial and when it expires."""

    text: str
    serial: int
    expires_at: datetime.datetime

    def json(self) -> Mapping[str, Any]:
        """cloudflared's ``signResponse`` (sshgen/sshgen.go)."""
        return {
            "id": f"{self.serial:016x}",
            "certificate": self.text,
            "expires_at": self.expires_at.isoformat().replace("+00:00", "Z"),
        }


def sign_user_key(
    ca: ed25519.Ed25519PrivateKey,
    public_key: str,
    *,
    email: str,
    now: datetime.datetime,
    lifetime: datetime.timedelta = CERT_LIFETIME,
) -> SignedCertificate:
    """A user certificate for ``public_key`` (OpenSSH text: Ed25519, ECDSA or RSA of 2048 bits
    or more) for the principal of ``email``."""
    try:
        key = serialization.load_ssh_public_key(public_key.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise InvalidPublicKey("public_key is not an OpenSSH public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise InvalidPublicKey(f"an RSA key needs {_MIN_RSA_BITS} bits or more")
    elif not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise InvalidPublicKey("public_key must be an Ed25519, ECDSA or RSA key")
    principal = principal_of(email)
    if not principal:
        raise InvalidPublicKey("the session has no e-mail to name a principal")
    serial = secrets.randbits(64)
    expires = now + lifetime
    builder = (
        SSHCertificateBuilder()
        .public_key(key)
        .serial(serial)
        .type(SSHCertificateType.USER)
        .key_id(email.encode())
        .valid_principals([principal.encode()])
        .valid_after(int((now - _SKEW).timestamp()))
        .valid_before(int(expires.timestamp()))
    )
    for name in _EXTENSIONS:
        builder = builder.add_extension(name, b"")
    cert = builder.sign(ca)
    return SignedCertificate(cert.public_bytes().decode("ascii"), serial, expires)
