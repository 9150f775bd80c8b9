"""The bench's Access path (``adit-1w-access``): a second hostname of the bench account,
``access.example.test``, routed to the same tunnel and origin as ``bench.example.test`` and
guarded by an Access application with the mission's kind of policy (Allow: e-mails ending in
@example.com), and a valid ``CF_Authorization`` cookie for it.

The cookie is what the edge's login would hand a browser after a sign-in: a session token
with the claims the edge mints (:meth:`adit.edge.access.gate.AccessGate.mint_session`),
signed with the account's current key read from the edge's own store. The sign-in itself
(once per session) is not what the bench measures; each request's check of the cookie and the
policies is.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from pathlib import Path

import jwt
import yaml
from services import ACCESS_HOSTNAME, Edge, Tunnel, _adit

__all__ = ["protect"]

_STORE_FILE = "adit-edge.sqlite3"  # adit.edge.store.STORE_FILE


def protect(edge: Edge, tunnel: Tunnel) -> str:
    """Route ``ACCESS_HOSTNAME`` to ``tunnel``, guard it with an application; the cookie."""
    home = tunnel.home
    account = json.loads(tunnel.credentials.read_text())["AccountTag"]
    state = ["--state-dir", str(edge.state)]
    _adit(["edge", "zone", "add", "--account", account, ACCESS_HOSTNAME, *state], home)
    _adit(["tunnel", "route", "dns", tunnel.name, ACCESS_HOSTNAME], home)
    app = yaml.safe_load(
        _adit(["access", "app", "create", "Bench app", "--domain", ACCESS_HOSTNAME], home)
    )
    _adit(
        [
            "access",
            "policy",
            "create",
            app["id"],
            "--name",
            "example.com staff",
            "--decision",
            "allow",
            "--include",
            "email_domain:example.com",
        ],
        home,
    )
    return _session_cookie(edge.state / _STORE_FILE, account, app["aud"])


def _session_cookie(store: Path, account: str, aud: str) -> str:
    """A session token as the edge mints one, signed with the account's current key (made
    with its first application)."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        kid, pem = db.execute(
            "SELECT kid, private_pem FROM access_keys WHERE account_tag = ? AND retired_at IS "
            "NULL ORDER BY created_at DESC LIMIT 1",
            (account,),
        ).fetchone()
        domain = db.execute(
            "SELECT auth_domain FROM access_orgs WHERE account_tag = ?", (account,)
        ).fetchone()
    finally:
        db.close()
    now = int(time.time())
    claims = {
        "type": "app",
        "aud": [aud],
        "email": "bench@example.com",
        "sub": "bench",
        "iss": f"https://{domain[0]}" if domain else f"https://{account}.cloudflareaccess.com",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "identity_nonce": secrets.token_urlsafe(16),
        "country": "",
    }
    return jwt.encode(claims, bytes(pem), algorithm="RS256", headers={"kid": kid})
