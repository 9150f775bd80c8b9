"""Management tokens: the short-lived JWTs behind ``tail`` (cloudflared's ``management/token.go``).

``POST /accounts/A/cfd_tunnel/T/management/{logs,admin,host_details}`` answers one, and the edge's
management hostname admits a request only with a valid one in ``?access_token=``. The shape is
Cloudflare's, so the unmodified cloudflared connector takes them: an ES256 JWS (cloudflared's
``ParseToken`` refuses any other algorithm) whose claims carry ``tun`` (``id``, ``account_tag``)
and ``actor`` (``id``, ``support``), both non-empty. cloudflared never checks the signature ("we
verify the token in the edge before it reaches cloudflared"): the edge is the one that must, and
does, here: signature with the edge's own key, expiry, issuer, and the resource the path needs.

The signing key is ``management-key.pem`` (P-256, mode 0600) in the state directory, next to the
CA key: edge processes that share a state directory (locations of one edge) accept each other's
tokens.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "RESOURCES",
    "TOKEN_LIFETIME",
    "ManagementClaims",
    "ManagementSigner",
    "TokenRefused",
]

_KEY_FILE: Final = "management-key.pem"
_ALGORITHM: Final = "ES256"
#: Not Cloudflare's ``tunnelstore`` (nor ``fed-tunnelstore``, which sends cloudflared's tail
#: to the FedRAMP hostname): these tokens are this edge's, and say so.
ISSUER: Final = "adit-edge"
#: Seconds a token is good for: enough to start ``tail`` or fetch host details, short enough
#: that one leaked from a shell history is soon worthless (a stream already open lives on).
TOKEN_LIFETIME: Final = 600
#: The resources a token may be issued for (cloudflared's ``cfapi.ManagementResource``).
RESOURCES: Final = frozenset({"logs", "admin", "host_details"})
#: Clock skew tolerated between edge processes sharing the key.
_LEEWAY: Final = 5


class TokenRefused(Exception):
    """The token is not one of this edge's, or not any more (``str()`` says why, for logs)."""


@dataclass(frozen=True, slots=True)
class ManagementClaims:
    """What a verified token grants: one tunnel of one account, for some resources."""

    tunnel_id: uuid.UUID
    account_tag: str
    actor_id: str
    resources: frozenset[str]
    expires_at: int


class ManagementSigner:
    """Issues and verifies management tokens with the edge's P-256 key."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        #: Names the key in the JWS header, so a rotated key can be told apart.
        self.key_id = hashlib.sha256(public).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"ManagementSigner(kid={self.key_id})"

    @classmethod
    def load_or_create(cls, state_dir: str | os.PathLike[str]) -> ManagementSigner:
        """The key in ``state_dir``, generated (0600) on first use."""
        Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        path = Path(state_dir) / _KEY_FILE
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
                key.curve, ec.SECP256R1
            ):
                raise ValueError(f"{path} does not hold a P-256 private key; delete it to renew")
            return cls(key)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{_KEY_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        try:
            # Two processes starting on one fresh state directory: the first key wins, and
            # both use it.
            os.link(tmp, path)
        except FileExistsError:
            return cls.load_or_create(state_dir)
        finally:
            tmp.unlink()
        return cls(key)

    def issue(
        self,
        *,
        tunnel_id: uuid.UUID,
        account_tag: str,
        actor_id: str,
        resource: str,
        now: float | None = None,
        lifetime: int = TOKEN_LIFETIME,
    ) -> str:
        """A token for ``resource`` of one tunnel, good for ``lifetime`` seconds."""
        if resource not in RESOURCES:
            raise ValueError(f"unknown management resource {resource!r}")
        issued = int(time.time() if now is None else now)
        claims = {
            "tun": {"id": str(tunnel_id), "account_tag": account_tag},
            "actor": {"id": actor_id, "support": False},
            "res": [resource],
            "iss": ISSUER,
            "iat": issued,
            "nbf": issued,
            "exp": issued + lifetime,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(
            claims, self._key, algorithm=_ALGORITHM, headers={"kid": self.key_id, "typ": "JWT"}
        )

    def verify(self, token: str) -> ManagementClaims:
        """The claims of a token this edge signed and that has not expired; raises
        :class:`TokenRefused` otherwise."""
        if not token or len(token) > 4096:
            raise TokenRefused("no token, or one far too long")
        try:
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=[_ALGORITHM],
                issuer=ISSUER,
                leeway=_LEEWAY,
                options={"require": ["exp", "iat", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRefused(f"the token is not valid: {exc}") from None
        tun = claims.get("tun")
        actor = claims.get("actor")
        resources = claims.get("res")
        if not (
            isinstance(tun, dict)
            and isinstance(tun.get("id"), str)
            and isinstance(tun.get("account_tag"), str)
            and tun["account_tag"]
            and isinstance(actor, dict)
            and isinstance(actor.get("id"), str)
            and actor["id"]
            and isinstance(resources, list)
            and all(isinstance(r, str) for r in resources)
        ):
            raise TokenRefused("the token's claims are incomplete")
        try:
            tunnel_id = uuid.UUID(tun["id"])
        except ValueError:
            raise TokenRefused("the token names no tunnel") from None
        return ManagementClaims(
            tunnel_id=tunnel_id,
            account_tag=tun["account_tag"],
            actor_id=actor["id"],
            resources=frozenset(resources),
            expires_at=int(claims["exp"]),
        )
