"""The one-time hand-over of an Access token from the edge to ``adit access login`` (what
cloudflared's transfer service does with a NaCl box): sans-IO, bytes in, bytes out.

The CLI makes an X25519 key pair and sends the browser to the edge with the public key; once
the browser has a session there, the edge seals the token to that key (an ephemeral X25519
key of its own, HKDF-SHA256, AES-256-GCM with the CLI's key as associated data) and keeps the
sealed box for one fetch. Only the CLI that made the key can open it, so the box may travel
through an unauthenticated poll.
"""

from __future__ import annotations

import base64
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["TransferError", "new_key", "open_box", "public_key_text", "seal"]

_INFO = b"adit access token transfer v1"


class TransferError(ValueError):
    """A key or box that is not one of ours."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise TransferError("not base64url") from None


def new_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_key_text(key: X25519PrivateKey) -> str:
    """The public half as the URL carries it (43 base64url characters)."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64(raw)


def parse_public_key(text: str) -> bytes:
    """The 32 raw bytes of a public key in its URL form; :class:`TransferError` otherwise."""
    raw = _unb64(text) if len(text) == 43 else b""
    if len(raw) != 32:
        raise TransferError("a transfer key is 32 bytes in base64url")
    return raw


def _key(shared: bytes, client: bytes, edge: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, _INFO + client + edge).derive(shared)


def seal(client_public: bytes, token: str) -> bytes:
    """The box for ``token``, openable only with the private half of ``client_public``."""
    ephemeral = X25519PrivateKey.generate()
    edge = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(client_public))
    nonce = os.urandom(12)
    sealed = AESGCM(_key(shared, client_public, edge)).encrypt(nonce, token.encode(), client_public)
    box = {"v": 1, "epk": _b64(edge), "nonce": _b64(nonce), "ct": _b64(sealed)}
    return json.dumps(box, separators=(",", ":")).encode()


def open_box(key: X25519PrivateKey, box: bytes) -> str:
    """The token in ``box``; :class:`TransferError` if it was not sealed to ``key``."""
    try:
        doc = json.loads(box)
        edge = _unb64(doc["epk"])
        nonce = _unb64(doc["nonce"])
        sealed = _unb64(doc["ct"])
    except (ValueError, KeyError, TypeError):
        raise TransferError("the edge's answer is not a sealed token") from None
    client = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(edge))
        return AESGCM(_key(shared, client, edge)).decrypt(nonce, sealed, client).decode()
    except (ValueError, InvalidTag, UnicodeDecodeError):
        raise TransferError("the sealed token does not open with this login's key") from None
