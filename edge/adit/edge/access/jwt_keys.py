"""The RS256 keys an account's Access signs with, and its key set (JWKS) as Cloudflare serves
it at ``/cdn-cgi/access/certs``: ``keys`` (JWKs), ``public_cert`` (the current key's
certificate) and ``public_certs`` (every key's), so origins written for Cloudflare's shape
(cloudflared's go-oidc, PyJWT's ``PyJWKClient``, the ``public_certs`` readers) all work.

Tokens are minted with PyJWT and checked with RS256 only: a token whose header says ``none``
or ``HS256`` is refused before any key is tried, so a public key can never serve as an HMAC
secret.
"""

from __future__ import annotations

import datetime
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

__all__ = ["ALGORITHM", "SigningKey", "key_set", "new_signing_key", "verify"]

ALGORITHM: Final = "RS256"
_CERT_LIFETIME = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class SigningKey:
    """One RSA key with its key id and self-signed certificate."""

    kid: str
    key: rsa.RSAPrivateKey
    cert_pem: str
    retired: bool = False
    #: When it was made (POSIX seconds): its age decides the next automatic rotation.
    created_at: float = 0.0

    @classmethod
    def load(
        cls, kid: str, pem: bytes, cert_pem: str, retired: bool, created_at: float
    ) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"access key {kid} is not an RSA key")
        return cls(kid, key, cert_pem, retired, created_at)

    def private_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def jwk(self) -> dict[str, Any]:
        public: dict[str, Any] = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key())
        )
        return {"kid": self.kid, **public, "alg": ALGORITHM, "use": "sig"}

    def sign(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(claims), self.key, algorithm=ALGORITHM, headers={"kid": self.kid})


def new_signing_key() -> SigningKey:
    """A fresh 2048-bit RSA key (Cloudflare's size) and its certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = secrets.token_hex(32)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "adit access signing key")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _CERT_LIFETIME)
        .sign(key, hashes.SHA256())
    )
    return SigningKey(
        kid,
        key,
        cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        created_at=now.timestamp(),
    )


def key_set(keys: Sequence[SigningKey]) -> dict[str, Any]:
    """Cloudflare's ``/cdn-cgi/access/certs`` body for ``keys`` (the current one first)."""
    certs = [{"kid": k.kid, "cert": k.cert_pem} for k in keys]
    return {
        "keys": [k.jwk() for k in keys],
        "public_cert": certs[0] if certs else None,
        "public_certs": certs,
    }


class InvalidToken(Exception):
    """A token that is not one of ours, for this audience, now; ``str()`` says why (log only)."""


def verify(token: str, keys: Iterable[SigningKey], *, audience: str, issuer: str) -> dict[str, Any]:
    """The claims of ``token`` if one of ``keys`` signed it with RS256 for ``audience`` and
    ``issuer`` and it has not expired; :class:`InvalidToken` otherwise."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"not a JWT: {exc}") from None
    if header.get("alg") != ALGORITHM:
        raise InvalidToken(f"algorithm {header.get('alg')!r} refused: RS256 only")
    kid = header.get("kid")
    key = next((k for k in keys if k.kid == kid), None)
    if key is None:
        raise InvalidToken("signed by no key of this account")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key.public_key(),
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            options={"require": ["exp", "iat", "aud", "iss"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from None
    return claims
