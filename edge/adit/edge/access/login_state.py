"""Logins in progress, kept in the edge's store so that every edge process on one state
directory (and an edge restarted mid-login) can finish what another began.

Three kinds of short-lived rows, each with its expiry (wall-clock seconds, since processes
share them), each taken at most once by an atomic ``DELETE … RETURNING`` or a counted update
inside one ``BEGIN IMMEDIATE`` transaction, so two processes racing for the same row cannot
both have it:

================== ============================== ========================================
table              key                            what is at rest
================== ============================== ========================================
access_login_flows SHA-256 of the flow id (the    provider, redirect URI, return path,
                   browser's HttpOnly cookie)     expiry: no state, nonce or verifier
access_pins        (provider, e-mail)             HMAC of the PIN under a per-row salt,
                                                  failures, issues, expiry
access_transfers   SHA-256 of the CLI's key       the token sealed to that key, expiry
access_login_keys  a name (``csrf``)              a random key every process uses
================== ============================== ========================================

Why nothing secret of an OIDC flow is stored: ``state``, ``nonce`` and the PKCE verifier are
derived from the flow id (HMAC-SHA256 keyed by it), which only the visitor's browser holds. A
copy of the store file alone cannot answer a callback or redeem a code.

A PIN's row follows :class:`~adit.edge.access.pin.PinBook`'s state table (the same limits:
MAX_ATTEMPTS wrong PINs lock the address for the PIN's lifetime, MAX_ISSUES mails per
lifetime), with the checks done in SQL transactions so that attempts made at different
processes count together. Expired rows of a table are deleted by each write to it and by the
edge's periodic sweep (:mod:`.sweeper`).

Every method here is a blocking store write: call it through ``Database.off_loop``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import sqlite3
from typing import Final

from adit.edge.access.oidc_client import FLOW_LIFETIME, MAX_FLOWS, FlowRefused, PendingFlow
from adit.edge.access.pin import (
    MAX_ATTEMPTS,
    MAX_CHALLENGES,
    MAX_ISSUES,
    PIN_DIGITS,
    PIN_LIFETIME,
    PinLocked,
    PinResult,
)
from adit.edge.database import Database

__all__ = ["SCHEMA", "TABLES", "TRANSFER_LIFETIME", "LoginState", "TransfersFull"]

#: Sealed tokens wait this long for their CLI, at most MAX_TRANSFERS of them.
TRANSFER_LIFETIME: Final = 300.0
MAX_TRANSFERS: Final = 10_000

SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS access_login_keys (
    name TEXT PRIMARY KEY,
    key BLOB NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS access_login_flows (
    id_sha256 BLOB PRIMARY KEY,
    idp_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    return_to TEXT NOT NULL,
    expires_at REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS access_login_flows_by_expiry ON access_login_flows(expires_at)",
    """CREATE TABLE IF NOT EXISTS access_pins (
    idp_id TEXT NOT NULL,
    email TEXT NOT NULL,
    salt BLOB NOT NULL,
    digest BLOB NOT NULL,
    expires_at REAL NOT NULL,
    failures INTEGER NOT NULL,
    issues INTEGER NOT NULL,
    PRIMARY KEY (idp_id, email)
)""",
    "CREATE INDEX IF NOT EXISTS access_pins_by_expiry ON access_pins(expires_at)",
    """CREATE TABLE IF NOT EXISTS access_transfers (
    key_sha256 BLOB PRIMARY KEY,
    sealed BLOB NOT NULL,
    expires_at REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS access_transfers_by_expiry ON access_transfers(expires_at)",
)
TABLES: Final = frozenset(
    {"access_login_keys", "access_login_flows", "access_pins", "access_transfers"}
)


class TransfersFull(Exception):
    """MAX_TRANSFERS sealed tokens are waiting already."""


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _derive(flow_id: str, label: str) -> str:
    """A flow's ``state``, ``nonce`` or PKCE verifier: 43 characters of base64url (RFC 7636
    §4.1's unreserved set), unguessable without the flow id."""
    mac = hmac.new(flow_id.encode(), label.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _pin_digest(salt: bytes, email: str, pin: str) -> bytes:
    return hmac.new(salt, f"{email}\0{pin}".encode(), hashlib.sha256).digest()


def _trim(db: sqlite3.Connection, table: str, limit: int) -> None:
    """Keep at most ``limit - 1`` rows (the oldest to expire go first), making room for one."""
    (count,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 (a constant)
    if count >= limit:
        db.execute(
            f"DELETE FROM {table} WHERE rowid IN "  # noqa: S608 (a constant)
            f"(SELECT rowid FROM {table} ORDER BY expires_at LIMIT ?)",
            (count - limit + 1,),
        )


class LoginState:
    """The store's logins in progress (see the module's table)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        return self._db

    def sweep(self, now: float) -> int:
        """Delete every expired row (abandoned logins); how many."""
        deleted = 0
        with self._db.write() as db:
            for table in ("access_login_flows", "access_pins", "access_transfers"):
                cursor = db.execute(
                    f"DELETE FROM {table} WHERE expires_at <= ?",  # noqa: S608 (constants)
                    (now,),
                )
                deleted += cursor.rowcount
        return deleted

    # -- a key every process shares ---------------------------------------------------------

    def shared_key(self, name: str) -> bytes:
        """The random key called ``name``, made by the first process that asks."""
        row = self._db.read("SELECT key FROM access_login_keys WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return bytes(row[0])
        with self._db.write() as db:
            db.execute(
                "INSERT OR IGNORE INTO access_login_keys (name, key) VALUES (?, ?)",
                (name, secrets.token_bytes(32)),
            )
            (key,) = db.execute(
                "SELECT key FROM access_login_keys WHERE name = ?", (name,)
            ).fetchone()
        return bytes(key)

    # -- OIDC flows ---------------------------------------------------------------------------

    def begin_flow(
        self, idp_id: str, redirect_uri: str, return_to: str, now: float
    ) -> tuple[str, PendingFlow]:
        """A new flow (its id goes in the browser's cookie, nowhere else)."""
        flow_id = secrets.token_urlsafe(32)
        expires = now + FLOW_LIFETIME
        with self._db.write() as db:
            db.execute("DELETE FROM access_login_flows WHERE expires_at <= ?", (now,))
            _trim(db, "access_login_flows", MAX_FLOWS)
            db.execute(
                "INSERT INTO access_login_flows (id_sha256, idp_id, redirect_uri, return_to,"
                " expires_at) VALUES (?, ?, ?, ?, ?)",
                (_sha256(flow_id), idp_id, redirect_uri, return_to, expires),
            )
        return flow_id, self._flow(flow_id, redirect_uri, return_to, expires)

    def take_flow(self, flow_id: str, state: str | None, now: float) -> tuple[str, PendingFlow]:
        """(provider id, the flow) if ``state`` is the flow's own and it has not expired, else
        :class:`FlowRefused`. The row is deleted in every case, by whichever process asks
        first: a replayed callback, here or at another process, finds nothing."""
        with self._db.write() as db:
            row = db.execute(
                "DELETE FROM access_login_flows WHERE id_sha256 = ?"
                " RETURNING idp_id, redirect_uri, return_to, expires_at",
                (_sha256(flow_id),),
            ).fetchone()
        if row is None:
            raise FlowRefused("no login in progress for this browser (expired or already used)")
        idp_id, redirect_uri, return_to, expires = row
        flow = self._flow(flow_id, redirect_uri, return_to, float(expires))
        if not state or not hmac.compare_digest(flow.state.encode(), state.encode()):
            raise FlowRefused("the provider's answer does not belong to this login (state)")
        if now >= flow.expires_at:
            raise FlowRefused("the login took too long; start again")
        return str(idp_id), flow

    @staticmethod
    def _flow(flow_id: str, redirect_uri: str, return_to: str, expires: float) -> PendingFlow:
        return PendingFlow(
            state=_derive(flow_id, "state"),
            nonce=_derive(flow_id, "nonce"),
            code_verifier=_derive(flow_id, "pkce-verifier"),
            redirect_uri=redirect_uri,
            return_to=return_to,
            expires_at=expires,
        )

    # -- one-time PINs ------------------------------------------------------------------------

    def issue_pin(self, idp_id: str, email: str, now: float) -> str:
        """A new PIN for ``email`` (to be mailed, never logged or stored); :class:`PinLocked`
        if the address is locked or has been sent MAX_ISSUES PINs this lifetime."""
        pin = f"{secrets.randbelow(10**PIN_DIGITS):0{PIN_DIGITS}d}"
        salt = secrets.token_bytes(16)
        digest = _pin_digest(salt, email, pin)
        with self._db.write() as db:
            db.execute("DELETE FROM access_pins WHERE expires_at <= ?", (now,))
            row = db.execute(
                "SELECT failures, issues FROM access_pins WHERE idp_id = ? AND email = ?",
                (idp_id, email),
            ).fetchone()
            if row is not None:
                failures, issues = row
                if failures >= MAX_ATTEMPTS or issues >= MAX_ISSUES:
                    raise PinLocked(f"too many attempts for {email}; try again in a few minutes")
                # A new PIN keeps the failures and the lifetime: asking again buys no guesses.
                db.execute(
                    "UPDATE access_pins SET salt = ?, digest = ?, issues = issues + 1"
                    " WHERE idp_id = ? AND email = ?",
                    (salt, digest, idp_id, email),
                )
                return pin
            _trim(db, "access_pins", MAX_CHALLENGES)
            db.execute(
                "INSERT INTO access_pins (idp_id, email, salt, digest, expires_at, failures,"
                " issues) VALUES (?, ?, ?, ?, ?, 0, 1)",
                (idp_id, email, salt, digest, now + PIN_LIFETIME),
            )
        return pin

    def check_pin(self, idp_id: str, email: str, pin: str, now: float) -> PinResult:
        """Whether ``pin`` is the one mailed to ``email`` (PinBook's table), decided and
        counted in one transaction: a right PIN is accepted once across all processes, and
        wrong ones made at any process count towards the same lock."""
        candidate = pin.strip()
        with self._db.write() as db:
            row = db.execute(
                "SELECT salt, digest, expires_at, failures FROM access_pins"
                " WHERE idp_id = ? AND email = ?",
                (idp_id, email),
            ).fetchone()
            if row is None:
                return PinResult.UNKNOWN
            salt, digest, expires, failures = row
            key = (idp_id, email)
            if now >= expires:
                db.execute("DELETE FROM access_pins WHERE idp_id = ? AND email = ?", key)
                return PinResult.EXPIRED
            if failures >= MAX_ATTEMPTS:
                return PinResult.LOCKED
            # The digest is computed for any input, so its length or form says nothing by timing.
            if hmac.compare_digest(_pin_digest(bytes(salt), email, candidate), bytes(digest)):
                db.execute("DELETE FROM access_pins WHERE idp_id = ? AND email = ?", key)
                return PinResult.ACCEPTED
            db.execute(
                "UPDATE access_pins SET failures = failures + 1 WHERE idp_id = ? AND email = ?",
                key,
            )
        return PinResult.LOCKED if failures + 1 >= MAX_ATTEMPTS else PinResult.WRONG

    # -- adit access login's hand-over --------------------------------------------------------

    def put_transfer(self, key: str, sealed: bytes, now: float) -> None:
        """Keep ``sealed`` for the CLI holding ``key``; :class:`TransfersFull` when too many
        wait already."""
        with self._db.write() as db:
            db.execute("DELETE FROM access_transfers WHERE expires_at <= ?", (now,))
            (count,) = db.execute("SELECT count(*) FROM access_transfers").fetchone()
            if count >= MAX_TRANSFERS:
                raise TransfersFull
            db.execute(
                "INSERT OR REPLACE INTO access_transfers (key_sha256, sealed, expires_at)"
                " VALUES (?, ?, ?)",
                (_sha256(key), sealed, now + TRANSFER_LIFETIME),
            )

    def claim_transfer(self, key: str, now: float) -> bytes | None:
        """The sealed token for ``key``, once: the first claim (at any process) deletes it."""
        digest = _sha256(key)
        # The CLI polls until the browser has said yes: a read (no lock) until there is a row.
        probe = "SELECT 1 FROM access_transfers WHERE key_sha256 = ?"
        if self._db.read(probe, (digest,)).fetchone() is None:
            return None
        with self._db.write() as db:
            row = db.execute(
                "DELETE FROM access_transfers WHERE key_sha256 = ? RETURNING sealed, expires_at",
                (digest,),
            ).fetchone()
        if row is None or float(row[1]) <= now:
            return None
        return bytes(row[0])
