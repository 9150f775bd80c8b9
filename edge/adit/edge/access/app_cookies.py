"""One session per application, also where applications share a hostname on different paths.

Cloudflare scopes an application's ``CF_Authorization`` cookie to the hostname unless its
"path cookie attribute" (``path_cookie_attribute``) is on; then the cookie carries
``Path=<the application's path>``. adit always does the latter for an application with a
path: with one host-wide cookie, signing in to ``/admin`` would overwrite the session of
``/`` (signing the visitor out of it), and the two applications could not both be used.

With a cookie per path, a browser sends every cookie whose path covers the request, the
longest path first (RFC 6265 §5.4): ``/admin/x`` carries the ``/admin`` application's cookie
and then the ``/`` one's. So the gate looks at all of a request's ``CF_Authorization``
values (and the ``cf-access-token`` header) and takes the one whose ``aud`` is the
application's; a token of another application is passed over before any signature is
checked (its unverified ``aud`` does not name this application), so a request carrying
foreign tokens costs no RSA operation, and never gets their session.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Final

__all__ = [
    "COOKIE",
    "MAX_TOKENS",
    "CookieMemo",
    "cookie_path",
    "session_tokens",
    "token_claims_aud",
]

COOKIE: Final = "CF_Authorization"
_COOKIE_PREFIX: Final = b"CF_Authorization="
_PREFIX_LENGTH: Final = len(_COOKIE_PREFIX)
#: The most session tokens looked at in one request (a browser has one per application
#: covering the path: a handful); the rest are ignored.
MAX_TOKENS: Final = 8


def cookie_path(app_path: str) -> str:
    """The ``Path`` of an application's session cookie: its own path, else the host's root."""
    return app_path or "/"


#: What one visitor connection's cookie headers held: a browser sends the same ones with
#: every request on it. Bounded (:data:`MAX_REMEMBERED`); kept as long as the connection.
CookieMemo = dict[bytes, tuple[str, ...]]
MAX_REMEMBERED: Final = 8


def session_tokens(
    headers: Sequence[tuple[bytes, bytes]], memo: CookieMemo | None = None
) -> list[str]:
    """The request's session tokens in the order the client sent them: every
    ``CF_Authorization`` cookie value, then the ``cf-access-token`` header; at most
    :data:`MAX_TOKENS`.

    On every request through Access: the cookie header is searched, not split into its
    pieces (a browser's is often a kilobyte or more), and only the tokens are decoded. With
    ``memo`` (its connection's), a cookie header seen before gives the same token objects
    again: no kilobyte copied and decoded, and their hash (the gate's session key) kept."""
    tokens: list[str] = []
    header: bytes | None = None
    for raw, value in headers:
        size = len(raw)
        if size == 6 and raw.lower() == b"cookie":
            found = memo.get(value) if memo is not None else None
            if found is None:
                found = _cookie_tokens(value)
                if memo is not None:
                    if len(memo) >= MAX_REMEMBERED:
                        memo.clear()
                    memo[value] = found
            tokens += found
            if len(tokens) >= MAX_TOKENS:
                return tokens[:MAX_TOKENS]
        elif size == 15 and header is None and raw.lower() == b"cf-access-token":
            header = value
    if header is not None:
        token = header.decode("latin-1").strip()
        if token:
            tokens.append(token)
    return tokens


def _cookie_tokens(value: bytes) -> tuple[str, ...]:
    """The ``CF_Authorization`` values of one cookie header (at most :data:`MAX_TOKENS`). A
    pair is ``name=value`` between semicolons, with whitespace around it (RFC 6265 §5.2); the
    name is matched only at a pair's start."""
    tokens: list[str] = []
    find = value.find
    at = find(_COOKIE_PREFIX)
    while at >= 0:
        if at and value[value.rfind(b";", 0, at) + 1 : at].strip():
            at = find(_COOKIE_PREFIX, at + 1)  # inside another pair ("x=CF_Authorization=")
            continue
        start = at + _PREFIX_LENGTH
        end = find(b";", start)
        token = (value[start:] if end < 0 else value[start:end]).rstrip()
        if token:
            tokens.append(token.decode("latin-1"))
            if len(tokens) >= MAX_TOKENS:
                break
        if end < 0:
            break
        at = find(_COOKIE_PREFIX, end)
    return tuple(tokens)


def token_claims_aud(token: str) -> tuple[str, ...]:
    """The ``aud`` a JWT *claims* (unverified: only to pass over a token that is not for an
    application, never to accept one); () when it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 8192:
        return ()
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return ()
    aud = payload.get("aud") if isinstance(payload, dict) else None
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list):
        return tuple(a for a in aud if isinstance(a, str))
    return ()
